"""The C trainer's kernels one by one: fp32 kernels against PyTorch's autograd on the host
(register-blocked paths and their borders), int8 kernels against integer arithmetic in numpy
on the host and (DSP path) on the Cortex-M4 under QEMU, and instruction-count bounds from
QEMU's `-icount` (edgetrain.codegen._microbench)."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _toolchain import full_training_case, int8_kernel_outputs, needs_arm, needs_cc

from edgetrain.codegen._int8_kernels import int8_runtime_source
from edgetrain.codegen._kernels import KERNELS, PRELUDE

# (Ci, H, W, Co, K, stride, padding, dilation, groups, batch): the 3x3 fast paths at stride 1
# and 2 with borders and remainders, depthwise, 1x1, and the generic path (5x5, dilation 2)
CONVS = [
    (3, 9, 11, 5, 3, 1, 1, 1, 1, 1),
    (2, 14, 13, 4, 3, 2, 1, 1, 1, 2),
    (6, 7, 7, 6, 3, 1, 1, 1, 6, 1),
    (5, 6, 9, 7, 1, 1, 0, 1, 1, 2),
    (2, 10, 12, 3, 5, 2, 2, 1, 1, 1),
    (2, 9, 9, 2, 3, 1, 2, 2, 1, 1),
    (1, 28, 28, 8, 3, 2, 1, 1, 1, 1),
]
LINEARS = [(1, 37, 9), (3, 8, 6), (1, 784, 13)]


def _floats(a: np.ndarray) -> str:
    return ", ".join(f"{float(v).hex()}f" for v in np.asarray(a, np.float32).reshape(-1))


def _run_host(tmp_path, source: str) -> dict[str, np.ndarray]:
    src, exe = tmp_path / "k.c", tmp_path / "k"
    src.write_text(source)
    cmd = ["cc", "-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Wno-unused-function"]
    subprocess.run([*cmd, "-o", str(exe), str(src), "-lm"], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {
        f[1]: np.array([float(v) for v in f[2:]], dtype=np.float64)
        for f in (ln.split() for ln in out.splitlines())
        if f and f[0] == "OUT"
    }


_PRINT = r"""
static void out(const char *name, const float *p, int n) {
    printf("OUT %s", name);
    for (int i = 0; i < n; i++) printf(" %.9g", p[i]);
    printf("\n");
}
"""


def _conv_case(i: int, case, g: torch.Generator) -> tuple[str, dict]:
    ci, h, w, co, k, s, p, d, gr, b = case
    x = torch.randn(b, ci, h, w, generator=g, dtype=torch.float64)
    wt = torch.randn(co, ci // gr, k, k, generator=g, dtype=torch.float64)
    bias = torch.randn(co, generator=g, dtype=torch.float64)
    xr, wr = x.clone().requires_grad_(), wt.clone().requires_grad_()
    y = F.conv2d(xr, wr, bias, s, p, d, gr)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    prior = torch.randn(x.shape, generator=g, dtype=torch.float64)  # acc=1 adds to it
    y.backward(dy)
    ho, wo = y.shape[2:]
    lr = 0.125
    want = {
        f"y{i}": y.detach(),
        f"dx{i}": prior + xr.grad,
        f"w{i}": wt - lr * wr.grad,
        f"b{i}": bias - lr * dy.sum((0, 2, 3)),
    }
    pw = k == 1 and s == 1 and p == 0 and gr == 1
    dims = (
        f"{b}, {ci}, {co}, {h * w}"
        if pw
        else f"{b}, {ci}, {h}, {w}, {co}, {ho}, {wo}, {k}, {k}, {s}, {s}, {p}, {p}, {d}, {d}, {gr}"
    )
    pre = "conv2d_pw" if pw else "conv2d"
    c = f"""
    {{
        static float x[] = {{{_floats(x)}}}, w[] = {{{_floats(wt)}}}, b[] = {{{_floats(bias)}}};
        static float dy[] = {{{_floats(dy)}}}, dx[] = {{{_floats(prior)}}};
        static float y[{y.numel()}];
        {pre}_fwd(x, w, b, y, {dims});
        out("y{i}", y, {y.numel()});
        {pre}_bwd_input(dy, w, dx, 1, {dims});
        out("dx{i}", dx, {x.numel()});
        {pre}_bwd_weight_sgd(dy, x, w, b, {lr}f, {co}, {dims});
        out("w{i}", w, {wt.numel()});
        out("b{i}", b, {co});
    }}"""
    return c, want


def _linear_case(i: int, case, g: torch.Generator) -> tuple[str, dict]:
    b, n_in, n_out = case
    x = torch.randn(b, n_in, generator=g, dtype=torch.float64)
    wt = torch.randn(n_out, n_in, generator=g, dtype=torch.float64)
    bias = torch.randn(n_out, generator=g, dtype=torch.float64)
    dy = torch.randn(b, n_out, generator=g, dtype=torch.float64)
    lr = 0.125
    want = {
        f"ly{i}": x @ wt.T + bias,
        f"ldx{i}": dy @ wt,
        f"lw{i}": wt - lr * dy.T @ x,
        f"lb{i}": bias - lr * dy.sum(0),
    }
    dims = f"{b}, {n_in}, {n_out}"
    c = f"""
    {{
        static float x[] = {{{_floats(x)}}}, w[] = {{{_floats(wt)}}}, b[] = {{{_floats(bias)}}};
        static float dy[] = {{{_floats(dy)}}}, y[{b * n_out}], dx[{b * n_in}];
        linear_fwd(x, w, b, y, {dims});
        out("ly{i}", y, {b * n_out});
        linear_bwd_input(dy, w, dx, 0, {dims});
        out("ldx{i}", dx, {b * n_in});
        linear_bwd_weight_sgd(dy, x, w, b, {lr}f, {n_out}, {dims});
        out("lw{i}", w, {n_out * n_in});
        out("lb{i}", b, {n_out});
    }}"""
    return c, want


@needs_cc
def test_fp32_conv_and_linear_kernels_match_pytorch_autograd(tmp_path):
    # Prepare: inputs, weights and output gradients; PyTorch's float64 autograd is the oracle
    # for the output, the input gradient (added to a prior value: acc=1) and the SGD update
    g = torch.Generator().manual_seed(0)
    blocks, want = [], {}
    for i, case in enumerate(CONVS):
        c, w = _conv_case(i, case, g)
        blocks.append(c)
        want.update(w)
    for i, case in enumerate(LINEARS):
        c, w = _linear_case(i, case, g)
        blocks.append(c)
        want.update(w)
    body = "".join(KERNELS[k] for k in KERNELS if k.startswith(("conv2d", "linear")))
    src = (
        "#include <stdio.h>\n" + PRELUDE + body + _PRINT
        + "int main(void) {" + "".join(blocks) + "\n    return 0;\n}\n"
    )  # fmt: skip
    # Execute
    got = _run_host(tmp_path, src)
    # Assert: every output within float32 rounding of the oracle
    assert set(got) == set(want)
    for name, ref in want.items():
        ref = ref.detach().reshape(-1).numpy()
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(got[name], ref, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


# -------------------------------------------------------------------------------------- int8
# (Ci, H, W, Co, K, stride, padding, groups): 3x3 rows that end at the row's last byte
# (stride 1 and 2, padding 0 and 1), depthwise, 1x1 with a pixel remainder, 5x5 (generic)
QCONVS = [
    (3, 9, 11, 5, 3, 1, 1, 1),
    (2, 14, 13, 4, 3, 2, 1, 1),
    (4, 7, 7, 4, 3, 1, 1, 4),
    (3, 8, 9, 3, 3, 1, 0, 1),
    (5, 5, 7, 6, 1, 1, 0, 1),
    (2, 9, 9, 3, 5, 2, 2, 1),
]


def _qconv_oracle(x, zx, w, b, s, p, groups):
    """acc = b + sum over in-bounds taps of (x - zx) * w, in int64 (no requantisation)."""
    ci, h, wd = x.shape
    co, cig, k, _ = w.shape
    xp = np.zeros((ci, h + 2 * p, wd + 2 * p), np.int64)
    xp[:, p : p + h, p : p + wd] = x.astype(np.int64) - zx  # padding contributes nothing
    ho, wo = (h + 2 * p - k) // s + 1, (wd + 2 * p - k) // s + 1
    acc = np.zeros((co, ho, wo), np.int64)
    for oc in range(co):
        gi = oc // (co // groups)
        for i in range(ho):
            for j in range(wo):
                win = xp[gi * cig : (gi + 1) * cig, i * s : i * s + k, j * s : j * s + k]
                acc[oc, i, j] = b[oc] + int((win * w[oc].astype(np.int64)).sum())
    return acc


def _qconv_program(rng) -> tuple[str, dict[str, np.ndarray]]:
    blocks, want = [], {}
    for i, (ci, h, wd, co, k, s, p, gr) in enumerate(QCONVS):
        x = rng.integers(-128, 128, (ci, h, wd))
        w = rng.integers(-127, 128, (co, ci // gr, k, k))
        b = rng.integers(-5000, 5000, co)
        zx = int(rng.integers(-20, 20))
        acc = _qconv_oracle(x, zx, w, b, s, p, gr)
        _, ho, wo = acc.shape
        # m0 = 2^30, shift 0: rq(acc) = round(acc / 2); zy 3; clamp to int8
        pre = ((acc * (1 << 30) + (1 << 30)) >> 31) + 3
        want[f"q{i}"] = np.clip(pre, -128, 127)
        want[f"m{i}"] = ((pre >= -128) & (pre <= 127)).astype(np.int64)
        ints = lambda a: ", ".join(str(int(v)) for v in np.asarray(a).reshape(-1))  # noqa: E731
        blocks.append(f"""
    {{
        static const int8_t x[] = {{{ints(x)}}}, w[] = {{{ints(w)}}};
        static const int32_t b[] = {{{ints(b)}}};
        static int32_t m0[{co}], sh[{co}];
        static int8_t y[{co * ho * wo}];
        static uint8_t mask[{co * ho * wo}];
        for (int c = 0; c < {co}; c++) {{ m0[c] = 1 << 30; sh[c] = 0; }}
        qconv_fwd(x, {zx}, w, b, m0, sh, 3, -128, 127, y, mask, 1, {ci}, {h}, {wd}, {co},
                  {ho}, {wo}, {k}, {s}, {p}, {gr});
        et_ints("q{i}", y, 0, {co * ho * wo});
        et_ints("m{i}", 0, mask, {co * ho * wo});
    }}""")
    return "".join(blocks), want


_INT8_MAIN = r"""
static void et_ints(const char *name, const int8_t *y, const uint8_t *m, int n) {
    char buf[16];
    et_puts("OUT "); et_puts(name);
    for (int i = 0; i < n; i++) {
        int v = y ? y[i] : m[i], k = 15;
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
int main(void) {
@CALLS@
    et_puts("ET_END\n");
    return 0;
}
"""


def _int8_outputs(tmp_path, target: str, calls: str) -> dict[str, np.ndarray]:
    return int8_kernel_outputs(
        tmp_path, target, int8_runtime_source() + _INT8_MAIN.replace("@CALLS@", calls), 120
    )


def _check_int8(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name, ref in want.items():
        np.testing.assert_array_equal(got[name], ref.reshape(-1), err_msg=name)


@needs_cc
def test_int8_conv_forward_portable_path_matches_integer_oracle(tmp_path):
    # Prepare: int8 inputs / weights, a zero point, int32 biases; numpy's integer sums
    calls, want = _qconv_program(np.random.default_rng(0))
    # Execute: the portable kernels (no DSP) on the host
    got = _int8_outputs(tmp_path, "host", calls)
    # Assert: every output and mask equal
    _check_int8(got, want)


@needs_arm
def test_int8_conv_forward_dsp_path_matches_integer_oracle_on_cortex_m4(tmp_path):
    # Prepare: the same cases; on the Cortex-M4 the 3x3 convs take the SMLAD path (rows that
    # end a row or the weight array are loaded without reading past them)
    calls, want = _qconv_program(np.random.default_rng(0))
    # Execute
    got = _int8_outputs(tmp_path, "cortex-m4", calls)
    # Assert: bit for bit the integers the portable path and numpy compute
    _check_int8(got, want)


# The forward entry points the generated trainer calls (qconv3_fwd, qconv_mm_fwd) with their
# arena scratch: (B, Ci, H, W, Co, K, stride, padding, groups, requantisation, lo, hi).
# Requantisation: "fast" (every channel's n = 31 - shift in 33..36: the hoisted table, zy
# folded into SMMLA's rounding), "mixed" (every third channel n = 31: no table, q_out),
# "wide" (shift -32: zy << s does not fit, no table). Mat-mult: 3x3 at stride 1 and 2,
# padding 0 and 1, odd widths and pixel counts, Ci * 9 not a multiple of 4 (the scalar tail),
# odd Co (the last channel paired with itself), Co > 64 (no table; with 2 Co Kt > 4 KiB no
# paired rows either), 1x1 with a channel remainder; padded 3x3: one input channel (a first
# layer), depthwise (requantised from registers), a channel multiplier and grouped channels.
QFWD = [
    (1, 3, 9, 11, 5, 3, 1, 1, 1, "fast", -128, 127),
    (2, 2, 14, 13, 4, 3, 2, 1, 1, "fast", -20, 100),
    (1, 8, 14, 14, 16, 3, 2, 1, 1, "fast", -128, 127),
    (2, 4, 7, 9, 3, 3, 2, 0, 1, "mixed", -128, 127),
    (1, 5, 6, 7, 7, 3, 1, 0, 1, "wide", -128, 127),
    (1, 4, 5, 5, 66, 3, 1, 1, 1, "fast", -128, 127),
    (1, 2, 5, 6, 66, 3, 2, 1, 1, "fast", -128, 127),
    (2, 7, 5, 7, 9, 1, 1, 0, 1, "fast", -20, 100),
    (1, 16, 7, 7, 32, 1, 1, 0, 1, "fast", -128, 127),
    (1, 1, 28, 28, 8, 3, 2, 1, 1, "fast", -128, 127),
    (2, 1, 9, 11, 3, 3, 1, 0, 1, "mixed", -20, 100),
    (1, 16, 7, 7, 16, 3, 1, 1, 16, "fast", -128, 127),
    (2, 5, 8, 9, 5, 3, 2, 1, 5, "mixed", -20, 100),
    (1, 3, 7, 8, 6, 3, 1, 1, 3, "fast", -128, 127),
    (1, 4, 6, 7, 4, 3, 2, 0, 2, "wide", -20, 100),
]


class QConv2d:  # the fields of edgetrain.quant's QConv2d that the scratch sizing reads
    def __init__(self, co, cig, k, s, p, g):
        self.weight = np.zeros((co, cig, k, k))
        self.stride, self.padding, self.groups = s, p, g


def _qfwd_program(rng) -> tuple[str, dict[str, np.ndarray]]:
    from edgetrain.codegen._int8_layout import forward_scratch_bytes, runs_mat_mult_forward

    ints = lambda a: ", ".join(str(int(v)) for v in np.asarray(a).reshape(-1))  # noqa: E731
    blocks, want = [], {}
    for i, (b, ci, h, wd, co, k, s, p, gr, rq, lo, hi) in enumerate(QFWD):
        x = rng.integers(-128, 128, (b, ci, h, wd))
        w = rng.integers(-127, 128, (co, ci // gr, k, k))
        bias = rng.integers(-5000, 5000, co)
        zx = int(rng.integers(-128, 128))
        acc = np.stack([_qconv_oracle(xn, zx, w, bias, s, p, gr) for xn in x])
        ho, wo = acc.shape[2:]
        m0 = 1518500250
        sh = np.array([{"fast": -2 - c % 4, "mixed": 0 if c % 3 == 2 else -3, "wide": -32}[rq]
                       for c in range(co)])  # fmt: skip
        n = (31 - sh)[None, :, None, None]
        pre = ((acc * m0 + (np.int64(1) << (n - 1))) >> n) + 3
        want[f"y{i}"] = np.clip(pre, lo, hi)
        want[f"m{i}"] = ((pre >= lo) & (pre <= hi)).astype(np.int64)
        want[f"c{i}"] = np.full(16, 0x5A)
        op = QConv2d(co, ci // gr, k, s, p, gr)
        fb = forward_scratch_bytes(op, (ci, h, wd), (co, ho, wo))
        fn = "qconv_mm_fwd" if runs_mat_mult_forward(op) else "qconv3_fwd"
        dims = f"{b}, {ci}, {h}, {wd}, {co}, {ho}, {wo}, {k}, {s}, {p}, {gr}"
        blocks.append(f"""
    {{
        static const int8_t x[] = {{{ints(x)}}}, w[] = {{{ints(w)}}};
        static const int32_t bias[] = {{{ints(bias)}}}, sh[] = {{{ints(sh)}}};
        static int32_t m0[{co}];
        static int8_t y[{acc.size}];
        static uint8_t mask[{acc.size}];
        static int8_t scratch[{fb} + 16] __attribute__((aligned(8)));
        for (int c = 0; c < {co}; c++) m0[c] = {m0};
        memset(scratch, 0x5A, sizeof scratch);
        {fn}(x, {zx}, w, bias, m0, sh, 3, {lo}, {hi}, y, mask, scratch, {dims});
        et_ints("y{i}", y, 0, {acc.size});
        et_ints("m{i}", 0, mask, {acc.size});
        et_ints("c{i}", 0, (const uint8_t *)scratch + {fb}, 16);
    }}""")
    return "".join(blocks), want


@pytest.mark.parametrize(
    "target", [pytest.param("host", marks=needs_cc), pytest.param("cortex-m4", marks=needs_arm)]
)
def test_int8_forward_entry_points_match_integer_oracle(tmp_path, target):
    # Prepare: every forward case with its scratch sized by forward_scratch_bytes; the host
    # runs the portable kernels, the Cortex-M4 the DSP paths: the mat-mult tile (paired weight
    # rows, patches for 3x3 columns, the hoisted table or q_out), the padded 3x3 planes (stored
    # sums or requantised from registers)
    calls, want = _qfwd_program(np.random.default_rng(1))
    # Execute
    got = _int8_outputs(tmp_path, target, calls)
    # Assert: bit for bit numpy's integers, and no scratch byte written past its size
    _check_int8(got, want)


# --------------------------------------------------------------- instruction-count bounds
# Regression bounds (instructions per MAC, batch 1, Cortex-M4 under QEMU): measured at the
# commit that introduced them plus about 15 % headroom; the minimum the hardware allows is in
# NOTE [ The Cortex-M4's minimum instructions per MAC ].
BOUNDS = {
    ("conv 3x3 s2 8->16, 14x14", "fp32", "forward"): 4.7,
    ("conv 3x3 s2 8->16, 14x14", "fp32", "weight-gradient"): 5.6,
    ("conv 3x3 s2 8->16, 14x14", "fp32", "input-gradient"): 5.7,
    ("pointwise 16->32, 7x7", "fp32", "forward"): 2.5,
    ("pointwise 16->32, 7x7", "fp32", "weight-gradient"): 2.0,
    ("pointwise 16->32, 7x7", "fp32", "input-gradient"): 2.6,
    ("linear 784->32", "fp32", "forward"): 3.6,
    ("linear 784->32", "fp32", "weight-gradient"): 4.7,
    ("linear 784->32", "int8", "forward"): 3.0,
    ("conv 3x3 s2 8->16, 14x14", "int8", "forward"): 11.0,
    ("pointwise 16->32, 7x7", "int8", "forward"): 6.6,
    ("pointwise 16->32, 7x7", "int8", "input-gradient"): 3.0,
    ("pointwise 16->32, 7x7", "int8", "weight-gradient"): 4.7,
}


@needs_arm
def test_kernel_instruction_counts_stay_within_their_bounds():
    from edgetrain.codegen._microbench import measure_kernels, minimum_per_mac, standard_cases

    # Prepare: the benchmark's cases (all of them: what else a firmware holds changes the
    # compiler's inlining, so the bounds hold for the benchmark's own firmware)
    cases = standard_cases()
    bounded = [c for c in cases if (c.layer, c.precision, c.role) in BOUNDS]
    assert len(bounded) == len(BOUNDS)
    # Execute: one kernel-only firmware per precision under QEMU -icount
    counts = measure_kernels(cases, target="cortex-m4")
    # Assert: within the bound, and never below what the hardware can do
    for c in bounded:
        per_mac = counts[c] / c.macs
        assert minimum_per_mac(c) <= per_mac <= BOUNDS[(c.layer, c.precision, c.role)], (
            c,
            per_mac,
        )


@needs_arm
def test_mcu_run_reports_instructions_per_mac_of_full_training(tmp_path):
    from edgetrain.codegen import (
        TrainingSpec,
        compile_int8_project,
        compile_project,
        mcu_run,
    )
    from edgetrain.models import build_model

    # Prepare: mcu-cnn, full training at batch 1 on the nRF52840 profile; the MACs counted
    # independently from the module shapes (forward + weight gradient everywhere, input
    # gradient except into the image)
    m, x = build_model("mcu-cnn")
    plan, s = full_training_case(m, x, "mcu-cnn", 4, 10)
    fwd, first = 0, None
    hooks = []

    def count(mod, inp, out):
        nonlocal fwd, first
        if isinstance(mod, torch.nn.Conv2d):
            k = mod.weight[0].numel()
            macs = out.numel() * k
        else:
            macs = mod.weight.numel() * out.shape[0]
        fwd += macs
        first = macs if first is None else first

    for mod in m.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            hooks.append(mod.register_forward_hook(count))
    with torch.no_grad():
        m.eval()
        m(x)
    for h in hooks:
        h.remove()
    # Execute: the same training in fp32 and in int8 with QAS, each under QEMU -icount
    res = mcu_run(
        compile_project(
            plan, m, x, "cortex-m4", TrainingSpec(s, s, steps=2, lr=0.01), tmp_path / "p"
        )  # fmt: skip
    )
    q, _, _ = compile_int8_project(plan, m, s, s, "cortex-m4", tmp_path / "q", steps=2, lr=0.01)
    res8 = mcu_run(q)
    # Assert: the step's MACs, and instructions per MAC from QEMU's count (issue 14's targets
    # on the Cortex-M4: fp32 <= 4, int8 <= 2 per MAC, int8 at least 2x fewer than fp32)
    assert res.macs_per_step == res8.macs_per_step == 3 * fwd - first
    assert res.instructions_per_mac < 4.0  # 10.1 before the register-blocked kernels
    assert res8.instructions_per_mac <= 2.0  # 25 before the DSP kernels
    assert 2 * res8.instructions_per_step <= res.instructions_per_step


@needs_arm
def test_int8_program_builds_and_trains_the_same_under_the_users_compiler_flags(tmp_path):
    # Prepare: mcu-cnn's int8 QAS program for the Cortex-M4, trained 2 steps with its
    # parameters dumped; a library user builds it with their own flags (NOTE [ Hand-written
    # asm and the user's compiler flags ]): Arduino's -Os, a debug -O0, frame pointers kept
    from edgetrain.codegen import compile_int8_project, mcu_run
    from edgetrain.codegen._run import _meta, _parse, run_command
    from edgetrain.codegen._targets import get_target
    from edgetrain.models import build_model

    m, x = build_model("mcu-cnn")
    plan, s = full_training_case(m, x, "mcu-cnn", 2, 10)
    proj, _, _ = compile_int8_project(
        plan, m, s, s, "cortex-m4", tmp_path / "p", steps=2, lr=0.05, dump_params=True
    )
    tgt = get_target("cortex-m4")
    want = mcu_run(proj)
    flag_sets = [("-Os",), ("-O0",), ("-O2", "-fno-omit-frame-pointer")]
    for flags in flag_sets:
        # Execute: the same sources and link, the optimisation flags replaced
        cflags = [f for f in tgt.cflags if not f.startswith("-O")] + list(flags)
        exe = proj / f"et_{'_'.join(flags)}.elf"
        srcs = sorted(str(p) for p in proj.glob("*.c"))
        ld = [f if f != "-Wl,-T,link.ld" else f"-Wl,-T,{proj / 'link.ld'}" for f in tgt.ldflags]
        build = subprocess.run(
            [tgt.cc, *cflags, "-o", str(exe), *srcs, *ld], capture_output=True, text=True
        )
        assert build.returncode == 0, (flags, build.stderr[-2000:])
        run = subprocess.run(
            run_command(tgt, exe), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            timeout=600,
        )  # fmt: skip
        got = _parse(run.stdout, _meta(proj), tgt, exe)
        # Assert: the same losses and trained int8 parameters, bit for bit
        assert got.losses == want.losses, flags
        assert got.params == want.params, flags
