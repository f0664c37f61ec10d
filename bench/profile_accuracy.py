"""Benchmark: the cost model's predictions against measurement, every reference model.

    .venv/bin/python bench/profile_accuracy.py [--out results/bench]

Writes profile_accuracy.json and profile_accuracy.md: predicted vs measured saved-activation
bytes (autograd's saved tensors) and peak bytes (allocator events) at batch sizes 1 and 8, plus
the wall time of `edgetrain profile --model resnet18 --device rpi4 --json` with an empty graph
cache (cold) and a warm one, each in a fresh process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.progress import track

from edgetrain.models import build_model
from edgetrain.prepare import profile
from edgetrain.storage import write_json_atomic, write_text_atomic

MODELS = [
    "mcu-cnn",
    "mbv2-w0.35",
    "mcunet",
    "resnet18",
    "resnet18-cifar",
    "transformer-tiny",
    "minilm",
]


def _cli_seconds(cache: str) -> float:
    env = {**os.environ, "EDGETRAIN_CACHE_DIR": cache}
    t = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edgetrain.cli",
            "profile",
            "--model",
            "resnet18",
            "--device",
            "rpi4",
            "--json",
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()
    rows = []
    for name, batch in track([(m, b) for m in MODELS for b in (1, 8)], description="profiling"):
        torch.manual_seed(0)
        model, x = build_model(name, pretrained=False)
        p = profile(model, x, device="rpi4", batch_size=batch, measure=True, name=name)
        c, m = p.cost, p.measured
        rows.append(
            {
                "model": name,
                "batch_size": batch,
                "activation_bytes": c.activation_bytes,
                "measured_activation_bytes": m.activation_bytes,
                "peak_bytes": c.peak_bytes,
                "measured_peak_bytes": m.peak_bytes,
                "peak_ratio": c.peak_bytes / m.peak_bytes,
            }
        )
    with tempfile.TemporaryDirectory() as cache:
        cold = _cli_seconds(cache)
        warm = _cli_seconds(cache)
    result = {
        "rows": rows,
        "resnet18_profile_cli_s": {"cold_cache": cold, "warm_cache": warm},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    out = Path(args.out)
    write_json_atomic(result, out / "profile_accuracy.json")
    lines = [
        "| model | batch | activations predicted | measured | peak predicted | measured | "
        "predicted / measured |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['activation_bytes']:,} | "
            f"{r['measured_activation_bytes']:,} | {r['peak_bytes']:,} | "
            f"{r['measured_peak_bytes']:,} | {r['peak_ratio']:.4f} |"
        )
    lines.append("")
    lines.append(
        f"`edgetrain profile --model resnet18 --device rpi4 --json`: {cold:.2f} s with an "
        f"empty graph cache, {warm:.2f} s with a warm one (fresh process each)."
    )
    write_text_atomic("\n".join(lines) + "\n", out / "profile_accuracy.md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
