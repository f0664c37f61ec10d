"""Kernel microbenchmarks: one kernel call at a time, timed by QEMU's instruction count.

A kernel-only firmware (the generated platform layer and linker script, the kernels' own C
text, buffers of pseudo-random values) calls each case `REPEAT` times between two reads of the
MPS2 FPGA-IO counter; with `-icount shift=0` a tick is 40 instructions, so a case's count is
(ticks x 40 - the empty timing's) / REPEAT. `bench/c_kernels.py` prints the table;
`tests/test_codegen_kernels.py` bounds it.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgetrain.codegen._int8_kernels import int8_runtime_source
from edgetrain.codegen._kernels import KERNELS, PRELUDE
from edgetrain.codegen._platform import render_platform
from edgetrain.codegen._run import run_command
from edgetrain.codegen._targets import TargetKind, get_target
from edgetrain.errors import BuildError, McuRunError

REPEAT = 4


@dataclass(frozen=True)
class KernelCase:
    """One timed kernel call. `call` names the buffers X, W, B, Y, D, DX (fp32: float;
    int8: QX, QW, QD (the int8 output gradient), QS (scratch) int8, QB, M0, SH int32, MASK uint8, GDX, IW,
    IB real); `macs` is the
    multiply-accumulates the call performs (padding taps included, as the IR counts them)."""

    layer: str
    precision: str  # "fp32" | "int8"
    role: str  # "forward" | "weight-gradient" | "input-gradient"
    kernel: str
    call: str
    macs: int


_HEADER = r"""#include <stdint.h>
#include <stddef.h>
void et_puts(const char *s);
void et_put_u32(uint32_t v);
void et_put_hex(uint32_t v);
uint64_t et_ticks(void);
uint32_t et_stack_peak_bytes(void);
void et_platform_init(void);
void et_exit(int code);
"""

_BUFFERS = r"""
#define NB {n}
static float X[NB], W[NB], B[NB], Y[NB], D[NB], DX[NB];
static int8_t QX[NB], QW[NB], QY[NB], QD[NB], QS[NB] __attribute__((aligned(8)));
static int32_t QB[NB], M0[NB], SH[NB];
static uint8_t MASK[NB];
static ET_REAL DACC[NB], GDX[NB], IW[NB], IB[NB];
static uint32_t seed = 12345u;
static uint32_t rnd(void) {{ seed = seed * 1664525u + 1013904223u; return seed >> 8; }}
static void fill(void) {{
    for (int i = 0; i < NB; i++) {{
        X[i] = (float)(rnd() % 2001) / 1000.0f - 1.0f; W[i] = (float)(rnd() % 2001) / 4000.0f - 0.25f;
        B[i] = 0.01f; Y[i] = 0.0f; D[i] = (float)(rnd() % 2001) / 1000.0f - 1.0f; DX[i] = 0.0f;
        QX[i] = (int8_t)(rnd() % 256 - 128); QW[i] = (int8_t)(rnd() % 255 - 127);
        QD[i] = (int8_t)(rnd() % 255 - 127);
        QB[i] = (int32_t)(rnd() % 2001) - 1000; M0[i] = 1518500250; SH[i] = -9;
        MASK[i] = (uint8_t)(rnd() % 4 != 0); DACC[i] = (ET_REAL)D[i] * (ET_REAL)1e-3;
        GDX[i] = 0; IW[i] = 1; IB[i] = 1;
    }}
}}
static void report(const char *name, uint64_t t) {{
    et_puts("K "); et_puts(name); et_puts(" "); et_put_u32((uint32_t)t); et_puts("\n");
}}
int main(void) {{
    fill();
    uint64_t t0 = et_ticks();
    for (int r = 0; r < {repeat}; r++) __asm__ volatile("" ::: "memory");
    report("empty", et_ticks() - t0);
{calls}
    et_puts("ET_END\n");
    return 0;
}}
"""


def _program(cases: list[KernelCase], precision: str, buffer_elems: int) -> str:
    if precision == "fp32":
        body = PRELUDE + "".join(KERNELS[k] for k in dict.fromkeys(c.kernel for c in cases))
        real = "float"
    else:
        body = int8_runtime_source()
        real = "float"
    calls = []
    for i, c in enumerate(cases):
        calls.append(
            f"    t0 = et_ticks();\n    for (int r = 0; r < {REPEAT}; r++) {{\n"
            f'        {c.kernel}({c.call});\n        __asm__ volatile("" ::: "memory");\n'
            f'    }}\n    report("c{i}", et_ticks() - t0);'
        )
    return (
        '#include "et_model.h"\n'
        f"#define ET_REAL {real}\n#define ET_HAS_DSP 1\n"
        + body
        + _BUFFERS.format(n=buffer_elems, repeat=REPEAT, calls="\n".join(calls))
    )


def measure_kernels(
    cases: list[KernelCase], *, target: str = "cortex-m4", buffer_elems: int = 26000
) -> dict[KernelCase, float]:
    """Instructions of one call of each case (one firmware per precision), under QEMU."""
    tgt = get_target(target)
    if tgt.kind is not TargetKind.CORTEX_M:
        raise McuRunError(f"kernel instruction counts need a Cortex-M target, not {target!r}")
    out: dict[KernelCase, float] = {}
    for precision in ("fp32", "int8"):
        group = [c for c in cases if c.precision == precision]
        if group:
            out.update(_run_group(group, precision, tgt, buffer_elems))
    return out


def _run_group(group, precision, tgt, buffer_elems) -> dict[KernelCase, float]:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        files = render_platform(tgt, 2 << 20, 2 << 20, 1024)
        files["et_model.h"] = _HEADER
        files["main.c"] = _program(group, precision, buffer_elems)
        for k, v in files.items():
            (d / k).write_text(v)
        exe = d / "k.elf"
        ld = [f if f != "-Wl,-T,link.ld" else f"-Wl,-T,{d / 'link.ld'}" for f in tgt.ldflags]
        cmd = [tgt.cc, *tgt.cflags, "-o", str(exe), str(d / "main.c"), str(d / "et_platform.c")]
        r = subprocess.run([*cmd, *ld], capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"kernel benchmark ({precision}) failed to build:\n{r.stderr[-3000:]}")
        r = subprocess.run(
            run_command(tgt, exe),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
    if "ET_END" not in r.stdout:
        raise McuRunError(f"kernel benchmark ({precision}) did not finish:\n{r.stdout[-2000:]}")
    ticks = {
        f[1]: int(f[2]) for f in (ln.split() for ln in r.stdout.splitlines()) if f[:1] == ["K"]
    }
    per_tick = 1e9 / tgt.counter_hz
    empty = ticks["empty"] * per_tick
    return {c: max(0.0, ticks[f"c{i}"] * per_tick - empty) / REPEAT for i, c in enumerate(group)}


# -- the cases: mcu-cnn's layers and a 784-32 dense layer, batch 1 ---------------------------
@dataclass(frozen=True)
class ConvShape:
    name: str
    ci: int
    h: int
    co: int
    ho: int
    k: int
    s: int
    p: int
    g: int = 1

    @property
    def macs(self) -> int:
        return self.co * self.ho * self.ho * (self.ci // self.g) * self.k * self.k


CONVS = (
    ConvShape("conv 3x3 s2 1->8, 28x28", 1, 28, 8, 14, 3, 2, 1),
    ConvShape("conv 3x3 s2 8->16, 14x14", 8, 14, 16, 7, 3, 2, 1),
    ConvShape("depthwise 3x3 16, 7x7", 16, 7, 16, 7, 3, 1, 1, 16),
    ConvShape("pointwise 16->32, 7x7", 16, 7, 32, 7, 1, 1, 0),
)
DENSE = (("linear 784->32", 784, 32), ("linear 32->10", 32, 10))


def _fp32_conv(c: ConvShape) -> list[KernelCase]:
    if c.k == 1 and c.g == 1:
        d = f"1, {c.ci}, {c.co}, {c.h * c.h}"
        fwd = ("conv2d_pw_fwd", f"X, W, B, Y, {d}")
        bin_ = ("conv2d_pw_bwd_input", f"D, W, DX, 0, {d}")
        bw = ("conv2d_pw_bwd_weight_sgd", f"D, X, W, 0, 0.001f, {c.co}, {d}")
    else:
        d = (
            f"1, {c.ci}, {c.h}, {c.h}, {c.co}, {c.ho}, {c.ho}, {c.k}, {c.k}, {c.s}, {c.s}, "
            f"{c.p}, {c.p}, 1, 1, {c.g}"
        )
        fwd = ("conv2d_fwd", f"X, W, B, Y, {d}")
        bin_ = ("conv2d_bwd_input", f"D, W, DX, 0, {d}")
        bw = ("conv2d_bwd_weight_sgd", f"D, X, W, 0, 0.001f, {c.co}, {d}")
    roles = (("forward", fwd), ("weight-gradient", bw), ("input-gradient", bin_))
    return [KernelCase(c.name, "fp32", r, k, a, c.macs) for r, (k, a) in roles]


def _int8_conv(c: ConvShape) -> list[KernelCase]:
    d = f"1, {c.ci}, {c.h}, {c.h}, {c.co}, {c.ho}, {c.ho}, {c.k}, {c.s}, {c.p}, {c.g}"
    fwd = "qconv_mm_fwd" if c.g == 1 and c.ci >= 2 else "qconv3_fwd"  # runs_mat_mult_forward
    roles = (
        ("forward", fwd, f"QX, -3, QW, QB, M0, SH, 5, -128, 127, QY, MASK, QS, {d}"),
        ("weight-gradient", "qconv_update", f"QD, 1e-3f, QX, -3, QW, QB, IW, IB, 0.01f, QY, {d}"),
        ("input-gradient", "qconv_bwd_input", f"QD, 1e-3f, QW, GDX, 0, QY, {d}"),
    )
    return [KernelCase(c.name, "int8", r, k, a, c.macs) for r, k, a in roles]


def _dense(name: str, i: int, o: int) -> list[KernelCase]:
    d, m = f"1, {i}, {o}", i * o
    return [
        KernelCase(name, "fp32", "forward", "linear_fwd", f"X, W, B, Y, {d}", m),
        KernelCase(
            name, "fp32", "weight-gradient", "linear_bwd_weight_sgd",
            f"D, X, W, B, 0.001f, {o}, {d}", m,
        ),
        KernelCase(name, "fp32", "input-gradient", "linear_bwd_input", f"D, W, DX, 0, {d}", m),
        KernelCase(
            name, "int8", "forward", "qlinear_fwd",
            f"QX, -3, QW, QB, M0, SH, 5, -128, 127, QY, MASK, {d}", m,
        ),
        KernelCase(
            name, "int8", "weight-gradient", "qlinear_update",
            f"QD, 1e-3f, QX, -3, QW, QB, IW, IB, 0.01f, {d}", m,
        ),
        KernelCase(
            name, "int8", "input-gradient", "qlinear_bwd_input", f"QD, 1e-3f, QW, GDX, 0, {d}", m
        ),
    ]  # fmt: skip


def standard_cases() -> list[KernelCase]:
    """Every conv/linear kernel, forward and both gradients, fp32 and int8, on mcu-cnn's layer
    shapes and a 784->32 dense layer, batch 1."""
    out: list[KernelCase] = []
    for c in CONVS:
        out += _fp32_conv(c) + _int8_conv(c)
    for name, i, o in DENSE:
        out += _dense(name, i, o)
    return out


def minimum_per_mac(case: KernelCase) -> float:
    """The fewest instructions per multiply-accumulate the Cortex-M4 can spend (NOTE [ The
    Cortex-M4's minimum instructions per MAC ])."""
    dense = case.layer.startswith("linear")
    if case.precision == "fp32":
        if dense:  # batch 1: every weight is loaded once (and, for the update, stored once)
            return 3.0 if case.role == "weight-gradient" else 2.0
        return 1.0
    if case.role == "forward":
        return 0.5
    if dense:  # batch 1: each int8 weight is re-rounded once by the update
        return 8.0 if case.role == "weight-gradient" else 1.0
    return 0.5


# NOTE [ The Cortex-M4's minimum instructions per MAC ]
# From the Cortex-M4 Technical Reference Manual (ARM DDI 0439B, 3.3 "Instruction set summary"
# and 7.2 "FPU instruction set"): VFMA.F32 is one instruction doing one fused multiply-add
# (3 cycles, pipelined), VLDR.32 loads one S register (VLDM n registers in 1 instruction but
# n+1 cycles, which a compiler does not form from separate loads); SMLAD is one instruction
# doing two 16x16 multiplies and adds both to an accumulator (1 cycle), fed by SXTB16 /
# SXTB16 ROR #8, which unpack 4 loaded int8 values into two registers of 16-bit pairs.
#   fp32 conv / 1x1 conv, every role: 1 VFMA per MAC; each operand can be reused from
#     registers (a loaded input feeds several outputs), so the loads amortise: 1.0.
#   fp32 dense at batch 1: each weight is used once per step, so forward and input gradient
#     need 1 VLDR + 1 VFMA per MAC (2.0) and the in-place SGD weight gradient loads,
#     multiply-adds and stores each weight (3.0).
#   int8 forward: 1 SMLAD per 2 MACs, unpacking amortised over outputs: 0.5.
#   int8 backward (NOTE [ int8 integer backward ]: int8 output gradient dq, exact int32 sums):
#     1 SMLAD per 2 MACs where dq and x (or W) pair up in 16-bit lanes, unpacking amortised:
#     0.5. Dense at batch 1 reuses no weight: the input gradient loads each weight (a quarter
#     LDR, two SXTB16 and an SMLAD per 4 MACs: ~1.0), and the QAS update re-rounds each one
#     (load, integer-to-float, scale, add, round, saturate, store: ~8.0 per weight, which is
#     per MAC at batch 1).
