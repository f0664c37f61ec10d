"""Lean backward and LoRA on the PyTorch executor (issue 15): predicted and measured peaks.

    .venv/bin/python bench/lean.py [--quick] [--out results/bench-lean]

Rows (batch 8, strategy keep-all, BN statistics frozen, PyTorch executor, this host):
  - mbv2-w0.35 at 3x128x128: full fine-tuning, bias-only (TinyTL-B), the `tinytl` strategy
    (biases + lite residuals + head) with the whole batch (its wide frozen blocks run a
    sample at a time, NOTE [ Sample-chunked frozen segments ]), the same plan without chunked
    segments (measured only), planned under 1/6.5 of full's measured peak (TinyTL's published
    saving), and the model's plain inference peak (eval, no grad);
  - `last:2` on mbv2-w0.35, mcunet, resnet18-cifar, kws-dscnn, vit-tiny: lean and plain;
  - bias-only on har-cnn1d (max-pool 1-d, dropout) and resnet18 (max-pool 2-d): lean and
    plain (the plain row's prediction is the lean plan's, not re-simulated);
  - minilm (seq 128) on rpi4: lora:8 on query/key/value, last:2, full, and the LoRA plan the
    planner makes under last:2's measured peak (skipped by --quick).
Each row: the plan's prediction (no host check) and two real steps' allocator peak
(`PYTORCH_RUNNER`, NOTE [ The measured training step ]). Writes lean.json and lean.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import re
import sys
from pathlib import Path

import torch

import edgetrain
from edgetrain.measure import MemoryMeter, storage_bytes
from edgetrain.models import build_model
from edgetrain.planner import Plan, StepRequest
from edgetrain.runtime import PYTORCH_RUNNER
from edgetrain.strategies._full import prepare as full_prepare
from edgetrain.strategies._tinytl import prepare as tinytl_prepare

BATCH = 8
BIG = 1 << 36


def _batch(model, x):
    xb = x.expand(BATCH, *x.shape[1:]).contiguous()
    return xb, torch.zeros(BATCH, dtype=torch.long)


def _measure(model, plan: Plan, x) -> int:
    xb, yb = _batch(model, x)
    return PYTORCH_RUNNER.measured_peak_bytes(StepRequest(copy.deepcopy(model), plan, xb, yb))


def _row(name, what, plan: Plan, measured: int) -> dict:
    p = plan.predicted_peak_bytes
    return {
        "model": name,
        "plan": what,
        "lean_backward": plan.lean_backward,
        "predicted_peak_bytes": p,
        "measured_peak_bytes": measured,
        "error_pct": round(100 * (p - measured) / measured, 3),
    }


def _plan(model, x, name, policy, device="rpi4"):
    return edgetrain.plan(
        model,
        x,
        device=device,
        batch_size=BATCH,
        budget_bytes=BIG,
        strategy="keep-all",
        policy=policy,
        freeze_batch_norm=True,
        executor="pytorch",
        measure=False,
        name=name,
    )


def _inference_peak(model, x) -> int:
    m = copy.deepcopy(model).eval()
    xb, yb = _batch(model, x)
    with torch.no_grad():
        m(xb)
        with MemoryMeter(storage_bytes([*m.parameters(), *m.buffers(), xb, yb])) as meter:
            out = m(xb)
            del out
    assert meter.trace is not None
    return meter.trace.peak_bytes


def _simulated(plan: Plan) -> Plan:
    """`plan` with its lifetime simulation as the prediction where the host check replaced
    it by the measured peak (its note keeps the simulated figure)."""
    for note in plan.notes:
        m = re.search(r"simulated ([\d,]+) B", note)
        if m:
            peak = int(m.group(1).replace(",", ""))
            return dataclasses.replace(
                plan, predicted=dataclasses.replace(plan.predicted, peak_bytes=peak), notes=()
            )
    return dataclasses.replace(plan, notes=())


def tinytl_rows() -> list[dict]:
    torch.manual_seed(0)
    model, x = build_model("mbv2-w0.35", pretrained=False)
    rows = []
    for what, prep in (("full", full_prepare), ("tinytl", tinytl_prepare)):
        p = prep(model, x, device="rpi4", budget_bytes=BIG, batch_size=BATCH, name="mbv2-w0.35")
        plan = _simulated(p.plan)
        rows.append(
            _row("mbv2-w0.35", f"{what} ({_decisions(plan)})", plan, _measure(p.model, plan, x))
        )
    # the same tinytl plan with every frozen block at the whole batch (measured only)
    whole = dataclasses.replace(plan, chunked_modules=())
    rows.append(
        {
            "model": "mbv2-w0.35",
            "plan": "tinytl without chunked segments (measured only)",
            "measured_peak_bytes": _measure(p.model, whole, x),
        }  # fmt: skip
    )
    # TinyTL's published saving as the budget: 1/6.5 of full fine-tuning's measured peak (the
    # planner may split the batch into micro-batches: the same batch-8 gradient)
    budget = rows[0]["measured_peak_bytes"] * 10 // 65
    p = tinytl_prepare(model, x, device="rpi4", budget_bytes=budget, batch_size=BATCH, name="m")
    plan = _simulated(p.plan)
    what = f"tinytl under 1/6.5 of full ({_decisions(plan)})"
    rows.append(_row("mbv2-w0.35", what, plan, _measure(p.model, plan, x)))
    plan = _plan(model, x, "mbv2-w0.35", "bias-only")
    rows.append(_row("mbv2-w0.35", "bias-only", plan, _measure(model, plan, x)))
    rows.append(
        {
            "model": "mbv2-w0.35",
            "plan": "inference (eval, no grad)",
            "measured_peak_bytes": _inference_peak(model, x),
        }  # fmt: skip
    )
    return rows


def _lean_and_plain(names: tuple[str, ...], policy: str) -> list[dict]:
    """`policy` as planned, and the same plan run as plain PyTorch (its prediction is the
    planned one, not re-simulated)."""
    rows = []
    for name in names:
        torch.manual_seed(0)
        model, x = build_model(name, pretrained=False)
        lean = _plan(model, x, name, policy)
        plain = dataclasses.replace(
            lean, lean_backward=False, plain_activations=(), chunked_modules=()
        )
        for p in (lean, plain):
            rows.append(_row(name, policy, p, _measure(model, p, x)))
    return rows


def last_k_rows() -> list[dict]:
    return _lean_and_plain(
        ("mbv2-w0.35", "mcunet", "resnet18-cifar", "kws-dscnn", "vit-tiny"), "last:2"
    )


def pool_dropout_rows() -> list[dict]:
    """bias-only where max pooling and dropout sit on the gradient path: lean and plain."""
    return _lean_and_plain(("har-cnn1d", "resnet18"), "bias-only")


def lora_rows(device: str) -> list[dict]:
    torch.manual_seed(0)
    model, x = build_model("minilm", pretrained=False)
    rows = []
    for policy in ("lora:8:query,key,value", "last:2", "all"):
        p = _plan(model, x, "minilm", policy, device)
        rows.append(_row("minilm", f"{policy} ({device})", p, _measure(model, p, x)))
    # the planner asked for the LoRA plan under last:2's measured peak (strategy auto: it may
    # add micro-batching or recomputation; prediction without the host check)
    budget = rows[1]["measured_peak_bytes"] - 1
    p = edgetrain.plan(
        model, x, device=device, batch_size=BATCH, budget_bytes=budget,
        policy="lora:8:query,key,value", freeze_batch_norm=True, measure=False, name="minilm",
    )  # fmt: skip
    what = f"lora:8:query,key,value under last:2's peak ({device}, {_decisions(p)})"
    rows.append(_row("minilm", what, p, _measure(model, p, x)))
    return rows


def _decisions(plan: Plan) -> str:
    recomputed = sum(s.decision.value == "recompute" for s in plan.stages)
    chunked = ", ".join(f"{m} by {c}" for m, c in plan.chunked_modules) or "none"
    return (
        f"micro-batches {plan.accumulation_steps}, recomputed stages {recomputed}, "
        f"chunked segments: {chunked}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip minilm")
    ap.add_argument("--out", default="results/bench-lean")
    args = ap.parse_args(argv)
    rows = tinytl_rows() + last_k_rows() + pool_dropout_rows()
    rows += [] if args.quick else lora_rows("rpi4")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lean.json").write_text(json.dumps(rows, indent=2))
    lines = ["| model | plan | lean | predicted | measured | error |", "|---|---|---|---|---|---|"]
    for r in rows:
        pred = r.get("predicted_peak_bytes")
        lines.append(
            f"| {r['model']} | {r['plan']} | {r.get('lean_backward', '-')} | "
            f"{'-' if pred is None else f'{pred:,}'} | {r['measured_peak_bytes']:,} | "
            f"{r.get('error_pct', '-')} |"
        )
    (out / "lean.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
