"""int8 (QAS) training code: the renderer for `edgetrain.quant`'s integer graphs.

The forward pass is the integer graph, bit for bit as NOTE [ int8 arithmetic, bit for bit ]
(edgetrain/quant/_graph.py) specifies it; the backward pass of the trainable ops is the float
surrogate of NOTE [ Training the int8 graph ] (edgetrain/quant/_train.py): a requantised
conv/linear passes `dy * M` where its output was not clamped and 0 where it was, add passes
`dy * s_in / s_out` likewise, average pooling `dy / (H*W)`; gradients w.r.t. the integer
weights are scaled by QAS (`s_W^-2`, biases `(s_x s_W)^-2`) and applied by SGD, then the
weights are re-rounded to int8 / int32 (round half away from zero; `WeightStorage.INT8`: no
float copy anywhere). Gradients are `double` on the host (to match the float64 simulation) and
`float` on Cortex-M (`ET_REAL`).

Memory: int8 activations (1 byte per element), a 1-byte "not clamped" mask per output element
of every op on the backward path, real-valued gradients only on that path, frozen int8 weights
and int32 biases in flash, trainable ones in SRAM; one arena as NOTE [ int8 SRAM of the C trainer ].

NOTE [ int8 SRAM of the C trainer ]
`int8_memory(graph, trainable, batch_size=, target=)` is the C trainer's memory, computed from
shapes only (no weight is rendered); `render_int8` lays its program out with the very same
function, so `Int8Memory.predicted_peak_sram_bytes` is exactly the build file's
`codegen_predicted_peak_sram_bytes`. It counts:
- the arena (`arena_bytes`): one step is a linear schedule, the forward ops (steps 0..F-1), the
  loss (step F), then the backward ops of the pruned backward in reverse (steps F+1..). Its
  buffers, each with a lifetime [first, last] step in which it is written or read:
  `a:<t>` int8 activations (B x numel bytes; the input batch, every op's output; an activation
  the backward reads -- the input of a trainable op -- lives until that backward step);
  `m:<t>` 1-byte "not clamped" masks of the ops on the backward path; `g:<t>` real-valued
  gradients (8 bytes on the host, 4 on Cortex-M); the dacc of a conv/linear on the backward
  path (dy x mask x M, element by element) overwrites its dy, which nothing reads after it, so
  it has no buffer; a conv whose output only a global average pool reads (mbv2's last 1x1
  conv, 1280 x 4 x 4 at 128x128) has neither dy nor dacc buffer: its dacc, the pool's dy / P
  times mask times M, is computed element by element where the conv's backward reads it
  (`dacc_at`, the same operations in the same order as the stored path, so bit for bit the
  same), and the pool's dy (B x C reals) lives until that step -- the 81,920 B the stored
  gradient took would otherwise dominate every update that reaches past mbv2's classifier;
  `z:<logits>` the loss's K reals of logits (not a stack array); `s:<op>`
  kernel scratch, which is
  * a frozen pointwise -> depthwise pair whose intermediate nothing else reads: fused, one
    expanded channel at a time (H x W bytes), the expanded tensor never exists (batch 1);
  * in-place frozen depthwise (TinyEngine's in-place depthwise): an op off the backward path
    whose input is read by nothing else (one consumer, not the graph input, not read by the
    backward) computes each output channel plane into one Ho x Wo plane and copies it over
    its input; in NCHW plane i = n*C + c lands at i*Ho*Wo, inside input planes <= i, already
    consumed (any stride, Ho*Wo <= H*W). Output and input share one buffer;
  * in-place frozen pointwise with Cout <= Cin (stride 1, same conditions): pixel by pixel,
    the Cin inputs of pixel q go to a Cin-byte temp, the Cout outputs are written at
    (n*Cout + c)*H*W + q, bytes of pixel q (already read) or of earlier pixels/samples.
  * the rings of the line-buffered chain (`line_buffer=True`, below): `s:<op>` for each chain
    op but the last, R x Co x Wo bytes (one sample's), live at the chain's step.
  An in-place chain x0 -> x1 -> .. -> xk (in-place outputs never grow) is one placement group
  at one base offset: xk's [0, size) is the buffer `a:xk`, and each xj's bytes above x(j+1)'s
  are the buffer `a:xj`, live from x0's first step to xj's last (so a shrinking chain frees its
  top as it goes; a member with no bytes of its own has no buffer). Groups are placed as
  NOTE [ Arena assignment ] (edgetrain/codegen/_lower.py) places buffers: the lowest
  8-byte-aligned base at which none of its buffers overlaps a placed buffer of intersecting
  lifetime; in four orders (largest first, first use, longest lifetime, size x lifetime),
  keeping the smallest arena (stopping early at the bound). `peak_live_bytes`, the most
  (8-byte-rounded) buffer bytes live at one step, is the bound no packing can beat.
- `trainable_bytes`: the trainable ops' int8 weights and int32 biases (`static` arrays in
  .data, updated in place; frozen ones are `const`, in flash);
- 4 x B bytes of labels and RUNTIME_RESERVE_BYTES (edgetrain/codegen/_render.py), which covers
  the platform's other statics (~130 B) and most of the stack (~500 B measured on Cortex-M7:
  no kernel keeps a large local); the measured peak (`mcu_run`: .data + .bss + the painted
  stack's high-water mark) is within 0.1 % of the prediction for mbv2-w0.35 at 128x128.
Not counted: the requantisation constants, QAS scales and frozen weights (const, flash), the
baked samples (flash).

Line buffering (`line_buffer=True` on `int8_memory` and `render_int8`; off by default, and then
every number above is unchanged -- the TTE strategy's prediction does not stream rows): MCUNetV2's
row-streamed execution of the frozen prefix. The line-bufferable chain is the longest run of
convs (standard / depthwise / pointwise, any stride and padding) c0 -> c1 -> .. starting at a
reader of the graph input, each frozen and off the backward path, each output but the last read
by exactly one op, the next conv of the run (so no backward reads it). The chain runs as one
forward step (at its last op's step; Int8Kernel.LINE_BUFFERED): the graph input and the last
op's output are materialised in full; op j's output (j < last) exists only as a ring of
R_j = min(K_(j+1), H_(j+1)) rows (row r in slot r mod R_j, Co x Wo bytes; a pointwise reader
needs one row), the arena buffer `s:c_j`. The last op produces its rows in order; before op j
computes its row r it makes op j-1 produce its rows up to min(H-1, r*s - p + K - 1), in order,
which leaves exactly rows [r*s - p, r*s - p + K - 1] (clipped to [0, H)) in the ring (R_j >= K
and no row is produced twice). Each output element is the same int32 sum over the same
in-bounds taps as qconv_fwd's (zero-point padding: out-of-bounds taps are skipped, `x - zx` = 0),
so the results are the unfused program's bit for bit. Batches loop over samples, reusing the
rings. The chain is walked with an explicit cursor (2 ints per op on the stack, no recursion).
Which prefix: every length 2 .. the longest chain (and none) is laid out, and the one with the
smallest arena is kept (the shortest of equal ones: a chain that does not pay is not used);
`Int8Memory.kernels` says which ops stream. mbv2-w0.35 at 3x128x128, classifier only, batch 1,
Cortex-M7: the chain is features.0.0 .. features.2.conv.2.0 (6 convs; rings 3x16x64 + 16x64 +
8x64 + 3x48x64 + 48x32 B), live at its step: input 49,152 + rings 15,360 + output 8x32x32 =
8,192 = the arena, 72,704 B (the busiest step; a 3-op chain would leave 86,016 B), predicted peak
86,060 B, measured under QEMU 86,236 B (off: 114,688 / 128,044 / 128,140 B).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgetrain.codegen._errors import UnsupportedPlanError
from edgetrain.codegen._lower import ALIGN, Buffer
from edgetrain.codegen._platform import render_platform
from edgetrain.codegen._render import MIN_STACK_BYTES, RUNTIME_RESERVE_BYTES, _bytes
from edgetrain.codegen._targets import Target, TargetKind, get_target


@dataclass(frozen=True)
class Int8Spec:
    """Quantised images (int8, N x C x H x W, from `QuantGraph.quantize_input`) and labels."""

    train_q: np.ndarray
    train_y: np.ndarray
    test_q: np.ndarray
    test_y: np.ndarray
    steps: int
    lr: float
    batch_size: int = 1
    qas: bool = True
    log_every: int = 1
    dump_params: bool = False


INT8_KERNELS = r"""
#include <math.h>
#include <string.h>
#include <stdint.h>

static inline int64_t rq(int64_t acc, int32_t m0, int32_t shift) {
    const int n = 31 - shift;
    return (acc * (int64_t)m0 + ((int64_t)1 << (n - 1))) >> n;
}
static inline int8_t clamp8(int64_t v, int lo, int hi) {
    return (int8_t)(v < lo ? lo : (v > hi ? hi : v));
}
static inline ET_REAL round_half_away(ET_REAL v) {
    return v >= 0 ? floor(v + 0.5) : -floor(-v + 0.5);
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

static void qconv_fwd(const int8_t *x, int zx, const int8_t *w, const int32_t *b,
                      const int32_t *m0, const int32_t *sh, int zy, int lo, int hi,
                      int8_t *y, uint8_t *mask, int B, int Ci, int H, int W, int Co, int Ho,
                      int Wo, int K, int s, int p, int G) {
    const int cig = Ci / G, cog = Co / G;
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

static void qlinear_fwd(const int8_t *x, int zx, const int8_t *w, const int32_t *b,
                        const int32_t *m0, const int32_t *sh, int zy, int lo, int hi,
                        int8_t *y, uint8_t *mask, int B, int I, int O) {
    for (int n = 0; n < B; n++)
    for (int o = 0; o < O; o++) {
        int32_t acc = b[o];
        for (int i = 0; i < I; i++) acc += (x[(size_t)n * I + i] - zx) * w[(size_t)o * I + i];
        const int64_t pre = rq(acc, m0[o], sh[o]) + zy;
        y[(size_t)n * O + o] = clamp8(pre, lo, hi);
        if (mask) mask[(size_t)n * O + o] = (uint8_t)(pre >= lo && pre <= hi);
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
        ET_REAL *dxg = dx + ((size_t)n * Ci + g * cig) * H * W;
        for (int oh = 0; oh < Ho; oh++) {
            const int kh0 = k_lo(oh, s, p), kh1 = k_hi(oh, s, p, H, K), ih0 = oh * s - p;
            for (int ow = 0; ow < Wo; ow++) {
                const int kw0 = k_lo(ow, s, p), kw1 = k_hi(ow, s, p, W, K), iw0 = ow * s - p;
                const ET_REAL d = dacc_at(dacc, gd, o0 + oh * Wo + ow, (size_t)n * Co + oc, oc);
                for (int ic = 0; ic < cig; ic++) {
                    ET_REAL *dr0 = dxg + (size_t)ic * H * W;
                    const int8_t *wc = wo + ic * K * K;
                    for (int kh = kh0; kh < kh1; kh++) {
                        ET_REAL *dr = dr0 + (ih0 + kh) * W + iw0;
                        for (int kw = kw0; kw < kw1; kw++) dr[kw] += d * (ET_REAL)wc[kh * K + kw];
                    }
                }
            }
        }
    }
}

/* G_W = sum dacc * (x - zx); QAS-scaled SGD on the integer weights, then re-rounding */
static void qconv_update(const ET_REAL *dacc, const qgap_dacc *gd, const int8_t *x, int zx,
                         int8_t *w, int32_t *b,
                         const ET_REAL *inv_w, const ET_REAL *inv_b, ET_REAL lr,
                         int B, int Ci, int H, int W, int Co, int Ho, int Wo, int K, int s,
                         int p, int G) {
    const int cig = Ci / G, cog = Co / G;
    for (int oc = 0; oc < Co; oc++) {
        const int g = oc / cog;
        for (int ic = 0; ic < cig; ic++)
        for (int kh = 0; kh < K; kh++)
        for (int kw = 0; kw < K; kw++) {
            ET_REAL acc = 0;
            for (int n = 0; n < B; n++) {
                const size_t o0 = ((size_t)n * Co + oc) * Ho * Wo;
                const int8_t *xc = x + ((size_t)n * Ci + g * cig + ic) * H * W;
                for (int oh = 0; oh < Ho; oh++) {
                    const int ih = oh * s - p + kh;
                    if (ih < 0 || ih >= H) continue;
                    for (int ow = 0; ow < Wo; ow++) {
                        const int iw = ow * s - p + kw;
                        if (iw < 0 || iw >= W) continue;
                        acc += dacc_at(dacc, gd, o0 + oh * Wo + ow, (size_t)n * Co + oc, oc)
                               * (ET_REAL)(xc[ih * W + iw] - zx);
                    }
                }
            }
            const size_t i = (((size_t)oc * cig + ic) * K + kh) * K + kw;
            ET_REAL v = round_half_away((ET_REAL)w[i] + (-lr) * (acc * inv_w[oc]));
            w[i] = (int8_t)(v < -127 ? -127 : (v > 127 ? 127 : v));
        }
        ET_REAL acc = 0;
        for (int n = 0; n < B; n++)
            for (int q = 0; q < Ho * Wo; q++)
                acc += dacc_at(dacc, gd, ((size_t)n * Co + oc) * Ho * Wo + q, (size_t)n * Co + oc, oc);
        ET_REAL v = round_half_away((ET_REAL)b[oc] + (-lr) * (acc * inv_b[oc]));
        b[oc] = (int32_t)(v < -2147483648.0 ? -2147483648.0 : (v > 2147483647.0 ? 2147483647.0 : v));
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
        b[o] = (int32_t)(v < -2147483648.0 ? -2147483648.0 : (v > 2147483647.0 ? 2147483647.0 : v));
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
"""


def _hexd(x: float) -> str:
    return float(x).hex()


def _ints(v: np.ndarray) -> str:
    vals = [str(int(x)) for x in np.asarray(v).reshape(-1).tolist()]
    return ",\n".join(",".join(vals[i:i + 32]) for i in range(0, len(vals), 32))


def _reals(v) -> str:
    return ", ".join(_hexd(x) for x in np.asarray(v, dtype=np.float64).reshape(-1).tolist())


class Int8Kernel(enum.Enum):
    """How the C trainer runs one forward op (NOTE [ int8 SRAM of the C trainer ])."""

    OUT_OF_PLACE = "out-of-place"  # its own output buffer
    FUSED_INTO_DEPTHWISE = "fused-into-depthwise"  # a pointwise run inside its depthwise reader
    FUSED_POINTWISE_DEPTHWISE = "fused-pointwise-depthwise"  # the depthwise running the pair
    IN_PLACE_DEPTHWISE = "in-place-depthwise"
    IN_PLACE_POINTWISE = "in-place-pointwise"
    LINE_BUFFERED = "line-buffered"  # in the line-buffered chain of frozen convs at the input


@dataclass(frozen=True)
class Int8Memory:
    """The int8 C trainer's SRAM, from shapes (NOTE [ int8 SRAM of the C trainer ])."""

    target: str
    batch_size: int
    arena_bytes: int
    trainable_bytes: int
    labels_bytes: int
    runtime_reserve_bytes: int
    predicted_peak_sram_bytes: int  # arena + trainable + labels + runtime reserve
    peak_live_bytes: int  # the most (aligned) buffer bytes live at one step: the arena's bound
    buffers: tuple[Buffer, ...]  # arena buffers by offset (in-place outputs share their input's)
    kernels: tuple[tuple[str, Int8Kernel], ...]  # forward op name -> how it runs

    def kernel(self, op_name: str) -> Int8Kernel:
        for name, k in self.kernels:
            if name == op_name:
                return k
        raise UnsupportedPlanError(f"no op {op_name!r} in this int8 program; its ops: "
                                   f"{', '.join(n for n, _ in self.kernels)}")


@dataclass(frozen=True)
class _Layout:
    memory: Int8Memory
    rg: frozenset  # tensors whose gradient the backward computes
    bwd_ops: tuple  # ops on the backward path, in backward order
    fused: dict  # depthwise op name -> the pointwise op name it runs
    kernels: dict  # op name -> Int8Kernel
    alias: dict  # buffer key -> the arena buffer it lives in
    offsets: dict  # arena buffer name -> offset
    numel: dict  # tensor -> B x elements
    tensors: dict  # tensor name -> QTensor
    chain: tuple  # the line-buffered chain's ops, in order (empty: none)
    rings: dict  # chain op name (all but the last) -> rows of its output in its ring
    gap_of: dict  # conv op name -> the global average pool whose backward it fuses


def _inputs(op) -> list[str]:
    return [op.a, op.b] if hasattr(op, "a") else [op.input]


def _check(graph, trainable: Sequence[str], batch_size: int) -> None:
    kinds = {type(op).__name__ for op in graph.ops}
    if not kinds <= {"QConv2d", "QLinear", "QAdd", "QGlobalAvgPool"}:
        raise UnsupportedPlanError(f"int8 graph ops {sorted(kinds)}: the C generator knows "
                                   "QConv2d, QLinear, QAdd, QGlobalAvgPool")
    names = [op.name for op in graph.weighted_ops]
    bad = [t for t in trainable if t not in names]
    if bad or not trainable:
        raise UnsupportedPlanError(f"trainable int8 layers {list(trainable)}: choose among "
                                   f"{', '.join(names)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise UnsupportedPlanError(f"batch size {batch_size!r} must be a positive integer")


def _al(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class _Seg:
    """A buffer of a placement group: `rel` bytes above the group's base offset."""

    name: str
    rel: int
    nbytes: int
    first: int
    last: int


def _place(groups: Sequence[tuple[_Seg, ...]]) -> list[Buffer]:
    """NOTE [ Arena assignment ]'s placement, group by group in the given order: the lowest
    8-byte-aligned base at which no segment overlaps a placed buffer of intersecting lifetime
    (a group of one segment is one buffer; an in-place chain is several, at one base)."""
    placed: list[Buffer] = []
    for segs in groups:
        conf = [[(b.offset, b.offset + _al(b.nbytes)) for b in placed
                 if not (b.last < g.first or b.first > g.last)] for g in segs]
        cands = sorted({0} | {hi - g.rel for g, cs in zip(segs, conf) for _, hi in cs
                              if hi >= g.rel})
        for base in cands:
            if all(hi <= base + g.rel or base + g.rel + _al(g.nbytes) <= lo
                   for g, cs in zip(segs, conf) for lo, hi in cs):
                break
        placed.extend(Buffer(g.name, g.nbytes, g.first, g.last, base + g.rel) for g in segs)
    return sorted(placed, key=lambda b: (b.offset, b.name))


def _pack(groups: Sequence[tuple[_Seg, ...]]) -> tuple[list[Buffer], int]:
    """The smallest arena of a few placement orders; returns (buffers, peak live bytes)."""
    last = max(g.last for segs in groups for g in segs)
    live = [0] * (last + 1)
    for segs in groups:
        for g in segs:
            for t in range(g.first, g.last + 1):
                live[t] += _al(g.nbytes)
    bound = max(live)

    def arena(bufs: list[Buffer]) -> int:
        return max(b.offset + b.nbytes for b in bufs)

    def size(segs) -> int:
        return max(g.rel + g.nbytes for g in segs)

    def first(segs) -> int:
        return min(g.first for g in segs)

    def length(segs) -> int:
        return max(g.last for g in segs) - first(segs) + 1

    orders = (
        lambda gs: (-size(gs), first(gs), gs[0].name),  # largest first (TFLite Micro's)
        lambda gs: (first(gs), -size(gs), gs[0].name),  # first use
        lambda gs: (-length(gs), -size(gs), gs[0].name),  # longest lifetime
        lambda gs: (-size(gs) * length(gs), gs[0].name),  # size x lifetime
    )
    best: list[Buffer] = []
    for key in orders:
        bufs = _place(sorted(groups, key=key))
        if not best or arena(bufs) < arena(best):
            best = bufs
        if arena(best) <= bound:
            break
    return best, bound


def _grad_and_consumers(graph, trainable: Sequence[str]) -> tuple[set, dict]:
    rg: set[str] = set()
    for op in graph.ops:
        if getattr(op, "name", None) in trainable or any(i in rg for i in _inputs(op)):
            rg.add(op.output)
    consumers: dict[str, int] = {}
    for op in graph.ops:
        for i in _inputs(op):
            consumers[i] = consumers.get(i, 0) + 1
    return rg, consumers


def _pool_fused(graph, rg, consumers: dict) -> dict:
    """Convs on the backward path whose output only a global average pool reads: their dacc is
    computed from the pool's dy where it is used (NOTE [ int8 SRAM of the C trainer ])."""
    by_out = {op.output: op for op in graph.ops}
    out = {}
    for op in graph.ops:
        if type(op).__name__ != "QGlobalAvgPool" or op.input not in rg:
            continue
        src = by_out.get(op.input)
        if src is not None and type(src).__name__ == "QConv2d" and consumers.get(op.input) == 1:
            out[src.name] = op
    return out


def _max_chain(graph, trainable: Sequence[str]) -> list[str]:
    """The longest line-bufferable chain (NOTE [ int8 SRAM of the C trainer ]): frozen convs
    off the backward path from the graph input, each output read only by the next one."""
    rg, consumers = _grad_and_consumers(graph, trainable)

    def ok(op) -> bool:
        return type(op).__name__ == "QConv2d" and op.name not in trainable \
            and op.output not in rg

    readers: dict[str, list] = {}
    for op in graph.ops:
        for i in _inputs(op):
            readers.setdefault(i, []).append(op)
    first = [op for op in readers.get(graph.input, []) if ok(op)]
    if not first:
        return []
    chain = [first[0]]
    while True:
        t = chain[-1].output
        nxt = readers.get(t, [])
        if t == graph.output or consumers.get(t, 0) != 1 or len(nxt) != 1 or not ok(nxt[0]):
            break
        chain.append(nxt[0])
    return [op.name for op in chain]


def _best_layout(graph, trainable: Sequence[str], B: int, tgt: Target,
                 line_buffer: bool) -> _Layout:
    """Without `line_buffer`: the plain layout. With it: the chain length (none, or 2 .. the
    longest chain) whose arena is smallest (the shortest of equal ones)."""
    best = _layout(graph, trainable, B, tgt, ())
    if not line_buffer:
        return best
    chain = _max_chain(graph, trainable)
    for n in range(2, len(chain) + 1):
        lay = _layout(graph, trainable, B, tgt, tuple(chain[:n]))
        if lay.memory.arena_bytes < best.memory.arena_bytes:
            best = lay
    return best


def _layout(graph, trainable: Sequence[str], B: int, tgt: Target,
            chain: tuple[str, ...]) -> _Layout:
    _check(graph, trainable, B)
    T = {t.name: t for t in graph.tensors}
    numel = {k: B * math.prod(t.shape) for k, t in T.items()}
    rg, consumers = _grad_and_consumers(graph, trainable)
    bwd_ops = tuple(op for op in reversed(graph.ops) if op.output in rg)
    in_chain = set(chain)
    ops_by_name = {op.name: op for op in graph.ops}
    rings: dict[str, int] = {}  # chain op -> rows of its output the next op's window spans
    for a, b in zip(chain, chain[1:]):
        nb = ops_by_name[b]
        rings[a] = min(int(nb.weight.shape[-1]), T[nb.input].shape[1])
    bwd_reads = {op.input for op in graph.ops if getattr(op, "name", None) in trainable}
    gap_of = _pool_fused(graph, rg, consumers)
    # frozen pointwise -> depthwise pairs whose intermediate nothing else reads: fused
    fused: dict[str, str] = {}  # depthwise op name -> pointwise op name
    by_out = {op.output: op for op in graph.ops}
    for op in graph.ops:
        if type(op).__name__ != "QConv2d" or op.kind.value != "depthwise" or op.output in rg \
                or op.name in in_chain:
            continue
        src = by_out.get(op.input)
        if (src is not None and type(src).__name__ == "QConv2d" and src.name not in in_chain
                and src.kind.value == "pointwise" and src.output not in rg
                and consumers.get(src.output, 0) == 1 and B == 1):
            fused[op.name] = src.name
    fused_src = set(fused.values())
    kernels: dict[str, Int8Kernel] = {}
    for op in graph.ops:
        name = op.name
        kernels[name] = Int8Kernel.OUT_OF_PLACE
        if name in in_chain:
            kernels[name] = Int8Kernel.LINE_BUFFERED
            continue
        if name in fused:
            kernels[name] = Int8Kernel.FUSED_POINTWISE_DEPTHWISE
            continue
        if name in fused_src:
            kernels[name] = Int8Kernel.FUSED_INTO_DEPTHWISE
            continue
        if type(op).__name__ != "QConv2d" or op.output in rg:
            continue
        x = op.input
        if x == graph.input or consumers.get(x, 0) != 1 or x in bwd_reads:
            continue
        ci, h, w = T[x].shape
        co, ho, wo = T[op.output].shape
        if op.kind.value == "depthwise" and ci == co and ho * wo <= h * w:
            kernels[name] = Int8Kernel.IN_PLACE_DEPTHWISE
        elif (op.kind.value == "pointwise" and op.groups == 1 and op.stride == 1
              and op.padding == 0 and op.weight.shape[-1] == 1 and (ho, wo) == (h, w)
              and co <= ci):
            kernels[name] = Int8Kernel.IN_PLACE_POINTWISE
    # in-place outputs live in their input's buffer
    parent: dict[str, str] = {}

    def root(k: str) -> str:
        while k in parent:
            k = parent[k]
        return k

    chains: dict[str, list[str]] = {}  # first tensor's key -> the keys sharing its storage
    for op in graph.ops:
        if kernels[op.name] in (Int8Kernel.IN_PLACE_DEPTHWISE, Int8Kernel.IN_PLACE_POINTWISE):
            r = root("a:" + op.input)
            parent["a:" + op.output] = r
            chains.setdefault(r, [r]).append("a:" + op.output)
    real = 8 if tgt.kind is TargetKind.HOST else 4
    sizes: dict[str, int] = {}
    span: dict[str, list[int]] = {}

    def use(key: str, step: int, nbytes: int) -> None:
        sizes[key] = max(sizes.get(key, 0), nbytes)
        s = span.setdefault(key, [step, step])
        s[0], s[1] = min(s[0], step), max(s[1], step)

    use("a:" + graph.input, 0, numel[graph.input])
    srcs = {op.name: op for op in graph.ops}
    for i, op in enumerate(graph.ops):
        kind = kernels[op.name]
        if kind is Int8Kernel.FUSED_INTO_DEPTHWISE:
            continue  # runs inside the depthwise op that reads it
        if kind is Int8Kernel.LINE_BUFFERED and op.name != chain[-1]:
            continue  # the whole chain runs at its last op's step
        ins = _inputs(op)
        if kind is Int8Kernel.LINE_BUFFERED:
            ins = [graph.input]
            for a in chain[:-1]:  # one sample's rings (the chain loops over the batch)
                co, _, wo = T[ops_by_name[a].output].shape
                use("s:" + a, i, rings[a] * co * wo)
        elif kind is Int8Kernel.FUSED_POINTWISE_DEPTHWISE:
            ins = [srcs[fused[op.name]].input]
            use("s:" + op.name, i, numel[op.input] // T[op.input].shape[0])
        elif kind is Int8Kernel.IN_PLACE_DEPTHWISE:
            use("s:" + op.name, i, math.prod(T[op.output].shape[1:]))
        elif kind is Int8Kernel.IN_PLACE_POINTWISE:
            use("s:" + op.name, i, T[op.input].shape[0])
        for t in ins:
            use("a:" + t, i, numel[t])
        use("a:" + op.output, i, numel[op.output])
        if op.output in rg and type(op).__name__ != "QGlobalAvgPool":
            use("m:" + op.output, i, numel[op.output])
    nf = len(graph.ops)
    K = graph.tensor(graph.output).shape[-1]
    use("a:" + graph.output, nf, numel[graph.output])  # the loss reads the logits
    use("z:" + graph.output, nf, K * real)  # the loss's logits scratch
    use("g:" + graph.output, nf, numel[graph.output] * real)
    pooled = {gap.input for gap in gap_of.values()}
    for k, op in enumerate(bwd_ops):
        s = nf + 1 + k
        kind = type(op).__name__
        if op.name not in gap_of:
            use("g:" + op.output, s, numel[op.output] * real)
        if kind in ("QConv2d", "QLinear"):
            use("m:" + op.output, s, numel[op.output])
            if op.name in gap_of:  # dacc from the pool's dy, element by element: no buffer
                use("g:" + gap_of[op.name].output, s, numel[gap_of[op.name].output] * real)
            else:
                parent["d:" + op.output] = "g:" + op.output  # dacc overwrites dy (element-wise)
            if op.name in trainable:
                use("a:" + op.input, s, numel[op.input])
            if op.input in rg:
                use("g:" + op.input, s, numel[op.input] * real)
        elif kind == "QAdd":
            use("m:" + op.output, s, numel[op.output])
            for t in (op.a, op.b):
                if t in rg:
                    use("g:" + t, s, numel[t] * real)
        else:
            if op.input in rg and op.input not in pooled:
                use("g:" + op.input, s, numel[op.input] * real)
    # an in-place chain x0 -> x1 -> .. -> xk (sizes never grow) is one group at one base: xj's
    # bytes above x(j+1)'s live from x0's first step to xj's last, xk's [0, size) to its last
    groups: list[tuple[_Seg, ...]] = []
    members = {k for c in chains.values() for k in c}
    for key in sizes:
        if key not in members:
            groups.append((_Seg(key, 0, sizes[key], span[key][0], span[key][1]),))
    for c in chains.values():
        f0 = span[c[0]][0]
        segs = []
        for j, key in enumerate(c):
            lo = _al(sizes[c[j + 1]]) if j + 1 < len(c) else 0
            if sizes[key] > lo:
                segs.append(_Seg(key, lo, sizes[key] - lo, f0, span[key][1]))
        groups.append(tuple(reversed(segs)))
    bufs, bound = _pack(groups)
    arena = max(b.offset + b.nbytes for b in bufs)
    trainable_bytes = sum(op.weight.numel() + 4 * op.bias.numel()
                          for op in graph.weighted_ops if op.name in trainable)
    mem = Int8Memory(
        target=tgt.name, batch_size=B, arena_bytes=arena, trainable_bytes=trainable_bytes,
        labels_bytes=4 * B, runtime_reserve_bytes=RUNTIME_RESERVE_BYTES,
        predicted_peak_sram_bytes=arena + trainable_bytes + 4 * B + RUNTIME_RESERVE_BYTES,
        peak_live_bytes=bound, buffers=tuple(bufs),
        kernels=tuple((op.name, kernels[op.name]) for op in graph.ops))
    keys = {k for op in graph.ops for t in (*_inputs(op), op.output)
            for k in ("a:" + t, "g:" + t, "m:" + t, "d:" + t, "z:" + t)}
    keys |= {"s:" + op.name for op in graph.ops}
    offsets = {b.name: b.offset for b in bufs}
    for c in chains.values():  # every member of a chain starts at the group's base
        offsets[c[0]] = min(offsets[k] for k in c if k in offsets)
    alias = {k: root(k) for k in keys if root(k) in offsets}
    return _Layout(mem, frozenset(rg), bwd_ops, fused, kernels, alias, offsets, numel, T,
                   tuple(chain), rings, gap_of)


def _check_flag(line_buffer) -> None:
    if not isinstance(line_buffer, bool):
        raise UnsupportedPlanError(f"line_buffer={line_buffer!r} must be True or False")


def int8_memory(graph, trainable: Sequence[str], *, batch_size: int = 1,
                target: "str | Target" = "cortex-m7", line_buffer: bool = False) -> Int8Memory:
    """The SRAM of the int8 C trainer `render_int8` writes for `graph` (an
    `edgetrain.quant.QuantGraph`) with the conv/linear ops named in `trainable` updated, from
    shapes only; NOTE [ int8 SRAM of the C trainer ] says what it counts. `line_buffer`
    streams the frozen conv prefix row by row (the chain length that minimises the arena)."""
    _check_flag(line_buffer)
    return _best_layout(graph, list(trainable), batch_size, get_target(target),
                        line_buffer).memory


def render_int8(graph, trainable: Sequence[str], target: "str | Target", spec: Int8Spec, *,
                device_sram_bytes: int = 0, device_flash_bytes: int = 0,
                device_name: str = "", line_buffer: bool = False) -> dict[str, str]:
    """Render int8 QAS training of `graph` (an `edgetrain.quant.QuantGraph`; read, not
    changed) with the conv/linear ops named in `trainable` updated on the device;
    `line_buffer` as `int8_memory`'s."""
    _check_flag(line_buffer)
    tgt = get_target(target)
    trainable = list(trainable)
    _check(graph, trainable, spec.batch_size)
    if spec.steps <= 0 or not spec.lr > 0:
        raise UnsupportedPlanError(f"steps {spec.steps}, lr {spec.lr} and batch size "
                                   f"{spec.batch_size} must be positive")
    if tgt.kind is TargetKind.CORTEX_M and (device_sram_bytes <= 0 or device_flash_bytes <= 0):
        raise UnsupportedPlanError("a Cortex-M target needs the device's SRAM and flash sizes")
    B = spec.batch_size
    lay = _best_layout(graph, trainable, B, tgt, line_buffer)
    mem = lay.memory
    T, numel, rg, bwd_ops, fused = lay.tensors, lay.numel, lay.rg, lay.bwd_ops, lay.fused
    srcs = {op.name: op for op in graph.ops}
    K = graph.tensor(graph.output).shape[-1]
    bufs = mem.buffers
    arena = mem.arena_bytes
    off = {k: lay.offsets[r] for k, r in lay.alias.items()}

    def A(key: str, ctype: str) -> str:
        return f"(({ctype} *)(et_arena + {off[key]}))"

    arrays, fwd, bwd = [], [], []
    descs: list[str] = []  # the line-buffered chain's ops (qlb_op), in order
    info: dict[str, tuple] = {}
    const_bytes = 0
    dumps = []
    for op in graph.ops:
        kind = type(op).__name__
        y = A("a:" + op.output, "int8_t") if ("a:" + op.output) in off else "0"
        mask = A("m:" + op.output, "uint8_t") if ("m:" + op.output) in off and \
            op.output in rg else "0"
        zy = T[op.output].zero_point
        if kind in ("QConv2d", "QLinear"):
            sym = "q_" + "".join(c if c.isalnum() else "_" for c in op.name)
            tr = op.name in trainable
            q = "" if tr else "const "
            w, b = np.asarray(op.weight), np.asarray(op.bias)
            arrays.append(f"static {q}int8_t {sym}_w[{w.size}] = {{\n{_ints(w)}\n}};")
            arrays.append(f"static {q}int32_t {sym}_b[{b.size}] = {{ {_ints(b)} }};")
            arrays.append(f"static const int32_t {sym}_m0[{b.size}] = {{ {_ints(op.multiplier)} }};")
            arrays.append(f"static const int32_t {sym}_sh[{b.size}] = {{ {_ints(op.shift)} }};")
            if tr:
                dumps.append(f'    dump("{op.name}", {sym}_w, {w.size}, {sym}_b, {b.size});')
            else:
                const_bytes += w.size + 4 * b.size
            zx = T[op.input].zero_point
            x = A("a:" + op.input, "int8_t") if ("a:" + op.input) in off else "0"
            if kind == "QConv2d":
                ci, h, wd = T[op.input].shape
                co, ho, wo = T[op.output].shape
                k = w.shape[-1]
                dims = f"{B}, {ci}, {h}, {wd}, {co}, {ho}, {wo}, {k}, {op.stride}, {op.padding}, {op.groups}"
                how = lay.kernels[op.name]
                if how is Int8Kernel.FUSED_INTO_DEPTHWISE:
                    pass  # emitted with its depthwise reader
                elif how is Int8Kernel.LINE_BUFFERED:
                    descs.append(
                        f"{{ {sym}_w, {sym}_b, {sym}_m0, {sym}_sh, {zx}, {zy}, {op.act_min}, "
                        f"{op.act_max}, {ci}, {h}, {wd}, {co}, {ho}, {wo}, {k}, {op.stride}, "
                        f"{op.padding}, {op.groups}, "
                        + (f"{A('s:' + op.name, 'int8_t')}, {lay.rings[op.name]} }}"
                           if op.name in lay.rings else "0, 0 }"))
                    if op.name == lay.chain[-1]:
                        n = len(lay.chain)
                        fwd.append(f"{{ int st[{2 * n}]; qlb_chain(q_lb, {n}, st, "
                                   f"{A('a:' + graph.input, 'int8_t')}, {y}, {B}); }}")
                elif how is Int8Kernel.IN_PLACE_DEPTHWISE:
                    fwd.append(f"qdw_inplace_fwd({x}, {zx}, {sym}_w, {sym}_b, {sym}_m0, "
                               f"{sym}_sh, {zy}, {op.act_min}, {op.act_max}, "
                               f"{A('s:' + op.name, 'int8_t')}, {B}, {ci}, {h}, {wd}, {ho}, "
                               f"{wo}, {k}, {op.stride}, {op.padding});")
                elif how is Int8Kernel.IN_PLACE_POINTWISE:
                    fwd.append(f"qpw_inplace_fwd({x}, {zx}, {sym}_w, {sym}_b, {sym}_m0, "
                               f"{sym}_sh, {zy}, {op.act_min}, {op.act_max}, "
                               f"{A('s:' + op.name, 'int8_t')}, {B}, {ci}, {co}, {h * wd});")
                elif how is Int8Kernel.FUSED_POINTWISE_DEPTHWISE:
                    a = srcs[fused[op.name]]
                    sa = info[a.name][0]
                    xa = A("a:" + a.input, "int8_t")
                    cin = T[a.input].shape[0]
                    fwd.append(
                        f"qpwdw_fwd({xa}, {T[a.input].zero_point}, {sa}_w, {sa}_b, {sa}_m0, "
                        f"{sa}_sh, {T[a.output].zero_point}, {a.act_min}, {a.act_max}, {sym}_w, "
                        f"{sym}_b, {sym}_m0, {sym}_sh, {zy}, {op.act_min}, {op.act_max}, {y}, "
                        f"{A('s:' + op.name, 'int8_t')}, {B}, {cin}, {h}, {wd}, {co}, {ho}, {wo}, "
                        f"{k}, {op.stride}, {op.padding});")
                else:
                    fwd.append(f"qconv_fwd({x}, {zx}, {sym}_w, {sym}_b, {sym}_m0, {sym}_sh, "
                               f"{zy}, {op.act_min}, {op.act_max}, {y}, {mask}, {dims});")
                P, C = ho * wo, co
            else:
                i_, o_ = w.shape[1], w.shape[0]
                dims = f"{B}, {i_}, {o_}"
                fwd.append(f"qlinear_fwd({x}, {zx}, {sym}_w, {sym}_b, {sym}_m0, {sym}_sh, {zy}, "
                           f"{op.act_min}, {op.act_max}, {y}, {mask}, {dims});")
                P, C = 1, o_
            info[op.name] = (sym, dims, P, C, x, zx, tr)
        elif kind == "QAdd":
            a, b_ = A("a:" + op.a, "int8_t"), A("a:" + op.b, "int8_t")
            fwd.append(f"qadd_fwd({a}, {T[op.a].zero_point}, {b_}, {T[op.b].zero_point}, {zy}, "
                       f"{op.multiplier_a}, {op.shift_a}, {op.multiplier_b}, {op.shift_b}, "
                       f"{op.multiplier_out}, {op.shift_out}, {op.left_shift}, {y}, {mask}, "
                       f"{numel[op.output]});")
        else:
            c, h, wd = T[op.input].shape
            fwd.append(f"qgap_fwd({A('a:' + op.input, 'int8_t')}, {y}, {B * c}, {h * wd});")
    written: set[str] = set()

    def gx(t: str) -> tuple[str, int]:
        acc = 1 if t in written else 0
        written.add(t)
        return A("g:" + t, "ET_REAL"), acc

    for op in bwd_ops:
        kind = type(op).__name__
        dy = A("g:" + op.output, "ET_REAL") if ("g:" + op.output) in off else "0"
        if kind in ("QConv2d", "QLinear"):
            sym, dims, P, C, x, zx, tr = info[op.name]
            mvals = np.asarray(op.multiplier, dtype=np.float64) * np.power(
                2.0, np.asarray(op.shift, dtype=np.float64) - 31)
            sx = float(T[op.input].scale)
            ws = np.asarray(op.weight_scale, dtype=np.float64)
            inv_w = 1.0 / ws ** 2 if spec.qas else np.ones_like(ws)
            inv_b = 1.0 / (sx * ws) ** 2 if spec.qas else np.ones_like(ws)
            arrays.append(f"static const ET_REAL {sym}_M[{C}] = {{ {_reals(mvals)} }};")
            arrays.append(f"static const ET_REAL {sym}_iw[{C}] = {{ {_reals(inv_w)} }};")
            arrays.append(f"static const ET_REAL {sym}_ib[{C}] = {{ {_reals(inv_b)} }};")
            m = A("m:" + op.output, "uint8_t")
            if op.name in lay.gap_of:  # dacc from the pool's dy where it is read
                gp = A("g:" + lay.gap_of[op.name].output, "ET_REAL")
                bwd.append(f"{{ const qgap_dacc gd = {{ {gp}, {m}, {sym}_M, {P} }};")
                d, extra, close = "0", ", &gd", "}"
            else:
                d = A("d:" + op.output, "ET_REAL")
                bwd.append(f"qacc_grad({dy}, {m}, {sym}_M, {d}, {B}, {C}, {P});")
                extra, close = (", 0" if kind == "QConv2d" else ""), ""
            pre = "qconv" if kind == "QConv2d" else "qlinear"
            if op.input in rg:
                g, acc = gx(op.input)
                bwd.append(f"{pre}_bwd_input({d}{extra}, {sym}_w, {g}, {acc}, {dims});")
            if tr:
                bwd.append(f"{pre}_update({d}{extra}, {x}, {zx}, {sym}_w, {sym}_b, {sym}_iw, "
                           f"{sym}_ib, lr, {dims});")
            if close:
                bwd.append(close)
        elif kind == "QAdd":
            m = A("m:" + op.output, "uint8_t")
            sy = float(T[op.output].scale)
            for t in (op.a, op.b):
                if t in rg:
                    g, acc = gx(t)
                    # the simulation's slope is `inside * (s_in / s_out)`, a bool tensor times a
                    # Python float: float32 in PyTorch; mirrored here to stay bit-exact
                    slope = float(np.float32(float(T[t].scale) / sy))
                    bwd.append(f"qadd_bwd({dy}, {m}, {_hexd(slope)}, {g}, "
                               f"{acc}, {numel[op.output]});")
        else:
            if op.input in rg and op.input not in {gp.input for gp in lay.gap_of.values()}:
                c, h, wd = T[op.input].shape
                g, acc = gx(op.input)
                bwd.append(f"qgap_bwd({dy}, {g}, {acc}, {B * c}, {h * wd});")
    out_t = T[graph.output]
    D = int(np.prod(T[graph.input].shape))
    real_t = "double" if tgt.kind is TargetKind.HOST else "float"
    lb_c = (f"static const qlb_op q_lb[{len(descs)}] = {{\n    "
            + ",\n    ".join(descs) + "\n};\n") if descs else ""
    model_c = f"""/* generated by edgetrain.codegen (int8 QAS training) for {tgt.name}: do not edit */
#include "et_model.h"
#define ET_REAL {real_t}
{INT8_KERNELS}
{chr(10).join(arrays)}

static uint8_t et_arena[{arena}] __attribute__((aligned(8)));
static int32_t et_labels[ET_BATCH];
{lb_c}

void et_load(const uint8_t *pixels, const uint8_t *labels, int n, int first) {{
    int8_t *x = {A('a:' + graph.input, 'int8_t')};
    for (int b = 0; b < ET_BATCH; b++) {{
        const int i = (first + b) % n;
        memcpy(x + (size_t)b * {D}, pixels + (size_t)i * {D}, {D});
        et_labels[b] = labels[i];
    }}
}}

static void forward(void) {{
{chr(10).join('    ' + s for s in fwd)}
}}

float et_eval_batch(int *correct) {{
    forward();
    return (float)qxent({A('a:' + graph.output, 'int8_t')}, {out_t.zero_point}, {_hexd(out_t.scale)}, et_labels, 0, {A('z:' + graph.output, 'ET_REAL')}, {B}, {K}, correct);
}}

float et_train_step(float lr_f) {{
    const ET_REAL lr = {_hexd(spec.lr)};
    (void)lr_f;
    forward();
    const ET_REAL loss = qxent({A('a:' + graph.output, 'int8_t')}, {out_t.zero_point}, {_hexd(out_t.scale)}, et_labels, {A('g:' + graph.output, 'ET_REAL')}, {A('z:' + graph.output, 'ET_REAL')}, {B}, {K}, 0);
{chr(10).join('    ' + s for s in bwd)}
    return (float)loss;
}}

static void put_i32(int32_t v) {{
    if (v < 0) {{ et_puts("-"); et_put_u32((uint32_t)(-(int64_t)v)); }} else et_put_u32((uint32_t)v);
}}

static void dump(const char *name, const int8_t *w, int nw, const int32_t *b, int nb) {{
    et_puts("QPARAM "); et_puts(name); et_puts(" ");
    for (int i = 0; i < nw; i++) {{ et_puts(" "); put_i32(w[i]); }}
    et_puts(" |");
    for (int i = 0; i < nb; i++) {{ et_puts(" "); put_i32(b[i]); }}
    et_puts("\\n");
}}

void et_dump_params(void) {{
{chr(10).join(dumps)}
}}
"""
    from edgetrain.codegen._render import _main_c, _makefile
    hdr = _header_int8(B, K, D, arena, spec)
    files = {
        "et_model.h": hdr,
        "et_model.c": model_c,
        "et_data.c": _data_int8(spec),
        "main.c": _main_c(None, None, tgt),
        "Makefile": _makefile(tgt),
    }
    files.update(render_platform(tgt, device_sram_bytes, device_flash_bytes, MIN_STACK_BYTES))
    meta = {
        "target": tgt.name, "model": graph.model, "device": device_name, "precision": "int8-qas",
        "batch_size": B, "steps": spec.steps, "lr": spec.lr, "arena_bytes": arena,
        "trainable_bytes": mem.trainable_bytes, "const_weight_bytes": const_bytes,
        "trainable_params": list(trainable), "folded": [],
        "planner_predicted_peak_bytes": None,  # the planner has no int8 model of this program
        "codegen_predicted_peak_sram_bytes": mem.predicted_peak_sram_bytes,
        "sram_limit_bytes": device_sram_bytes, "flash_limit_bytes": device_flash_bytes,
        "counter_hz": tgt.counter_hz, "qemu_machine": tgt.qemu_machine,
        "buffers": [{"name": b.name, "bytes": b.nbytes, "offset": b.offset,
                     "first_step": b.first, "last_step": b.last} for b in bufs],
    }
    files["edgetrain_build.json"] = json.dumps(meta, indent=1)
    return files


def _header_int8(B: int, K: int, D: int, arena: int, spec: Int8Spec) -> str:
    from edgetrain.codegen._render import header_text
    return header_text(B, K, D, arena, spec)


def _data_int8(spec: Int8Spec) -> str:
    def u8(a: np.ndarray) -> np.ndarray:
        return np.asarray(a, dtype=np.int8).view(np.uint8)
    return f"""/* generated by edgetrain.codegen: quantised samples (int8 stored as bytes, flash) */
#include "et_model.h"
const int et_train_n = {len(spec.train_y)};
const int et_test_n = {len(spec.test_y)};
const uint8_t et_train_x[] = {{
{_bytes(u8(spec.train_q))}
}};
const uint8_t et_train_y[] = {{ {_bytes(np.asarray(spec.train_y).astype(np.uint8))} }};
const uint8_t et_test_x[] = {{
{_bytes(u8(spec.test_q))}
}};
const uint8_t et_test_y[] = {{ {_bytes(np.asarray(spec.test_y).astype(np.uint8))} }};
"""
