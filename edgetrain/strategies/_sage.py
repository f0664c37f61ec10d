"""`sage` — Sage (Gim, Ko; MobiSys 2022): "Memory-efficient DNN training on mobile devices".

Reproduced: the training step runs with gradient checkpointing plus micro-batching, and both
are chosen at run time from the memory budget available *now*: `train` asks `budget_schedule(
step)` before every step and, when the answer differs from the budget the current plan was made
for, re-plans (`edgetrain.plan(strategy="auto", policy="all", allow_paging=False)`: recompute per stage, the
micro-batch size, batch norm frozen when micro-batching needs it) and continues with the new
plan from the same weights. Every step after a re-plan is metered (edgetrain.measure) so the
report shows the measured peak under each budget (`TrainReport.notes`).

Not reproduced: Sage's automatic-differentiation graph rewriting on a phone runtime and its
operator-level dynamic checkpointing policy (we decide per stage with the planner's exact DP);
the budget signal here is a function of the step (the bench and tests drop it mid-training),
not the operating system's memory pressure.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from edgetrain.cost import load_device
from edgetrain.prepare import trainer_plan as plan
from edgetrain.runtime import Trainer
from edgetrain.strategies._common import (
    WARMUP_STEPS,
    Prepared,
    System,
    SystemName,
    TrainReport,
    check_samples,
    trainer_step,
)


def _plan_for(model, example_input, device, budget_bytes, batch_size, name):
    return plan(
        model,
        example_input,
        device=device,
        budget_bytes=budget_bytes,
        batch_size=batch_size,
        # every parameter trains; batch norm may freeze so that micro-batching is allowed
        # (`exact` keeps it live and so never micro-batches a model with batch norm)
        strategy="auto",
        policy="all",
        allow_paging=False,
        name=name,
    )


def prepare(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    *,
    device="nrf52840",
    budget_bytes: int | None = None,
    batch_size: int = 1,
    name: str = "model",
) -> Prepared:
    dev = load_device(device)
    p = _plan_for(model, example_input, dev, budget_bytes, batch_size, name)
    return Prepared(
        SystemName.SAGE,
        model,
        example_input,
        p,
        dev,
        p.predicted_peak_bytes,
        (
            f"{p.accumulation_steps} x {p.micro_batch_size} micro-batches, "
            f"{sum(s.decision.value == 'recompute' for s in p.stages)} stages "
            "recomputed; re-planned at run time when the budget changes",
        ),
    )


def train(
    prepared: Prepared,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    samples: int,
    lr: float = 0.05,
    seed: int = 0,
    measure_steps: int = 1,
    budget_schedule: Callable[[int], int] | None = None,
) -> TrainReport:
    """Train, re-planning whenever `budget_schedule(step)` (bytes available now) changes.

    The `measure_steps` steps after the warm-up and the first `measure_steps` steps after every
    re-plan are metered; `measured_peak_bytes` is the largest of them, and each re-plan adds a
    note `step S: budget B, plan P, measured M` (bytes).
    """
    p = prepared.plan
    steps = check_samples(samples, p.batch_size, len(x))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    model = prepared.model
    losses: list[float] = []
    notes: list[str] = []
    peak, written = 0, 0
    durations_s: list[float] = []
    step = 0
    first_meter = WARMUP_STEPS if steps > WARMUP_STEPS else 0
    while step < steps:
        budget = budget_schedule(step) if budget_schedule is not None else p.budget_bytes
        if budget != p.budget_bytes:
            p = _plan_for(
                model, prepared.example_input, prepared.device, budget, p.batch_size, p.model
            )
            first_meter = step
        seg_peak = 0
        with Trainer(model, p, lr=lr) as t:
            while step < steps:
                if budget_schedule is not None and budget_schedule(step) != p.budget_bytes:
                    break
                idx = order[torch.arange(step * p.batch_size, (step + 1) * p.batch_size) % len(x)]
                xb, yb = x[idx].contiguous(), y[idx].contiguous()
                loss, step_peak = trainer_step(
                    t,
                    xb,
                    yb,
                    step=step,
                    durations_s=durations_s,
                    meter=first_meter <= step < first_meter + measure_steps,
                )
                seg_peak = max(seg_peak, step_peak)
                losses.append(loss)
                step += 1
            written += t.storage_bytes_written
        peak = max(peak, seg_peak)
        notes.append(
            f"step {first_meter}: budget {p.budget_bytes}, plan {p.predicted_peak_bytes}"
            f" ({p.accumulation_steps} x {p.micro_batch_size}), measured {seg_peak}"
        )
    return TrainReport.from_timings(
        durations_s,
        steps=steps,
        batch_size=p.batch_size,
        losses=losses,
        measured_peak_bytes=peak,
        storage_bytes_written=written,
        notes=notes,
    )


SYSTEM = System(SystemName.SAGE, prepare, train)
