"""A planning problem and the exact evaluation of any candidate schedule for it.

Every solver proposes per-stage activation decisions; `Problem.evaluate` lowers them to a
`cost.Schedule` and scores them with the same tensor-lifetime simulation the profile uses, so a
plan's predicted peak is never a solver's private estimate.

Time and energy of a schedule (POET, Patil et al. ICML 2022, §4, extended with paging time in
the deadline):
    time   = (FLOPs + recomputed FLOPs + element-wise ops) / fp32 throughput
             + operator runs * per-operator overhead (the device's `op_overhead_s`: dispatch
               and loop set-up; what makes k micro-batches slower than one batch of k times
               the size, as every runtime measures)
             + transfers * per-transfer latency + bytes written / write bandwidth
             + bytes read / read bandwidth
    energy = compute time * active power + bytes written * write energy per byte
             + bytes read * read energy per byte
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from edgetrain.cost import (
    KernelLibrary,
    Optimizer,
    Schedule,
    schedule_traffic,
    segment_ranges,
    simulate_step,
)
from edgetrain.errors import InvalidArgumentError
from edgetrain.ir import Graph, OpKind
from edgetrain.planner._plan import ActivationDecision, Objective
from edgetrain.planner._stages import Stage, chain_stages, stages_at, valid_depths

KEEP, RECOMPUTE, PAGE = (
    ActivationDecision.KEEP,
    ActivationDecision.RECOMPUTE,
    ActivationDecision.PAGE,
)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Exact cost of one candidate (per optimizer step)."""

    decisions: tuple[ActivationDecision, ...]
    peak_bytes: int
    latency_s: float
    energy_j: float
    storage_bytes_written: int
    storage_bytes_read: int
    recompute_flops: int

    def objective(self, objective: Objective) -> float:
        return self.energy_j if objective is Objective.ENERGY else self.latency_s


@dataclass(frozen=True)
class Problem:
    """Activation decisions for `graph` (at the micro-batch size) on `device` within a budget."""

    graph: Graph
    device: object
    budget_bytes: int
    optimizer: Optimizer = Optimizer.SGD
    objective: Objective = Objective.TIME
    deadline_s: float | None = None
    allow_paging: bool = True
    trainable: frozenset[str] | None = None
    in_place_update: bool = False
    accumulation_steps: int = 1
    kernels: KernelLibrary = KernelLibrary()
    stage_depth: int | None = None  # None: `chain_stages`' own choice of module depth
    weight_decay: float = 0.0
    lean_backward: bool = False  # NOTE [ Lean saved tensors ] in cost/_lean.py
    plain_activations: frozenset[str] = frozenset()
    in_place_activations: frozenset[str] = frozenset()  # NOTE [ Lean in-place activations ]
    chunked_segments: tuple[tuple[str, int], ...] = ()  # NOTE [ Sample-chunked frozen segments ]
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @cached_property
    def stages(self) -> tuple[Stage, ...]:
        if self.stage_depth is None:
            return chain_stages(self.graph)
        st = stages_at(self.graph, self.stage_depth)
        if st is None:
            raise InvalidArgumentError(
                f"the graph does not cut into a chain at module depth {self.stage_depth}; "
                f"valid depths: {valid_depths(self.graph)}"
            )
        return st

    @property
    def choices(self) -> tuple[tuple[ActivationDecision, ...], ...]:
        """Allowed decisions per stage: fixed stages can only keep; a stage that draws random
        numbers is never recomputed (NOTE [ Random ops are not recomputed ])."""
        out = []
        chunked = {i for r in segment_ranges(self.graph, self.chunked_segments) for i in r}
        for s in self.stages:
            random = any(n.op is OpKind.RANDOM for n in self.graph.nodes[s.start : s.stop])
            opts = (KEEP,) if random else (KEEP, RECOMPUTE)
            opts += (PAGE,) if self.allow_paging else ()
            fixed = not s.wrappable or chunked.intersection(range(s.start, s.stop))
            out.append((KEEP,) if fixed else opts)
        return tuple(out)

    # NOTE [ Random ops are not recomputed ]
    #     Recomputing a stage that holds a dropout (any RANDOM op) would draw a new mask unless
    #     the generator's state were stashed with the stage (torch's checkpoint does that with
    #     `preserve_rng_state=True`: about 5 KB of CPU generator state per stage, allocated in
    #     forward, and a second draw of every mask). An exact plan must give plain training's
    #     gradients, so such a stage is kept or paged (paging stores the mask itself); the
    #     runtime's checkpoint therefore never needs the RNG state.

    def schedule(self, decisions: tuple[ActivationDecision, ...]) -> Schedule:
        rec = tuple((s.start, s.stop) for s, d in zip(self.stages, decisions) if d is RECOMPUTE)
        paged = frozenset(
            i for s, d in zip(self.stages, decisions) if d is PAGE for i in range(s.start, s.stop)
        )
        return Schedule(
            trainable=self.trainable,
            recompute_segments=rec,
            paged_nodes=paged,
            in_place_update=self.in_place_update,
            accumulation_steps=self.accumulation_steps,
            weight_decay=self.weight_decay,
            lean_backward=self.lean_backward,
            plain_activations=self.plain_activations,
            in_place_activations=self.in_place_activations,
            chunked_segments=self.chunked_segments,
        )

    def evaluate(self, decisions: tuple[ActivationDecision, ...]) -> Evaluation:
        decisions = tuple(decisions)
        hit = self._cache.get(decisions)
        if hit is not None:
            return hit
        sched = self.schedule(decisions)
        sim = simulate_step(self.graph, self.optimizer, self.kernels, sched)
        traffic = schedule_traffic(self.graph, sched)
        rg = (
            self.graph.requires_grad
            if self.trainable is None
            else self.graph.requires_grad_for(self.trainable)
        )
        base_flops = base_vec = 0
        for n in self.graph.nodes:
            base_flops += n.flops_forward
            base_vec += n.vector_ops_forward
            if n.output in rg:
                ins = any(i in rg and i not in self.graph.param_by_tensor for i in n.inputs)
                ps = any(i in rg and i in self.graph.param_by_tensor for i in n.inputs)
                base_flops += (n.flops_backward_input if ins else 0) + (
                    n.flops_backward_params if ps else 0
                )
                base_vec += n.vector_ops_backward
        k = max(1, self.accumulation_steps)
        dev = self.device
        # Operator runs per micro-batch: every forward node, the backward of every node that
        # needs one, and the nodes recomputation re-runs (see the module docstring).
        n_ops = (
            len(self.graph.nodes)
            + sum(1 for n in self.graph.nodes if n.output in rg)
            + sum(b - a for a, b in sched.recompute_segments)
        )
        compute_s = k * (
            (base_flops + base_vec + traffic.recompute_flops + traffic.recompute_vector_ops)
            / dev.compute.fp32_flops_per_s
            + n_ops * dev.compute.op_overhead_s
        )
        st = dev.storage
        io_s = k * (
            traffic.storage_transfers * st.transfer_latency_s
            + traffic.storage_bytes_written / st.write_bandwidth_bytes_per_s
            + traffic.storage_bytes_read / st.read_bandwidth_bytes_per_s
        )
        energy = (
            compute_s * dev.compute.active_power_w
            + k * traffic.storage_bytes_written * st.write_energy_j_per_byte
            + k * traffic.storage_bytes_read * st.read_energy_j_per_byte
        )
        ev = Evaluation(
            decisions,
            sim.peak_bytes,
            compute_s + io_s,
            energy,
            k * traffic.storage_bytes_written,
            k * traffic.storage_bytes_read,
            k * traffic.recompute_flops,
        )
        self._cache[decisions] = ev
        return ev

    def feasible(self, ev: Evaluation) -> bool:
        if ev.peak_bytes > self.budget_bytes:
            return False
        if ev.storage_bytes_written > self.device.storage.capacity_bytes:
            return False
        return self.deadline_s is None or ev.latency_s <= self.deadline_s

    # -- the additive chain model the exact DP and the MILP optimise -------------------------
    @cached_property
    def chain_model(self) -> "ChainModel":
        return ChainModel.from_problem(self)


@dataclass(frozen=True)
class ChainModel:
    """Per-stage linear model of a schedule's cost, fitted from exact evaluations.

    NOTE [ The chain model ]
        For stage i and decision d: `drop[i][d]` bytes the decision removes from memory between
        the stage's forward and its backward, `cost[i][d]` the time or energy it adds,
        `written[i][d]` storage bytes. The keep-all simulation gives `fwd_peak` and, for each
        stage, `bwd_peak[i]`, the live bytes while its backward runs. Dropping memory at stage
        j lowers every later moment up to stage j's own backward, and stage i's decision changes
        its own backward by `own[i][d]` (paging reads tensors back one operator at a time,
        recomputation brings them all back at once), so the schedule fits iff
            fwd_peak - sum_j drop_j <= M  and
            bwd_peak_i - own_i(d_i) - sum_{j<i} drop_j <= M  for all i.
        Each candidate the DP or the MILP returns is re-checked with the exact simulation; if
        the linear model was optimistic the budget is tightened by the error and re-solved.
    """

    n: int
    options: tuple[tuple[ActivationDecision, ...], ...]
    drop: tuple[dict, ...]
    own: tuple[dict, ...]
    cost: tuple[dict, ...]
    written: tuple[dict, ...]
    fwd_peak: int
    bwd_peak: tuple[int, ...]
    base_cost: float

    @classmethod
    def from_problem(cls, p: Problem) -> "ChainModel":
        keep = tuple(KEEP for _ in p.stages)
        base = p.evaluate(keep)
        sim = simulate_step(p.graph, p.optimizer, p.kernels, p.schedule(keep))
        node_stage = {}
        for k, s in enumerate(p.stages):
            for i in range(s.start, s.stop):
                node_stage[p.graph.nodes[i].name] = k

        def peaks(sim_x) -> tuple[int, list[int]]:
            fwd = 0
            bwd = [0] * len(p.stages)
            for pt in sim_x.timeline:
                name = pt.node.removeprefix("recompute:")
                if pt.phase.value == "backward" and name in node_stage:
                    k = node_stage[name]
                    bwd[k] = max(bwd[k], pt.live_bytes)
                else:  # forward, optimizer and accumulation moments
                    fwd = max(fwd, pt.live_bytes)
            return fwd, bwd

        fwd_peak, bwd_peak = peaks(sim)
        drop, own, cost, written = [], [], [], []
        obj = p.objective
        for k, opts in enumerate(p.choices):
            d_drop, d_own, d_cost, d_w = {KEEP: 0}, {KEEP: 0}, {KEEP: 0.0}, {KEEP: 0}
            for d in opts:
                if d is KEEP:
                    continue
                dec = tuple(d if j == k else KEEP for j in range(len(p.stages)))
                ev = p.evaluate(dec)
                sim_d = simulate_step(p.graph, p.optimizer, p.kernels, p.schedule(dec))
                d_drop[d] = max(0, _end_of_forward(sim) - _end_of_forward(sim_d))
                d_own[d] = bwd_peak[k] - peaks(sim_d)[1][k]  # its own backward, lower or higher
                d_cost[d] = ev.objective(obj) - base.objective(obj)
                d_w[d] = ev.storage_bytes_written
            drop.append(d_drop)
            own.append(d_own)
            cost.append(d_cost)
            written.append(d_w)
        return cls(
            len(p.stages),
            p.choices,
            tuple(drop),
            tuple(own),
            tuple(cost),
            tuple(written),
            fwd_peak,
            tuple(bwd_peak),
            base.objective(obj),
        )


def _end_of_forward(sim) -> int:
    """Live bytes after the last forward event (what is held into backward)."""
    last = 0
    for pt in sim.timeline:
        if pt.phase.value != "forward":
            break
        last = pt.live_bytes
    return last
