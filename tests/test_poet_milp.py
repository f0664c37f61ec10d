"""The POET / Checkmate node-level MILP (edgetrain/planner/_poet.py).

Oracles, none of them the MILP itself:
  - `validate_node_schedule` replays a schedule value by value (RAM set, frees after last use)
    and shares no code with the MILP's constraint rows;
  - `Problem.evaluate`, the exact tensor-lifetime simulation every other solver is scored by;
  - the baselines and the DP, lifted to node schedules the way the runtime executes them.

What "never worse than a baseline" means here: the MILP optimises the node model, so it is
compared with each feasible baseline *in the node model* (the baseline's stage decisions
lifted to a node schedule, replayed by the validator at the same budget). Comparing the MILP's
node objective with the baselines' exact energies would mix two models; the projected plan's
exact energy is a different number again (the runtime recomputes whole modules), see
`test_chain_stage_granularity_agrees_with_dp`.
"""

import dataclasses
import itertools

import pytest
import torch

from edgetrain.capture import capture
from edgetrain.cost import load_device
from edgetrain.errors import InvalidArgumentError
from edgetrain.models import build_model
from edgetrain.planner._plan import ActivationDecision, Objective
from edgetrain.planner._poet import (
    Granularity,
    MilpStatus,
    NodeKind,
    NodeSchedule,
    NodeScheduleError,
    build_node_graph,
    lift_stage_decisions,
    milp_admits,
    poet_milp,
    poet_solve,
    project_to_stages,
    solve_node_milp,
    validate_node_schedule,
)
from edgetrain.planner._problem import Problem
from edgetrain.planner._solvers import BASELINES, SOLVERS, PlanInfeasibleError, dp
from edgetrain.prepare._profile import host_kernels

KEEP = ActivationDecision.KEEP
_GRAPHS: dict = {}
_NODE_SOLUTIONS: dict = {}


def _problem(
    name: str, batch: int, frac: float, device=None, objective: Objective = Objective.ENERGY, **kw
) -> Problem:
    """Budget as tests/test_runtime.py: keep-all peak minus (1 - frac) of the activations."""
    if (name, batch) not in _GRAPHS:
        torch.manual_seed(0)
        model, x = build_model(name, pretrained=False)
        g = capture(model, x, batch_size=batch, name=name)
        _GRAPHS[name, batch] = (g, host_kernels(g))
    g, kernels = _GRAPHS[name, batch]
    dev = device or load_device("nrf52840")
    base = Problem(g, dev, 1 << 40, kernels=kernels, **kw)
    keep = base.evaluate(tuple(KEEP for _ in base.stages))
    budget = keep.peak_bytes - int((1 - frac) * g.activation_bytes)
    return Problem(g, dev, budget, objective=objective, kernels=kernels, **kw)


def _capacity(p: Problem) -> int:
    return p.device.storage.capacity_bytes


def _mcu_cnn(frac: float, granularity: Granularity = Granularity.NODE):
    """mcu-cnn's problem, node graph and MILP solution at `frac` (solved once per module)."""
    key = (frac, granularity)
    if key not in _NODE_SOLUTIONS:
        p = _problem("mcu-cnn", 1, frac)
        ng = build_node_graph(p)
        sol = solve_node_milp(
            ng, p.budget_bytes, _capacity(p), granularity=granularity, time_limit_s=60
        )
        _NODE_SOLUTIONS[key] = (p, ng, sol)
    return _NODE_SOLUTIONS[key]


# -- the validator accepts what the MILP returns --------------------------------------------
@pytest.mark.parametrize("granularity", list(Granularity))
@pytest.mark.parametrize("frac", [0.9, 0.7])
def test_validator_accepts_milp_schedules(frac, granularity):
    # Prepare / Execute
    p, ng, sol = _mcu_cnn(frac, granularity)
    # Assert: optimal, and the independent replay agrees with the MILP on cost and budget
    assert sol.status is MilpStatus.OPTIMAL and sol.schedule is not None
    report = validate_node_schedule(ng, sol.schedule, p.budget_bytes, _capacity(p))
    assert report.peak_bytes <= p.budget_bytes
    assert report.cost == pytest.approx(sol.objective, rel=1e-6)
    assert report.recompute_flops > 0  # the budget is below keep-all: something is recomputed
    assert (
        milp_admits(ng, sol.schedule, p.budget_bytes, _capacity(p), granularity=granularity) == []
    )


def test_node_model_matches_exact_simulation_for_plain_training():
    # Prepare: the node model's memory of keep-all (no MILP involved) against cost's simulation
    for name in ("mcu-cnn", "transformer-tiny"):
        p = _problem(name, 1, 1.0)
        ng = build_node_graph(p)
        keep = tuple(KEEP for _ in p.stages)
        # Execute
        report = validate_node_schedule(ng, lift_stage_decisions(ng, keep), 1 << 40, 1 << 40)
        exact = p.evaluate(keep)
        # Assert: within 1 %. The node model leaves out the 4-byte loss and its seed gradient,
        # and accumulates every gradient in place; autograd sums out of place into a buffer
        # that an `add` shares between its two inputs (transformer-tiny's residual stream:
        # one extra 8 KiB buffer at batch 1). The exact simulation re-checks every plan.
        assert report.peak_bytes == pytest.approx(exact.peak_bytes, rel=1e-2), name
        assert report.cost == pytest.approx(exact.energy_j, rel=1e-12), name
        assert report.latency_s == pytest.approx(exact.latency_s, rel=1e-12), name


# -- the validator rejects broken schedules ---------------------------------------------------
def _replace(s: NodeSchedule, field: str, t: int, value) -> NodeSchedule:
    seq = list(getattr(s, field))
    seq[t] = value
    return dataclasses.replace(s, **{field: tuple(seq)})


def test_validator_rejects_hand_broken_schedules():
    # Prepare: a valid paging-free schedule (keep-all lifted) and a valid paging one
    p = _problem("mcu-cnn", 1, 1.0)
    ng = build_node_graph(p)
    keep = lift_stage_decisions(ng, tuple(KEEP for _ in p.stages))
    report = validate_node_schedule(ng, keep, p.budget_bytes, _capacity(p))
    paged_dec = tuple(
        ActivationDecision.PAGE if ActivationDecision.PAGE in c else KEEP for c in p.choices
    )
    paged = lift_stage_decisions(ng, paged_dec)
    written = validate_node_schedule(ng, paged, 1 << 40, 1 << 40).storage_bytes_written
    assert written > 0
    # a stage that reads a value kept from an earlier stage
    t = next(t for t in range(ng.n) if keep.ram[t] and ng.nodes[t].kind is NodeKind.BACKWARD)
    used = next(i for i in keep.ram[t] if i in ng.nodes[t].deps)
    bwd = next(
        t
        for t in range(ng.n)
        if ng.nodes[t].kind is NodeKind.BACKWARD
        and t > 0
        and ng.nodes[t - 1].kind is NodeKind.BACKWARD
    )
    broken = {
        "before they exist in RAM": (
            _replace(keep, "ram", t, keep.ram[t] - {used}),
            p.budget_bytes,
            _capacity(p),
        ),
        "exceed the budget": (keep, report.peak_bytes - 1, _capacity(p)),
        "does not compute its own node": (
            _replace(keep, "compute", 3, tuple(k for k in keep.compute[3] if k != 3)),
            p.budget_bytes,
            _capacity(p),
        ),
        "not in RAM at the end of the previous stage": (
            _replace(keep, "ram", 1, keep.ram[1] | {ng.n - 1}),
            1 << 40,
            _capacity(p),
        ),
        "re-runs backward node": (
            _replace(keep, "compute", bwd, (*keep.compute[bwd][:-1], bwd - 1, bwd)),
            1 << 40,
            _capacity(p),
        ),
        "which are not in storage": (
            _replace(keep, "page_in", t, frozenset({used})),
            1 << 40,
            1 << 40,
        ),
        "more than its capacity": (paged, 1 << 40, written - 1),
    }
    for message, (sched, budget, capacity) in broken.items():
        # Execute / Assert
        with pytest.raises(NodeScheduleError, match=message):
            validate_node_schedule(ng, sched, budget, capacity)
    assert report.peak_bytes <= p.budget_bytes  # the unbroken one passed


# -- never worse than a feasible baseline -----------------------------------------------------
@pytest.mark.parametrize("frac", [0.9, 0.8, 0.7])
def test_milp_never_worse_than_any_feasible_baseline(frac):
    # Prepare
    p, ng, sol = _mcu_cnn(frac)
    assert sol.status is MilpStatus.OPTIMAL
    compared = 0
    for name in BASELINES:
        try:
            ev = SOLVERS[name](p)
        except PlanInfeasibleError:
            continue
        # Execute: the baseline as the node schedule the runtime would run
        lifted = lift_stage_decisions(ng, ev.decisions)
        try:
            report = validate_node_schedule(ng, lifted, p.budget_bytes, _capacity(p))
        except NodeScheduleError:
            continue  # fits the exact simulation but not the node model's accounting
        compared += 1
        # Assert: the MILP's feasible set holds the baseline, and its optimum is no worse
        assert milp_admits(ng, lifted, p.budget_bytes, _capacity(p)) == [], name
        assert sol.objective <= report.cost * (1 + 1e-9), (name, sol.objective, report.cost)
    assert compared >= 1


def test_node_milp_pages_when_storage_is_cheap():
    # Prepare: the nRF52840 with its SD card's energy per byte cut 1000x: paging a value now
    # costs less than recomputing it
    dev = load_device("nrf52840")
    st = dev.storage
    cheap = dataclasses.replace(
        dev,
        storage=dataclasses.replace(
            st,
            write_energy_j_per_byte=st.write_energy_j_per_byte * 1e-3,
            read_energy_j_per_byte=st.read_energy_j_per_byte * 1e-3,
        ),
    )
    p = _problem("mcu-cnn", 1, 0.7, device=cheap)
    ng = build_node_graph(p)
    # Execute
    sol = solve_node_milp(ng, p.budget_bytes, _capacity(p), time_limit_s=60)
    # Assert: it pages instead of recomputing, and the replay agrees on bytes and cost
    assert sol.status is MilpStatus.OPTIMAL
    report = validate_node_schedule(ng, sol.schedule, p.budget_bytes, _capacity(p))
    assert report.storage_bytes_written > 0 and report.recompute_flops == 0
    assert report.storage_bytes_read >= report.storage_bytes_written
    assert report.cost == pytest.approx(sol.objective, rel=1e-6)
    assert milp_admits(ng, sol.schedule, p.budget_bytes, _capacity(p)) == []


def test_milp_respects_storage_capacity_and_deadline():
    # Prepare: transformer-tiny at batch 4 pages at half the activation memory (stage MILP:
    # optimal in about a second); then the same with too little storage, and with a deadline
    p = _problem("transformer-tiny", 4, 0.5)
    ng = build_node_graph(p)
    free = solve_node_milp(ng, p.budget_bytes, _capacity(p), granularity=Granularity.STAGE)
    written = validate_node_schedule(
        ng, free.schedule, p.budget_bytes, _capacity(p)
    ).storage_bytes_written
    assert written > 0
    # Execute
    small = solve_node_milp(ng, p.budget_bytes, written - 1, granularity=Granularity.STAGE)
    latency = validate_node_schedule(ng, free.schedule, p.budget_bytes, _capacity(p)).latency_s
    hurried = solve_node_milp(
        ng, p.budget_bytes, _capacity(p), deadline_s=0.99 * latency, granularity=Granularity.STAGE
    )
    # Assert: either a schedule within the new limit (at a higher cost) or a proof there is none
    for sol, capacity, deadline in (
        (small, written - 1, None),
        (hurried, _capacity(p), 0.99 * latency),
    ):
        if sol.status is MilpStatus.INFEASIBLE:
            continue
        r = validate_node_schedule(ng, sol.schedule, p.budget_bytes, capacity)
        assert r.storage_bytes_written <= capacity
        assert deadline is None or r.latency_s <= deadline * (1 + 1e-9)
        assert sol.objective >= free.objective * (1 - 1e-9)


# -- on chains: agreement with the DP ---------------------------------------------------------
def _brute_force(p: Problem):
    """The exact optimum over stage decisions: every combination, exactly evaluated."""
    best = None
    for dec in itertools.product(*p.choices):
        ev = p.evaluate(dec)
        if p.feasible(ev) and (
            best is None or ev.objective(p.objective) < best.objective(p.objective)
        ):
            best = ev
    return best


NODE_PAGING_GAP = pytest.mark.xfail(
    strict=True,
    reason="known gap: the node model under-counts paging after a recomputed stage; "
    "with per-operator overhead in the time model the STAGE MILP picks 'recompute 0, page 2', "
    "55,900 bytes in the exact simulation against a 53,043-byte budget (poet_milp re-solves "
    "with a tightened budget; this test checks the raw model)",
)


@pytest.mark.parametrize(
    "frac,objective",
    [
        pytest.param(f, o, marks=NODE_PAGING_GAP) if (f, o) == (0.7, Objective.TIME) else (f, o)
        for f in (1.0, 0.9, 0.8, 0.7)
        for o in (Objective.ENERGY, Objective.TIME)
    ],
)
def test_chain_stage_granularity_agrees_with_dp(frac, objective):
    """mcu-cnn is a chain of 8 stages (6 wrappable: 3^6 = 729 stage plans, all enumerated and
    exactly evaluated: the oracle). What is asserted, and why:
    - STAGE granularity (the MILP may only recompute or page whole modules, when and as the
      runtime's checkpoint does) searches the DP's decision space with the node model's memory
      accounting, which on this chain agrees with the exact simulation; its projected plan is
      the exact optimum, and so never worse than the DP. (At 70 % with the time objective it
      is better: the DP's linear chain model misses "recompute stage 0, page stage 1", which
      is 0.5 % faster than its "recompute stages 0-2".)
    - NODE granularity (POET's formulation) may recompute single operators, so its optimum is
      at most the DP's plan in the node model, and at least plain training's cost. It is not
      asserted equal to the DP: the runtime cannot execute single-operator recomputation, and
      the node model counts an operator with a saved auxiliary output (BN's statistics) once
      per value it recomputes.
    """
    # Prepare
    p = _problem("mcu-cnn", 1, frac, objective=objective)
    ng = build_node_graph(p)
    best = dp(p)
    oracle = _brute_force(p)
    # Execute
    stage = solve_node_milp(ng, p.budget_bytes, _capacity(p), granularity=Granularity.STAGE)
    # Assert: STAGE = the exact optimum, never worse than the DP
    assert stage.status is MilpStatus.OPTIMAL
    projected = p.evaluate(project_to_stages(p, ng, stage.schedule))
    assert p.feasible(projected)
    assert projected.objective(objective) == pytest.approx(oracle.objective(objective), rel=1e-9)
    assert projected.objective(objective) <= best.objective(objective) * (1 + 1e-9)
    if objective is Objective.ENERGY:  # NODE: bracketed by plain training and the DP's plan
        node = _mcu_cnn(frac)[2]
        assert node.status is MilpStatus.OPTIMAL
        dp_lifted = validate_node_schedule(
            ng, lift_stage_decisions(ng, best.decisions), p.budget_bytes, _capacity(p)
        )
        assert ng.base_cost * (1 - 1e-12) <= node.objective <= dp_lifted.cost * (1 + 1e-9)
    if frac == 1.0:  # nothing to save: plain training, to the last bit
        assert stage.objective == pytest.approx(best.objective(objective), rel=1e-12)


# -- the solver interface ---------------------------------------------------------------------
def test_poet_is_a_registered_solver_returning_an_exact_feasible_plan():
    # Prepare
    p = _problem("mcu-cnn", 1, 0.8)
    # Execute
    res = poet_solve(p, time_limit_s=60)
    ev = SOLVERS["poet"](p)  # a second solve (the solver returns an Evaluation only)
    # Assert: the plan is exactly evaluated and fits; the node schedule behind it is recorded
    assert SOLVERS["poet"] is poet_milp
    assert ev == res.evaluation and p.feasible(ev)
    assert ev == p.evaluate(ev.decisions)
    assert ev.decisions == project_to_stages(p, res.node_graph, res.schedule)
    assert res.report == validate_node_schedule(
        res.node_graph, res.schedule, res.solution.model_budget_bytes, _capacity(p)
    )


def test_bad_inputs_raise_typed_errors():
    p = _problem("mcu-cnn", 1, 1.0)
    tiny = Problem(p.graph, p.device, 1024, kernels=p.kernels)
    with pytest.raises(PlanInfeasibleError, match=r"no schedule fits 1,024 bytes.*smallest peak"):
        poet_milp(tiny)
    ng = build_node_graph(p)
    with pytest.raises(InvalidArgumentError, match="time_limit_s"):
        solve_node_milp(ng, p.budget_bytes, _capacity(p), time_limit_s=0)
    with pytest.raises(InvalidArgumentError, match="budget_bytes = -5"):
        solve_node_milp(ng, -5, _capacity(p))
    with pytest.raises(InvalidArgumentError, match="stage decisions"):
        lift_stage_decisions(ng, (KEEP,))
