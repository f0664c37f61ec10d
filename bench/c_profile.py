"""Profile: where the instructions of one C training step go, by kernel and by source line.

    .venv/bin/python bench/c_profile.py [--model mcu-cnn] [--precision int8|fp32]
                                        [--target cortex-m4] [--out results/bench] [--top 30]

Builds the model's full-training program (batch 1, frozen BN, the nRF52840 profile) twice, for
2 and for 4 steps, with `-g` added (debug information does not change GCC's code), and runs
both under QEMU with `-icount shift=0` and `-d in_asm,exec,nochain`: every translated block's
instructions and every execution of a block. The difference of the two runs' per-address
counts, halved, is one training step without the set-up and the evaluation. Addresses map to
functions and lines through `addr2line -i`, so an inlined kernel is counted under its own name
and under the function it is inlined into. The total is `mcu-run`'s instructions_per_step plus
what each step prints (its loss line, a few hundred instructions).

Writes c_profile.md under --out. Needs the Arm toolchain and QEMU; QEMU's log of the 4-step
run is a few hundred MB in a temporary folder.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

import edgetrain
from edgetrain.codegen import SampleSet, TrainingSpec, compile_int8_project, compile_project
from edgetrain.codegen._run import run_command
from edgetrain.codegen._targets import get_target
from edgetrain.models import build_model
from edgetrain.storage import write_text_atomic

_EXEC = re.compile(r"Trace \d+: 0x[0-9a-f]+ \[[0-9a-f]+/([0-9a-f]+)/")
_INSN = re.compile(r"^0x([0-9a-f]{8}):\s")


def _build(work: Path, args, steps: int) -> Path:
    torch.manual_seed(0)
    m, x = build_model(args.model)
    plan = edgetrain.plan(
        m, x, device="nrf52840", strategy="keep-all", policy="all", freeze_batch_norm=True,
        name=args.model,
    )  # fmt: skip
    g = np.random.default_rng(0)
    s = SampleSet(g.integers(0, 256, (4, *x.shape[1:]), dtype=np.uint8),
                  g.integers(0, 10, 4), 0.2860, 0.3530)  # fmt: skip
    out = work / f"steps{steps}"
    if args.precision == "int8":
        compile_int8_project(plan, m, s, s, args.target, out, steps=steps, lr=0.01)
    else:
        spec = TrainingSpec(s, s, steps=steps, lr=0.01)
        compile_project(plan, m, x, args.target, spec, out)
    mk = out / "Makefile"
    mk.write_text(mk.read_text().replace("CFLAGS = ", "CFLAGS = -g ", 1))
    subprocess.run(["make", "-C", str(out)], check=True, capture_output=True)
    return out / "et_train.elf"


def _counts(exe: Path, target: str, log: Path) -> collections.Counter:
    """Executions of each instruction address: QEMU's translated blocks and their runs."""
    cmd = run_command(get_target(target), exe)
    cmd = [cmd[0], "-d", "in_asm,exec,nochain", "-D", str(log), *cmd[1:]]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)
    blocks: dict[int, list[int]] = {}
    per: collections.Counter = collections.Counter()
    cur = None
    with open(log, errors="replace") as fh:
        for line in fh:
            if line.startswith("IN:"):
                cur = None
            elif m := _INSN.match(line):
                pc = int(m.group(1), 16)
                if cur is None:
                    cur = pc
                    blocks[cur] = []
                blocks[cur].append(pc)
            elif m := _EXEC.search(line):
                for pc in blocks.get(int(m.group(1), 16), ()):
                    per[pc] += 1
                cur = None
    log.unlink()
    return per


def _frames(exe: Path, pcs: list[int]) -> dict[int, list[tuple[str, str]]]:
    """Address -> its inline chain [(function, file:line)], innermost first."""
    out = subprocess.run(
        ["arm-none-eabi-addr2line", "-a", "-f", "-i", "-e", str(exe), *map(hex, pcs)],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    raw: dict[int, list[str]] = {}
    for line in out:
        if line.startswith("0x"):
            cur = raw.setdefault(int(line, 16), [])
        else:
            cur.append(line)
    return {pc: list(zip(f[0::2], (os.path.basename(x) for x in f[1::2]))) for pc, f in raw.items()}


def profile(args) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = {n: _counts(_build(work, args, n), args.target, work / f"{n}.log") for n in (2, 4)}
        step = {pc: (runs[4][pc] - runs[2][pc]) / 2 for pc in runs[2].keys() | runs[4].keys()}
        step = {pc: v for pc, v in step.items() if v}
        frames = _frames(work / "steps4" / "et_train.elf", sorted(step))
    by_kernel: collections.Counter = collections.Counter()
    by_line: collections.Counter = collections.Counter()
    for pc, v in step.items():
        chain = frames.get(pc) or [("?", "?")]
        by_kernel[chain[0][0]] += v
        by_line[f"{chain[0][0]} ({chain[0][1]})"] += v
    total = sum(step.values())
    lines = [
        f"# {args.model} {args.precision} on {args.target}: {total:,.0f} instructions per step",
        "",
        "| kernel (innermost function) | instructions / step | share |",
        "|---|---|---|",
    ]
    lines += [f"| `{k}` | {v:,.0f} | {v / total:.1%} |" for k, v in by_kernel.most_common(args.top)]
    lines += ["", "| source line | instructions / step |", "|---|---|"]
    lines += [f"| `{k}` | {v:,.0f} |" for k, v in by_line.most_common(args.top)]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mcu-cnn")
    ap.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    ap.add_argument("--target", default="cortex-m4")
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    md = profile(args)
    write_text_atomic(md, Path(args.out) / "c_profile.md")
    print(md)


if __name__ == "__main__":
    main()
