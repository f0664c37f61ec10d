"""What every strategy shares: the `System` record, `Prepared`, `TrainReport`, and the
plan-executing training loop most systems use.

NOTE [ One signature for every system ]
    Each surveyed system is a module `edgetrain/strategies/_<name>.py` exporting `SYSTEM`, a
    frozen `System` whose two functions have the same signature for every system:

        prepare(model, example_input, *, device, budget_bytes=None, batch_size=1,
                name="model") -> Prepared
        train(prepared, x, y, *, samples, lr=0.05, seed=0) -> TrainReport

    `prepare` is the preparation stage: it may transform the model (TinyTL's lite residuals,
    TinyOL's growing head) and builds an `edgetrain.Plan` with `edgetrain.plan(...)`, using the
    options that define the system (policy, paging, micro-batching, objective, deadline, in-place
    update, frozen batch norm). `train` is the training stage: it runs `edgetrain.Trainer` on
    the plan (or the system's own loop where its mechanism demands it: TinyOL's one-pass batch-1
    stream, Sage's re-planning). Both raise `PlanInfeasibleError` when nothing fits.

    The measured peak is the allocator's (edgetrain.measure.MemoryMeter) over the first
    `measure_steps` steps after one warm-up step; the host step time is the median wall time of
    the other steps (the median, because the host is shared and busy).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from edgetrain.cost import Device
from edgetrain.errors import InvalidArgumentError
from edgetrain.measure import MemoryMeter, storage_bytes
from edgetrain.planner import Plan
from edgetrain.runtime import Trainer
from edgetrain.strategies._catalog import CATALOG, SystemName


@dataclass(frozen=True)
class Prepared:
    """The output of a system's preparation stage.

    `model` is the (possibly transformed) model the training stage updates in place;
    `predicted_peak_bytes` is the system's own prediction, which is the plan's unless the system
    adds to it (Melon counts its arena's fragmentation).
    """

    system: SystemName
    model: torch.nn.Module
    example_input: torch.Tensor
    plan: Plan
    device: Device
    predicted_peak_bytes: int
    notes: tuple[str, ...] = ()
    state: tuple = field(default=(), repr=False)  # system-specific frozen extras

    @property
    def batch_size(self) -> int:
        return self.plan.batch_size

    @property
    def fits(self) -> bool:
        return self.predicted_peak_bytes <= self.plan.budget_bytes


@dataclass(frozen=True)
class TrainReport:
    """What a training run measured on this host. `measured_peak_bytes` is None where the
    host's step is a simulation whose allocator peak is not the device's (int8 strategies)."""

    samples: int
    steps: int
    losses: tuple[float, ...]
    measured_peak_bytes: int | None
    storage_bytes_written: int
    host_step_s: float
    samples_per_s: float
    notes: tuple[str, ...] = ()

    @classmethod
    def from_timings(
        cls,
        durations_s: list[float],
        *,
        steps: int,
        batch_size: int,
        losses,
        measured_peak_bytes: int | None,
        storage_bytes_written: int = 0,
        notes=(),
    ) -> "TrainReport":
        """The report of `steps` steps of `batch_size` samples; host step time is the median
        of the timed (post-warm-up) steps, robust to a busy host."""
        step_s = statistics.median(durations_s) if durations_s else float("nan")
        return cls(
            samples=steps * batch_size,
            steps=steps,
            losses=tuple(losses),
            measured_peak_bytes=measured_peak_bytes,
            storage_bytes_written=storage_bytes_written,
            host_step_s=step_s,
            samples_per_s=batch_size / step_s if durations_s else float("nan"),
            notes=tuple(notes),
        )


@dataclass(frozen=True)
class System:
    name: SystemName
    prepare: Callable[..., Prepared]
    train: Callable[..., TrainReport]

    @property
    def paper(self) -> str:
        return CATALOG[self.name].paper


def check_samples(samples: int, batch_size: int, available: int) -> int:
    if not isinstance(samples, int) or samples < batch_size:
        raise InvalidArgumentError(
            f"sample budget {samples!r} cannot fill one batch of {batch_size}; pass "
            f"samples >= {batch_size}"
        )
    if available < batch_size:
        raise InvalidArgumentError(
            f"{available} training samples cannot fill one batch of {batch_size}"
        )
    return samples // batch_size


def state_bytes(model: torch.nn.Module, optimizers, extra=()) -> int:
    """Bytes live before a step: parameters, buffers, optimizer state, the batch."""
    ts = list(model.parameters()) + list(model.buffers()) + list(extra)
    for opt in optimizers:
        for st in opt.state.values():
            ts.extend(v for v in st.values() if isinstance(v, torch.Tensor))
    return storage_bytes(ts)


def trainer_optimizers(t: Trainer) -> list[torch.optim.Optimizer]:
    return [t.optimizer] if t.optimizer is not None else list(t._per_param_opt.values())


WARMUP_STEPS = 1
"""Steps before the metered ones: the first step of a process allocates one-time state
(oneDNN primitive caches, lazily created buffers), which a device in steady state does not."""


def metered(step: int, measure_steps: int, total_steps: int) -> bool:
    """Whether `step` is metered: the `measure_steps` after the warm-up (from the first step
    when the run is too short for a warm-up)."""
    first = WARMUP_STEPS if total_steps > WARMUP_STEPS else 0
    return first <= step < first + measure_steps


def trainer_step(
    t: Trainer,
    xb: torch.Tensor,
    yb: torch.Tensor,
    *,
    step: int,
    durations_s: list[float],
    meter: bool,
) -> tuple[float, int]:
    """One `Trainer` step, either metered (returns the allocator's peak of the step) or timed
    (its wall time appended to `durations_s` after the warm-up steps; peak 0)."""
    if meter:
        with MemoryMeter(state_bytes(t.model, trainer_optimizers(t), (xb, yb))) as m:
            loss = t.step(xb, yb)
        return loss, m.trace.peak_bytes
    t0 = time.perf_counter()
    loss = t.step(xb, yb)
    if step >= WARMUP_STEPS:
        durations_s.append(time.perf_counter() - t0)
    return loss, 0


def train_planned(
    prepared: Prepared,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    samples: int,
    lr: float = 0.05,
    seed: int = 0,
    measure_steps: int = 1,
) -> TrainReport:
    """Run `prepared.plan` with `edgetrain.Trainer` over `samples` samples drawn in a seeded
    order; meter `measure_steps` steps after the warm-up step and time the others."""
    plan = prepared.plan
    steps = check_samples(samples, plan.batch_size, len(x))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    losses: list[float] = []
    peak = 0
    durations_s: list[float] = []
    with Trainer(prepared.model, plan, lr=lr) as t:
        for step in range(steps):
            idx = order[torch.arange(step * plan.batch_size, (step + 1) * plan.batch_size) % len(x)]
            xb, yb = x[idx].contiguous(), y[idx].contiguous()
            loss, step_peak = trainer_step(
                t,
                xb,
                yb,
                step=step,
                durations_s=durations_s,
                meter=metered(step, measure_steps, steps),
            )
            peak = max(peak, step_peak)
            losses.append(loss)
        written = t.storage_bytes_written
    return TrainReport.from_timings(
        durations_s,
        steps=steps,
        batch_size=plan.batch_size,
        losses=losses,
        measured_peak_bytes=peak,
        storage_bytes_written=written,
    )
