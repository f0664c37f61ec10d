"""`poet` — POET (Patil, Jain, Zhang, Gonzalez, Mahoney, Abbeel, Yang; ICML 2022): "Training
neural networks on tiny devices with integrated rematerialization and paging".

Reproduced: POET's decision space and objective — every activation is kept, recomputed
(rematerialised) or paged to external storage (SD card / flash), chosen by a MILP (HiGHS,
`edgetrain.planner._solvers.milp_solver`) that minimises the step's *energy* under the memory
budget and a training deadline; all parameters train, the batch runs at once, the mathematics
of the step is unchanged. Energy and time follow POET's cost model (compute work over
throughput times active power, plus storage traffic at the storage's bandwidth and energy per
byte; see `edgetrain.planner._problem`).

Not reproduced: POET's MILP is over every operator of the graph with per-timestep variables
(Checkmate's formulation); ours is over stages (layers / residual blocks, the units the runtime
can checkpoint or page), which is coarser but solved exactly for that model and re-checked with
the lifetime simulation. Default deadline when none is given: twice the modelled compute time of
the plain step (POET sweeps deadlines; the paper's Pareto curves are not re-run here).
"""

from __future__ import annotations

import torch

from edgetrain import validate
from edgetrain.capture import capture
from edgetrain.cost import Optimizer, load_device
from edgetrain.planner import (
    ActivationDecision,
    Evaluation,
    Objective,
    Problem,
    Strategy,
    milp_solver,
)
from edgetrain.prepare import SAFETY_MARGIN, PlanRequest, host_kernels, to_plan
from edgetrain.strategies._common import Prepared, System, SystemName, train_planned

DEADLINE_FACTOR = 2.0


def prepare(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    *,
    device="nrf52840",
    budget_bytes: int | None = None,
    batch_size: int = 1,
    name: str = "model",
    deadline_s: float | None = None,
) -> Prepared:
    batch_size = validate.batch_size(batch_size)
    dev = load_device(device)
    budget = validate.budget_bytes(budget_bytes if budget_bytes is not None else dev.ram_bytes)
    g = capture(model, example_input, batch_size=batch_size, name=name)
    trainable = frozenset(p.name for p in g.params)
    kernels = host_kernels(g, g.requires_grad_for(trainable))

    def problem(deadline):
        return Problem(
            g,
            dev,
            int(budget * (1 - SAFETY_MARGIN)),
            optimizer=Optimizer.SGD,
            objective=Objective.ENERGY,
            deadline_s=deadline,
            allow_paging=True,
            trainable=trainable,
            kernels=kernels,
        )

    if deadline_s is None:
        plain = problem(None).evaluate(tuple(ActivationDecision.KEEP for _ in problem(None).stages))
        deadline_s = DEADLINE_FACTOR * plain.latency_s
    deadline_s = validate.positive_float(deadline_s, "deadline (--deadline-s)")
    prob = problem(deadline_s)
    ev = _prefer_keep(prob, milp_solver(prob))  # raises PlanInfeasibleError if nothing fits
    request = PlanRequest(
        device=dev,
        batch_size=batch_size,
        strategy=Strategy.EXACT,
        objective=Objective.ENERGY,
        deadline_s=deadline_s,
        name=name,
    )
    p = to_plan(ev, prob, request, budget_bytes=budget, freeze_batch_norm=False, policy="all")
    n_rec = sum(s.decision is ActivationDecision.RECOMPUTE for s in p.stages)
    n_page = sum(s.decision is ActivationDecision.PAGE for s in p.stages)
    return Prepared(
        SystemName.POET,
        model,
        example_input,
        p,
        dev,
        p.predicted_peak_bytes,
        (
            f"MILP (HiGHS), minimum energy, deadline {deadline_s * 1e3:.1f} ms: "
            f"{n_rec} stages recomputed, {n_page} paged",
        ),
    )


def _prefer_keep(prob: Problem, ev: Evaluation) -> Evaluation:
    """Among equal-energy optima, keep what costs nothing to keep: a stage whose recompute or
    page saves no memory (e.g. one that saves no tensor) goes back to KEEP when the schedule
    stays feasible and its energy does not rise."""
    dec = list(ev.decisions)
    for k, d in enumerate(dec):
        if d is ActivationDecision.KEEP:
            continue
        trial = prob.evaluate(tuple(dec[:k] + [ActivationDecision.KEEP] + dec[k + 1 :]))
        if prob.feasible(trial) and trial.energy_j <= ev.energy_j:
            dec[k], ev = ActivationDecision.KEEP, trial
    return ev


SYSTEM = System(SystemName.POET, prepare, train_planned)
