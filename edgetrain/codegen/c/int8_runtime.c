/* The int8 (QAS) training runtime of edgetrain's C trainer.

   `render_int8` (edgetrain/codegen/_int8_render.py) pastes this file into every int8
   et_model.c, after `#define ET_REAL` (double on the host, to match the float64 simulation;
   float on Cortex-M); the generated code calls the kernels the table of
   edgetrain/codegen/_int8_kernels.py names for each op. Forward: the integer graph, bit for bit
   (NOTE [ int8 arithmetic, bit for bit ], edgetrain/quant/_graph.py); backward: the float
   surrogate of NOTE [ Training the int8 graph ] (edgetrain/quant/_train.py), as NOTE [ The int8
   training program ] (edgetrain/codegen/_int8_render.py) summarises. Buffers and scratch are
   laid out by edgetrain/codegen/_int8_layout.py (NOTE [ int8 SRAM of the C trainer ]). */
#include <math.h>
#include <string.h>
#include <stdint.h>
#include <stddef.h>

static inline int64_t rq(int64_t acc, int32_t m0, int32_t shift) {
    const int n = 31 - shift;
    return (acc * (int64_t)m0 + ((int64_t)1 << (n - 1))) >> n;
}
static inline int8_t clamp8(int64_t v, int lo, int hi) {
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}
/* ET_REAL is double on the host (bit for bit with the float64 simulation) and float on the
   MCU, where the float functions keep the FPU busy instead of soft-float double calls */
static inline ET_REAL et_floor(ET_REAL v) {
    return sizeof(ET_REAL) == sizeof(float) ? (ET_REAL)floorf((float)v) : (ET_REAL)floor(v);
}
static inline ET_REAL round_half_away(ET_REAL v) {
    if (sizeof(ET_REAL) == sizeof(float)) {  /* floor(|v| + 0.5) exactly, without floorf */
        const float a = v >= 0 ? (float)v : -(float)v;
        if (!(a < 8388608.0f)) return v;  /* already an integer (or not a number) */
        const int32_t t = (int32_t)a;
        const float r = (float)(a - (float)t >= 0.5f ? t + 1 : t);
        return v >= 0 ? (ET_REAL)r : -(ET_REAL)r;
    }
    return v >= 0 ? et_floor(v + (ET_REAL)0.5) : -et_floor(-v + (ET_REAL)0.5);
}
static inline int32_t clamp_i32(ET_REAL v) {
    if (sizeof(ET_REAL) == sizeof(float))
        return v < (ET_REAL)-2147483648.0 ? INT32_MIN
             : (v >= (ET_REAL)2147483648.0 ? INT32_MAX : (int32_t)v);
    return (int32_t)(v < -2147483648.0 ? -2147483648.0 : (v > 2147483647.0 ? 2147483647.0 : v));
}
/* outputs o in [*lo, *hi) whose tap k reads inside 0..n-1 (stride s, padding p) */
static inline void o_range(int k, int s, int p, int n, int O, int *lo, int *hi) {
    int v = p - k; *lo = v > 0 ? (v + s - 1) / s : 0;
    v = n - 1 + p - k; *hi = v < 0 ? 0 : v / s + 1;
    if (*hi > O) *hi = O;
    if (*lo > *hi) *lo = *hi;
}
static inline int k_lo(int o, int s, int p) { int v = p - o * s; return v > 0 ? v : 0; }
static inline int k_hi(int o, int s, int p, int n, int K) { int v = n + p - o * s; return v < K ? v : K; }

/* conv2d (standard / depthwise / pointwise), bias, requantisation, fused clamp; mask[i] = 1
   where the output was not clamped (the surrogate's slope is M there) */
/* one output pixel's window of one channel: sum of (x - zx) * w over the in-bounds taps
   kh0..kh1 x kw0..kw1 (rows of `xc` are W wide; the window's top-left tap is (ih0, iw0)) */
static inline int32_t qwin(const int8_t *xc, int W, int zx, const int8_t *wc, int K,
                           int kh0, int kh1, int kw0, int kw1, int ih0, int iw0) {
    int32_t acc = 0;
    for (int kh = kh0; kh < kh1; kh++) {
        const int8_t *xr = xc + (ih0 + kh) * W + iw0;
        const int8_t *wr = wc + kh * K;
        for (int kw = kw0; kw < kw1; kw++) acc += (xr[kw] - zx) * wr[kw];
    }
    return acc;
}

/* requantise, clamp and record the "not clamped" mask of one output */
static inline void q_out(int32_t acc, int32_t m0, int32_t sh, int zy, int lo, int hi, int8_t *y,
                         uint8_t *mask, size_t i) {
    const int64_t pre = rq(acc, m0, sh) + zy;
    y[i] = clamp8(pre, lo, hi);
    if (mask) mask[i] = (uint8_t)(pre >= lo && pre <= hi);
}

/* 1x1 stride-1 conv: sum (x - zx) w = sum x w - zx sum w (exact in int32), 4 pixels at once
   (each weight loaded once for 4 pixels); the requantisation stays per output */
static void qpw_fwd(const int8_t *x, int zx, const int8_t *w, const int32_t *b,
                    const int32_t *m0, const int32_t *sh, int zy, int lo, int hi, int8_t *y,
                    uint8_t *mask, int B, int Ci, int Co, int P) {
    for (int n = 0; n < B; n++)
    for (int oc = 0; oc < Co; oc++) {
        const int8_t *wo = w + (size_t)oc * Ci;
        const int8_t *xn = x + (size_t)n * Ci * P;
        const size_t yo = ((size_t)n * Co + oc) * P;
        int32_t sw = 0;
        for (int ic = 0; ic < Ci; ic++) sw += wo[ic];
        const int32_t base = b[oc] - zx * sw;
        int q = 0;
        for (; q + 4 <= P; q += 4) {
            int32_t a0 = base, a1 = base, a2 = base, a3 = base;
            const int8_t *xc = xn + q;
            for (int ic = 0; ic < Ci; ic++, xc += P) {
                const int32_t wv = wo[ic];
                a0 += xc[0] * wv; a1 += xc[1] * wv; a2 += xc[2] * wv; a3 += xc[3] * wv;
            }
            q_out(a0, m0[oc], sh[oc], zy, lo, hi, y, mask, yo + q);
            q_out(a1, m0[oc], sh[oc], zy, lo, hi, y, mask, yo + q + 1);
            q_out(a2, m0[oc], sh[oc], zy, lo, hi, y, mask, yo + q + 2);
            q_out(a3, m0[oc], sh[oc], zy, lo, hi, y, mask, yo + q + 3);
        }
        for (; q < P; q++) {
            int32_t a = base;
            for (int ic = 0; ic < Ci; ic++) a += xn[(size_t)ic * P + q] * wo[ic];
            q_out(a, m0[oc], sh[oc], zy, lo, hi, y, mask, yo + q);
        }
    }
}

static void qconv_fwd(const int8_t *x, int zx, const int8_t *w, const int32_t *b,
                      const int32_t *m0, const int32_t *sh, int zy, int lo, int hi,
                      int8_t *y, uint8_t *mask, int B, int Ci, int H, int W, int Co, int Ho,
                      int Wo, int K, int s, int p, int G) {
    const int cig = Ci / G, cog = Co / G;
    if (K == 1 && s == 1 && p == 0 && G == 1) {
        qpw_fwd(x, zx, w, b, m0, sh, zy, lo, hi, y, mask, B, Ci, Co, H * W);
        return;
    }
    for (int n = 0; n < B; n++)
    for (int oc = 0; oc < Co; oc++) {
        const int g = oc / cog;
        const int8_t *wo = w + (size_t)oc * cig * K * K;
        const int8_t *xg = x + ((size_t)n * Ci + g * cig) * H * W;
        const size_t yo = ((size_t)n * Co + oc) * Ho * Wo;
        for (int oh = 0; oh < Ho; oh++) {
            const int kh0 = k_lo(oh, s, p), kh1 = k_hi(oh, s, p, H, K), ih0 = oh * s - p;
            for (int ow = 0; ow < Wo; ow++) {
                const int kw0 = k_lo(ow, s, p), kw1 = k_hi(ow, s, p, W, K), iw0 = ow * s - p;
                int32_t acc = b[oc];
                for (int ic = 0; ic < cig; ic++)
                    acc += qwin(xg + (size_t)ic * H * W, W, zx, wo + ic * K * K, K,
                                kh0, kh1, kw0, kw1, ih0, iw0);
                const int64_t pre = rq(acc, m0[oc], sh[oc]) + zy;
                y[yo + oh * Wo + ow] = clamp8(pre, lo, hi);
                if (mask) mask[yo + oh * Wo + ow] = (uint8_t)(pre >= lo && pre <= hi);
            }
        }
    }
}

/* a frozen 1x1 expansion fused with the depthwise conv that reads it: each expanded channel
   is computed into `scratch` (H*W bytes) and consumed at once, so the expanded tensor never
   exists in SRAM (the integer results are exactly those of the two ops run one after the
   other) */
static void qpwdw_fwd(const int8_t *x, int zx, const int8_t *wa, const int32_t *ba,
                      const int32_t *m0a, const int32_t *sha, int zm, int loa, int hia,
                      const int8_t *wb, const int32_t *bb, const int32_t *m0b,
                      const int32_t *shb, int zy, int lob, int hib, int8_t *y, int8_t *scratch,
                      int B, int Ci, int H, int W, int Cm, int Ho, int Wo, int K, int s, int p) {
    for (int n = 0; n < B; n++)
    for (int c = 0; c < Cm; c++) {
        for (int q = 0; q < H * W; q++) {
            int32_t acc = ba[c];
            for (int ic = 0; ic < Ci; ic++)
                acc += (x[((size_t)n * Ci + ic) * H * W + q] - zx) * wa[(size_t)c * Ci + ic];
            scratch[q] = clamp8(rq(acc, m0a[c], sha[c]) + zm, loa, hia);
        }
        const int8_t *wc = wb + (size_t)c * K * K;
        int8_t *yc = y + ((size_t)n * Cm + c) * Ho * Wo;
        for (int oh = 0; oh < Ho; oh++) {
            const int kh0 = k_lo(oh, s, p), kh1 = k_hi(oh, s, p, H, K), ih0 = oh * s - p;
            for (int ow = 0; ow < Wo; ow++) {
                const int kw0 = k_lo(ow, s, p), kw1 = k_hi(ow, s, p, W, K), iw0 = ow * s - p;
                const int32_t acc = bb[c] + qwin(scratch, W, zm, wc, K, kh0, kh1, kw0, kw1,
                                                 ih0, iw0);
                yc[oh * Wo + ow] = clamp8(rq(acc, m0b[c], shb[c]) + zy, lob, hib);
            }
        }
    }
}

/* in-place frozen depthwise (TinyEngine's): output plane i = n*C + c is computed into `plane`
   (Ho*Wo bytes) and copied to x + i*Ho*Wo, which holds only input planes <= i, all consumed */
static void qdw_inplace_fwd(int8_t *x, int zx, const int8_t *w, const int32_t *b,
                            const int32_t *m0, const int32_t *sh, int zy, int lo, int hi,
                            int8_t *plane, int B, int C, int H, int W, int Ho, int Wo, int K,
                            int s, int p) {
    for (int n = 0; n < B; n++)
    for (int c = 0; c < C; c++) {
        const size_t i = (size_t)n * C + c;
        const int8_t *xc = x + i * H * W;
        const int8_t *wc = w + (size_t)c * K * K;
        for (int oh = 0; oh < Ho; oh++) {
            const int kh0 = k_lo(oh, s, p), kh1 = k_hi(oh, s, p, H, K), ih0 = oh * s - p;
            for (int ow = 0; ow < Wo; ow++) {
                const int kw0 = k_lo(ow, s, p), kw1 = k_hi(ow, s, p, W, K), iw0 = ow * s - p;
                const int32_t acc = b[c] + qwin(xc, W, zx, wc, K, kh0, kh1, kw0, kw1, ih0, iw0);
                plane[oh * Wo + ow] = clamp8(rq(acc, m0[c], sh[c]) + zy, lo, hi);
            }
        }
        memcpy(x + i * Ho * Wo, plane, (size_t)Ho * Wo);
    }
}

/* in-place frozen pointwise, Co <= Ci: the Ci inputs of pixel q go to `tmp`, the Co outputs
   land at (n*Co + oc)*P + q -- bytes of pixel q (read) or of earlier pixels / samples */
static void qpw_inplace_fwd(int8_t *x, int zx, const int8_t *w, const int32_t *b,
                            const int32_t *m0, const int32_t *sh, int zy, int lo, int hi,
                            int8_t *tmp, int B, int Ci, int Co, int P) {
    for (int n = 0; n < B; n++)
    for (int q = 0; q < P; q++) {
        for (int ic = 0; ic < Ci; ic++) tmp[ic] = x[((size_t)n * Ci + ic) * P + q];
        for (int oc = 0; oc < Co; oc++) {
            const int8_t *wo = w + (size_t)oc * Ci;
            int32_t acc = b[oc];
            for (int ic = 0; ic < Ci; ic++) acc += (tmp[ic] - zx) * wo[ic];
            x[((size_t)n * Co + oc) * P + q] = clamp8(rq(acc, m0[oc], sh[oc]) + zy, lo, hi);
        }
    }
}

/* a line-buffered chain of frozen convs (MCUNetV2's row streaming): op j's output rows exist
   only as a ring of R rows (Co x Wo bytes each, slot r % R) that op j+1's window reads; the last
   op's rows are produced in order into the full output y and each pulls, on demand, exactly the
   rows of the op before it that its window needs (no row is computed twice). Each output
   element is the same integer sum over the same in-bounds taps as qconv_fwd's. */
typedef struct {
    const int8_t *w; const int32_t *b; const int32_t *m0; const int32_t *sh;
    int zx, zy, lo, hi, Ci, H, W, Co, Ho, Wo, K, s, p, G;
    int8_t *ring; int R;  /* R rows of this op's output; 0 / 0 for the chain's last op */
} qlb_op;

static void qlb_row(const qlb_op *o, int j, int r, const int8_t *x, int8_t *y) {
    const qlb_op *c = &o[j];
    const int cig = c->Ci / c->G, cog = c->Co / c->G, K = c->K;
    const int kh0 = k_lo(r, c->s, c->p), kh1 = k_hi(r, c->s, c->p, c->H, K), ih0 = r * c->s - c->p;
    for (int oc = 0; oc < c->Co; oc++) {
        const int ch0 = (oc / cog) * cig;
        const int8_t *wo = c->w + (size_t)oc * cig * K * K;
        int8_t *yr = c->ring ? c->ring + ((size_t)(r % c->R) * c->Co + oc) * c->Wo
                             : y + ((size_t)oc * c->Ho + r) * c->Wo;
        for (int ow = 0; ow < c->Wo; ow++) {
            const int kw0 = k_lo(ow, c->s, c->p), kw1 = k_hi(ow, c->s, c->p, c->W, K);
            const int iw0 = ow * c->s - c->p;
            int32_t acc = c->b[oc];
            for (int ic = 0; ic < cig; ic++) {
                const int8_t *wc = wo + ic * K * K;
                for (int kh = kh0; kh < kh1; kh++) {
                    const int ih = ih0 + kh;
                    const int8_t *xr = (j == 0
                        ? x + ((size_t)(ch0 + ic) * c->H + ih) * c->W
                        : o[j - 1].ring + ((size_t)(ih % o[j - 1].R) * c->Ci + ch0 + ic) * c->W)
                        + iw0;
                    const int8_t *wr = wc + kh * K;
                    for (int kw = kw0; kw < kw1; kw++) acc += (xr[kw] - c->zx) * wr[kw];
                }
            }
            yr[ow] = clamp8(rq(acc, c->m0[oc], c->sh[oc]) + c->zy, c->lo, c->hi);
        }
    }
}

/* the last op's rows in order; op j, before computing its next row, pulls the rows of op j-1
   its window needs (an explicit walk down and up the chain, no recursion: the stack stays
   flat). `st` holds 2L ints: done[j] (rows op j has produced), want[j] (rows it must reach). */
static void qlb_chain(const qlb_op *o, int L, int *st, const int8_t *x, int8_t *y, int B) {
    int *done = st, *want = st + L;
    const qlb_op *f = &o[0], *l = &o[L - 1];
    for (int n = 0; n < B; n++) {
        const int8_t *xn = x + (size_t)n * f->Ci * f->H * f->W;
        int8_t *yn = y + (size_t)n * l->Co * l->Ho * l->Wo;
        for (int j = 0; j < L; j++) done[j] = 0;
        want[L - 1] = l->Ho - 1;
        int j = L - 1;
        for (;;) {
            if (done[j] > want[j]) {  /* op j is as far as its reader needs */
                if (j == L - 1) break;
                j++;
                continue;
            }
            if (j > 0) {
                const qlb_op *c = &o[j];
                int need = done[j] * c->s - c->p + c->K - 1;
                if (need > c->H - 1) need = c->H - 1;
                if (done[j - 1] <= need) {
                    want[j - 1] = need;
                    j--;
                    continue;
                }
            }
            qlb_row(o, j, done[j], xn, yn);
            done[j]++;
        }
    }
}

/* NOTE [ DSP dual multiply-accumulate ]
   With the Cortex-M DSP extension (the target's has_dsp flag, rendered as ET_HAS_DSP, and the
   compiler's __ARM_FEATURE_DSP), 4 int8 values are loaded with one LDR and unpacked by SXTB16
   (bytes 0, 2) and SXTB16 ROR #8 (bytes 1, 3) into two registers of 16-bit pairs; the input
   zero point is subtracted from both lanes at once (SSUB16) and SMLAD adds two products per
   instruction. The sums are the same integers as the portable loop's (int32, exact), so the
   host (no DSP) and the MCU agree bit for bit. */
#if defined(ET_HAS_DSP) && ET_HAS_DSP && defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
#define ET_DSP 1
static inline uint32_t q_ld4(const int8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint32_t q_ror8(uint32_t v) { return (v >> 8) | (v << 24); }
/* sum (x - zx) * w over n values for two weight rows at once (each input unpacked once) */
static inline void q_dot2(const int8_t *x, int zx, const int8_t *w0, const int8_t *w1, int n,
                          int32_t *s0, int32_t *s1) {
    const int16x2_t zz = (int16x2_t)(((uint32_t)(uint16_t)zx << 16) | (uint16_t)zx);
    int32_t a0 = 0, a1 = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        const uint32_t xv = q_ld4(x + i), v0 = q_ld4(w0 + i), v1 = q_ld4(w1 + i);
        const int16x2_t xl = __ssub16(__sxtb16(xv), zz);
        const int16x2_t xh = __ssub16(__sxtb16(q_ror8(xv)), zz);
        a0 = __smlad(xl, __sxtb16(v0), a0);
        a0 = __smlad(xh, __sxtb16(q_ror8(v0)), a0);
        a1 = __smlad(xl, __sxtb16(v1), a1);
        a1 = __smlad(xh, __sxtb16(q_ror8(v1)), a1);
    }
    for (; i < n; i++) { a0 += (x[i] - zx) * w0[i]; a1 += (x[i] - zx) * w1[i]; }
    *s0 = a0; *s1 = a1;
}
#else
#define ET_DSP 0
static inline void q_dot2(const int8_t *x, int zx, const int8_t *w0, const int8_t *w1, int n,
                          int32_t *s0, int32_t *s1) {
    int32_t a0 = 0, a1 = 0;
    for (int i = 0; i < n; i++) { a0 += (x[i] - zx) * w0[i]; a1 += (x[i] - zx) * w1[i]; }
    *s0 = a0; *s1 = a1;
}
#endif

static void qlinear_fwd(const int8_t *x, int zx, const int8_t *w, const int32_t *b,
                        const int32_t *m0, const int32_t *sh, int zy, int lo, int hi,
                        int8_t *y, uint8_t *mask, int B, int I, int O) {
    for (int n = 0; n < B; n++) {
        const int8_t *xn = x + (size_t)n * I;
        for (int o = 0; o < O; o += 2) {
            const int o1 = o + 1 < O ? o + 1 : o;  /* an odd last row is computed twice */
            int32_t s0, s1;
            q_dot2(xn, zx, w + (size_t)o * I, w + (size_t)o1 * I, I, &s0, &s1);
            q_out(b[o] + s0, m0[o], sh[o], zy, lo, hi, y, mask, (size_t)n * O + o);
            if (o1 != o) q_out(b[o1] + s1, m0[o1], sh[o1], zy, lo, hi, y, mask, (size_t)n * O + o1);
        }
    }
}

static void qadd_fwd(const int8_t *a, int za, const int8_t *b, int zb, int zy,
                     int32_t ma, int32_t sa, int32_t mb, int32_t sb, int32_t mo, int32_t so,
                     int ls, int8_t *y, uint8_t *mask, int n) {
    for (int i = 0; i < n; i++) {
        const int64_t va = rq((int64_t)(a[i] - za) << ls, ma, sa);
        const int64_t vb = rq((int64_t)(b[i] - zb) << ls, mb, sb);
        const int64_t pre = rq(va + vb, mo, so) + zy;
        y[i] = clamp8(pre, -128, 127);
        if (mask) mask[i] = (uint8_t)(pre >= -128 && pre <= 127);
    }
}

static void qgap_fwd(const int8_t *x, int8_t *y, int BC, int P) {
    for (int i = 0; i < BC; i++) {
        int32_t s = 0;
        for (int p = 0; p < P; p++) s += x[(size_t)i * P + p];
        const int32_t avg = s >= 0 ? (s + P / 2) / P : (s - P / 2) / P;
        y[i] = clamp8(avg, -128, 127);
    }
}

/* ---- backward (the float surrogate), ET_REAL ---- */
static void qacc_grad(const ET_REAL *dy, const uint8_t *mask, const ET_REAL *M, ET_REAL *dacc,
                      int B, int C, int P) {
    for (int n = 0; n < B; n++)
    for (int c = 0; c < C; c++)
    for (int p = 0; p < P; p++) {
        const size_t i = ((size_t)n * C + c) * P + p;
        dacc[i] = dy[i] * (mask[i] ? M[c] : (ET_REAL)0);
    }
}

/* dacc of a conv whose output only a global average pool reads, never stored (NOTE [ int8
   SRAM of the C trainer ], fused pool backward): the pool's dy / P, masked and scaled element
   by element, exactly as qgap_bwd then qacc_grad would have stored it */
typedef struct { const ET_REAL *gp; const uint8_t *mask; const ET_REAL *M; int P; } qgap_dacc;

static inline ET_REAL dacc_at(const ET_REAL *dacc, const qgap_dacc *gd, size_t i, size_t nc, int c) {
    if (!gd) return dacc[i];
    const ET_REAL d = gd->gp[nc] / (ET_REAL)gd->P;
    return d * (gd->mask[i] ? gd->M[c] : (ET_REAL)0);
}

/* dx += w * dacc, loop order (oc, ic, kh, kw, oh, ow): each int8 weight is converted once
   and multiplies the contiguous run of output gradients whose tap lands inside the input;
   where a global average pool is the only reader (gd), dacc = mask ? gp / P * M : 0 */
static void qconv_bwd_input(const ET_REAL *dacc, const qgap_dacc *gd, const int8_t *w,
                            ET_REAL *dx, int acc,
                            int B, int Ci, int H, int W, int Co, int Ho, int Wo, int K, int s,
                            int p, int G) {
    const int cig = Ci / G, cog = Co / G;
    if (!acc) for (size_t i = 0; i < (size_t)B * Ci * H * W; i++) dx[i] = 0;
    for (int n = 0; n < B; n++)
    for (int oc = 0; oc < Co; oc++) {
        const int g = oc / cog;
        const int8_t *wo = w + (size_t)oc * cig * K * K;
        const size_t o0 = ((size_t)n * Co + oc) * Ho * Wo;
        const ET_REAL *dr0 = gd ? 0 : dacc + o0;
        const uint8_t *mk = gd ? gd->mask + o0 : 0;
        const ET_REAL dv = gd ? gd->gp[(size_t)n * Co + oc] / (ET_REAL)gd->P * gd->M[oc] : 0;
        ET_REAL *dxg = dx + ((size_t)n * Ci + g * cig) * H * W;
        for (int ic = 0; ic < cig; ic++)
        for (int kh = 0; kh < K; kh++) {
            int oh0, oh1;
            o_range(kh, s, p, H, Ho, &oh0, &oh1);
            for (int kw = 0; kw < K; kw++) {
                int ow0, ow1;
                o_range(kw, s, p, W, Wo, &ow0, &ow1);
                const ET_REAL wf = (ET_REAL)wo[(ic * K + kh) * K + kw];
                for (int oh = oh0; oh < oh1; oh++) {
                    ET_REAL *dr = dxg + ((ptrdiff_t)ic * H * W + (oh * s - p + kh) * W - p + kw);
                    if (gd) {
                        const uint8_t *m = mk + oh * Wo;
                        for (int ow = ow0; ow < ow1; ow++)
                            if (m[ow]) dr[ow * s] += dv * wf;
                    } else {
                        const ET_REAL *d = dr0 + oh * Wo;
                        for (int ow = ow0; ow < ow1; ow++) dr[ow * s] += d[ow] * wf;
                    }
                }
            }
        }
    }
}

/* G_W = sum dacc * (x - zx); QAS-scaled SGD on the integer weights, then re-rounding. The
   sum runs over the outputs whose tap is inside, in the order (n, oh, ow). */
static void qconv_update(const ET_REAL *dacc, const qgap_dacc *gd, const int8_t *x, int zx,
                         int8_t *w, int32_t *b,
                         const ET_REAL *inv_w, const ET_REAL *inv_b, ET_REAL lr,
                         int B, int Ci, int H, int W, int Co, int Ho, int Wo, int K, int s,
                         int p, int G) {
    const int cig = Ci / G, cog = Co / G;
    for (int oc = 0; oc < Co; oc++) {
        const int g = oc / cog;
        for (int ic = 0; ic < cig; ic++)
        for (int kh = 0; kh < K; kh++) {
            int oh0, oh1;
            o_range(kh, s, p, H, Ho, &oh0, &oh1);
            for (int kw = 0; kw < K; kw++) {
                int ow0, ow1;
                o_range(kw, s, p, W, Wo, &ow0, &ow1);
                ET_REAL acc = 0;
                for (int n = 0; n < B; n++) {
                    const size_t o0 = ((size_t)n * Co + oc) * Ho * Wo;
                    const int8_t *xc = x + ((size_t)n * Ci + g * cig + ic) * H * W;
                    if (gd) {
                        const ET_REAL dv = gd->gp[(size_t)n * Co + oc] / (ET_REAL)gd->P
                                           * gd->M[oc];
                        for (int oh = oh0; oh < oh1; oh++) {
                            const uint8_t *m = gd->mask + o0 + oh * Wo;
                            const int8_t *xr = xc + ((oh * s - p + kh) * W - p + kw);
                            for (int ow = ow0; ow < ow1; ow++)
                                if (m[ow]) acc += dv * (ET_REAL)(xr[ow * s] - zx);
                        }
                    } else {
                        for (int oh = oh0; oh < oh1; oh++) {
                            const ET_REAL *d = dacc + o0 + oh * Wo;
                            const int8_t *xr = xc + ((oh * s - p + kh) * W - p + kw);
                            for (int ow = ow0; ow < ow1; ow++)
                                acc += d[ow] * (ET_REAL)(xr[ow * s] - zx);
                        }
                    }
                }
                const size_t i = (((size_t)oc * cig + ic) * K + kh) * K + kw;
                ET_REAL v = round_half_away((ET_REAL)w[i] + (-lr) * (acc * inv_w[oc]));
                w[i] = (int8_t)(v < -127 ? -127 : (v > 127 ? 127 : v));
            }
        }
        ET_REAL acc = 0;
        for (int n = 0; n < B; n++)
            for (int q = 0; q < Ho * Wo; q++)
                acc += dacc_at(dacc, gd, ((size_t)n * Co + oc) * Ho * Wo + q, (size_t)n * Co + oc, oc);
        ET_REAL v = round_half_away((ET_REAL)b[oc] + (-lr) * (acc * inv_b[oc]));
        b[oc] = clamp_i32(v);
    }
}

static void qlinear_bwd_input(const ET_REAL *dacc, const int8_t *w, ET_REAL *dx, int acc,
                              int B, int I, int O) {
    for (int n = 0; n < B; n++)
    for (int i = 0; i < I; i++) {
        ET_REAL s = 0;
        for (int o = 0; o < O; o++) s += dacc[(size_t)n * O + o] * (ET_REAL)w[(size_t)o * I + i];
        if (acc) dx[(size_t)n * I + i] += s; else dx[(size_t)n * I + i] = s;
    }
}

static void qlinear_update(const ET_REAL *dacc, const int8_t *x, int zx, int8_t *w, int32_t *b,
                           const ET_REAL *inv_w, const ET_REAL *inv_b, ET_REAL lr,
                           int B, int I, int O) {
    for (int o = 0; o < O; o++) {
        for (int i = 0; i < I; i++) {
            ET_REAL s = 0;
            for (int n = 0; n < B; n++)
                s += dacc[(size_t)n * O + o] * (ET_REAL)(x[(size_t)n * I + i] - zx);
            ET_REAL v = round_half_away((ET_REAL)w[(size_t)o * I + i] + (-lr) * (s * inv_w[o]));
            w[(size_t)o * I + i] = (int8_t)(v < -127 ? -127 : (v > 127 ? 127 : v));
        }
        ET_REAL s = 0;
        for (int n = 0; n < B; n++) s += dacc[(size_t)n * O + o];
        ET_REAL v = round_half_away((ET_REAL)b[o] + (-lr) * (s * inv_b[o]));
        b[o] = clamp_i32(v);
    }
}

static void qadd_bwd(const ET_REAL *dy, const uint8_t *mask, ET_REAL slope, ET_REAL *dx,
                     int acc, int n) {
    for (int i = 0; i < n; i++) {
        const ET_REAL v = dy[i] * (mask[i] ? slope : (ET_REAL)0);
        if (acc) dx[i] += v; else dx[i] = v;
    }
}

static void qgap_bwd(const ET_REAL *dy, ET_REAL *dx, int acc, int BC, int P) {
    for (int i = 0; i < BC; i++) {
        const ET_REAL d = dy[i] / (ET_REAL)P;
        for (int p = 0; p < P; p++) {
            if (acc) dx[(size_t)i * P + p] += d; else dx[(size_t)i * P + p] = d;
        }
    }
}

/* logits = (q - z) * s; mean softmax cross-entropy; d q = (softmax - onehot) / B * s;
   `zl` is K reals of arena scratch (no stack array) */
static ET_REAL qxent(const int8_t *q, int z, ET_REAL s, const int32_t *y, ET_REAL *dq,
                     ET_REAL *zl, int B, int K, int *correct) {
    ET_REAL loss = 0;
    for (int n = 0; n < B; n++) {
        int arg = 0;
        for (int k = 0; k < K; k++) {
            zl[k] = ((ET_REAL)q[(size_t)n * K + k] - z) * s;
            if (q[(size_t)n * K + k] > q[(size_t)n * K + arg]) arg = k;
        }
        ET_REAL m = zl[0];
        for (int k = 1; k < K; k++) if (zl[k] > m) m = zl[k];
        ET_REAL se = 0;
        for (int k = 0; k < K; k++) se += exp(zl[k] - m);
        const ET_REAL lse = log(se);
        loss += -((zl[y[n]] - m) - lse);
        if (dq) for (int k = 0; k < K; k++)
            dq[(size_t)n * K + k] = (exp((zl[k] - m) - lse) * ((ET_REAL)1 / B)
                                     - (k == y[n] ? (ET_REAL)1 / B : 0)) * s;
        if (correct && arg == y[n]) (*correct)++;
    }
    return loss / B;
}
