"""Benchmark: what executing a plan costs in step time, measured side by side with plain PyTorch.

    .venv/bin/python bench/step_time.py [--quick] [--out results/bench]

(a) Overhead: an unconstrained plan (strategy `exact`, budget = the device's whole memory) run by
    `edgetrain.Trainer` against a plain PyTorch loop (`loss.backward(); opt.step()`), same model,
    same batches, alternating A/B within one process so that machine noise hits both alike.
    Target: Trainer step time <= 1.05 x plain PyTorch.
(b) Step time against memory budget: for `mbv2-w0.35` and `resnet18-cifar`, the baseline is
    `torch.utils.checkpoint.checkpoint_sequential` over the model's flattened blocks with k segments
    (sqrt(n) among them). Each baseline point's *measured* peak becomes our budget; our `exact`
    plan at that budget is measured (peak from the allocator, time side by side) and should be
    faster at a measured peak no higher than the baseline's.

Peaks are read from the allocator's allocation/free events (`edgetrain.measure.MemoryMeter`),
counting what is live before the step (parameters, buffers, the batch) as the baseline. Times are
medians over alternating repetitions; only ratios are meaningful (the host is shared and noisy).
Writes step_time.json and step_time.md (atomically).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import track
from torch.utils.checkpoint import checkpoint_sequential

import edgetrain
from edgetrain.measure import MemoryMeter, storage_bytes
from edgetrain.models import build_model
from edgetrain.storage import write_json_atomic, write_text_atomic

console = Console()


def _batch(x: torch.Tensor, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if x.dtype.is_floating_point:
        xb = torch.randn(batch, *x.shape[1:], generator=g)
    else:
        xb = torch.randint(0, 100, (batch, *x.shape[1:]), generator=g)
    return xb, torch.randint(0, 10, (batch,), generator=g)


def flat_blocks(name: str, model: torch.nn.Module) -> torch.nn.Sequential:
    """The model as a flat `nn.Sequential` of its blocks (what checkpoint_sequential needs)."""
    if name == "resnet18-cifar":
        blocks = [model.conv1, model.bn1, model.relu]
        for i in range(1, 5):
            blocks += list(getattr(model, f"layer{i}"))
        blocks += [model.avgpool, torch.nn.Flatten(1), model.fc]
    elif name in ("mbv2-w0.35", "mcunet", "mcu-cnn"):
        blocks = list(model.features) + [model.pool, torch.nn.Flatten(1), model.classifier]
    else:
        raise ValueError(f"no flat form for {name}")
    return torch.nn.Sequential(*blocks)


class _Plain:
    """Plain PyTorch training step (SGD, cross-entropy, gradients set to None)."""

    def __init__(self, model, lr, segments: int = 0, name: str = ""):
        self.model, self.segments = model, segments
        self.seq = flat_blocks(name, model) if segments else None
        self.opt = torch.optim.SGD(model.parameters(), lr=lr)

    def step(self, x, y) -> float:
        out = (
            checkpoint_sequential(self.seq, self.segments, x, use_reentrant=False)
            if self.segments
            else self.model(x)
        )
        loss = F.cross_entropy(out, y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


def _peak(model, stepper, x, y) -> int:
    with MemoryMeter(storage_bytes(list(model.parameters()) + list(model.buffers()) + [x, y])) as m:
        stepper.step(x, y)
    return m.trace.peak_bytes


def _time(stepper, x, y) -> float:
    t = time.perf_counter()
    stepper.step(x, y)
    return time.perf_counter() - t


def side_by_side(steppers: dict[str, object], x, y, reps: int) -> dict[str, float]:
    """Median step seconds of each stepper, alternating them (ABBA) after one warm-up."""
    for s in steppers.values():
        s.step(x, y)
    times: dict[str, list[float]] = {k: [] for k in steppers}
    order = list(steppers.items())
    for r in range(reps):  # ABBA: neither side always runs right after the other
        for k, s in order if r % 2 == 0 else order[::-1]:
            times[k].append(_time(s, x, y))
    return {k: statistics.median(v) for k, v in times.items()}


def overhead(name: str, batch: int, reps: int) -> dict:
    """(a) Trainer on an unconstrained plan against the plain loop."""
    torch.manual_seed(0)
    model, ex = build_model(name, pretrained=False)
    p = edgetrain.plan(model, ex, device="rpi4", batch_size=batch, strategy="exact", name=name)
    x, y = _batch(ex, batch, 0)
    with edgetrain.Trainer(model, p, lr=1e-3) as t:
        med = side_by_side({"edgetrain": t, "pytorch": _Plain(model, 1e-3)}, x, y, reps)
    return {
        "model": name,
        "batch_size": batch,
        "plan_stages": [s.decision.value for s in p.stages],
        "in_place_update": p.in_place_update,
        "edgetrain_step_s": med["edgetrain"],
        "pytorch_step_s": med["pytorch"],
        "ratio": med["edgetrain"] / med["pytorch"],
    }


def budget_sweep(name: str, batch: int, reps: int) -> list[dict]:
    """(b) Our exact plans against checkpoint_sequential at equal measured memory."""
    torch.manual_seed(0)
    model, ex = build_model(name, pretrained=False)
    n = len(flat_blocks(name, model))
    seg_options = sorted({2, round(math.sqrt(n)), n // 2, n} - {0, 1})
    x, y = _batch(ex, batch, 1)
    rows = []
    for k in seg_options:
        base = _Plain(model, 1e-3, segments=k, name=name)
        base.step(x, y)  # warm-up (kernel caches, oneDNN primitives)
        base_peak = _peak(model, base, x, y)
        try:
            p = edgetrain.plan(
                model,
                ex,
                device="rpi4",
                budget_bytes=base_peak,
                batch_size=batch,
                strategy="exact",
                name=name,
            )
        except edgetrain.PlanInfeasibleError as e:
            rows.append(
                {
                    "model": name,
                    "segments": k,
                    "baseline_peak_bytes": base_peak,
                    "infeasible": str(e),
                }
            )
            continue
        with edgetrain.Trainer(model, p, lr=1e-3) as t:
            t.step(x, y)
            ours_peak = _peak(model, t, x, y)
            med = side_by_side({"edgetrain": t, "checkpoint_sequential": base}, x, y, reps)
        rows.append(
            {
                "model": name,
                "batch_size": batch,
                "segments": k,
                "sqrt_n": k == round(math.sqrt(n)),
                "baseline_peak_bytes": base_peak,
                "edgetrain_peak_bytes": ours_peak,
                "edgetrain_predicted_peak_bytes": p.predicted_peak_bytes,
                "plan": "".join(s.decision.value[0].upper() for s in p.stages),
                "micro_batch_size": p.micro_batch_size,
                "baseline_step_s": med["checkpoint_sequential"],
                "edgetrain_step_s": med["edgetrain"],
                "speedup": med["checkpoint_sequential"] / med["edgetrain"],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and models")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads (default 1: on a shared host, multi-threaded kernels "
        "stall when another process holds a core, which swamps the ratios)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    reps = 5 if args.quick else 31
    over_cases = [("mcu-cnn", 8), ("transformer-tiny", 8), ("mbv2-w0.35", 8), ("resnet18-cifar", 8)]
    sweep_cases = [("mbv2-w0.35", 8), ("resnet18-cifar", 8)]
    if args.quick:
        over_cases, sweep_cases = over_cases[:2], sweep_cases[1:]
    a = [overhead(m, b, reps) for m, b in track(over_cases, description="(a) overhead")]
    b = [
        r
        for m, bs in track(sweep_cases, description="(b) budget sweep")
        for r in budget_sweep(m, bs, reps)
    ]
    out = Path(args.out)
    write_json_atomic(
        {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "overhead": a,
            "budget_sweep": b,
        },
        out / "step_time.json",
    )
    md = ["| model | batch | edgetrain step s | PyTorch step s | ratio |", "|---|---|---|---|---|"]
    md += [
        f"| {r['model']} | {r['batch_size']} | {r['edgetrain_step_s']:.4f} | "
        f"{r['pytorch_step_s']:.4f} | {r['ratio']:.3f} |"
        for r in a
    ]
    md += [
        "",
        "| model | segments | checkpoint_sequential peak | its step s | edgetrain peak "
        "(measured) | plan | edgetrain step s | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in b:
        if "infeasible" in r:
            md.append(
                f"| {r['model']} | {r['segments']} | {r['baseline_peak_bytes']:,} | | "
                f"infeasible | | | |"
            )
            continue
        md.append(
            f"| {r['model']} | {r['segments']}{' (sqrt n)' if r['sqrt_n'] else ''} | "
            f"{r['baseline_peak_bytes']:,} | {r['baseline_step_s']:.4f} | "
            f"{r['edgetrain_peak_bytes']:,} | {r['plan']} mb{r['micro_batch_size']} | "
            f"{r['edgetrain_step_s']:.4f} | {r['speedup']:.2f}x |"
        )
    write_text_atomic("\n".join(md) + "\n", out / "step_time.md")
    console.print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
