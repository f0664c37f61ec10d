"""`full` — plain fine-tuning, the reference every surveyed system is compared against.

Paper: none; this is what vanilla PyTorch does (the survey's baseline, and POET's, TinyTL's and
TTE's "full fine-tuning" rows). Reproduced: every parameter trains, every saved activation stays
in RAM, the whole batch runs at once, SGD after backward (`edgetrain.plan(strategy="keep-all",
allow_paging=False)`). Not reproduced: nothing is left out; when the step does not fit the
device, `prepare` raises `PlanInfeasibleError` with the smallest peak.
"""

from __future__ import annotations

import torch

from edgetrain.cost import load_device
from edgetrain.prepare import trainer_plan as plan
from edgetrain.strategies._common import Prepared, System, SystemName, train_planned


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
    p = plan(
        model,
        example_input,
        device=dev,
        budget_bytes=budget_bytes,
        batch_size=batch_size,
        strategy="keep-all",
        allow_paging=False,
        name=name,
    )
    return Prepared(
        SystemName.FULL,
        model,
        example_input,
        p,
        dev,
        p.predicted_peak_bytes,
        ("every parameter trains; every activation kept",),
    )


SYSTEM = System(SystemName.FULL, prepare, train_planned)
