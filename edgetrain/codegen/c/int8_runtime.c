/* The int8 (QAS) training runtime of edgetrain's C trainer.

   `render_int8` (edgetrain/codegen/_int8_render.py) pastes this file into every int8
   et_model.c, after `#define ET_REAL` (double on the host, to match the float64 simulation;
   float on Cortex-M); the generated code calls the kernels the table of
   edgetrain/codegen/_int8_kernels.py names for each op. Forward: the integer graph, bit for bit
   (NOTE [ int8 arithmetic, bit for bit ], edgetrain/quant/_graph.py); backward: NOTE [ int8
   integer backward ] (edgetrain/quant/_train.py), int8 output gradients and exact int32 sums,
   as NOTE [ The int8 training program ] (edgetrain/codegen/_int8_render.py) summarises. Buffers and scratch are
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
#define Q_AI static inline __attribute__((always_inline))
static inline int8_t clamp8(int64_t v, int lo, int hi) {
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}
/* ET_REAL is double on the host (bit for bit with the float64 simulation) and float on the
   MCU, where the float functions keep the FPU busy instead of soft-float double calls */
static inline ET_REAL et_floor(ET_REAL v) {
    return sizeof(ET_REAL) == sizeof(float) ? (ET_REAL)floorf((float)v) : (ET_REAL)floor(v);
}
/* float exp / log on the MCU (the double ones are soft-float calls there) */
static inline ET_REAL et_exp(ET_REAL v) {
    return sizeof(ET_REAL) == sizeof(float) ? (ET_REAL)expf((float)v) : (ET_REAL)exp(v);
}
static inline ET_REAL et_log(ET_REAL v) {
    return sizeof(ET_REAL) == sizeof(float) ? (ET_REAL)logf((float)v) : (ET_REAL)log(v);
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
   host (no DSP) and the MCU agree bit for bit.
   NOTE [ Hand-written asm and the user's compiler flags ]
   Some DSP loops are inline asm that holds up to 14 registers at once: every register but sp
   and pc. Two things make that impossible: r7 kept as a frame pointer (GCC's
   -fno-omit-frame-pointer), which the pragma below turns off, and an unoptimised build
   (-O0), whose register allocator cannot place such blocks; there the DSP paths are left out
   and the portable kernels run (the same integer sums, slower). Under -Os the pragma also
   compiles at O2: GCC's size-tuned allocation cannot place them either. The pragma holds to
   the end of the generated et_model.c (this runtime and the model code after it); the
   user's other files keep their flags. The library is built with the user's own flags
   (CMake, Arduino's -Os), so flag sets are tested (tests/test_codegen_kernels.py). */
#if defined(ET_HAS_DSP) && ET_HAS_DSP && defined(__ARM_FEATURE_DSP) && defined(__OPTIMIZE__)
#include <arm_acle.h>
#define ET_DSP 1
#if defined(__GNUC__) && !defined(__clang__)
#if defined(__OPTIMIZE_SIZE__)
#pragma GCC optimize("O2", "omit-frame-pointer")
#else
#pragma GCC optimize("omit-frame-pointer")
#endif
#endif
static inline uint32_t q_ld4(const int8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
/* NOTE [ SMMLA rounding ]
   (a * b + (r << 32)) >> 32 = r + ((a * b) >> 32) exactly, so a product rounded by a constant
   that is a multiple of 2^32 (c = r << 32) and then shifted right by 32 + k is
   SMMLA(a, b, r) >> k: one instruction for the 64-bit multiply-add, none for its low word */
static inline int32_t q_smmla(int32_t a, int32_t b, int32_t r) {
    int32_t t;
    __asm__("smmla %0, %1, %2, %3" : "=r"(t) : "r"(a), "r"(b), "r"(r));
    return t;
}
/* SXTB16 of v rotated right by 8 (bytes 1 and 3), one instruction (ACLE's __sxtb16 has no
   rotation, and the compiler does not fold a separate ROR into it) */
static inline int16x2_t q_sxtb16r8(uint32_t v) {
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return (int16x2_t)r;
}
/* (bottom of a, bottom of b) and (top of a, top of b) as 16-bit pairs: PKHBT / PKHTB */
static inline int16x2_t q_pkhbt(int16x2_t a, int16x2_t b) {
    uint32_t r;
    __asm__("pkhbt %0, %1, %2, lsl #16" : "=r"(r) : "r"(a), "r"(b));
    return (int16x2_t)r;
}
static inline int16x2_t q_pkhtb(int16x2_t a, int16x2_t b) {
    uint32_t r;
    __asm__("pkhtb %0, %1, %2, asr #16" : "=r"(r) : "r"(a), "r"(b));
    return (int16x2_t)r;
}
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
        const int16x2_t xh = __ssub16(q_sxtb16r8(xv), zz);
        a0 = __smlad(xl, __sxtb16(v0), a0);
        a0 = __smlad(xh, q_sxtb16r8(v0), a0);
        a1 = __smlad(xl, __sxtb16(v1), a1);
        a1 = __smlad(xh, q_sxtb16r8(v1), a1);
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
    return __smlabb(q_sxtb16r8(xv), q_sxtb16r8(wv), acc);
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
            const int16x2_t wl = __sxtb16(wv), wh = q_sxtb16r8(wv);
            const uint32_t xa = q_ld4(xr), xb = xtight ? q_ld3(xr + dx) : q_ld4(xr + dx);
            a0 = __smlad(__sxtb16(xa), wl, a0);
            a0 = __smlabb(q_sxtb16r8(xa), wh, a0);
            a1 = __smlad(__sxtb16(xb), wl, a1);
            a1 = __smlabb(q_sxtb16r8(xb), wh, a1);
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
#if ET_DSP
        const int32_t q = q_smmla(acc, m0, (int32_t)(1u << (n - 33))) >> (n - 32);
#else
        const int64_t t = (int64_t)acc * m0 + (int64_t)((uint64_t)(1u << (n - 33)) << 32);
        const int32_t q = ((int32_t)(t >> 32) >> (n - 32));
#endif
        const int32_t pre = q + zy;  /* |q| < 2^30: no overflow */
        y[i] = (int8_t)(pre < lo ? lo : (pre > hi ? hi : pre));
        if (mask) mask[i] = (uint8_t)(pre >= lo && pre <= hi);
        return;
    }
    const int64_t pre = rq(acc, m0, sh) + zy;
    y[i] = clamp8(pre, lo, hi);
    if (mask) mask[i] = (uint8_t)(pre >= lo && pre <= hi);
}

#if ET_DSP
/* NOTE [ Hoisted requantisation ]
   q_out's per-channel constants (SMMLA's rounding term and the shift, NOTE [ SMMLA rounding ])
   made once per call, where every channel takes rq's fast case (n = 31 - shift in 33..63):
   the byte stores of y and the mask may alias anything, so q_out's own loads and tests are
   redone per output otherwise. The mat-mult forward keeps them, with the channel's bias, as
   a table of 16 bytes per channel in its scratch, after the expanded weight rows, where Co <= Q_RQMAX
   (`rq_table_bytes` in _int8_layout.py); the padded 3x3 forward one channel at a time in
   locals. The output zero point is folded into the rounding term, r' = r + zy 2^s:
   SMMLA(a, m0, r') = r' + floor(a m0 / 2^32) is exact while it fits 32 bits, and
   |floor(a m0 / 2^32)| <= 2^30, so |r'| < 2^30 is enough: the table is made where zy is
   an int8 and every s is at most 21 (|r'| < 2^29; a larger shift, a scale below 2^-52,
   leaves it unmade and the call takes q_out); then
   (r' + F) >> s = zy + ((r + F) >> s) exactly. The clamp is branch free (q_out_k): SSAT to
   int8, then [lo, hi] inside it (no instruction where it is [-128, 127]); the value was
   not clamped exactly where the clamped value equals it. The same integers as q_out. */
#define Q_RQMAX 64
typedef struct { int32_t m0, r, s, b; } q_rqk;
static inline size_t q_rq_bytes(int Co) { return Co <= Q_RQMAX ? (size_t)16 * Co : 0; }
static const q_rqk *q_rq_consts(q_rqk *k, const int32_t *m0, const int32_t *sh, int zy,
                                int lo, int hi, int Co, const int32_t *b) {
    if (!q_rq_bytes(Co) || lo < -128 || hi > 127 || lo > hi || zy < -128 || zy > 127)
        return 0;
    for (int c = 0; c < Co; c++) {
        const int n = 31 - sh[c];
        if (n < 33 || n > 53) return 0;  /* s = n - 32 in 1..21: |r'| < 2^29 */
        k[c].m0 = m0[c];
        k[c].r = (int32_t)((1u << (n - 33)) + (uint32_t)zy * (1u << (n - 32)));
        k[c].s = n - 32;
        k[c].b = b ? b[c] : 0;
    }
    return k;
}
Q_AI void q_out_k(int32_t acc, q_rqk k, int lo, int hi, int8_t *y, uint8_t *mask, size_t i) {
    const int32_t pre = q_smmla(acc, k.m0, k.r) >> k.s;  /* zy included */
    int32_t v = __ssat(pre, 8);
    if (lo > -128) v = v < lo ? lo : v;
    if (hi < 127) v = v > hi ? hi : v;
    y[i] = (int8_t)v;
    if (mask) mask[i] = (uint8_t)(v == pre);
}
#endif

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

/* the H x W plane xc with p rows / columns of zx around it: (H + 2p) x (W + 2p) bytes at
   `pad` (and Q_PAD_SLACK bytes after it that the 4-byte loads may read); zx - zx = 0, so the
   padded taps add nothing */
#define Q_PAD_SLACK 8
static void q_pad(int8_t *pad, const int8_t *xc, int zx, int H, int W, int p) {
    const int Wp = W + 2 * p;
    memset(pad, zx, (size_t)p * Wp);
    for (int r = 0; r < H; r++) {
        int8_t *o = pad + (size_t)(p + r) * Wp;
        for (int j = 0; j < p; j++) o[j] = (int8_t)zx, o[p + W + j] = (int8_t)zx;
        memcpy(o + p, xc + (size_t)r * W, (size_t)W);
    }
    memset(pad + (size_t)(p + H) * Wp, zx, (size_t)p * Wp + Q_PAD_SLACK);
}
/* NOTE [ Padded 3x3 forward ]
   A trainable 3x3 conv (stride 1 or 2) runs its forward from zero-point-padded input planes
   in arena scratch (`f:<op>`, NOTE [ int8 SRAM of the C trainer ]): (H + 2p) x (W + 2p) +
   Q_PAD_SLACK bytes, then, unless each group is one input and one output channel (a
   depthwise conv: each pair of sums requantised at once, q3_plane_rq), Ho x Wo int32 sums,
   requantised two at a time after the last input channel (q_out_row). The
   padded taps hold zx, so every output sums all 9 taps, sum (x - zx) w = sum x w - zx sum w,
   with no border cases. With the DSP, two outputs (ow, ow + 1) per kernel row: the pair
   (w0, w2) against SXTB16 lanes (x0, x2) and w1 by a halfword MAC (stride 1: one word,
   7 instructions for 6 MACs; stride 2: two words, 9). The integer sums are qconv_fwd's, so
   without the DSP it is qconv_fwd. */
#if ET_DSP
Q_AI int16x2_t q_w02(const int8_t *w) {
    return (int16x2_t)(((uint32_t)w[2] << 16) | (uint16_t)w[0]);
}
/* sum x * w over the 3 x 3 window of outputs (ow, ow + 1) of one padded plane row block */
Q_AI void q3_pair(const int8_t *xr, int Wp, int S, int16x2_t A0, int16x2_t A1, int16x2_t A2,
                  int32_t w10, int32_t w11, int32_t w12, int32_t *s0, int32_t *s1) {
    int32_t a0 = *s0, a1 = *s1;
#define Q_KROW(A, W1)                                                                 \
    {                                                                                 \
        const uint32_t u = q_ld4(xr);                                                 \
        const int16x2_t E = __sxtb16(u), O = q_sxtb16r8(u);                           \
        a0 = __smlad(A, E, a0); a0 = __smlabb(W1, O, a0);                             \
        if (S == 1) { a1 = __smlad(A, O, a1); a1 = __smlabt(W1, E, a1); }             \
        else { a1 = __smlad(A, __sxtb16(q_ld4(xr + 2)), a1); a1 = __smlabt(W1, O, a1); } \
        xr += Wp;                                                                     \
    }
    Q_KROW(A0, w10)
    Q_KROW(A1, w11)
    Q_KROW(A2, w12)
#undef Q_KROW
    *s0 = a0; *s1 = a1;
}
/* sums[oh * Wo + ow] += sum x * w over every output of one (padded plane, 3x3 weights) pair */
Q_AI void q3_plane_fwd(int32_t *sums, const int8_t *xp, int Wp, const int8_t *wk, int Ho,
                       int Wo, int S, int32_t init, int add) {
    const int16x2_t A0 = q_w02(wk), A1 = q_w02(wk + 3), A2 = q_w02(wk + 6);
    const int32_t w10 = wk[1], w11 = wk[4], w12 = wk[7];
    for (int oh = 0; oh < Ho; oh++) {
        const int8_t *xr = xp + (size_t)oh * S * Wp;
        int32_t *so = sums + (size_t)oh * Wo;
        for (int ow = 0; ow < Wo; ow += 2) {
            int32_t s0 = add ? so[ow] : init, s1 = add && ow + 1 < Wo ? so[ow + 1] : init;
            if (S == 1) q3_pair(xr + ow, Wp, 1, A0, A1, A2, w10, w11, w12, &s0, &s1);
            else q3_pair(xr + 2 * ow, Wp, 2, A0, A1, A2, w10, w11, w12, &s0, &s1);
            so[ow] = s0;
            if (ow + 1 < Wo) so[ow + 1] = s1;  /* an odd last pair's second is past the row */
        }
    }
}
#endif
#if ET_DSP
/* q3_plane_fwd's pairs of one output channel with one input channel, requantised at once
   into y and mask at yo (with the table entry k, NOTE [ Hoisted requantisation ], or q_out):
   no pass over stored sums */
/* q3_pair with the first two kernel rows' middle weights in one register (w10 bottom, w11
   top: SMLAxy picks the half), one register fewer where the requantisation constants are
   live too */
Q_AI void q3_pairp(const int8_t *xr, int Wp, int S, int16x2_t A0, int16x2_t A1, int16x2_t A2,
                   int16x2_t W01, int32_t w12, int32_t *s0, int32_t *s1) {
    int32_t a0 = *s0, a1 = *s1;
    for (int kh = 0; kh < 3; kh++, xr += Wp) {
        const uint32_t u = q_ld4(xr);
        const int16x2_t E = __sxtb16(u), O = q_sxtb16r8(u);
        const int16x2_t A = kh == 0 ? A0 : kh == 1 ? A1 : A2;
        const int16x2_t E1 = S == 1 ? O : __sxtb16(q_ld4(xr + 2)), M1 = S == 1 ? E : O;
        a0 = __smlad(A, E, a0);
        a1 = __smlad(A, E1, a1);
        if (kh == 0) { a0 = __smlabb(W01, O, a0); a1 = __smlabt(W01, M1, a1); }
        else if (kh == 1) { a0 = __smlatb(W01, O, a0); a1 = __smlatt(W01, M1, a1); }
        else { a0 = __smlabb((int16x2_t)w12, O, a0); a1 = __smlabt((int16x2_t)w12, M1, a1); }
    }
    *s0 = a0; *s1 = a1;
}
Q_AI void q3_plane_rq(const int8_t *xp, int Wp, const int8_t *wk, int Ho, int Wo, int S,
                      int32_t init, const q_rqk *k, int32_t m0, int32_t sh, int zy, int lo,
                      int hi, int8_t *y, uint8_t *mask, size_t yo) {
    const int16x2_t A0 = q_w02(wk), A1 = q_w02(wk + 3), A2 = q_w02(wk + 6);
    const int16x2_t W01 = (int16x2_t)(((uint32_t)wk[4] << 16) | (uint16_t)wk[1]);
    const int32_t w12 = wk[7];
    for (int oh = 0; oh < Ho; oh++) {
        const int8_t *xr = xp + (size_t)oh * S * Wp;
        const size_t yr = yo + (size_t)oh * Wo;
        for (int ow = 0; ow < Wo; ow += 2) {
            int32_t s0 = init, s1 = init;
            if (S == 1) q3_pairp(xr + ow, Wp, 1, A0, A1, A2, W01, w12, &s0, &s1);
            else q3_pairp(xr + 2 * ow, Wp, 2, A0, A1, A2, W01, w12, &s0, &s1);
            if (k) {
                q_out_k(s0, *k, lo, hi, y, mask, yr + ow);
                if (ow + 1 < Wo) q_out_k(s1, *k, lo, hi, y, mask, yr + ow + 1);
            } else {
                q_out(s0, m0, sh, zy, lo, hi, y, mask, yr + ow);
                if (ow + 1 < Wo) q_out(s1, m0, sh, zy, lo, hi, y, mask, yr + ow + 1);
            }
        }
    }
}
#endif
#if ET_DSP
/* n stored sums requantised into y and mask from index i (with the table entry k or q_out),
   two at a time */
Q_AI void q_out_row(const int32_t *s, int n, const q_rqk *k, int32_t m0, int32_t sh, int zy,
                    int lo, int hi, int8_t *y, uint8_t *mask, size_t i) {
    if (k) {
        const q_rqk kk = *k;
        const int32_t *e = s + (n & ~1);
        for (; s != e; s += 2, i += 2) {
            const int32_t v0 = s[0], v1 = s[1];
            q_out_k(v0, kk, lo, hi, y, mask, i);
            q_out_k(v1, kk, lo, hi, y, mask, i + 1);
        }
        if (n & 1) q_out_k(s[0], kk, lo, hi, y, mask, i);
        return;
    }
    for (int j = 0; j < n; j++) q_out(s[j], m0, sh, zy, lo, hi, y, mask, i + j);
}
#endif
static void qconv3_fwd(const int8_t *x, int zx, const int8_t *w, const int32_t *b,
                       const int32_t *m0, const int32_t *sh, int zy, int lo, int hi, int8_t *y,
                       uint8_t *mask, int8_t *scratch, int B, int Ci, int H, int W, int Co,
                       int Ho, int Wo, int K, int s, int p, int G) {
#if ET_DSP
    const int cig = Ci / G, cog = Co / G, Wp = W + 2 * p;
    if (K == 3 && (s == 1 || s == 2) && scratch) {
        const size_t pb = ((size_t)(H + 2 * p) * Wp + Q_PAD_SLACK + 3) / 4 * 4;
        int32_t *sums = (int32_t *)(void *)(scratch + pb);
        long padded = -1;  /* the plane now in the scratch (n * Ci + ci) */
        for (int n = 0; n < B; n++)
        for (int oc = 0; oc < Co; oc++) {
            const int g = oc / cog;
            const int8_t *wo = w + (size_t)oc * cig * 9;
            int32_t ws = 0;
            for (int i = 0; i < cig * 9; i++) ws += wo[i];
            const int32_t init = b[oc] - zx * ws;
            const size_t yo = ((size_t)n * Co + oc) * Ho * Wo;
            if (cig == 1 && cog == 1) {  /* requantised from registers */
                const long pl = (long)n * Ci + g;
                if (pl != padded) {
                    q_pad(scratch, x + (size_t)pl * H * W, zx, H, W, p);
                    padded = pl;
                }
                q_rqk k;
                if (q_rq_consts(&k, m0 + oc, sh + oc, zy, lo, hi, 1, 0))
                    q3_plane_rq(scratch, Wp, wo, Ho, Wo, s, init, &k, 0, 0, zy, lo, hi, y, mask,
                                yo);
                else
                    q3_plane_rq(scratch, Wp, wo, Ho, Wo, s, init, 0, m0[oc], sh[oc], zy, lo, hi,
                                y, mask, yo);
                continue;
            }
            for (int ic = 0; ic < cig; ic++) {
                const long pl = (long)n * Ci + g * cig + ic;
                if (pl != padded) {
                    q_pad(scratch, x + (size_t)pl * H * W, zx, H, W, p);
                    padded = pl;
                }
                q3_plane_fwd(sums, scratch, Wp, wo + ic * 9, Ho, Wo, s, init, ic > 0);
            }
            q_rqk k;
            if (q_rq_consts(&k, m0 + oc, sh + oc, zy, lo, hi, 1, 0))  /* NOTE [ Hoisted requantisation ] */
                q_out_row(sums, Ho * Wo, &k, 0, 0, zy, lo, hi, y, mask, yo);
            else
                q_out_row(sums, Ho * Wo, 0, m0[oc], sh[oc], zy, lo, hi, y, mask, yo);
        }
        return;
    }
#endif
    (void)scratch;
    qconv_fwd(x, zx, w, b, m0, sh, zy, lo, hi, y, mask, B, Ci, H, W, Co, Ho, Wo, K, s, p, G);
}

/* NOTE [ int8 mat-mult forward ]
   A trainable conv with one group (G = 1) of at least 2 input channels that is a 3x3
   (stride 1 or 2) or a 1x1 (stride 1, no padding) runs its forward as a matrix product
   (CMSIS-NN's technique: im2col into 16-bit columns, then a 2 output channel x 2 column
   dual-MAC kernel): b + sum (x - zx) w over the Kt = Ci K^2 taps of a window, with taps in the
   padding 0 (= zx - zx). The int8 weights are read 4 at a time and unpacked by SXTB16 into the
   pairs (w0, w2), (w1, w3); the columns are gathered in the same lane order, per 4 taps the
   words (t0, t2) and (t1, t3) of column 0 and of column 1 interleaved (the last Kt mod 4 taps
   as (column 0, column 1) words, summed one by one). Per 4 taps: two weight loads, 4 SXTB16,
   4 column loads and 8 SMLADs for 16 MACs; with the weights unpacked once per call (NOTE
   [ Paired weight rows ]) 4 LDRDs and 8 SMLADs. A 3x3's columns come from byte patches (NOTE
   [ Mat-mult 3x3 columns ]); each tile's 4 sums are requantised from registers with the
   per-channel table (NOTE [ Hoisted requantisation ]). Arena scratch `f:<op>` (NOTE [ int8
   SRAM of the C trainer ], `forward_scratch_bytes` in _int8_layout.py): Kt int32 tap offsets
   (in that lane order) and the two columns, Kt words: 8 Kt bytes, then the paired weight
   rows, the table and the patches. The integer sums are qconv_fwd's, so without the DSP it
   is qconv_fwd. */
#if ET_DSP
Q_AI uint32_t q_pack2(int32_t a, int32_t b) {
    return (uint32_t)q_pkhbt((int16x2_t)a, (int16x2_t)b);
}
/* the four sums (oc0, c0), (oc0, c1), (oc1, c0), (oc1, c1) over the Kt taps: per 4 taps
   one LDR of each weight row, two LDRDs of column words, 4 SXTB16 and 8 SMLADs, in 13
   registers (written out: the compiler's allocation spilled inside the loop) */
Q_AI void q_mm2x2(const int8_t *w0, const int8_t *w1, const uint32_t *c, int Kt, int32_t *a) {
    int32_t a00 = a[0], a01 = a[1], a10 = a[2], a11 = a[3];
    const int K4 = Kt / 4 * 4;
    uint32_t u, v, e, c0, c1;
#define Q_MM2X2_4                                   \
    "ldr %[u], [%[w0]], #4\n\t"                     \
    "ldr %[v], [%[w1]], #4\n\t"                     \
    "ldrd %[c0], %[c1], [%[c]], #8\n\t"             \
    "sxtb16 %[e], %[u]\n\t"                         \
    "smlad %[a00], %[e], %[c0], %[a00]\n\t"         \
    "smlad %[a01], %[e], %[c1], %[a01]\n\t"         \
    "sxtb16 %[e], %[v]\n\t"                         \
    "smlad %[a10], %[e], %[c0], %[a10]\n\t"         \
    "smlad %[a11], %[e], %[c1], %[a11]\n\t"         \
    "ldrd %[c0], %[c1], [%[c]], #8\n\t"             \
    "sxtb16 %[e], %[u], ror #8\n\t"                 \
    "smlad %[a00], %[e], %[c0], %[a00]\n\t"         \
    "smlad %[a01], %[e], %[c1], %[a01]\n\t"         \
    "sxtb16 %[e], %[v], ror #8\n\t"                 \
    "smlad %[a10], %[e], %[c0], %[a10]\n\t"         \
    "smlad %[a11], %[e], %[c1], %[a11]\n\t"
#define Q_MM2X2_IO                                                                        \
    : [a00] "+&r"(a00), [a01] "+&r"(a01), [a10] "+&r"(a10), [a11] "+&r"(a11),              \
      [w0] "+&r"(w0), [w1] "+&r"(w1), [c] "+&r"(c), [u] "=&r"(u), [v] "=&r"(v), [e] "=&r"(e), \
      [c0] "=&r"(c0), [c1] "=&r"(c1)
    if (K4 & 4) __asm__ volatile(Q_MM2X2_4 Q_MM2X2_IO : : "memory");
    if (K4 & ~7) {  /* 8 taps per iteration */
        const int8_t *end = w0 + (K4 & ~7);
        __asm__ volatile("1:\n\t" Q_MM2X2_4 Q_MM2X2_4 "cmp %[w0], %[end]\n\tbne 1b\n\t"
                         Q_MM2X2_IO : [end] "r"(end) : "cc", "memory");
    }
#undef Q_MM2X2_4
#undef Q_MM2X2_IO
    for (int k = K4; k < Kt; k++, c++, w0++, w1++) {
        const int32_t x0 = (int16_t)c[0], x1 = (int32_t)c[0] >> 16, u = *w0, v = *w1;
        a00 += u * x0; a01 += u * x1; a10 += v * x0; a11 += v * x1;
    }
    a[0] = a00; a[1] = a01; a[2] = a10; a[3] = a11;
}
/* NOTE [ Expanded dq rows ]
   Operands that an inner loop reads many times are unpacked once per call into SXTB16's
   16-bit pairs in the op's arena scratch, so the loops load pairs instead of unpacking them:
   dq rows (NOTE [ Paired-output weight gradient ], NOTE [ Paired 1x1 input gradient ], NOTE
   [ Paired stride-2 3x3 input gradient ]) and weight rows (NOTE [ Paired weight rows ]). Each
   is capped at Q_DQ16_MAX bytes (DQ16_MAX_BYTES in _int8_layout.py, which counts the same
   bytes); over the cap the kernel unpacks as it goes. The integer sums are the same. */
#define Q_DQ16_MAX 4096
/* NOTE [ Paired weight rows ]
   The mat-mult forward reads every weight row once per column pair. Where 2 (Co rounded up
   to even) (Kt / 4 * 4) bytes <= Q_DQ16_MAX (`wpair16_bytes` in _int8_layout.py), the rows
   are unpacked once per call into SXTB16's 16-bit pairs, interleaved by output channel
   pair: per 4 taps the words (t0, t2) of oc, of oc + 1, then (t1, t3) of oc, of oc + 1 (an
   odd last channel paired with itself), the order of the column words (NOTE [ int8 mat-mult
   forward ]). The tile then needs one weight pointer and 4 temporaries (two LDRDs, 4
   SMLADs per 2 taps), 10 registers with its accumulators, so the channel loop's pointers
   stay in registers, and a pair's block ends where the next begins. The integer sums are
   the same. */
Q_AI size_t q_wp16_bytes(int Co, int Kt) {
    const size_t n = (size_t)2 * ((Co + 1) / 2 * 2) * (Kt / 4 * 4);
    return n <= Q_DQ16_MAX ? n : 0;
}
static uint32_t *q_wp16(uint32_t *h, const int8_t *w, int Co, int Kt) {
    if (!q_wp16_bytes(Co, Kt)) return 0;
    const int K4 = Kt / 4 * 4;
    uint32_t *o = h;
    for (int oc = 0; oc < Co; oc += 2) {
        const int8_t *w0 = w + (size_t)oc * Kt, *w1 = w + (size_t)(oc + 1 < Co ? oc + 1 : oc) * Kt;
        for (int k = 0; k < K4; k += 4, o += 4) {
            const uint32_t u = q_ld4(w0 + k), v = q_ld4(w1 + k);
            o[0] = (uint32_t)__sxtb16(u); o[1] = (uint32_t)__sxtb16(v);
            o[2] = (uint32_t)q_sxtb16r8(u); o[3] = (uint32_t)q_sxtb16r8(v);
        }
    }
    return h;
}
/* the four sums (oc0, c0), (oc0, c1), (oc1, c0), (oc1, c1) over the first K4 taps from one
   pair block h (NOTE [ Paired weight rows ]), then the last Kt mod 4 from the int8 rows w0,
   w1; returns the end of the block (the next pair's) */
Q_AI const uint32_t *q_mm2x2p(const uint32_t *h, const int8_t *w0, const int8_t *w1,
                              const uint32_t *c, int Kt, int32_t *a) {
    int32_t a00 = a[0], a01 = a[1], a10 = a[2], a11 = a[3];
    const int K4 = Kt / 4 * 4;
    uint32_t u, v, c0, c1;
#define Q_MMP_2                                     \
    "ldrd %[u], %[v], [%[h]], #8\n\t"               \
    "ldrd %[c0], %[c1], [%[c]], #8\n\t"             \
    "smlad %[a00], %[u], %[c0], %[a00]\n\t"         \
    "smlad %[a01], %[u], %[c1], %[a01]\n\t"         \
    "smlad %[a10], %[v], %[c0], %[a10]\n\t"         \
    "smlad %[a11], %[v], %[c1], %[a11]\n\t"
#define Q_MMP_IO                                                                          \
    : [a00] "+&r"(a00), [a01] "+&r"(a01), [a10] "+&r"(a10), [a11] "+&r"(a11),              \
      [h] "+&r"(h), [c] "+&r"(c), [u] "=&r"(u), [v] "=&r"(v), [c0] "=&r"(c0), [c1] "=&r"(c1)
    if (K4 & 4) __asm__ volatile(Q_MMP_2 Q_MMP_2 Q_MMP_IO : : "memory");
    if (K4 & 8) __asm__ volatile(Q_MMP_2 Q_MMP_2 Q_MMP_2 Q_MMP_2 Q_MMP_IO : : "memory");
    if (K4 & ~15) {  /* 16 taps per iteration (a loop's compare and branch per 64 MACs) */
        const uint32_t *end = h + (K4 & ~15);
        __asm__ volatile("1:\n\t" Q_MMP_2 Q_MMP_2 Q_MMP_2 Q_MMP_2 Q_MMP_2 Q_MMP_2 Q_MMP_2
                         Q_MMP_2 "cmp %[h], %[end]\n\tbne 1b\n\t"
                         Q_MMP_IO : [end] "r"(end) : "cc", "memory");
    }
#undef Q_MMP_2
#undef Q_MMP_IO
    w0 += K4; w1 += K4;
    for (int k = K4; k < Kt; k++, c++, w0++, w1++) {
        const int32_t x0 = (int16_t)c[0], x1 = (int32_t)c[0] >> 16, p0 = *w0, p1 = *w1;
        a00 += p0 * x0; a01 += p0 * x1; a10 += p1 * x0; a11 += p1 * x1;
    }
    a[0] = a00; a[1] = a01; a[2] = a10; a[3] = a11;
    return h;
}
/* NOTE [ Mat-mult 3x3 columns ]
   A 3x3 window (stride 1 or 2) is first copied, in the natural tap order (ic, kh, kw), into
   a byte patch in scratch: inside the input, a kernel row is one unaligned 4-byte load and
   store (its 4th byte is overwritten by the next row; the window's last row takes 3 bytes,
   so nothing past it is read); a window in the padding is copied a kernel row at a time with
   zx for the taps outside (zx - zx = 0). The two patches of a column pair then become the
   columns: per 4 taps one load of each, SXTB16 and SXTB16 ROR #8 give (t0, t2), (t1, t3),
   less zx by SSUB16, the lane order of NOTE [ int8 mat-mult forward ]; the last Kt mod 4
   taps as (column 0, column 1) pairs. The same integers as the tap-by-tap gather. Scratch:
   two patches of Kt bytes rounded up to 4 after the requantisation table
   (`forward_scratch_bytes`). */
static void q_mm_fill(int8_t *pt, const int8_t *src, int zx, int H, int W, int Ci, int ih0,
                      int iw0) {
    const size_t HW = (size_t)H * W;
    int8_t *o = pt;
    if (ih0 >= 0 && iw0 >= 0 && ih0 + 3 <= H && iw0 + 3 <= W) {
        const int8_t *xi = src + (ih0 * W + iw0);
        for (int ic = 0; ic + 1 < Ci; ic++, xi += HW, o += 9) {
            memcpy(o, xi, 4); memcpy(o + 3, xi + W, 4); memcpy(o + 6, xi + 2 * W, 4);
        }
        memcpy(o, xi, 4); memcpy(o + 3, xi + W, 4); memcpy(o + 6, xi + 2 * W, 3);
        return;
    }
    /* the kernel rows and columns inside the input: [kh0, kh1) x [kw0, kw1) */
    const int kw0 = iw0 < 0 ? -iw0 : 0, kw1 = W - iw0 < 3 ? W - iw0 : 3;
    const int kh0 = ih0 < 0 ? -ih0 : 0, kh1 = H - ih0 < 3 ? H - ih0 : 3;
    memset(pt, zx, (size_t)9 * Ci);
    if (kw0 >= kw1) return;
    for (int ic = 0; ic < Ci; ic++, o += 9) {
        const int8_t *xr = src + ic * HW + (ptrdiff_t)(ih0 + kh0) * W + iw0;
        for (int kh = kh0; kh < kh1; kh++, xr += W)
            for (int kw = kw0; kw < kw1; kw++) o[3 * kh + kw] = xr[kw];
    }
}
/* the column pair from the patches p0, p1 */
static void q_mm_pcols(uint32_t *col, const int8_t *p0, const int8_t *p1, int zx, int K4,
                       int Kt) {
    const int16x2_t zz = (int16x2_t)(((uint32_t)(uint16_t)zx << 16) | (uint16_t)zx);
    for (int k = 0; k < K4; k += 4) {
        const uint32_t u = q_ld4(p0 + k), v = q_ld4(p1 + k);
        col[k] = (uint32_t)__ssub16(__sxtb16(u), zz);
        col[k + 1] = (uint32_t)__ssub16(__sxtb16(v), zz);
        col[k + 2] = (uint32_t)__ssub16(q_sxtb16r8(u), zz);
        col[k + 3] = (uint32_t)__ssub16(q_sxtb16r8(v), zz);
    }
    for (int k = K4; k < Kt; k++)
        col[k] = (uint32_t)__ssub16((int16x2_t)q_pack2(p0[k], p1[k]), zz);
}
/* every output channel pair of one column pair, with the paired weight rows wp (NOTE
   [ Paired weight rows ]) and the table rk (bias and requantisation, NOTE [ Hoisted
   requantisation ]), into y and mask from index i (an odd last channel computed in both
   rows, stored once) */
Q_AI void q_mm_ocs(const uint32_t *wp, const int8_t *w, int Kt, const q_rqk *rk, int Co,
                   const uint32_t *col, int lo, int hi, int8_t *y, uint8_t *mask, size_t i,
                   size_t P) {
    const q_rqk *end = rk + (Co & ~1);
    for (; rk != end; rk += 2, w += 2 * Kt, i += 2 * P) {
        int32_t a[4] = {rk[0].b, rk[0].b, rk[1].b, rk[1].b};
        wp = q_mm2x2p(wp, w, w + Kt, col, Kt, a);
        const q_rqk k0 = rk[0], k1 = rk[1];
        q_out_k(a[0], k0, lo, hi, y, mask, i);
        q_out_k(a[1], k0, lo, hi, y, mask, i + 1);
        q_out_k(a[2], k1, lo, hi, y, mask, i + P);
        q_out_k(a[3], k1, lo, hi, y, mask, i + P + 1);
    }
    if (Co & 1) {
        int32_t a[4] = {rk[0].b, rk[0].b, rk[0].b, rk[0].b};
        q_mm2x2p(wp, w, w, col, Kt, a);
        q_out_k(a[0], rk[0], lo, hi, y, mask, i);
        q_out_k(a[1], rk[0], lo, hi, y, mask, i + 1);
    }
}
/* the mat-mult forward (DSP) */
static void q_mm_fwd(const int8_t *x, int zx, const int8_t *w, const int32_t *b,
                     const int32_t *m0, const int32_t *sh, int zy, int lo, int hi, int8_t *y,
                     uint8_t *mask, int8_t *scratch, int B, int Ci, int H, int W, int Co, int Ho,
                     int Wo, int K, int s, int p) {
    const int Kt = Ci * K * K, K4 = Kt / 4 * 4, P = Ho * Wo;
    const int16x2_t zz = (int16x2_t)(((uint32_t)(uint16_t)zx << 16) | (uint16_t)zx);
    int32_t *off = (int32_t *)(void *)scratch;
    uint32_t *col = (uint32_t *)(void *)(off + Kt);
    const uint32_t *wp = q_wp16(col + Kt, w, Co, Kt);  /* NOTE [ Paired weight rows ] */
    const q_rqk *rk = q_rq_consts(  /* after the weight rows (NOTE [ Hoisted requantisation ]) */
        (q_rqk *)(void *)((uint8_t *)(col + Kt) + q_wp16_bytes(Co, Kt)), m0, sh, zy, lo, hi, Co, b);
    int8_t *pt = (int8_t *)(col + Kt) + q_wp16_bytes(Co, Kt) + q_rq_bytes(Co);  /* patches */
    const int Kp = (Kt + 3) / 4 * 4;
    for (int ic = 0, k = 0; ic < Ci; ic++)  /* each tap's offset from its window's first byte */
        for (int kh = 0; kh < K; kh++)
            for (int kw = 0; kw < K; kw++, k++) {
                const int r = k & 3, t = k < K4 ? (k & ~3) + (r & 1) * 2 + (r >> 1) : k;
                off[t] = (ic * H + kh) * W + kw;
            }
    for (int n = 0; n < B; n++) {
        const int8_t *src = x + (size_t)n * Ci * H * W;
        for (int q = 0; q < P; q += 2) {
            const int q1 = q + 1 < P ? q + 1 : q;
            const int ih0 = (q / Wo) * s - p, iw0 = (q % Wo) * s - p;
            const int ih1 = (q1 / Wo) * s - p, iw1 = (q1 % Wo) * s - p;
            if (K == 3) {  /* NOTE [ Mat-mult 3x3 columns ] */
                q_mm_fill(pt, src, zx, H, W, Ci, ih0, iw0);
                q_mm_fill(pt + Kp, src, zx, H, W, Ci, ih1, iw1);
                q_mm_pcols(col, pt, pt + Kp, zx, K4, Kt);
            } else {  /* a 1x1 without padding: every window inside */
                const int8_t *x0 = src + (ih0 * W + iw0), *x1 = src + (ih1 * W + iw1);
                int k = 0;
                for (; k < K4; k += 2) {
                    const int32_t o0 = off[k], o1 = off[k + 1];
                    col[k] = (uint32_t)__ssub16((int16x2_t)q_pack2(x0[o0], x0[o1]), zz);
                    col[k + 1] = (uint32_t)__ssub16((int16x2_t)q_pack2(x1[o0], x1[o1]), zz);
                }
                for (; k < Kt; k++)
                    col[k] = (uint32_t)__ssub16((int16x2_t)q_pack2(x0[off[k]], x1[off[k]]), zz);
            }
            if (rk && wp && q1 != q) {
                q_mm_ocs(wp, w, Kt, rk, Co, col, lo, hi, y, mask, (size_t)n * Co * P + q, P);
                continue;
            }
            for (int oc = 0; oc < Co; oc += 2) {
                const int oc1 = oc + 1 < Co ? oc + 1 : oc;
                int32_t a[4] = {b[oc], b[oc], b[oc1], b[oc1]};
                if (wp)
                    q_mm2x2p(wp + (size_t)(oc / 2) * (Kt / 4 * 4), w + (size_t)oc * Kt,
                             w + (size_t)oc1 * Kt, col, Kt, a);
                else
                    q_mm2x2(w + (size_t)oc * Kt, w + (size_t)oc1 * Kt, col, Kt, a);
                const size_t y0 = ((size_t)n * Co + oc) * P + q;
                const size_t y1 = ((size_t)n * Co + oc1) * P + q;
                if (rk && q1 != q) {  /* NOTE [ Hoisted requantisation ] */
                    const q_rqk k0 = rk[oc], k1 = rk[oc1];  /* loaded before the stores */
                    q_out_k(a[0], k0, lo, hi, y, mask, y0);
                    q_out_k(a[1], k0, lo, hi, y, mask, y0 + 1);
                    if (oc1 != oc) {
                        q_out_k(a[2], k1, lo, hi, y, mask, y1);
                        q_out_k(a[3], k1, lo, hi, y, mask, y1 + 1);
                    }
                    continue;
                }
                q_out(a[0], m0[oc], sh[oc], zy, lo, hi, y, mask, y0);
                if (q1 != q) q_out(a[1], m0[oc], sh[oc], zy, lo, hi, y, mask, y0 + 1);
                if (oc1 != oc) {
                    q_out(a[2], m0[oc1], sh[oc1], zy, lo, hi, y, mask, y1);
                    if (q1 != q) q_out(a[3], m0[oc1], sh[oc1], zy, lo, hi, y, mask, y1 + 1);
                }
            }
        }
    }
}
#endif
static void qconv_mm_fwd(const int8_t *x, int zx, const int8_t *w, const int32_t *b,
                         const int32_t *m0, const int32_t *sh, int zy, int lo, int hi,
                         int8_t *y, uint8_t *mask, int8_t *scratch, int B, int Ci, int H, int W,
                         int Co, int Ho, int Wo, int K, int s, int p, int G) {
#if ET_DSP
    if (G == 1 && Ci >= 2 && ((K == 3 && (s == 1 || s == 2)) || (K == 1 && s == 1 && p == 0))) {
        q_mm_fwd(x, zx, w, b, m0, sh, zy, lo, hi, y, mask, scratch, B, Ci, H, W, Co, Ho, Wo, K,
                 s, p);
        return;
    }
#endif
    (void)scratch;
    qconv_fwd(x, zx, w, b, m0, sh, zy, lo, hi, y, mask, B, Ci, H, W, Co, Ho, Wo, K, s, p, G);
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

/* sum of n int8 values */
Q_AI int32_t q_sum(const int8_t *a, int n) {
    int32_t acc = 0;
    int i = 0;
#if ET_DSP  /* 4 at a time: USADA8 of the bytes + 128 (XOR 0x80), less 128 each */
    uint32_t u = 0;
    for (; i + 4 <= n; i += 4) u = __usada8(q_ld4(a + i) ^ 0x80808080u, 0, u);
    acc = (int32_t)u - 128 * i;
#endif
    for (; i < n; i++) acc += a[i];
    return acc;
}
static void qgap_fwd(const int8_t *x, int8_t *y, int BC, int P) {
    for (int i = 0; i < BC; i++) {
        const int32_t s = q_sum(x + (size_t)i * P, P);
        const int32_t avg = s >= 0 ? (s + P / 2) / P : (s - P / 2) / P;
        y[i] = clamp8(avg, -128, 127);
    }
}

/* ---- backward: NOTE [ int8 integer backward ] (edgetrain/quant/_train.py) ----
   Per conv/linear on the backward path: qacc_quant turns the surrogate's dacc = dy x mask x M
   into the int8 dq (written over the op's mask, which nothing reads after it) and returns s_g;
   the input gradient is s_g x (exact int32 sums of W_q x dq), the weight gradient s_g x (exact
   int32 sums of dq x (x - zx)), applied per weight by the QAS-scaled SGD re-rounding. */

/* where a global average pool is the only reader of a conv's output, the conv's dy is the
   pool's dy / P, never stored (NOTE [ int8 SRAM of the C trainer ]) */
typedef struct { const ET_REAL *gp; int P; } qgap_dacc;

static inline ET_REAL et_abs(ET_REAL v) { return v < 0 ? -v : v; }

/* s_g = max|dacc| / 127 and dq = clamp(round_half_away(dacc / s_g), -127, 127) over the whole
   B x C x P output, dq written over `mask` (each byte read before its dq is written); returns
   s_g, or 0 when every dacc is 0 (then nothing is written: the op's gradients are all 0) */
/* Cortex-M (float; the simulation's float64 results are not reproduced bit for bit there in
   any case): per channel, the largest |dy| where not clamped (positive floats order as their
   bit patterns) times M, which rounds to the largest |dy * M|; dq by one multiply by
   127 / max and a rounding by the adder (+ 1.5 * 2^23: to nearest, ties to even, where the
   simulation rounds ties away from zero); the pool's dy is one value per channel */
static inline uint32_t q_mk4(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
/* out of line: inlined into the step, its loops spilled (measured: 1.9 k more per step) */
static __attribute__((noinline)) float qacc_quant_f(const float *dy, const qgap_dacc *gd,
                                                    uint8_t *mask, const float *M, int B,
                                                    int C, int P) {
    /* 4 mask / dq bytes per word where the bytes lie in a word's order (little-endian) */
    const int P4 = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? P / 4 * 4 : 0;
    float mx = 0;
    for (int n = 0; n < B; n++)
    for (int c = 0; c < C; c++) {
        const size_t o = ((size_t)n * C + c) * P;
        float m = 0;
        if (gd) {
            uint32_t any = 0;
            int p = 0;
            for (; p < P4; p += 4) any |= q_mk4(mask + o + p);
            for (; p < P; p++) any |= mask[o + p];
            const float d = (float)gd->gp[(size_t)n * C + c] / (float)gd->P;
            m = any ? (d < 0 ? -d : d) : 0.0f;
        } else {
            uint32_t mb = 0;  /* the largest |dy| bits shifted left by 1 (no sign bit) */
            int p = 0;
            for (; p < P4; p += 4) {
                const uint32_t m4 = q_mk4(mask + o + p);
                for (int j = 0; j < 4; j++) {
                    uint32_t u;
                    memcpy(&u, dy + o + p + j, 4);
                    u = (u << 1) & (uint32_t)((int32_t)(m4 << (31 - 8 * j)) >> 31);
                    mb = u > mb ? u : mb;
                }
            }
            for (; p < P; p++) {
                uint32_t u;
                memcpy(&u, dy + o + p, 4);
                u = (u << 1) & -(uint32_t)mask[o + p];
                mb = u > mb ? u : mb;
            }
            mb >>= 1;
            memcpy(&m, &mb, 4);
        }
        const float a = m * (float)M[c];
        if (a > mx) mx = a;
    }
    if (!(mx > 0)) return 0;
    const float r = 127.0f / mx;
    int8_t *dq = (int8_t *)mask;
    for (int n = 0; n < B; n++)
    for (int c = 0; c < C; c++) {
        const size_t o = ((size_t)n * C + c) * P;
        const float Mr = (float)M[c] * r;
        int p = 0;
        if (gd) {
            const float v = (float)gd->gp[(size_t)n * C + c] / (float)gd->P * Mr + 12582912.0f;
            uint32_t u;
            memcpy(&u, &v, 4);
            const int32_t q = (int32_t)(u - 0x4B400000u);
            const uint32_t q4 = (uint32_t)(q & 0xFF) * 0x01010101u;
            for (; p < P4; p += 4) {  /* 4 mask bytes of 0 / 1 -> 4 byte masks */
                uint32_t m4 = q_mk4(mask + o + p);
                m4 = q4 & (m4 * 0xFFu);
                memcpy(dq + o + p, &m4, 4);
            }
            for (; p < P; p++) dq[o + p] = (int8_t)(q & -(int32_t)mask[o + p]);
        } else {
            /* the low byte of u is dq's (0x4B400000 has a zero low byte): 4 packed at a time */
            for (; p < P4; p += 4) {
                uint32_t u[4], m4 = q_mk4(mask + o + p);
                for (int j = 0; j < 4; j++) {
                    const float v = dy[o + p + j] * Mr + 12582912.0f;
                    memcpy(&u[j], &v, 4);
                }
#if ET_DSP
                uint32_t pk = u[0];  /* bytes 1..3 inserted by BFI */
                __asm__("bfi %0, %1, #8, #8\n\tbfi %0, %2, #16, #8\n\tbfi %0, %3, #24, #8"
                        : "+r"(pk) : "r"(u[1]), "r"(u[2]), "r"(u[3]));
                m4 = pk & (m4 * 0xFFu);
#else
                m4 = ((u[0] & 0xFFu) | (u[1] & 0xFFu) << 8 | (u[2] & 0xFFu) << 16 | u[3] << 24)
                     & (m4 * 0xFFu);
#endif
                memcpy(dq + o + p, &m4, 4);
            }
            for (; p < P; p++) {
                const float v = dy[o + p] * Mr + 12582912.0f;
                uint32_t u;
                memcpy(&u, &v, 4);
                dq[o + p] = (int8_t)((int32_t)(u - 0x4B400000u) & -(int32_t)mask[o + p]);
            }
        }
    }
    return mx / 127.0f;
}
/* NOTE [ Integer dx ]
   Where a conv / linear's input gradient is read only by the quantisation of the op before it
   (`qacc_quant` on dy, no pool, nothing added to it), the input gradient kernel stores the
   exact int32 sum dx_int (acc Q_DX_INT: in the first 4 bytes of each ET_REAL slot, so the
   buffer and the arena are unchanged) and `qacc_quant` gets its scale ds = s_g of that kernel.
   Host: dy = ds * dx_int, the very double `q_put` would have stored, so the program stays bit
   for bit with the simulation. Cortex-M (float): no float dx is written; the largest masked
   |dx_int| per channel is an integer (ds * it is the largest |dy| float, as before), and dq =
   round(dx_int * k) with k = ds * M * 127 / max in fixed point (SMMLA, NOTE [ SMMLA rounding ]:
   rounds half up where the float path rounds ties to even), the float path where k >= 1/4. */
Q_AI int32_t q_dxi(const ET_REAL *p) { int32_t v; memcpy(&v, p, 4); return v; }
#if ET_DSP
/* NOTE [ Masked largest |dx_int| in 16-bit lanes ]
   The largest |a| over the unclamped elements of a channel: each a saturated to int16 (SSAT),
   two such packed per word by PKHBT (elements 0, 2 and 1, 3 of a group of 4, the lanes the
   mask bytes' SXTB16 / SXTB16 ROR 8 give), the clamped elements' lanes zeroed by AND, and the
   lanes' largest and smallest kept by SSUB16 + SEL (2 instructions per 2 elements each).
   Exact: a saturated lane holds 32767 or -32768, so where neither extreme is reached no
   unclamped element was saturated and the answer is max(largest, -smallest); otherwise the
   channel is redone on the int32s by the key 2|a| - (a < 0) = (a << 1) ^ (a >> 31) (two
   instructions, exact for any int32 a: the largest key gives the largest |a| = (key >> 1) +
   (key & 1)). Zeroed lanes add 0, which never exceeds the answer. */
/* the next two int32 at *p by one LDRD, *p advanced by 2 (GCC splits a 64-bit load whose halves
   are used apart into two LDRs, or adds the offset first) */
Q_AI void q_ldrd2(const int32_t **p, int32_t *a, int32_t *b) {
    __asm__("ldrd %0, %1, [%2], #8"
            : "=r"(*a), "=r"(*b), "+r"(*p)
            : "m"(*(const int32_t(*)[2]) * p));
}
static uint32_t q_amax_i(const int32_t *v, const uint8_t *m, int P) {
    const int P4 = P / 4 * 4;
    uint32_t hi = 0, lo = 0;  /* the lanes' largest and smallest (int16 pairs) */
    int p = 0;
    const int32_t *q = v;
#pragma GCC unroll 2
    for (; p < P4; p += 4) {
        const uint32_t mb = q_mk4(m + p) * 0xFFu;  /* 0 / 1 bytes -> 0x00 / 0xFF */
        int32_t a0, a1, a2, a3;
        q_ldrd2(&q, &a0, &a1);
        q_ldrd2(&q, &a2, &a3);
        const uint32_t e = (uint32_t)q_pkhbt(__ssat(a0, 16), __ssat(a2, 16))
                           & (uint32_t)__sxtb16(mb);
        const uint32_t o = (uint32_t)q_pkhbt(__ssat(a1, 16), __ssat(a3, 16))
                           & (uint32_t)q_sxtb16r8(mb);
        __ssub16((int16x2_t)e, (int16x2_t)hi); hi = __sel(e, hi);
        __ssub16((int16x2_t)lo, (int16x2_t)e); lo = __sel(e, lo);
        __ssub16((int16x2_t)o, (int16x2_t)hi); hi = __sel(o, hi);
        __ssub16((int16x2_t)lo, (int16x2_t)o); lo = __sel(o, lo);
    }
    const int32_t h0 = (int16_t)hi, h1 = (int32_t)hi >> 16;
    const int32_t l0 = (int16_t)lo, l1 = (int32_t)lo >> 16;
    int32_t h = h0 > h1 ? h0 : h1, l = l0 < l1 ? l0 : l1;
    uint32_t mb = (uint32_t)(h > -l ? h : -l) << 1;  /* as a key */
    if (h == 32767 || l == -32768) { mb = 0; p = 0; }  /* maybe saturated: all on the int32s */
    for (; p < P; p++) {
        const int32_t a = v[p];
        const uint32_t u = (((uint32_t)a << 1) ^ (uint32_t)(a >> 31)) & -(uint32_t)m[p];
        mb = u > mb ? u : mb;
    }
    return (mb >> 1) + (mb & 1);
}
/* NOTE [ Rounded dq by SMMULR ]
   dq = round_half_up(a k) with k = m0 2^-nn (m0: k's 24 significant bits shifted left by 7, nn
   in 33..62) is (a m0 + 2^(nn - 1)) >> nn = SMMLA(a, m0, 2^(nn - 33)) >> (nn - 32) (NOTE [ SMMLA
   rounding ]). Where m0's low nn - 32 bits are 0 (always for nn <= 39), m0' = m0 >> (nn - 32)
   gives (a m0' + 2^31) >> 32, the same integer (a m0 = a m0' 2^(nn - 32) exactly), which
   SMMULR computes in one instruction (no shift). */
Q_AI int32_t q_smmulr(int32_t a, int32_t b) {
    int32_t t;
    __asm__("smmulr %0, %1, %2" : "=r"(t) : "r"(a), "r"(b));
    return t;
}
/* one channel's dq by SMMULR (NOTE [ Rounded dq by SMMULR ]), 4 at a time packed by BFI */
static void q_dq_mulr(const int32_t *v, uint8_t *mask, int32_t m, int P) {
    const int P4 = P / 4 * 4;
    int p = 0;
    const int32_t *q = v;
    for (; p < P4; p += 4) {
        uint32_t m4 = q_mk4(mask + p);
        int32_t a0, a1, a2, a3;
        q_ldrd2(&q, &a0, &a1);
        q_ldrd2(&q, &a2, &a3);
        uint32_t pk = (uint32_t)q_smmulr(a0, m);
        __asm__("bfi %0, %1, #8, #8\n\tbfi %0, %2, #16, #8\n\tbfi %0, %3, #24, #8"
                : "+r"(pk)
                : "r"(q_smmulr(a1, m)), "r"(q_smmulr(a2, m)), "r"(q_smmulr(a3, m)));
        m4 = pk & (m4 * 0xFFu);
        memcpy(mask + p, &m4, 4);
    }
    for (; p < P; p++) mask[p] = (uint8_t)(q_smmulr(v[p], m) & -(int32_t)mask[p]);
}
static __attribute__((noinline)) float qacc_quant_i(const float *dy, float ds, uint8_t *mask,
                                                    const float *M, int B, int C, int P) {
    const int P4 = P / 4 * 4;
    float mx = 0;
    for (int n = 0; n < B; n++)
    for (int c = 0; c < C; c++) {
        const size_t o = ((size_t)n * C + c) * P;
        const uint32_t mb = q_amax_i((const int32_t *)(const void *)(dy + o), mask + o, P);
        const float a = (float)mb * ds * (float)M[c];
        if (a > mx) mx = a;
    }
    if (!(mx > 0)) return 0;
    const float r = 127.0f / mx;
    int8_t *dq = (int8_t *)mask;
    for (int n = 0; n < B; n++)
    for (int c = 0; c < C; c++) {
        const size_t o = ((size_t)n * C + c) * P;
        const int32_t *v = (const int32_t *)(const void *)(dy + o);
        const float k = ds * ((float)M[c] * r);
        uint32_t u;
        memcpy(&u, &k, 4);
        const int E = (int)((u >> 23) & 0xFFu), nn = 157 - E;  /* k = m0 2^-nn */
        const int32_t m0 = (int32_t)(((u & 0x7FFFFFu) | 0x800000u) << 7);
        int p = 0;
        if (E != 0 && nn >= 33 && nn <= 62) {
            const int32_t rr = (int32_t)1 << (nn - 33), sh = nn - 32;
            if ((m0 & (((int32_t)1 << sh) - 1)) == 0) {
                q_dq_mulr(v, mask + o, m0 >> sh, P);
                continue;
            }
            for (; p < P4; p += 4) {
                uint32_t m4 = q_mk4(mask + o + p);
                uint32_t pk = (uint32_t)(q_smmla(v[p], m0, rr) >> sh);
                __asm__("bfi %0, %1, #8, #8\n\tbfi %0, %2, #16, #8\n\tbfi %0, %3, #24, #8"
                        : "+r"(pk)
                        : "r"(q_smmla(v[p + 1], m0, rr) >> sh),
                          "r"(q_smmla(v[p + 2], m0, rr) >> sh),
                          "r"(q_smmla(v[p + 3], m0, rr) >> sh));
                m4 = pk & (m4 * 0xFFu);
                memcpy(dq + o + p, &m4, 4);
            }
            for (; p < P; p++)
                dq[o + p] = (int8_t)((q_smmla(v[p], m0, rr) >> sh) & -(int32_t)mask[o + p]);
            continue;
        }
        for (; p < P; p++) {  /* k >= 1/4 or tiny: the float rounding (ties to even) */
            const float f = (float)v[p] * k + 12582912.0f;
            memcpy(&u, &f, 4);
            dq[o + p] = (int8_t)((int32_t)(u - 0x4B400000u) & -(int32_t)mask[o + p]);
        }
    }
    return mx / 127.0f;
}
#endif
static ET_REAL qacc_quant(const ET_REAL *dy, ET_REAL ds, const qgap_dacc *gd, uint8_t *mask,
                          const ET_REAL *M, int B, int C, int P) {
#if ET_DSP
    if (sizeof(ET_REAL) == sizeof(float) && ds != 0)
        return (ET_REAL)qacc_quant_i((const float *)(const void *)dy, (float)ds, mask,
                                     (const float *)(const void *)M, B, C, P);
#endif
    if (sizeof(ET_REAL) == sizeof(float) && ds == 0)
        return (ET_REAL)qacc_quant_f((const float *)(const void *)dy, gd, mask,
                                     (const float *)(const void *)M, B, C, P);
    ET_REAL mx = 0;
    for (int n = 0; n < B; n++)
    for (int c = 0; c < C; c++) {
        const size_t o = ((size_t)n * C + c) * P;
        const ET_REAL d = gd ? gd->gp[(size_t)n * C + c] / (ET_REAL)gd->P : 0;
        for (int p = 0; p < P; p++) {
            const ET_REAL y = gd ? d : (ds != 0 ? ds * (ET_REAL)q_dxi(dy + o + p) : dy[o + p]);
            const ET_REAL v = y * (mask[o + p] ? M[c] : (ET_REAL)0);
            const ET_REAL a = et_abs(v);
            if (a > mx) mx = a;
        }
    }
    if (!(mx > 0)) return 0;
    const ET_REAL s = mx / (ET_REAL)127;
    int8_t *dq = (int8_t *)mask;
    for (int n = 0; n < B; n++)
    for (int c = 0; c < C; c++) {
        const size_t o = ((size_t)n * C + c) * P;
        const ET_REAL d = gd ? gd->gp[(size_t)n * C + c] / (ET_REAL)gd->P : 0;
        for (int p = 0; p < P; p++) {
            const ET_REAL y = gd ? d : (ds != 0 ? ds * (ET_REAL)q_dxi(dy + o + p) : dy[o + p]);
            const ET_REAL v = y * (mask[o + p] ? M[c] : (ET_REAL)0);
            const ET_REAL r = round_half_away(v / s);
            dq[o + p] = (int8_t)(r < -127 ? -127 : (r > 127 ? 127 : r));
        }
    }
    return s;
}

/* the QAS-scaled SGD step of one int8 weight / int32 bias from its integer gradient sum g:
   round_half_away(w - lr * (s_g * g) * inv), saturated */
/* ET_GRAD_PROBE(address, g): a hook a kernel test defines to read each integer sum */
#ifndef ET_GRAD_PROBE
#define ET_GRAD_PROBE(p, g) ((void)0)
#define Q_NO_PROBE 1  /* nothing reads the sums: NOTE [ Steps beside the sums ] may run */
#endif
/* one channel's step factor: s_g, inv and lr, and on Cortex-M the factor k = -lr * s_g * inv
   as kq * 2^-sh (kq: 24 significant bits in 30; sh in 32..62, else 0: the float path) */
typedef struct { ET_REAL s, inv, lr; int32_t kq; int sh; } q_step;
static inline q_step q_stepper(ET_REAL s, ET_REAL inv, ET_REAL lr) {
    q_step st = {s, inv, lr, 0, 0};
    if (sizeof(ET_REAL) == sizeof(float)) {
        const float k = (-(float)lr) * ((float)s * (float)inv);
        uint32_t u;
        memcpy(&u, &k, 4);
        const int E = (int)((u >> 23) & 0xFFu);
        if (E != 0 && E != 255) {  /* a normal k: frexpf's m * 2^30 and e from its bits */
            const int32_t mag = (int32_t)(((u & 0x7FFFFFu) | 0x800000u) << 6);
            const int e = E - 126;
            if (30 - e >= 32 && 30 - e <= 62) {
                st.kq = u >> 31 ? -mag : mag;
                st.sh = 30 - e;
            }
            return st;
        }
        int e;
        const float m = frexpf(k, &e);
        if (m != 0 && 30 - e >= 32 && 30 - e <= 62) {
            st.kq = (int32_t)(m * 1073741824.0f);
            st.sh = 30 - e;
        }
    }
    return st;
}
#if ET_DSP
/* v saturated to [-127, 127]: SSAT to [-128, 127], then SSUB16's low-lane GE flags (v >= -127)
   pick v or -127 (0xFF81FF81) by SEL; written out, as GCC does not tie the GE flags of its
   __ssub16 to __sel */
Q_AI int32_t q_sat127(int32_t v) {
    int32_t r, t;
    __asm__("ssat %0, #8, %2\n\tssub16 %1, %0, %3\n\tsel %0, %0, %3"
            : "=&r"(r), "=&r"(t) : "r"(v), "r"(0xFF81FF81u) : "cc");
    return r;
}
#endif
Q_AI void q_wstep(int8_t *w, int32_t g, q_step st) {
    ET_GRAD_PROBE(w, g);
    if (sizeof(ET_REAL) == sizeof(float)) {
        /* Cortex-M (float: not bit for bit with the float64 simulation in any case): w plus
           g * k rounded half up, in fixed point (SMLAL, ASR), saturated; the float path
           (round half away) where k does not fit */
#if ET_DSP
        if (st.sh > 32) {  /* the same value by SMMLA (NOTE [ SMMLA rounding ]) */
            const int32_t t = q_smmla(g, st.kq, (int32_t)1 << (st.sh - 33)) >> (st.sh - 32);
            *w = (int8_t)q_sat127(*w + t);
            return;
        }
#endif
        if (st.sh) {
            const int64_t t = (int64_t)g * st.kq + ((int64_t)1 << (st.sh - 1));
            const int32_t v = *w + ((int32_t)(t >> 32) >> (st.sh - 32));
            *w = (int8_t)(v < -127 ? -127 : (v > 127 ? 127 : v));
            return;
        }
        float v = (float)*w + (float)g * ((-(float)st.lr) * ((float)st.s * (float)st.inv));
        v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
        *w = (int8_t)(int32_t)(v + (v >= 0 ? 0.5f : -0.5f));
        return;
    }
    const ET_REAL v = round_half_away((ET_REAL)*w + (-st.lr) * ((st.s * (ET_REAL)g) * st.inv));
    *w = (int8_t)(v < -127 ? -127 : (v > 127 ? 127 : v));
}
static inline void q_bstep(int32_t *b, int32_t g, ET_REAL s, ET_REAL inv, ET_REAL lr) {
    ET_GRAD_PROBE(b, g);
    *b = clamp_i32(round_half_away((ET_REAL)*b + (-lr) * ((s * (ET_REAL)g) * inv)));
}
/* dx = s_g * dx_int (acc 0), dx += it (acc 1), or dx_int itself as an int32 in the first 4
   bytes of dx's slot (acc Q_DX_INT, NOTE [ Integer dx ]) */
#define Q_DX_INT 2
Q_AI void q_put(ET_REAL *dx, int32_t v, ET_REAL s, int acc) {
    if (acc == Q_DX_INT) { memcpy(dx, &v, 4); return; }
    const ET_REAL r = s * (ET_REAL)v;
    if (acc) *dx += r; else *dx = r;
}
/* all-zero bits: 0 as an ET_REAL and as an integer dx */
static void q_zero(ET_REAL *dx, int acc, size_t n) {
    if (acc != 1) for (size_t i = 0; i < n; i++) dx[i] = 0;
}

/* q_pad by words: the same bytes (zx borders, the rows, zx bottom rows and Q_PAD_SLACK), the
   rows copied 4 bytes at a time and each row's right border with the next row's left one
   filled together (4-byte stores may be unaligned on Cortex-M, as q_ld4's loads); q_pad
   copies and fills by library calls, tens of instructions a row */
static void q_padw(int8_t *pad, const int8_t *xc, int zx, int H, int W, int p) {
    const int Wp = W + 2 * p;
    const uint32_t z4 = (uint32_t)(uint8_t)zx * 0x01010101u;
    int8_t *o = pad;
    int n = p * Wp + p;  /* the top rows and the first row's left border */
    for (; n >= 4; n -= 4, o += 4) memcpy(o, &z4, 4);
    for (; n > 0; n--) *o++ = (int8_t)zx;
    for (int r = 0; r < H; r++, xc += W) {
        int j = 0;
        for (; j + 4 <= W; j += 4, o += 4) { uint32_t v; memcpy(&v, xc + j, 4); memcpy(o, &v, 4); }
        for (; j < W; j++) *o++ = xc[j];
        if (p == 1) { memcpy(o, &z4, 2); o += 2; continue; }
        for (int t = 0; t < 2 * p; t++) *o++ = (int8_t)zx;
    }
    n = (H + 2 * p) * Wp + Q_PAD_SLACK - (int)(o - pad);  /* the bottom rows and the slack */
    for (; n >= 4; n -= 4, o += 4) memcpy(o, &z4, 4);
    for (; n > 0; n--) *o++ = (int8_t)zx;
}

/* NOTE [ Register-blocked int8 backward ]
   The integer sums are exact, so any order gives the same result: the kernels pick the order
   the Cortex-M4 runs fastest. With the DSP extension (ET_DSP, NOTE [ DSP dual
   multiply-accumulate ]) dq and x are loaded 4 bytes at a time, unpacked by SXTB16 into 16-bit
   pairs and summed by SMLAD (two MACs per instruction); x's zero point is taken out once per
   sum (sum dq (x - zx) = sum dq x - zx sum dq, exact in int32 by the bounds of NOTE [ int8
   integer backward ]). Without it the same sums are plain int32 multiply-adds. */

#if ET_DSP
/* one kernel row (kh) of a 3x3, stride-1 weight gradient over a whole zx-padded input plane:
   the 3 taps' sums in registers across the output rows; 4 outputs at a time, dq (e0..e3) as
   16-bit pairs (e0, e2), (e1, e3) against x pairs in the same lanes (the words at the
   window's column 0 and 2), the row's last outputs one by one. With `se`, also returns the
   plane's sum of dq. */
Q_AI int32_t q3_wg_k_s1(int32_t *A, const int8_t *d, const int8_t *x0, int Wp, int Ho, int Wo,
                        int se_on) {
    int32_t a0 = A[0], a1 = A[1], a2 = A[2], se = 0;
    for (int oh = 0; oh < Ho; oh++, d += Wo, x0 += Wp) {
        int i = 0;
        for (; i + 4 <= Wo; i += 4) {
            const uint32_t dv = q_ld4(d + i);
            const int16x2_t E = __sxtb16(dv), O = q_sxtb16r8(dv);
            if (se_on) { se = __smlad(E, 0x00010001, se); se = __smlad(O, 0x00010001, se); }
            const uint32_t u = q_ld4(x0 + i), v = q_ld4(x0 + i + 2);
            const int16x2_t uo = q_sxtb16r8(u), ve = __sxtb16(v);
            a0 = __smlad(E, __sxtb16(u), a0); a0 = __smlad(O, uo, a0);
            a1 = __smlad(E, uo, a1); a1 = __smlad(O, ve, a1);
            a2 = __smlad(E, ve, a2); a2 = __smlad(O, q_sxtb16r8(v), a2);
        }
        for (; i < Wo; i++) {  /* the row's last outputs one by one */
            const int32_t e = d[i];
            const int8_t *x = x0 + i;
            se += e;
            a0 += e * x[0]; a1 += e * x[1]; a2 += e * x[2];
        }
    }
    A[0] = a0; A[1] = a1; A[2] = a2;
    return se;
}
/* the same for stride 2: outputs (ow, ow+1) read x columns (2ow + c, 2ow + 2 + c), the even
   lanes of the word at 2ow (c = 0), its odd lanes (c = 1) and the even lanes of the word at
   2ow + 2 (c = 2), against dq as the pair (e_ow, e_ow+1) */
Q_AI int32_t q3_wg_k_s2(int32_t *A, const int8_t *d, const int8_t *x0, int Wp, int Ho, int Wo,
                        int se_on) {
    int32_t a0 = A[0], a1 = A[1], a2 = A[2], se = 0;
    for (int oh = 0; oh < Ho; oh++, d += Wo, x0 += 2 * Wp) {
        int i = 0;
        for (; i + 4 <= Wo; i += 4) {
            const uint32_t dv = q_ld4(d + i);
            const int16x2_t E = __sxtb16(dv), O = q_sxtb16r8(dv);
            if (se_on) { se = __smlad(E, 0x00010001, se); se = __smlad(O, 0x00010001, se); }
            const int16x2_t D01 = q_pkhbt(E, O), D23 = q_pkhtb(O, E);
            const int8_t *x = x0 + 2 * i;
            const uint32_t u = q_ld4(x), v = q_ld4(x + 2), u2 = q_ld4(x + 4), v2 = q_ld4(x + 6);
            a0 = __smlad(D01, __sxtb16(u), a0); a1 = __smlad(D01, q_sxtb16r8(u), a1);
            a2 = __smlad(D01, __sxtb16(v), a2);
            a0 = __smlad(D23, __sxtb16(u2), a0); a1 = __smlad(D23, q_sxtb16r8(u2), a1);
            a2 = __smlad(D23, __sxtb16(v2), a2);
        }
        for (; i < Wo; i++) {  /* the row's last outputs one by one */
            const int32_t e = d[i];
            const int8_t *x = x0 + 2 * i;
            se += e;
            a0 += e * x[0]; a1 += e * x[1]; a2 += e * x[2];
        }
    }
    A[0] = a0; A[1] = a1; A[2] = a2;
    return se;
}
#endif
/* one kernel row without DSP */
Q_AI int32_t q3_wg_k(int32_t *A, const int8_t *d, const int8_t *x0, int Wp, int Ho, int Wo,
                     int S, int se_on) {
#if ET_DSP
    return S == 1 ? q3_wg_k_s1(A, d, x0, Wp, Ho, Wo, se_on)
                  : q3_wg_k_s2(A, d, x0, Wp, Ho, Wo, se_on);
#endif
    int32_t a0 = A[0], a1 = A[1], a2 = A[2], se = 0;
    for (int oh = 0; oh < Ho; oh++, d += Wo, x0 += S * Wp)
        for (int i = 0; i < Wo; i++) {
            const int32_t e = d[i];
            const int8_t *x = x0 + S * i;
            se += e;
            a0 += e * x[0]; a1 += e * x[1]; a2 += e * x[2];
        }
    A[0] = a0; A[1] = a1; A[2] = a2;
    return se;
}
/* the 9 sums sum dq * x of one (dq plane, padded x plane) pair, one kernel row at a time;
   returns the plane's sum of dq (the zero point's term is zx times it, for every tap) */
static int32_t q3_wg_plane(int32_t *a, const int8_t *d, const int8_t *xp, int Wp, int Ho,
                           int Wo, int S) {
    const int32_t se = q3_wg_k(a, d, xp, Wp, Ho, Wo, S, 1);
    (void)q3_wg_k(a + 3, d, xp + Wp, Wp, Ho, Wo, S, 0);
    (void)q3_wg_k(a + 6, d, xp + 2 * Wp, Wp, Ho, Wo, S, 0);
    return se;
}
/* the 9 weight sums of a 3x3 conv (stride 1 or 2) from zx-padded input planes in `pad`
   ((H + 2p) x (W + 2p) + Q_PAD_SLACK bytes of scratch), then the QAS-scaled SGD re-rounding.
   Batch 1: each input plane is padded once for every output channel that reads it. */
static void q3_update(const int8_t *dq, ET_REAL s, const int8_t *x, int zx, int8_t *w,
                      const ET_REAL *inv_w, ET_REAL lr, int B, int Ci, int H, int W, int Co,
                      int Ho, int Wo, int st, int p, int G, int8_t *pad) {
    const int cig = Ci / G, cog = Co / G, Wp = W + 2 * p;
    for (int ci = 0; ci < Ci; ci++) {
        const int g = ci / cig, ic = ci % cig;
        if (B == 1) q_padw(pad, x + (size_t)ci * H * W, zx, H, W, p);
        for (int oc = g * cog; oc < (g + 1) * cog; oc++) {
            int32_t a[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0}, se = 0;
            for (int n = 0; n < B; n++) {
                if (B > 1) q_padw(pad, x + ((size_t)n * Ci + ci) * H * W, zx, H, W, p);
                se += q3_wg_plane(a, dq + ((size_t)n * Co + oc) * Ho * Wo, pad, Wp, Ho, Wo, st);
            }
            int8_t *wk = w + ((size_t)oc * cig + ic) * 9;
            const q_step st = q_stepper(s, inv_w[oc], lr);
            for (int t = 0; t < 9; t++) q_wstep(&wk[t], a[t] - zx * se, st);
        }
    }
}

/* NOTE [ int8 mat-mult weight gradient ]
   A one-group 3x3 conv (stride 1 or 2) at batch 1 with the DSP: G_W[oc][k] = sum_q
   dq[oc][q] (x_k[q] - zx) over the P = Ho x Wo outputs q (x_k[q]: tap k of q's window, zx in
   the padding) is a matrix product over q, flattened across output rows (no row tails). The
   Ci x 9 taps k = ic * 9 + kh * 3 + kw run in pairs (k0, k1) (an odd last tap paired with
   itself, stored once); each input plane is padded with zx once, into one of two plane
   buffers (a pair may span two channels). The pair's rows x_k - zx are gathered as 16-bit
   words in dq's SXTB16 lane order: per 4 outputs (k0: q0, q2), (k0: q1, q3), (k1: q0, q2),
   (k1: q1, q3), the last P mod 4 outputs as (k0, k1) words. Every output channel pair reads
   its int8 dq rows 4 at a time against them: two LDRs, 4 SXTB16, two LDRDs and 8 SMLADs per
   16 MACs. That is the path (`q_mm_update_flat`) where the dq rows do not fit as 16-bit
   pairs; where they do, NOTE [ Paired-output weight gradient ] below. Scratch `p:<op>`
   (`weight_grad_scratch_bytes` in _int8_layout.py): the two padded planes ((H + 2p) x (W +
   2p) + Q_PAD_SLACK bytes each, 4-byte aligned; one for one input channel; the first is what
   q3_update pads at other batch sizes), then here P int32 window offsets, 2 x Co int32 (each
   channel's step factor, q_stepper's, computed once) and P words of rows. */
#if ET_DSP
/* sums (oc0, k0), (oc0, k1), (oc1, k0), (oc1, k1) of a tap pair's rows over the P outputs,
   in 14 registers (written out: the compiler's allocation spills inside such loops) */
Q_AI void q_mmg2x2(const int8_t *d0, const int8_t *d1, const uint32_t *xr, int P, int32_t *a) {
    int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0;
    const int P4 = P / 4 * 4;
    uint32_t u, v, uo, vo, x0, x1;
#define Q_MMG2X2_4                                 \
    "ldr %[u], [%[d0]], #4\n\t"                    \
    "ldr %[v], [%[d1]], #4\n\t"                    \
    "sxtb16 %[uo], %[u], ror #8\n\t"               \
    "sxtb16 %[u], %[u]\n\t"                        \
    "sxtb16 %[vo], %[v], ror #8\n\t"               \
    "sxtb16 %[v], %[v]\n\t"                        \
    "ldrd %[x0], %[x1], [%[xr]], #8\n\t"           \
    "smlad %[a00], %[u], %[x0], %[a00]\n\t"        \
    "smlad %[a00], %[uo], %[x1], %[a00]\n\t"       \
    "smlad %[a10], %[v], %[x0], %[a10]\n\t"        \
    "smlad %[a10], %[vo], %[x1], %[a10]\n\t"       \
    "ldrd %[x0], %[x1], [%[xr]], #8\n\t"           \
    "smlad %[a01], %[u], %[x0], %[a01]\n\t"        \
    "smlad %[a01], %[uo], %[x1], %[a01]\n\t"       \
    "smlad %[a11], %[v], %[x0], %[a11]\n\t"        \
    "smlad %[a11], %[vo], %[x1], %[a11]\n\t"
#define Q_MMG2X2_IO                                                                         \
    : [a00] "+&r"(a00), [a01] "+&r"(a01), [a10] "+&r"(a10), [a11] "+&r"(a11),                \
      [d0] "+&r"(d0), [d1] "+&r"(d1), [xr] "+&r"(xr), [u] "=&r"(u), [v] "=&r"(v),           \
      [uo] "=&r"(uo), [vo] "=&r"(vo), [x0] "=&r"(x0), [x1] "=&r"(x1)
    if (P4 & 4) __asm__ volatile(Q_MMG2X2_4 Q_MMG2X2_IO : : "memory");
    if (P4 & ~7) {  /* 8 outputs per iteration */
        const int8_t *end = d0 + (P4 & ~7);
        __asm__ volatile("1:\n\t" Q_MMG2X2_4 Q_MMG2X2_4 "cmp %[d0], %[end]\n\tbne 1b\n\t"
                         Q_MMG2X2_IO : [end] "r"(end) : "cc", "memory");
    }
#undef Q_MMG2X2_4
#undef Q_MMG2X2_IO
    for (int q = P4; q < P; q++, xr++) {
        const int32_t e0 = *d0++, e1 = *d1++, x0 = (int16_t)xr[0], x1 = (int32_t)xr[0] >> 16;
        a00 += e0 * x0; a01 += e0 * x1; a10 += e1 * x0; a11 += e1 * x1;
    }
    a[0] = a00; a[1] = a01; a[2] = a10; a[3] = a11;
}
/* rows x_k - zx of taps k0, k1 (from their padded planes, at the window offsets `base`) in
   q_mmg2x2's order */
static void q_mmg_rows(uint32_t *xr, const int8_t *s0, const int8_t *s1, const int32_t *base,
                       int P, int zx) {
    const int16x2_t zz = (int16x2_t)(((uint32_t)(uint16_t)zx << 16) | (uint16_t)zx);
    const int P4 = P / 4 * 4;
    for (int q = 0; q < P4; q += 4, xr += 4) {
        const int32_t b0 = base[q], b1 = base[q + 1], b2 = base[q + 2], b3 = base[q + 3];
        xr[0] = (uint32_t)__ssub16((int16x2_t)q_pack2(s0[b0], s0[b2]), zz);
        xr[1] = (uint32_t)__ssub16((int16x2_t)q_pack2(s0[b1], s0[b3]), zz);
        xr[2] = (uint32_t)__ssub16((int16x2_t)q_pack2(s1[b0], s1[b2]), zz);
        xr[3] = (uint32_t)__ssub16((int16x2_t)q_pack2(s1[b1], s1[b3]), zz);
    }
    for (int q = P4; q < P; q++, xr++)
        xr[0] = (uint32_t)__ssub16((int16x2_t)q_pack2(s0[base[q]], s1[base[q]]), zz);
}
/* NOTE [ Paired-output weight gradient ]
   The batch-1 mat-mult weight gradients (NOTE [ int8 mat-mult weight gradient ]) where the dq
   rows fit as 16-bit pairs, 8 Co ceil(P / 4) bytes <= Q_DQ16_MAX (`q_mmg_fits`): the sum over
   the outputs q is order-free, so q runs in an order in which each word of x comes from one
   4-byte load of the padded plane. Per output row, at stride 2 the outputs (ow, ow + 1) are
   the SXTB16 lanes (x[c], x[c + 2]) of the 4 bytes at the first one's tap c; at stride 1 (and
   for a 1x1, its P outputs as one row) (ow, ow + 2) and (ow + 1, ow + 3) are SXTB16 and SXTB16
   ROR 8 of the bytes at c. A row's last Wo mod 2 (stride 1: mod 4) outputs are paired across
   rows by two byte loads, an odd last one with a dq of 0, and the words are padded with 0 to
   whole quads (two words). The offsets are per word or word pair, a table made once per call
   (not one per output), and x is not shifted by zx: every channel's sums start at -zx sum dq
   (sum dq (x - zx) = sum dq x - zx sum dq, exact in int32 as in NOTE [ Register-blocked int8
   backward ]; the padding holds zx), so a word of x is an LDR, an SXTB16 and a store. dq is
   unpacked once per call in the same order (`q_mmg_dq`, which also steps the biases with
   the sums it makes) and the kernel (`q_mmg2x2q`) has no remainder loop. Each weight's step
   is q_wstep's SMMLA path with its channel's kq, 2^(sh - 33) and sh - 32 from a table made
   once per call (`q_wstepf`), the others q_wstep itself. Same sums, same steps. Scratch
   `p:<op>` after the 3x3's planes (`weight_grad_scratch_bytes` in _int8_layout.py): 4
   ceil(P / 4) words of a tap (or channel) pair's rows, 4 int32 per output channel, one int32
   offset per stride-2 word or stride-1 word pair, 2 int32 per row-end output (its x offset
   and its dq index) and 2 Co ceil(P / 4) words of dq. */
Q_AI int q_mmg_fits(int Co, int P) { return (size_t)8 * Co * ((P + 3) / 4) <= Q_DQ16_MAX; }
/* q_wstep's SMMLA path with the channel's constants f = {kq, 2^(sh - 33), sh - 32} */
Q_AI void q_wstepf(int8_t *w, int32_t g, const int32_t *f) {
    ET_GRAD_PROBE(w, g);
    *w = (int8_t)q_sat127(*w + (q_smmla(g, f[0], f[1]) >> f[2]));
}
/* per output channel {kq, 2^(sh - 33), sh - 32 (-1: q_wstep's other paths), start}; returns
   whether every channel is on the SMMLA path */
static int q_mmg_consts(int32_t *kc, ET_REAL s, const ET_REAL *inv_w, ET_REAL lr, int Co) {
    int fast = 1;
    for (int oc = 0; oc < Co; oc++, kc += 4) {
        const q_step t = q_stepper(s, inv_w[oc], lr);
        kc[0] = t.kq;
        kc[1] = t.sh > 32 ? (int32_t)1 << (t.sh - 33) : 0;
        kc[2] = t.sh > 32 ? t.sh - 32 : -1;
        fast &= t.sh > 32;
    }
    return fast;
}
/* the output order's tables: one x offset per stride-2 word or stride-1 word pair (moff),
   and each row-end output's x offset (loff) and dq index (lq) */
static void q_mmg_plan(int32_t *moff, int32_t *loff, int32_t *lq, int Ho, int Wo, int st,
                       int Wp) {
    const int g = st == 1 ? 4 : 2, full = Wo / g * g;
    for (int oh = 0; oh < Ho; oh++) {
        const int32_t r = (int32_t)oh * st * Wp;
        for (int ow = 0; ow < full; ow += g) *moff++ = r + ow * st;
        for (int ow = full; ow < Wo; ow++) { *loff++ = r + ow * st; *lq++ = oh * Wo + ow; }
    }
}
/* the dq rows in that order, 2 nq words each (one row of P where no output is a row-end one),
   every channel's start -zx sum dq (kc[3]) and its bias step (sum dq is the bias sum) */
static void q_mmg_dq(uint32_t *h, int32_t *kc, const int8_t *dq, int zx, int Co, int Ho,
                     int Wo, int st, const int32_t *lq, int L, int nq, int32_t *b,
                     const ET_REAL *inv_b, ET_REAL s, ET_REAL lr) {
    const int P = Ho * Wo, rows = L ? Ho : 1, rw = L ? Wo : P;
    const int full = st == 1 ? rw / 4 * 4 : rw / 2 * 2;
    for (int oc = 0; oc < Co; oc++) {
        const int8_t *d = dq + (size_t)oc * P;
        uint32_t *o = h + (size_t)oc * 2 * nq;
        const uint32_t *e = o + 2 * nq;
        int32_t se = 0;
        for (int r = 0; r < rows; r++) {
            const int8_t *rp = d + (size_t)r * rw;
            int ow = 0;
            for (; ow + 4 <= full; ow += 4, o += 2) {
                const uint32_t v = q_ld4(rp + ow);
                const int16x2_t E = __sxtb16(v), O = q_sxtb16r8(v);
                se = __smlad(E, 0x00010001, __smlad(O, 0x00010001, se));
                o[0] = (uint32_t)(st == 1 ? E : q_pkhbt(E, O));
                o[1] = (uint32_t)(st == 1 ? O : q_pkhtb(O, E));
            }
            if (ow < full) {  /* stride 2: the last pair */
                se += rp[ow] + rp[ow + 1];
                *o++ = q_pack2(rp[ow], rp[ow + 1]);
            }
        }
        for (int l = 0; l < L; l += 2) {
            const int32_t u = d[lq[l]], v = l + 1 < L ? d[lq[l + 1]] : 0;
            se += u + v;
            *o++ = q_pack2(u, v);
        }
        while (o < e) *o++ = 0;
        kc[4 * oc + 3] = (int32_t)(0u - (uint32_t)zx * (uint32_t)se);
        q_bstep(&b[oc], se, s, inv_b[oc], lr);
    }
}
/* one call's tables and arguments (q_mmg_setup's) */
typedef struct {
    uint32_t *xr, *h;
    int32_t *kc, *moff, *loff;
    int nq, nm, L, fast, st, Co, Kt;
    int8_t *w;
    const ET_REAL *inv_w;
    ET_REAL s, lr;
} q_mmg_ctx;
/* the rows of two taps (s0, s1: the taps' origins in their padded planes, or two 1x1 input
   channels) in that order: quad j's words (s0: 2j, 2j + 1), (s1: 2j, 2j + 1) */
static __attribute__((noinline, noclone)) void q_mmg_gather(const q_mmg_ctx *cx,
                                                             const int8_t *s0,
                                                             const int8_t *s1) {
    uint32_t *xr = cx->xr;
    const int32_t *moff = cx->moff, *loff = cx->loff;
    const int st = cx->st, nm = cx->nm, L = cx->L;
    int j = 0;  /* the words after the whole quads of the main ones */
    if (st == 1) {
        for (int u = 0; u < nm / 2; u++, xr += 4) {
            const uint32_t v0 = q_ld4(s0 + moff[u]), v1 = q_ld4(s1 + moff[u]);
            xr[0] = (uint32_t)__sxtb16(v0); xr[1] = (uint32_t)q_sxtb16r8(v0);
            xr[2] = (uint32_t)__sxtb16(v1); xr[3] = (uint32_t)q_sxtb16r8(v1);
        }
    } else {
        const int32_t *m = moff, *me = moff + (nm & ~1);
        for (; m != me; m += 2, xr += 4) {
            const int32_t o0 = m[0], o1 = m[1];
            const uint32_t a = q_ld4(s0 + o0), b = q_ld4(s0 + o1);
            const uint32_t c = q_ld4(s1 + o0), d = q_ld4(s1 + o1);
            xr[0] = (uint32_t)__sxtb16(a); xr[1] = (uint32_t)__sxtb16(b);
            xr[2] = (uint32_t)__sxtb16(c); xr[3] = (uint32_t)__sxtb16(d);
        }
        if (nm & 1) {
            xr[0] = (uint32_t)__sxtb16(q_ld4(s0 + *m));
            xr[2] = (uint32_t)__sxtb16(q_ld4(s1 + *m));
            j = 1;
        }
    }
    uint32_t *o = xr + j;  /* word j of the quads from xr: xr + (j / 2) 4 + j % 2 */
    for (int l = 0; l + 1 < L; l += 2) {
        const int32_t a = loff[l], c = loff[l + 1];
        o[0] = q_pack2(s0[a], s0[c]); o[2] = q_pack2(s1[a], s1[c]);
        o += j ? 3 : 1;
        j ^= 1;
    }
    if (L & 1) {  /* an odd last one, with a dq of 0 beside it */
        const int32_t a = loff[L - 1];
        o[0] = q_pack2(s0[a], s0[a]); o[2] = q_pack2(s1[a], s1[a]);
        o += j ? 3 : 1;
        j ^= 1;
    }
    if (j) { o[0] = 0; o[2] = 0; }
}
/* sums (oc0, k0), (oc0, k1), (oc1, k0), (oc1, k1) from their starts a[] over nq quads of
   dq words (h0, h1) and row words (xr, q_mmg_gather's): two LDRDs of dq, two LDRDs of rows
   and 8 SMLADs per 16 MACs, in 14 registers */
Q_AI void q_mmg2x2q(const uint32_t *h0, const uint32_t *h1, const uint32_t *xr, int nq,
                    int32_t *a) {
    int32_t a00 = a[0], a01 = a[1], a10 = a[2], a11 = a[3];
    uint32_t u, v, uo, vo, x0, x1;
#define Q_MMGQ_4                                   \
    "ldrd %[u], %[uo], [%[h0]], #8\n\t"            \
    "ldrd %[v], %[vo], [%[h1]], #8\n\t"            \
    "ldrd %[x0], %[x1], [%[xr]], #8\n\t"           \
    "smlad %[a00], %[u], %[x0], %[a00]\n\t"        \
    "smlad %[a00], %[uo], %[x1], %[a00]\n\t"       \
    "smlad %[a10], %[v], %[x0], %[a10]\n\t"        \
    "smlad %[a10], %[vo], %[x1], %[a10]\n\t"       \
    "ldrd %[x0], %[x1], [%[xr]], #8\n\t"           \
    "smlad %[a01], %[u], %[x0], %[a01]\n\t"        \
    "smlad %[a01], %[uo], %[x1], %[a01]\n\t"       \
    "smlad %[a11], %[v], %[x0], %[a11]\n\t"        \
    "smlad %[a11], %[vo], %[x1], %[a11]\n\t"
#define Q_MMGQ_IO                                                                           \
    : [a00] "+&r"(a00), [a01] "+&r"(a01), [a10] "+&r"(a10), [a11] "+&r"(a11),                \
      [h0] "+&r"(h0), [h1] "+&r"(h1), [xr] "+&r"(xr), [u] "=&r"(u), [v] "=&r"(v),           \
      [uo] "=&r"(uo), [vo] "=&r"(vo), [x0] "=&r"(x0), [x1] "=&r"(x1)
    if (nq & 1) __asm__ volatile(Q_MMGQ_4 Q_MMGQ_IO : : "memory");
    if (nq & ~1) {  /* 8 outputs per iteration */
        const uint32_t *end = h0 + (nq & ~1) * 2;
        __asm__ volatile("1:\n\t" Q_MMGQ_4 Q_MMGQ_4 "cmp %[h0], %[end]\n\tbne 1b\n\t"
                         Q_MMGQ_IO : [end] "r"(end) : "cc", "memory");
    }
#undef Q_MMGQ_4
#undef Q_MMGQ_IO
    a[0] = a00; a[1] = a01; a[2] = a10; a[3] = a11;
}
/* NOTE [ Steps beside the sums ]
   In q_mmg_ocs's loop over whole output-channel pairs on the SMMLA path the 2 x 2 kernel holds
   14 registers, so GCC spills and reloads its loop state around it and the four weight steps
   (about 90 instructions a pair besides the sums). `q_mmg_pairs` is that loop written out:
   the state in a small array S (its address pushed on the stack), the kernel's loop (entered
   at its second quad for an odd quad count), then each channel's {kq, 2^(sh - 33), sh - 32}
   by one LDM and per weight q_wstepf's SMMLA, ASR, LDRSB, ADD, SSAT, SSUB16, SEL and STRB:
   the same integers (`q_mmg_pairs1`: an odd last tap, its first sums only). Only where no
   ET_GRAD_PROBE hook reads the sums and in an optimised Thumb-2 build (r7 free of a frame
   pointer, LDRD of any two registers); else the C loop. S: h0 of the pair, the rows, 8 nq,
   nq & 1, the constants, the first weight (w + oc Kt + k), Kt, the constants' end. */
#if ET_DSP && defined(Q_NO_PROBE) && defined(__OPTIMIZE__) && defined(__thumb2__)
#define Q_PAIRS_ASM 1
#define Q_PQ                                      \
    "ldrd r8, r9, [r5], #8\n\t"                    \
    "ldrd r10, r11, [r6], #8\n\t"                  \
    "ldrd r12, lr, [r7], #8\n\t"                   \
    "smlad r1, r8, r12, r1\n\t"                    \
    "smlad r1, r9, lr, r1\n\t"                     \
    "smlad r3, r10, r12, r3\n\t"                   \
    "smlad r3, r11, lr, r3\n\t"                    \
    "ldrd r12, lr, [r7], #8\n\t"                   \
    "smlad r2, r8, r12, r2\n\t"                    \
    "smlad r2, r9, lr, r2\n\t"                     \
    "smlad r4, r10, r12, r4\n\t"                   \
    "smlad r4, r11, lr, r4\n\t"
#define Q_PSTEP(a, m)                             \
    "smmla " a ", " a ", r5, r6\n\t"               \
    "asr " a ", " a ", r7\n\t"                     \
    "ldrsb r9, " m "\n\t"                          \
    "add " a ", " a ", r9\n\t"                     \
    "ssat " a ", #8, " a "\n\t"                    \
    "ssub16 r9, " a ", r10\n\t"                    \
    "sel " a ", " a ", r10\n\t"                    \
    "strb " a ", " m "\n\t"
/* the loop, with the steps of the tap pair (k0: r1, r3; k1: r2, r4) or of one tap (T1 "") */
#define Q_PAIRS(T1, T3)                                                                     \
    "str r0, [sp, #-8]!\n\t"                                                              \
    "1:\n\t"                                                                              \
    "ldr r0, [sp]\n\t"                                                                    \
    "ldr r8, [r0, #16]\n\t"                                                               \
    "ldr r1, [r8, #12]\n\t" /* the channels' starts */                                    \
    "ldr r3, [r8, #28]\n\t"                                                               \
    "mov r2, r1\n\t"                                                                      \
    "mov r4, r3\n\t"                                                                      \
    "ldrd r5, r7, [r0]\n\t" /* h0, rows */                                                \
    "ldrd r9, r10, [r0, #8]\n\t" /* 8 nq, nq & 1 */                                       \
    "add r6, r5, r9\n\t" /* h1 */                                                         \
    "mov r0, r6\n\t" /* h0's end */                                                       \
    "cmp r10, #0\n\t"                                                                     \
    "bne 2f\n\t" /* an odd quad count: one quad first */                                  \
    "3:\n\t" Q_PQ "2:\n\t" Q_PQ                                                           \
    "cmp r5, r0\n\t"                                                                      \
    "bne 3b\n\t"                                                                          \
    "ldr r0, [sp]\n\t"                                                                    \
    "str r6, [r0]\n\t" /* the next pair's h0 */                                           \
    "ldrd r12, lr, [r0, #16]\n\t" /* constants, weights */                                \
    "ldr r11, [r0, #24]\n\t"                                                              \
    "mvn r10, #0x007E007E\n\t" /* 0xFF81FF81 */                                           \
    "ldmia r12!, {r5, r6, r7, r8}\n\t"                                                    \
    Q_PSTEP("r1", "[lr]") T1                                                                \
    "add lr, lr, r11\n\t"                                                                 \
    "ldmia r12!, {r5, r6, r7, r8}\n\t"                                                    \
    Q_PSTEP("r3", "[lr]") T3                                                                \
    "add lr, lr, r11\n\t"                                                                 \
    "strd r12, lr, [r0, #16]\n\t"                                                         \
    "ldr r9, [r0, #28]\n\t" /* the constants' end */                                      \
    "cmp r12, r9\n\t"                                                                     \
    "bne 1b\n\t"                                                                          \
    "add sp, sp, #8\n\t"
#define Q_PAIRS_IO                                                                          \
    : "+r"(s0)                                                                              \
    :                                                                                       \
    : "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8", "r9", "r10", "r11", "r12", "lr", "cc", \
      "memory"
static __attribute__((noinline, noclone)) void q_mmg_pairs(uint32_t *S) {
    register uint32_t *s0 __asm__("r0") = S;
    __asm__ volatile(Q_PAIRS(Q_PSTEP("r2", "[lr, #1]"), Q_PSTEP("r4", "[lr, #1]")) Q_PAIRS_IO);
}
/* the same for one tap (an odd last one, in both halves of the rows) */
static __attribute__((noinline, noclone)) void q_mmg_pairs1(uint32_t *S) {
    register uint32_t *s0 __asm__("r0") = S;
    __asm__ volatile(Q_PAIRS("", "") Q_PAIRS_IO);
}
#undef Q_PAIRS
#undef Q_PAIRS_IO
#undef Q_PQ
#undef Q_PSTEP
#endif
/* every output channel pair's sums of a tap (or input channel) pair k, k1 (k1 = k: an odd last
   one, summed twice and stored once; a channel's weights Kt apart) and their steps */
static __attribute__((noinline, noclone)) void q_mmg_ocs(const q_mmg_ctx *cx, int k, int k1) {
    const uint32_t *h = cx->h, *xr = cx->xr;
    const int32_t *kc = cx->kc;
    const int nq = cx->nq, fast = cx->fast, Kt = cx->Kt, Co = cx->Co;
    int8_t *w = cx->w;
    const ET_REAL s = cx->s, *inv_w = cx->inv_w, lr = cx->lr;
    int oc = 0;
    if (fast && (k1 == k + 1 || k1 == k)) {  /* whole pairs on the SMMLA path */
#ifdef Q_PAIRS_ASM
        if (Co >= 2) {
            uint32_t S[8] = {(uint32_t)(uintptr_t)h, (uint32_t)(uintptr_t)xr, 8u * (uint32_t)nq,
                             (uint32_t)(nq & 1), (uint32_t)(uintptr_t)kc,
                             (uint32_t)(uintptr_t)(w + k), (uint32_t)Kt,
                             (uint32_t)(uintptr_t)(kc + 4 * (Co / 2 * 2))};
            if (k1 == k) q_mmg_pairs1(S); else q_mmg_pairs(S);  /* NOTE [ Steps beside the sums ] */
            oc = Co / 2 * 2;
            kc += 4 * oc;
        }
#else
        const uint32_t *hp = h;
        int8_t *wk = w + k;
        for (; k1 == k + 1 && oc + 2 <= Co; oc += 2, kc += 8, wk += 2 * Kt, hp += 4 * nq) {
            int32_t a[4] = {kc[3], kc[3], kc[7], kc[7]};
            q_mmg2x2q(hp, hp + 2 * nq, xr, nq, a);
            q_wstepf(wk, a[0], kc);
            q_wstepf(wk + 1, a[1], kc);
            q_wstepf(wk + Kt, a[2], kc + 4);
            q_wstepf(wk + Kt + 1, a[3], kc + 4);
        }
#endif
    }
    for (; oc < Co; oc += 2, kc += 8) {
        const int c1 = oc + 1 < Co ? oc + 1 : oc;
        const int32_t *f0 = kc, *f1 = kc + 4 * (c1 - oc);
        int32_t a[4] = {f0[3], f0[3], f1[3], f1[3]};
        q_mmg2x2q(h + (size_t)oc * 2 * nq, h + (size_t)c1 * 2 * nq, xr, nq, a);
        int8_t *w0 = w + (size_t)oc * Kt, *w1 = w + (size_t)c1 * Kt;
        const q_step s0 = q_stepper(s, inv_w[oc], lr), s1 = q_stepper(s, inv_w[c1], lr);
        q_wstep(w0 + k, a[0], s0);
        if (k1 != k) q_wstep(w0 + k1, a[1], s0);
        if (c1 != oc) {
            q_wstep(w1 + k, a[2], s1);
            if (k1 != k) q_wstep(w1 + k1, a[3], s1);
        }
    }
}
/* q_mmg_plan, q_mmg_consts and q_mmg_dq into the scratch at r (after the planes); returns
   the row words' scratch and sets the rest */
static __attribute__((noinline, noclone)) void q_mmg_setup(q_mmg_ctx *cx, uint32_t *r,
        const int8_t *dq, int zx, int8_t *w, int Kt, int Co, int Ho, int Wo, int st, int Wp,
        int32_t *b, const ET_REAL *inv_w, const ET_REAL *inv_b, ET_REAL s, ET_REAL lr) {
    q_mmg_ctx c;
    c.st = st; c.Co = Co; c.Kt = Kt; c.w = w; c.inv_w = inv_w; c.s = s; c.lr = lr;
    const int P = Ho * Wo, g = st == 1 ? 4 : 2;
    c.nq = (P + 3) / 4;
    c.L = Ho * (Wo % g);
    c.nm = (P - c.L) / 2;
    c.xr = r;
    c.kc = (int32_t *)(void *)(r + 4 * c.nq);
    c.moff = c.kc + 4 * Co;
    c.loff = c.moff + (st == 1 ? c.nm / 2 : c.nm);
    int32_t *lq = c.loff + c.L;
    c.h = (uint32_t *)(void *)(lq + c.L);
    q_mmg_plan(c.moff, c.loff, lq, Ho, Wo, st, Wp);
    c.fast = q_mmg_consts(c.kc, s, inv_w, lr, Co);
    q_mmg_dq(c.h, c.kc, dq, zx, Co, Ho, Wo, st, lq, c.L, c.nq, b, inv_b, s, lr);
    *cx = c;
}
/* the mat-mult weight gradient over the flat output order (q_mmg_rows, q_mmg2x2), where
   NOTE [ Paired-output weight gradient ] does not fit */
static __attribute__((noinline, noclone)) void q_mm_update_flat(const int8_t *dq, ET_REAL s,
        const int8_t *x, int zx, int8_t *w, const ET_REAL *inv_w, ET_REAL lr, int8_t **pads,
        uint32_t *rest, int Ci, int H, int W, int Co, int Ho, int Wo, int st, int p) {
    const int P = Ho * Wo, Wp = W + 2 * p, Kt = 9 * Ci;
    int padded = -1;  /* the last input channel padded */
    int32_t *base = (int32_t *)(void *)rest;
    int32_t *fk = base + P;  /* per channel kq, sh */
    uint32_t *xr = (uint32_t *)(fk + 2 * Co);
    for (int q = 0; q < P; q++) base[q] = (q / Wo) * st * Wp + (q % Wo) * st;
    for (int oc = 0; oc < Co; oc++) {
        const q_step t = q_stepper(s, inv_w[oc], lr);
        fk[2 * oc] = t.kq; fk[2 * oc + 1] = t.sh;
    }
    for (int k = 0; k < Kt; k += 2) {  /* taps k = ic * 9 + kh * 3 + kw, in pairs */
        const int k1 = k + 1 < Kt ? k + 1 : k;  /* an odd last tap: summed twice, stored once */
        for (; padded < k1 / 9; padded++)
            q_padw(pads[(padded + 1) & 1], x + (size_t)(padded + 1) * H * W, zx, H, W, p);
        const int t0 = k % 9, t1 = k1 % 9;
        q_mmg_rows(xr, pads[(k / 9) & 1] + (t0 / 3) * Wp + t0 % 3,
                   pads[(k1 / 9) & 1] + (t1 / 3) * Wp + t1 % 3, base, P, zx);
        for (int oc = 0; oc < Co; oc += 2) {
            const int c1 = oc + 1 < Co ? oc + 1 : oc;
            int32_t a[4];
            q_mmg2x2(dq + (size_t)oc * P, dq + (size_t)c1 * P, xr, P, a);
            int8_t *w0 = w + (size_t)oc * Kt, *w1 = w + (size_t)c1 * Kt;
            const q_step s0 = {s, inv_w[oc], lr, fk[2 * oc], fk[2 * oc + 1]};
            q_wstep(&w0[k], a[0], s0);
            if (k1 != k) q_wstep(&w0[k1], a[1], s0);
            if (c1 != oc) {
                const q_step s1 = {s, inv_w[c1], lr, fk[2 * c1], fk[2 * c1 + 1]};
                q_wstep(&w1[k], a[2], s1);
                if (k1 != k) q_wstep(&w1[k1], a[3], s1);
            }
        }
    }
}
static __attribute__((noinline, noclone)) int q_mm_update(const int8_t *dq, ET_REAL s, const int8_t *x, int zx, int8_t *w,
                     int32_t *b, const ET_REAL *inv_w, const ET_REAL *inv_b, ET_REAL lr,
                     int8_t *scratch, int Ci, int H, int W, int Co, int Ho, int Wo, int st,
                     int p) {
    const int P = Ho * Wo, Wp = W + 2 * p, Kt = 9 * Ci;
    const size_t pb = ((size_t)(H + 2 * p) * Wp + Q_PAD_SLACK + 3) / 4 * 4;
    int8_t *pads[2] = {scratch, scratch + (Ci > 1 ? pb : 0)};  /* planes ic even / odd */
    uint32_t *rest = (uint32_t *)(void *)(scratch + (Ci > 1 ? 2 : 1) * pb);
    int padded = -1;  /* the last input channel padded */
    if (q_mmg_fits(Co, P)) {  /* NOTE [ Paired-output weight gradient ] */
        q_mmg_ctx c;
        q_mmg_setup(&c, rest, dq, zx, w, Kt, Co, Ho, Wo, st, Wp, b, inv_w, inv_b, s, lr);
        const size_t HW = (size_t)H * W;
        for (int k = 0, ic = 0, t0 = 0; k < Kt; k += 2) {  /* taps ic * 9 + t0, in pairs */
            const int k1 = k + 1 < Kt ? k + 1 : k;
            const int i1 = t0 < 8 || k1 == k ? ic : ic + 1, t1 = k1 == k ? t0 : (t0 + 1) % 9;
            for (; padded < i1; padded++)
                q_padw(pads[(padded + 1) & 1], x + (size_t)(padded + 1) * HW, zx, H, W, p);
            q_mmg_gather(&c, pads[ic & 1] + (t0 / 3) * Wp + t0 % 3,
                         pads[i1 & 1] + (t1 / 3) * Wp + t1 % 3);
            q_mmg_ocs(&c, k, k1);
            t0 = t1 + 1;
            ic = i1;
            if (t0 == 9) { t0 = 0; ic++; }
        }
        return 1;
    }
    q_mm_update_flat(dq, s, x, zx, w, inv_w, lr, pads, rest, Ci, H, W, Co, Ho, Wo, st, p);
    return 0;
}
#endif

/* two rows a0, a1 against two rows b0, b1 (each loaded and unpacked once for two sums) */
static void q_dot2x2(const int8_t *a0, const int8_t *a1, const int8_t *b0, const int8_t *b1,
                     int n, int32_t *s) {
    int32_t s00 = 0, s01 = 0, s10 = 0, s11 = 0;
    int i = 0;
#if ET_DSP
    for (; i + 4 <= n; i += 4) {
        const uint32_t u0 = q_ld4(a0 + i), u1 = q_ld4(a1 + i);
        const int16x2_t e0 = __sxtb16(u0), o0 = q_sxtb16r8(u0);
        const int16x2_t e1 = __sxtb16(u1), o1 = q_sxtb16r8(u1);
        uint32_t v = q_ld4(b0 + i);
        int16x2_t ev = __sxtb16(v), ov = q_sxtb16r8(v);
        s00 = __smlad(e0, ev, s00); s00 = __smlad(o0, ov, s00);
        s10 = __smlad(e1, ev, s10); s10 = __smlad(o1, ov, s10);
        v = q_ld4(b1 + i);
        ev = __sxtb16(v); ov = q_sxtb16r8(v);
        s01 = __smlad(e0, ev, s01); s01 = __smlad(o0, ov, s01);
        s11 = __smlad(e1, ev, s11); s11 = __smlad(o1, ov, s11);
    }
#endif
    for (; i < n; i++) {
        s00 += a0[i] * b0[i]; s01 += a0[i] * b1[i];
        s10 += a1[i] * b0[i]; s11 += a1[i] * b1[i];
    }
    s[0] = s00; s[1] = s01; s[2] = s10; s[3] = s11;
}

/* the 1x1 conv's weight gradient at batch 1 with the DSP (NOTE [ int8 mat-mult weight
   gradient ], the input channels as the taps; NOTE [ Paired-output weight gradient ] where it
   fits, its P outputs as one row at stride 1; else per input channel pair the rows x - zx in
   q_mmg2x2's order, P words of arena scratch `p:<op>`, then 2 int32 per output channel),
   against every output channel pair's dq rows; returns 1 where it stepped the biases too */
#if ET_DSP
/* the 1x1's weight gradient over the flat output order, where NOTE [ Paired-output weight
   gradient ] does not fit */
static __attribute__((noinline, noclone)) void q_mm1_update_flat(const int8_t *dq, ET_REAL s,
        const int8_t *x, int zx, int8_t *w, const ET_REAL *inv_w, ET_REAL lr, uint32_t *xr,
        int Ci, int Co, int P) {
    const int16x2_t zz = (int16x2_t)(((uint32_t)(uint16_t)zx << 16) | (uint16_t)zx);
    const int P4 = P / 4 * 4;
    int32_t *fk = (int32_t *)(void *)(xr + P);  /* per channel kq, sh: made once */
    for (int oc = 0; oc < Co; oc++) {
        const q_step t = q_stepper(s, inv_w[oc], lr);
        fk[2 * oc] = t.kq; fk[2 * oc + 1] = t.sh;
    }
    for (int ic = 0; ic < Ci; ic += 2) {
        const int i1 = ic + 1 < Ci ? ic + 1 : ic;  /* an odd last channel: summed twice */
        const int8_t *b0 = x + (size_t)ic * P, *b1 = x + (size_t)i1 * P;
        uint32_t *o = xr;
        for (int q = 0; q < P4; q += 4, o += 4) {
            o[0] = (uint32_t)__ssub16((int16x2_t)q_pack2(b0[q], b0[q + 2]), zz);
            o[1] = (uint32_t)__ssub16((int16x2_t)q_pack2(b0[q + 1], b0[q + 3]), zz);
            o[2] = (uint32_t)__ssub16((int16x2_t)q_pack2(b1[q], b1[q + 2]), zz);
            o[3] = (uint32_t)__ssub16((int16x2_t)q_pack2(b1[q + 1], b1[q + 3]), zz);
        }
        for (int q = P4; q < P; q++, o++)
            o[0] = (uint32_t)__ssub16((int16x2_t)q_pack2(b0[q], b1[q]), zz);
        for (int oc = 0; oc < Co; oc += 2) {
            const int c1 = oc + 1 < Co ? oc + 1 : oc;
            int32_t a[4];
            q_mmg2x2(dq + (size_t)oc * P, dq + (size_t)c1 * P, xr, P, a);
            const q_step s0 = {s, inv_w[oc], lr, fk[2 * oc], fk[2 * oc + 1]};
            const q_step s1 = {s, inv_w[c1], lr, fk[2 * c1], fk[2 * c1 + 1]};
            q_wstep(&w[(size_t)oc * Ci + ic], a[0], s0);
            if (i1 != ic) q_wstep(&w[(size_t)oc * Ci + i1], a[1], s0);
            if (c1 != oc) {
                q_wstep(&w[(size_t)c1 * Ci + ic], a[2], s1);
                if (i1 != ic) q_wstep(&w[(size_t)c1 * Ci + i1], a[3], s1);
            }
        }
    }
}
static __attribute__((noinline, noclone)) int q_mm1_update(const int8_t *dq, ET_REAL s, const int8_t *x, int zx, int8_t *w,
                        int32_t *b, const ET_REAL *inv_w, const ET_REAL *inv_b, ET_REAL lr,
                        uint32_t *xr, int Ci, int Co, int P) {
    if (q_mmg_fits(Co, P)) {
        q_mmg_ctx c;
        q_mmg_setup(&c, xr, dq, zx, w, Ci, Co, 1, P, 1, 0, b, inv_w, inv_b, s, lr);
        for (int ic = 0; ic < Ci; ic += 2) {
            const int i1 = ic + 1 < Ci ? ic + 1 : ic;  /* an odd last channel: summed twice */
            q_mmg_gather(&c, x + (size_t)ic * P, x + (size_t)i1 * P);
            q_mmg_ocs(&c, ic, i1);
        }
        return 1;
    }
    q_mm1_update_flat(dq, s, x, zx, w, inv_w, lr, xr, Ci, Co, P);
    return 0;
}
#endif
/* 1x1 conv: GW[oc][ic] = sum_(n, q) dq[oc][q] x[ic][q] - zx sum dq[oc] (2 x 2 tiles of
   contiguous rows), then the re-rounding */
static void q1_update(const int8_t *dq, ET_REAL s, const int8_t *x, int zx, int8_t *w,
                      const ET_REAL *inv_w, ET_REAL lr, int B, int Ci, int Co, int P) {
    for (int oc = 0; oc < Co; oc += 2) {
        const int o1 = oc + 1 < Co ? oc + 1 : oc;
        int32_t sd0 = 0, sd1 = 0;
        for (int n = 0; n < B; n++) {
            sd0 += q_sum(dq + ((size_t)n * Co + oc) * P, P);
            sd1 += q_sum(dq + ((size_t)n * Co + o1) * P, P);
        }
        const q_step st0 = q_stepper(s, inv_w[oc], lr), st1 = q_stepper(s, inv_w[o1], lr);
        for (int ic = 0; ic < Ci; ic += 2) {
            const int i1 = ic + 1 < Ci ? ic + 1 : ic;
            int32_t t[4] = {0, 0, 0, 0};
            for (int n = 0; n < B; n++) {
                int32_t u[4];
                q_dot2x2(dq + ((size_t)n * Co + oc) * P, dq + ((size_t)n * Co + o1) * P,
                         x + ((size_t)n * Ci + ic) * P, x + ((size_t)n * Ci + i1) * P, P, u);
                t[0] += u[0]; t[1] += u[1]; t[2] += u[2]; t[3] += u[3];
            }
            /* an odd last row / column is computed twice and stored once */
            q_wstep(&w[(size_t)oc * Ci + ic], t[0] - zx * sd0, st0);
            if (i1 != ic)
                q_wstep(&w[(size_t)oc * Ci + i1], t[1] - zx * sd0, st0);
            if (o1 != oc) {
                q_wstep(&w[(size_t)o1 * Ci + ic], t[2] - zx * sd1, st1);
                if (i1 != ic)
                    q_wstep(&w[(size_t)o1 * Ci + i1], t[3] - zx * sd1, st1);
            }
        }
    }
}
/* 1x1 conv input gradient: dx[ic][q] = s_g sum_oc w[oc][ic] dq[oc][q], in 2 x 4 tiles (input
   channels x pixels) of int32 register sums */
#if ET_DSP
/* input channels (ic, ic + 2) (h = 0; h = 1: ic + 1, ic + 3) x 4 pixels q..q+3: per output
   channel one word of 4 weights (SXTB16: the pair (w_ic, w_ic+2)) and one of 4 dq (pairs (e0,
   e2), (e1, e3)), 8 halfword multiply-accumulates (SMLABB / SMLABT / SMLATB / SMLATT) */
Q_AI void q1_bi_tile(const int8_t *dn, const int8_t *w, int Ci, int Co, int P, int ic, int q,
                     int h, int32_t *t) {
    int32_t t0 = 0, t1 = 0, t2 = 0, t3 = 0, u0 = 0, u1 = 0, u2 = 0, u3 = 0;
    const int8_t *dr = dn + q, *wr = w + ic;
    for (int oc = 0; oc < Co; oc++, dr += P, wr += Ci) {
        const uint32_t wv = q_ld4(wr), dv = q_ld4(dr);
        const int16x2_t W = h ? q_sxtb16r8(wv) : __sxtb16(wv);
        const int16x2_t E = __sxtb16(dv), O = q_sxtb16r8(dv);
        t0 = __smlabb(W, E, t0); t2 = __smlabt(W, E, t2);
        t1 = __smlabb(W, O, t1); t3 = __smlabt(W, O, t3);
        u0 = __smlatb(W, E, u0); u2 = __smlatt(W, E, u2);
        u1 = __smlatb(W, O, u1); u3 = __smlatt(W, O, u3);
    }
    t[0] = t0; t[1] = t1; t[2] = t2; t[3] = t3; t[4] = u0; t[5] = u1; t[6] = u2; t[7] = u3;
}
#endif
#if ET_DSP
/* NOTE [ Paired 1x1 input gradient ]
   dx[ic][q] = s_g sum_oc w[oc][ic] dq[oc][q] with SMLAD over output-channel pairs (batch any,
   Ci and Co even, P >= 2): per input-channel pair the weights (w[oc][ic], w[oc+1][ic]) and
   (w[oc][ic+1], w[oc+1][ic+1]) are gathered once as 16-bit pairs into `wp` (4 Co bytes of the
   op's backward scratch `p:`, `backward_scratch_bytes` in _int8_layout.py); per pixel pair and
   output-channel pair two halfword loads of dq rows oc and oc + 1 give (dq[oc][q],
   dq[oc+1][q]) and (dq[oc][q+1], dq[oc+1][q+1]) by SXTB16 and SXTB16 ROR 8; 4 SMLAD sum the
   2 x 2 tile. An odd P ends with the pair (P - 2, P - 1), stored at P - 1 only. At batch 1,
   where 2 Co P4 bytes <= Q_DQ16_MAX (P4: P rounded up to a multiple of 4; NOTE [ Expanded
   dq rows ]), those dq pairs are unpacked once into the scratch after `wp` (not once per
   input-channel pair), four pixels by four (the pixels past P are 0; two word loads, PKHBT /
   PKHTB and four SXTB16 per four pixels): then a 2 x 4 tile (two input channels, four
   pixels) reads the weight pairs and its dq pairs in order, one LDRD of weights and two of
   dq per output-channel pair for 8 SMLADs (q1_bi_step4), 11 instructions for 16 MACs. Same
   exact int32 sums as the portable loop. */
/* one output-channel pair of the 2 x 4 tile: the weight pairs (input channels ic, ic + 1) and
   the dq pairs of four pixels by one LDRD each, both pointers advanced (GCC loads them one
   word at a time, some twice, once the loop is unrolled) */
Q_AI void q1_bi_step4(const uint32_t **eq, const uint32_t **wq, int32_t *t) {
    uint32_t W0, W1, E0, E1;
#if defined(__OPTIMIZE__) && defined(__thumb2__)
    /* one block of 14 registers: all of r0-r12 and lr, so only where r7 holds no frame
       pointer (as NOTE [ Steps beside the sums ]); memory by the clobber, not by operands,
       which would need address registers beyond the 14 */
    __asm__("ldrd %[W0], %[W1], [%[wq]], #8\n\t"
            "ldrd %[E0], %[E1], [%[eq]], #8\n\t"
            "smlad %[t0], %[W0], %[E0], %[t0]\n\t"
            "smlad %[t1], %[W0], %[E1], %[t1]\n\t"
            "smlad %[u0], %[W1], %[E0], %[u0]\n\t"
            "smlad %[u1], %[W1], %[E1], %[u1]\n\t"
            "ldrd %[E0], %[E1], [%[eq]], #8\n\t"
            "smlad %[t2], %[W0], %[E0], %[t2]\n\t"
            "smlad %[t3], %[W0], %[E1], %[t3]\n\t"
            "smlad %[u2], %[W1], %[E0], %[u2]\n\t"
            "smlad %[u3], %[W1], %[E1], %[u3]"
            : [W0] "=&r"(W0), [W1] "=&r"(W1), [E0] "=&r"(E0), [E1] "=&r"(E1),
              [wq] "+r"(*wq), [eq] "+r"(*eq), [t0] "+r"(t[0]), [t1] "+r"(t[1]),
              [t2] "+r"(t[2]), [t3] "+r"(t[3]), [u0] "+r"(t[4]), [u1] "+r"(t[5]),
              [u2] "+r"(t[6]), [u3] "+r"(t[7])
            :
            : "memory");
#else
    /* the same in two blocks of at most 10 registers (a debug build: r7 is the frame
       pointer, GCC may spill between them) */
    __asm__("ldrd %[W0], %[W1], [%[wq]], #8\n\t"
            "ldrd %[E0], %[E1], [%[eq]], #8\n\t"
            "smlad %[t0], %[W0], %[E0], %[t0]\n\t"
            "smlad %[t1], %[W0], %[E1], %[t1]\n\t"
            "smlad %[u0], %[W1], %[E0], %[u0]\n\t"
            "smlad %[u1], %[W1], %[E1], %[u1]"
            : [W0] "=&r"(W0), [W1] "=&r"(W1), [E0] "=&r"(E0), [E1] "=&r"(E1),
              [wq] "+r"(*wq), [eq] "+r"(*eq), [t0] "+r"(t[0]), [t1] "+r"(t[1]),
              [u0] "+r"(t[4]), [u1] "+r"(t[5])
            :
            : "memory");
    __asm__("ldrd %[E0], %[E1], [%[eq]], #8\n\t"
            "smlad %[t2], %[W0], %[E0], %[t2]\n\t"
            "smlad %[t3], %[W0], %[E1], %[t3]\n\t"
            "smlad %[u2], %[W1], %[E0], %[u2]\n\t"
            "smlad %[u3], %[W1], %[E1], %[u3]"
            : [E0] "=&r"(E0), [E1] "=&r"(E1), [eq] "+r"(*eq), [t2] "+r"(t[2]),
              [t3] "+r"(t[3]), [u2] "+r"(t[6]), [u3] "+r"(t[7])
            : [W0] "r"(W0), [W1] "r"(W1)
            : "memory");
#endif
}
static void q1_bwd_input_mm(const int8_t *dq, ET_REAL s, const int8_t *w, ET_REAL *dx,
                            int acc, int B, int Ci, int Co, int P, uint32_t *wp) {
    const int P4 = (P + 3) / 4 * 4;
    if (B == 1 && (size_t)2 * Co * P4 <= Q_DQ16_MAX) {  /* dq pairs unpacked once */
        /* e[((q / 4) Co / 2 + oc / 2) 4 + q % 4] = (dq[oc][q], dq[oc + 1][q]); the pixels
           past P are 0 */
        uint32_t *e = wp + Co;
        for (int oc = 0; oc < Co; oc += 2) {
            const int8_t *d = dq + (size_t)oc * P;
            uint32_t *o = e + (size_t)oc * 2;
            int q = 0;
            for (; q + 4 <= P; q += 4, o += (size_t)Co * 2) {
                /* rows oc, oc + 1 as (a0 a1 b0 b1), (a2 a3 b2 b3): SXTB16 (ROR 8) pairs them */
                const uint32_t a = q_ld4(d + q), b = q_ld4(d + P + q);
                const uint32_t v = (uint32_t)q_pkhbt((int16x2_t)a, (int16x2_t)b);
                const uint32_t u = (uint32_t)q_pkhtb((int16x2_t)b, (int16x2_t)a);
                o[0] = (uint32_t)__sxtb16(v); o[1] = (uint32_t)q_sxtb16r8(v);
                o[2] = (uint32_t)__sxtb16(u); o[3] = (uint32_t)q_sxtb16r8(u);
            }
            for (int j = 0; q + j < P4; j++) o[j] = q + j < P ? q_pack2(d[q + j], d[P + q + j]) : 0;
        }
        for (int ic = 0; ic < Ci; ic += 2) {
            for (int oc = 0; oc < Co; oc += 2) {
                uint16_t a, b;
                memcpy(&a, w + (size_t)oc * Ci + ic, 2);
                memcpy(&b, w + (size_t)(oc + 1) * Ci + ic, 2);
                const uint32_t v = a | (uint32_t)b << 16;
                wp[oc] = (uint32_t)__sxtb16(v);
                wp[oc + 1] = (uint32_t)q_sxtb16r8(v);
            }
            ET_REAL *r0 = dx + (size_t)ic * P, *r1 = r0 + P;
            const uint32_t *eq = e;
            for (int q = 0; q < P; q += 4) {  /* eq walks the pixel quads' rows in turn */
                int32_t t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                const uint32_t *wq = wp;
#pragma GCC unroll 16
                for (int k = 0; k < Co; k += 2) q1_bi_step4(&eq, &wq, t);
                for (int j = 0; j < 4 && q + j < P; j++) {
                    q_put(r0 + q + j, t[j], s, acc);
                    q_put(r1 + q + j, t[4 + j], s, acc);
                }
            }
        }
        return;
    }
    for (int ic = 0; ic < Ci; ic += 2) {
        for (int oc = 0; oc < Co; oc += 2) {
            uint16_t a, b;
            memcpy(&a, w + (size_t)oc * Ci + ic, 2);
            memcpy(&b, w + (size_t)(oc + 1) * Ci + ic, 2);
            const uint32_t v = a | (uint32_t)b << 16;
            wp[oc] = (uint32_t)__sxtb16(v);
            wp[oc + 1] = (uint32_t)q_sxtb16r8(v);
        }
        for (int n = 0; n < B; n++) {
            const int8_t *dn = dq + (size_t)n * Co * P;
            ET_REAL *r0 = dx + ((size_t)n * Ci + ic) * P, *r1 = r0 + P;
            for (int q = 0; q < P; q += 2) {
                const int qq = q + 2 <= P ? q : P - 2;
                int32_t t00 = 0, t01 = 0, t10 = 0, t11 = 0;
                const int8_t *d = dn + qq;
                const uint32_t *wq = wp, *we = wp + Co;
                for (; wq < we; wq += 2, d += 2 * (size_t)P) {
                    uint16_t a, b;
                    memcpy(&a, d, 2);
                    memcpy(&b, d + P, 2);
                    const uint32_t v = a | (uint32_t)b << 16;
                    const int16x2_t E0 = __sxtb16(v), E1 = q_sxtb16r8(v);
                    const int16x2_t W0 = (int16x2_t)wq[0], W1 = (int16x2_t)wq[1];
                    t00 = __smlad(W0, E0, t00); t01 = __smlad(W0, E1, t01);
                    t10 = __smlad(W1, E0, t10); t11 = __smlad(W1, E1, t11);
                }
                if (qq == q) { q_put(r0 + q, t00, s, acc); q_put(r1 + q, t10, s, acc); }
                q_put(r0 + qq + 1, t01, s, acc);
                q_put(r1 + qq + 1, t11, s, acc);
            }
        }
    }
}
#endif
/* `wp`: 4 Co bytes of scratch for the paired path (NOTE [ Paired 1x1 input gradient ]), or 0 */
static void q1_bwd_input(const int8_t *dq, ET_REAL s, const int8_t *w, ET_REAL *dx, int acc,
                         int B, int Ci, int Co, int P, uint32_t *wp) {
#if ET_DSP
    if (wp && Ci % 2 == 0 && Co % 2 == 0 && P >= 2) {
        q1_bwd_input_mm(dq, s, w, dx, acc, B, Ci, Co, P, wp);
        return;
    }
#else
    (void)wp;
#endif
#if ET_DSP
    if (Ci % 4 == 0) {  /* pixels past the last group of 4: one at a time */
        for (int n = 0; n < B; n++) {
            const int8_t *dn = dq + (size_t)n * Co * P;
            ET_REAL *dxn = dx + (size_t)n * Ci * P;
            for (int ic = 0; ic < Ci; ic += 4) {
                for (int h = 0; h < 2; h++)
                for (int q = 0; q + 4 <= P; q += 4) {
                    int32_t t[8];
                    q1_bi_tile(dn, w, Ci, Co, P, ic, q, h, t);
                    ET_REAL *r = dxn + (size_t)(ic + h) * P + q, *r2 = r + 2 * (size_t)P;
                    for (int j = 0; j < 4; j++) {
                        q_put(r + j, t[j], s, acc);
                        q_put(r2 + j, t[4 + j], s, acc);
                    }
                }
                if (P % 4 && P >= 4)  /* the last pixels: the tile ending at P, stored past q0 */
                    for (int h = 0; h < 2; h++) {
                        int32_t t[8];
                        const int q = P - 4, q0 = P / 4 * 4 - q;
                        q1_bi_tile(dn, w, Ci, Co, P, ic, q, h, t);
                        ET_REAL *r = dxn + (size_t)(ic + h) * P + q, *r2 = r + 2 * (size_t)P;
                        for (int j = q0; j < 4; j++) {
                            q_put(r + j, t[j], s, acc);
                            q_put(r2 + j, t[4 + j], s, acc);
                        }
                    }
                else
                    for (int q = P / 4 * 4; q < P; q++)
                        for (int i = ic; i < ic + 4; i++) {
                            int32_t t = 0;
                            for (int oc = 0; oc < Co; oc++)
                                t += w[(size_t)oc * Ci + i] * dn[(size_t)oc * P + q];
                            q_put(dxn + (size_t)i * P + q, t, s, acc);
                        }
            }
        }
        return;
    }
#endif
    for (int n = 0; n < B; n++) {
        const int8_t *dn = dq + (size_t)n * Co * P;
        ET_REAL *dxn = dx + (size_t)n * Ci * P;
        for (int ic = 0; ic < Ci; ic += 2) {
            const int i1 = ic + 1 < Ci ? ic + 1 : ic;
            int q = 0;
            for (; q + 4 <= P; q += 4) {
                int32_t t0 = 0, t1 = 0, t2 = 0, t3 = 0, u0 = 0, u1 = 0, u2 = 0, u3 = 0;
                const int8_t *dr = dn + q;
                for (int oc = 0; oc < Co; oc++, dr += P) {
                    const int32_t wa = w[(size_t)oc * Ci + ic], wb = w[(size_t)oc * Ci + i1];
                    const int32_t e0 = dr[0], e1 = dr[1], e2 = dr[2], e3 = dr[3];
                    t0 += wa * e0; t1 += wa * e1; t2 += wa * e2; t3 += wa * e3;
                    u0 += wb * e0; u1 += wb * e1; u2 += wb * e2; u3 += wb * e3;
                }
                ET_REAL *r = dxn + (size_t)ic * P + q;
                q_put(r, t0, s, acc); q_put(r + 1, t1, s, acc);
                q_put(r + 2, t2, s, acc); q_put(r + 3, t3, s, acc);
                if (i1 != ic) {
                    r = dxn + (size_t)i1 * P + q;
                    q_put(r, u0, s, acc); q_put(r + 1, u1, s, acc);
                    q_put(r + 2, u2, s, acc); q_put(r + 3, u3, s, acc);
                }
            }
            for (; q < P; q++)
                for (int i = ic; i <= i1; i++) {
                    int32_t t = 0;
                    for (int oc = 0; oc < Co; oc++)
                        t += w[(size_t)oc * Ci + i] * dn[(size_t)oc * P + q];
                    q_put(dxn + (size_t)i * P + q, t, s, acc);
                }
        }
    }
}

/* NOTE [ Depthwise input gradient as a forward ]
   A 3x3 depthwise conv at stride 1 with padding 1 has the input gradient dx = the 3x3
   correlation of its dq plane, zero-padded by 1, with the kernel turned by 180 degrees: with
   the op's backward scratch (`input_grad_scratch_bytes`: the padded plane, 4-byte aligned, and
   H x W int32 sums, when at most Q_DQ16_MAX bytes) it runs the padded forward's kernel
   (q3_plane_fwd, NOTE [ Padded 3x3 forward ]) on that plane, two outputs per SMLAD row step,
   for the same integer sums. */
Q_AI size_t q_dw_bi_bytes(int H, int W) {
    return ((size_t)(H + 2) * (W + 2) + Q_PAD_SLACK + 3) / 4 * 4 + (size_t)4 * H * W;
}
/* NOTE [ Paired stride-2 3x3 input gradient ]
   At stride 2 an output column ow adds w0 e_ow to input column 2ow - p, w1 e_ow to 2ow + 1 - p
   and w2 e_ow to 2ow + 2 - p: each even column (from 2ow - p) takes w0 e_ow + w2 e_(ow-1) and
   each odd one w1 e_ow. With the DSP four (then two) output channels run in one pass over
   the row of sums, their weights and dq as 16-bit pairs (channels oc, oc + 1): three SMLADs
   per pair and output column for 6 MACs, and each sum loaded and stored once per pass.
   A one-group conv with Co >= 4 given the op's backward scratch (`input_grad_scratch_bytes`,
   NOTE [ int8 SRAM of the C trainer ]) first writes one sample's dq there unpacked, per group
   of four channels and pixel the 16-bit pairs (dq[oc][q], dq[oc+2][q]), (dq[oc+1][q],
   dq[oc+3][q]) (2 words), and per input channel its weights as the same pairs: then one
   output column of four channels (12 MACs) is one LDRD of dq, 6 SMLADs, and one LDRD / STRD
   of the sums (q3_bi_col4, written out): the even column's sum is carried in a register from
   the column before (which added w2 x its dq to it), so the LDRD reads the odd column and the
   next even one and the STRD writes this even and odd pair, 9 instructions. The integer sums
   are the same. */
/* 3x3 conv input gradient, one input row at a time: the output rows whose taps land on it
   scatter W x dq into a row of int32 sums (on the stack, Q_ROWMAX + 4 wide), then dx = s_g x sum.
   Wider rows take the generic path. */
#define Q_ROWMAX 64
#if ET_DSP
/* one output column of four channels into the even / odd input columns rr[0], rr[1] (rr += 2):
   dq[oc..oc+3][q] as the unpacked pairs (oc, oc + 2), (oc + 1, oc + 3) at d (d += 2); *c: the
   even column's sum so far (rr[0] plus w2 x the previous column), carried in a register; on
   return the next even column's (rr[2] plus w2 x this column). One statement: the compiler's
   schedule of it spilled the weights. */
/* one column's asm: the carried sum in %[C], the next in %[N] (two registers alternate, so two
   columns need no moves); Q3_BI_IO: the operands */
#define Q3_BI_COL(C, N)                                  \
    "ldrd %[F], %[G], [%[d]], #8\n\t"                    \
    "ldrd %[y], %[" N "], [%[rr], #4]\n\t"               \
    "smlad %[" C "], %[A0], %[F], %[" C "]\n\t"          \
    "smlad %[" C "], %[B0], %[G], %[" C "]\n\t"          \
    "smlad %[y], %[A1], %[F], %[y]\n\t"                  \
    "smlad %[y], %[B1], %[G], %[y]\n\t"                  \
    "strd %[" C "], %[y], [%[rr]], #8\n\t"               \
    "smlad %[" N "], %[A2], %[F], %[" N "]\n\t"          \
    "smlad %[" N "], %[B2], %[G], %[" N "]\n\t"
#define Q3_BI_IO                                                                           \
    : [F] "=&r"(F), [G] "=&r"(G), [y] "=&r"(y), [n] "=&r"(n), [rr] "+&r"(*rr),            \
      [c] "+&r"(*c), [d] "+&r"(*d)                                                         \
    : [A0] "r"(A0), [A1] "r"(A1), [A2] "r"(A2), [B0] "r"(B0), [B1] "r"(B1), [B2] "r"(B2) \
    : "memory"
Q_AI void q3_bi_col4(const uint32_t **d, int32_t **rr, int32_t *c, int16x2_t A0, int16x2_t A1,
                     int16x2_t A2, int16x2_t B0, int16x2_t B1, int16x2_t B2) {
    uint32_t F, G;
    int32_t y, n;
    __asm__ volatile(Q3_BI_COL("c", "n") Q3_BI_IO);
    *c = n;
}
/* two columns, the carried sum alternating between two registers (no moves) */
Q_AI void q3_bi_col4x2(const uint32_t **d, int32_t **rr, int32_t *c, int16x2_t A0, int16x2_t A1,
                       int16x2_t A2, int16x2_t B0, int16x2_t B1, int16x2_t B2) {
    uint32_t F, G;
    int32_t y, n;
    __asm__ volatile(Q3_BI_COL("c", "n") Q3_BI_COL("n", "c") Q3_BI_IO);
}
/* one sample's dq as the pairs of NOTE [ Paired stride-2 3x3 input gradient ]: for each group of
   four channels j and pixel q, (dq[4j][q], dq[4j+2][q]) then (dq[4j+1][q], dq[4j+3][q]); two
   pixels per halfword load of each row */
static void q3_bi_unpack(uint32_t *o, const int8_t *dq, int Co, int P) {
    for (int j = 0; j < Co / 4; j++, o += 2 * (size_t)P) {
        const int8_t *a = dq + (size_t)4 * j * P, *b = a + P, *c = b + P, *d = c + P;
        int q = 0;
        for (; q + 2 <= P; q += 2) {
            uint16_t ha, hb, hc, hd;
            memcpy(&ha, a + q, 2); memcpy(&hb, b + q, 2);
            memcpy(&hc, c + q, 2); memcpy(&hd, d + q, 2);
            const uint32_t ac = ha | (uint32_t)hc << 16, bd = hb | (uint32_t)hd << 16;
            o[2 * q] = (uint32_t)__sxtb16(ac); o[2 * q + 1] = (uint32_t)__sxtb16(bd);
            o[2 * q + 2] = (uint32_t)q_sxtb16r8(ac); o[2 * q + 3] = (uint32_t)q_sxtb16r8(bd);
        }
        if (q < P) {
            o[2 * q] = q_pack2(a[q], c[q]);
            o[2 * q + 1] = q_pack2(b[q], d[q]);
        }
    }
}
#endif
#if ET_DSP
/* input channel ic's weights as the passes' 16-bit pairs: per kernel row and group of four
   output channels (oc, oc + 2) and (oc + 1, oc + 3), the lanes SXTB16 / SXTB16 ROR 8 of
   dq[oc..oc+3] give */
static void q3_bi_wpack(uint32_t *wpk, const int8_t *w, int cig, int Co, int ic) {
    for (int kh = 0; kh < 3; kh++)
        for (int j = 0; j < Co / 4; j++) {
            const int8_t *k0 = w + (((size_t)4 * j * cig + ic) * 3 + kh) * 3;
            const int8_t *k1 = k0 + (size_t)cig * 9, *k2 = k1 + (size_t)cig * 9;
            const int8_t *k3 = k2 + (size_t)cig * 9;
            uint32_t *o = wpk + ((size_t)kh * (Co / 4) + j) * 6;
            for (int t = 0; t < 3; t++) {
                o[t] = q_pack2(k0[t], k2[t]);
                o[3 + t] = q_pack2(k1[t], k3[t]);
            }
        }
}
/* padding 1: the first output column has no even input column (it would be column -1): its
   odd column 0 (at *rr) and the next even column 1 only; *rr moved to column 1, *c its sum */
Q_AI void q3_bi_col4f(const uint32_t **d, int32_t **rr, int32_t *c, int16x2_t A1, int16x2_t A2,
                      int16x2_t B1, int16x2_t B2) {
    uint32_t F, G;
    int32_t y;
    __asm__ volatile(
        "ldrd %[F], %[G], [%[d]], #8\n\t"
        "ldrd %[y], %[c], [%[rr]]\n\t"
        "smlad %[y], %[A1], %[F], %[y]\n\t"
        "smlad %[y], %[B1], %[G], %[y]\n\t"
        "str %[y], [%[rr]], #4\n\t"
        "smlad %[c], %[A2], %[F], %[c]\n\t"
        "smlad %[c], %[B2], %[G], %[c]\n\t"
        : [F] "=&r"(F), [G] "=&r"(G), [y] "=&r"(y), [c] "=&r"(*c), [rr] "+&r"(*rr),
          [d] "+&r"(*d)
        : [A1] "r"(A1), [A2] "r"(A2), [B1] "r"(B1), [B2] "r"(B2)
        : "memory");
}
/* the last output column where its w2 column is past the row: the even and odd columns only */
Q_AI void q3_bi_col4l(const uint32_t **d, int32_t *rr, int32_t c, int16x2_t A0, int16x2_t A1,
                      int16x2_t B0, int16x2_t B1) {
    uint32_t F, G;
    int32_t y;
    __asm__ volatile(
        "ldrd %[F], %[G], [%[d]], #8\n\t"
        "ldr %[y], [%[rr], #4]\n\t"
        "smlad %[c], %[A0], %[F], %[c]\n\t"
        "smlad %[c], %[B0], %[G], %[c]\n\t"
        "smlad %[y], %[A1], %[F], %[y]\n\t"
        "smlad %[y], %[B1], %[G], %[y]\n\t"
        "strd %[c], %[y], [%[rr]]\n\t"
        : [F] "=&r"(F), [G] "=&r"(G), [y] "=&r"(y), [c] "+&r"(c), [d] "+&r"(*d)
        : [rr] "r"(rr), [A0] "r"(A0), [A1] "r"(A1), [B0] "r"(B0), [B1] "r"(B1)
        : "memory");
}
/* NOTE [ Stride-2 input gradient in the dx planes ]
   Where the integer dx is stored as int32 (acc Q_DX_INT, 4-byte ET_REAL), Co is a multiple
   of 4 and the padding at most 1, the passes of NOTE [ Paired stride-2 3x3 input gradient ]
   add straight into input channel ci's dx plane (zeroed first) in place of a row of sums:
   with no margin around a row, a pass with padding 1 starts with its first column's odd and
   next even input columns (q3_bi_col4f; its even column would be column -1), and ends with
   q3_bi_col4l where the last column's w2 column (2 Wo - p) is past the row. The loops run
   per kernel row and group of four output channels, the weights loaded once for all the
   output rows (those whose input row 2 oh - p + kh is inside, one pass after another down
   the plane); no row copy. Rows of at least 2 columns. The same integer sums, added in
   another order. */
static void q3_bi_planes(const int8_t *dq, const int8_t *w, int32_t *dxn, uint32_t *D, int Ci,
                         int H, int W, int Co, int Ho, int Wo, int p) {
    uint32_t *wpk = D + (size_t)(Co / 4) * 2 * Ho * Wo;
    q3_bi_unpack(D, dq, Co, Ho * Wo);
    const int tail = 2 * Wo - p > W - 1;  /* the last column's w2 column is past the row */
    for (int ci = 0; ci < Ci; ci++) {
        int32_t *pl = dxn + (size_t)ci * H * W;
        int j = 0;
        for (; j + 2 <= H * W; j += 2) {  /* two at a time: no call to memset */
            uint64_t z = 0;
            __asm__("" : "+r"(z));
            memcpy(pl + j, &z, 8);
        }
        if (j < H * W) pl[j] = 0;
        q3_bi_wpack(wpk, w, Ci, Co, ci);
        const uint32_t *wk = wpk;
        /* from a pass's end (its last even column, or the one before with `tail`) to the
           next pass's start, two rows down */
        const int step = 2 * W - (2 * Wo - p - 2 * tail);
        for (int kh = 0; kh < 3; kh++) {
            /* rows oh0 .. oh1 - 1: 0 <= 2 oh - p + kh <= H - 1 (H + 1 + p - kh >= 0) */
            const int oh0 = kh < p, oh1 = (H + 1 + p - kh) / 2 < Ho ? (H + 1 + p - kh) / 2 : Ho;
            for (int g = 0; g < Co / 4; g++, wk += 6) {
                if (oh0 >= oh1) continue;
                const int16x2_t A0 = (int16x2_t)wk[0], A1 = (int16x2_t)wk[1];
                const int16x2_t A2 = (int16x2_t)wk[2], B0 = (int16x2_t)wk[3];
                const int16x2_t B1 = (int16x2_t)wk[4], B2 = (int16x2_t)wk[5];
                const uint32_t *d0 = D + ((size_t)g * Ho + oh0) * 2 * Wo;
                const uint32_t *de = d0 + (size_t)(oh1 - oh0) * 2 * Wo;
                int32_t *rr = pl + (size_t)(2 * oh0 - p + kh) * W;  /* input row ih, column 0 */
                do {  /* output rows oh0 .. oh1 - 1: input rows 2 oh - p + kh */
                    int32_t c;
                    int ow = 0;
                    if (p) { q3_bi_col4f(&d0, &rr, &c, A1, A2, B1, B2); ow = 1; }
                    else c = rr[0];
                    const int end = Wo - tail;
                    for (; ow + 2 <= end; ow += 2)
                        q3_bi_col4x2(&d0, &rr, &c, A0, A1, A2, B0, B1, B2);
                    if (ow < end) { q3_bi_col4(&d0, &rr, &c, A0, A1, A2, B0, B1, B2); ow++; }
                    if (ow < Wo) q3_bi_col4l(&d0, rr, c, A0, A1, B0, B1);
                    else rr[0] = c;
                    rr += step;
                } while (d0 != de);
            }
        }
    }
}
#endif
#if ET_DSP
/* the stride-1 depthwise input gradient (NOTE [ Depthwise input gradient as a forward ]) */
Q_AI void q3_bi_dw(const int8_t *dq, ET_REAL s, const int8_t *w, ET_REAL *dx, int acc,
                   int8_t *dT, int B, int Ci, int H, int W, int Co) {
    const size_t pb = ((size_t)(H + 2) * (W + 2) + Q_PAD_SLACK + 3) / 4 * 4;
    int32_t *sums = (int32_t *)(void *)(dT + pb);
    for (int n = 0; n < B; n++)
        for (int c = 0; c < Ci; c++) {
            const int8_t *wc = w + (size_t)c * 9;
            const int8_t wr[9] = {wc[8], wc[7], wc[6], wc[5], wc[4],
                                  wc[3], wc[2], wc[1], wc[0]};  /* turned by 180 */
            q_pad(dT, dq + ((size_t)n * Co + c) * H * W, 0, H, W, 1);
            ET_REAL *dc = dx + ((size_t)n * Ci + c) * H * W;
            if (sizeof(ET_REAL) == 4 && acc == Q_DX_INT) {  /* the sums straight into dx */
                q3_plane_fwd((int32_t *)(void *)dc, dT, W + 2, wr, H, W, 1, 0, 0);
                continue;
            }
            q3_plane_fwd(sums, dT, W + 2, wr, H, W, 1, 0, 0);
            for (int j = 0; j < H * W; j++) q_put(dc + j, sums[j], s, acc);
        }
}
#endif
/* output channels oc .. oe - 1 of one kernel row kh into the row sums r, one at a time */
Q_AI void q3_bi_rest(const int8_t *dq, const int8_t *w, int32_t *r, int n, int ic, int kh,
                     int oh, int oc, int oe, int Co, int cig, int Ho, int Wo, int st, int p) {
    for (; oc < oe; oc++) {
        const int8_t *wk = w + (((size_t)oc * cig + ic) * 3 + kh) * 3;
        const int32_t w0 = wk[0], w1 = wk[1], w2 = wk[2];
        const int8_t *d = dq + (((size_t)n * Co + oc) * Ho + oh) * Wo;
        int32_t *rr = r - p;
        if (st == 1) {
            int ow = 0;
            for (; ow + 2 <= Wo; ow += 2, rr += 2) {
                const int32_t e0 = d[ow], e1 = d[ow + 1];
                rr[0] += w0 * e0;
                rr[1] += w1 * e0 + w0 * e1;
                rr[2] += w2 * e0 + w1 * e1;
                rr[3] += w2 * e1;
            }
            for (; ow < Wo; ow++, rr++) {
                const int32_t e = d[ow];
                rr[0] += w0 * e; rr[1] += w1 * e; rr[2] += w2 * e;
            }
        } else {
            for (int ow = 0; ow < Wo; ow++, rr += st) {
                const int32_t e = d[ow];
                rr[0] += w0 * e; rr[1] += w1 * e; rr[2] += w2 * e;
            }
        }
    }
}
/* one dx row from its int32 sums: the sums themselves (NOTE [ Integer dx ]) or q_put's */
Q_AI void q3_bi_store(ET_REAL *dr, const int32_t *r, ET_REAL s, int acc, int W) {
    if (sizeof(ET_REAL) == 4 && acc == Q_DX_INT) {  /* NOTE [ Integer dx ] */
        int j = 0;
        for (; j + 2 <= W; j += 2) {
            int64_t v2;
            memcpy(&v2, r + j, 8);
            memcpy(dr + j, &v2, 8);
        }
        if (j < W) memcpy(dr + j, r + j, 4);
        return;
    }
    for (int j = 0; j < W; j++) q_put(dr + j, r[j], s, acc);
}
#if ET_DSP
/* stride 2: output channels from oc of one kernel row kh into the row sums r, four, then
   two per pass (NOTE [ Paired stride-2 3x3 input gradient ]); returns the first one left */
Q_AI int q3_bi_pairs(const int8_t *dq, const int8_t *w, int32_t *r, int n, int ic, int kh,
                     int oh, int oc, int oe, int Co, int cig, int Ho, int Wo, int p) {
    for (; oc + 4 <= oe; oc += 4) {
        const int8_t *k0 = w + (((size_t)oc * cig + ic) * 3 + kh) * 3;
        const int8_t *k1 = k0 + (size_t)cig * 9, *k2 = k1 + (size_t)cig * 9;
        const int8_t *k3 = k2 + (size_t)cig * 9;
        const int16x2_t A0 = (int16x2_t)q_pack2(k0[0], k1[0]);
        const int16x2_t A1 = (int16x2_t)q_pack2(k0[1], k1[1]);
        const int16x2_t A2 = (int16x2_t)q_pack2(k0[2], k1[2]);
        const int16x2_t B0 = (int16x2_t)q_pack2(k2[0], k3[0]);
        const int16x2_t B1 = (int16x2_t)q_pack2(k2[1], k3[1]);
        const int16x2_t B2 = (int16x2_t)q_pack2(k2[2], k3[2]);
        const size_t HWo = (size_t)Ho * Wo;
        const int8_t *d0 = dq + (((size_t)n * Co + oc) * Ho + oh) * Wo;
        int32_t *rr = r - p;
        int16x2_t Ea = 0, Eb = 0;  /* the previous column's channel pairs */
        for (int ow = 0; ow < Wo; ow++, rr += 2) {
            const int16x2_t Fa = (int16x2_t)q_pack2(d0[ow], d0[HWo + ow]);
            const int16x2_t Fb =
                (int16x2_t)q_pack2(d0[2 * HWo + ow], d0[3 * HWo + ow]);
            rr[0] = __smlad(B2, Eb, __smlad(B0, Fb, __smlad(A2, Ea,
                                                          __smlad(A0, Fa, rr[0]))));
            rr[1] = __smlad(B1, Fb, __smlad(A1, Fa, rr[1]));
            Ea = Fa; Eb = Fb;
        }
        rr[0] = __smlad(B2, Eb, __smlad(A2, Ea, rr[0]));
    }
    for (; oc + 2 <= oe; oc += 2) {
        const int8_t *k0 = w + (((size_t)oc * cig + ic) * 3 + kh) * 3;
        const int8_t *k1 = k0 + (size_t)cig * 9;
        const int16x2_t W0 = (int16x2_t)q_pack2(k0[0], k1[0]);
        const int16x2_t W1 = (int16x2_t)q_pack2(k0[1], k1[1]);
        const int16x2_t W2 = (int16x2_t)q_pack2(k0[2], k1[2]);
        const int8_t *d0 = dq + (((size_t)n * Co + oc) * Ho + oh) * Wo;
        const int8_t *d1 = d0 + (size_t)Ho * Wo;
        int32_t *rr = r - p;
        int16x2_t Ep = 0;  /* (dq[oc][ow - 1], dq[oc + 1][ow - 1]) */
        for (int ow = 0; ow < Wo; ow++, rr += 2) {
            const int16x2_t E = (int16x2_t)q_pack2(d0[ow], d1[ow]);
            rr[0] = __smlad(W2, Ep, __smlad(W0, E, rr[0]));
            rr[1] = __smlad(W1, E, rr[1]);
            Ep = E;
        }
        rr[0] = __smlad(W2, Ep, rr[0]);
    }
    return oc;
}
#endif
static void q3_bwd_input(const int8_t *dq, ET_REAL s, const int8_t *w, ET_REAL *dx, int acc,
                         int8_t *dT, int B, int Ci, int H, int W, int Co, int Ho, int Wo, int st,
                         int p, int G) {
    const int cig = Ci / G, cog = Co / G;
    int32_t row[Q_ROWMAX + 4] __attribute__((aligned(8)));
#if ET_DSP
    if (dT && st == 1 && p == 1 && G == Ci && Co == Ci && Ho == H && Wo == W &&
        q_dw_bi_bytes(H, W) <= Q_DQ16_MAX) {  /* NOTE [ Depthwise input gradient as a forward ] */
        q3_bi_dw(dq, s, w, dx, acc, dT, B, Ci, H, W, Co);
        return;
    }
    if (dT && st == 2 && G == 1 && Co % 4 == 0 && p <= 1 && W >= 2 && acc == Q_DX_INT &&
        sizeof(ET_REAL) == 4) {  /* NOTE [ Stride-2 input gradient in the dx planes ] */
        for (int n = 0; n < B; n++)
            q3_bi_planes(dq + (size_t)n * Co * Ho * Wo, w,
                         (int32_t *)(void *)dx + (size_t)n * Ci * H * W, (uint32_t *)(void *)dT,
                         Ci, H, W, Co, Ho, Wo, p);
        return;
    }
    if (st != 2 || G != 1 || Co < 4) dT = 0;
#else
    dT = 0;
#endif
    for (int n = 0; n < B; n++)
    for (int ci = 0; ci < Ci; ci++) {
#if ET_DSP
        if (dT && ci == 0)  /* dq[n] unpacked (the last Co mod 4 channels are not used) */
            q3_bi_unpack((uint32_t *)(void *)dT, dq + (size_t)n * Co * Ho * Wo, Co, Ho * Wo);
#endif
        const int g = ci / cig, ic = ci % cig;
        uint32_t *wpk = dT ? (uint32_t *)(void *)dT + (size_t)(Co / 4) * 2 * Ho * Wo : 0;
#if ET_DSP
        if (wpk)  /* this input channel's weights as the passes' 16-bit pairs, once */
            q3_bi_wpack(wpk, w, cig, Co, ic);
#endif
        for (int ih = 0; ih < H; ih++) {
            for (int j = 0; j < W + 4; j += 2) {  /* two at a time: no call to memset */
                uint64_t z = 0;
                __asm__("" : "+r"(z));
                memcpy(row + j, &z, 8);
            }
            int32_t *r = row + 2;  /* r[-2 .. W+1]: taps outside the row land in the margin */
            for (int kh = 0; kh < 3; kh++) {
                const int t = ih + p - kh;  /* = oh * st */
                if (t < 0 || t % st) continue;
                const int oh = t / st;
                if (oh >= Ho) continue;
                int oc = g * cog;
#if ET_DSP
                if (dT) {  /* four output channels per pass from the unpacked dq */
                    const uint32_t *wk = wpk + (size_t)kh * (Co / 4) * 6;
                    const uint32_t *dk = (const uint32_t *)(void *)dT + (size_t)oh * Wo * 2;
                    for (; oc + 4 <= Co; oc += 4, wk += 6, dk += (size_t)2 * Ho * Wo) {
                        const int16x2_t A0 = (int16x2_t)wk[0], A1 = (int16x2_t)wk[1];
                        const int16x2_t A2 = (int16x2_t)wk[2], B0 = (int16x2_t)wk[3];
                        const int16x2_t B1 = (int16x2_t)wk[4], B2 = (int16x2_t)wk[5];
                        const uint32_t *d0 = dk;
                        int32_t *rr = r - p;
                        int32_t c = rr[0];  /* the even column's sum, carried */
                        int ow = 0;
                        for (; ow + 2 <= Wo; ow += 2)
                            q3_bi_col4x2(&d0, &rr, &c, A0, A1, A2, B0, B1, B2);
                        if (ow < Wo) q3_bi_col4(&d0, &rr, &c, A0, A1, A2, B0, B1, B2);
                        rr[0] = c;
                    }
                }
                if (st == 2)
                    oc = q3_bi_pairs(dq, w, r, n, ic, kh, oh, oc, (g + 1) * cog, Co, cig, Ho, Wo, p);
#endif
                q3_bi_rest(dq, w, r, n, ic, kh, oh, oc, (g + 1) * cog, Co, cig, Ho, Wo, st, p);
            }
            q3_bi_store(dx + (((size_t)n * Ci + ci) * H + ih) * W, r, s, acc, W);
        }
    }
}

/* dx = s_g * sum w * dq for any conv, gathered per input element (exact int32 sums) */
/* `pad`: the op's backward scratch (`backward_scratch_bytes`), 0 for none */
static void qconv_bwd_input(const int8_t *dq, ET_REAL s, const int8_t *w, ET_REAL *dx, int acc,
                            int8_t *pad, int B, int Ci, int H, int W, int Co, int Ho, int Wo,
                            int K, int st, int p, int G) {
    const int cig = Ci / G, cog = Co / G;
    if (s == 0) { q_zero(dx, acc, (size_t)B * Ci * H * W); return; }
    if (K == 1 && st == 1 && p == 0 && G == 1) {
        q1_bwd_input(dq, s, w, dx, acc, B, Ci, Co, H * W, (uint32_t *)(void *)pad);
        return;
    }
    if (K == 3 && (st == 1 || st == 2) && p <= 2 && W + 2 <= Q_ROWMAX && Wo * st <= W + 2) {
        q3_bwd_input(dq, s, w, dx, acc, pad, B, Ci, H, W, Co, Ho, Wo, st, p, G);
        return;
    }
    for (int n = 0; n < B; n++)
    for (int ci = 0; ci < Ci; ci++) {
        const int g = ci / cig, ic = ci % cig;
        for (int ih = 0; ih < H; ih++)
        for (int iw = 0; iw < W; iw++) {
            int32_t t = 0;
            for (int kh = 0; kh < K; kh++) {
                const int a = ih + p - kh;
                if (a < 0 || a % st || a / st >= Ho) continue;
                for (int kw = 0; kw < K; kw++) {
                    const int b = iw + p - kw;
                    if (b < 0 || b % st || b / st >= Wo) continue;
                    for (int oc = g * cog; oc < (g + 1) * cog; oc++)
                        t += w[(((size_t)oc * cig + ic) * K + kh) * K + kw]
                             * dq[(((size_t)n * Co + oc) * Ho + a / st) * Wo + b / st];
                }
            }
            q_put(dx + (((size_t)n * Ci + ci) * H + ih) * W + iw, t, s, acc);
        }
    }
}

/* G_W = s_g * sum dq * (x - zx) over the outputs whose tap is inside; the QAS-scaled SGD on
   the integer weights and bias, re-rounded. `pad`: scratch for one zx-padded input plane
   ((H + 2p) x (W + 2p) + Q_PAD_SLACK bytes; NOTE [ int8 SRAM of the C trainer ]) that a 3x3
   conv's fast path needs, 0 for none. */
static void qconv_update(const int8_t *dq, ET_REAL s, const int8_t *x, int zx, int8_t *w,
                         int32_t *b, const ET_REAL *inv_w, const ET_REAL *inv_b, ET_REAL lr,
                         int8_t *pad, int B, int Ci, int H, int W, int Co, int Ho, int Wo, int K,
                         int st, int p, int G) {
    const int cig = Ci / G, cog = Co / G;
    if (s == 0) return;  /* every gradient is 0: the step leaves every weight as it is */
    const int k1 = K == 1 && st == 1 && p == 0 && G == 1;
    const int k3 = K == 3 && (st == 1 || st == 2) && pad;
    int mm = 0, done_b = 0;  /* NOTE [ int8 mat-mult weight gradient ] */
#if ET_DSP
    mm = k3 && G == 1 && B == 1;
    if (mm)
        done_b = q_mm_update(dq, s, x, zx, w, b, inv_w, inv_b, lr, pad, Ci, H, W, Co, Ho, Wo,
                             st, p);
#endif
    int mm1 = 0;
#if ET_DSP
    mm1 = k1 && B == 1 && pad;
    if (mm1)
        done_b = q_mm1_update(dq, s, x, zx, w, b, inv_w, inv_b, lr, (uint32_t *)(void *)pad,
                              Ci, Co, H * W);
#endif
    if (k1 && !mm1) q1_update(dq, s, x, zx, w, inv_w, lr, B, Ci, Co, H * W);
    if (k3 && !mm) q3_update(dq, s, x, zx, w, inv_w, lr, B, Ci, H, W, Co, Ho, Wo, st, p, G, pad);
    if (done_b) return;  /* the mat-mult paths' dq pass stepped the biases */
    for (int oc = 0; oc < Co; oc++) {
        const int g = oc / cog;
        if (!k1 && !k3) for (int ic = 0; ic < cig; ic++)
        for (int kh = 0; kh < K; kh++) {
            int oh0, oh1;
            o_range(kh, st, p, H, Ho, &oh0, &oh1);
            for (int kw = 0; kw < K; kw++) {
                int ow0, ow1;
                o_range(kw, st, p, W, Wo, &ow0, &ow1);
                int32_t a = 0;
                for (int n = 0; n < B; n++) {
                    const int8_t *xc = x + ((size_t)n * Ci + g * cig + ic) * H * W;
                    for (int oh = oh0; oh < oh1; oh++) {
                        const int8_t *d = dq + (((size_t)n * Co + oc) * Ho + oh) * Wo;
                        const int8_t *xr = xc + ((oh * st - p + kh) * W - p + kw);
                        for (int ow = ow0; ow < ow1; ow++) a += d[ow] * (xr[ow * st] - zx);
                    }
                }
                const size_t i = (((size_t)oc * cig + ic) * K + kh) * K + kw;
                q_wstep(&w[i], a, q_stepper(s, inv_w[oc], lr));
            }
        }
        int32_t sb = 0;
        for (int n = 0; n < B; n++) sb += q_sum(dq + ((size_t)n * Co + oc) * Ho * Wo, Ho * Wo);
        q_bstep(&b[oc], sb, s, inv_b[oc], lr);
    }
}

/* dx[i] = s_g sum_o w[o][i] dq[o], two input features at a time */
static void qlinear_bwd_input(const int8_t *dq, ET_REAL s, const int8_t *w, ET_REAL *dx,
                              int acc, int B, int I, int O) {
    if (s == 0) { q_zero(dx, acc, (size_t)B * I); return; }
    for (int n = 0; n < B; n++) {
        const int8_t *d = dq + (size_t)n * O;
        for (int i = 0; i < I; i += 2) {
            const int i1 = i + 1 < I ? i + 1 : i;
            int32_t t0 = 0, t1 = 0;
            for (int o = 0; o < O; o++) {
                const int32_t e = d[o];
                t0 += w[(size_t)o * I + i] * e;
                t1 += w[(size_t)o * I + i1] * e;
            }
            q_put(dx + (size_t)n * I + i, t0, s, acc);
            if (i1 != i) q_put(dx + (size_t)n * I + i1, t1, s, acc);
        }
    }
}

/* G_W[o][i] = s_g sum_n dq[n][o] (x[n][i] - zx); at batch 1 each weight's step reads one dq */
static void qlinear_update(const int8_t *dq, ET_REAL s, const int8_t *x, int zx, int8_t *w,
                           int32_t *b, const ET_REAL *inv_w, const ET_REAL *inv_b, ET_REAL lr,
                           int B, int I, int O) {
    if (s == 0) return;
    for (int o = 0; o < O; o++) {
        int32_t sd = 0;
        for (int n = 0; n < B; n++) sd += dq[(size_t)n * O + o];
        if (sd == 0 && B == 1) continue;  /* dq = 0: no weight or bias of this row moves */
        int8_t *wr = w + (size_t)o * I;
        const q_step st = q_stepper(s, inv_w[o], lr);
        if (B == 1) {
            const int32_t e = dq[o];
            for (int i = 0; i < I; i++) q_wstep(&wr[i], e * (x[i] - zx), st);
        } else
            for (int i = 0; i < I; i++) {
                int32_t a = 0;
                for (int n = 0; n < B; n++)
                    a += dq[(size_t)n * O + o] * (x[(size_t)n * I + i] - zx);
                q_wstep(&wr[i], a, st);
            }
        q_bstep(&b[o], sd, s, inv_b[o], lr);
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
        for (int k = 0; k < K; k++) se += et_exp(zl[k] - m);
        const ET_REAL lse = et_log(se);
        loss += -((zl[y[n]] - m) - lse);
        if (dq) for (int k = 0; k < K; k++)
            dq[(size_t)n * K + k] = (et_exp((zl[k] - m) - lse) * ((ET_REAL)1 / B)
                                     - (k == y[n] ? (ET_REAL)1 / B : 0)) * s;
        if (correct && arg == y[n]) (*correct)++;
    }
    return loss / B;
}
