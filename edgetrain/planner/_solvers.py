"""Solvers for activation decisions. One signature: `solver(problem) -> Evaluation`.

Every solver returns an exactly evaluated, feasible candidate or raises `PlanInfeasibleError`.
Baselines are first-class solvers; `tests/test_solvers.py` holds every solver to
`cost(solver) <= cost(baseline)` whenever the baseline is feasible.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from edgetrain.errors import PlanInfeasibleError
from edgetrain.planner._plan import ActivationDecision
from edgetrain.planner._poet import poet_milp
from edgetrain.planner._problem import ChainModel, Evaluation, Problem

KEEP, RECOMPUTE, PAGE = (
    ActivationDecision.KEEP,
    ActivationDecision.RECOMPUTE,
    ActivationDecision.PAGE,
)


Solver = Callable[[Problem], Evaluation]


def _raise_infeasible(p: Problem, best: Evaluation, what: str) -> None:
    raise PlanInfeasibleError(
        f"{what}: no schedule fits {p.budget_bytes:,} bytes; the smallest peak found is "
        f"{best.peak_bytes:,} bytes ({best.peak_bytes / max(1, p.budget_bytes):.2f}x the budget)"
    )


def _checked(p: Problem, ev: Evaluation, what: str) -> Evaluation:
    if not p.feasible(ev):
        _raise_infeasible(p, ev, what)
    return ev


# -- baselines --------------------------------------------------------------------------------
def keep_all(p: Problem) -> Evaluation:
    """Plain training: every saved tensor stays in RAM."""
    return _checked(p, p.evaluate(tuple(KEEP for _ in p.stages)), "keep-all")


def recompute_all(p: Problem) -> Evaluation:
    """Checkpoint every wrappable stage (only stage inputs are kept)."""
    dec = tuple(RECOMPUTE if RECOMPUTE in c else KEEP for c in p.choices)
    return _checked(p, p.evaluate(dec), "recompute-all")


def sqrt_checkpoint(p: Problem) -> Evaluation:
    """Chen et al. (2016)'s sqrt(n) rule on stages: keep every ceil(sqrt(n))-th wrappable stage,
    recompute the others."""
    wrappable = [k for k, c in enumerate(p.choices) if RECOMPUTE in c]
    step = max(1, math.ceil(math.sqrt(len(wrappable))))
    keep = set(wrappable[step - 1 :: step])
    dec = tuple(
        RECOMPUTE if (k in wrappable and k not in keep) else KEEP for k in range(len(p.stages))
    )
    return _checked(p, p.evaluate(dec), "sqrt")


def greedy(p: Problem) -> Evaluation:
    """Until it fits: apply the single-stage change with the most bytes saved per unit of added
    cost (exact evaluation of each move)."""
    dec = [KEEP for _ in p.stages]
    cur = p.evaluate(tuple(dec))
    obj = p.objective
    while not p.feasible(cur):
        best, best_score = None, -1.0
        for k, opts in enumerate(p.choices):
            for d in opts:
                if d is dec[k] or (dec[k] is not KEEP and d is KEEP):
                    continue
                cand = list(dec)
                cand[k] = d
                ev = p.evaluate(tuple(cand))
                saved = cur.peak_bytes - ev.peak_bytes
                if saved <= 0:
                    continue
                extra = max(ev.objective(obj) - cur.objective(obj), 1e-12)
                score = saved / extra
                if score > best_score:
                    best, best_score = (cand, ev), score
        if best is None:
            _raise_infeasible(p, cur, "greedy")
        dec, cur = best  # type: ignore[misc]
    return cur


# -- exact DP on the chain model --------------------------------------------------------------
def _dp(model: ChainModel, budget: float, capacity: float) -> tuple[ActivationDecision, ...] | None:
    """Pareto DP over stages: state = (dropped bytes so far, bytes written, cost)."""
    states: list[tuple[int, int, float, tuple]] = [(0, 0, 0.0, ())]
    for i in range(model.n):
        need = model.bwd_peak[i] - budget  # bytes that must be gone while stage i's backward runs
        nxt = []
        for dropped, written, cost, dec in states:
            for d in model.options[i]:
                if dropped + model.own[i][d] < need:
                    continue
                w = written + model.written[i][d]
                if w > capacity:
                    continue
                nxt.append((dropped + model.drop[i][d], w, cost + model.cost[i][d], dec + (d,)))
        # keep only non-dominated states (more dropped, less written, less cost)
        nxt.sort(key=lambda s: (s[2], -s[0], s[1]))
        pareto: list[tuple[int, int, float, tuple]] = []
        for s in nxt:
            if any(o[0] >= s[0] and o[1] <= s[1] and o[2] <= s[2] for o in pareto):
                continue
            pareto.append(s)
        states = pareto
        if not states:
            return None
    final = [s for s in states if model.fwd_peak - s[0] <= budget]
    if not final:
        return None
    return min(final, key=lambda s: s[2])[3]


def _milp(
    model: ChainModel, budget: float, capacity: float, time_limit_s: float = 60.0
) -> tuple[ActivationDecision, ...] | None:
    """The same chain model as a MILP (HiGHS through scipy.optimize.milp).

    Legend:
        x[i,d] in {0,1}   stage i takes decision d
        drop[i,d]  bytes  memory the decision frees between forward and backward
        own[i,d]   bytes  how much lower stage i's own backward runs
        cost[i,d]  s or J time / energy the decision adds (objective)
        written[i,d] bytes storage written
    """
    idx = [(i, d) for i in range(model.n) for d in model.options[i]]
    col = {key: c for c, key in enumerate(idx)}
    nv = len(idx)
    c = np.array([model.cost[i][d] for i, d in idx])
    rows, lo, hi = [], [], []
    # (1) one decision per stage
    for i in range(model.n):
        r = np.zeros(nv)
        for d in model.options[i]:
            r[col[i, d]] = 1
        rows.append(r), lo.append(1), hi.append(1)
    # (2) memory while stage i's backward runs: earlier stages' drops plus its own effect
    for i in range(model.n):
        r = np.zeros(nv)
        for j in range(i):
            for d in model.options[j]:
                r[col[j, d]] = model.drop[j][d]
        for d in model.options[i]:
            r[col[i, d]] = model.own[i][d]
        rows.append(r), lo.append(model.bwd_peak[i] - budget), hi.append(np.inf)
    # (3) memory at the end of forward
    r = np.zeros(nv)
    for i, d in idx:
        r[col[i, d]] = model.drop[i][d]
    rows.append(r), lo.append(model.fwd_peak - budget), hi.append(np.inf)
    # (4) storage capacity
    r = np.zeros(nv)
    for i, d in idx:
        r[col[i, d]] = model.written[i][d]
    rows.append(r), lo.append(-np.inf), hi.append(capacity)
    res = milp(
        c,
        constraints=LinearConstraint(np.array(rows), lo, hi),
        integrality=np.ones(nv),
        bounds=Bounds(0, 1),
        options={"time_limit": time_limit_s, "disp": False},
    )
    if res.x is None or res.status not in (0,):
        return None
    x = np.round(res.x).astype(int)
    return tuple(next(d for d in model.options[i] if x[col[i, d]] == 1) for i in range(model.n))


def _solve_chain(p: Problem, inner, name: str) -> Evaluation:
    model = p.chain_model
    budget = float(p.budget_bytes)
    capacity = float(p.device.storage.capacity_bytes)
    best_seen: Evaluation | None = None
    for _ in range(6):  # tighten the linear model until the exact simulation agrees
        dec = inner(model, budget, capacity)
        if dec is None:
            break
        ev = p.evaluate(dec)
        if p.feasible(ev):
            return ev
        best_seen = ev if best_seen is None or ev.peak_bytes < best_seen.peak_bytes else best_seen
        overshoot = ev.peak_bytes - p.budget_bytes
        budget -= max(overshoot, 0.001 * p.budget_bytes)
    fallback = best_seen or p.evaluate(
        tuple(RECOMPUTE if RECOMPUTE in c else KEEP for c in p.choices)
    )
    _raise_infeasible(p, fallback, name)
    raise AssertionError  # unreachable


def dp(p: Problem) -> Evaluation:
    """Exact dynamic programme over the stage chain (keep / recompute / page per stage)."""
    return _solve_chain(p, _dp, "dp")


def milp_solver(p: Problem) -> Evaluation:
    """The chain model as a MILP solved by HiGHS."""
    return _solve_chain(p, _milp, "milp")


SOLVERS: dict[str, Solver] = {
    "keep-all": keep_all,
    "recompute-all": recompute_all,
    "sqrt": sqrt_checkpoint,
    "greedy": greedy,
    "dp": dp,
    "milp": milp_solver,
    "poet": poet_milp,
}
BASELINES = ("keep-all", "recompute-all", "sqrt", "greedy")
