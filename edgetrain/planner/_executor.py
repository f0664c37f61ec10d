"""What preparation asks an executor that keeps its own memory layout (no torch).

NOTE [ Asking an executor for its memory ]
    The PyTorch executor's memory is the lifetime simulation of its allocator
    (`edgetrain.cost.simulate_step`), which the planner's solvers evaluate directly. An executor
    with a layout of its own (the C trainer's static arena, fp32 or int8) answers for itself
    through this small interface, so preparation never imports an executor's internals:

    1. `ExecutorMemory.for_model(request)` once per model and device: checks what does not
       depend on the trainable set (flash, kernels for every op) and raises
       `PlanInfeasibleError` or another typed error with the reason.
    2. `ProgramMemory.candidate(plan)` for each candidate trainable set, most faithful first:
       the program's SRAM peak for that plan, or `CandidateUnsupportedError` when this
       executor cannot train that set (e.g. the int8 trainer has no bias-only mode).

    Executors are found through the `edgetrain.executors` entry-point group (pyproject.toml),
    the packaging ecosystem's plugin mechanism, so a new executor is registered without
    editing preparation, and preparation sits beside the executors rather than above them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from edgetrain.cost import Device
from edgetrain.errors import CandidateUnsupportedError
from edgetrain.ir import Graph
from edgetrain.planner._plan import Executor, Plan, Precision

__all__ = [
    "CandidateMemory",
    "CandidateUnsupportedError",
    "ExecutorMemory",
    "MemoryRequest",
    "ProgramMemory",
]


@dataclass(frozen=True)
class MemoryRequest:
    """One model on one device, as an executor's memory model needs it.

    `model` and `example_input` are the user's `torch.nn.Module` and example tensor, typed as
    `object` here because the planner does not import torch; `graph` is the capture at the
    plan's batch size with batch norm frozen (every C executor folds it).
    """

    model: object
    example_input: object
    graph: Graph
    device: Device
    batch_size: int


@dataclass(frozen=True)
class CandidateMemory:
    """An executor's answer for one candidate plan."""

    peak_sram_bytes: int
    notes: tuple[str, ...] = ()


@runtime_checkable
class ProgramMemory(Protocol):
    """The memory model of one executor bound to one model and device."""

    def candidate(self, plan: Plan) -> CandidateMemory:
        """The SRAM peak of the program that runs `plan`; raises `CandidateUnsupportedError`."""
        ...


@runtime_checkable
class ExecutorMemory(Protocol):
    """An executor (and precision) that predicts its own memory (NOTE above)."""

    executor: Executor
    precision: Precision

    def for_model(self, request: MemoryRequest) -> ProgramMemory:
        """Checks independent of the trainable set; raises a typed error with the reason."""
        ...
