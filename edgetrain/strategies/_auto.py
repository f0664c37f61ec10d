"""`auto` — edgetrain's joint planner.

Not a surveyed paper: the planner of this project (`edgetrain.plan(strategy="auto")`) searches,
jointly, what trains (all parameters, then sparser `last:K` sets, then bias-only), the
micro-batch size, in-place updates and keep / recompute / page per stage, and returns the
cheapest candidate (time by default) that fits the budget, preferring the most faithful
trainable set. It combines the mechanisms of POET (recompute + paging), Melon / Sage
(micro-batching) and TTE (sparse and in-place update) on one cost model.
"""

from __future__ import annotations

import torch

from edgetrain._planning import trainer_plan as plan
from edgetrain.cost import load_device
from edgetrain.strategies._common import Prepared, System, SystemName, train_planned


def prepare(model: torch.nn.Module, example_input: torch.Tensor, *, device="nrf52840",
            budget_bytes: int | None = None, batch_size: int = 1, name: str = "model",
            objective: str = "time") -> Prepared:
    dev = load_device(device)
    p = plan(model, example_input, device=dev, budget_bytes=budget_bytes, batch_size=batch_size,
             strategy="auto", objective=objective, name=name)
    return Prepared(SystemName.AUTO, model, example_input, p, dev, p.predicted_peak_bytes,
                    p.notes)


SYSTEM = System(SystemName.AUTO, "edgetrain joint planner", prepare, train_planned)
