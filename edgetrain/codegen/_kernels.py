"""C kernel templates: a lookup table from kernel name to C99 source (fp32, NCHW).

Every kernel is a `static` function over plain `float` arrays with its shape as arguments; the
renderer emits only the kernels a model uses. Backward kernels that produce an input gradient
take `acc`: 0 overwrites the gradient buffer, 1 adds to it (a tensor read by several operators,
e.g. a residual's input). Weight-gradient kernels apply the SGD update in place as each
gradient element is complete (`w -= lr * g`), so no gradient buffer for parameters exists; they
run after the input-gradient kernel of the same operator, which still needs the old weights.
`rows` limits the update to the first `rows` output channels (partial-channel plans).
"""

from __future__ import annotations

PRELUDE = r"""
#include <math.h>
#include <string.h>
#include <stdint.h>

static void k_zero(float *p, int n) { for (int i = 0; i < n; i++) p[i] = 0.0f; }
/* valid kernel taps for output row/column o (stride s, padding p, dilation d): [lo, hi)
   with 0 <= o*s - p + k*d < n */
static inline int k_lo(int o, int s, int p, int d) {
    int v = p - o * s; return v > 0 ? (v + d - 1) / d : 0;
}
static inline int k_hi(int o, int s, int p, int n, int K, int d) {
    int v = n + p - o * s; if (v <= 0) return 0; v = (v + d - 1) / d; return v < K ? v : K;
}
/* output positions o in [lo, hi) whose tap k reads inside the input: 0 <= o*s - p + k*d < n */
static inline int o_lo(int k, int s, int p, int d) {
    int v = p - k * d; return v > 0 ? (v + s - 1) / s : 0;
}
static inline int o_hi(int k, int s, int p, int n, int O, int d) {
    int v = n - 1 + p - k * d; if (v < 0) return 0; v = v / s + 1; return v < O ? v : O;
}
"""

KERNELS: dict[str, str] = {
    # ---------------------------------------------------------------- convolution ---------
    "conv2d_fwd": r"""
static void conv2d_fwd(const float *x, const float *w, const float *b, float *y,
                       int B, int Ci, int H, int W, int Co, int Ho, int Wo,
                       int KH, int KW, int sh, int sw, int ph, int pw,
                       int dh, int dw, int G) {
    const int cig = Ci / G, cog = Co / G;
    for (int n = 0; n < B; n++)
    for (int oc = 0; oc < Co; oc++) {
        const int g = oc / cog;
        const float *wo = w + (size_t)oc * cig * KH * KW;
        const float *xg = x + ((size_t)n * Ci + g * cig) * H * W;
        float *yo = y + ((size_t)n * Co + oc) * Ho * Wo;
        const float bias = b ? b[oc] : 0.0f;
        for (int oh = 0; oh < Ho; oh++) {
            const int kh0 = k_lo(oh, sh, ph, dh), kh1 = k_hi(oh, sh, ph, H, KH, dh);
            const int ih0 = oh * sh - ph;
            for (int ow = 0; ow < Wo; ow++) {
                const int kw0 = k_lo(ow, sw, pw, dw), kw1 = k_hi(ow, sw, pw, W, KW, dw);
                const int iw0 = ow * sw - pw;
                float acc = 0.0f;
                for (int ic = 0; ic < cig; ic++) {
                    const float *xc = xg + (size_t)ic * H * W;
                    const float *wc = wo + ic * KH * KW;
                    for (int kh = kh0; kh < kh1; kh++) {
                        const float *xr = xc + (ih0 + kh * dh) * W + iw0;
                        const float *wr = wc + kh * KW;
                        for (int kw = kw0; kw < kw1; kw++) acc += xr[kw * dw] * wr[kw];
                    }
                }
                yo[oh * Wo + ow] = acc + bias;
            }
        }
    }
}
""",
    "conv2d_pw_fwd": r"""
/* 1x1, stride 1, no padding, no groups: y[n,oc,:] = b[oc] + sum_ic w[oc,ic] * x[n,ic,:] */
static void conv2d_pw_fwd(const float *x, const float *w, const float *b, float *y,
                          int B, int Ci, int Co, int P) {
    for (int n = 0; n < B; n++)
    for (int oc = 0; oc < Co; oc++) {
        float *yo = y + ((size_t)n * Co + oc) * P;
        for (int p = 0; p < P; p++) yo[p] = 0.0f;
        for (int ic = 0; ic < Ci; ic++) {
            const float wv = w[(size_t)oc * Ci + ic];
            const float *xc = x + ((size_t)n * Ci + ic) * P;
            for (int p = 0; p < P; p++) yo[p] += wv * xc[p];
        }
        if (b) { const float bv = b[oc]; for (int p = 0; p < P; p++) yo[p] += bv; }
    }
}
""",
    "conv2d_bwd_input": r"""
static void conv2d_bwd_input(const float *dy, const float *w, float *dx, int acc,
                             int B, int Ci, int H, int W, int Co, int Ho, int Wo,
                             int KH, int KW, int sh, int sw, int ph, int pw,
                             int dh, int dw, int G) {
    const int cig = Ci / G, cog = Co / G;
    if (!acc) k_zero(dx, B * Ci * H * W);
    for (int n = 0; n < B; n++)
    for (int oc = 0; oc < Co; oc++) {
        const int g = oc / cog;
        const float *wo = w + (size_t)oc * cig * KH * KW;
        const float *dyo = dy + ((size_t)n * Co + oc) * Ho * Wo;
        float *dxg = dx + ((size_t)n * Ci + g * cig) * H * W;
        for (int oh = 0; oh < Ho; oh++) {
            const int kh0 = k_lo(oh, sh, ph, dh), kh1 = k_hi(oh, sh, ph, H, KH, dh);
            const int ih0 = oh * sh - ph;
            for (int ow = 0; ow < Wo; ow++) {
                const int kw0 = k_lo(ow, sw, pw, dw), kw1 = k_hi(ow, sw, pw, W, KW, dw);
                const int iw0 = ow * sw - pw;
                const float d = dyo[oh * Wo + ow];
                for (int ic = 0; ic < cig; ic++) {
                    float *dxc = dxg + (size_t)ic * H * W;
                    const float *wc = wo + ic * KH * KW;
                    for (int kh = kh0; kh < kh1; kh++) {
                        float *dr = dxc + (ih0 + kh * dh) * W + iw0;
                        const float *wr = wc + kh * KW;
                        for (int kw = kw0; kw < kw1; kw++) dr[kw * dw] += d * wr[kw];
                    }
                }
            }
        }
    }
}
""",
    "conv2d_pw_bwd_input": r"""
static void conv2d_pw_bwd_input(const float *dy, const float *w, float *dx, int acc,
                                int B, int Ci, int Co, int P) {
    if (!acc) k_zero(dx, B * Ci * P);
    for (int n = 0; n < B; n++)
    for (int oc = 0; oc < Co; oc++) {
        const float *dyo = dy + ((size_t)n * Co + oc) * P;
        for (int ic = 0; ic < Ci; ic++) {
            const float wv = w[(size_t)oc * Ci + ic];
            float *dxc = dx + ((size_t)n * Ci + ic) * P;
            for (int p = 0; p < P; p++) dxc[p] += wv * dyo[p];
        }
    }
}
""",
    "conv2d_bwd_weight_sgd": r"""
static void conv2d_bwd_weight_sgd(const float *dy, const float *x, float *w, float *b, float lr,
                                  int rows, int B, int Ci, int H, int W, int Co, int Ho, int Wo,
                                  int KH, int KW, int sh, int sw, int ph, int pw,
                                  int dh, int dw, int G) {
    const int cig = Ci / G, cog = Co / G;
    for (int oc = 0; oc < rows; oc++) {
        const int g = oc / cog;
        if (w) for (int ic = 0; ic < cig; ic++)
        for (int kh = 0; kh < KH; kh++) {
            const int oh0 = o_lo(kh, sh, ph, dh), oh1 = o_hi(kh, sh, ph, H, Ho, dh);
            for (int kw = 0; kw < KW; kw++) {
                const int ow0 = o_lo(kw, sw, pw, dw), ow1 = o_hi(kw, sw, pw, W, Wo, dw);
                float acc = 0.0f;
                for (int n = 0; n < B; n++) {
                    const float *dyo = dy + ((size_t)n * Co + oc) * Ho * Wo;
                    const float *xc = x + ((size_t)n * Ci + g * cig + ic) * H * W;
                    for (int oh = oh0; oh < oh1; oh++) {
                        const float *dr = dyo + oh * Wo;
                        const float *xr = xc + (oh * sh - ph + kh * dh) * W - pw + kw * dw;
                        for (int ow = ow0; ow < ow1; ow++) acc += dr[ow] * xr[ow * sw];
                    }
                }
                w[(((size_t)oc * cig + ic) * KH + kh) * KW + kw] -= lr * acc;
            }
        }
        if (b) {
            float acc = 0.0f;
            for (int n = 0; n < B; n++) {
                const float *dyo = dy + ((size_t)n * Co + oc) * Ho * Wo;
                for (int p = 0; p < Ho * Wo; p++) acc += dyo[p];
            }
            b[oc] -= lr * acc;
        }
    }
}
""",
    "conv2d_pw_bwd_weight_sgd": r"""
static void conv2d_pw_bwd_weight_sgd(const float *dy, const float *x, float *w, float *b,
                                     float lr, int rows, int B, int Ci, int Co, int P) {
    for (int oc = 0; oc < rows; oc++) {
        if (w) for (int ic = 0; ic < Ci; ic++) {
            float acc = 0.0f;
            for (int n = 0; n < B; n++) {
                const float *dyo = dy + ((size_t)n * Co + oc) * P;
                const float *xc = x + ((size_t)n * Ci + ic) * P;
                for (int p = 0; p < P; p++) acc += dyo[p] * xc[p];
            }
            w[(size_t)oc * Ci + ic] -= lr * acc;
        }
        if (b) {
            float acc = 0.0f;
            for (int n = 0; n < B; n++) {
                const float *dyo = dy + ((size_t)n * Co + oc) * P;
                for (int p = 0; p < P; p++) acc += dyo[p];
            }
            b[oc] -= lr * acc;
        }
    }
}
""",
    # ---------------------------------------------------- batch norm (eval statistics) -----
    "bn_fwd": r"""
/* y = (x - mean) * invstd * gamma + beta with the running statistics (frozen BN). */
static void bn_fwd(const float *x, const float *mean, const float *invstd, const float *gamma,
                   const float *beta, float *y, int B, int C, int P) {
    for (int n = 0; n < B; n++)
    for (int c = 0; c < C; c++) {
        const float a = invstd[c] * gamma[c];
        const float s = beta[c] - mean[c] * a;
        const float *xc = x + ((size_t)n * C + c) * P;
        float *yc = y + ((size_t)n * C + c) * P;
        for (int p = 0; p < P; p++) yc[p] = xc[p] * a + s;
    }
}
""",
    "bn_bwd": r"""
/* dx = dy * gamma * invstd (if dx); gamma, beta -= lr * (sum dy * xhat, sum dy) (if trained).
   Per channel: the parameter gradients are read from dy first, then dx is written (dx may be
   dy's buffer), then gamma and beta change (dx used the old gamma). */
static void bn_bwd(const float *dy, const float *x, const float *mean, const float *invstd,
                   float *gamma, float *beta, float *dx, int acc, float lr, int train,
                   int B, int C, int P) {
    for (int c = 0; c < C; c++) {
        const float a = invstd[c] * gamma[c];
        float gg = 0.0f, gb = 0.0f;
        if (train) {
            for (int n = 0; n < B; n++) {
                const float *dyc = dy + ((size_t)n * C + c) * P;
                const float *xc = x + ((size_t)n * C + c) * P;
                for (int p = 0; p < P; p++) {
                    gg += dyc[p] * ((xc[p] - mean[c]) * invstd[c]);
                    gb += dyc[p];
                }
            }
        }
        if (dx) {
            for (int n = 0; n < B; n++) {
                const float *dyc = dy + ((size_t)n * C + c) * P;
                float *dxc = dx + ((size_t)n * C + c) * P;
                if (acc) for (int p = 0; p < P; p++) dxc[p] += dyc[p] * a;
                else for (int p = 0; p < P; p++) dxc[p] = dyc[p] * a;
            }
        }
        if (train) {
            gamma[c] -= lr * gg;
            beta[c] -= lr * gb;
        }
    }
}
""",
    # ------------------------------------------------------------- element-wise -----------
    "relu_fwd": r"""
static void relu_fwd(const float *x, float *y, int n) {
    for (int i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}
""",
    "relu_bwd": r"""
/* from the output: y > 0 exactly where x > 0 */
static void relu_bwd(const float *y, const float *dy, float *dx, int acc, int n) {
    if (acc) { for (int i = 0; i < n; i++) dx[i] += y[i] > 0.0f ? dy[i] : 0.0f; }
    else for (int i = 0; i < n; i++) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}
""",
    "hardtanh_fwd": r"""
static void hardtanh_fwd(const float *x, float *y, int n, float lo, float hi) {
    for (int i = 0; i < n; i++) { float v = x[i]; y[i] = v < lo ? lo : (v > hi ? hi : v); }
}
""",
    "hardtanh_bwd": r"""
/* from the output: lo < y < hi exactly where lo < x < hi (PyTorch's hardtanh_backward mask) */
static void hardtanh_bwd(const float *y, const float *dy, float *dx, int acc, int n,
                         float lo, float hi) {
    if (acc) { for (int i = 0; i < n; i++) dx[i] += (y[i] > lo && y[i] < hi) ? dy[i] : 0.0f; }
    else for (int i = 0; i < n; i++) dx[i] = (y[i] > lo && y[i] < hi) ? dy[i] : 0.0f;
}
""",
    "add_fwd": r"""
static void add_fwd(const float *a, const float *b, float *y, int n) {
    for (int i = 0; i < n; i++) y[i] = a[i] + b[i];
}
""",
    "grad_pass": r"""
/* gradient of an identity path (add's operands): dx = dy or dx += dy */
static void grad_pass(const float *dy, float *dx, int acc, int n) {
    if (acc) { for (int i = 0; i < n; i++) dx[i] += dy[i]; }
    else if (dx != dy) memcpy(dx, dy, sizeof(float) * (size_t)n);
}
""",
    # ------------------------------------------------------------------ pooling -----------
    "gap_fwd": r"""
/* adaptive average pooling to 1x1 */
static void gap_fwd(const float *x, float *y, int BC, int P) {
    for (int i = 0; i < BC; i++) {
        float s = 0.0f;
        for (int p = 0; p < P; p++) s += x[(size_t)i * P + p];
        y[i] = s / (float)P;
    }
}
""",
    "gap_bwd": r"""
static void gap_bwd(const float *dy, float *dx, int acc, int BC, int P) {
    for (int i = 0; i < BC; i++) {
        const float d = dy[i] / (float)P;
        float *dxc = dx + (size_t)i * P;
        if (acc) for (int p = 0; p < P; p++) dxc[p] += d;
        else for (int p = 0; p < P; p++) dxc[p] = d;
    }
}
""",
    "maxpool_fwd": r"""
/* max pooling over B*C planes of H x W (padding: never the maximum); PyTorch's rule: the
   first maximum in row-major window order, a NaN wins */
static void maxpool_fwd(const float *x, float *y, int BC, int H, int W, int Ho, int Wo,
                        int KH, int KW, int sh, int sw, int ph, int pw) {
    for (int i = 0; i < BC; i++) {
        const float *xc = x + (size_t)i * H * W;
        for (int oh = 0; oh < Ho; oh++)
        for (int ow = 0; ow < Wo; ow++) {
            const int h0 = oh * sh - ph, w0 = ow * sw - pw;
            const int hs = h0 > 0 ? h0 : 0, he = h0 + KH < H ? h0 + KH : H;
            const int ws = w0 > 0 ? w0 : 0, we = w0 + KW < W ? w0 + KW : W;
            float m = -INFINITY;
            for (int h = hs; h < he; h++)
            for (int w = ws; w < we; w++) {
                const float v = xc[h * W + w];
                if (v > m || v != v) m = v;
            }
            y[((size_t)i * Ho + oh) * Wo + ow] = m;
        }
    }
}
""",
    "maxpool_bwd": r"""
/* the gradient goes to the window's maximum of the saved input (found again as forward did) */
static void maxpool_bwd(const float *x, const float *dy, float *dx, int acc, int BC, int H,
                        int W, int Ho, int Wo, int KH, int KW, int sh, int sw, int ph, int pw) {
    if (!acc) k_zero(dx, BC * H * W);
    for (int i = 0; i < BC; i++) {
        const float *xc = x + (size_t)i * H * W;
        float *dxc = dx + (size_t)i * H * W;
        for (int oh = 0; oh < Ho; oh++)
        for (int ow = 0; ow < Wo; ow++) {
            const int h0 = oh * sh - ph, w0 = ow * sw - pw;
            const int hs = h0 > 0 ? h0 : 0, he = h0 + KH < H ? h0 + KH : H;
            const int ws = w0 > 0 ? w0 : 0, we = w0 + KW < W ? w0 + KW : W;
            float m = -INFINITY;
            int arg = hs * W + ws;
            for (int h = hs; h < he; h++)
            for (int w = ws; w < we; w++) {
                const float v = xc[h * W + w];
                if (v > m || v != v) { m = v; arg = h * W + w; }
            }
            dxc[arg] += dy[((size_t)i * Ho + oh) * Wo + ow];
        }
    }
}
""",
    "avgpool_fwd": r"""
/* average pooling over B*C planes; the divisor is KH*KW (zero padding counted) */
static void avgpool_fwd(const float *x, float *y, int BC, int H, int W, int Ho, int Wo,
                        int KH, int KW, int sh, int sw, int ph, int pw) {
    const float div = (float)(KH * KW);
    for (int i = 0; i < BC; i++) {
        const float *xc = x + (size_t)i * H * W;
        for (int oh = 0; oh < Ho; oh++)
        for (int ow = 0; ow < Wo; ow++) {
            const int h0 = oh * sh - ph, w0 = ow * sw - pw;
            const int hs = h0 > 0 ? h0 : 0, he = h0 + KH < H ? h0 + KH : H;
            const int ws = w0 > 0 ? w0 : 0, we = w0 + KW < W ? w0 + KW : W;
            float s = 0.0f;
            for (int h = hs; h < he; h++)
            for (int w = ws; w < we; w++) s += xc[h * W + w];
            y[((size_t)i * Ho + oh) * Wo + ow] = s / div;
        }
    }
}
""",
    "avgpool_bwd": r"""
static void avgpool_bwd(const float *dy, float *dx, int acc, int BC, int H, int W, int Ho,
                        int Wo, int KH, int KW, int sh, int sw, int ph, int pw) {
    const float div = (float)(KH * KW);
    if (!acc) k_zero(dx, BC * H * W);
    for (int i = 0; i < BC; i++) {
        float *dxc = dx + (size_t)i * H * W;
        for (int oh = 0; oh < Ho; oh++)
        for (int ow = 0; ow < Wo; ow++) {
            const int h0 = oh * sh - ph, w0 = ow * sw - pw;
            const int hs = h0 > 0 ? h0 : 0, he = h0 + KH < H ? h0 + KH : H;
            const int ws = w0 > 0 ? w0 : 0, we = w0 + KW < W ? w0 + KW : W;
            const float g = dy[((size_t)i * Ho + oh) * Wo + ow] / div;
            for (int h = hs; h < he; h++)
            for (int w = ws; w < we; w++) dxc[h * W + w] += g;
        }
    }
}
""",
    # ------------------------------------------------------------------- linear -----------
    "linear_fwd": r"""
static void linear_fwd(const float *x, const float *w, const float *b, float *y,
                       int B, int I, int O) {
    for (int n = 0; n < B; n++)
    for (int o = 0; o < O; o++) {
        float acc = 0.0f;
        const float *wo = w + (size_t)o * I;
        const float *xn = x + (size_t)n * I;
        for (int i = 0; i < I; i++) acc += xn[i] * wo[i];
        y[(size_t)n * O + o] = acc + (b ? b[o] : 0.0f);
    }
}
""",
    "linear_bwd_input": r"""
static void linear_bwd_input(const float *dy, const float *w, float *dx, int acc,
                             int B, int I, int O) {
    for (int n = 0; n < B; n++)
    for (int i = 0; i < I; i++) {
        float s = 0.0f;
        for (int o = 0; o < O; o++) s += dy[(size_t)n * O + o] * w[(size_t)o * I + i];
        if (acc) dx[(size_t)n * I + i] += s; else dx[(size_t)n * I + i] = s;
    }
}
""",
    "linear_bwd_weight_sgd": r"""
static void linear_bwd_weight_sgd(const float *dy, const float *x, float *w, float *b, float lr,
                                  int rows, int B, int I, int O) {
    for (int o = 0; o < rows; o++) {
        if (w) for (int i = 0; i < I; i++) {
            float s = 0.0f;
            for (int n = 0; n < B; n++) s += dy[(size_t)n * O + o] * x[(size_t)n * I + i];
            w[(size_t)o * I + i] -= lr * s;
        }
        if (b) {
            float s = 0.0f;
            for (int n = 0; n < B; n++) s += dy[(size_t)n * O + o];
            b[o] -= lr * s;
        }
    }
}
""",
    # ------------------------------------------------------ softmax cross-entropy --------
    "xent_fwd": r"""
/* mean softmax cross-entropy; keeps the probabilities for backward; returns the loss and
   counts correct argmax predictions */
static float xent_fwd(const float *z, const int32_t *y, float *prob, int B, int K, int *correct) {
    float loss = 0.0f;
    for (int n = 0; n < B; n++) {
        const float *zn = z + (size_t)n * K;
        float m = zn[0]; int arg = 0;
        for (int k = 1; k < K; k++) if (zn[k] > m) { m = zn[k]; arg = k; }
        float s = 0.0f;
        for (int k = 0; k < K; k++) s += expf(zn[k] - m);
        const float lse = logf(s);
        for (int k = 0; k < K; k++) prob[(size_t)n * K + k] = expf(zn[k] - m - lse);
        loss += -(zn[y[n]] - m - lse);
        if (correct && arg == y[n]) (*correct)++;
    }
    return loss / (float)B;
}
""",
    "xent_bwd": r"""
static void xent_bwd(const float *prob, const int32_t *y, float *dz, int B, int K) {
    const float inv = 1.0f / (float)B;
    for (int n = 0; n < B; n++)
    for (int k = 0; k < K; k++)
        dz[(size_t)n * K + k] = prob[(size_t)n * K + k] * inv - (k == y[n] ? inv : 0.0f);
}
""",
}
