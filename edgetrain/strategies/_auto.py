"""`auto` — edgetrain's joint planner, with task-adaptive selection of what trains.

Not a surveyed paper: the planner of this project (`edgetrain.plan(strategy="auto")`) searches,
jointly, what trains (all parameters, then sparser `last:K` sets, then bias-only), the
micro-batch size, in-place updates and keep / recompute / page per stage, and returns the
cheapest candidate (time by default) that fits the budget, preferring the most faithful
trainable set. It combines the mechanisms of POET (recompute + paging), Melon / Sage
(micro-batching) and TTE (sparse and in-place update) on one cost model.

NOTE [ Task-adaptive selection ]
    The most faithful trainable set is not the one that learns most from a small sample budget:
    on the quick bench (mcu-cnn, 800 samples of 5 new classes) training everything at batch 8
    reaches 48.5 %, the last 2 weighted layers at batch 1 51.3 %, in 1/10 of the memory. What
    wins depends on the task, so when `prepare` is given local samples (`analysis=(x, y)`, the
    same samples TTE's contribution analysis reads) it chooses by validation, as TinyTrain
    (Kwon et al., ICML 2024) chooses its sparse update task-adaptively on the device:
      - candidates: the last n weighted (conv / linear) layers with every parameter after them,
        n in 1, 2, 4, ... and all, times batch sizes 1, 2, 4, ... up to the requested one; each
        is planned with `edgetrain.plan(strategy="auto", policy=...)` (recompute, paging,
        micro-batching as the budget needs) and dropped if it does not fit;
      - pilot: each feasible candidate trains a copy of the model on the first `1 - HOLDOUT`
        of the local samples for as many steps as the training stage will run (its sample
        budget, cycling over them; the run's own learning rate and seed), and is scored by
        accuracy on the last `HOLDOUT` (never on the test set). Same steps, not one pass: a
        pilot stopped earlier than the real run ranks candidates by where their trajectories
        are at that earlier step (on mbv2-w0.35 one pass ranked "everything at batch 4" first
        at 66 % validation; that run ends at 45 % on the test images, the winner under equal
        steps, the last two layers at batch 1, at 47 %);
      - choice: the best validation accuracy; ties go to the lower predicted peak, then the
        cheaper step (energy per sample).
    The chosen plan then trains the untouched model on the full sample budget. The pilots' cost
    is reported, not hidden: `Prepared.state["selection"]` lists every candidate's score,
    `Prepared.state["preparation_energy_j"]` the pilots' modelled energy on the device (the
    bench's preparation energy), and `Prepared.notes` the pilot samples trained. Without
    `analysis` (e.g. `edgetrain plan`) there is nothing to validate on, and `auto` is the
    planner's plan at the requested batch size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from edgetrain.cost import load_device
from edgetrain.errors import InvalidArgumentError, PlanInfeasibleError
from edgetrain.prepare import trainer_plan as plan
from edgetrain.strategies._common import Prepared, System, SystemName, train_planned
from edgetrain.tasks import accuracy

HOLDOUT = 0.25
"""Share of the local samples the pilots validate on (the rest is what they train on)."""


@dataclass(frozen=True)
class Candidate:
    """One pilot of NOTE [ Task-adaptive selection ]: what trained, at which batch, and how well."""

    layers: int  # trained weighted layers, counted from the output
    batch_size: int
    predicted_peak_bytes: int
    energy_per_sample_j: float
    validation_accuracy: float

    @property
    def label(self) -> str:
        return f"last {self.layers} layers @ batch {self.batch_size}"


def layer_policies(
    model: torch.nn.Module, example_input: torch.Tensor, **plan_kwargs
) -> list[tuple[int, str]]:
    """(n, policy) for the last n weighted layers, n = 1, 2, 4, ... and all: the policy names
    every parameter from the n-th last conv / linear weight on, in the captured graph's order."""
    names = [p.name for p in plan(model, example_input, policy="all", **plan_kwargs).params]
    owners = dict(model.named_parameters())
    weighted = [i for i, n in enumerate(names) if n.endswith("weight") and owners[n].dim() >= 2]
    if not weighted:
        return [(0, "all")]
    out, n = [], 1
    while n < len(weighted):
        out.append((n, ",".join(names[weighted[-n] :])))
        n *= 2
    out.append((len(weighted), "all"))
    return out


def _batch_sizes(batch_size: int) -> list[int]:
    out, b = [], 1
    while b < batch_size:
        out.append(b)
        b *= 2
    return [*out, batch_size]


def select(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    analysis,
    *,
    device,
    budget_bytes,
    batch_size: int,
    name: str,
    objective: str,
    lr: float,
    seed: int,
    samples: int | None = None,
    pilot_cache: dict | None = None,
):
    """NOTE [ Task-adaptive selection ]: the winning plan and every candidate's pilot.

    `pilot_cache`: a dict the caller keeps across devices for the same model and samples; with
    the run's lr, seed and steps fixed, a pilot's accuracy depends only on what trains, the
    batch size and whether batch norm is frozen (recompute, paging and micro-batching do not
    change the mathematics), so a candidate with the same three is not trained again."""
    try:
        x, y = analysis
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            "analysis must be a pair (x, y) of local samples and labels"
        ) from None
    n_val = int(len(x) * HOLDOUT)
    n_fit = len(x) - n_val
    steps_samples = len(x) if samples is None else samples
    if n_val < 1 or n_fit < batch_size:
        raise InvalidArgumentError(
            f"auto's selection needs local samples to train and validate pilots on: got {len(x)}; "
            f"pass at least {int(batch_size / (1 - HOLDOUT)) + 2} (or no analysis samples)"
        )
    dev = load_device(device)
    kw = dict(
        device=dev, budget_bytes=budget_bytes, strategy="auto", objective=objective, name=name
    )
    tried: list[tuple[Candidate, object]] = []
    for b in _batch_sizes(batch_size):
        for layers, policy in layer_policies(model, example_input, batch_size=b, **kw):
            try:
                p = plan(model, example_input, batch_size=b, policy=policy, **kw)
            except PlanInfeasibleError:
                continue
            key = (p.trainable(), b, p.freeze_batch_norm, lr, seed, steps_samples)
            if pilot_cache is None or key not in pilot_cache:
                pilot = copy.deepcopy(model)
                torch.manual_seed(seed)
                prepared = Prepared(
                    SystemName.AUTO, pilot, example_input, p, dev, p.predicted_peak_bytes
                )
                train_planned(
                    prepared, x[:n_fit], y[:n_fit], samples=steps_samples, lr=lr, seed=seed
                )
                acc = accuracy(pilot, x[n_fit:], y[n_fit:])
                if pilot_cache is not None:
                    pilot_cache[key] = acc
            acc = pilot_cache[key] if pilot_cache is not None else acc
            cand = Candidate(layers, b, p.predicted_peak_bytes, p.predicted.energy_j / b, acc)
            tried.append((cand, p))
    if not tried:
        raise PlanInfeasibleError(
            f"auto: no trainable set fits the budget at batch sizes {_batch_sizes(batch_size)}; "
            f"edgetrain.plan explains the smallest peak"
        )
    best, best_plan = min(
        tried,
        key=lambda cp: (
            -cp[0].validation_accuracy,
            cp[0].predicted_peak_bytes,
            cp[0].energy_per_sample_j,
        ),
    )
    return best, best_plan, tuple(c for c, _ in tried), steps_samples


def prepare(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    *,
    device="nrf52840",
    budget_bytes: int | None = None,
    batch_size: int = 1,
    name: str = "model",
    objective: str = "time",
    analysis: tuple | None = None,
    lr: float = 0.05,
    seed: int = 0,
    samples: int | None = None,
    pilot_cache: dict | None = None,
) -> Prepared:
    """The planner's plan; with `analysis=(x, y)` local samples, the trainable set and batch
    size (up to `batch_size`) chosen by validation (NOTE [ Task-adaptive selection ]); `lr`,
    `seed` and `samples` (the sample budget; default: the analysis samples) are the pilots'
    (pass the training run's)."""
    dev = load_device(device)
    if analysis is None:
        p = plan(
            model,
            example_input,
            device=dev,
            budget_bytes=budget_bytes,
            batch_size=batch_size,
            strategy="auto",
            objective=objective,
            name=name,
        )
        return Prepared(
            SystemName.AUTO, model, example_input, p, dev, p.predicted_peak_bytes, p.notes
        )
    best, p, tried, n_pilot = select(
        model,
        example_input,
        analysis,
        device=device,
        budget_bytes=budget_bytes,
        batch_size=batch_size,
        name=name,
        objective=objective,
        lr=lr,
        seed=seed,
        samples=samples,
        pilot_cache=pilot_cache,
    )
    n_val = int(len(analysis[0]) * HOLDOUT)
    pilot_energy_j = sum(c.energy_per_sample_j * n_pilot for c in tried)
    table = "; ".join(f"{c.label}: {100 * c.validation_accuracy:.1f} %" for c in tried)
    notes = (
        *p.notes,
        f"task-adaptive selection: {best.label} (validation {100 * best.validation_accuracy:.1f} %"
        f" on {n_val} held-out local samples)",
        f"selection cost: {len(tried)} pilots x {n_pilot} samples trained, "
        f"{pilot_energy_j:.3g} J modelled on {dev.name} ({table})",
    )
    return Prepared(
        SystemName.AUTO,
        model,
        example_input,
        p,
        dev,
        p.predicted_peak_bytes,
        notes,
        (("selection", tried), ("preparation_energy_j", pilot_energy_j)),
    )


SYSTEM = System(SystemName.AUTO, prepare, train_planned)
