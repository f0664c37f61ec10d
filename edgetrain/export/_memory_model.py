"""The ExecuTorch executor's memory, as preparation asks for it (NOTE [ Asking an executor
for its memory ], edgetrain/planner/_executor.py): `EXECUTORCH_MEMORY`, registered in the
`edgetrain.executors` entry-point group (pyproject.toml) as `executorch-fp32`.

NOTE [ The ExecuTorch executor's memory, for the planner ]
    An ExecuTorch training program keeps every activation (one memory plan, no recompute or
    paging), trains one whole batch, and returns each trainable tensor's gradient as an output
    that SGD applies after the method (NOTE [ What ExecuTorch's training export expresses ]).
    So a candidate is the plan kept whole, and its peak is edgetrain's lifetime simulation of
    that step (`edgetrain.cost.simulate_step` through `Problem.evaluate`): every activation
    kept, gradients of the trainable set held until the update (not in place), the
    optimizer's state, and no host kernel workspaces (ExecuTorch's portable kernels allocate
    none). It is a prediction, not the exporter's answer: `edgetrain export` reads
    ExecuTorch's own memory plan of the program and records both and their difference in the
    manifest, and tests/test_export.py holds them within a stated tolerance (docs/results.md,
    "Export to ExecuTorch"). The candidate is refused (a typed error, as the executor was
    pinned) when the plan asks for what ExecuTorch's SGD cannot run (Adam, schedules).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetrain.cost import Optimizer
from edgetrain.errors import ExportUnsupportedError
from edgetrain.export._checks import trainable_names
from edgetrain.planner import (
    ActivationDecision,
    CandidateMemory,
    Executor,
    MemoryRequest,
    Plan,
    Precision,
    Problem,
)

__all__ = ["EXECUTORCH_MEMORY", "ExecuTorchMemory", "predicted_peak_bytes"]


def predicted_peak_bytes(graph, device, plan: Plan) -> int:
    """edgetrain's prediction of the ExecuTorch step for `plan` on `graph` (the capture at the
    plan's batch size, batch norm frozen): NOTE above."""
    prob = Problem(
        graph,
        device,
        1 << 62,
        optimizer=Optimizer.parse(plan.optimizer),
        allow_paging=False,
        trainable=frozenset(trainable_names(plan)),
        in_place_update=False,
        weight_decay=plan.weight_decay,
    )
    keep = tuple(ActivationDecision.KEEP for _ in prob.stages)
    return prob.evaluate(keep).peak_bytes


@dataclass(frozen=True)
class _Program:
    request: MemoryRequest

    def candidate(self, plan: Plan) -> CandidateMemory:
        if plan.optimizer not in (Optimizer.SGD.value, Optimizer.MOMENTUM.value):
            raise ExportUnsupportedError(
                f"ExecuTorch's training runtime provides SGD (with momentum), not "
                f"{plan.optimizer}; plan with --optimizer sgd or momentum"
            )
        if plan.schedule != "constant":
            raise ExportUnsupportedError(
                f"ExecuTorch's SGD runs at a constant learning rate, not schedule "
                f"{plan.schedule!r}; plan with --schedule constant"
            )
        req = self.request
        peak = predicted_peak_bytes(req.graph, req.device, plan)
        return CandidateMemory(
            peak,
            ("executorch: every activation kept, gradients applied by SGD after the method",),
        )


@dataclass(frozen=True)
class ExecuTorchMemory:
    """The ExecuTorch executor's memory (NOTE [ The ExecuTorch executor's memory, for the
    planner ])."""

    executor: Executor = Executor.EXECUTORCH
    precision: Precision = Precision.FP32
    updates_in_place: bool = False  # ExecuTorch's SGD steps after the method returns

    def for_model(self, request: MemoryRequest) -> _Program:
        return _Program(request)


EXECUTORCH_MEMORY = ExecuTorchMemory()
