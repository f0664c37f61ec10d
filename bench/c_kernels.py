"""Benchmark: instructions per multiply-accumulate of the C trainer's kernels on the Cortex-M4.

    .venv/bin/python bench/c_kernels.py [--out results/bench] [--skip-models]

1. Per kernel (edgetrain.codegen._microbench): every conv / linear kernel, forward,
   weight-gradient (with the in-place SGD / QAS update) and input-gradient, fp32 and int8, on
   mcu-cnn's layer shapes and a 784->32 dense layer at batch 1, each timed alone in a
   kernel-only firmware under QEMU (mps2-an386, `-icount shift=0`), beside the fewest
   instructions per MAC the Cortex-M4 can spend (NOTE [ The Cortex-M4's minimum instructions
   per MAC ], edgetrain/codegen/_microbench.py).
2. Whole training steps (mcu-run's instructions_per_step / macs_per_step), full training at
   batch 1 on the nrf52840 profile: mcu-cnn fp32 and int8 (QAS), a conv-conv-dense net on 28x28
   (conv 1->8 3x3 s2, conv 8->16 3x3 s2, ReLUs, linear 784->10) and a 784-32-10 MLP.

Writes c_kernels.json and c_kernels.md under --out. Needs the Arm toolchain and QEMU.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

import edgetrain
from edgetrain.codegen import (
    SampleSet,
    TrainingSpec,
    compile_int8_project,
    compile_project,
    mcu_run,
)
from edgetrain.codegen._microbench import measure_kernels, minimum_per_mac, standard_cases
from edgetrain.models import build_model
from edgetrain.storage import write_json_atomic, write_text_atomic


def kernel_rows() -> list[dict]:
    cases = standard_cases()
    counts = measure_kernels(cases, target="cortex-m4")
    return [
        {
            "layer": c.layer,
            "precision": c.precision,
            "role": c.role,
            "kernel": c.kernel,
            "macs": c.macs,
            "instructions": counts[c],
            "instructions_per_mac": counts[c] / c.macs,
            "minimum_per_mac": minimum_per_mac(c),
        }
        for c in cases
    ]


def _models():
    torch.manual_seed(0)
    yield "mcu-cnn", *build_model("mcu-cnn")
    ccd = nn.Sequential(
        nn.Conv2d(1, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10),
    )
    yield "conv-conv-dense", ccd, torch.randn(1, 1, 28, 28)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    yield "mlp-784-32-10", mlp, torch.randn(1, 1, 28, 28)


def model_rows(work: Path) -> list[dict]:
    rows = []
    g = np.random.default_rng(0)
    for name, m, x in _models():
        plan = edgetrain.plan(
            m, x, device="nrf52840", strategy="keep-all", policy="all",
            freeze_batch_norm=True, name=name,
        )  # fmt: skip
        s = SampleSet(
            g.integers(0, 256, (4, *x.shape[1:]), dtype=np.uint8), g.integers(0, 10, 4),
            0.2860, 0.3530,
        )  # fmt: skip
        runs = [("fp32", compile_project(plan, m, x, "cortex-m4",
                                         TrainingSpec(s, s, steps=3, lr=0.01), work / name))]  # fmt: skip
        if name == "mcu-cnn":
            p, _, _ = compile_int8_project(
                plan, m, s, s, "cortex-m4", work / f"{name}-int8", steps=3, lr=0.01
            )
            runs.append(("int8-qas", p))
        for precision, proj in runs:
            r = mcu_run(proj)
            rows.append(
                {
                    "model": name,
                    "precision": precision,
                    "device": "nrf52840",
                    "target": "cortex-m4",
                    "policy": "all",
                    "batch_size": 1,
                    "instructions_per_step": r.instructions_per_step,
                    "macs_per_step": r.macs_per_step,
                    "instructions_per_mac": r.instructions_per_mac,
                }
            )
    return rows


def markdown(res: dict) -> str:
    lines = [
        "| layer | precision | role | kernel | instructions / MAC | Cortex-M4 minimum |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["kernels"]:
        lines.append(
            f"| {r['layer']} | {r['precision']} | {r['role']} | `{r['kernel']}` | "
            f"{r['instructions_per_mac']:.2f} | {r['minimum_per_mac']:.2f} |"
        )
    if res.get("models"):
        lines += [
            "",
            "| model | precision | instructions / step | MACs / step | instructions / MAC |",
            "|---|---|---|---|---|",
        ]
        for r in res["models"]:
            lines.append(
                f"| {r['model']} | {r['precision']} | {r['instructions_per_step']:,.0f} | "
                f"{r['macs_per_step']:,} | {r['instructions_per_mac']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--skip-models", action="store_true")
    args = ap.parse_args()
    res: dict = {"kernels": kernel_rows()}
    if not args.skip_models:
        with tempfile.TemporaryDirectory() as tmp:
            res["models"] = model_rows(Path(tmp))
    out = Path(args.out)
    write_json_atomic(res, out / "c_kernels.json")
    md = markdown(res)
    write_text_atomic(md, out / "c_kernels.md")
    print(md)


if __name__ == "__main__":
    main()
