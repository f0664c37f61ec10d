"""Tensor-lifetime simulation of one training step: the predicted peak and its timeline.

NOTE [ What counts toward peak memory ]
    Peak memory is the largest number of bytes live in the tensor allocator at any moment of one
    training step, exactly the quantity `edgetrain.measure.measure_training_step` reads from the
    allocator's events:
      - live throughout: parameters, buffers, optimizer state, the input batch (x and target),
        and the loss the caller holds;
      - forward: each node allocates its output storage (views allocate nothing) and the
        tensors it keeps only for its own backward (`Node.aux_outputs`); a storage dies after
        its last forward use unless autograd saved it, and not before the module calls it
        was passed into return (NOTE [ Module arguments live until the call returns ]);
      - backward (eager autograd runs nodes in reverse creation order): a node allocates the
        gradients of its inputs that require grad (views and add pass the incoming gradient
        through without a copy), then releases its incoming gradient and its saved tensors; a
        gradient arriving at a tensor that already has one is added in place; parameter
        gradients stay live until the end of the step; a multi-output node (an LSTM layer:
        output, h_n, c_n) runs when any result got a gradient and fills the others' with
        zeros while it runs;
      - the optimizer step: SGD (with or without momentum) updates in place; Adam's
        single-tensor update allocates two parameter-sized temporaries for `denom`
        (torch/optim/adam.py, `_single_tensor_adam`).
    Transient workspaces of individual kernels are added at their node (see NOTE [ Kernel
    workspaces on PyTorch CPU (torch 2.13) ]; batch norm's backward holds one input-sized
    transient).
    Under a `Schedule`:
      - recomputation: a checkpointed segment keeps only its inputs through forward; backward
        re-runs its forward node by node (NOTE [ Recomputation ]);
      - paging: a paged storage dies after its last forward use; its node's backward reads a
        fresh copy back (per saving node) and frees it when that node is done. Storages
        that stay in RAM anyway (parameters, buffers, the input batch and targets, of which a
        micro-batch is a view) are never paged;
      - micro-batching: the whole batch is live throughout; from the second micro-batch on,
        every trainable parameter's `.grad` is live and new gradients are added into it.
      - sparse update: a product (linear, matmul) saves an operand only when the other one
        needs a gradient (`saved_for_backward`); a checkpointed stage that saved nothing keeps
        nothing.
    These rules were checked node by node against the allocator's events: predicted and
    measured peaks agree to within a few bytes for every reference model and schedule kind in
    tests/test_runtime.py. Known gap: the graph cannot see Python locals. In a frozen
    (no-grad) part of a forward that holds intermediate results in locals (a U-Net's skip
    tensors, attention scores), they live until the function returns, past their last use;
    preparation runs each plan once to catch them (NOTE [ Plans are checked against the
    allocator ]).

NOTE [ Module arguments live until the call returns ]
    `Module.__call__` holds its arguments (the `args` tuple of `_call_impl`) until `forward`
    returns, so a tensor passed into a module call lives at least until the last node of that
    call, even where the graph's last use of it is the call's first node. Where autograd saves
    the tensor this changes nothing; in a frozen prefix (sparse update) it does: kws-dscnn's
    stem output stays live through the whole `blocks` Sequential (batch 8, `last:1`: 246,568
    bytes measured, 214,568 predicted without this rule, exact with it). The rule: for each
    node input produced outside a module call that contains the node, that storage lives to
    the call's last node. A module called twice is one call here (an over-estimate).

NOTE [ A lowered composite's held locals ]
    A composite operator reaches the IR as the primitives it is lowered to (NOTE [ Capture op
    set ]), but eager PyTorch runs it as one C++ function whose named locals live until it
    returns. The case that matters is an RNN layer (eager GRU on CPU): it computes the input
    projection of every time step at once, unbinds it into per-step views and holds it until
    the layer returns, past the last step's use (gru-seq, batch 8: 11 % under-predicted
    without this), and the contiguous copy it makes of its input (text-gru, batch 8: the
    embedding's 40,960 bytes). So a storage a lowered composite splits into several views, and
    a copy it makes of one of its inputs, live until the composite's last primitive. Other
    intermediates follow the graph: per-step temporaries of
    the loop die early in eager too, and the ones eager keeps are saved for backward anyway.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass

from edgetrain.cost._chunk import ENTER, LEAVE, chunk_graph, module_calls, segment_ranges
from edgetrain.cost._lean import (
    LeanSaves,
    activation_sites,
    batch_norm_sites,
    is_masked_activation,
    lean_saves,
)
from edgetrain.cost._workspace import KernelLibrary, workspace_bytes
from edgetrain.errors import InvalidArgumentError
from edgetrain.ir import Graph, Node, OpKind, Param, TensorRole


class Optimizer(enum.Enum):
    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"
    ADAMW = "adamw"  # Adam with decoupled weight decay (Loshchilov & Hutter, 2019)

    @classmethod
    def parse(cls, value: "str | Optimizer") -> "Optimizer":
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise InvalidArgumentError(
                f"unknown optimizer {value!r}; choose one of {', '.join(o.value for o in cls)}"
            ) from None

    def state_bytes(self, trainable_param_bytes: int, n_trainable_tensors: int) -> int:
        """Persistent optimizer state (steady state, after the first step created it)."""
        if self is Optimizer.SGD:
            return 0
        if self is Optimizer.MOMENTUM:
            return trainable_param_bytes  # one momentum buffer per parameter
        # Adam / AdamW: exp_avg + exp_avg_sq, plus a float32 0-dim `step` tensor per parameter.
        return 2 * trainable_param_bytes + 4 * n_trainable_tensors

    def step_transient_bytes(self, largest_param_bytes: int, weight_decay: float) -> int:
        """Temporaries of `optimizer.step()`'s single-tensor update of the largest parameter
        (torch/optim/sgd.py, adam.py, torch 2.13, read from the allocator): L2 weight decay
        adds `grad + wd * param` (one parameter-sized tensor); Adam's `denom` and step take
        two more; AdamW decays the weight in place."""
        l2 = largest_param_bytes if weight_decay > 0 and self is not Optimizer.ADAMW else 0
        if self in (Optimizer.ADAM, Optimizer.ADAMW):
            return 2 * largest_param_bytes + l2
        return l2


class Phase(enum.Enum):
    FORWARD = "forward"
    BACKWARD = "backward"
    OPTIMIZER = "optimizer"


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    """Live bytes right after (or, for transients, during) one event of the step."""

    phase: Phase
    node: str
    live_bytes: int


@dataclass(frozen=True, slots=True)
class MemoryBreakdown:
    """Bytes by component at one moment (they add up to `total_bytes`)."""

    params_bytes: int
    buffers_bytes: int
    optimizer_bytes: int
    batch_bytes: int
    grads_bytes: int
    saved_activation_bytes: int
    other_bytes: int  # gradients in flight, unsaved forward values, workspaces

    @property
    def total_bytes(self) -> int:
        return (
            self.params_bytes
            + self.buffers_bytes
            + self.optimizer_bytes
            + self.batch_bytes
            + self.grads_bytes
            + self.saved_activation_bytes
            + self.other_bytes
        )


@dataclass(frozen=True, slots=True)
class MemorySimulation:
    peak_bytes: int
    peak_phase: Phase
    peak_node: str
    at_peak: MemoryBreakdown
    timeline: tuple[TimelinePoint, ...]


class _Live:
    """Book-keeping of live storages by component."""

    def __init__(self) -> None:
        self.by_key: dict[str, tuple[int, str]] = {}
        self.total = 0
        self.peak = -1
        self.peak_where: tuple[Phase, str] = (Phase.FORWARD, "")
        self.peak_breakdown: dict[str, int] = {}
        self.timeline: list[TimelinePoint] = []

    def alloc(self, key: str, nbytes: int, component: str) -> None:
        if key in self.by_key or nbytes <= 0:
            return
        self.by_key[key] = (nbytes, component)
        self.total += nbytes

    def free(self, key: str) -> None:
        item = self.by_key.pop(key, None)
        if item is not None:
            self.total -= item[0]

    def mark(self, phase: Phase, node: str, transient: int = 0) -> None:
        live = self.total + transient
        self.timeline.append(TimelinePoint(phase, node, live))
        if live > self.peak:
            self.peak = live
            self.peak_where = (phase, node)
            comp: dict[str, int] = {}
            for nbytes, c in self.by_key.values():
                comp[c] = comp.get(c, 0) + nbytes
            comp["other"] = comp.get("other", 0) + transient
            self.peak_breakdown = comp


@dataclass(frozen=True, slots=True)
class Schedule:
    """How a step is executed, as far as memory is concerned (plain data; the planner's Plan
    lowers to this).

    `trainable`: names of the parameters that train (None: the graph's own flags).
    `recompute_segments`: [start, stop) node-index ranges run under non-reentrant
    checkpointing: their internal saved tensors are dropped in forward and recomputed at the
    first unpack in backward, by re-running the segment up to its last saving node; the
    segment's inputs stay live until the segment's backward is done.
    `paged_nodes`: indices of nodes whose saved activations go to storage in forward and are
    read back for their backward.
    `in_place_update`: each parameter is updated as soon as its gradient is accumulated
    (post-accumulate-grad hook), so its gradient buffer dies at once (TTE's reordering).
    `accumulation_steps`: micro-batches per optimizer step (the graph is captured at the
    micro-batch size; the whole batch stays in memory).
    """

    trainable: frozenset[str] | None = None
    recompute_segments: tuple[tuple[int, int], ...] = ()
    paged_nodes: frozenset[int] = frozenset()
    in_place_update: bool = False
    accumulation_steps: int = 1
    weight_decay: float = 0.0  # changes the optimizer step's temporaries, not its state
    lean_backward: bool = False  # NOTE [ Lean saved tensors ] (runtime: NOTE [ Lean backward ])
    plain_activations: frozenset[str] = frozenset()  # sites that keep plain PyTorch's save
    in_place_activations: frozenset[str] = frozenset()  # NOTE [ Lean in-place activations ]
    chunked_segments: tuple[tuple[str, int], ...] = ()  # NOTE [ Sample-chunked frozen segments ]


@dataclass(frozen=True, slots=True)
class StepTraffic:
    """Extra work a schedule causes: recomputed FLOPs and storage traffic per micro-batch."""

    recompute_flops: int
    recompute_vector_ops: int
    storage_bytes_written: int
    storage_bytes_read: int
    storage_transfers: int


def simulate_step(
    graph: Graph,
    optimizer: "Optimizer | str" = Optimizer.SGD,
    kernels: KernelLibrary | None = None,
    schedule: Schedule = Schedule(),
) -> MemorySimulation:
    """Simulate one training step of `graph` (see NOTE [ What counts toward peak memory ])."""
    kernels = kernels if kernels is not None else KernelLibrary()
    if schedule.chunked_segments:
        graph, schedule = _chunked(graph, schedule)
    if schedule.lean_backward and schedule.in_place_activations:
        graph = _alias_in_place(graph, schedule.in_place_activations)
    first = _simulate(graph, Optimizer.parse(optimizer), kernels, schedule, grads_at_start=False)
    if schedule.accumulation_steps <= 1 or schedule.in_place_update:
        return first
    later = _simulate(graph, Optimizer.parse(optimizer), kernels, schedule, grads_at_start=True)
    return later if later.peak_bytes > first.peak_bytes else first


def _chunked(graph: Graph, schedule: Schedule) -> tuple[Graph, Schedule]:
    """The graph with its chunked segments unrolled (NOTE [ Sample-chunked frozen segments ])
    and the schedule's node indices moved with it; recomputation and paging never cover a
    chunked segment (the planner keeps such stages)."""
    if not schedule.lean_backward:
        raise InvalidArgumentError("chunked segments run under lean backward only")
    inside = {i for r in segment_ranges(graph, schedule.chunked_segments) for i in r}
    covered = {i for a, b in schedule.recompute_segments for i in range(a, b)}
    covered |= set(schedule.paged_nodes)
    if inside & covered:
        raise InvalidArgumentError(
            f"nodes {sorted(inside & covered)[:5]} are both in a chunked segment and "
            "recomputed or paged; a chunked segment's stage must be kept"
        )
    new, index = chunk_graph(graph, schedule.chunked_segments)
    moved = dataclasses.replace(
        schedule,
        recompute_segments=tuple(
            (index[a], index[b - 1] + 1) for a, b in schedule.recompute_segments
        ),
        paged_nodes=frozenset(index[i] for i in schedule.paged_nodes),
    )
    return new, moved


def schedule_traffic(graph: Graph, schedule: Schedule) -> StepTraffic:
    """Recomputation and paging traffic of one micro-batch under `schedule`."""
    plan = _SavedPlan(graph, schedule)
    rflops = rvec = 0
    for k, (a, _) in enumerate(schedule.recompute_segments):
        for n in graph.nodes[a : plan.rerun_stop.get(k, a - 1) + 1]:
            rflops += n.flops_forward
            rvec += n.vector_ops_forward
    written = sum(plan.storage_bytes[s] for s in plan.paged_storages)
    read = sum(plan.storage_bytes[s] for reads in plan.page_reads.values() for s in reads)
    transfers = len(plan.paged_storages) + sum(len(r) for r in plan.page_reads.values())
    return StepTraffic(rflops, rvec, written, read, transfers)


def _plain_savers(graph: Graph, rg: frozenset[str]) -> tuple[list[bool], set[str], dict]:
    """Per node whether it runs backward; the storages no step frees (parameters, buffers,
    the batch); and for each storage the non-activation nodes that save it under lean."""
    nodes = graph.nodes
    active = [n.output in rg and n.op is not OpKind.BUFFER_UPDATE for n in nodes]
    persistent = {
        t.storage
        for t in graph.tensors
        if t.role in (TensorRole.PARAMETER, TensorRole.BUFFER, TensorRole.INPUT, TensorRole.TARGET)
    }
    savers: dict[str, set[int]] = {}
    for i, n in enumerate(nodes):
        if not active[i] or is_masked_activation(n):
            continue
        rule = lean_saves(graph, n, rg)
        for name in rule.saved if rule is not None else saved_for_backward(n, rg):
            savers.setdefault(graph.tensor(name).storage, set()).add(i)
    return active, persistent, savers


def _saved_anyway(graph: Graph, i: int, rg, persistent, savers) -> bool:
    """Whether every tensor node i saves in plain PyTorch stays alive without its save."""
    for name in saved_for_backward(graph.nodes[i], rg):
        s = graph.tensor(name).storage
        if not (s in persistent or savers.get(s, set()) - {i}):
            return False
    return True


def plain_activation_sites(graph: Graph, trainable: frozenset[str]) -> frozenset[str]:
    """Relu-family sites whose plain save costs nothing under lean backward: the tensor they
    would save is a parameter, a buffer or the batch, or another node saves it anyway (NOTE
    [ Lean saved tensors ])."""
    rg = graph.requires_grad_for(trainable)
    active, persistent, savers = _plain_savers(graph, rg)
    return frozenset(
        site
        for i, site in activation_sites(graph).items()
        if active[i] and _saved_anyway(graph, i, rg, persistent, savers)
    )


_CONVS = (OpKind.CONV1D, OpKind.CONV2D)


def _overwrite_sites(graph: Graph) -> dict[int, str]:
    """Node index -> site of every node that may overwrite its input: relu-family activations
    and batch norms (NOTE [ Lean in-place activations ])."""
    return {**activation_sites(graph), **batch_norm_sites(graph)}


def in_place_activation_sites(
    graph: Graph, trainable: frozenset[str], plain_sites: frozenset[str]
) -> frozenset[str]:
    """Lean relu-family and batch-norm sites that may overwrite their input (NOTE [ Lean
    in-place activations ]): every call of the site reads a tensor that a lean frozen
    convolution (or, for an activation, batch norm) made, whose backward never reads it, and
    that no other node reads and no view shares."""
    rg = graph.requires_grad_for(trainable)
    per_storage: dict[str, int] = {}
    for t in graph.tensors:
        per_storage[t.storage] = per_storage.get(t.storage, 0) + 1
    ok: dict[str, bool] = {}
    for i, site in _overwrite_sites(graph).items():
        n = graph.nodes[i]
        t = graph.tensor(n.inputs[0])
        j = graph.node_index.get(t.producer or "")
        producers = _CONVS if n.op is OpKind.BATCH_NORM else (*_CONVS, OpKind.BATCH_NORM)
        good = (
            site not in plain_sites
            and n.output in rg
            and not n.attr("inplace")
            and lean_saves(graph, n, rg) is not None
            and j is not None
            and graph.nodes[j].op in producers
            and lean_saves(graph, graph.nodes[j], rg) is not None
            and graph.consumers.get(t.name, ()) == (i,)
            and per_storage[t.storage] == 1
            and t.role is TensorRole.ACTIVATION
        )
        ok[site] = ok.get(site, True) and good
    return frozenset(site for site, good in ok.items() if good)


def in_place_nodes(graph: Graph, sites: frozenset[str]) -> frozenset[int]:
    """The nodes of `sites` (`in_place_activation_sites`)."""
    return frozenset(i for i, site in _overwrite_sites(graph).items() if site in sites)


def _alias_in_place(graph: Graph, sites: frozenset[str]) -> Graph:
    """`graph` with each in-place node's result (and its views) in its input's storage."""
    alias: dict[str, tuple[str, int]] = {}
    for i in sorted(in_place_nodes(graph, sites)):
        n = graph.nodes[i]
        src = graph.tensor(n.inputs[0])
        root = alias.get(src.storage, (src.storage, src.storage_bytes))
        alias[graph.tensor(n.output).storage] = root
    tensors = tuple(
        dataclasses.replace(t, storage=alias[t.storage][0], storage_bytes=alias[t.storage][1])
        if t.storage in alias
        else t
        for t in graph.tensors
    )
    return dataclasses.replace(graph, tensors=tensors)


def lean_saves_anything(graph: Graph, trainable: frozenset[str]) -> bool:
    """Whether some node on the gradient path saves less under lean backward (NOTE [ Lean
    saved tensors ]): a frozen-weight convolution, a frozen eval-mode batch norm, or a
    relu-family site or an average pool whose tensor no other node saves. Where none does (a
    `last:K` whose frozen prefix is off the gradient path) plain PyTorch saves the same and
    runs without the per-op dispatch of the lean mode."""
    rg = graph.requires_grad_for(trainable)
    active, persistent, savers = _plain_savers(graph, rg)
    for i, n in enumerate(graph.nodes):
        if not active[i] or lean_saves(graph, n, rg) is None:
            continue
        pool = n.op is OpKind.AVG_POOL2D or n.op is OpKind.VIEW
        if (is_masked_activation(n) or pool) and _saved_anyway(graph, i, rg, persistent, savers):
            continue
        return True
    return False


def saved_for_backward(node, requires_grad: frozenset[str]) -> tuple[str, ...]:
    """What autograd really saves for `node` when only `requires_grad` need gradients.

    `Node.saved` is what eager autograd saves in full training. For products, the generated
    autograd code saves each operand only when the *other* one needs a gradient
    (derivatives.yaml: `mm`/`addmm`/`bmm`, `mat1` is saved iff `should_compute_output(mat2)`),
    so under sparse update a frozen linear layer keeps no activation. Other operators save
    what they save in full training, and so does a node whose saved tensors were read from
    eager autograd at capture (`attrs["saved_by"] == "eager"`: a lowered composite, whose
    saved list is not laid out operand by operand).
    """
    if node.attr("saved_by") == "eager":
        return node.saved
    if node.op is OpKind.LINEAR or node.op is OpKind.MATMUL:
        a, b = node.saved[0], node.saved[1]
        keep_a = node.inputs[1] in requires_grad
        keep_b = node.inputs[0] in requires_grad
        return tuple(t for t, k in ((a, keep_a), (b, keep_b)) if k) + tuple(node.saved[2:])
    return node.saved


class _SavedPlan:
    """Where each saved storage lives between forward and backward under a schedule."""

    def __init__(self, graph: Graph, schedule: Schedule) -> None:
        nodes = graph.nodes
        trainable = schedule.trainable
        self.rg = graph.requires_grad if trainable is None else graph.requires_grad_for(trainable)
        self.persistent = {
            t.storage
            for t in graph.tensors
            if t.role
            in (
                TensorRole.PARAMETER,
                TensorRole.BUFFER,
                TensorRole.INPUT,
                TensorRole.TARGET,
                TensorRole.LOSS,
            )
        }
        self.storage_bytes = {t.storage: t.storage_bytes for t in graph.tensors}
        self.has_grad_fn = [n.output in self.rg and n.op is not OpKind.BUFFER_UPDATE for n in nodes]
        segment_of: dict[int, int] = {}
        for k, (a, b) in enumerate(schedule.recompute_segments):
            for i in range(a, b):
                segment_of[i] = k
        produced_in: dict[str, int] = {}
        for i, n in enumerate(nodes):
            for name in (n.output, *n.aux_outputs):
                produced_in.setdefault(graph.tensor(name).storage, i)
        # lean backward: per node, its lean rule and the packed mask it makes (a storage of
        # its own, keyed `mask:i`)
        self.lean: dict[int, LeanSaves] = {}
        self.masks: dict[int, str] = {}
        self.overwrites: frozenset[int] = frozenset()
        if schedule.lean_backward:
            self.overwrites = in_place_nodes(graph, schedule.in_place_activations)
            sites = activation_sites(graph)
            for i, n in enumerate(nodes):
                rule = lean_saves(graph, n, self.rg) if self.has_grad_fn[i] else None
                if rule is None or sites.get(i) in schedule.plain_activations:
                    continue
                self.lean[i] = rule
                if rule.mask_bytes:
                    key = f"mask:{i}"
                    self.masks[i] = key
                    self.storage_bytes[key] = rule.mask_bytes
                    produced_in[key] = i
        self.kept_first: dict[str, int] = {}  # storage -> smallest index of a keeping saver
        self.recomputed: dict[int, dict[str, int]] = {}  # segment -> storage -> first saver
        self.paged_storages: dict[str, int] = {}  # storage -> node that writes it
        self.page_reads: dict[int, list[str]] = {}
        for i in range(len(nodes)):
            if not self.has_grad_fn[i]:
                continue
            for s in self.saved_storages(graph, i):
                if s in self.persistent:
                    continue
                seg = segment_of.get(i)
                if seg is not None and segment_of.get(produced_in.get(s, -1)) == seg:
                    self.recomputed.setdefault(seg, {}).setdefault(s, i)
                elif i in schedule.paged_nodes:
                    self.paged_storages.setdefault(s, i)
                    self.page_reads.setdefault(i, [])
                    if s not in self.page_reads[i]:
                        self.page_reads[i].append(s)
                else:
                    self.kept_first.setdefault(s, i)
        # Non-reentrant checkpoint re-runs a segment's forward at the first unpack of anything
        # it saved (parameters and segment inputs included) and stops right after the last
        # save (early stop): the re-run covers [start, rerun_stop[segment]].
        self.rerun_stop: dict[int, int] = {}
        for k, (a, b) in enumerate(schedule.recompute_segments):
            savers = [
                i for i in range(a, b) if self.has_grad_fn[i] and self.saved_storages(graph, i)
            ]
            if savers:
                self.rerun_stop[k] = savers[-1]
        # checkpoint keeps each segment's inputs until its backward has run; a segment that
        # saved nothing (frozen, under sparse update) leaves no frame behind to hold them
        self.segment_inputs: dict[int, list[str]] = {}
        for k, (a, b) in enumerate(schedule.recompute_segments):
            ins = []
            if k not in self.rerun_stop:
                self.segment_inputs[k] = ins
                continue
            for n in nodes[a:b]:
                for name in n.inputs:
                    s = graph.tensor(name).storage
                    if s not in self.persistent and produced_in.get(s, -1) < a and s not in ins:
                        ins.append(s)
            self.segment_inputs[k] = ins
        self.segment_of = segment_of

    def saved_storages(self, graph: Graph, i: int) -> list[str]:
        """The storages node i saves for its backward (its packed mask included)."""
        rule = self.lean.get(i)
        names = rule.saved if rule is not None else saved_for_backward(graph.nodes[i], self.rg)
        out = list(dict.fromkeys(graph.tensor(name).storage for name in names))
        if i in self.masks:
            out.append(self.masks[i])
        return out

    def workspace(self, graph: Graph, i: int, kernels: KernelLibrary) -> tuple[int, int]:
        """(forward, backward) transients of node i under this schedule."""
        n, rule = graph.nodes[i], self.lean.get(i)
        ig = bool(n.inputs) and n.inputs[0] in self.rg
        if rule is None:
            fwd, _ = workspace_bytes(graph, n, kernels, input_grad=False)
            _, bwd = workspace_bytes(graph, n, kernels, input_grad=ig)
            return fwd, bwd
        if rule.weight_grad:
            fwd, _ = workspace_bytes(graph, n, kernels, input_grad=False)
            _, bwd = workspace_bytes(graph, n, kernels, input_grad=ig)
        else:  # a frozen convolution: both passes as the lean mode runs them (in chunks)
            fwd, bwd = workspace_bytes(graph, n, kernels, input_grad=ig, weight_grad=False)
        if not kernels.has_workspaces:
            return fwd, bwd
        fwd += rule.forward_workspace_bytes
        if i in self.overwrites:
            fwd += rule.in_place_forward_workspace_bytes
        return fwd, bwd + rule.backward_workspace_bytes


def _rerun_forward(
    graph: Graph, plan: _SavedPlan, kernels: KernelLibrary, live: _Live, seg: int, start: int
) -> None:
    """Checkpoint's re-run of segment `seg` inside backward (NOTE [ Recomputation ]).

    NOTE [ Recomputation ]
        Non-reentrant `torch.utils.checkpoint` (torch/utils/checkpoint.py, `_checkpoint_hook`)
        re-runs the segment's forward, with grad enabled, at the first unpack of any tensor the
        segment saved, and stops right after the last save (`_StopRecomputationError`, early
        stop): nodes after the last saving node do not run again. The re-run is an ordinary
        forward: each node allocates its outputs and its kernel's forward workspace, and a
        storage nobody in the segment saved dies after its last use in the re-run. The saved
        ones are held in the frame's `recomputed` WeakKeyDictionary, keyed by a handle that
        unpack drops, so each dies after the backward of its last unpacking node (its first
        saver in forward order), exactly like a kept tensor.
    """
    stop = plan.rerun_stop[seg]
    keep = plan.recomputed.get(seg, {})
    nodes = graph.nodes
    last_use: dict[str, int] = {}
    for j in range(start, stop + 1):
        m = nodes[j]
        for name in (m.output, *m.aux_outputs, *m.inputs):
            last_use[graph.tensor(name).storage] = j
        if j in plan.masks:
            last_use[plan.masks[j]] = j
    temporaries: list[str] = []
    for j in range(start, stop + 1):
        m = nodes[j]
        outs = [m.output, *m.aux_outputs]
        if m.op is OpKind.MAX_POOL2D and not plan.has_grad_fn[j]:
            outs = [m.output]
        made = [graph.tensor(name).storage for name in outs]
        if j in plan.masks and plan.has_grad_fn[j]:
            made.append(plan.masks[j])
        for st in made:
            if st in plan.persistent:
                continue
            if st in keep:
                live.alloc(st, plan.storage_bytes[st], "saved")
            elif f"rerun:{st}" not in live.by_key:
                live.alloc(f"rerun:{st}", plan.storage_bytes[st], "other")
                temporaries.append(st)
        ws_fwd, _ = plan.workspace(graph, j, kernels)
        live.mark(Phase.BACKWARD, f"recompute:{m.name}", ws_fwd)
        for st in temporaries:
            if last_use.get(st, stop) <= j:
                live.free(f"rerun:{st}")
    for st in temporaries:  # the output of the last node, when unsaved, dies with the re-run
        live.free(f"rerun:{st}")


@dataclass(frozen=True)
class _Step:
    """What the phases of `_simulate` share: the step being simulated and its live set."""

    graph: Graph
    kernels: KernelLibrary
    schedule: Schedule
    plan: _SavedPlan
    live: _Live
    grads_at_start: bool
    chunk_state: dict = dataclasses.field(default_factory=dict)  # chunked segments in backward


def _simulate(
    graph: Graph, opt: Optimizer, kernels: KernelLibrary, schedule: Schedule, grads_at_start: bool
) -> MemorySimulation:
    step = _Step(graph, kernels, schedule, _SavedPlan(graph, schedule), _Live(), grads_at_start)
    trainable = _alloc_live_throughout(step, opt)
    _simulate_forward(step)
    _simulate_backward(step)
    live = step.live

    # -- optimizer step ----------------------------------------------------------------------
    if schedule.in_place_update:
        live.mark(Phase.OPTIMIZER, "applied in backward")
    elif trainable:
        largest = max(p.nbytes for p in trainable)
        live.mark(Phase.OPTIMIZER, "step", opt.step_transient_bytes(largest, schedule.weight_decay))
    else:
        live.mark(Phase.OPTIMIZER, "step")

    b = live.peak_breakdown
    breakdown = MemoryBreakdown(
        params_bytes=b.get("params", 0),
        buffers_bytes=b.get("buffers", 0),
        optimizer_bytes=b.get("optimizer", 0),
        batch_bytes=b.get("batch", 0),
        grads_bytes=b.get("grads", 0),
        saved_activation_bytes=b.get("saved", 0),
        other_bytes=b.get("other", 0) + b.get("loss", 0),
    )
    return MemorySimulation(
        live.peak, live.peak_where[0], live.peak_where[1], breakdown, tuple(live.timeline)
    )


def _alloc_live_throughout(step: _Step, opt: Optimizer) -> list[Param]:
    """Allocate what is live throughout the step; the trainable parameters."""
    # -- live throughout ---------------------------------------------------------------------
    graph, schedule, live = step.graph, step.schedule, step.live
    trainable_names = (
        {p.name for p in graph.params if p.trainable}
        if schedule.trainable is None
        else set(schedule.trainable)
    )
    trainable = [p for p in graph.params if p.name in trainable_names]
    for t in graph.tensors:
        if t.role is TensorRole.PARAMETER:
            live.alloc(t.storage, t.storage_bytes, "params")
        elif t.role is TensorRole.BUFFER and t.producer is None:
            live.alloc(t.storage, t.storage_bytes, "buffers")
        elif t.role in (TensorRole.INPUT, TensorRole.TARGET):
            live.alloc(t.storage, t.storage_bytes * max(1, schedule.accumulation_steps), "batch")
    live.alloc(
        "optimizer-state",
        opt.state_bytes(sum(p.nbytes for p in trainable), len(trainable)),
        "optimizer",
    )
    if step.grads_at_start:  # later micro-batches: .grad holds the sum so far
        for p in trainable:
            live.alloc(f"grad:{p.name}", p.nbytes, "grads")
    return trainable


def _call_keys(n: Node) -> list[tuple[str, str]]:
    """(module path, call) of every module call node `n` runs inside; inside a chunked segment
    each chunk calls the segment's submodules anew (NOTE [ Sample-chunked frozen segments ])."""
    chunk = n.attr("chunk")
    calls = module_calls(n.module)
    if chunk is None:
        return [(c, c) for c in calls]
    seg, k = chunk
    return [(c, f"{c}@{k}" if c.startswith(seg + ".") else c) for c in calls]


def _held_by_calls(graph: Graph, persistent) -> dict[str, int]:
    """Storage -> the last node of the latest module call it was passed into (NOTE [ Module
    arguments live until the call returns ])."""
    nodes = graph.nodes
    call_end: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for _, call in _call_keys(n):
            call_end[call] = i
    producer: dict[str, str] = {}
    for n in nodes:
        for name in (n.output, *n.aux_outputs):
            producer.setdefault(graph.tensor(name).storage, n.module)
    held: dict[str, int] = {}
    _hold_unbound_locals(graph, held)
    for n in nodes:
        for name in n.inputs:
            s = graph.tensor(name).storage
            if s in persistent:
                continue
            made_in = producer.get(s)
            for path, call in _call_keys(n):
                if made_in is None or not (made_in == path or made_in.startswith(path + ".")):
                    held[s] = max(held.get(s, -1), call_end[call])
    return held


def _hold_unbound_locals(graph: Graph, held: dict[str, int]) -> None:
    """NOTE [ A lowered composite's held locals ]: a storage a lowered composite splits into
    several views (`unbind` over time steps) lives until the composite's last node."""
    end: dict[str, int] = {}
    made_in: dict[str, str] = {}  # storage -> the composite that made it
    split: dict[tuple[str, str], int] = {}
    copies: list[tuple[str, str]] = []
    for i, n in enumerate(graph.nodes):
        c = n.attr("composite")
        if c is None:
            continue
        end[c] = i
        source = graph.tensor(n.inputs[0]).storage if n.inputs else None
        if n.op is OpKind.VIEW and n.aten == "aten.getitem":
            split[c, source] = split.get((c, source), 0) + 1
        elif n.op is OpKind.COPY and source is not None and made_in.get(source) != c:
            copies.append((c, graph.tensor(n.output).storage))  # a copy of an input
        if n.op is not OpKind.VIEW:  # a view makes no storage
            made_in.setdefault(graph.tensor(n.output).storage, c)
    for c, s in [k for k, views in split.items() if views > 1] + copies:
        held[s] = max(held.get(s, -1), end[c])


def _simulate_forward(step: _Step) -> None:
    graph, plan, live = step.graph, step.plan, step.live
    nodes = graph.nodes
    # -- storage lifetimes -------------------------------------------------------------------
    last_fwd_use: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for name in (n.output, *n.aux_outputs, *n.inputs):
            last_fwd_use[graph.tensor(name).storage] = i
    for i, key in plan.masks.items():
        last_fwd_use[key] = i
    for s, i in _held_by_calls(graph, plan.persistent).items():
        last_fwd_use[s] = max(last_fwd_use[s], i)
    held = set(plan.kept_first)
    for ins in plan.segment_inputs.values():
        held.update(ins)

    # -- forward -----------------------------------------------------------------------------
    frees_after: dict[int, list[str]] = {}
    for s, i in last_fwd_use.items():
        if s not in plan.persistent and s not in held:
            frees_after.setdefault(i, []).append(s)
    for i, n in enumerate(nodes):
        outs = [n.output, *n.aux_outputs]
        if n.op is OpKind.MAX_POOL2D and not plan.has_grad_fn[i]:
            outs = [n.output]  # without grad, max_pool2d computes no indices
        for name in outs:
            t = graph.tensor(name)
            comp = (
                "saved"
                if t.storage in plan.kept_first
                else ("loss" if t.role is TensorRole.LOSS else "other")
            )
            live.alloc(t.storage, t.storage_bytes, comp)
        if i in plan.masks:  # a lean node's packed mask
            key = plan.masks[i]
            live.alloc(key, plan.storage_bytes[key], "saved" if key in held else "other")
        ws_fwd, _ = plan.workspace(graph, i, step.kernels)
        live.mark(Phase.FORWARD, n.name, ws_fwd)
        for s in frees_after.get(i, ()):
            live.free(s)


class _GradBuffers:
    """Gradient buffers in backward. They are reference-counted: views and add hand the same
    buffer on."""

    def __init__(self, live: _Live) -> None:
        self.live = live
        self.grad_of: dict[str, str] = {}  # tensor name -> gradient buffer key
        self.refs: dict[str, int] = {}
        self.viewed: set[str] = set()  # buffers a view handed on: their base stays alive
        self.counter = 0

    def owned(self, key: str) -> bool:
        """Whether only the running node holds buffer `key` (NOTE [ Lean in-place
        gradients ]): its one reference is the node's input slot."""
        return self.refs[key] == 1 and key not in self.viewed

    def new(self, nbytes: int, component: str = "other") -> str:
        self.counter += 1
        key = f"grad#{self.counter}"
        self.live.alloc(key, max(nbytes, 1), component)
        self.refs[key] = 0
        return key

    def release(self, key: str) -> None:
        self.refs[key] -= 1
        if self.refs[key] <= 0:
            self.live.free(key)

    def deliver(self, tensor: str, key: str) -> None:
        """Route a gradient buffer to `tensor`'s slot (autograd's InputBuffer::accumulate)."""
        refs = self.refs
        refs[key] += 1
        old = self.grad_of.get(tensor)
        if old is None:
            self.grad_of[tensor] = key
        elif refs[old] == 1:  # sole owner: old.add_(new) in place, then drop new
            self.release(key)
        else:  # shared buffer: old + new out of place
            nbytes = self.live.by_key[old][0]
            summed = self.new(nbytes)
            self.live.mark(Phase.BACKWARD, f"accumulate:{tensor}")
            refs[summed] += 1
            self.grad_of[tensor] = summed
            self.release(old)
            self.release(key)


def _simulate_backward(step: _Step) -> None:
    # -- backward ----------------------------------------------------------------------------
    graph, schedule, plan, live = step.graph, step.schedule, step.plan, step.live
    nodes = graph.nodes
    grads = _GradBuffers(live)
    loss_t = graph.tensor(graph.loss)
    live.alloc(loss_t.storage, loss_t.storage_bytes, "loss")
    grads.deliver(graph.loss, grads.new(loss_t.nbytes))  # ones_like(loss)
    param_grad_keys: dict[str, str] = {}
    release_after: dict[int, list[str]] = {}
    for s, i in plan.kept_first.items():
        release_after.setdefault(i, []).append(s)
    for k, (a, _) in enumerate(schedule.recompute_segments):
        release_after.setdefault(a, []).extend(plan.segment_inputs[k])
    recompute_release: dict[int, list[str]] = {}
    for storages in plan.recomputed.values():
        for s, i in storages.items():
            recompute_release.setdefault(i, []).append(s)
    recomputed_done: set[int] = set()

    for i in range(len(nodes) - 1, -1, -1):
        n = nodes[i]
        seg = plan.segment_of.get(i)
        if not plan.has_grad_fn[i]:
            for s in release_after.get(i, ()):
                live.free(s)
            continue
        if n.aten in (ENTER, LEAVE):
            _chunk_boundary(step, grads, i)
            continue
        # the node runs when a gradient reached any of its results (an LSTM layer's h_n alone)
        g_all = [grads.grad_of.pop(o, None) for o in (n.output, *n.attr("results", ()))]
        g_outs = [g for g in g_all if g is not None]
        g_out = g_outs[0] if g_outs else None
        if g_out is None:  # no gradient reached this node's output
            for s in (*release_after.get(i, ()), *recompute_release.get(i, ())):
                live.free(s)
            continue
        if seg is not None and seg not in recomputed_done and i <= plan.rerun_stop.get(seg, -1):
            # first unpack inside the segment: checkpoint re-runs its forward
            recomputed_done.add(seg)
            _rerun_forward(
                graph, plan, step.kernels, live, seg, schedule.recompute_segments[seg][0]
            )
        for s in plan.page_reads.get(i, ()):  # unpack reads the tensor back from storage
            live.alloc(f"page:{i}:{s}", plan.storage_bytes[s], "saved")
        # a multi-output kernel's backward fills the gradients its other results did not get
        # with zeros (oneDNN's LSTM backward: the sequence output's, when only h_n is used)
        results = (n.output, *n.attr("results", ()))
        zeros = [f"zero:{i}:{o}" for o, g in zip(results, g_all) if g is None]
        for key in zeros:
            live.alloc(key, graph.tensor(key.split(":", 2)[2]).nbytes, "other")
        # 1. the node computes the gradients of its inputs
        outgoing = _input_gradients(step, grads, i, g_out, param_grad_keys)
        # 2. the engine hands the new gradients on, then drops the incoming one and the
        #    node's saved tensors (release_variables)
        for _name, key in outgoing:
            grads.refs[key] += 1  # held while in flight
        for g in g_outs:
            grads.release(g)  # the node's own references
        for s in (*release_after.get(i, ()), *recompute_release.get(i, ())):
            live.free(s)
        for s in plan.page_reads.get(i, ()):
            live.free(f"page:{i}:{s}")
        for key in zeros:
            live.free(key)
        # 3. ... and accumulates them into the next nodes' input buffers
        for name, key in outgoing:
            grads.deliver(name, key)
            grads.release(key)


def _chunk_boundary(step: _Step, grads: _GradBuffers, i: int) -> None:
    """The backward of a chunked segment's `leave` and `enter` nodes (NOTE [ Sample-chunked
    frozen segments ]): the last chunk's `leave` allocates the whole input gradient and hands
    each chunk a view of the incoming gradient, held until the first chunk is done; each
    `enter` copies its chunk's input gradient into its slot; the first chunk's hands the
    whole input gradient on."""
    graph, live = step.graph, step.live
    n = graph.nodes[i]
    seg, k = n.attr("chunk")
    state = step.chunk_state
    if n.aten == LEAVE:
        g = grads.grad_of.pop(n.output, None)
        if g is None:
            return  # an earlier chunk's leave: the last one handed the gradient on
        x = n.inputs[1]
        grad_in = grads.new(graph.tensor(x).nbytes) if x in step.plan.rg else None
        if grad_in is not None:
            grads.refs[grad_in] += 1
        state[seg] = (g, grad_in)
        grads.viewed.add(g)
        for m in graph.nodes[: i + 1]:
            if m.aten == LEAVE and m.attr("chunk")[0] == seg:
                grads.refs[g] += 1
                grads.deliver(m.inputs[0], g)
                grads.release(g)
        live.mark(Phase.BACKWARD, n.name)
        return
    chunk_grad = grads.grad_of.pop(n.output, None)
    if chunk_grad is not None:
        live.mark(Phase.BACKWARD, n.name)  # copied into its slot
        grads.release(chunk_grad)
    if k == 0 and seg in state:
        g, grad_in = state.pop(seg)
        grads.release(g)
        if grad_in is not None:
            grads.deliver(n.inputs[0], grad_in)
            grads.release(grad_in)


# NOTE [ Gradients of a broadcast operand ]
#     When an element-wise product, quotient or difference broadcasts an operand (squeeze-and-
#     excite's `x * s` with s of shape (N, C, 1, 1)), autograd computes that operand's gradient
#     at the output's size and then sums it down (`sum_to_size`): output-sized temporaries live
#     while the node's backward runs. Read from the allocator (torch 2.13 CPU): `a * b` holds one
#     for a broadcast b, `a - b` one for b (the negation), `a / b` four for b and one for a
#     (mbv3-block, batch 1: 5.7 % under-predicted without this).
_BROADCAST_GRAD_TEMPS: dict[str, tuple[int, int]] = {"mul": (1, 1), "div": (1, 4), "sub": (0, 1)}


def _broadcast_grad_temps(graph: Graph, n: Node, rg: frozenset[str]) -> int:
    """Bytes of the output-sized temporaries a broadcast operand's gradient needs."""
    temps = _BROADCAST_GRAD_TEMPS.get(n.aten.split(".")[1] if "." in n.aten else "")
    if temps is None or len(n.inputs) != 2:
        return 0
    out = graph.tensor(n.output)
    total = 0
    for k, name in enumerate(n.inputs):
        t = graph.tensor(name)
        if name in rg and math.prod(t.shape) < math.prod(out.shape):
            total += temps[k] * out.nbytes
    return total


def _input_gradients(
    step: _Step, grads: _GradBuffers, i: int, g_out: str, param_grad_keys: dict[str, str]
) -> list[tuple[str, str]]:
    """Node i's backward: allocate the gradients of its inputs and mark its workspace; the
    (input, gradient buffer) pairs it hands on. Parameter gradients go to `param_grad_keys`."""
    graph, schedule, rg = step.graph, step.schedule, step.plan.rg
    n = graph.nodes[i]
    outgoing: list[tuple[str, str]] = []
    transient_params: list[str] = []
    rule = step.plan.lean.get(i)
    in_place = (
        rule is not None
        and rule.in_place_grad_workspace_bytes is not None
        and bool(n.inputs)
        and n.inputs[0] in rg
        and grads.owned(g_out)
    )
    seen: set[str] = set()
    for name in n.inputs:
        if name in seen or name not in rg:
            continue
        seen.add(name)
        t = graph.tensor(name)
        if t.role is TensorRole.PARAMETER:
            if name in param_grad_keys or step.grads_at_start or schedule.in_place_update:
                # added in place into .grad (or applied to the weight at once)
                transient_params.append(grads.new(t.nbytes))
                param_grad_keys.setdefault(name, "")
            else:  # AccumulateGrad steals the fresh buffer: it becomes .grad
                param_grad_keys[name] = grads.new(t.nbytes, "grads")
        elif n.op in (OpKind.VIEW, OpKind.ADD):
            outgoing.append((name, g_out))  # pass-through, no copy
            if n.op is OpKind.VIEW:
                grads.viewed.add(g_out)
        elif in_place and name == n.inputs[0]:
            outgoing.append((name, g_out))  # written over the incoming gradient
        else:
            outgoing.append((name, grads.new(t.nbytes)))
    _, ws_bwd = step.plan.workspace(graph, i, step.kernels)
    if in_place:
        ws_bwd = rule.in_place_grad_workspace_bytes if step.kernels.has_workspaces else 0
    step.live.mark(Phase.BACKWARD, n.name, ws_bwd + _broadcast_grad_temps(graph, n, rg))
    for k in transient_params:
        step.live.free(k)
    return outgoing
