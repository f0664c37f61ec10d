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
#include <stddef.h>

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
/* NOTE [ Register-blocked fp32 kernels ]
   The multiply-accumulate kernels keep partial sums in registers and reuse each loaded
   operand several times: a conv computes 4 outputs of a row at once (each weight loaded once
   for the 4), its input gradient scatters 4 output gradients at once, its weight gradient keeps
   the 9 taps of a 3x3 kernel in 9 accumulators, and the 1x1 / linear kernels are 4x4
   register-tiled matrix products. Border outputs (taps in the padding) and remainders take the
   plain per-tap loop. The common shapes (3x3, stride 1 or 2, dilation 1) are compile-time
   constants of always-inlined bodies, so the compiler unrolls the taps into immediate-offset
   loads. Sums run in the same order as the plain loops where cheap, otherwise in another fixed
   order; tests/test_codegen_kernels.py holds each kernel to PyTorch within float tolerance. */
#define ET_AI static inline __attribute__((always_inline))
/* output columns [*a, *b) whose every tap kw = 0..KW-1 reads inside 0..W-1 */
static inline void k_inner(int Wo, int W, int KW, int s, int p, int d, int *a, int *b) {
    int lo = (p + s - 1) / s, v = W - 1 + p - (KW - 1) * d;
    int hi = v < 0 ? 0 : v / s + 1;
    if (hi > Wo) hi = Wo;
    if (lo > hi) lo = hi;
    *a = lo; *b = hi;
}
/* one output: sum over the in-bounds taps of channel group `cig` (the plain loop) */
static inline float k_px(const float *restrict xg, const float *restrict wo, int cig, int H,
                         int W, int KH, int KW, int kh0, int kh1, int kw0, int kw1, int ih0,
                         int iw0, int dh, int dw) {
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
    return acc;
}
/* 4 outputs of a row, every tap inside horizontally: y[j] = sum x[j*S + kw*D] * w[kw] */
ET_AI void k_fwd4(const float *restrict xg, const float *restrict wo, float *restrict y,
                  float bias, int cig, int HW, int W, int KH, int KW, int kh0, int kh1,
                  int xoff, int dh, int S, int D) {
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
    for (int ic = 0; ic < cig; ic++) {
        const float *xr = xg + ((ptrdiff_t)ic * HW + xoff + kh0 * dh * W);
        const float *wr = wo + (ic * KH + kh0) * KW;
        for (int kh = kh0; kh < kh1; kh++, xr += dh * W, wr += KW) {
            for (int kw = 0; kw < KW; kw++) {
                const float w = wr[kw];
                a0 += xr[kw * D] * w;
                a1 += xr[S + kw * D] * w;
                a2 += xr[2 * S + kw * D] * w;
                a3 += xr[3 * S + kw * D] * w;
            }
        }
    }
    y[0] = a0 + bias; y[1] = a1 + bias; y[2] = a2 + bias; y[3] = a3 + bias;
}
/* the 3x3 (dilation 1) case of k_fwd4 with the taps unrolled: per kernel row 3 weight loads,
   6 (stride 1) or 9 (stride 2) input loads, 12 multiply-adds */
ET_AI void k_fwd4_k3(const float *restrict xg, const float *restrict wo, float *restrict y,
                     float bias, int cig, int HW, int W, int kh0, int kh1, int xoff, int S) {
    float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
    for (int ic = 0; ic < cig; ic++) {
        const float *xr = xg + ((ptrdiff_t)ic * HW + xoff + kh0 * W);
        const float *wr = wo + (ic * 3 + kh0) * 3;
        for (int kh = kh0; kh < kh1; kh++, xr += W, wr += 3) {
            const float w0 = wr[0], w1 = wr[1], w2 = wr[2];
            const float x0 = xr[0], x1 = xr[1], x2 = xr[2], x3 = xr[3], x4 = xr[4];
            const float x5 = xr[5];
            if (S == 1) {
                a0 += x0 * w0; a0 += x1 * w1; a0 += x2 * w2;
                a1 += x1 * w0; a1 += x2 * w1; a1 += x3 * w2;
                a2 += x2 * w0; a2 += x3 * w1; a2 += x4 * w2;
                a3 += x3 * w0; a3 += x4 * w1; a3 += x5 * w2;
            } else {
                const float x6 = xr[6], x7 = xr[7], x8 = xr[8];
                a0 += x0 * w0; a0 += x1 * w1; a0 += x2 * w2;
                a1 += x2 * w0; a1 += x3 * w1; a1 += x4 * w2;
                a2 += x4 * w0; a2 += x5 * w1; a2 += x6 * w2;
                a3 += x6 * w0; a3 += x7 * w1; a3 += x8 * w2;
            }
        }
    }
    y[0] = a0 + bias; y[1] = a1 + bias; y[2] = a2 + bias; y[3] = a3 + bias;
}
/* 2 outputs of a row, 3x3 (dilation 1), every tap inside horizontally */
ET_AI void k_fwd2_k3(const float *restrict xg, const float *restrict wo, float *restrict y,
                     float bias, int cig, int HW, int W, int kh0, int kh1, int xoff, int S) {
    float a0 = 0.0f, a1 = 0.0f;
    for (int ic = 0; ic < cig; ic++) {
        const float *xr = xg + ((ptrdiff_t)ic * HW + xoff + kh0 * W);
        const float *wr = wo + (ic * 3 + kh0) * 3;
        for (int kh = kh0; kh < kh1; kh++, xr += W, wr += 3) {
            const float w0 = wr[0], w1 = wr[1], w2 = wr[2];
            a0 += xr[0] * w0; a0 += xr[1] * w1; a0 += xr[2] * w2;
            a1 += xr[S] * w0; a1 += xr[S + 1] * w1; a1 += xr[S + 2] * w2;
        }
    }
    y[0] = a0 + bias; y[1] = a1 + bias;
}
/* one border output of a 3x3 kernel (dilation 1) whose taps [KA, KB) are inside */
ET_AI float k_fwd1_k3p(const float *restrict xg, const float *restrict wo, int cig, int HW,
                       int W, int kh0, int kh1, int xoff, int KA, int KB) {
    float a = 0.0f;
    for (int ic = 0; ic < cig; ic++) {
        const float *xr = xg + ((ptrdiff_t)ic * HW + xoff + kh0 * W);
        const float *wr = wo + (ic * 3 + kh0) * 3;
        for (int kh = kh0; kh < kh1; kh++, xr += W, wr += 3)
#pragma GCC unroll 3
            for (int kw = KA; kw < KB; kw++) a += xr[kw] * wr[kw];
    }
    return a;
}
/* its transpose */
ET_AI void k_bwd1_k3p(float *restrict dxg, const float *restrict wo, float d, int cig, int HW,
                      int W, int kh0, int kh1, int xoff, int KA, int KB) {
    for (int ic = 0; ic < cig; ic++) {
        float *dr = dxg + ((ptrdiff_t)ic * HW + xoff + kh0 * W);
        const float *wr = wo + (ic * 3 + kh0) * 3;
        for (int kh = kh0; kh < kh1; kh++, dr += W, wr += 3)
#pragma GCC unroll 3
            for (int kw = KA; kw < KB; kw++) dr[kw] += wr[kw] * d;
    }
}
/* one output whose 3 taps are all inside (3x3, dilation 1) */
ET_AI float k_fwd1_k3(const float *restrict xg, const float *restrict wo, int cig, int HW,
                      int W, int kh0, int kh1, int xoff) {
    float a = 0.0f;
    for (int ic = 0; ic < cig; ic++) {
        const float *xr = xg + ((ptrdiff_t)ic * HW + xoff + kh0 * W);
        const float *wr = wo + (ic * 3 + kh0) * 3;
        for (int kh = kh0; kh < kh1; kh++, xr += W, wr += 3) {
            a += xr[0] * wr[0]; a += xr[1] * wr[1]; a += xr[2] * wr[2];
        }
    }
    return a;
}
/* the transpose: dx[j*S + kw*D] += w[kw] * d[j] for 4 output gradients d */
ET_AI void k_bwd4(float *restrict dxg, const float *restrict wo, const float *restrict d,
                  int cig, int HW, int W, int KH, int KW, int kh0, int kh1, int xoff, int dh,
                  int S, int D) {
    const float d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];
    for (int ic = 0; ic < cig; ic++) {
        float *dr = dxg + ((ptrdiff_t)ic * HW + xoff + kh0 * dh * W);
        const float *wr = wo + (ic * KH + kh0) * KW;
        for (int kh = kh0; kh < kh1; kh++, dr += dh * W, wr += KW) {
            for (int kw = 0; kw < KW; kw++) {
                const float w = wr[kw];
                dr[kw * D] += w * d0;
                dr[S + kw * D] += w * d1;
                dr[2 * S + kw * D] += w * d2;
                dr[3 * S + kw * D] += w * d3;
            }
        }
    }
}
/* the 3x3 (dilation 1) scatter of 4 output gradients with the 9 weights in registers and
   each touched input-gradient element loaded and stored once per row */
ET_AI void k_bwd4_k3(float *restrict dxg, const float *restrict wo, const float *restrict d,
                     int cig, int HW, int W, int kh0, int kh1, int xoff, int S) {
    const float d0 = d[0], d1 = d[1], d2 = d[2], d3 = d[3];
    for (int ic = 0; ic < cig; ic++) {
        float *dr = dxg + ((ptrdiff_t)ic * HW + xoff + kh0 * W);
        const float *wr = wo + (ic * 3 + kh0) * 3;
        for (int kh = kh0; kh < kh1; kh++, dr += W, wr += 3) {
            const float w0 = wr[0], w1 = wr[1], w2 = wr[2];
            if (S == 1) {
                float v0 = dr[0], v1 = dr[1], v2 = dr[2], v3 = dr[3], v4 = dr[4], v5 = dr[5];
                v0 += w0 * d0;
                v1 += w1 * d0; v1 += w0 * d1;
                v2 += w2 * d0; v2 += w1 * d1; v2 += w0 * d2;
                v3 += w2 * d1; v3 += w1 * d2; v3 += w0 * d3;
                v4 += w2 * d2; v4 += w1 * d3;
                v5 += w2 * d3;
                dr[0] = v0; dr[1] = v1; dr[2] = v2; dr[3] = v3; dr[4] = v4; dr[5] = v5;
            } else {
                float v0 = dr[0], v1 = dr[1], v2 = dr[2], v3 = dr[3], v4 = dr[4], v5 = dr[5];
                float v6 = dr[6], v7 = dr[7], v8 = dr[8];
                v0 += w0 * d0; v1 += w1 * d0; v2 += w2 * d0; v2 += w0 * d1;
                v3 += w1 * d1; v4 += w2 * d1; v4 += w0 * d2; v5 += w1 * d2;
                v6 += w2 * d2; v6 += w0 * d3; v7 += w1 * d3; v8 += w2 * d3;
                dr[0] = v0; dr[1] = v1; dr[2] = v2; dr[3] = v3; dr[4] = v4; dr[5] = v5;
                dr[6] = v6; dr[7] = v7; dr[8] = v8;
            }
        }
    }
}
/* one output gradient over its 3 taps, all inside (3x3, dilation 1) */
ET_AI void k_bwd1_k3(float *restrict dxg, const float *restrict wo, float d, int cig, int HW,
                     int W, int kh0, int kh1, int xoff) {
    for (int ic = 0; ic < cig; ic++) {
        float *dr = dxg + ((ptrdiff_t)ic * HW + xoff + kh0 * W);
        const float *wr = wo + (ic * 3 + kh0) * 3;
        for (int kh = kh0; kh < kh1; kh++, dr += W, wr += 3) {
            dr[0] += wr[0] * d; dr[1] += wr[1] * d; dr[2] += wr[2] * d;
        }
    }
}
/* sum over output rows [oh0, oh1) x columns [ow0, ow1) of dy * x for one tap; `base` is the
   tap's input offset for output (0, 0) */
static inline float k_tap(const float *restrict dyo, const float *restrict xc, int base, int Wo,
                          int W, int oh0, int oh1, int ow0, int ow1, int sh, int sw) {
    float acc = 0.0f;
    for (int oh = oh0; oh < oh1; oh++) {
        const float *dr = dyo + oh * Wo;
        const float *xr = xc + (base + oh * sh * W);
        for (int ow = ow0; ow < ow1; ow++) acc += dr[ow] * xr[ow * sw];
    }
    return acc;
}
/* one border output's contribution to the 9 taps of a 3x3 weight gradient: taps outside the
   input are skipped (the accumulators stay in registers: every index is a constant) */
ET_AI void k_wg_px(float *a, float d, const float *restrict xc, int H, int W, int ih, int iw) {
#pragma GCC unroll 3
    for (int kh = 0; kh < 3; kh++) {
        const int r = ih + kh;
        if (r < 0 || r >= H) continue;
        const float *xr = xc + r * W;
#pragma GCC unroll 3
        for (int kw = 0; kw < 3; kw++) {
            const int c = iw + kw;
            if (c >= 0 && c < W) a[kh * 3 + kw] += d * xr[c];
        }
    }
}
/* the 9 weight-gradient taps of a 3x3 kernel (dilation 1, stride S both ways) over the whole
   output plane: inside the rectangle [r0, r1) x [c0, c1), where every tap is inside, one dy
   load feeds 9 accumulators; the border outputs skip their outside taps */
ET_AI void k_wgrad_k3(const float *restrict dyo, const float *restrict xc, float *restrict g,
                      int Ho, int Wo, int H, int W, int r0, int r1, int c0, int c1, int ph,
                      int pw, int S) {
    float a[9] = {0};
    for (int oh = 0; oh < Ho; oh++) {
        const float *dr = dyo + oh * Wo;
        const int ih = oh * S - ph;
        if (oh < r0 || oh >= r1) {
            for (int ow = 0; ow < Wo; ow++) k_wg_px(a, dr[ow], xc, H, W, ih, ow * S - pw);
            continue;
        }
        for (int ow = 0; ow < c0; ow++) k_wg_px(a, dr[ow], xc, H, W, ih, ow * S - pw);
        const float *x0 = xc + (ih * W + c0 * S - pw);
        const float *x1 = x0 + W, *x2 = x1 + W;
        int ow = c0;
        for (; ow + 2 <= c1; ow += 2, x0 += 2 * S, x1 += 2 * S, x2 += 2 * S) {
            /* two outputs: their windows share a column (stride 2) or two (stride 1) */
            const float d = dr[ow], e = dr[ow + 1];
            const float p0 = x0[0], p1 = x0[1], p2 = x0[2], p3 = x0[S], p4 = x0[S + 1];
            const float p5 = x0[S + 2];
            a[0] += d * p0; a[1] += d * p1; a[2] += d * p2;
            a[0] += e * p3; a[1] += e * p4; a[2] += e * p5;
            const float q0 = x1[0], q1 = x1[1], q2 = x1[2], q3 = x1[S], q4 = x1[S + 1];
            const float q5 = x1[S + 2];
            a[3] += d * q0; a[4] += d * q1; a[5] += d * q2;
            a[3] += e * q3; a[4] += e * q4; a[5] += e * q5;
            const float r0 = x2[0], r1 = x2[1], r2 = x2[2], r3 = x2[S], r4 = x2[S + 1];
            const float r5 = x2[S + 2];
            a[6] += d * r0; a[7] += d * r1; a[8] += d * r2;
            a[6] += e * r3; a[7] += e * r4; a[8] += e * r5;
        }
        for (; ow < c1; ow++, x0 += S, x1 += S, x2 += S) {
            const float d = dr[ow];
            a[0] += d * x0[0]; a[1] += d * x0[1]; a[2] += d * x0[2];
            a[3] += d * x1[0]; a[4] += d * x1[1]; a[5] += d * x1[2];
            a[6] += d * x2[0]; a[7] += d * x2[1]; a[8] += d * x2[2];
        }
        for (ow = c1; ow < Wo; ow++) k_wg_px(a, dr[ow], xc, H, W, ih, ow * S - pw);
    }
    for (int t = 0; t < 9; t++) g[t] += a[t];
}
/* an MR x NR tile (MR, NR in {1, 4}: compile-time) of C = A B: a_u = a + u * lda stepping ak
   along k, b_v = b + v * ldb stepping bk; each loaded a and b feeds NR and MR multiply-adds */
ET_AI void k_tile(int MR, int NR, const float *restrict a, int lda, int ak,
                  const float *restrict b, int ldb, int bk, int K, float *restrict c) {
    float acc[4][4] = {{0.0f}};
    const float *ap[4], *bp[4];
#pragma GCC unroll 4
    for (int u = 0; u < MR; u++) ap[u] = a + (size_t)u * lda;
#pragma GCC unroll 4
    for (int v = 0; v < NR; v++) bp[v] = b + (size_t)v * ldb;
#define K_STEP                                                                    \
    {                                                                             \
        float x[4], y[4];                                                         \
        _Pragma("GCC unroll 4") for (int u = 0; u < MR; u++) {                    \
            x[u] = *ap[u]; ap[u] += ak;                                           \
        }                                                                         \
        _Pragma("GCC unroll 4") for (int v = 0; v < NR; v++) {                    \
            y[v] = *bp[v]; bp[v] += bk;                                           \
        }                                                                         \
        _Pragma("GCC unroll 4") for (int u = 0; u < MR; u++)                      \
            _Pragma("GCC unroll 4") for (int v = 0; v < NR; v++) acc[u][v] += x[u] * y[v]; \
    }
    if (MR * NR > 4) {  /* 16 accumulators: no room to unroll k */
#pragma GCC unroll 1
        for (int k = 0; k < K; k++) K_STEP
    } else {            /* a 4 x 1 / 1 x 4 strip: unrolled 4 times for immediate offsets */
#pragma GCC unroll 4
        for (int k = 0; k < K; k++) K_STEP
    }
#undef K_STEP
#pragma GCC unroll 4
    for (int u = 0; u < MR; u++)
#pragma GCC unroll 4
        for (int v = 0; v < NR; v++) c[u * 4 + v] = acc[u][v];
}
/* where a tile lands: out[i * ldo + j * odj] = c (+ bias[i]) | += c | -= lr * c */
enum { K_SET = 0, K_ADD = 1, K_SGD = 2 };
ET_AI void k_put(int MR, int NR, const float *restrict c, float *restrict out, int ldo, int odj,
                 int mode, const float *restrict bias, float lr) {
#pragma GCC unroll 4
    for (int u = 0; u < MR; u++)
#pragma GCC unroll 4
        for (int v = 0; v < NR; v++) {
            float *o = out + (size_t)u * ldo + (size_t)v * odj;
            const float cv = c[u * 4 + v];
            if (mode == K_SET) *o = bias ? cv + bias[u] : cv;
            else if (mode == K_ADD) *o += cv;
            else *o -= lr * cv;
        }
}
#define K_BLOCK(MR, NR)                                                                      \
    do {                                                                                     \
        k_tile(MR, NR, a + (size_t)i * lda, lda, ak, b + (size_t)j * ldb, ldb, bk, K, c);   \
        k_put(MR, NR, c, out + (size_t)i * ldo + (size_t)j * odj, ldo, odj, mode,            \
              bias ? bias + i : 0, lr);                                                      \
    } while (0)
/* C[M x N] = A[M x K] B[K x N] in 4 x 4 register tiles (edges 4 x 1, 1 x 4, 1 x 1), each
   element written through k_put. ldb == 1 and ak == 1 are the contiguous cases the compiler
   folds. */
ET_AI void k_gemm(int M, int N, int K, const float *restrict a, int lda, int ak,
                   const float *restrict b, int ldb, int bk, float *restrict out, int ldo,
                   int odj, int mode, const float *restrict bias, float lr) {
    float c[16];
    int i = 0;
    for (; i + 4 <= M; i += 4) {
        int j = 0;
        for (; j + 4 <= N; j += 4) K_BLOCK(4, 4);
        for (; j < N; j++) K_BLOCK(4, 1);
    }
    for (; i < M; i++) {
        int j = 0;
        for (; j + 4 <= N; j += 4) K_BLOCK(1, 4);
        for (; j < N; j++) K_BLOCK(1, 1);
    }
}
/* one output gradient scattered over its in-bounds taps (the plain loop) */
static inline void k_px_bwd(float *restrict dxg, const float *restrict wo, float d, int cig,
                            int H, int W, int KH, int KW, int kh0, int kh1, int kw0, int kw1,
                            int ih0, int iw0, int dh, int dw) {
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
"""

KERNELS: dict[str, str] = {
    # ---------------------------------------------------------------- convolution ---------
    "conv2d_fwd": r"""
static void conv2d_fwd(const float *x, const float *w, const float *b, float *y,
                       int B, int Ci, int H, int W, int Co, int Ho, int Wo,
                       int KH, int KW, int sh, int sw, int ph, int pw,
                       int dh, int dw, int G) {
    const int cig = Ci / G, cog = Co / G, HW = H * W;
    const int k3 = KH == 3 && KW == 3 && dh == 1 && dw == 1 && (sw == 1 || sw == 2);
    int ca, cb;
    k_inner(Wo, W, KW, sw, pw, dw, &ca, &cb);
    for (int n = 0; n < B; n++)
    for (int oc = 0; oc < Co; oc++) {
        const int g = oc / cog;
        const float *wo = w + (size_t)oc * cig * KH * KW;
        const float *xg = x + ((size_t)n * Ci + g * cig) * HW;
        float *yo = y + ((size_t)n * Co + oc) * Ho * Wo;
        const float bias = b ? b[oc] : 0.0f;
        for (int oh = 0; oh < Ho; oh++) {
            const int kh0 = k_lo(oh, sh, ph, dh), kh1 = k_hi(oh, sh, ph, H, KH, dh);
            const int ih0 = oh * sh - ph;
            float *yr = yo + oh * Wo;
            int ow = 0;
            for (; ow < ca; ow++) {
                const int kw0 = k_lo(ow, sw, pw, dw), kw1 = k_hi(ow, sw, pw, W, KW, dw);
                if (k3 && kw0 == 1 && kw1 == 3)
                    yr[ow] = k_fwd1_k3p(xg, wo, cig, HW, W, kh0, kh1, ih0 * W + ow * sw - pw, 1,
                                        3) + bias;
                else
                    yr[ow] = k_px(xg, wo, cig, H, W, KH, KW, kh0, kh1, kw0, kw1, ih0,
                                  ow * sw - pw, dh, dw) + bias;
            }
            if (k3) {
                for (; ow + 4 <= cb; ow += 4) {
                    if (sw == 1)
                        k_fwd4_k3(xg, wo, yr + ow, bias, cig, HW, W, kh0, kh1,
                                  ih0 * W + ow - pw, 1);
                    else
                        k_fwd4_k3(xg, wo, yr + ow, bias, cig, HW, W, kh0, kh1,
                                  ih0 * W + ow * sw - pw, 2);
                }
                for (; ow + 2 <= cb; ow += 2) {
                    if (sw == 1)
                        k_fwd2_k3(xg, wo, yr + ow, bias, cig, HW, W, kh0, kh1,
                                  ih0 * W + ow - pw, 1);
                    else
                        k_fwd2_k3(xg, wo, yr + ow, bias, cig, HW, W, kh0, kh1,
                                  ih0 * W + ow * sw - pw, 2);
                }
                for (; ow < cb; ow++)
                    yr[ow] = k_fwd1_k3(xg, wo, cig, HW, W, kh0, kh1, ih0 * W + ow * sw - pw)
                             + bias;
            } else
                for (; ow + 4 <= cb; ow += 4)
                    k_fwd4(xg, wo, yr + ow, bias, cig, HW, W, KH, KW, kh0, kh1,
                           ih0 * W + ow * sw - pw, dh, sw, dw);
            for (; ow < Wo; ow++) {
                const int kw0 = k_lo(ow, sw, pw, dw), kw1 = k_hi(ow, sw, pw, W, KW, dw);
                if (k3 && kw0 == 0 && kw1 == 2)
                    yr[ow] = k_fwd1_k3p(xg, wo, cig, HW, W, kh0, kh1, ih0 * W + ow * sw - pw, 0,
                                        2) + bias;
                else
                    yr[ow] = k_px(xg, wo, cig, H, W, KH, KW, kh0, kh1, kw0, kw1, ih0,
                                  ow * sw - pw, dh, dw) + bias;
            }
        }
    }
}
""",
    "conv2d_pw_fwd": r"""
/* 1x1, stride 1, no padding, no groups: y[n,oc,:] = b[oc] + sum_ic w[oc,ic] * x[n,ic,:]
   (Y = W X, register-tiled) */
static void conv2d_pw_fwd(const float *x, const float *w, const float *b, float *y,
                          int B, int Ci, int Co, int P) {
    for (int n = 0; n < B; n++)
        k_gemm(Co, P, Ci, w, Ci, 1, x + (size_t)n * Ci * P, 1, P, y + (size_t)n * Co * P, P, 1,
               K_SET, b, 0.0f);
}
""",
    "conv2d_bwd_input": r"""
static void conv2d_bwd_input(const float *dy, const float *w, float *dx, int acc,
                             int B, int Ci, int H, int W, int Co, int Ho, int Wo,
                             int KH, int KW, int sh, int sw, int ph, int pw,
                             int dh, int dw, int G) {
    const int cig = Ci / G, cog = Co / G, HW = H * W;
    const int k3 = KH == 3 && KW == 3 && dh == 1 && dw == 1;
    int ca, cb;
    k_inner(Wo, W, KW, sw, pw, dw, &ca, &cb);
    if (!acc) k_zero(dx, B * Ci * H * W);
    for (int n = 0; n < B; n++)
    for (int oc = 0; oc < Co; oc++) {
        const int g = oc / cog;
        const float *wo = w + (size_t)oc * cig * KH * KW;
        const float *dyo = dy + ((size_t)n * Co + oc) * Ho * Wo;
        float *dxg = dx + ((size_t)n * Ci + g * cig) * HW;
        for (int oh = 0; oh < Ho; oh++) {
            const int kh0 = k_lo(oh, sh, ph, dh), kh1 = k_hi(oh, sh, ph, H, KH, dh);
            const int ih0 = oh * sh - ph;
            const float *dr = dyo + oh * Wo;
            int ow = 0;
            for (; ow < ca; ow++) {
                const int kw0 = k_lo(ow, sw, pw, dw), kw1 = k_hi(ow, sw, pw, W, KW, dw);
                if (k3 && kw0 == 1 && kw1 == 3)
                    k_bwd1_k3p(dxg, wo, dr[ow], cig, HW, W, kh0, kh1, ih0 * W + ow * sw - pw, 1,
                               3);
                else
                    k_px_bwd(dxg, wo, dr[ow], cig, H, W, KH, KW, kh0, kh1, kw0, kw1, ih0,
                             ow * sw - pw, dh, dw);
            }
            if (k3 && (sw == 1 || sw == 2)) {
                for (; ow + 4 <= cb; ow += 4) {
                    if (sw == 1)
                        k_bwd4_k3(dxg, wo, dr + ow, cig, HW, W, kh0, kh1, ih0 * W + ow - pw, 1);
                    else
                        k_bwd4_k3(dxg, wo, dr + ow, cig, HW, W, kh0, kh1,
                                  ih0 * W + 2 * ow - pw, 2);
                }
                for (; ow < cb; ow++)
                    k_bwd1_k3(dxg, wo, dr[ow], cig, HW, W, kh0, kh1, ih0 * W + ow * sw - pw);
            } else
                for (; ow + 4 <= cb; ow += 4)
                    k_bwd4(dxg, wo, dr + ow, cig, HW, W, KH, KW, kh0, kh1,
                           ih0 * W + ow * sw - pw, dh, sw, dw);
            for (; ow < Wo; ow++) {
                const int kw0 = k_lo(ow, sw, pw, dw), kw1 = k_hi(ow, sw, pw, W, KW, dw);
                if (k3 && kw0 == 0 && kw1 == 2)
                    k_bwd1_k3p(dxg, wo, dr[ow], cig, HW, W, kh0, kh1, ih0 * W + ow * sw - pw, 0,
                               2);
                else
                    k_px_bwd(dxg, wo, dr[ow], cig, H, W, KH, KW, kh0, kh1, kw0, kw1, ih0,
                             ow * sw - pw, dh, dw);
            }
        }
    }
}
""",
    "conv2d_pw_bwd_input": r"""
/* dX = W^T dY, register-tiled */
static void conv2d_pw_bwd_input(const float *dy, const float *w, float *dx, int acc,
                                int B, int Ci, int Co, int P) {
    for (int n = 0; n < B; n++)
        k_gemm(Ci, P, Co, w, 1, Ci, dy + (size_t)n * Co * P, 1, P, dx + (size_t)n * Ci * P, P,
               1, acc ? K_ADD : K_SET, 0, 0.0f);
}
""",
    "conv2d_bwd_weight_sgd": r"""
static void conv2d_bwd_weight_sgd(const float *dy, const float *x, float *w, float *b, float lr,
                                  int rows, int B, int Ci, int H, int W, int Co, int Ho, int Wo,
                                  int KH, int KW, int sh, int sw, int ph, int pw,
                                  int dh, int dw, int G) {
    const int cig = Ci / G, cog = Co / G, KK = KH * KW;
    int ra, rb, ca, cb;  /* the outputs whose every tap is inside */
    k_inner(Ho, H, KH, sh, ph, dh, &ra, &rb);
    k_inner(Wo, W, KW, sw, pw, dw, &ca, &cb);
    const int k3 = KH == 3 && KW == 3 && dh == 1 && dw == 1 && sh == sw && (sw == 1 || sw == 2);
    for (int oc = 0; oc < rows; oc++) {
        const int g = oc / cog;
        if (w) for (int ic = 0; ic < cig; ic++) {
            float *wk = w + ((size_t)oc * cig + ic) * KK;
            if (k3) {
                float g9[9] = {0};
                for (int n = 0; n < B; n++) {
                    const float *dyo = dy + ((size_t)n * Co + oc) * Ho * Wo;
                    const float *xc = x + ((size_t)n * Ci + g * cig + ic) * H * W;
                    if (sw == 1) k_wgrad_k3(dyo, xc, g9, Ho, Wo, H, W, ra, rb, ca, cb, ph, pw, 1);
                    else k_wgrad_k3(dyo, xc, g9, Ho, Wo, H, W, ra, rb, ca, cb, ph, pw, 2);
                }
                for (int t = 0; t < 9; t++) wk[t] -= lr * g9[t];
                continue;
            }
            for (int kh = 0; kh < KH; kh++) {
                const int oh0 = o_lo(kh, sh, ph, dh), oh1 = o_hi(kh, sh, ph, H, Ho, dh);
                for (int kw = 0; kw < KW; kw++) {
                    const int ow0 = o_lo(kw, sw, pw, dw), ow1 = o_hi(kw, sw, pw, W, Wo, dw);
                    const int base = (kh * dh - ph) * W + kw * dw - pw;
                    float acc = 0.0f;
                    for (int n = 0; n < B; n++) {
                        const float *dyo = dy + ((size_t)n * Co + oc) * Ho * Wo;
                        const float *xc = x + ((size_t)n * Ci + g * cig + ic) * H * W;
                        acc += k_tap(dyo, xc, base, Wo, W, oh0, oh1, ow0, ow1, sh, sw);
                    }
                    wk[kh * KW + kw] -= lr * acc;
                }
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
/* dW = dY X^T (batch 1: register-tiled, applied as each tile completes) */
static void conv2d_pw_bwd_weight_sgd(const float *dy, const float *x, float *w, float *b,
                                     float lr, int rows, int B, int Ci, int Co, int P) {
    if (w && B == 1) k_gemm(rows, Ci, P, dy, P, 1, x, P, 1, w, Ci, 1, K_SGD, 0, lr);
    for (int oc = 0; oc < rows; oc++) {
        if (w && B != 1) for (int ic = 0; ic < Ci; ic++) {
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
        const float *restrict xc = x + ((size_t)n * C + c) * P;
        float *restrict yc = y + ((size_t)n * C + c) * P;
#pragma GCC unroll 4
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
        const float mc = mean[c], ic = invstd[c], a = ic * gamma[c];
        float gg = 0.0f, gb = 0.0f;
        if (train && dx && !acc) {  /* one pass: each dy read once, then dx written over it */
            for (int n = 0; n < B; n++) {
                const float *dyc = dy + ((size_t)n * C + c) * P;
                const float *xc = x + ((size_t)n * C + c) * P;
                float *dxc = dx + ((size_t)n * C + c) * P;
#pragma GCC unroll 2
                for (int p = 0; p < P; p++) {
                    const float d = dyc[p];
                    gg += d * ((xc[p] - mc) * ic);
                    gb += d;
                    dxc[p] = d * a;
                }
            }
        } else if (train) {
            for (int n = 0; n < B; n++) {
                const float *restrict dyc = dy + ((size_t)n * C + c) * P;
                const float *restrict xc = x + ((size_t)n * C + c) * P;
                for (int p = 0; p < P; p++) {
                    const float d = dyc[p];
                    gg += d * ((xc[p] - mc) * ic);
                    gb += d;
                }
            }
        }
        if (dx && !(train && !acc)) {
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
#pragma GCC unroll 4
    for (int i = 0; i < n; i++) { const float v = x[i]; y[i] = v > 0.0f ? v : 0.0f; }
}
""",
    "relu_bwd": r"""
/* from the output: y > 0 exactly where x > 0 */
static void relu_bwd(const float *y, const float *dy, float *dx, int acc, int n) {
    if (acc) { for (int i = 0; i < n; i++) dx[i] += y[i] > 0.0f ? dy[i] : 0.0f; }
    else {
#pragma GCC unroll 4
        for (int i = 0; i < n; i++) { const float d = dy[i]; dx[i] = y[i] > 0.0f ? d : 0.0f; }
    }
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
/* y^T = W x^T + b, register-tiled */
static void linear_fwd(const float *x, const float *w, const float *b, float *y,
                       int B, int I, int O) {
    k_gemm(O, B, I, w, I, 1, x, I, 1, y, 1, O, K_SET, b, 0.0f);
}
""",
    "linear_bwd_input": r"""
/* dx = dy W, register-tiled */
static void linear_bwd_input(const float *dy, const float *w, float *dx, int acc,
                             int B, int I, int O) {
    k_gemm(B, I, O, dy, O, 1, w, 1, I, dx, I, 1, acc ? K_ADD : K_SET, 0, 0.0f);
}
""",
    "linear_bwd_weight_sgd": r"""
/* W -= lr dy^T x: at batch 1 an outer product over 4 rows at once (each x loaded once for 4
   rows), otherwise register tiles over the batch */
static void linear_bwd_weight_sgd(const float *dy, const float *x, float *w, float *b, float lr,
                                  int rows, int B, int I, int O) {
    if (w && B == 1) {
        int o = 0;
        for (; o + 4 <= rows; o += 4) {
            const float c0 = lr * dy[o], c1 = lr * dy[o + 1], c2 = lr * dy[o + 2];
            const float c3 = lr * dy[o + 3];
            float *restrict w0 = w + (size_t)o * I, *restrict w1 = w0 + I;
            float *restrict w2 = w1 + I, *restrict w3 = w2 + I;
            const float *restrict xi = x;
#pragma GCC unroll 4
            for (int i = 0; i < I; i++) {
                const float v = xi[i];
                w0[i] -= c0 * v; w1[i] -= c1 * v; w2[i] -= c2 * v; w3[i] -= c3 * v;
            }
        }
        for (; o < rows; o++) {
            const float c = lr * dy[o];
            float *restrict wr = w + (size_t)o * I;
            for (int i = 0; i < I; i++) wr[i] -= c * x[i];
        }
    } else if (w) {
        k_gemm(rows, I, B, dy, 1, O, x, 1, I, w, I, 1, K_SGD, 0, lr);
    }
    if (b) for (int o = 0; o < rows; o++) {
        float s = 0.0f;
        for (int n = 0; n < B; n++) s += dy[(size_t)n * O + o];
        b[o] -= lr * s;
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
