"""The int8 C trainer's backward kernels (NOTE [ int8 integer backward ]) and the padded 3x3
forward (NOTE [ Padded 3x3 forward ]) and the mat-mult forward (NOTE [ int8 mat-mult forward ])
against integer sums in numpy: every weight-gradient and bias sum (read through the runtime's ET_GRAD_PROBE hook)
and every input-gradient element, on the host (portable C) and on the Cortex-M4 under QEMU
(the DSP's SMLAD paths), for 3x3 standard and depthwise convs at stride 1 and 2, 1x1 convs,
a 5x5 conv (the generic path) and linear layers, at batch 1 and 2; and qacc_quant's int8
dq (float path on the Cortex-M4, 4 bytes per word) on values it quantises exactly."""

from __future__ import annotations

import numpy as np
from _toolchain import int8_kernel_outputs, needs_arm, needs_cc

from edgetrain.codegen._int8_kernels import int8_runtime_source

# (B, Ci, H, W, Co, K, stride, padding, groups): rows that end on the row's last byte, odd and
# even widths, 7 output channels at stride 2 (4 + 2 + 1 per input-gradient pass), mcu-cnn's
# four conv shapes, 1x1s with a pixel remainder (batch 2; batch 1 with odd channel counts), a
# 5x5 (generic path), stride-2 3x3s whose input gradient reads dq as 4-channel words (batch 2
# with 9 channels, odd sizes; no padding with 5 channels), a 1x1 whose dq rows and a 3x3 whose
# weight rows are over the cap of NOTE [ Expanded dq rows ] (the others are under it), a
# batch-1 1x1 with an even pixel count, stride-2 3x3s with Co a multiple of 4 whose integer dx
# is summed in the dx planes (NOTE [ Stride-2 input gradient in the dx planes ]: no padding at
# batch 2; padding 1 at batch 2 with an odd width, the last column's w2 column past the row),
# batch-1 1x1s with 3 and 2 pixels past the last 4 (NOTE [ Paired 1x1 input gradient ]), and
# stride-2 3x3s of one input row (the dx planes) and one input column (the row path)
CONVS = [
    (1, 3, 9, 11, 5, 3, 1, 1, 1),
    (1, 2, 14, 13, 4, 3, 2, 1, 1),
    (1, 3, 9, 9, 7, 3, 2, 1, 1),
    (2, 4, 7, 7, 4, 3, 1, 1, 4),
    (1, 3, 8, 9, 3, 3, 1, 0, 1),
    (1, 6, 9, 10, 6, 3, 2, 1, 6),
    (2, 5, 5, 7, 6, 1, 1, 0, 1),
    (1, 5, 5, 7, 3, 1, 1, 0, 1),
    (2, 4, 4, 5, 6, 1, 1, 0, 1),
    (1, 1, 28, 28, 8, 3, 2, 1, 1),
    (1, 8, 14, 14, 16, 3, 2, 1, 1),
    (1, 16, 7, 7, 16, 3, 1, 1, 16),
    (1, 16, 7, 7, 32, 1, 1, 0, 1),
    (1, 2, 9, 9, 3, 5, 2, 2, 1),
    (2, 3, 11, 9, 9, 3, 2, 1, 1),
    (1, 2, 10, 8, 5, 3, 2, 0, 1),
    (1, 4, 16, 16, 10, 1, 1, 0, 1),
    (1, 16, 6, 6, 20, 3, 1, 1, 1),
    (1, 4, 4, 6, 6, 1, 1, 0, 1),
    (2, 3, 9, 11, 8, 3, 2, 0, 1),
    (2, 2, 7, 9, 4, 3, 2, 1, 1),
    (1, 4, 3, 5, 6, 1, 1, 0, 1),
    (1, 2, 2, 7, 4, 1, 1, 0, 1),
    (1, 2, 1, 5, 4, 3, 2, 1, 1),
    (1, 2, 5, 1, 4, 3, 2, 1, 1),
]
LINEARS = [(1, 37, 5), (2, 32, 10), (1, 784, 3)]  # (B, I, O)
# qacc_quant (B, C, P, dy from a global average pool): P with and without a remainder of 4
QACC = [(1, 3, 7, False), (2, 2, 49, False), (1, 2, 8, False), (1, 3, 9, True), (2, 2, 8, True)]
# qacc_quant on an integer dx (NOTE [ Integer dx ]) (B, C, P, T): dx_int = T k, ds = 1 / (16 T),
# so dq = dx_int / T: T = 8 and 1024 take the fixed-point path (SMMULR: NOTE [ Rounded dq by
# SMMULR ]), T = 2 the float one (k >= 1/4); T = 2^20 with M = 0.3 (k's low bits set) SMMLA and
# a shift; T = 1024 and 2^20 put unclamped |dx_int| over int16 (NOTE [ Masked largest |dx_int|
# in 16-bit lanes ]), T = 8 only clamped ones
QACC_INT = [
    (1, 3, 7, 8, 1.0),
    (2, 2, 49, 1024, 1.0),
    (1, 2, 9, 2, 1.0),
    (1, 8, 196, 8, 1.0),
    (1, 3, 13, 1 << 20, 0.3),
    (1, 2, 11, 16, 1.0),
]


def _ints(a) -> str:
    return ", ".join(str(int(v)) for v in np.asarray(a).reshape(-1))


def _reals(a) -> str:
    return ", ".join(repr(float(v)) for v in np.asarray(a).reshape(-1))


def _forward_oracle(x, zx, w, bias, s, p, groups):
    """acc = bias + sum over in-bounds taps of (x - zx) * w, in int64."""
    b, ci, h, wd = x.shape
    co, cig, k, _ = w.shape
    og = co // groups
    xp = np.zeros((b, ci, h + 2 * p, wd + 2 * p), np.int64)
    xp[:, :, p : p + h, p : p + wd] = x.astype(np.int64) - zx
    ho, wo = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
    acc = np.zeros((b, co, ho, wo), np.int64) + bias[None, :, None, None]
    for kh in range(k):
        for kw in range(k):
            win = xp[..., kh : kh + s * ho : s, kw : kw + s * wo : s]
            for g in range(groups):
                acc[:, g * og : (g + 1) * og] += np.einsum(
                    "oi,nihw->nohw",
                    w[g * og : (g + 1) * og, :, kh, kw].astype(np.int64),
                    win[:, g * cig : (g + 1) * cig],
                )
    return acc


def _conv_oracle(x, zx, w, dq, s, p, groups):
    """(GW_int, Gb_int, dx_int) of NOTE [ int8 integer backward ] in int64."""
    b, ci, h, wd = x.shape
    co, cig, k, _ = w.shape
    _, _, ho, wo = dq.shape
    og = co // groups
    xp = np.zeros((b, ci, h + 2 * p, wd + 2 * p), np.int64)
    xp[:, :, p : p + h, p : p + wd] = x.astype(np.int64) - zx  # padding contributes nothing
    dxp = np.zeros_like(xp)
    gw = np.zeros(w.shape, np.int64)
    for kh in range(k):
        for kw in range(k):
            sl = (slice(kh, kh + s * ho, s), slice(kw, kw + s * wo, s))
            for g in range(groups):
                cs, os_ = slice(g * cig, (g + 1) * cig), slice(g * og, (g + 1) * og)
                win = xp[:, cs][..., sl[0], sl[1]]
                gw[os_, :, kh, kw] = np.einsum("nohw,nihw->oi", dq[:, os_], win)
                dxp[:, cs, sl[0], sl[1]] += np.einsum(
                    "oi,nohw->nihw", w[os_, :, kh, kw].astype(np.int64), dq[:, os_]
                )
    return gw, dq.sum(axis=(0, 2, 3)), dxp[:, :, p : p + h, p : p + wd]


_PRELUDE = r"""#include <stdint.h>
#include <stddef.h>
static int32_t probe_w[8192], probe_b[64];
static const void *pw0, *pb0;
static int pnw, pnb;
static void et_probe(const void *p, int32_t g) {
    const char *c = (const char *)p;
    if (c >= (const char *)pw0 && c < (const char *)pw0 + pnw) probe_w[c - (const char *)pw0] = g;
    else if (c >= (const char *)pb0 && c < (const char *)pb0 + 4 * pnb)
        probe_b[(c - (const char *)pb0) / 4] = g;
}
#define ET_GRAD_PROBE(p, g) et_probe((p), (g))
"""

_MAIN = r"""
static void et_i32(const char *name, const int32_t *y, const ET_REAL *r, int n) {
    char buf[24];
    et_puts("OUT "); et_puts(name);
    for (int i = 0; i < n; i++) {
        long v = y ? (long)y[i] : (long)r[i];
        int k = 23;
        buf[k] = 0;
        const int neg = v < 0;
        if (neg) v = -v;
        do { buf[--k] = (char)('0' + v % 10); v /= 10; } while (v);
        if (neg) buf[--k] = '-';
        buf[--k] = ' ';
        et_puts(buf + k);
    }
    et_puts("\n");
}
static void probe_on(const int8_t *w, int nw, const int32_t *b, int nb) {
    pw0 = w; pnw = nw; pb0 = b; pnb = nb;
    for (int i = 0; i < nw; i++) probe_w[i] = 0;
    for (int i = 0; i < nb; i++) probe_b[i] = 0;
}
static int8_t pad[8192] __attribute__((aligned(8)));  /* >= every case's backward scratch */
static int8_t fscratch[32 * 32 + 8 + 4 * 28 * 28] __attribute__((aligned(8)));
int main(void) {
    static const ET_REAL one[64] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
@CALLS@
    et_puts("ET_END\n");
    return 0;
}
"""


def _program(rng) -> tuple[str, dict[str, np.ndarray]]:
    blocks, want = [], {}
    for i, (b, ci, h, wd, co, k, s, p, gr) in enumerate(CONVS):
        ho, wo = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
        x = rng.integers(-128, 128, (b, ci, h, wd))
        w = rng.integers(-127, 128, (co, ci // gr, k, k))
        dq = rng.integers(-127, 128, (b, co, ho, wo)) * (rng.random((b, co, ho, wo)) < 0.8)
        zx = int(rng.integers(-128, 128))
        gw, gb, dx = _conv_oracle(x, zx, w, dq, s, p, gr)
        want[f"gw{i}"], want[f"gb{i}"], want[f"dx{i}"] = gw, gb, dx
        want[f"dxi{i}"] = dx  # NOTE [ Integer dx ]: the same sums stored as int32
        want[f"dxg{i}"] = np.full(64, 7)  # nothing written outside dx
        dims = f"{b}, {ci}, {h}, {wd}, {co}, {ho}, {wo}, {k}, {s}, {p}, {gr}"
        blocks.append(f"""
    {{
        static const int8_t x[] = {{{_ints(x)}}}, dq[] = {{{_ints(dq)}}};
        static int8_t w[] = {{{_ints(w)}}};
        static int32_t b[{co}];
        static ET_REAL dxb[{x.size} + 64];  /* 32 guard slots either side */
        ET_REAL *dx = dxb + 32;
        static int32_t dxi[{x.size}], dxg[64];
        qconv_bwd_input(dq, (ET_REAL)1, w, dx, 0, pad, {dims});
        et_i32("dx{i}", 0, dx, {x.size});
        for (int j = 0; j < {x.size} + 64; j++) q_put(dxb + j, 7, 0, Q_DX_INT);
        qconv_bwd_input(dq, (ET_REAL)1, w, dx, Q_DX_INT, pad, {dims});
        for (int j = 0; j < {x.size}; j++) dxi[j] = q_dxi(dx + j);
        et_i32("dxi{i}", dxi, 0, {x.size});
        for (int j = 0; j < 32; j++) {{
            dxg[j] = q_dxi(dxb + j);
            dxg[32 + j] = q_dxi(dx + {x.size} + j);
        }}
        et_i32("dxg{i}", dxg, 0, 64);
        probe_on(w, {w.size}, b, {co});
        qconv_update(dq, (ET_REAL)1, x, {zx}, w, b, one, one, (ET_REAL)1e-3, pad, {dims});
        et_i32("gw{i}", probe_w, 0, {w.size});
        et_i32("gb{i}", probe_b, 0, {co});
    }}""")
    for i, (b, ci, h, wd, co, k, s, p, gr) in enumerate(CONVS):
        if k not in (1, 3):
            continue
        ho, wo = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
        x = rng.integers(-128, 128, (b, ci, h, wd))
        w = rng.integers(-127, 128, (co, ci // gr, k, k))
        bias = rng.integers(-5000, 5000, co)
        zx = int(rng.integers(-128, 128))
        acc = _forward_oracle(x, zx, w, bias, s, p, gr)
        # m0 = 2^30, shift 0: rq(acc) = round(acc / 2); zy 3; clamp to int8
        pre = ((acc * (1 << 30) + (1 << 30)) >> 31) + 3
        want[f"fy{i}"] = np.clip(pre, -128, 127)
        want[f"fm{i}"] = ((pre >= -128) & (pre <= 127)).astype(np.int64)
        dims = f"{b}, {ci}, {h}, {wd}, {co}, {ho}, {wo}, {k}, {s}, {p}, {gr}"
        blocks.append(f"""
    {{
        static const int8_t x[] = {{{_ints(x)}}}, w[] = {{{_ints(w)}}};
        static const int32_t bias[] = {{{_ints(bias)}}};
        static int32_t m0[{co}], sh[{co}], yi[{acc.size}], mi[{acc.size}];
        static int8_t y[{acc.size}];
        static uint8_t mask[{acc.size}];
        for (int c = 0; c < {co}; c++) {{ m0[c] = 1 << 30; sh[c] = 0; }}
        qconv3_fwd(x, {zx}, w, bias, m0, sh, 3, -128, 127, y, mask, fscratch, {dims});
        for (int j = 0; j < {acc.size}; j++) {{ yi[j] = y[j]; mi[j] = mask[j]; }}
        et_i32("fy{i}", yi, 0, {acc.size});
        et_i32("fm{i}", mi, 0, {acc.size});
        for (int j = 0; j < {acc.size}; j++) {{ y[j] = 0; mask[j] = 2; }}
        qconv_mm_fwd(x, {zx}, w, bias, m0, sh, 3, -128, 127, y, mask, fscratch, {dims});
        for (int j = 0; j < {acc.size}; j++) {{ yi[j] = y[j]; mi[j] = mask[j]; }}
        et_i32("gy{i}", yi, 0, {acc.size});
        et_i32("gm{i}", mi, 0, {acc.size});
    }}""")
        want[f"gy{i}"], want[f"gm{i}"] = want[f"fy{i}"], want[f"fm{i}"]
        for tag, mixed in (("h", False), ("k", True)):
            blocks.append(_requant_block(want, tag, i, acc, mixed, (x, w, bias, zx), dims))
    for i, (b, n_in, n_out) in enumerate(LINEARS):
        x = rng.integers(-128, 128, (b, n_in))
        w = rng.integers(-127, 128, (n_out, n_in))
        dq = rng.integers(-127, 128, (b, n_out)) * (rng.random((b, n_out)) < 0.8)
        zx = int(rng.integers(-128, 128))
        want[f"lgw{i}"] = dq.T @ (x - zx)
        want[f"lgb{i}"] = dq.sum(0)
        want[f"ldx{i}"] = want[f"ldxi{i}"] = dq @ w
        dims = f"{b}, {n_in}, {n_out}"
        blocks.append(f"""
    {{
        static const int8_t x[] = {{{_ints(x)}}}, dq[] = {{{_ints(dq)}}};
        static int8_t w[] = {{{_ints(w)}}};
        static int32_t b[{n_out}];
        static ET_REAL dx[{x.size}];
        static int32_t dxi[{x.size}];
        qlinear_bwd_input(dq, (ET_REAL)1, w, dx, 0, {dims});
        et_i32("ldx{i}", 0, dx, {x.size});
        qlinear_bwd_input(dq, (ET_REAL)1, w, dx, Q_DX_INT, {dims});
        for (int j = 0; j < {x.size}; j++) dxi[j] = q_dxi(dx + j);
        et_i32("ldxi{i}", dxi, 0, {x.size});
        probe_on(w, {w.size}, b, {n_out});
        qlinear_update(dq, (ET_REAL)1, x, {zx}, w, b, one, one, (ET_REAL)1e-3, {dims});
        et_i32("lgw{i}", probe_w, 0, {w.size});
        et_i32("lgb{i}", probe_b, 0, {n_out});
    }}""")
    for i, (b, c, p, pooled) in enumerate(QACC):
        blocks.append(_qacc_block(rng, i, b, c, p, pooled, want))
    for i, (b, c, p, t, m) in enumerate(QACC_INT):
        blocks.append(_qacc_int_block(rng, i, b, c, p, t, m, want))
    return "".join(blocks), want


def _requant_block(want, tag: str, i: int, acc, mixed: bool, data: tuple, dims: str) -> str:
    """Both forwards again with rq's fast case (n = 31 - shift >= 33: NOTE [ Hoisted
    requantisation ]) in every channel, or in all but every third (`mixed`), and a clamp
    to [-20, 100] (zy 3)."""
    x, w, bias, zx = data
    co, m0 = acc.shape[1], 1518500250
    sh = np.array([0 if mixed and c % 3 == 2 else -2 - c % 4 for c in range(co)])
    n = (31 - sh)[None, :, None, None]
    pre = ((acc * m0 + (np.int64(1) << (n - 1))) >> n) + 3
    want[f"f{tag}y{i}"] = want[f"g{tag}y{i}"] = np.clip(pre, -20, 100)
    want[f"f{tag}m{i}"] = want[f"g{tag}m{i}"] = ((pre >= -20) & (pre <= 100)).astype(np.int64)
    return f"""
    {{
        static const int32_t m0[] = {{{_ints(np.full(co, m0))}}}, sh[] = {{{_ints(sh)}}};
        static int32_t yi[{acc.size}], mi[{acc.size}];
        static int8_t y[{acc.size}];
        static uint8_t mask[{acc.size}];
        static const int8_t x[] = {{{_ints(x)}}}, w[] = {{{_ints(w)}}};
        static const int32_t bias[] = {{{_ints(bias)}}};
        qconv3_fwd(x, {zx}, w, bias, m0, sh, 3, -20, 100, y, mask, fscratch, {dims});
        for (int j = 0; j < {acc.size}; j++) {{ yi[j] = y[j]; mi[j] = mask[j]; }}
        et_i32("f{tag}y{i}", yi, 0, {acc.size});
        et_i32("f{tag}m{i}", mi, 0, {acc.size});
        qconv_mm_fwd(x, {zx}, w, bias, m0, sh, 3, -20, 100, y, mask, fscratch, {dims});
        for (int j = 0; j < {acc.size}; j++) {{ yi[j] = y[j]; mi[j] = mask[j]; }}
        et_i32("g{tag}y{i}", yi, 0, {acc.size});
        et_i32("g{tag}m{i}", mi, 0, {acc.size});
    }}"""


def _qacc_block(rng, i: int, b: int, c: int, p: int, pooled: bool, want: dict) -> str:
    """qacc_quant on dy (or a pool's dy) of k / 16 where not clamped (|k| <= 127, one 127: s_g
    = 1 / 16, dq = k exactly, no ties) and of large values where clamped (they must be 0)."""
    mask = (rng.random((b, c, p)) < 0.8).astype(np.int64)
    k = rng.integers(-127, 128, (b, c) if pooled else (b, c, p))
    k.reshape(-1)[0] = 127
    mask[0, 0, 0] = 1
    want[f"qd{i}"] = (k[..., None] if pooled else k) * mask
    want[f"qs{i}"] = [127]
    if pooled:
        src = f"static const ET_REAL gp[] = {{{_reals(k * p / 16)}}}; const qgap_dacc gd = {{gp, {p}}};"
        dy, gd = "0", "&gd"
    else:
        big = rng.choice([-1, 1], k.shape) * rng.integers(200, 5000, k.shape)
        src = f"static const ET_REAL dy[] = {{{_reals(np.where(mask == 1, k / 16, big))}}};"
        dy, gd = "dy", "0"
    n = b * c * p
    return f"""
    {{
        {src}
        static uint8_t mask[] = {{{_ints(mask)}}};
        static const ET_REAL M[] = {{{_reals(np.ones(c))}}};
        static int32_t qi[{n}];
        const ET_REAL s = qacc_quant({dy}, 0, {gd}, mask, M, {b}, {c}, {p});
        for (int j = 0; j < {n}; j++) qi[j] = ((const int8_t *)mask)[j];
        et_i32("qd{i}", qi, 0, {n});
        const int32_t sv = (int32_t)(s * 127 * 16 + (ET_REAL)0.5);
        et_i32("qs{i}", &sv, 0, 1);
    }}"""


def _qacc_int_block(rng, i: int, b: int, c: int, p: int, t: int, m: float, want: dict) -> str:
    """qacc_quant on an integer dx of T k where not clamped (|k| <= 127, one of 127) and of large
    values where clamped, with ds = 1 / (16 T) and M = m in every channel: s_g = m / 16 and dq
    = k (exactly, or off by a float rounding far from a tie)."""
    mask = (rng.random((b, c, p)) < 0.8).astype(np.int64)
    k = rng.integers(-126, 127, (b, c, p))
    j = (1, 0, 3, 2, 5, 4)[i % 6]  # one extreme: either lane, either sign (NOTE [ Masked ... ])
    k.reshape(-1)[j] = (1, 1, -1, -1, 1, 1)[i % 6] * 127
    mask.reshape(-1)[j] = 1
    want[f"qid{i}"] = k * mask
    tt = min(t, 1024)  # s_g 127 16 T / m: the largest |dx_int| itself (to T = 1024: int32)
    want[f"qis{i}"] = [127 * tt]
    big = rng.choice([-1, 1], k.shape) * rng.integers(200, 5000 if t < 4096 else 2000, k.shape)
    n = b * c * p
    return f"""
    {{
        static const int32_t v[] = {{{_ints(np.where(mask == 1, k, big) * t)}}};
        static ET_REAL dy[{n}];
        static uint8_t mask[] = {{{_ints(mask)}}};
        static const ET_REAL M[] = {{{_reals(np.full(c, m))}}};
        static int32_t qi[{n}];
        for (int j = 0; j < {n}; j++) q_put(dy + j, v[j], 0, Q_DX_INT);
        const ET_REAL s = qacc_quant(dy, (ET_REAL)1 / {16 * t}, 0, mask, M, {b}, {c}, {p});
        for (int j = 0; j < {n}; j++) qi[j] = ((const int8_t *)mask)[j];
        et_i32("qid{i}", qi, 0, {n});
        const int32_t sv = (int32_t)(s / {m!r} * {127 * 16 * tt} + (ET_REAL)0.5);
        et_i32("qis{i}", &sv, 0, 1);
    }}"""


def _outputs(tmp_path, target: str, calls: str) -> dict[str, np.ndarray]:
    return int8_kernel_outputs(
        tmp_path, target, _PRELUDE + int8_runtime_source() + _MAIN.replace("@CALLS@", calls), 300
    )


def _check(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name, ref in want.items():
        np.testing.assert_array_equal(got[name], np.asarray(ref).reshape(-1), err_msg=name)


@needs_cc
def test_int8_backward_kernels_portable_paths_are_the_integer_sums(tmp_path):
    # Prepare: int8 inputs, weights and output gradients (a fifth of them 0), a zero point
    calls, want = _program(np.random.default_rng(0))
    # Execute: the portable kernels (no DSP, double) on the host; s_g = 1, so dx = dx_int
    got = _outputs(tmp_path, "host", calls)
    # Assert: every weight, bias and input-gradient sum equal to numpy's
    _check(got, want)


@needs_arm
def test_int8_backward_kernels_dsp_paths_are_the_integer_sums_on_cortex_m4(tmp_path):
    # Prepare: the same cases; on the Cortex-M4 the 3x3, 1x1 and dense sums take SMLAD
    calls, want = _program(np.random.default_rng(0))
    # Execute
    got = _outputs(tmp_path, "cortex-m4", calls)
    # Assert: bit for bit the integers numpy computes (|dx_int| < 2^24: exact in float)
    _check(got, want)


# batch-1 one-group convs of the mat-mult weight gradients (NOTE [ Paired-output weight
# gradient ]): mcu-cnn's, stride 1 and 2 with odd channel counts and sizes, no padding, 1x1s
# with and without a pixel remainder, an odd tap count (one input channel)
STEP_CONVS = [
    (1, 1, 28, 28, 8, 3, 2, 1, 1),
    (1, 8, 14, 14, 16, 3, 2, 1, 1),
    (1, 16, 7, 7, 32, 1, 1, 0, 1),
    (1, 3, 9, 11, 5, 3, 1, 1, 1),
    (1, 3, 9, 9, 7, 3, 2, 1, 1),
    (1, 2, 10, 8, 5, 3, 2, 0, 1),
    (1, 1, 9, 7, 3, 3, 1, 1, 1),
    (1, 5, 5, 7, 3, 1, 1, 0, 1),
    (1, 4, 4, 4, 6, 1, 1, 0, 1),
]


def _step_program(rng) -> str:
    """Each conv's update without the ET_GRAD_PROBE hook (so the steps may run beside the sums,
    NOTE [ Steps beside the sums ]), against q_wstep / q_bstep applied to numpy's integer sums;
    per-channel step factors of several magnitudes (some steps saturate), and once with a
    channel whose factor is 0 (q_wstep's other path for every channel pair)."""
    blocks = []
    for i, (b, ci, h, wd, co, k, s, p, gr) in enumerate(STEP_CONVS):
        ho, wo = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
        x = rng.integers(-128, 128, (b, ci, h, wd))
        w = rng.integers(-127, 128, (co, ci // gr, k, k))
        bias = rng.integers(-5000, 5000, co)
        dq = rng.integers(-127, 128, (b, co, ho, wo)) * (rng.random((b, co, ho, wo)) < 0.8)
        zx = int(rng.integers(-128, 128))
        gw, gb, _ = _conv_oracle(x, zx, w, dq, s, p, gr)
        dims = f"{b}, {ci}, {h}, {wd}, {co}, {ho}, {wo}, {k}, {s}, {p}, {gr}"
        for j, zero in enumerate((False, True)):
            inv = np.array([2.0 ** -(c % 7) * (1 + c / 9) for c in range(co)])
            if zero:
                inv[co // 2] = 0
            per = w.size // co
            blocks.append(f"""
    {{
        static const int8_t x[] = {{{_ints(x)}}}, dq[] = {{{_ints(dq)}}}, w0[] = {{{_ints(w)}}};
        static const int32_t g[] = {{{_ints(gw)}}}, gb[] = {{{_ints(gb)}}};
        static const int32_t b0[] = {{{_ints(bias)}}};
        static const ET_REAL inv[] = {{{_reals(inv)}}};
        static int8_t w[{w.size}], wr[{w.size}];
        static int32_t b[{co}], br[{co}], wi[{w.size}], wri[{w.size}];
        const ET_REAL lr = (ET_REAL)3e-4;
        for (int t = 0; t < {w.size}; t++) w[t] = wr[t] = w0[t];
        for (int t = 0; t < {co}; t++) b[t] = br[t] = b0[t];
        qconv_update(dq, (ET_REAL)0.75, x, {zx}, w, b, inv, inv, lr, pad, {dims});
        for (int t = 0; t < {w.size}; t++)
            q_wstep(&wr[t], g[t], q_stepper((ET_REAL)0.75, inv[t / {per}], lr));
        for (int t = 0; t < {co}; t++) q_bstep(&br[t], gb[t], (ET_REAL)0.75, inv[t], lr);
        for (int t = 0; t < {w.size}; t++) {{ wi[t] = w[t]; wri[t] = wr[t]; }}
        et_i32("sw{i}_{j}", wi, 0, {w.size});
        et_i32("sr{i}_{j}", wri, 0, {w.size});
        et_i32("sb{i}_{j}", b, 0, {co});
        et_i32("sc{i}_{j}", br, 0, {co});
    }}""")
    return "".join(blocks)


_NO_PROBE = r"""#include <stdint.h>
#include <stddef.h>
static int32_t probe_w[1], probe_b[1];
static const void *pw0, *pb0;
static int pnw, pnb;
"""


@needs_arm
def test_int8_weight_steps_beside_the_sums_are_q_wstep_on_cortex_m4(tmp_path):
    # Prepare: batch-1 one-group convs, numpy's integer weight and bias sums
    calls = _step_program(np.random.default_rng(1))
    # Execute: the updates on the Cortex-M4 without the probe hook, and the reference steps
    got = int8_kernel_outputs(
        tmp_path,
        "cortex-m4",
        _NO_PROBE + int8_runtime_source() + _MAIN.replace("@CALLS@", calls),
        300,
    )
    # Assert: every weight and bias as q_wstep / q_bstep make it from the exact sums; the
    # weights moved (some to the clamp)
    moved = 0
    for i in range(len(STEP_CONVS)):
        for j in range(2):
            np.testing.assert_array_equal(got[f"sw{i}_{j}"], got[f"sr{i}_{j}"], err_msg=f"{i} {j}")
            np.testing.assert_array_equal(got[f"sb{i}_{j}"], got[f"sc{i}_{j}"], err_msg=f"{i} {j}")
            moved += int((np.abs(got[f"sw{i}_{j}"]) == 127).sum())
    assert moved > 0
