"""ExecuTorch export of the acceptance models: training parity with the Trainer and memory.

For each model: `edgetrain.plan(..., executor="executorch")` (every activation kept, BN
frozen), `edgetrain.export`, then STEPS steps on the same seeded batches in ExecuTorch's
Python runtime (its portable C++ kernels and SGD) and in `edgetrain.Trainer` (the same plan run
by PyTorch); reports the largest loss and parameter differences, and the plan's predicted peak
against ExecuTorch's own memory plan (planned buffers + constants + optimizer state).

    .venv/bin/python bench/export.py [--steps 20] [--models mcu-cnn,...] [--json]

Results: docs/results.md, "Export to ExecuTorch".
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
import time

import torch

import edgetrain
from edgetrain.export import load_program
from edgetrain.models import build_model, model_loss
from edgetrain.planner import Executor

# model, device, batch size, policy, optimizer, lr
CASES = {
    "mcu-cnn": ("rpi4", 8, "all", "sgd", 0.05),
    "mbv2-w0.35": ("snapdragon-865", 4, "last:4", "sgd", 0.05),
    "mlp-autoencoder": ("rpi4", 16, "all", "momentum", 0.01),
    "vit-tiny": ("snapdragon-865", 4, "all", "sgd", 0.02),
}


def batches(plan, model, steps: int, seed: int = 0):
    """`steps` seeded batches of the plan's shape, with targets its loss accepts."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        x = torch.randn((plan.batch_size, *plan.input_shape), generator=g)
        with torch.no_grad():
            y_like = model(x)
        if plan.loss == "cross-entropy":
            y = torch.randint(0, y_like.shape[1], (plan.batch_size,), generator=g)
        else:
            y = torch.rand(y_like.shape, generator=g)
        out.append((x, y))
    return out


def run_case(name: str, steps: int) -> dict:
    device, batch, policy, optimizer, lr = CASES[name]
    model, example = build_model(name)
    t0 = time.perf_counter()
    plan = edgetrain.plan(
        model, example, device=device, batch_size=batch, policy=policy,
        optimizer=optimizer, executor="executorch", freeze_batch_norm=True, loss=model_loss(name),
    )  # fmt: skip
    t_plan = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        result = edgetrain.export(copy.deepcopy(model), plan, d, lr=lr)
        t_export = time.perf_counter() - t0
        program = load_program(d)
        data = batches(plan, copy.deepcopy(model), steps)
        t0 = time.perf_counter()
        et_losses = [program.step(x, y) for x, y in data]
        t_et = (time.perf_counter() - t0) / steps
        et_params = program.named_parameters()
    oracle = dataclasses.replace(plan, executor=Executor.PYTORCH)
    ref = copy.deepcopy(model)
    with edgetrain.Trainer(ref, oracle, lr=lr) as t:
        ref_losses = [t.step(x, y) for x, y in data]
    ref_params = dict(ref.named_parameters())
    mem = result.memory
    return {
        "model": name,
        "device": device,
        "batch_size": batch,
        "policy": policy,
        "optimizer": optimizer,
        "steps": steps,
        "trainable_tensors": len(result.manifest["trainable"]),
        "max_loss_diff": max(abs(a - b) for a, b in zip(et_losses, ref_losses)),
        "max_param_diff": max(
            float((v - ref_params[k].detach()).abs().max()) for k, v in et_params.items()
        ),
        "loss_first_last": [et_losses[0], et_losses[-1]],
        "predicted_peak_bytes": mem["predicted_peak_bytes"],
        **{f"et_{k}": v for k, v in mem["executorch"].items()},
        "difference_ratio": mem["difference_ratio"],
        "pte_bytes": result.manifest["files"]["model.pte"]["bytes"],
        "ptd_bytes": result.manifest["files"]["model.ptd"]["bytes"],
        "plan_s": round(t_plan, 2),
        "export_s": round(t_export, 2),
        "et_step_s": round(t_et, 5),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--models", default=",".join(CASES))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = [run_case(m, args.steps) for m in args.models.split(",")]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| model | batch | trains | max |Δloss| | max |Δparam| | predicted B | ExecuTorch B "
          "(planned + constants + optimizer) | diff |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['batch_size']} | {r['policy']} ({r['trainable_tensors']} "
            f"tensors), {r['optimizer']} | {r['max_loss_diff']:.2e} | {r['max_param_diff']:.2e} "
            f"| {r['predicted_peak_bytes']:,} | {r['et_total_bytes']:,} ({r['et_planned_bytes']:,}"
            f" + {r['et_constant_bytes']:,} + {r['et_optimizer_state_bytes']:,}) | "
            f"{100 * r['difference_ratio']:+.1f} % |"
        )


if __name__ == "__main__":
    main()
