"""Lowering: (Plan, IR graph, weights) -> C operators, buffers with lifetimes, arena offsets.

Pure functions over plain data (numpy arrays for weights); no torch.

NOTE [ Arena assignment ]
    One training step is a linear schedule: the forward operators (steps 0..F-1), then the
    backward operators of the pruned backward in reverse order (steps F..). Every activation,
    every activation gradient and the input batch is a buffer with a lifetime [first, last]
    step in which it is written or read; a forward activation lives until its last forward
    reader or, if the pruned backward reads it, until that backward step. Buffers are placed
    greedy-by-size (largest first) at the lowest offset, 8-byte aligned, that does not overlap
    any already placed buffer whose lifetime intersects its own (the offline planner of
    TensorFlow Lite Micro's `GreedyMemoryPlanner`). The arena is `max(offset + size)`.
    Aliases cost nothing: flatten, ReLU/ReLU6 computed in place when nothing else reads their
    input, and input gradients written into the output gradient's buffer for element-wise
    operators whose input has no other reader.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from edgetrain.codegen._errors import UnsupportedKernelError, UnsupportedPlanError
from edgetrain.ir import Graph, OpKind
from edgetrain.planner import ActivationDecision, ParamDecision, Plan

ALIGN = 8
SUPPORTED = ("conv2d (incl. depthwise / grouped / pointwise)", "batch_norm (frozen statistics)",
             "relu", "relu6 (hardtanh 0..6)", "add", "adaptive_avg_pool2d to 1x1",
             "flatten / view", "linear", "cross_entropy")


class LKind(enum.Enum):
    CONV = "conv"
    BN = "bn"
    RELU = "relu"
    RELU6 = "relu6"
    ADD = "add"
    GAP = "gap"
    VIEW = "view"
    LINEAR = "linear"
    XENT = "xent"


@dataclass(frozen=True)
class Array:
    """A constant (flash) or trainable (SRAM) array of the generated program."""

    symbol: str
    values: np.ndarray  # float32, flat
    trainable: bool
    param: str | None = None  # the model's parameter name, for trainable arrays


@dataclass
class LOp:
    kind: LKind
    name: str
    inputs: tuple[str, ...]  # activation tensors (graph names)
    output: str
    shape_in: tuple[tuple[int, ...], ...]
    shape_out: tuple[int, ...]
    weight: str | None = None  # array symbols
    bias: str | None = None
    extra: dict = field(default_factory=dict)  # kernel attributes


@dataclass(frozen=True)
class Buffer:
    name: str
    nbytes: int
    first: int
    last: int
    offset: int


@dataclass(frozen=True)
class Lowered:
    ops: tuple[LOp, ...]
    arrays: tuple[Array, ...]
    requires_grad: frozenset[str]  # activation tensors whose gradient is computed
    buffers: tuple[Buffer, ...]  # arena buffers (roots of alias classes)
    alias: dict  # tensor key ('a:<t>' / 'g:<t>') -> root buffer name
    arena_bytes: int
    input_tensor: str
    input_shape: tuple[int, ...]
    num_classes: int
    batch_size: int
    trainable_params: tuple[str, ...]
    folded: tuple[str, ...]  # 'conv+bn' pairs folded into one constant convolution


def _sym(prefix: str, name: str) -> str:
    return prefix + "".join(c if c.isalnum() else "_" for c in name)


def lower(plan: Plan, graph: Graph, weights: "dict[str, np.ndarray]") -> Lowered:
    _check_plan(plan, graph)
    decisions = {p.name: p for p in plan.params}
    missing = [p.name for p in graph.params if p.name not in weights]
    if missing:
        raise UnsupportedPlanError(
            f"{len(missing)} parameters of the graph have no weights: {missing[:4]}; pass the "
            "model's state_dict (parameters and buffers) as `weights`")

    def trains(pname: str) -> bool:
        d = decisions.get(pname)
        return d is not None and d.decision in (ParamDecision.TRAINABLE, ParamDecision.CHANNELS)

    def rows(pname: str, full: int) -> int:
        d = decisions.get(pname)
        if d is not None and d.decision is ParamDecision.CHANNELS:
            return max(1, int(round(d.channel_ratio * full)))
        return full

    arrays: dict[str, Array] = {}

    def array_for(pname: str) -> str:
        v = np.ascontiguousarray(np.asarray(weights[pname], dtype=np.float32)).reshape(-1)
        t = trains(pname)
        sym = _sym("p_" if t else "c_", pname)
        arrays[sym] = Array(sym, v, t, pname if t else None)
        return sym

    def const(sym: str, v: np.ndarray) -> str:
        arrays[sym] = Array(sym, np.ascontiguousarray(v, dtype=np.float32).reshape(-1), False)
        return sym

    shape = {t.name: t.shape for t in graph.tensors}
    pby = graph.param_by_tensor
    ops: list[LOp] = []
    producer: dict[str, LOp] = {}
    folded: list[str] = []
    for n in graph.nodes:
        if n.op is OpKind.BUFFER_UPDATE:
            continue
        acts = tuple(t for t in n.inputs if t not in pby and shape.get(t) is not None
                     and t != graph.target and not _is_buffer(graph, t))
        sin = tuple(shape[t] for t in acts)
        if n.op is OpKind.CONV2D:
            pw = [pby[t].name for t in n.inputs if t in pby]
            w = pw[0]
            b = pw[1] if len(pw) > 1 else None
            kh, kw = n.attr("kernel")
            if tuple(n.attr("dilation", (1, 1))) != (1, 1):
                raise UnsupportedKernelError(
                    f"node {n.name} ({n.module}): dilated convolution {n.attr('dilation')} has no "
                    "C kernel; supported: dilation 1")
            op = LOp(LKind.CONV, n.name, acts, n.output, sin, shape[n.output],
                     extra={"kernel": (kh, kw), "stride": tuple(n.attr("stride")),
                            "padding": tuple(n.attr("padding")), "groups": n.attr("groups", 1),
                            "w_param": w, "b_param": b})
        elif n.op is OpKind.BATCH_NORM:
            if n.attr("training", False) and not plan.freeze_batch_norm:
                raise UnsupportedPlanError(
                    f"node {n.name} ({n.module}) is batch norm with batch statistics; the C "
                    "trainer runs frozen BN (running statistics). Re-plan with "
                    "freeze_batch_norm=True (edgetrain.plan(..., freeze_batch_norm=True))")
            gname, bname = pby[n.inputs[1]].name, pby[n.inputs[2]].name
            mean = np.asarray(weights[_buffer_name(graph, n.inputs[3])], dtype=np.float32)
            var = np.asarray(weights[_buffer_name(graph, n.inputs[4])], dtype=np.float32)
            eps = np.float32(n.attr("eps", 1e-5))
            invstd = (np.float32(1.0) / np.sqrt(var + eps)).astype(np.float32)
            src = producer.get(acts[0])
            foldable = (src is not None and src.kind is LKind.CONV
                        and len(graph.consumers.get(acts[0], ())) == 1
                        and not trains(src.extra["w_param"])
                        and not (src.extra["b_param"] and trains(src.extra["b_param"]))
                        and not trains(gname) and not trains(bname))
            if foldable:
                g = np.asarray(weights[gname], dtype=np.float64)
                be = np.asarray(weights[bname], dtype=np.float64)
                scale = g * invstd.astype(np.float64)
                wc = np.asarray(weights[src.extra["w_param"]], dtype=np.float64)
                bc = (np.asarray(weights[src.extra["b_param"]], dtype=np.float64)
                      if src.extra["b_param"] else np.zeros_like(scale))
                wf = wc * scale.reshape(-1, *([1] * (wc.ndim - 1)))
                bf = be + (bc - mean.astype(np.float64)) * scale
                src.weight = const(_sym("f_", src.extra["w_param"]), wf)
                src.bias = const(_sym("f_", src.extra["w_param"] + ".bias"), bf)
                src.extra["folded"] = True
                src.extra["w_param"] = src.extra["b_param"] = None
                del producer[src.output]
                src.output = n.output
                src.shape_out = shape[n.output]
                producer[n.output] = src
                folded.append(f"{src.name}+{n.name}")
                continue
            op = LOp(LKind.BN, n.name, acts, n.output, sin, shape[n.output],
                     weight=array_for(gname), bias=array_for(bname),
                     extra={"mean": const(_sym("c_", n.module + ".mean"), mean),
                            "invstd": const(_sym("c_", n.module + ".invstd"), invstd),
                            "w_param": gname, "b_param": bname})
        elif n.op is OpKind.RELU:
            op = LOp(LKind.RELU, n.name, acts, n.output, sin, shape[n.output])
        elif n.op is OpKind.HARDTANH:
            op = LOp(LKind.RELU6, n.name, acts, n.output, sin, shape[n.output],
                     extra={"lo": 0.0, "hi": 6.0})
        elif n.op is OpKind.ADD:
            if len(acts) != 2 or sin[0] != sin[1]:
                raise UnsupportedKernelError(
                    f"node {n.name}: add of shapes {sin} has no C kernel; supported: two "
                    "tensors of the same shape (residual)")
            op = LOp(LKind.ADD, n.name, acts, n.output, sin, shape[n.output])
        elif n.op is OpKind.ADAPTIVE_AVG_POOL2D or (n.op is OpKind.MEAN and
                                                   shape[n.output][2:] in ((1, 1), ())):
            if n.op is OpKind.ADAPTIVE_AVG_POOL2D and tuple(n.attr("output_size")) != (1, 1):
                raise UnsupportedKernelError(
                    f"node {n.name}: adaptive_avg_pool2d to {n.attr('output_size')} has no C "
                    "kernel; supported: output size (1, 1) (global average pooling)")
            op = LOp(LKind.GAP, n.name, acts, n.output, sin, shape[n.output])
        elif n.op is OpKind.VIEW:
            if n.aten not in ("aten.flatten.using_ints", "aten.view.default",
                              "aten.reshape.default", "aten._unsafe_view.default"):
                raise UnsupportedKernelError(
                    f"node {n.name}: view {n.aten} is not a contiguous reshape; supported "
                    "views: flatten, view, reshape")
            op = LOp(LKind.VIEW, n.name, acts, n.output, sin, shape[n.output])
        elif n.op is OpKind.LINEAR:
            pw = [pby[t].name for t in n.inputs if t in pby]
            op = LOp(LKind.LINEAR, n.name, acts, n.output, sin, shape[n.output],
                     extra={"w_param": pw[0], "b_param": pw[1] if len(pw) > 1 else None})
        elif n.op is OpKind.CROSS_ENTROPY:
            op = LOp(LKind.XENT, n.name, acts, n.output, sin, shape[n.output])
        else:
            raise UnsupportedKernelError(
                f"node {n.name} ({n.module or 'functional'}): operator {n.op.value} ({n.aten}) "
                f"has no C kernel. Supported: {', '.join(SUPPORTED)}")
        if op.kind in (LKind.CONV, LKind.LINEAR):
            op.weight = array_for(op.extra["w_param"])
            op.bias = array_for(op.extra["b_param"]) if op.extra["b_param"] else None
        ops.append(op)
        producer[op.output] = op
    for op in ops:  # rows of partial-channel updates
        if op.kind in (LKind.CONV, LKind.LINEAR) and op.extra.get("w_param"):
            op.extra["rows"] = rows(op.extra["w_param"], op.shape_out[1])
    if ops[-1].kind is not LKind.XENT:
        raise UnsupportedKernelError("the graph does not end in cross_entropy; edgetrain's C "
                                     "trainer trains classifiers with softmax cross-entropy")

    referenced = {s for op in ops for s in (op.weight, op.bias, op.extra.get("mean"),
                                             op.extra.get("invstd")) if s}
    arrays = {k: a for k, a in arrays.items() if k in referenced}  # folded originals go

    # -- what needs a gradient (the pruned backward) ---------------------------------------
    rg: set[str] = set()
    for op in ops:
        own = any(arrays[s].trainable for s in (op.weight, op.bias) if s)
        if own or any(t in rg for t in op.inputs):
            rg.add(op.output)
    trainable_syms = [a for a in arrays.values() if a.trainable]
    if not trainable_syms:
        raise UnsupportedPlanError("the plan trains no parameter; choose a trainable set "
                                   "(e.g. --policy last:2)")

    consumers: dict[str, list[LOp]] = {}
    for op in ops:
        for t in op.inputs:
            consumers.setdefault(t, []).append(op)
    input_tensor = graph.inputs[0]

    # -- aliases -----------------------------------------------------------------------------
    parent: dict[str, str] = {}

    def root(k: str) -> str:
        while k in parent:
            k = parent[k]
        return k

    def union(child: str, to: str) -> None:
        rc, rt = root(child), root(to)
        if rc != rt:
            parent[rc] = rt

    # backward reads of forward activations (decides what may be overwritten in place)
    bwd_reads: set[str] = set()
    for op in ops:
        if op.output not in rg:
            continue
        x = op.inputs[0] if op.inputs else None
        if op.kind is LKind.CONV and op.weight and arrays[op.weight].trainable:
            bwd_reads.add(x)
        if op.kind is LKind.BN and arrays[op.weight].trainable:
            bwd_reads.add(x)
        if op.kind is LKind.LINEAR and arrays[op.weight].trainable:
            bwd_reads.add(x)
        if op.kind in (LKind.RELU, LKind.RELU6, LKind.XENT):
            bwd_reads.add(op.output)
    for op in ops:
        if op.kind is LKind.VIEW:
            union("a:" + op.output, "a:" + op.inputs[0])
    for op in ops:
        x = op.inputs[0] if op.inputs else None
        if op.kind in (LKind.RELU, LKind.RELU6) and x != input_tensor and \
                len(consumers[x]) == 1:
            rx = root("a:" + x)
            if not any(root("a:" + t) == rx for t in bwd_reads):
                union("a:" + op.output, "a:" + x)
    for op in reversed(ops):
        if op.output not in rg:
            continue
        if op.kind is LKind.VIEW and op.inputs[0] in rg:
            union("g:" + op.inputs[0], "g:" + op.output)
        elif op.kind in (LKind.RELU, LKind.RELU6, LKind.BN) and op.inputs[0] in rg and \
                len(consumers[op.inputs[0]]) == 1:
            union("g:" + op.inputs[0], "g:" + op.output)
        elif op.kind is LKind.ADD:
            for t in op.inputs:
                if t in rg and len(consumers[t]) == 1 and op.inputs[0] != op.inputs[1]:
                    union("g:" + t, "g:" + op.output)
                    break
    for op in ops:
        if op.kind is LKind.VIEW and op.inputs[0] in rg and len(consumers[op.inputs[0]]) != 1:
            raise UnsupportedKernelError(
                f"node {op.name}: a view whose input has {len(consumers[op.inputs[0]])} readers "
                "needs a gradient copy, which the C generator does not emit")

    # -- schedule and lifetimes --------------------------------------------------------------
    sizes: dict[str, int] = {}
    span: dict[str, list[int]] = {}

    def use(key: str, step: int, numel: int) -> None:
        r = root(key)
        sizes[r] = max(sizes.get(r, 0), numel * 4)
        s = span.setdefault(r, [step, step])
        s[0], s[1] = min(s[0], step), max(s[1], step)

    numel = {t: int(np.prod(s)) for t, s in shape.items()}
    use("a:" + input_tensor, 0, numel[input_tensor])
    step = 0
    for step, op in enumerate(ops):
        for t in op.inputs:
            use("a:" + t, step, numel[t])
        if op.kind is LKind.XENT:
            use("a:" + op.output + ".prob", step, numel[op.inputs[0]])
        else:
            use("a:" + op.output, step, numel[op.output])
    nf = len(ops)
    bwd = [op for op in reversed(ops) if op.output in rg]
    for k, op in enumerate(bwd):
        s = nf + k
        x = op.inputs[0] if op.inputs else None
        if op.kind is LKind.XENT:
            use("a:" + op.output + ".prob", s, numel[x])
            use("g:" + x, s, numel[x])
            continue
        use("g:" + op.output, s, numel[op.output])
        for t in op.inputs:
            if t in rg:
                use("g:" + t, s, numel[t])
        if x in bwd_reads and op.kind in (LKind.CONV, LKind.BN, LKind.LINEAR):
            use("a:" + x, s, numel[x])
        if op.kind in (LKind.RELU, LKind.RELU6):
            use("a:" + op.output, s, numel[op.output])
    buffers = _assign(sizes, span)
    alias = {}
    keys = {k for op in ops for t in (*op.inputs, op.output) for k in ("a:" + t, "g:" + t)}
    keys.add("a:" + ops[-1].output + ".prob")
    for k in keys:
        if root(k) in sizes:
            alias[k] = root(k)
    arena = max((b.offset + b.nbytes for b in buffers), default=0)
    return Lowered(tuple(ops), tuple(arrays.values()), frozenset(rg), tuple(buffers), alias,
                   arena, input_tensor, tuple(shape[input_tensor]),
                   int(ops[-1].shape_in[0][1]), int(shape[input_tensor][0]),
                   tuple(a.param for a in trainable_syms), tuple(folded))


def _assign(sizes: dict[str, int], span: dict[str, list[int]]) -> list[Buffer]:
    order = sorted(sizes, key=lambda k: (-sizes[k], span[k][0], k))
    placed: list[Buffer] = []
    for k in order:
        size = (sizes[k] + ALIGN - 1) // ALIGN * ALIGN
        f, l = span[k]
        live = sorted((b for b in placed if not (b.last < f or b.first > l)),
                      key=lambda b: b.offset)
        off = 0
        for b in live:
            if off + size <= b.offset:
                break
            off = max(off, (b.offset + b.nbytes + ALIGN - 1) // ALIGN * ALIGN)
        placed.append(Buffer(k, sizes[k], f, l, off))
    return sorted(placed, key=lambda b: b.offset)


def _is_buffer(graph: Graph, t: str) -> bool:
    from edgetrain.ir import TensorRole
    return graph.tensor(t).role is TensorRole.BUFFER


def _buffer_name(graph: Graph, t: str) -> str:
    return t  # buffers are named by their module path in the IR


def _check_plan(plan: Plan, graph: Graph) -> None:
    if plan.optimizer != "sgd":
        raise UnsupportedPlanError(
            f"the plan's optimizer is {plan.optimizer!r}; the C trainer runs plain SGD. "
            "Re-plan with --optimizer sgd")
    if plan.micro_batch_size != plan.batch_size:
        raise UnsupportedPlanError(
            f"the plan accumulates {plan.accumulation_steps} micro-batches of "
            f"{plan.micro_batch_size}; the C trainer runs one batch per step. Re-plan with "
            f"--batch-size {plan.micro_batch_size} or a budget that fits batch {plan.batch_size}")
    if graph.batch_size != plan.micro_batch_size:
        raise UnsupportedPlanError(
            f"the graph was captured at batch {graph.batch_size} but the plan runs batches of "
            f"{plan.micro_batch_size}; capture with batch_size={plan.micro_batch_size}")
    odd = [s.name for s in plan.stages if s.decision is not ActivationDecision.KEEP]
    if odd:
        raise UnsupportedPlanError(
            f"stages {odd[:4]} are planned to recompute or page; the C trainer keeps what its "
            "pruned backward needs and does not recompute or page yet. Re-plan with "
            "--strategy keep-all or a larger --budget")
    names = {p.name for p in graph.params}
    extra = [p.name for p in plan.params if p.name not in names]
    if extra:
        raise UnsupportedPlanError(
            f"the plan names parameters the graph lacks: {extra[:4]}; was the plan made for "
            f"model {plan.model!r}?")
