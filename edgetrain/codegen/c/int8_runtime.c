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
    if (n >= 33 && acc == (int32_t)acc) {  /* the usual case: the same value from the high
                                              word alone (one SMLAL and one shift on Arm) */
        const int64_t t = (int64_t)(int32_t)acc * m0 + (int64_t)((uint64_t)(1u << (n - 33)) << 32);
        return (int32_t)(t >> 32) >> (n - 32);
    }
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
/* sum (x - zx) * w over n values for two weight rows at once (each input unpacked once);
   kept out of line so its register allocation does not depend on the caller */
static __attribute__((noinline)) void q_dot2(const int8_t *x, int zx, const int8_t *w0, const int8_t *w1, int n,
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
/* 3 bytes (the end of a row or an array: nothing after them is read) */
static inline uint32_t q_ld3(const int8_t *p) {
    return (uint32_t)(uint8_t)p[0] | (uint32_t)(uint8_t)p[1] << 8 | (uint32_t)(uint8_t)p[2] << 16;
}
/* one 3-tap kernel row: (x0, x2).(w0, w2) by SMLAD, x1 * w1 by SMLABB */
static inline int32_t q_row3(uint32_t xv, uint32_t wv, int32_t acc) {
    acc = __smlad(__sxtb16(xv), __sxtb16(wv), acc);
    return __smlabb(__sxtb16(q_ror8(xv)), __sxtb16(q_ror8(wv)), acc);
}
/* sum of x * w (no zero point) over kernel rows [kh0, kh1) of a 3x3 window whose columns are
   all inside, cig channels; `xoff` is the window's top-left offset for kernel row 0. xtight:
   the window ends its input row (its 4th byte is not read); wlast: the weights' last row ends
   the array */
static inline int32_t q_win3(const int8_t *xg, ptrdiff_t xoff, size_t HW, int W,
                             const int8_t *wo, int cig, int kh0, int kh1, int xtight,
                             int wlast) {
    int32_t acc = 0;
    for (int ic = 0; ic < cig; ic++) {
        const int8_t *xr = xg + ((ptrdiff_t)ic * HW + xoff + kh0 * W);
        const int8_t *wr = wo + ic * 9 + kh0 * 3;
        const int last = wlast && ic == cig - 1;
        for (int kh = kh0; kh < kh1; kh++, xr += W, wr += 3) {
            const uint32_t xv = xtight ? q_ld3(xr) : q_ld4(xr);
            const uint32_t wv = last && kh == 2 ? q_ld3(wr) : q_ld4(wr);
            acc = q_row3(xv, wv, acc);
        }
    }
    return acc;
}
/* q_win3 for two outputs at once (windows `dx` bytes apart, the second one's end tight or
   not): each kernel row's weights are loaded and unpacked once for both */
static inline void q_win3x2(const int8_t *xg, ptrdiff_t xoff, int dx, size_t HW, int W,
                            const int8_t *wo, int cig, int kh0, int kh1, int xtight, int wlast,
                            int32_t *s0, int32_t *s1) {
    int32_t a0 = 0, a1 = 0;
    for (int ic = 0; ic < cig; ic++) {
        const int8_t *xr = xg + ((ptrdiff_t)ic * HW + xoff + kh0 * W);
        const int8_t *wr = wo + ic * 9 + kh0 * 3;
        const int last = wlast && ic == cig - 1;
        for (int kh = kh0; kh < kh1; kh++, xr += W, wr += 3) {
            const uint32_t wv = last && kh == 2 ? q_ld3(wr) : q_ld4(wr);
            const int16x2_t wl = __sxtb16(wv), wh = __sxtb16(q_ror8(wv));
            const uint32_t xa = q_ld4(xr), xb = xtight ? q_ld3(xr + dx) : q_ld4(xr + dx);
            a0 = __smlad(__sxtb16(xa), wl, a0);
            a0 = __smlabb(__sxtb16(q_ror8(xa)), wh, a0);
            a1 = __smlad(__sxtb16(xb), wl, a1);
            a1 = __smlabb(__sxtb16(q_ror8(xb)), wh, a1);
        }
    }
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
    const int n = 31 - sh;
    if (n >= 33) {  /* rq's fast case: the requantised value fits 32 bits, so do the clamp */
        const int64_t t = (int64_t)acc * m0 + (int64_t)((uint64_t)(1u << (n - 33)) << 32);
        const int32_t q = ((int32_t)(t >> 32) >> (n - 32));
        const int32_t pre = q + zy;  /* |q| < 2^30: no overflow */
        y[i] = (int8_t)(pre < lo ? lo : (pre > hi ? hi : pre));
        if (mask) mask[i] = (uint8_t)(pre >= lo && pre <= hi);
        return;
    }
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
#if ET_DSP
        int32_t R[3] = {0, 0, 0};  /* the 3x3 weights' row sums: zx * sum w, hoisted */
        if (K == 3)
            for (int i = 0; i < cig * 9; i++) R[(i / 3) % 3] += wo[i];
#endif
        for (int oh = 0; oh < Ho; oh++) {
            const int kh0 = k_lo(oh, s, p), kh1 = k_hi(oh, s, p, H, K), ih0 = oh * s - p;
#if ET_DSP
            int32_t zs = 0;
            if (K == 3) for (int kh = kh0; kh < kh1; kh++) zs += R[kh];
            zs *= zx;
#endif
            for (int ow = 0; ow < Wo; ow++) {
                const int kw0 = k_lo(ow, s, p), kw1 = k_hi(ow, s, p, W, K), iw0 = ow * s - p;
                int32_t acc = b[oc];
#if ET_DSP
                if (K == 3 && iw0 >= 0 && ow + 1 < Wo && iw0 + s + 2 < W) {
                    /* two outputs, every column inside: the first's 4th byte is inside */
                    const ptrdiff_t xoff = (ptrdiff_t)ih0 * W + iw0;
                    const int wl = oc == Co - 1;
                    int32_t s0, s1;
                    if (iw0 + s + 3 < W)
                        q_win3x2(xg, xoff, s, (size_t)H * W, W, wo, cig, kh0, kh1, 0, wl, &s0,
                                 &s1);
                    else
                        q_win3x2(xg, xoff, s, (size_t)H * W, W, wo, cig, kh0, kh1, 1, wl, &s0,
                                 &s1);
                    q_out(acc + s0 - zs, m0[oc], sh[oc], zy, lo, hi, y, mask, yo + oh * Wo + ow);
                    q_out(acc + s1 - zs, m0[oc], sh[oc], zy, lo, hi, y, mask,
                          yo + oh * Wo + ow + 1);
                    ow++;
                    continue;
                }
                if (K == 3 && iw0 >= 0 && iw0 + 2 < W) {  /* every column inside */
                    const ptrdiff_t xoff = (ptrdiff_t)ih0 * W + iw0;
                    const int wl = oc == Co - 1;
                    acc += (iw0 + 3 < W
                                ? q_win3(xg, xoff, (size_t)H * W, W, wo, cig, kh0, kh1, 0, wl)
                                : q_win3(xg, xoff, (size_t)H * W, W, wo, cig, kh0, kh1, 1, wl))
                           - zs;
                    q_out(acc, m0[oc], sh[oc], zy, lo, hi, y, mask, yo + oh * Wo + ow);
                    continue;
                }
#endif
                for (int ic = 0; ic < cig; ic++)
                    acc += qwin(xg + (size_t)ic * H * W, W, zx, wo + ic * K * K, K,
                                kh0, kh1, kw0, kw1, ih0, iw0);
                q_out(acc, m0[oc], sh[oc], zy, lo, hi, y, mask, yo + oh * Wo + ow);
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

/* NOTE [ Register-blocked int8 backward ]
   The backward kernels of the float surrogate (ET_REAL) for the common shapes: a 3x3 conv
   (stride 1 or 2) keeps its 9 weights converted to ET_REAL in registers for a whole input
   plane and scatters 4 output gradients per block into the input gradient (each touched
   element loaded and stored once per kernel row); its weight gradient keeps the 9 taps' sums
   in registers over the plane; a 1x1 conv is a 4 x 4 register tile. Every input-gradient
   element and every weight-gradient sum receives its terms in the same order as the plain
   loops (by output channel, then output row, then column), so the host's double results are
   those of the plain loops bit for bit; border outputs take the plain per-tap path. */
#define Q_AI static inline __attribute__((always_inline))
/* the output gradient dacc[o] (gd: the pool's dy / P * M where not clamped, else 0) */
Q_AI ET_REAL q_d(const ET_REAL *d, const uint8_t *mk, ET_REAL dv, int o) {
    return d ? d[o] : (mk[o] ? dv : (ET_REAL)0);
}
/* output columns [*a, *b) whose 3 taps are inside 0..W-1 */
static inline void q_inner3(int Wo, int W, int s, int p, int *a, int *b) {
    int lo = (p + s - 1) / s, v = W - 3 + p;
    int hi = v < 0 ? 0 : v / s + 1;
    if (hi > Wo) hi = Wo;
    if (lo > hi) lo = hi;
    *a = lo; *b = hi;
}
/* one kernel row of 4 output gradients scattered: dr[j*S + kw] += w_kw * d_j */
Q_AI void q_sc4(ET_REAL *dr, ET_REAL w0, ET_REAL w1, ET_REAL w2, ET_REAL d0, ET_REAL d1,
                ET_REAL d2, ET_REAL d3, int S) {
    if (S == 1) {
        ET_REAL v0 = dr[0], v1 = dr[1], v2 = dr[2], v3 = dr[3], v4 = dr[4], v5 = dr[5];
        v0 += d0 * w0;
        v1 += d0 * w1; v1 += d1 * w0;
        v2 += d0 * w2; v2 += d1 * w1; v2 += d2 * w0;
        v3 += d1 * w2; v3 += d2 * w1; v3 += d3 * w0;
        v4 += d2 * w2; v4 += d3 * w1;
        v5 += d3 * w2;
        dr[0] = v0; dr[1] = v1; dr[2] = v2; dr[3] = v3; dr[4] = v4; dr[5] = v5;
    } else {
        ET_REAL v0 = dr[0], v1 = dr[1], v2 = dr[2], v3 = dr[3], v4 = dr[4], v5 = dr[5];
        ET_REAL v6 = dr[6], v7 = dr[7], v8 = dr[8];
        v0 += d0 * w0; v1 += d0 * w1; v2 += d0 * w2; v2 += d1 * w0;
        v3 += d1 * w1; v4 += d1 * w2; v4 += d2 * w0; v5 += d2 * w1;
        v6 += d2 * w2; v6 += d3 * w0; v7 += d3 * w1; v8 += d3 * w2;
        dr[0] = v0; dr[1] = v1; dr[2] = v2; dr[3] = v3; dr[4] = v4; dr[5] = v5;
        dr[6] = v6; dr[7] = v7; dr[8] = v8;
    }
}
/* one output gradient over its in-bounds taps (borders) */
Q_AI void q_sc1(ET_REAL *dxc, const ET_REAL *wf, ET_REAL d, int H, int W, int ih0, int iw0) {
#pragma GCC unroll 3
    for (int kh = 0; kh < 3; kh++) {
        const int r = ih0 + kh;
        if (r < 0 || r >= H) continue;
#pragma GCC unroll 3
        for (int kw = 0; kw < 3; kw++) {
            const int c = iw0 + kw;
            if (c >= 0 && c < W) dxc[r * W + c] += d * wf[kh * 3 + kw];
        }
    }
}
Q_AI void q3_bwd_plane(ET_REAL *dxc, const ET_REAL *wf, const ET_REAL *d, const uint8_t *mk,
                       ET_REAL dv, int H, int W, int Ho, int Wo, int p, int ca, int cb,
                       int S) {
    for (int oh = 0; oh < Ho; oh++) {
        const int ih0 = oh * S - p, o = oh * Wo;
        const int r0 = ih0 >= 0, r2 = ih0 + 2 < H;
        if (!r0 || !r2 || ih0 + 1 >= H) {
            for (int ow = 0; ow < Wo; ow++)
                q_sc1(dxc, wf, q_d(d, mk, dv, o + ow), H, W, ih0, ow * S - p);
            continue;
        }
        int ow = 0;
        for (; ow < ca; ow++) q_sc1(dxc, wf, q_d(d, mk, dv, o + ow), H, W, ih0, ow * S - p);
        for (; ow + 4 <= cb; ow += 4) {
            const ET_REAL d0 = q_d(d, mk, dv, o + ow), d1 = q_d(d, mk, dv, o + ow + 1);
            const ET_REAL d2 = q_d(d, mk, dv, o + ow + 2), d3 = q_d(d, mk, dv, o + ow + 3);
            ET_REAL *dr = dxc + (ih0 * W + ow * S - p);
            q_sc4(dr, wf[0], wf[1], wf[2], d0, d1, d2, d3, S);
            q_sc4(dr + W, wf[3], wf[4], wf[5], d0, d1, d2, d3, S);
            q_sc4(dr + 2 * W, wf[6], wf[7], wf[8], d0, d1, d2, d3, S);
        }
        for (; ow < Wo; ow++) q_sc1(dxc, wf, q_d(d, mk, dv, o + ow), H, W, ih0, ow * S - p);
    }
}
/* dx += w * dacc for a 3x3 conv, stride 1 or 2 (dx already zeroed or accumulating) */
static void q3_bwd_input(const ET_REAL *dacc, const qgap_dacc *gd, const int8_t *w,
                         ET_REAL *dx, int B, int Ci, int H, int W, int Co, int Ho, int Wo,
                         int s, int p, int G) {
    const int cig = Ci / G, cog = Co / G;
    int ca, cb;
    q_inner3(Wo, W, s, p, &ca, &cb);
    for (int n = 0; n < B; n++)
    for (int oc = 0; oc < Co; oc++) {
        const int g = oc / cog;
        const size_t o0 = ((size_t)n * Co + oc) * Ho * Wo;
        const ET_REAL *d = gd ? 0 : dacc + o0;
        const uint8_t *mk = gd ? gd->mask + o0 : 0;
        const ET_REAL dv = gd ? gd->gp[(size_t)n * Co + oc] / (ET_REAL)gd->P * gd->M[oc] : 0;
        for (int ic = 0; ic < cig; ic++) {
            const int8_t *wc = w + ((size_t)oc * cig + ic) * 9;
            ET_REAL wf[9];
            for (int t = 0; t < 9; t++) wf[t] = (ET_REAL)wc[t];
            ET_REAL *dxc = dx + ((size_t)n * Ci + g * cig + ic) * H * W;
            if (s == 1) q3_bwd_plane(dxc, wf, d, mk, dv, H, W, Ho, Wo, p, ca, cb, 1);
            else q3_bwd_plane(dxc, wf, d, mk, dv, H, W, Ho, Wo, p, ca, cb, 2);
        }
    }
}
/* one output's terms of the 9 weight-gradient sums, taps outside skipped (borders) */
Q_AI void q_wg1(ET_REAL *a, ET_REAL d, const int8_t *xc, int zx, int H, int W, int ih0,
                int iw0) {
#pragma GCC unroll 3
    for (int kh = 0; kh < 3; kh++) {
        const int r = ih0 + kh;
        if (r < 0 || r >= H) continue;
#pragma GCC unroll 3
        for (int kw = 0; kw < 3; kw++) {
            const int c = iw0 + kw;
            if (c >= 0 && c < W) a[kh * 3 + kw] += d * (ET_REAL)(xc[r * W + c] - zx);
        }
    }
}
/* the 9 sums sum_{oh, ow} dacc * (x - zx) of one (oc, ic) plane pair, in (oh, ow) order */
Q_AI void q3_wg_plane(ET_REAL *acc, const ET_REAL *d, const uint8_t *mk, ET_REAL dv,
                      const int8_t *xc, int zx, int H, int W, int Ho, int Wo, int p, int ca,
                      int cb, int S) {
    ET_REAL a[9];
#pragma GCC unroll 9
    for (int t = 0; t < 9; t++) a[t] = acc[t];
    for (int oh = 0; oh < Ho; oh++) {
        const int ih0 = oh * S - p, o = oh * Wo;
        if (ih0 < 0 || ih0 + 2 >= H) {
            for (int ow = 0; ow < Wo; ow++) {
                if (!d && !mk[o + ow]) continue;
                q_wg1(a, q_d(d, mk, dv, o + ow), xc, zx, H, W, ih0, ow * S - p);
            }
            continue;
        }
        int ow = 0;
        for (; ow < ca; ow++)
            if (d || mk[o + ow]) q_wg1(a, q_d(d, mk, dv, o + ow), xc, zx, H, W, ih0, ow * S - p);
        const int8_t *x0 = xc + (ih0 * W + ca * S - p), *x1 = x0 + W, *x2 = x1 + W;
        for (; ow < cb; ow++, x0 += S, x1 += S, x2 += S) {
            if (!d && !mk[o + ow]) continue;
            const ET_REAL e = q_d(d, mk, dv, o + ow);
            a[0] += e * (ET_REAL)(x0[0] - zx); a[1] += e * (ET_REAL)(x0[1] - zx);
            a[2] += e * (ET_REAL)(x0[2] - zx); a[3] += e * (ET_REAL)(x1[0] - zx);
            a[4] += e * (ET_REAL)(x1[1] - zx); a[5] += e * (ET_REAL)(x1[2] - zx);
            a[6] += e * (ET_REAL)(x2[0] - zx); a[7] += e * (ET_REAL)(x2[1] - zx);
            a[8] += e * (ET_REAL)(x2[2] - zx);
        }
        for (; ow < Wo; ow++)
            if (d || mk[o + ow]) q_wg1(a, q_d(d, mk, dv, o + ow), xc, zx, H, W, ih0, ow * S - p);
    }
#pragma GCC unroll 9
    for (int t = 0; t < 9; t++) acc[t] = a[t];
}
/* the 9 weight sums of a 3x3 conv (stride 1 or 2), then the QAS-scaled SGD re-rounding */
static void q3_update(const ET_REAL *dacc, const qgap_dacc *gd, const int8_t *x, int zx,
                      int8_t *w, const ET_REAL *inv_w, ET_REAL lr, int B, int Ci, int H, int W,
                      int Co, int Ho, int Wo, int s, int p, int G) {
    const int cig = Ci / G, cog = Co / G;
    int ca, cb;
    q_inner3(Wo, W, s, p, &ca, &cb);
    for (int oc = 0; oc < Co; oc++) {
        const int g = oc / cog;
        for (int ic = 0; ic < cig; ic++) {
            ET_REAL acc[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
            for (int n = 0; n < B; n++) {
                const size_t o0 = ((size_t)n * Co + oc) * Ho * Wo;
                const ET_REAL *d = gd ? 0 : dacc + o0;
                const uint8_t *mk = gd ? gd->mask + o0 : 0;
                const ET_REAL dv = gd ? gd->gp[(size_t)n * Co + oc] / (ET_REAL)gd->P * gd->M[oc]
                                      : 0;
                const int8_t *xc = x + ((size_t)n * Ci + g * cig + ic) * H * W;
                if (s == 1) q3_wg_plane(acc, d, mk, dv, xc, zx, H, W, Ho, Wo, p, ca, cb, 1);
                else q3_wg_plane(acc, d, mk, dv, xc, zx, H, W, Ho, Wo, p, ca, cb, 2);
            }
            int8_t *wk = w + ((size_t)oc * cig + ic) * 9;
            for (int t = 0; t < 9; t++) {
                ET_REAL v = round_half_away((ET_REAL)wk[t] + (-lr) * (acc[t] * inv_w[oc]));
                wk[t] = (int8_t)(v < -127 ? -127 : (v > 127 ? 127 : v));
            }
        }
    }
}
/* 1x1 conv input gradient in 4 x 4 tiles (input channels x pixels) held in registers while
   every output channel adds its term, in output-channel order */
static void q1_bwd_input(const ET_REAL *dacc, const qgap_dacc *gd, const int8_t *w,
                         ET_REAL *dx, int B, int Ci, int Co, int P) {
    for (int n = 0; n < B; n++) {
        const size_t d0 = (size_t)n * Co * P;
        ET_REAL *dxn = dx + (size_t)n * Ci * P;
        for (int ic = 0; ic < Ci; ic += 4)
        for (int q = 0; q < P; q += 4) {
            if (ic + 4 > Ci || q + 4 > P) {  /* a remainder: element by element */
                for (int i = ic; i < Ci && i < ic + 4; i++)
                for (int j = q; j < P && j < q + 4; j++) {
                    ET_REAL t = dxn[(size_t)i * P + j];
                    for (int oc = 0; oc < Co; oc++) {
                        const size_t o = d0 + (size_t)oc * P + j;
                        const ET_REAL e = gd ? (gd->mask[o] ? gd->gp[(size_t)n * Co + oc]
                                                 / (ET_REAL)gd->P * gd->M[oc] : (ET_REAL)0)
                                             : dacc[o];
                        t += e * (ET_REAL)w[(size_t)oc * Ci + i];
                    }
                    dxn[(size_t)i * P + j] = t;
                }
                continue;
            }
            ET_REAL t[4][4];
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++)
#pragma GCC unroll 4
                for (int v = 0; v < 4; v++) t[u][v] = dxn[(size_t)(ic + u) * P + q + v];
            for (int oc = 0; oc < Co; oc++) {
                const size_t o = d0 + (size_t)oc * P + q;
                ET_REAL e[4];
                if (gd) {
                    const ET_REAL dv = gd->gp[(size_t)n * Co + oc] / (ET_REAL)gd->P * gd->M[oc];
#pragma GCC unroll 4
                    for (int v = 0; v < 4; v++) e[v] = gd->mask[o + v] ? dv : (ET_REAL)0;
                } else {
#pragma GCC unroll 4
                    for (int v = 0; v < 4; v++) e[v] = dacc[o + v];
                }
                const int8_t *wr = w + (size_t)oc * Ci + ic;
#pragma GCC unroll 4
                for (int u = 0; u < 4; u++) {
                    const ET_REAL wf = (ET_REAL)wr[u];
#pragma GCC unroll 4
                    for (int v = 0; v < 4; v++) t[u][v] += e[v] * wf;
                }
            }
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++)
#pragma GCC unroll 4
                for (int v = 0; v < 4; v++) dxn[(size_t)(ic + u) * P + q + v] = t[u][v];
        }
    }
}
/* 1x1 conv weight sums in 4 x 4 tiles (output x input channels), over (n, pixel) in order */
static void q1_update(const ET_REAL *dacc, const qgap_dacc *gd, const int8_t *x, int zx,
                      int8_t *w, const ET_REAL *inv_w, ET_REAL lr, int B, int Ci, int Co,
                      int P) {
    for (int oc = 0; oc < Co; oc += 4)
    for (int ic = 0; ic < Ci; ic += 4) {
        const int nu = Co - oc < 4 ? Co - oc : 4, nv = Ci - ic < 4 ? Ci - ic : 4;
        ET_REAL a[4][4] = {{0}};
        for (int n = 0; n < B; n++) {
            const int8_t *xn = x + ((size_t)n * Ci + ic) * P;
            if (nu == 4 && nv == 4) {
                ET_REAL dv[4];
                const ET_REAL *dr[4];
                const uint8_t *mr[4];
#pragma GCC unroll 4
                for (int u = 0; u < 4; u++) {
                    const size_t o0 = ((size_t)n * Co + oc + u) * P;
                    dr[u] = gd ? 0 : dacc + o0;
                    mr[u] = gd ? gd->mask + o0 : 0;
                    dv[u] = gd ? gd->gp[(size_t)n * Co + oc + u] / (ET_REAL)gd->P * gd->M[oc + u]
                               : 0;
                }
                for (int q = 0; q < P; q++) {
                    ET_REAL e[4], xf[4];
#pragma GCC unroll 4
                    for (int u = 0; u < 4; u++) e[u] = gd ? (mr[u][q] ? dv[u] : 0) : dr[u][q];
#pragma GCC unroll 4
                    for (int v = 0; v < 4; v++) xf[v] = (ET_REAL)(xn[(size_t)v * P + q] - zx);
#pragma GCC unroll 4
                    for (int u = 0; u < 4; u++)
#pragma GCC unroll 4
                        for (int v = 0; v < 4; v++) a[u][v] += e[u] * xf[v];
                }
                continue;
            }
            for (int u = 0; u < nu; u++)
            for (int v = 0; v < nv; v++) {
                const size_t o0 = ((size_t)n * Co + oc + u) * P;
                for (int q = 0; q < P; q++) {
                    const ET_REAL e = gd ? (gd->mask[o0 + q] ? gd->gp[(size_t)n * Co + oc + u]
                                            / (ET_REAL)gd->P * gd->M[oc + u] : 0)
                                         : dacc[o0 + q];
                    a[u][v] += e * (ET_REAL)(xn[(size_t)v * P + q] - zx);
                }
            }
        }
        for (int u = 0; u < nu; u++)
        for (int v = 0; v < nv; v++) {
            const size_t i = (size_t)(oc + u) * Ci + ic + v;
            ET_REAL r = round_half_away((ET_REAL)w[i] + (-lr) * (a[u][v] * inv_w[oc + u]));
            w[i] = (int8_t)(r < -127 ? -127 : (r > 127 ? 127 : r));
        }
    }
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
    if (K == 1 && s == 1 && p == 0 && G == 1) {
        q1_bwd_input(dacc, gd, w, dx, B, Ci, Co, H * W);
        return;
    }
    if (K == 3 && (s == 1 || s == 2)) {
        q3_bwd_input(dacc, gd, w, dx, B, Ci, H, W, Co, Ho, Wo, s, p, G);
        return;
    }
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
    const int k1 = K == 1 && s == 1 && p == 0 && G == 1, k3 = K == 3 && (s == 1 || s == 2);
    if (k1) q1_update(dacc, gd, x, zx, w, inv_w, lr, B, Ci, Co, H * W);
    if (k3) q3_update(dacc, gd, x, zx, w, inv_w, lr, B, Ci, H, W, Co, Ho, Wo, s, p, G);
    for (int oc = 0; oc < Co; oc++) {
        const int g = oc / cog;
        if (!k1 && !k3) for (int ic = 0; ic < cig; ic++)
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
