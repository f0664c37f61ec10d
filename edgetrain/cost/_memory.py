"""Tensor-lifetime simulation of one training step: the predicted peak and its timeline.

NOTE [ What counts toward peak memory ]
    Peak memory is the largest number of bytes live in the tensor allocator at any moment of one
    training step, exactly the quantity `edgetrain.measure.measure_training_step` reads from the
    allocator's events:
      - live throughout: parameters, buffers, optimizer state, the input batch (x and target),
        and the loss the caller holds;
      - forward: each node allocates its output storage (views allocate nothing) and the
        tensors it keeps only for its own backward (`Node.aux_outputs`); a storage dies after
        its last forward use unless autograd saved it;
      - backward (eager autograd runs nodes in reverse creation order): a node allocates the
        gradients of its inputs that require grad (views and add pass the incoming gradient
        through without a copy), then releases its incoming gradient and its saved tensors; a
        gradient arriving at a tensor that already has one is added in place; parameter
        gradients stay live until the end of the step;
      - the optimizer step: SGD (with or without momentum) updates in place; Adam's
        single-tensor update allocates two parameter-sized temporaries for `denom`
        (torch/optim/adam.py, `_single_tensor_adam`).
    Transient workspaces of individual kernels are added at their node (see NOTE [ Kernel
    workspaces on PyTorch CPU (torch 2.13) ]).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edgetrain.cost._workspace import KernelLibrary, workspace_bytes
from edgetrain.errors import InvalidArgumentError
from edgetrain.ir import Graph, OpKind, TensorRole


class Optimizer(enum.Enum):
    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"

    @classmethod
    def parse(cls, value: "str | Optimizer") -> "Optimizer":
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise InvalidArgumentError(
                f"unknown optimizer {value!r}; choose one of "
                f"{', '.join(o.value for o in cls)}") from None

    def state_bytes(self, trainable_param_bytes: int, n_trainable_tensors: int) -> int:
        """Persistent optimizer state (steady state, after the first step created it)."""
        if self is Optimizer.SGD:
            return 0
        if self is Optimizer.MOMENTUM:
            return trainable_param_bytes  # one momentum buffer per parameter
        # Adam: exp_avg + exp_avg_sq, plus a float32 0-dim `step` tensor per parameter.
        return 2 * trainable_param_bytes + 4 * n_trainable_tensors


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
        return (self.params_bytes + self.buffers_bytes + self.optimizer_bytes + self.batch_bytes
                + self.grads_bytes + self.saved_activation_bytes + self.other_bytes)


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


def simulate_step(graph: Graph, optimizer: "Optimizer | str" = Optimizer.SGD,
                  kernels: KernelLibrary = KernelLibrary()) -> MemorySimulation:
    """Simulate one training step of `graph` (see NOTE [ What counts toward peak memory ])."""
    opt = Optimizer.parse(optimizer)
    rg = graph.requires_grad
    nodes = graph.nodes
    live = _Live()

    # -- live throughout ---------------------------------------------------------------------
    trainable = [p for p in graph.params if p.trainable]
    for t in graph.tensors:
        if t.role is TensorRole.PARAMETER:
            live.alloc(t.storage, t.storage_bytes, "params")
        elif t.role is TensorRole.BUFFER and t.producer is None:
            live.alloc(t.storage, t.storage_bytes, "buffers")
        elif t.role in (TensorRole.INPUT, TensorRole.TARGET):
            live.alloc(t.storage, t.storage_bytes, "batch")
    live.alloc("optimizer-state", opt.state_bytes(sum(p.nbytes for p in trainable),
                                                  len(trainable)), "optimizer")
    persistent = {t.storage for t in graph.tensors
                  if t.role in (TensorRole.PARAMETER, TensorRole.BUFFER, TensorRole.INPUT,
                                TensorRole.TARGET, TensorRole.LOSS)}

    # -- storage lifetimes -------------------------------------------------------------------
    has_grad_fn = [n.output in rg and n.op is not OpKind.BUFFER_UPDATE for n in nodes]
    last_fwd_use: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for name in (n.output, *n.aux_outputs, *n.inputs):
            last_fwd_use[graph.tensor(name).storage] = i
    first_saver: dict[str, int] = {}  # storage -> smallest forward index of a node saving it
    for i, n in enumerate(nodes):
        if not has_grad_fn[i]:
            continue
        for name in n.saved:
            s = graph.tensor(name).storage
            first_saver.setdefault(s, i)
    saved_component = {s for s in first_saver if s not in persistent}

    # -- forward -----------------------------------------------------------------------------
    frees_after: dict[int, list[str]] = {}
    for s, i in last_fwd_use.items():
        if s not in persistent and s not in first_saver:
            frees_after.setdefault(i, []).append(s)
    for i, n in enumerate(nodes):
        outs = [n.output, *n.aux_outputs]
        if n.op is OpKind.MAX_POOL2D and not has_grad_fn[i]:
            outs = [n.output]  # without grad, max_pool2d computes no indices
        for name in outs:
            t = graph.tensor(name)
            comp = "saved" if t.storage in saved_component else (
                "loss" if t.role is TensorRole.LOSS else "other")
            live.alloc(t.storage, t.storage_bytes, comp)
        ws_fwd, _ = workspace_bytes(graph, n, kernels, input_grad=False)
        live.mark(Phase.FORWARD, n.name, ws_fwd)
        for s in frees_after.get(i, ()):
            live.free(s)

    # -- backward ----------------------------------------------------------------------------
    # Gradient buffers are reference-counted: views and add hand the same buffer on.
    grad_of: dict[str, str] = {}  # tensor name -> gradient buffer key
    refs: dict[str, int] = {}
    counter = 0

    def new_grad(nbytes: int, component: str = "other") -> str:
        nonlocal counter
        counter += 1
        key = f"grad#{counter}"
        live.alloc(key, max(nbytes, 1), component)
        refs[key] = 0
        return key

    def release(key: str) -> None:
        refs[key] -= 1
        if refs[key] <= 0:
            live.free(key)

    def deliver(tensor: str, key: str) -> None:
        """Route a gradient buffer to `tensor`'s slot (autograd's InputBuffer::accumulate)."""
        refs[key] += 1
        old = grad_of.get(tensor)
        if old is None:
            grad_of[tensor] = key
        elif refs[old] == 1:  # sole owner: old.add_(new) in place, then drop new
            release(key)
        else:  # shared buffer: old + new out of place
            nbytes = live.by_key[old][0]
            summed = new_grad(nbytes)
            live.mark(Phase.BACKWARD, f"accumulate:{tensor}")
            refs[summed] += 1
            grad_of[tensor] = summed
            release(old)
            release(key)

    loss_t = graph.tensor(graph.loss)
    live.alloc(loss_t.storage, loss_t.storage_bytes, "loss")
    deliver(graph.loss, new_grad(loss_t.nbytes))  # ones_like(loss)
    param_grad_keys: dict[str, str] = {}
    release_after: dict[int, list[str]] = {}
    for s, i in first_saver.items():
        if s not in persistent:
            release_after.setdefault(i, []).append(s)

    for i in range(len(nodes) - 1, -1, -1):
        n = nodes[i]
        if not has_grad_fn[i]:
            continue
        g_out = grad_of.pop(n.output, None)
        if g_out is None:  # no gradient reached this node's output
            for s in release_after.get(i, ()):
                live.free(s)
            continue
        # 1. the node computes the gradients of its inputs
        outgoing: list[tuple[str, str]] = []
        accumulated_params: list[str] = []
        seen: set[str] = set()
        for name in n.inputs:
            if name in seen or name not in rg:
                continue
            seen.add(name)
            t = graph.tensor(name)
            if t.role is TensorRole.PARAMETER:
                if name in param_grad_keys:  # weight tying: added in place into .grad
                    accumulated_params.append(new_grad(t.nbytes))
                else:  # AccumulateGrad steals the fresh buffer: it becomes .grad
                    param_grad_keys[name] = new_grad(t.nbytes, "grads")
            elif n.op in (OpKind.VIEW, OpKind.ADD):
                outgoing.append((name, g_out))  # pass-through, no copy
            else:
                outgoing.append((name, new_grad(t.nbytes)))
        _, ws_bwd = workspace_bytes(graph, n, kernels, input_grad=n.inputs[0] in rg)
        live.mark(Phase.BACKWARD, n.name, ws_bwd)
        for k in accumulated_params:
            live.free(k)
        # 2. the engine hands the new gradients on, then drops the incoming one and the
        #    node's saved tensors (release_variables)
        for name, key in outgoing:
            refs[key] += 1  # held while in flight
        release(g_out)  # the node's own reference
        for s in release_after.get(i, ()):
            live.free(s)
        # 3. ... and accumulates them into the next nodes' input buffers
        for name, key in outgoing:
            deliver(name, key)
            release(key)

    # -- optimizer step ----------------------------------------------------------------------
    if opt is Optimizer.ADAM and trainable:
        largest = max(p.nbytes for p in trainable)
        live.mark(Phase.OPTIMIZER, "adam.denom", 2 * largest)
    else:
        live.mark(Phase.OPTIMIZER, "step")

    b = live.peak_breakdown
    breakdown = MemoryBreakdown(
        params_bytes=b.get("params", 0), buffers_bytes=b.get("buffers", 0),
        optimizer_bytes=b.get("optimizer", 0), batch_bytes=b.get("batch", 0),
        grads_bytes=b.get("grads", 0), saved_activation_bytes=b.get("saved", 0),
        other_bytes=b.get("other", 0) + b.get("loss", 0))
    return MemorySimulation(live.peak, live.peak_where[0], live.peak_where[1], breakdown,
                            tuple(live.timeline))
