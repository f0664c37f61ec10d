"""Benchmark: the model zoo (models as users write them) against the allocator.

    .venv/bin/python bench/zoo.py [--out results/bench] [--models NAME ...]

For every zoo model at batch 1 and 8, with the loss of its task:
1. `profile --measure`: predicted against measured saved activations (autograd's saved
   tensors) and peak (allocator events) of plain training on `rpi4`;
2. an `auto` plan for the PyTorch executor at half the keep-all peak on `rpi4`, and at the
   nRF52840's own memory: the lifetime simulation's peak, the plan's prediction (the measured
   peak when running it on this host found more: NOTE [ Plans are checked against the
   allocator ]), and the peak measured over two real steps of the Trainer in this process; or
   the refusal's stated floor.

Writes zoo.json and zoo.md under --out.
"""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path

import torch
from rich.progress import track

from edgetrain.capture import example_target
from edgetrain.errors import PlanInfeasibleError
from edgetrain.measure import MemoryMeter, storage_bytes
from edgetrain.models import ZOO
from edgetrain.prepare import plan, profile
from edgetrain.runtime import Trainer
from edgetrain.storage import write_json_atomic, write_text_atomic


def _measured(model, p, x, y) -> int:
    peak = 0
    with Trainer(model, p, lr=0.01) as t:
        for _ in range(2):
            state = [*model.parameters(), *model.buffers(), *t.optimizer_state()]
            with MemoryMeter(storage_bytes([*state, x, y])) as m:
                t.step(x, y)
            peak = max(peak, m.trace.peak_bytes)
    return peak


def _plan_row(entry, batch: int, device: str, budget: int | None) -> dict:
    model, x = entry.factory()
    try:
        p = plan(
            model,
            x,
            device=device,
            budget_bytes=budget,
            batch_size=batch,
            strategy="auto",
            executor="pytorch",
            loss=entry.loss,
            name=entry.name,
        )
    except PlanInfeasibleError as e:
        floor = re.search(r"smallest achievable peak is ([\d,]+) bytes", str(e))
        return {"device": device, "budget_bytes": budget, "infeasible": True,
                "floor_bytes": int(floor[1].replace(",", "")) if floor else None}  # fmt: skip
    xb = x.expand(batch, *x.shape[1:]).contiguous()
    with torch.no_grad():
        y = example_target(entry.loss, copy.deepcopy(model)(xb), None, None)
    checked = [n for n in p.notes if n.startswith("checked on this host")]
    sim = re.search(r"simulated ([\d,]+) B", checked[0]) if checked else None
    return {
        "device": device,
        "budget_bytes": p.budget_bytes,
        "infeasible": False,
        "predicted_bytes": p.predicted_peak_bytes,
        "measured_bytes": _measured(model, p, xb, y),
        "simulated_bytes": int(sim[1].replace(",", "")) if sim else p.predicted_peak_bytes,
        "plan": f"{p.notes[0].removeprefix('trainable policy: ')}, mb {p.micro_batch_size}, "
        + "".join(s.decision.value[0] for s in p.stages),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--models", nargs="*", default=sorted(ZOO))
    args = ap.parse_args()
    rows = []
    for name, batch in track([(m, b) for m in args.models for b in (1, 8)], description="zoo"):
        entry = ZOO[name]
        model, x = entry.factory()
        prof = profile(
            model, x, device="rpi4", batch_size=batch, loss=entry.loss, measure=True, name=name
        )
        c, m = prof.cost, prof.measured
        rows.append(
            {
                "model": name,
                "loss": entry.loss,
                "batch_size": batch,
                "activation_bytes": c.activation_bytes,
                "measured_activation_bytes": m.activation_bytes,
                "peak_bytes": c.peak_bytes,
                "measured_peak_bytes": m.peak_bytes,
                "plans": [
                    _plan_row(entry, batch, "rpi4", c.peak_bytes // 2),
                    _plan_row(entry, batch, "nrf52840", None),
                ],
            }
        )
    out = Path(args.out)
    write_json_atomic({"rows": rows, "torch": torch.__version__}, out / "zoo.json")
    text = "\n".join(_markdown(rows)) + "\n"
    write_text_atomic(text, out / "zoo.md")
    print(text)


def _markdown(rows: list[dict]) -> list[str]:
    lines = [
        "| model (loss) | batch | activations pred. / meas. | peak pred. | meas. | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} ({r['loss']}) | {r['batch_size']} | {r['activation_bytes']:,} / "
            f"{r['measured_activation_bytes']:,} | {r['peak_bytes']:,} | "
            f"{r['measured_peak_bytes']:,} | {r['peak_bytes'] / r['measured_peak_bytes']:.3f} |"
        )
    lines += [
        "",
        "| model | batch | device | budget | simulated | predicted | measured | meas./pred. "
        "| plan (policy, micro-batch, stages) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for q in r["plans"]:
            head = f"| {r['model']} | {r['batch_size']} | {q['device']} | "
            if q["infeasible"]:
                budget = f"{q['budget_bytes']:,}" if q["budget_bytes"] else "device"
                lines.append(head + f"{budget} | refused: floor {q['floor_bytes']:,} | | | | |")
                continue
            lines.append(
                head + f"{q['budget_bytes']:,} | {q['simulated_bytes']:,} | "
                f"{q['predicted_bytes']:,} | {q['measured_bytes']:,} | "
                f"{q['measured_bytes'] / q['predicted_bytes']:.3f} | {q['plan']} |"
            )
    return lines


if __name__ == "__main__":
    main()
