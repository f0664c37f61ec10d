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
    "PlanRunner",
    "ProgramMemory",
    "StepRequest",
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
    updates_in_place: bool  # SGD applied to each tensor as its gradient completes (the C trainer)

    def for_model(self, request: MemoryRequest) -> ProgramMemory:
        """Checks independent of the trainable set; raises a typed error with the reason."""
        ...


# NOTE [ Plans are checked against the allocator ]
#     The lifetime simulation sees the graph, not the Python that runs it: a value a model's
#     forward keeps in a local variable (a U-Net's skip tensor, attention scores) lives until
#     the function returns even where the graph has no further use for it, and a fused
#     kernel (oneDNN's LSTM layer) may hold scratch the graph does not name. So before a plan
#     for the PyTorch executor is returned, preparation runs it: two real steps of a copy of
#     the model on the example batch, through the executor itself (`PlanRunner`, registered
#     in the `edgetrain.runners` entry-point group), with the allocator's events as the
#     measure. A plan whose measured peak exceeds its simulated one carries the measured peak
#     as its prediction (and says so in its notes); one that measures over the budget is
#     re-planned with the gap held back, and refused with the numbers if it still does not
#     fit. The check is on the planning host, like the convolution workspaces
#     (NOTE [ Kernel workspaces on PyTorch CPU (torch 2.13) ]).


@dataclass(frozen=True)
class StepRequest:
    """Run `plan` on `model` (a copy the runner may change) for `steps` steps of batch `x`,
    targets `y` (torch objects, typed `object` here: the planner imports no torch), with the
    plan's loss or `loss_fn` (the callable a `custom:` loss names)."""

    model: object
    plan: Plan
    x: object
    y: object
    steps: int = 2
    loss_fn: object = None


@runtime_checkable
class PlanRunner(Protocol):
    """An executor that runs a plan on this host and reads its peak from the allocator."""

    executor: Executor

    def measured_peak_bytes(self, request: StepRequest) -> int:
        """The largest allocator peak over the steps (NOTE [ The measured training step ])."""
        ...
