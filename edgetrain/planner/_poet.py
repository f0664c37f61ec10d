"""The Checkmate / POET node-level MILP for general graphs, on HiGHS (`scipy.optimize.milp`).

Checkmate (Jain et al., MLSys 2020; its ILP, `checkmate/core/solvers/gurobi_solver.py` in its
repository) schedules a training graph's operators over T = N
*stages*: stage t evaluates node t for the first time (its "frontier-advancing" order) and may
recompute any earlier node; binaries say what is computed and what stays resident, and a
per-stage walk over the nodes accounts for memory. POET (Patil et al., ICML 2022; its MILP
extends Checkmate's) adds paging: a value may also be written to storage and read back later.
POET's MILP leaves out what an MCU cannot: parameters, gradients and optimizer state are not in its RAM constraint, paging
time is not in its deadline, and neither storage capacity nor bytes written appear. This module
keeps all four.

Legend (t: stage, i / k: nodes of the node graph, both 0..N-1; T = N):
    R[t,i]      {0,1}  node i is (re)computed in stage t                      (Checkmate R)
    S_RAM[t,i]  {0,1}  i's output is resident in RAM at the start of stage t  (Checkmate S)
    S_SD[t,i]   {0,1}  i's output is resident in storage at the start of t    (POET S^SD)
    M_in[t,i]   {0,1}  i's output is paged in (read) at the start of stage t  (POET M^in)
    M_out[t,i]  {0,1}  i's output is paged out (written) during stage t      (POET M^out)
    FREE[t,i,k] {0,1}  i's output is freed right after node k runs in stage t (Checkmate FREE)
    U[t,k]      bytes  RAM in use right after node k runs in stage t         (Checkmate U)
                       (U[t,-1]: at the start of stage t, after paging in)
Constants (bytes, joules or seconds; the units are in the names of `PoetNode`'s fields):
    mem_i          bytes of i's output (and the tensors the op keeps for its own backward)
    ws_i           transient kernel workspace while i runs
    grad_i         parameter-gradient bytes backward node i allocates; they stay to the end
    static_t       parameters, buffers, optimizer state, the batch, and the parameter
                   gradients of the backward nodes before t        (POET leaves all these out)
    c_i, w_i, r_i  objective cost of recomputing i, writing it, reading it (energy: J, time: s)

Modelling choices (each keeps the node schedule executable by eager PyTorch):
    - Forward nodes are the IR's operators that allocate a new storage; views alias their base
      and are contracted into its producer. An operator's output and the tensors it allocates
      only for its own backward (BN's statistics, pooling indices) are two nodes ("name" and
      "name:aux"): the output often dies in forward while the aux lives on; both carry the
      operator's cost, as either comes back only by re-running it.
    - Backward nodes are the operators' gradient functions, in eager autograd's reverse order.
      `add` and views pass their incoming gradient on without a copy (as `cost.simulate_step`
      models), so they are contracted. Gradients accumulate in one buffer per tensor: the
      first backward node to deliver one allocates it, later ones add into it (a transient).
    - Backward nodes run exactly once, in their own stage (autograd never re-runs one; doing so
      would accumulate parameter gradients twice), and their outputs are never paged.
    - Only forward activations are paged; each is written at most once (flash wear).
    - A value is needed until `last_need`: the latest stage any node that reads it can run in.
      Variables past it are fixed to 0 (Checkmate's own pruning); this loses no schedule.

The schedule the MILP returns is replayed by `validate_node_schedule`, which shares no code
with the constraints; `milp_admits` checks the other direction (a schedule the validator accepts
satisfies every row of the MILP). The runtime executes stages (modules), so `poet_solve`
projects the node schedule onto stage decisions (a stage recomputes if any of its nodes is
recomputed, else pages if any is paged) and scores that exactly with `Problem.evaluate`.
`Granularity.STAGE` adds the constraints that make the MILP decide whole stages, when and as
the runtime's checkpoint and paging hooks execute them (block (S)).
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from edgetrain.cost import workspace_bytes
from edgetrain.errors import (
    InvalidArgumentError,
    NodeScheduleError,
    PlanInfeasibleError,
)
from edgetrain.ir import OpKind, TensorRole
from edgetrain.planner._plan import ActivationDecision, Objective
from edgetrain.planner._problem import Evaluation, Problem

KEEP, RECOMPUTE, PAGE = (
    ActivationDecision.KEEP,
    ActivationDecision.RECOMPUTE,
    ActivationDecision.PAGE,
)
_PERSISTENT = (TensorRole.PARAMETER, TensorRole.BUFFER, TensorRole.INPUT, TensorRole.TARGET)
_PASS_THROUGH = (OpKind.VIEW, OpKind.ADD)  # backward hands the incoming gradient on, no copy


class NodeKind(enum.Enum):
    FORWARD = "forward"
    BACKWARD = "backward"


class Granularity(enum.Enum):
    """What the MILP may decide. NODE: POET's formulation, any node on its own. STAGE: every
    forward node of a stage is recomputed (or paged) together, as the runtime executes it."""

    NODE = "node"
    STAGE = "stage"


class MilpStatus(enum.Enum):
    OPTIMAL = "optimal"  # HiGHS proved optimality (within mip_rel_gap)
    FEASIBLE = "feasible"  # time limit reached with an incumbent; see the gap
    NO_SOLUTION = "no-solution"  # time limit reached before any incumbent
    INFEASIBLE = "infeasible"  # HiGHS proved no schedule fits


# -- the node graph ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PoetNode:
    name: str
    kind: NodeKind
    ir_index: int  # index of the IR node (the operator) it computes or differentiates
    stage: int  # index of the Problem's stage (module) the operator belongs to
    mem_bytes: int  # output bytes (mem_i)
    workspace_bytes: int  # transient while it runs (ws_i); includes transient param grads
    param_grad_bytes: int  # parameter gradients it allocates that stay to the end (grad_i)
    flops: int  # FLOPs + element-wise ops of one evaluation
    deps: tuple[int, ...]  # node indices whose outputs must be in RAM while it runs
    pageable: bool  # a forward activation that may go to storage


@dataclass(frozen=True)
class NodeGraph:
    """The joint forward + backward graph of one step, in eager execution order (topological).

    `static_bytes[t]` is what is live throughout stage t besides node outputs (`static_t`).
    `recompute_cost[i]`, `write_cost[i]`, `read_cost[i]` are the objective's c_i, w_i, r_i;
    `*_time_s` the same in seconds, for the deadline. `base_cost` / `base_time_s`: the exact
    cost of plain training (`Problem.evaluate` of keep-all), which every schedule pays.
    """

    nodes: tuple[PoetNode, ...]
    static_bytes: tuple[int, ...]
    recompute_cost: tuple[float, ...]
    write_cost: tuple[float, ...]
    read_cost: tuple[float, ...]
    recompute_time_s: tuple[float, ...]
    write_time_s: tuple[float, ...]
    read_time_s: tuple[float, ...]
    base_cost: float
    base_time_s: float
    objective: Objective
    stage_choices: tuple[tuple[ActivationDecision, ...], ...]  # allowed decisions per stage

    @property
    def n(self) -> int:
        return len(self.nodes)

    def users(self) -> tuple[tuple[int, ...], ...]:
        out: list[list[int]] = [[] for _ in self.nodes]
        for k, node in enumerate(self.nodes):
            for i in node.deps:
                out[i].append(k)
        return tuple(tuple(u) for u in out)

    def last_need(self) -> tuple[int, ...]:
        """Latest stage in which a node reading i's output can run (i itself if none)."""
        users = self.users()
        last = [0] * self.n
        for i in range(self.n - 1, -1, -1):
            last[i] = i
            for u in users[i]:
                last[i] = max(last[i], u if self.nodes[u].kind is NodeKind.BACKWARD else last[u])
        return tuple(last)


@dataclass(frozen=True)
class _GraphFacts:
    """What building the node graph reads about `p.graph` under the problem's settings."""

    rg: frozenset[str]  # tensors that require grad
    storage: dict[str, str]  # tensor -> its storage
    sbytes: dict[str, int]  # storage -> bytes
    persistent: frozenset[str]  # storages live throughout (parameters, buffers, the batch)
    has_grad_fn: tuple[bool, ...]  # per IR node
    stage_of_ir: dict[int, int]  # IR node -> stage


def _graph_facts(p: Problem) -> _GraphFacts:
    g = p.graph
    rg = g.requires_grad if p.trainable is None else g.requires_grad_for(p.trainable)
    return _GraphFacts(
        rg,
        {t.name: t.storage for t in g.tensors},
        {t.storage: t.storage_bytes for t in g.tensors},
        frozenset(t.storage for t in g.tensors if t.role in _PERSISTENT),
        tuple(n.output in rg and n.op is not OpKind.BUFFER_UPDATE for n in g.nodes),
        {i: k for k, st in enumerate(p.stages) for i in range(st.start, st.stop)},
    )


def build_node_graph(p: Problem) -> NodeGraph:
    """The node graph of `p.graph` with its costs on `p.device` (see the module's legend)."""
    facts = _graph_facts(p)
    nodes, owner = _forward_nodes(p, facts)
    _add_backward_nodes(p, facts, nodes, owner)
    static = _static_bytes(p, nodes)
    rec_c, wr_c, rd_c, rec_t, wr_t, rd_t = _node_costs(p, nodes)
    keep = p.evaluate(tuple(KEEP for _ in p.stages))
    return NodeGraph(
        tuple(nodes),
        tuple(static),
        rec_c,
        wr_c,
        rd_c,
        rec_t,
        wr_t,
        rd_t,
        keep.objective(p.objective),
        keep.latency_s,
        p.objective,
        p.choices,
    )


def _forward_nodes(p: Problem, facts: _GraphFacts) -> tuple[list[PoetNode], dict[str, int]]:
    """The forward nodes, and the forward node that allocates each storage (its owner)."""
    g, storage = p.graph, facts.storage
    nodes: list[PoetNode] = []
    owner: dict[str, int] = {}  # storage -> forward node that allocates it
    for j, n in enumerate(g.nodes):
        if n.op is OpKind.BUFFER_UPDATE:
            continue
        deps = tuple(sorted({owner[storage[x]] for x in n.inputs if storage[x] in owner}))
        cost = n.flops_forward + n.vector_ops_forward
        ws = workspace_bytes(g, n, p.kernels, input_grad=False)[0]
        # The output and the tensors the op keeps for its own backward (BN's statistics,
        # pooling indices) are two values: the output often dies in forward, the aux lives on.
        # Both come from running the op, so each carries the op's cost.
        for suffix, names in (("", (n.output,)), (":aux", n.aux_outputs)):
            new = [
                s
                for s in dict.fromkeys(storage[o] for o in names)
                if s not in facts.persistent and s not in owner
            ]
            if not new:
                continue  # a view (its output aliases another node's storage), or no aux
            for s in new:
                owner[s] = len(nodes)
            nodes.append(
                PoetNode(
                    n.name + suffix,
                    NodeKind.FORWARD,
                    j,
                    facts.stage_of_ir[j],
                    sum(facts.sbytes[s] for s in new),
                    ws,
                    0,
                    cost,
                    deps,
                    pageable=p.allow_paging,
                )
            )
    return nodes, owner


def _add_backward_nodes(
    p: Problem, facts: _GraphFacts, nodes: list[PoetNode], owner: dict[str, int]
) -> None:
    """Append the backward nodes to `nodes`, in eager autograd's reverse order."""
    # Gradients accumulate in one buffer per tensor (autograd's InputBuffer): the first
    # backward node to deliver a gradient for tensor X (the consumer of X latest in forward)
    # allocates X's slot; later contributors add into it in place (a transient), and X's
    # producer reads it. `add` and views hand their slot on, so they have no node of their own.
    g, rg, storage, has_grad_fn = p.graph, facts.rg, facts.storage, facts.has_grad_fn
    persist_grads = not p.in_place_update and p.accumulation_steps <= 1
    bwd_of: dict[int, int] = {}  # IR index -> backward node
    slots: dict[str, int | None] = {}

    def slot(tensor: str) -> int | None:
        """The backward node whose output holds `tensor`'s gradient (None: none reaches it)."""
        if tensor not in slots:
            found = None
            for c in sorted(g.consumers.get(tensor, ()), reverse=True):
                if not has_grad_fn[c]:
                    continue
                found = slot(g.nodes[c].output) if g.nodes[c].op in _PASS_THROUGH else bwd_of.get(c)
                if found is not None:
                    break
            slots[tensor] = found
        return slots[tensor]

    for j in range(len(g.nodes) - 1, -1, -1):
        n = g.nodes[j]
        if not has_grad_fn[j] or n.op in _PASS_THROUGH:
            continue
        incoming = slot(n.output)
        if incoming is None and n.output != g.loss:
            continue  # no gradient reaches this operator
        me = bwd_of[j] = len(nodes)
        saved = {owner[storage[s]] for s in n.saved if storage[s] in owner}
        act_in = [x for x in dict.fromkeys(n.inputs) if x in rg and x not in g.param_by_tensor]
        own = sum(g.tensor(x).nbytes for x in act_in if slot(x) == me)
        into = {slot(x) for x in act_in if slot(x) != me}  # accumulate into existing slots
        transient = sum(g.tensor(x).nbytes for x in act_in if slot(x) != me)
        pgrad = sum(
            g.param_by_tensor[x].nbytes
            for x in dict.fromkeys(n.inputs)
            if x in rg and x in g.param_by_tensor
        )
        ws = workspace_bytes(g, n, p.kernels, input_grad=n.inputs[0] in rg)[1] + transient
        deps = saved | into | ({incoming} if incoming is not None else set())
        nodes.append(
            PoetNode(
                f"{n.name}.backward",
                NodeKind.BACKWARD,
                j,
                facts.stage_of_ir[j],
                own,
                ws + (0 if persist_grads else pgrad),
                pgrad if persist_grads else 0,
                n.flops_backward_input + n.flops_backward_params + n.vector_ops_backward,
                tuple(sorted(deps)),
                pageable=False,
            )
        )


def _static_bytes(p: Problem, nodes: list[PoetNode]) -> list[int]:
    """static_t per node: live throughout (as `cost.simulate_step` allocates it) + earlier
    param grads."""
    g = p.graph
    trainable = (
        {q.name for q in g.params if q.trainable} if p.trainable is None else set(p.trainable)
    )
    tparams = [q for q in g.params if q.name in trainable]
    base = (
        sum(t.storage_bytes for t in g.tensors if t.role is TensorRole.PARAMETER)
        + sum(
            t.storage_bytes for t in g.tensors if t.role is TensorRole.BUFFER and t.producer is None
        )
        + sum(t.storage_bytes for t in g.tensors if t.role in (TensorRole.INPUT, TensorRole.TARGET))
        * max(1, p.accumulation_steps)
        + p.optimizer.state_bytes(sum(q.nbytes for q in tparams), len(tparams))
    )
    if p.accumulation_steps > 1 and not p.in_place_update:
        base += sum(q.nbytes for q in tparams)  # later micro-batches: .grad holds the sum
    static, acc = [], base
    for node in nodes:
        static.append(acc)
        acc += node.param_grad_bytes
    return static


def _node_costs(p: Problem, nodes: list[PoetNode]) -> tuple[tuple[float, ...], ...]:
    """(c_i, w_i, r_i) in the objective's unit, then the same in seconds."""
    # costs (Problem.evaluate's model, per accumulation step k)
    dev, st, k = p.device, p.device.storage, max(1, p.accumulation_steps)
    rate, power = dev.compute.fp32_flops_per_s, dev.compute.active_power_w
    over = dev.compute.op_overhead_s  # one more operator run per recomputed node
    rec_t = tuple(k * (x.flops / rate + over) if x.kind is NodeKind.FORWARD else 0.0 for x in nodes)
    wr_t = tuple(
        k * (st.transfer_latency_s + x.mem_bytes / st.write_bandwidth_bytes_per_s) for x in nodes
    )
    rd_t = tuple(
        k * (st.transfer_latency_s + x.mem_bytes / st.read_bandwidth_bytes_per_s) for x in nodes
    )
    if p.objective is Objective.ENERGY:
        rec_c = tuple(t * power for t in rec_t)
        wr_c = tuple(k * x.mem_bytes * st.write_energy_j_per_byte for x in nodes)
        rd_c = tuple(k * x.mem_bytes * st.read_energy_j_per_byte for x in nodes)
    else:
        rec_c, wr_c, rd_c = rec_t, wr_t, rd_t
    return rec_c, wr_c, rd_c, rec_t, wr_t, rd_t


# -- the node-level schedule and its independent validator ------------------------------------
@dataclass(frozen=True)
class NodeSchedule:
    """What happens in each stage t: the nodes computed (in order), the values resident in RAM
    and in storage at its start, the values paged in at its start and paged out during it."""

    compute: tuple[tuple[int, ...], ...]
    ram: tuple[frozenset[int], ...]
    storage: tuple[frozenset[int], ...]
    page_in: tuple[frozenset[int], ...]
    page_out: tuple[frozenset[int], ...]

    def recomputed(self) -> frozenset[int]:
        return frozenset(i for t, c in enumerate(self.compute) for i in c if i != t)

    def paged(self) -> frozenset[int]:
        return frozenset(i for po in self.page_out for i in po)


@dataclass(frozen=True, slots=True)
class ScheduleReport:
    """What replaying a node schedule found (the node model's view of it)."""

    peak_bytes: int
    peak_stage: int
    storage_bytes_written: int
    storage_bytes_read: int
    storage_transfers: int
    recompute_flops: int
    cost: float  # objective: base cost + recomputation + paging (J or s)
    latency_s: float


@dataclass(slots=True)
class _Replay:
    """What `validate_node_schedule` accumulates while it replays the stages (mutable)."""

    cost: float
    latency_s: float
    written: int = 0
    read: int = 0
    transfers: int = 0
    rflops: int = 0
    peak: int = -1
    peak_stage: int = 0


def _fail(ng: NodeGraph, t: int, msg: str) -> NoReturn:
    raise NodeScheduleError(f"stage {t} ({ng.nodes[t].name}): {msg}")


def _names(ng: NodeGraph, ids) -> list[str]:
    return sorted(ng.nodes[i].name for i in ids)


def validate_node_schedule(
    ng: NodeGraph, s: NodeSchedule, budget_bytes: int, capacity_bytes: int
) -> ScheduleReport:
    """Replay `s` value by value; raise `NodeScheduleError` at the first broken rule.

    Independent of the MILP's constraints: it keeps the set of values in RAM, allocates a value
    when it is computed or paged in, and frees it after its last use in the stage unless the
    next stage keeps it. Checked: every node runs in its own stage (frontier), backward nodes
    run only there, nothing is used before it is in RAM, nothing is kept, paged out or paged in
    that is not where the rule says, RAM <= budget at every step, storage <= capacity.
    """
    n = ng.n
    if not (
        len(s.compute) == len(s.ram) == len(s.storage) == len(s.page_in) == len(s.page_out) == n
    ):
        raise NodeScheduleError(
            f"a schedule over {n} nodes needs {n} stages; got {len(s.compute)} compute lists"
        )
    in_ram_end: set[int] = set()
    in_storage: set[int] = set()
    r = _Replay(ng.base_cost, ng.base_time_s)
    for t in range(n):
        _check_stage_rules(ng, s, t, in_ram_end, in_storage)
        pin, pout = set(s.page_in[t]), set(s.page_out[t])
        for i in pin:
            r.read += ng.nodes[i].mem_bytes
            r.cost += ng.read_cost[i]
            r.latency_s += ng.read_time_s[i]
        for i in pout:
            r.written += ng.nodes[i].mem_bytes
            r.cost += ng.write_cost[i]
            r.latency_s += ng.write_time_s[i]
        r.transfers += len(pin) + len(pout)
        in_ram_end = _replay_stage_memory(ng, s, t, budget_bytes, r)
        in_storage |= pout
    if r.written > capacity_bytes:
        raise NodeScheduleError(
            f"the schedule writes {r.written:,} bytes to storage, more "
            f"than its capacity of {capacity_bytes:,} bytes"
        )
    return ScheduleReport(
        r.peak, r.peak_stage, r.written, r.read, r.transfers, r.rflops, r.cost, r.latency_s
    )


def _check_stage_rules(
    ng: NodeGraph, s: NodeSchedule, t: int, in_ram_end: set[int], in_storage: set[int]
) -> None:
    """Stage t's frontier, order, residency and paging rules (not its memory)."""
    comp, ram, pin, pout = s.compute[t], set(s.ram[t]), set(s.page_in[t]), set(s.page_out[t])
    if t not in comp:
        _fail(ng, t, "does not compute its own node (Checkmate's frontier: stage t computes t)")
    if list(comp) != sorted(set(comp)):
        _fail(ng, t, f"computes {list(comp)}, not in topological order or twice")
    for k in comp:
        if k > t:
            _fail(ng, t, f"computes {ng.nodes[k].name} before its own stage {k}")
        if ng.nodes[k].kind is NodeKind.BACKWARD and k != t:
            _fail(ng, t, f"re-runs backward node {ng.nodes[k].name} (backward nodes run once)")
    if bad := ram - in_ram_end:
        _fail(
            ng,
            t,
            f"keeps {_names(ng, bad)} in RAM but they were not in RAM at the end of "
            "the previous stage",
        )
    if bad := set(s.storage[t]) - in_storage:
        _fail(ng, t, f"has {_names(ng, bad)} in storage but they were never written")
    if bad := pin - in_storage:
        _fail(ng, t, f"pages in {_names(ng, bad)}, which are not in storage")
    if bad := pin & ram:
        _fail(ng, t, f"pages in {_names(ng, bad)}, already in RAM")
    live_vals = ram | pin
    if bad := live_vals & set(comp):
        _fail(ng, t, f"recomputes {_names(ng, bad)}, already in RAM")
    if bad := pout - live_vals - set(comp):
        _fail(ng, t, f"pages out {_names(ng, bad)}, which are not in RAM")
    if bad := pout & (in_storage | set(s.storage[t])):
        _fail(ng, t, f"writes {_names(ng, bad)} a second time")


def _replay_stage_memory(
    ng: NodeGraph, s: NodeSchedule, t: int, budget_bytes: int, r: _Replay
) -> set[int]:
    """Run stage t's nodes against the budget; the values in RAM at its end."""
    comp = s.compute[t]
    live_vals = set(s.ram[t]) | set(s.page_in[t])
    keep_next = set(s.ram[t + 1]) if t + 1 < ng.n else set()
    live = ng.static_bytes[t] + sum(ng.nodes[i].mem_bytes for i in live_vals)

    def check(at: str, nbytes: int) -> None:
        if nbytes > r.peak:
            r.peak, r.peak_stage = nbytes, t
        if nbytes > budget_bytes:
            _fail(
                ng,
                t,
                f"{at}: {nbytes:,} bytes in RAM exceed the budget of "
                f"{budget_bytes:,} bytes by {nbytes - budget_bytes:,}",
            )

    def drop_dead(rest: tuple[int, ...]) -> int:
        needed = {d for k in rest for d in ng.nodes[k].deps} | keep_next
        dead = [v for v in live_vals if v not in needed]
        for v in dead:
            live_vals.discard(v)
        return sum(ng.nodes[v].mem_bytes for v in dead)

    check("after paging in", live)
    live -= drop_dead(comp)
    for pos, k in enumerate(comp):
        node = ng.nodes[k]
        if missing := [d for d in node.deps if d not in live_vals]:
            _fail(ng, t, f"{node.name} uses {_names(ng, missing)} before they exist in RAM")
        check(
            f"while {node.name} runs",
            live + node.mem_bytes + node.workspace_bytes + node.param_grad_bytes,
        )
        live_vals.add(k)
        live += node.mem_bytes + node.param_grad_bytes
        if k != t:
            r.rflops += node.flops
            r.cost += ng.recompute_cost[k]
            r.latency_s += ng.recompute_time_s[k]
        live -= drop_dead(comp[pos + 1 :])
    return live_vals


def lift_stage_decisions(ng: NodeGraph, decisions: tuple[ActivationDecision, ...]) -> NodeSchedule:
    """The node schedule that executes stage decisions the way the runtime does: a RECOMPUTE
    stage re-runs all its forward nodes in the stage of its own first backward node
    (non-reentrant checkpoint), a PAGE stage writes the activations its own backward nodes
    read right after computing them and reads each back when the first of those needs it."""
    n = ng.n
    if len(decisions) != len(ng.stage_choices):
        raise InvalidArgumentError(
            f"{len(decisions)} stage decisions for a problem with {len(ng.stage_choices)} stages"
        )
    dec_of = [decisions[x.stage] for x in ng.nodes]
    users = ng.users()
    compute: list[set[int]] = [{t} for t in range(n)]
    for k, d in enumerate(decisions):
        if d is not RECOMPUTE:
            continue
        members = [i for i, x in enumerate(ng.nodes) if x.kind is NodeKind.FORWARD and x.stage == k]
        # checkpoint re-runs the segment when backward first unpacks inside it
        bwd = [
            u
            for i in members
            for u in users[i]
            if ng.nodes[u].kind is NodeKind.BACKWARD and ng.nodes[u].stage == k
        ]
        if bwd:
            compute[min(bwd)].update(members)
    page_in: list[set[int]] = [set() for _ in range(n)]
    page_out: list[set[int]] = [set() for _ in range(n)]
    for i, x in enumerate(ng.nodes):
        if x.kind is NodeKind.FORWARD and dec_of[i] is PAGE and x.pageable:
            bwd = [
                u
                for u in users[i]
                if ng.nodes[u].kind is NodeKind.BACKWARD and ng.nodes[u].stage == x.stage
            ]
            if bwd:
                page_out[i].add(i)
                page_in[min(bwd)].add(i)
    # residency: from the latest source (compute or page-in) up to each use
    ram: list[set[int]] = [set() for _ in range(n)]
    for v in range(n):
        srcs = sorted(
            [t for t in range(n) if v in compute[t]] + [t for t in range(n) if v in page_in[t]]
        )
        uses = sorted({t for t in range(n) for k in compute[t] if v in ng.nodes[k].deps})
        for u in uses:
            src = max(x for x in srcs if x <= u)
            for t in range(src + 1, u + 1):
                ram[t].add(v)
    for t in range(n):  # a value already in RAM is not recomputed
        compute[t] -= ram[t] - {t}
    storage: list[set[int]] = [set() for _ in range(n)]
    last = ng.last_need()
    for v in range(n):
        for t0 in range(n):
            if v in page_out[t0]:
                for t in range(t0 + 1, last[v] + 1):
                    storage[t].add(v)
    return NodeSchedule(
        tuple(tuple(sorted(c)) for c in compute),
        tuple(frozenset(r) for r in ram),
        tuple(frozenset(x) for x in storage),
        tuple(frozenset(x) for x in page_in),
        tuple(frozenset(x) for x in page_out),
    )


class _One:
    """The constant 1 (a fixed variable: R[t,t] = 1, Checkmate's frontier)."""

    def __repr__(self) -> str:
        return "1"


_ONE = _One()


# -- the MILP ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MilpSolution:
    """One HiGHS run on the node-level model."""

    status: MilpStatus
    schedule: NodeSchedule | None
    objective: float | None  # base cost + the MILP's extra cost (J or s), None: no incumbent
    dual_bound: float | None  # HiGHS's lower bound on the same quantity
    mip_gap: float | None  # HiGHS's relative gap, on the MILP's objective: the extra cost only
    used_highs: bool  # False: plain training fits, so it is optimal without a solve
    solve_time_s: float
    build_time_s: float
    n_binaries: int
    n_continuous: int
    n_constraints: int
    model_budget_bytes: int


class _Model:
    """Column / row book-keeping for scipy.optimize.milp (sparse)."""

    def __init__(self) -> None:
        self.col: dict[tuple, int] = {}
        self.cost: list[float] = []
        self.lb: list[float] = []
        self.ub: list[float] = []
        self.integral: list[int] = []
        self.ri: list[int] = []
        self.ci: list[int] = []
        self.vals: list[float] = []
        self.rlo: list[float] = []
        self.rhi: list[float] = []
        self.family = ""  # the constraint family rows are added to (for `milp_admits`)
        self.families: list[str] = []
        self.unit = self.scale = 1.0

    def var(
        self, key: tuple, cost: float = 0.0, lb: float = 0.0, ub: float = 1.0, integral: bool = True
    ) -> int:
        self.col[key] = len(self.cost)
        self.cost.append(cost)
        self.lb.append(lb)
        self.ub.append(ub)
        self.integral.append(1 if integral else 0)
        return self.col[key]

    def row(self, terms: dict[int, float], lo: float, hi: float) -> None:
        r = len(self.rlo)
        for c, v in terms.items():
            if v != 0.0:
                self.ri.append(r)
                self.ci.append(c)
                self.vals.append(v)
        self.rlo.append(lo)
        self.rhi.append(hi)
        self.families.append(self.family)


def solve_node_milp(
    ng: NodeGraph,
    budget_bytes: int,
    capacity_bytes: int,
    deadline_s: float | None = None,
    *,
    granularity: Granularity = Granularity.NODE,
    time_limit_s: float = 60.0,
    mip_rel_gap: float = 1e-6,
    shortcut: bool = True,
) -> MilpSolution:
    """Build and solve the POET/Checkmate MILP of the module's legend on HiGHS.

    `shortcut`: if plain training (keep everything) fits, it is optimal — every term of the
    objective is a non-negative extra cost — and HiGHS is not called (`solve_time_s` 0).
    """
    if not time_limit_s > 0:
        raise InvalidArgumentError(
            f"time_limit_s = {time_limit_s} must be > 0 seconds; POET's own runs used 180-300 s"
        )
    if budget_bytes <= 0 or capacity_bytes < 0:
        raise InvalidArgumentError(
            f"budget_bytes = {budget_bytes:,} must be > 0 and "
            f"capacity_bytes = {capacity_bytes:,} >= 0"
        )
    t0 = time.perf_counter()
    if shortcut:
        keep = lift_stage_decisions(ng, tuple(KEEP for _ in ng.stage_choices))
        try:
            rep = validate_node_schedule(ng, keep, budget_bytes, capacity_bytes)
        except NodeScheduleError:
            rep = None
        if rep is not None and (deadline_s is None or rep.latency_s <= deadline_s):
            return MilpSolution(
                MilpStatus.OPTIMAL,
                keep,
                rep.cost,
                rep.cost,
                0.0,
                False,
                0.0,
                time.perf_counter() - t0,
                0,
                0,
                0,
                budget_bytes,
            )
    m = _build_model(ng, budget_bytes, capacity_bytes, deadline_s, granularity)
    n, scale = ng.n, m.scale
    nv = len(m.cost)
    a = coo_matrix((m.vals, (m.ri, m.ci)), shape=(len(m.rlo), nv)).tocsr()
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = milp(
        np.array(m.cost),
        constraints=LinearConstraint(a, m.rlo, m.rhi),
        integrality=np.array(m.integral),
        bounds=Bounds(m.lb, m.ub),
        options={"time_limit": time_limit_s, "disp": False, "mip_rel_gap": mip_rel_gap},
    )
    solve_s = time.perf_counter() - t1
    nbin = int(sum(m.integral))
    stats = dict(
        solve_time_s=solve_s,
        build_time_s=build_s,
        n_binaries=nbin,
        n_continuous=nv - nbin,
        n_constraints=len(m.rlo),
        model_budget_bytes=budget_bytes,
    )
    bound = getattr(res, "mip_dual_bound", None)
    bound = None if bound is None or not math.isfinite(bound) else ng.base_cost + bound * scale
    if res.x is None:
        status = MilpStatus.INFEASIBLE if res.status == 2 else MilpStatus.NO_SOLUTION
        return MilpSolution(status, None, None, bound, None, True, **stats)
    x = np.round(res.x).astype(int)

    def on(key) -> bool:
        c = m.col.get(key)
        return c is not None and x[c] == 1

    sched = NodeSchedule(
        tuple(tuple(k for k in range(t + 1) if k == t or on(("R", t, k))) for t in range(n)),
        tuple(frozenset(i for i in range(t) if on(("S", t, i))) for t in range(n)),
        tuple(frozenset(i for i in range(t) if on(("SD", t, i))) for t in range(n)),
        tuple(frozenset(i for i in range(t) if on(("Min", t, i))) for t in range(n)),
        tuple(frozenset(i for i in range(t + 1) if on(("Mout", t, i))) for t in range(n)),
    )
    status = MilpStatus.OPTIMAL if res.status == 0 else MilpStatus.FEASIBLE
    gap = getattr(res, "mip_gap", None)
    return MilpSolution(
        status,
        sched,
        ng.base_cost + float(res.fun) * scale,
        bound,
        None if gap is None or not math.isfinite(gap) else float(gap),
        True,
        **stats,
    )


@dataclass(frozen=True)
class _ModelContext:
    """What every constraint family of `_build_model` reads: the node graph, the model being
    built and the per-node facts derived from it (memory rows are in units of the budget)."""

    ng: NodeGraph
    m: _Model
    users: tuple[tuple[int, ...], ...]
    last: tuple[int, ...]
    fwd: tuple[bool, ...]
    mem: tuple[int, ...]
    budget: float

    @property
    def n(self) -> int:
        return self.ng.n

    @property
    def nodes(self) -> tuple[PoetNode, ...]:
        return self.ng.nodes

    def R(self, t: int, i: int):  # column, the constant 1 (frontier: R[t,t] = 1), or None (0)
        return _ONE if t == i else self.m.col.get(("R", t, i))

    def S(self, t: int, i: int):
        return self.m.col.get(("S", t, i))


def _terms(*pairs) -> tuple[dict[int, float], float]:
    """Sum of coef * variable: the fixed 1 goes to the constant, missing (0) are dropped."""
    out: dict[int, float] = {}
    const = 0.0
    for coef, v in pairs:
        if v is None:
            continue
        if v is _ONE:
            const += coef
        else:
            out[v] = out.get(v, 0.0) + coef
    return out, const


def _build_model(
    ng: NodeGraph,
    budget_bytes: int,
    capacity_bytes: int,
    deadline_s: float | None,
    granularity: Granularity,
) -> _Model:
    m = _Model()
    m.unit = float(max(1, budget_bytes))  # memory rows in units of the budget: numerically ~1
    m.scale = max(ng.base_cost, 1e-30)  # objective in units of plain training's cost
    c = _ModelContext(
        ng,
        m,
        ng.users(),
        ng.last_need(),
        tuple(x.kind is NodeKind.FORWARD for x in ng.nodes),
        tuple(x.mem_bytes for x in ng.nodes),
        budget=1.0 - 1e-7,
    )  # HiGHS's feasibility tolerance is 1e-7: stay strictly inside
    _add_variables(c)
    _add_dependency_rows(c)
    _add_residency_rows(c)
    _add_memory_rows(c)
    m.family = "(S) stage granularity"
    if granularity is Granularity.STAGE:
        _add_stage_rows(c)
    _add_capacity_and_deadline_rows(c, capacity_bytes, deadline_s)
    return m


def _add_variables(c: _ModelContext) -> None:
    # ---- variables ------------------------------------------------------------------------
    # R[t,i]: forward nodes from their own stage (fixed 1) to last_need; backward: own stage.
    m, ng, mem, scale = c.m, c.ng, c.mem, c.m.scale
    for i in range(c.n):
        for t in range(i + 1, c.last[i] + 1):
            if c.fwd[i]:
                m.var(("R", t, i), ng.recompute_cost[i] / scale)
            m.var(("S", t, i))
            if c.nodes[i].pageable and mem[i] > 0:
                m.var(("SD", t, i))
                m.var(("Min", t, i), ng.read_cost[i] / scale)
        if c.nodes[i].pageable and mem[i] > 0:
            for t in range(i, c.last[i]):
                m.var(("Mout", t, i), ng.write_cost[i] / scale)


def _add_dependency_rows(c: _ModelContext) -> None:
    # ---- (1) dependencies (Checkmate: R[t,k] <= R[t,i] + S[t,i]; POET: + M_in[t,i]) --------
    m = c.m
    m.family = "(1) dependencies"
    for t in range(c.n):
        for k in range(t + 1):
            if c.R(t, k) is None:
                continue
            for i in c.nodes[k].deps:
                row, const = _terms(
                    (1.0, c.R(t, k)),
                    (-1.0, c.R(t, i)),
                    (-1.0, c.S(t, i)),
                    (-1.0, m.col.get(("Min", t, i))),
                )
                m.row(row, -np.inf, -const)


def _add_residency_rows(c: _ModelContext) -> None:
    # ---- (2) RAM residency: S[t+1,i] <= S[t,i] + R[t,i] + M_in[t,i] -------------------------
    # ---- (3) storage residency (POET): S_SD[t+1,i] <= S_SD[t,i] + M_out[t,i] ---------------
    # ---- (4) page out only what is in RAM, page in only what is in storage -----------------
    # ---- (5) one source per stage: S + R + M_in <= 1; (6) each value written at most once ---
    m, R, S, last = c.m, c.R, c.S, c.last
    m.family = "(2-6) residency and paging"
    for i in range(c.n):
        for t in range(i + 1, last[i] + 1):
            row, const = _terms(
                (1.0, S(t, i)),
                (-1.0, S(t - 1, i)),
                (-1.0, R(t - 1, i)),
                (-1.0, m.col.get(("Min", t - 1, i))),
            )
            m.row(row, -np.inf, -const)
            if ("SD", t, i) in m.col:
                row, const = _terms(
                    (1.0, m.col[("SD", t, i)]),
                    (-1.0, m.col.get(("SD", t - 1, i))),
                    (-1.0, m.col.get(("Mout", t - 1, i))),
                )
                m.row(row, -np.inf, -const)
                m.row({m.col[("Min", t, i)]: 1.0, m.col[("SD", t, i)]: -1.0}, -np.inf, 0.0)
            row, const = _terms((1.0, S(t, i)), (1.0, R(t, i)), (1.0, m.col.get(("Min", t, i))))
            m.row(row, -np.inf, 1.0 - const)
        outs = [m.col[("Mout", t, i)] for t in range(i, last[i]) if ("Mout", t, i) in m.col]
        for t in range(i, last[i]):
            if ("Mout", t, i) in m.col:
                row, const = _terms((1.0, m.col[("Mout", t, i)]), (-1.0, S(t, i)), (-1.0, R(t, i)))
                m.row(row, -np.inf, -const)
        if outs:
            m.row({o: 1.0 for o in outs}, -np.inf, 1.0)


def _add_memory_rows(c: _ModelContext) -> None:
    # ---- (7) memory accounting (Checkmate's U, plus static_t, grad_k and ws_k) -------------
    #   U[t,-1] = static_t + sum_i mem_i (S[t,i] + M_in[t,i])
    #   U[t,k]  = U[t,prev] + R[t,k] (mem_k + grad_k) - sum_{i in deps(k)+{k}} mem_i FREE[t,i,k]
    #   U[t,prev] + R[t,k] (mem_k + ws_k + grad_k) <= budget;  0 <= U <= budget
    # ---- (8) FREE linearised (Checkmate): see `_add_free_rows`
    m, budget, unit = c.m, c.budget, c.m.unit
    m.family = "(7-8) memory and FREE"
    for t in range(c.n):
        u_prev = m.var(("U", t, -1), lb=0.0, ub=budget, integral=False)
        row = {u_prev: 1.0}
        for i in range(t):
            for v in (c.S(t, i), m.col.get(("Min", t, i))):
                if v is not None:
                    row[v] = row.get(v, 0.0) - c.mem[i] / unit
        m.row(row, c.ng.static_bytes[t] / unit, c.ng.static_bytes[t] / unit)
        for k in range(t + 1):
            rk = c.R(t, k)
            if rk is None:
                continue
            x = c.nodes[k]
            run = (x.mem_bytes + x.workspace_bytes + x.param_grad_bytes) / unit
            row, const = _terms((1.0, u_prev), (run, rk))
            m.row(row, -np.inf, budget - const)
            u = m.var(("U", t, k), lb=0.0, ub=budget, integral=False)
            grows = (x.mem_bytes + x.param_grad_bytes) / unit
            row, const = _terms((1.0, u), (-1.0, u_prev), (-grows, rk))
            _add_free_rows(c, t, k, rk, row)
            m.row(row, -const, -const)
            u_prev = u


def _add_free_rows(c: _ModelContext, t: int, k: int, rk, u_row: dict[int, float]) -> None:
    """FREE[t,i,k] for k and its dependencies: its term in U[t,k]'s row `u_row`, and its rows.

    (8) FREE linearised (Checkmate): with hazards = (1 - R[t,k]) + S[t+1,i]
         + sum_{j in users(i), j > k} R[t,j]:  1 - FREE <= hazards <= kappa (1 - FREE)
    """
    m = c.m
    for i in (*c.nodes[k].deps, k):
        if c.mem[i] == 0:
            continue
        f = m.var(("FREE", t, i, k))
        u_row[f] = u_row.get(f, 0.0) + c.mem[i] / m.unit
        later = [c.R(t, j) for j in c.users[i] if j > k and j <= t]
        later = [r for r in later if r is not None]
        nxt = c.S(t + 1, i) if t + 1 < c.n else None
        haz = [(-1.0, rk), (1.0, nxt), *((1.0, r) for r in later)]
        kappa = 2 + len(later)
        hrow, hc = _terms(*haz)  # hazards = 1 + hrow + hc
        lo_row = dict(hrow)
        lo_row[f] = lo_row.get(f, 0.0) + 1.0
        m.row(lo_row, -hc, np.inf)  # FREE + hazards >= 1
        hi_row = dict(hrow)
        hi_row[f] = hi_row.get(f, 0.0) + kappa
        m.row(hi_row, -np.inf, kappa - 1.0 - hc)  # hazards + kappa FREE <= kappa


def _add_stage_rows(c: _ModelContext) -> None:
    # ---- (S) stage granularity: what the runtime executes (non-reentrant checkpoint) -------
    #   rec_s, page_s in {0,1}, rec_s + page_s <= 1, each only where the stage allows it.
    #   A recomputed stage re-runs its forward nodes once, in the stage r_s of its own first
    #   backward node: R[r_s,i] = rec_s, R[t,i] = 0 for other t != i; the values only its own
    #   nodes read are dropped after their last forward use f_i: S[t,i] <= 1 - rec_s for
    #   f_i < t <= r_s.
    #   A paged stage writes each value its own backward reads right after computing it:
    #   M_out[i,i] = page_s, M_out[t,i] = 0 for t != i.
    m, nodes, users, last, fwd = c.m, c.nodes, c.users, c.last, c.fwd
    for st, allowed in enumerate(c.ng.stage_choices):
        members = [i for i in range(c.n) if fwd[i] and nodes[i].stage == st]
        own_bwd = [
            u
            for i in members
            for u in users[i]
            if nodes[u].kind is NodeKind.BACKWARD and nodes[u].stage == st
        ]
        r_s = min(own_bwd) if own_bwd else None
        rec = m.var(("rec", st), ub=1.0 if RECOMPUTE in allowed and r_s else 0.0)
        pag = m.var(("page", st), ub=1.0 if PAGE in allowed else 0.0)
        m.row({rec: 1.0, pag: 1.0}, -np.inf, 1.0)
        for i in members:
            for t in range(i + 1, last[i] + 1):
                col = m.col[("R", t, i)]
                if t == r_s:
                    m.row({col: 1.0, rec: -1.0}, 0.0, 0.0)
                else:
                    m.ub[col] = 0.0
            internal = all(nodes[u].stage == st for u in users[i])
            fwd_done = max([u for u in users[i] if fwd[u]], default=i)
            if r_s is not None and internal:
                for t in range(fwd_done + 1, min(r_s, last[i]) + 1):
                    m.row({m.col[("S", t, i)]: 1.0, rec: 1.0}, -np.inf, 1.0)
            reads = any(
                nodes[u].kind is NodeKind.BACKWARD and nodes[u].stage == st for u in users[i]
            )
            for t in range(i, last[i]):
                col = m.col.get(("Mout", t, i))
                if col is None:
                    continue
                if t == i and reads:
                    m.row({col: 1.0, pag: -1.0}, 0.0, 0.0)
                else:
                    m.ub[col] = 0.0


def _add_capacity_and_deadline_rows(
    c: _ModelContext, capacity_bytes: int, deadline_s: float | None
) -> None:
    # ---- (9) storage capacity and (10) deadline, paging time included (POET leaves out) -----
    m, ng = c.m, c.ng
    m.family = "(9-10) capacity and deadline"
    outs = {col: c.mem[key[2]] / m.unit for key, col in m.col.items() if key[0] == "Mout"}
    if outs:
        m.row(outs, -np.inf, capacity_bytes / m.unit)
    if deadline_s is not None:
        row = {}
        for key, col in m.col.items():
            if key[0] == "R":
                row[col] = ng.recompute_time_s[key[2]]
            elif key[0] == "Min":
                row[col] = ng.read_time_s[key[2]]
            elif key[0] == "Mout":
                row[col] = ng.write_time_s[key[2]]
        m.row(row, -np.inf, deadline_s - ng.base_time_s)


def milp_admits(
    ng: NodeGraph,
    s: NodeSchedule,
    budget_bytes: int,
    capacity_bytes: int,
    deadline_s: float | None = None,
    granularity: Granularity = Granularity.NODE,
) -> list[str]:
    """The constraint families of the MILP that the schedule `s` violates (empty: the MILP
    admits it, so its optimum is at most `s`'s cost). FREE and U follow from `s` by
    Checkmate's definitions; a schedule decision the model has no variable for is reported."""
    m = _build_model(ng, budget_bytes, capacity_bytes, deadline_s, granularity)
    users, nodes = ng.users(), ng.nodes
    x = np.zeros(len(m.cost))
    bad: list[str] = []

    def put(key, on: bool) -> None:
        if on:
            c = m.col.get(key)
            if c is None:
                bad.append(f"no variable {key}")
            else:
                x[c] = 1.0

    for t in range(ng.n):
        for i in s.compute[t]:
            if i != t:
                put(("R", t, i), True)
        for i in s.ram[t]:
            put(("S", t, i), True)
        for i in s.storage[t]:
            put(("SD", t, i), True)
        for i in s.page_in[t]:
            put(("Min", t, i), True)
        for i in s.page_out[t]:
            put(("Mout", t, i), True)
    rec, pag = ({nodes[i].stage for i in s.recomputed()}, {nodes[i].stage for i in s.paged()})
    for st in range(len(ng.stage_choices)):
        put(("rec", st), st in rec and granularity is Granularity.STAGE)
        put(("page", st), st in pag and granularity is Granularity.STAGE)
    for t in range(ng.n):
        comp = set(s.compute[t])
        nxt = s.ram[t + 1] if t + 1 < ng.n else frozenset()
        u = ng.static_bytes[t] + sum(nodes[i].mem_bytes for i in s.ram[t] | s.page_in[t])
        x[m.col[("U", t, -1)]] = u / m.unit
        for k in range(t + 1):
            if ("U", t, k) not in m.col:
                continue
            if k in comp:
                u += nodes[k].mem_bytes + nodes[k].param_grad_bytes
                for i in (*nodes[k].deps, k):
                    if (
                        ("FREE", t, i, k) in m.col
                        and i not in nxt
                        and not any(k < j <= t and j in comp for j in users[i])
                    ):
                        x[m.col[("FREE", t, i, k)]] = 1.0
                        u -= nodes[i].mem_bytes
            x[m.col[("U", t, k)]] = u / m.unit
    a = coo_matrix((m.vals, (m.ri, m.ci)), shape=(len(m.rlo), len(m.cost))).tocsr()
    ax = a @ x
    tol = 1e-9
    for r in np.nonzero((ax < np.array(m.rlo) - tol) | (ax > np.array(m.rhi) + tol))[0]:
        bad.append(
            f"{m.families[r]}: row {r} = {ax[r]:.9g} outside [{m.rlo[r]:.9g}, {m.rhi[r]:.9g}]"
        )
    for c in np.nonzero((x < np.array(m.lb) - tol) | (x > np.array(m.ub) + tol))[0]:
        key = next(k for k, v in m.col.items() if v == c)
        bad.append(f"bounds: {key} = {x[c]:.9g} outside [{m.lb[c]:.9g}, {m.ub[c]:.9g}]")
    return bad


# -- the solver ---------------------------------------------------------------------------------
def project_to_stages(p: Problem, ng: NodeGraph, s: NodeSchedule) -> tuple[ActivationDecision, ...]:
    """Stage decisions for the runtime: RECOMPUTE if any of the stage's nodes is recomputed,
    else PAGE if any is paged out, else KEEP (within what the stage allows)."""
    rec = {ng.nodes[i].stage for i in s.recomputed()}
    pag = {ng.nodes[i].stage for i in s.paged()}
    out = []
    for k, allowed in enumerate(p.choices):
        d = RECOMPUTE if k in rec else PAGE if k in pag else KEEP
        if d not in allowed:
            d = RECOMPUTE if RECOMPUTE in allowed and d is PAGE else KEEP
        out.append(d)
    return tuple(out)


@dataclass(frozen=True)
class PoetResult:
    """The exact evaluation of the projected plan, with the node schedule behind it."""

    evaluation: Evaluation
    node_graph: NodeGraph
    solution: MilpSolution  # the last HiGHS run (its schedule is `schedule`)
    schedule: NodeSchedule
    report: ScheduleReport  # the validator's replay of `schedule`
    rounds: int  # budget tightenings until the exact simulation agreed


def poet_solve(
    p: Problem,
    *,
    time_limit_s: float = 60.0,
    granularity: Granularity = Granularity.NODE,
    max_rounds: int = 4,
) -> PoetResult:
    """Solve the node-level MILP, validate its schedule, project it onto stages and evaluate
    exactly; tighten the model's budget by the exact overshoot and re-solve if needed."""

    ng = build_node_graph(p)
    capacity = p.device.storage.capacity_bytes
    model_budget = p.budget_bytes
    best: Evaluation | None = None
    for rnd in range(1, max_rounds + 1):
        sol = solve_node_milp(
            ng,
            model_budget,
            capacity,
            p.deadline_s,
            granularity=granularity,
            time_limit_s=time_limit_s,
        )
        if sol.schedule is None:
            ref = best or p.evaluate(
                tuple(RECOMPUTE if RECOMPUTE in c else KEEP for c in p.choices)
            )
            peak = (
                f"the smallest peak found is {ref.peak_bytes:,} bytes "
                f"({ref.peak_bytes / max(1, p.budget_bytes):.2f}x the budget)"
            )
            if sol.status is MilpStatus.INFEASIBLE:
                raise PlanInfeasibleError(
                    f"poet: HiGHS proved the node-level model infeasible: no schedule fits "
                    f"{p.budget_bytes:,} bytes (model budget {model_budget:,}); {peak}"
                )
            raise PlanInfeasibleError(
                f"poet: HiGHS reached its time limit of {time_limit_s:g} s before finding any "
                f"schedule for {p.budget_bytes:,} bytes ({sol.n_binaries:,} binaries, "
                f"{sol.n_constraints:,} rows); {peak}; raise time_limit_s or use the 'dp' "
                "solver"
            )
        report = validate_node_schedule(ng, sol.schedule, model_budget, capacity)
        ev = p.evaluate(project_to_stages(p, ng, sol.schedule))
        if p.feasible(ev):
            return PoetResult(ev, ng, sol, sol.schedule, report, rnd)
        best = ev if best is None or ev.peak_bytes < best.peak_bytes else best
        model_budget -= max(ev.peak_bytes - p.budget_bytes, p.budget_bytes // 1000, 1)
    assert best is not None
    raise PlanInfeasibleError(
        f"poet: after {max_rounds} budget tightenings the projected stage plan still does not "
        f"fit {p.budget_bytes:,} bytes; the smallest peak found is {best.peak_bytes:,} bytes "
        f"({best.peak_bytes / max(1, p.budget_bytes):.2f}x the budget); use the 'dp' solver"
    )


def poet_milp(
    p: Problem, *, time_limit_s: float = 60.0, granularity: Granularity = Granularity.NODE
) -> Evaluation:
    """The POET/Checkmate node-level MILP as a solver (`solver(problem) -> Evaluation`)."""
    return poet_solve(p, time_limit_s=time_limit_s, granularity=granularity).evaluation
