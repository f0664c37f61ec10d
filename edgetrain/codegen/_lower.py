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
    TensorFlow Lite Micro's `GreedyMemoryPlanner`; `place_largest_first` in
    edgetrain/codegen/_arena.py). The arena is `max(offset + size)`.
    Aliases cost nothing: flatten, ReLU/ReLU6 computed in place when nothing else reads their
    input, and input gradients written into the output gradient's buffer for element-wise
    operators whose input has no other reader.

NOTE [ 1-D models in C ]
    A (B, C, L) activation is stored exactly as a (B, C, 1, L) plane, so 1-D operators run on
    the 2-D kernels: conv1d (stride, padding, dilation, groups) is conv2d with a (1, k)
    kernel, whose weight (Co, Ci/G, k) has the same bytes; BatchNorm1d is batch norm over
    B x C x L (folded into a frozen convolution before it like BatchNorm2d); max_pool1d and
    avg_pool1d reach the graph as max_pool2d_with_indices / avg_pool2d over an unsqueezed
    (B, C, 1, L) view, and squeeze / unsqueeze are aliases. Max pooling keeps no indices: its
    backward finds each window's maximum again in the saved input (PyTorch's rule: the first
    maximum, NaN wins), so the input lives until then. The graph does not record pooling's
    dilation, ceil mode, count_include_pad or divisor_override: output sizes other than
    dilation 1's are refused, average pooling runs floor mode with divisor kernel size (zero
    padding counted, PyTorch's default), and `compile_project` refuses modules that set the
    others. Dropout runs with an on-device generator (NOTE [ Dropout in C ]).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgetrain.codegen._arena import ALIGN, Buffer, arena_bytes, place_largest_first
from edgetrain.codegen._kernels import KERNELS, PRELUDE
from edgetrain.codegen._names import Identifiers, identifiers_in
from edgetrain.codegen._op_kernels import BINARY, LOSSES, POINTWISE, Reads, op_kernels
from edgetrain.codegen._platform import fixed_sources as platform_sources
from edgetrain.codegen._project import fixed_sources as project_sources
from edgetrain.errors import UnsupportedKernelError, UnsupportedPlanError
from edgetrain.ir import Graph, OpKind, TensorRole
from edgetrain.planner import ActivationDecision, ParamDecision, Plan

__all__ = [
    "ALIGN",
    "SUPPORTED",
    "Array",
    "Buffer",
    "LKind",
    "LOp",
    "Lowered",
    "check_kernels",
    "module_attributes",
    "lower",
    "zero_weights",
]

SUPPORTED = (
    "conv2d (incl. depthwise / grouped / pointwise / dilated)",
    "conv1d (as conv2d over a 1 x L plane)",
    "batch_norm 1d/2d (frozen statistics)",
    "relu",
    "relu6 (hardtanh 0..6)",
    "add (same shapes; or a parameter broadcast over the leading dimensions, trained)",
    "mean over any run of dimensions",
    "nn.LSTM layer (eager CPU's fused mkldnn_rnn_layer; one direction, with biases)",
    "embedding of the model's integer input (token ids; no padding_idx, no max_norm)",
    "bmm / mm of two activations (SDPA's math path: q k^T, p v; softmax with its "
    "all-masked-row guard)",
    "scaled-dot-product attention (fused SDPA: no mask, no dropout, not causal)",
    "adaptive_avg_pool2d to 1x1 or to a size dividing the input's",
    "max_pool 1d/2d (dilation 1)",
    "avg_pool 1d/2d (floor mode, divisor kernel size)",
    "flatten / view / squeeze / unsqueeze",
    "linear",
    "cross_entropy",
    "point-wise: " + ", ".join(POINTWISE),
    "binary (same shape, or the second broadcast over trailing dims): " + ", ".join(BINARY),
    "losses: " + ", ".join(LOSSES),
    "dropout (nn.Dropout; an on-device PRNG mask)",
    "layer_norm (nn.LayerNorm, over the last dimensions)",
    "upsample nearest 1d/2d (integer factors)",
    "cat / stack (of distinct activations)",
    "softmax / log_softmax (any dim)",
    "any view (transpose, permute, select, slice, narrow, expand, unbind / chunk / split "
    "items: a strided gather; contiguous reshapes: aliases)",
    "clone / contiguous / detach (aliases)",
    "in-place point-wise and binary ops (as their out-of-place kernels)",
    "zeros / ones factories",
    "mm / addmm by a transposed parameter (nn.GRU's gates; as linear, weights shared "
    "across time steps)",
)


class LKind(enum.Enum):
    CONV = "conv"
    BN = "bn"
    RELU = "relu"
    RELU6 = "relu6"
    ADD = "add"
    GAP = "gap"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    VIEW = "view"
    LINEAR = "linear"
    XENT = "xent"
    POINTWISE = "pointwise"  # NOTE [ Op categories in C ] (_op_kernels.py)
    BINARY = "binary"
    LOSS = "loss"  # a loss over float targets
    DROPOUT = "dropout"
    LAYERNORM = "layernorm"
    UPSAMPLE = "upsample"  # nearest, integer factors
    CAT = "cat"
    SOFTMAX = "softmax"  # and log_softmax (extra["log"])
    GATHER = "gather"  # a view that moves data: a strided gather (NOTE [ Views in C ])
    FILL = "fill"  # a constant factory (zeros / ones)
    PARAM_ADD = "param_add"  # x + a parameter broadcast over leading dims (a position table)
    MEAN = "mean"  # mean over a run of middle dimensions (token pooling)
    ATTENTION = "attention"  # fused scaled-dot-product attention (NOTE [ Attention in C ])
    BMM = "bmm"  # a (batched) product of two activations (attention's scores and values)
    LSTM = "lstm"  # oneDNN's fused nn.LSTM layer (NOTE [ LSTM in C ])
    EMBEDDING = "embedding"  # a row gather by the model's integer input (NOTE [ Tokens in C ])


LOSS_KINDS = (LKind.XENT, LKind.LOSS)


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
class Lowered:
    ops: tuple[LOp, ...]
    arrays: tuple[Array, ...]
    requires_grad: frozenset[str]  # activation tensors whose gradient is computed
    buffers: tuple[Buffer, ...]  # arena buffers (roots of alias classes)
    alias: dict  # tensor key ('a:<t>' / 'g:<t>') -> root buffer name
    arena_bytes: int
    input_tensor: str
    input_shape: tuple[int, ...]
    num_classes: int  # 0: a loss over float targets of the output's shape
    batch_size: int
    trainable_params: tuple[str, ...]
    folded: tuple[str, ...]  # 'conv+bn' pairs folded into one constant convolution
    shared: dict = field(default_factory=dict)  # trained array read by several ops -> floats
    input_int: bool = False  # the input batch is token ids (NOTE [ Tokens in C ])


# The arrays' roles and the prefix / suffix of their identifiers (NOTE [ Names in generated C ])
_ROLES = {
    "trained": ("p_", ""),  # a trainable parameter (SRAM)
    "frozen": ("c_", ""),  # a frozen parameter (flash)
    "folded": ("f_", ""),  # a convolution's weight with the batch norm after it folded in
    "folded-bias": ("f_", ".bias"),  # ... and its bias
    "bn-mean": ("c_", ".mean"),  # a frozen batch norm's running mean (by module)
    "bn-invstd": ("c_", ".invstd"),  # ... and 1 / sqrt(var + eps)
}


@functools.cache
def _fixed_identifiers() -> frozenset[str]:
    """The identifiers of the fixed C every fp32 program holds: kernels, driver, platform."""
    return identifiers_in(
        PRELUDE,
        *KERNELS.values(),
        *op_kernels().values(),
        *platform_sources(),
        *project_sources(),
    )


def _sym(ids: Identifiers, role: str, name: str) -> str:
    prefix, suffix = _ROLES[role]
    return ids.get((role, name), prefix + name + suffix)


@dataclass
class _Lowering:
    """One lowering in progress: the plan's decisions, the graph's shapes, and the arrays,
    operators and folds produced so far."""

    graph: Graph
    weights: dict
    decisions: dict  # parameter name -> ParamPlan (absent: frozen)
    freeze_batch_norm: bool
    reserved: frozenset[str] = frozenset()  # identifiers the program's fixed text uses
    hyper: "dict | None" = None  # module -> attributes the graph lacks (p, ...); None: unknown
    skip: set = field(default_factory=set)  # nodes lowered as part of another (dropout's mask)
    live: frozenset = frozenset()  # the nodes the loss depends on
    dropout_of: dict = field(default_factory=dict)  # dropout's final mul node -> p (or None)
    dropout_masks: set = field(default_factory=set)  # the masks' tensors
    safe_where: dict = field(default_factory=dict)  # softmax's all-masked guard -> softmax
    param_views: dict = field(default_factory=dict)  # a view of a parameter -> its node
    shape: dict = field(init=False)
    pby: dict = field(init=False)
    arrays: dict[str, Array] = field(default_factory=dict)
    ops: list[LOp] = field(default_factory=list)
    producer: dict[str, LOp] = field(default_factory=dict)
    folded: list[str] = field(default_factory=list)
    ids: Identifiers = field(init=False)

    def __post_init__(self) -> None:
        self.ids = Identifiers(_fixed_identifiers() | self.reserved)
        self.shape = {t.name: t.shape for t in self.graph.tensors}
        self.pby = self.graph.param_by_tensor

    def trains(self, pname: str) -> bool:
        d = self.decisions.get(pname)
        return d is not None and d.decision in (ParamDecision.TRAINABLE, ParamDecision.CHANNELS)

    def rows(self, pname: str, full: int) -> int:
        d = self.decisions.get(pname)
        if d is not None and d.decision is ParamDecision.CHANNELS:
            return max(1, int(round(d.channel_ratio * full)))
        return full

    def array_for(self, pname: str) -> str:
        v = np.ascontiguousarray(np.asarray(self.weights[pname], dtype=np.float32)).reshape(-1)
        t = self.trains(pname)
        sym = _sym(self.ids, "trained" if t else "frozen", pname)
        self.arrays[sym] = Array(sym, v, t, pname if t else None)
        return sym

    def const(self, sym: str, v: np.ndarray) -> str:
        self.arrays[sym] = Array(sym, np.ascontiguousarray(v, dtype=np.float32).reshape(-1), False)
        return sym

    def params_of(self, n) -> list[str]:
        return [self.pby[t].name for t in n.inputs if t in self.pby]

    def op(self, kind: LKind, n, acts: tuple[str, ...], **kw) -> LOp:
        return LOp(
            kind,
            n.name,
            acts,
            n.output,
            tuple(self.shape[t] for t in acts),
            self.shape[n.output],
            **kw,
        )


# -- one node -> one C operator, by operator kind ----------------------------------------------
def _unsupported(n) -> UnsupportedKernelError:
    return UnsupportedKernelError(
        f"node {n.name} ({n.module or 'functional'}): operator {n.op.value} ({n.aten}) "
        f"has no C kernel. Supported: {', '.join(SUPPORTED)}"
    )


def _plane(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A 1-D activation (B, C, L) as the 2-D plane (B, C, 1, L) the C kernels run over."""
    return (shape[0], shape[1], 1, shape[2]) if len(shape) == 3 else tuple(shape)


def _pair(v, one: int) -> tuple[int, int]:
    """A 1-D attribute (k,) as the 2-D (one, k) of a 1 x L plane; 2-D attributes unchanged."""
    t = tuple(int(x) for x in v)
    return (one, t[0]) if len(t) == 1 else (t[0], t[1])


def _lower_conv(lw: _Lowering, n, acts) -> LOp:
    """conv2d, and conv1d as conv2d over a (1, L) plane with a (1, k) kernel (NOTE [ 1-D
    models in C ]): the weight (Co, Ci/G, k) is already the (Co, Ci/G, 1, k) kernel's bytes."""
    pw = lw.params_of(n)
    one_d = n.op is OpKind.CONV1D
    op = lw.op(
        LKind.CONV,
        n,
        acts,
        extra={
            "kernel": _pair(n.attr("kernel"), 1),
            "stride": _pair(n.attr("stride", (1,) if one_d else (1, 1)), 1),
            "padding": _pair(n.attr("padding", (0,) if one_d else (0, 0)), 0),
            "dilation": _pair(n.attr("dilation", (1,) if one_d else (1, 1)), 1),
            "groups": n.attr("groups", 1),
            "w_param": pw[0],
            "b_param": pw[1] if len(pw) > 1 else None,
        },
    )
    if one_d:
        op.shape_in = (_plane(op.shape_in[0]),)
        op.shape_out = _plane(op.shape_out)
    if len(op.shape_in[0]) != 4 or len(op.shape_out) != 4:
        raise UnsupportedKernelError(
            f"node {n.name} ({n.module}): convolution of shape {lw.shape[acts[0]]} -> "
            f"{lw.shape[n.output]} has no C kernel; supported: (B, C, L) and (B, C, H, W)"
        )
    return op


def _fold_bn(lw: _Lowering, n, src: LOp, gname: str, bname: str, mean, invstd) -> None:
    """A frozen batch norm after a frozen convolution only it reads becomes the convolution's
    weights and bias (float64, then float32): w' = w * g / sigma, b' = be + (b - mu) g / sigma."""
    w = lw.weights
    scale = np.asarray(w[gname], dtype=np.float64) * invstd.astype(np.float64)
    wc = np.asarray(w[src.extra["w_param"]], dtype=np.float64)
    bc = (
        np.asarray(w[src.extra["b_param"]], dtype=np.float64)
        if src.extra["b_param"]
        else np.zeros_like(scale)
    )
    wf = wc * scale.reshape(-1, *([1] * (wc.ndim - 1)))
    bf = np.asarray(w[bname], dtype=np.float64) + (bc - mean.astype(np.float64)) * scale
    src.weight = lw.const(_sym(lw.ids, "folded", src.extra["w_param"]), wf)
    src.bias = lw.const(_sym(lw.ids, "folded-bias", src.extra["w_param"]), bf)
    src.extra["folded"] = True
    src.extra["w_param"] = src.extra["b_param"] = None
    del lw.producer[src.output]
    src.output = n.output
    src.shape_out = _plane(lw.shape[n.output])
    lw.producer[n.output] = src
    lw.folded.append(f"{src.name}+{n.name}")


def _lower_bn(lw: _Lowering, n, acts) -> LOp | None:
    if n.attr("training", False) and not lw.freeze_batch_norm:
        raise UnsupportedPlanError(
            f"node {n.name} ({n.module}) is batch norm with batch statistics; the C "
            "trainer runs frozen BN (running statistics). Re-plan with "
            "freeze_batch_norm=True (edgetrain.plan(..., freeze_batch_norm=True))"
        )
    g = lw.graph
    gname, bname = lw.pby[n.inputs[1]].name, lw.pby[n.inputs[2]].name
    mean = np.asarray(lw.weights[_buffer_name(g, n.inputs[3])], dtype=np.float32)
    var = np.asarray(lw.weights[_buffer_name(g, n.inputs[4])], dtype=np.float32)
    eps = np.float32(n.attr("eps", 1e-5))
    invstd = (np.float32(1.0) / np.sqrt(var + eps)).astype(np.float32)
    src = lw.producer.get(acts[0])
    if (
        src is not None
        and src.kind is LKind.CONV
        and len(g.consumers.get(acts[0], ())) == 1
        and not lw.trains(src.extra["w_param"])
        and not (src.extra["b_param"] and lw.trains(src.extra["b_param"]))
        and not lw.trains(gname)
        and not lw.trains(bname)
    ):
        _fold_bn(lw, n, src, gname, bname, mean, invstd)
        return None
    return lw.op(
        LKind.BN,
        n,
        acts,
        weight=lw.array_for(gname),
        bias=lw.array_for(bname),
        extra={
            "mean": lw.const(_sym(lw.ids, "bn-mean", n.module), mean),
            "invstd": lw.const(_sym(lw.ids, "bn-invstd", n.module), invstd),
            "w_param": gname,
            "b_param": bname,
        },
    )


def _lower_relu(lw: _Lowering, n, acts) -> LOp:
    return lw.op(LKind.RELU, n, acts)


def _lower_hardtanh(lw: _Lowering, n, acts) -> LOp:
    return lw.op(LKind.RELU6, n, acts, extra={"lo": 0.0, "hi": 6.0})


def _lower_add(lw: _Lowering, n, acts) -> LOp:
    sin = tuple(lw.shape[t] for t in acts)
    if len(acts) == 1 and n.attr("scalar") is not None:  # x + a number
        return lw.op(LKind.POINTWISE, n, acts, extra={"fn": "add_scalar", "a": n.attr("scalar")})
    if len(acts) == 1 and len(n.inputs) == 2:
        op = _lower_param_add(lw, n, acts)
        if op is not None:
            return op
    if len(acts) != 2 or sin[0] != sin[1]:
        raise UnsupportedKernelError(
            f"node {n.name} ({n.module or 'functional'}): add of "
            f"{[lw.shape.get(t) for t in n.inputs]} -> {lw.shape[n.output]} has no C kernel; "
            "supported: two activations of the same shape (residual), or an activation plus "
            "a parameter broadcast over its leading dimensions (e.g. (1, T, D) over (B, T, D))"
        )
    return lw.op(LKind.ADD, n, acts)


def _lower_param_add(lw: _Lowering, n, acts) -> "LOp | None":
    """x + p where p is a parameter whose shape is x's trailing dimensions (leading ones 1):
    a learned position table over the batch. The gradient of p is dy summed over the leading
    dimensions, its SGD step taken in the backward (no gradient buffer). None: not this form."""
    par = lw.pby.get(n.inputs[1]) or lw.pby.get(n.inputs[0])
    out = lw.shape[n.output]
    if par is None or lw.shape[acts[0]] != out:
        return None
    ps = tuple(par.shape)
    while ps and ps[0] == 1:
        ps = ps[1:]
    if len(ps) > len(out) or tuple(out[len(out) - len(ps) :]) != ps:
        return None
    d = lw.decisions.get(par.name)
    if d is not None and d.decision is ParamDecision.CHANNELS:
        raise UnsupportedPlanError(
            f"node {n.name}: the plan trains some channels of the broadcast parameter "
            f"{par.name} {tuple(par.shape)}; the C trainer trains it whole or not at all. "
            "Re-plan with a policy that trains it whole (e.g. --policy all)"
        )
    p = int(np.prod(ps))
    extra = {"P": p, "outer": int(np.prod(out)) // p, "b_param": par.name}
    return lw.op(LKind.PARAM_ADD, n, acts, bias=lw.array_for(par.name), extra=extra)


def _lower_adaptive_pool(lw: _Lowering, n, acts) -> LOp:
    """To 1x1: global average pooling. To an output size that divides the input's: average
    pooling with kernel = stride = input / output (PyTorch's adaptive windows are then exactly
    these)."""
    out = tuple(n.attr("output_size"))
    if out == (1, 1):
        return lw.op(LKind.GAP, n, acts)
    sin = lw.shape[acts[0]]
    if (
        len(sin) == 4
        and len(out) == 2
        and all(o and sin[2 + k] % o == 0 for k, o in enumerate(out))
    ):
        k = (sin[2] // out[0], sin[3] // out[1])
        return lw.op(LKind.AVGPOOL, n, acts, extra={"kernel": k, "stride": k, "padding": (0, 0)})
    raise UnsupportedKernelError(
        f"node {n.name}: adaptive_avg_pool2d of {sin} to {out} has no C kernel; supported: "
        "output size (1, 1), or one that divides the input's (uniform windows)"
    )


def _lower_mean(lw: _Lowering, n, acts) -> LOp:
    """A mean over a run of consecutive dimensions: over all of (B, C, ...)'s trailing ones
    is global average pooling; over a run of middle ones (tokens of (B, T, D)) `mean_fwd`."""
    sin = lw.shape[acts[0]]
    dims = sorted({int(d) % len(sin) for d in (n.attr("dims") or ())})
    run = bool(dims) and dims == list(range(dims[0], dims[-1] + 1))
    if run and dims[0] >= 2 and dims[-1] == len(sin) - 1:
        return lw.op(LKind.GAP, n, acts)
    if not run or dims[0] == 0 or len(acts) != 1:
        raise UnsupportedKernelError(
            f"node {n.name} ({n.module or 'functional'}): mean of {sin} over dims "
            f"{n.attr('dims')}; the C kernel averages over one run of consecutive dimensions "
            "after the batch"
        )
    extra = {
        "outer": int(np.prod(sin[: dims[0]])),
        "n": int(np.prod(sin[dims[0] : dims[-1] + 1])),
        "inner": int(np.prod(sin[dims[-1] + 1 :])),
    }
    return lw.op(LKind.MEAN, n, acts, extra=extra)


def _pool_out(n: int, k: int, s: int, p: int, ceil: bool) -> int:
    """PyTorch's pooled size (dilation 1); ceil mode drops a window starting in the padding."""
    if not ceil:
        return (n + 2 * p - k) // s + 1
    o = -(-(n + 2 * p - k) // s) + 1
    return o - 1 if (o - 1) * s >= n + p else o


def _lower_pool(lw: _Lowering, n, acts) -> LOp:
    """max_pool2d / avg_pool2d (1-D pooling reaches the graph as these over an unsqueezed
    (B, C, 1, L) view). The graph records kernel, stride and padding but not dilation or
    ceil mode, so the output size must be dilation 1's: floor mode, or (max pooling) ceil
    mode, whose extra window the kernel clips like padding."""
    kind = LKind.MAXPOOL if n.op is OpKind.MAX_POOL2D else LKind.AVGPOOL
    sin, sout = lw.shape[acts[0]], lw.shape[n.output]
    k = _pair(n.attr("kernel"), 1)
    st = _pair(n.attr("stride", None) or k, 1)
    pad = _pair(n.attr("padding", None) or (0, 0), 0)
    sizes = [
        tuple(_pool_out(sin[2 + i], k[i], st[i], pad[i], ceil) for i in range(2))
        for ceil in ((False, True) if kind is LKind.MAXPOOL else (False,))
    ]
    if len(sin) != 4 or len(sout) != 4 or tuple(sout[2:]) not in sizes:
        what = "max pooling with dilation 1" if kind is LKind.MAXPOOL else "floor mode"
        raise UnsupportedKernelError(
            f"node {n.name} ({n.module or 'functional'}): {n.op.value} {sin} -> {sout} with "
            f"kernel {k}, stride {st}, padding {pad} is not {what}; the C kernel pools "
            f"(B, C, H, W) with dilation 1{', floor mode' if kind is LKind.AVGPOOL else ''}"
        )
    return lw.op(kind, n, acts, extra={"kernel": k, "stride": st, "padding": pad})


_VIEWS = (
    "aten.flatten.using_ints",
    "aten.view.default",
    "aten.reshape.default",
    "aten._unsafe_view.default",
    "aten.unsqueeze.default",
    "aten.squeeze.dim",
    "aten.squeeze.dims",
    "aten.squeeze.default",
)
"""Views that are contiguous reshapes whatever their operands (no index map needed)."""
MAX_VIEW_DIMS = 8  # the gather kernel's index space after merging (NOTE [ Views in C ])


def view_map(n) -> "tuple[int, tuple[int, ...], tuple[int, ...]] | None":
    """NOTE [ Views in C ]
    A view's index map (NOTE [ Views as index maps ] in edgetrain/capture/_rules.py:
    `out[i] = src[view_offset + sum_k i_k view_stride[k]]` over the source's contiguous
    layout) with its size-1 dimensions dropped and adjacent dimensions that step through the
    source as one merged: (offset, sizes, strides). A map that is the whole source in order
    (offset 0, one dimension of stride 1, or none) is a contiguous reshape: the C trainer
    aliases the output to the source's buffer (no code). Any other map (transpose, permute,
    select, slice with any step, the getitems of unbind / chunk / split, expand's stride 0)
    is one strided gather into a buffer of its own (`view_gather`); its backward scatters
    the output gradient back, adding (`view_scatter`: zero-filled first unless it
    accumulates), so elements read twice (expand) sum their gradients and elements never read
    (select, slice) get zero. Copies (clone, contiguous, detach) alias their source: every C
    operator writes a buffer of its own, so no later in-place write can change a copy's
    source (detach passes no gradient). None: the node records no map."""
    off, size, stride = n.attr("view_offset"), n.attr("view_size"), n.attr("view_stride")
    if off is None or size is None or stride is None:
        return None
    merged: list[list[int]] = []
    for d, st in zip(size, stride):
        if d == 1:
            continue
        if merged and merged[-1][1] == st * d:
            merged[-1] = [merged[-1][0] * d, st]
        else:
            merged.append([int(d), int(st)])
    return int(off), tuple(d for d, _ in merged), tuple(st for _, st in merged)


def _is_reshape(m: tuple[int, tuple[int, ...], tuple[int, ...]], numel_in: int) -> bool:
    off, size, stride = m
    return off == 0 and int(np.prod(size)) == numel_in and (not size or stride == (1,))


def _lower_view(lw: _Lowering, n, acts) -> LOp:
    m = view_map(n)
    if m is None:
        if n.aten not in _VIEWS:
            raise UnsupportedKernelError(
                f"node {n.name}: view {n.aten} records no index map (a graph captured by an "
                "older edgetrain, or an operator that cannot run on meta tensors); re-capture "
                "the model, or replace the view by reshape / transpose / slicing"
            )
        return lw.op(LKind.VIEW, n, acts[:1])
    if _is_reshape(m, int(np.prod(lw.shape[acts[0]]))):
        return lw.op(LKind.VIEW, n, acts[:1])
    off, size, stride = m
    if len(size) > MAX_VIEW_DIMS:
        raise UnsupportedKernelError(
            f"node {n.name}: view {n.aten} {lw.shape[acts[0]]} -> {lw.shape[n.output]} moves "
            f"data over {len(size)} dimensions; the C gather takes up to {MAX_VIEW_DIMS} (after "
            "merging contiguous ones): reshape the tensor to fewer dimensions first"
        )
    extra = {"offset": off, "size": size, "stride": stride}
    return lw.op(LKind.GATHER, n, acts[:1], extra=extra)


def _lower_copy(lw: _Lowering, n, acts) -> LOp:
    """A reshape that had to copy is a view (its map); clone / contiguous / detach /
    `_to_copy` of a float32 tensor alias their source (NOTE [ Views in C ])."""
    if n.attr("view_size") is not None:
        return _lower_view(lw, n, acts)
    g = lw.graph
    same = (
        len(acts) == 1
        and len(n.inputs) == 1
        and lw.shape[acts[0]] == lw.shape[n.output]
        and g.tensor(acts[0]).dtype == g.tensor(n.output).dtype == "float32"
    )
    if not same:
        raise _unsupported(n)
    return lw.op(LKind.VIEW, n, acts[:1], extra={"detach": n.attr("fn") == "detach"})


_FILLS = {"zeros": 0.0, "zeros_like": 0.0, "new_zeros": 0.0}
_FILLS |= {"ones": 1.0, "ones_like": 1.0, "new_ones": 1.0}
"""Factories whose value the graph implies (by `attrs["fn"]`); `full` and others are not."""


def _lower_factory(lw: _Lowering, n, acts) -> LOp:
    """A constant tensor (nn.GRU's zero initial state): filled in its arena buffer by each
    forward (no input, no gradient)."""
    v = _FILLS.get(n.attr("fn"))
    if v is None or lw.graph.tensor(n.output).dtype != "float32":
        raise UnsupportedKernelError(
            f"node {n.name} ({n.module or 'functional'}): factory {n.attr('fn')} "
            f"({lw.graph.tensor(n.output).dtype}) has no C kernel; supported: float32 "
            f"{', '.join(_FILLS)}"
        )
    return lw.op(LKind.FILL, n, (), extra={"value": v})


def _param_view(lw: _Lowering, t: str) -> "tuple[str, object] | None":
    """(parameter name, view node) when `t` is a view of a parameter."""
    n = lw.param_views.get(t)
    return None if n is None else (lw.pby[n.inputs[0]].name, n)


def _lower_matmul(lw: _Lowering, n, acts) -> LOp:
    """The MATMUL category: fused attention (NOTE [ Attention in C ]), oneDNN's LSTM layer
    (NOTE [ LSTM in C ]), products of two activations (`_lower_bmm`), and mm / addmm of an
    activation by the transpose of a 2-D parameter (nn.GRU's decomposed gate products:
    `addmm(b, x, w.t())`), a linear layer. Other products are refused."""
    fn, ins = n.attr("fn"), n.inputs
    if fn in _SDPA:
        return _lower_attention(lw, n, acts)
    if fn == "mkldnn_rnn_layer":
        return _lower_rnn(lw, n, acts)
    products = fn in ("bmm", "mm", "matmul") or n.aten == "aten.matmul.default"
    if products and len(acts) == 2 and acts == tuple(ins):
        return _lower_bmm(lw, n, acts)
    parts = {"addmm": 3, "mm": 2}
    pv = _param_view(lw, ins[-1]) if fn in parts and len(ins) == parts[fn] else None
    ok = pv is not None and ins[-2] in acts and len(lw.shape[ins[-2]]) == 2
    if ok:
        pname, v = pv
        w = lw.shape[v.inputs[0]]
        ok = (
            len(w) == 2
            and tuple(v.attr("view_size", ())) == (w[1], w[0])
            and v.attr("view_offset") == 0
            and (w[1] == 1 or w[0] == 1 or tuple(v.attr("view_stride")) == (1, w[1]))
        )
    bias = lw.pby.get(ins[0]) if fn == "addmm" else None
    if ok and fn == "addmm":
        ok = bias is not None and tuple(bias.shape) == (lw.shape[n.output][1],)
    if not ok:
        raise UnsupportedKernelError(
            f"node {n.name} ({n.module or 'functional'}): {fn or 'matmul'} of "
            f"{[lw.shape.get(t) for t in ins]}; the C kernel multiplies a 2-D activation by "
            "the transpose of a 2-D parameter (a linear layer, with a parameter bias for "
            "addmm), or two activations (..., M, K) @ (..., K, N) with equal leading "
            "dimensions; fused attention and nn.LSTM layers have kernels of their own"
        )
    extra = {"w_param": pname, "b_param": bias.name if bias is not None else None}
    return lw.op(LKind.LINEAR, n, (ins[-2],), extra=extra)


def _lower_linear(lw: _Lowering, n, acts) -> LOp:
    """nn.Linear over (..., I): the leading dimensions are the kernel's rows."""
    pw = lw.params_of(n)
    op = lw.op(
        LKind.LINEAR, n, acts, extra={"w_param": pw[0], "b_param": pw[1] if len(pw) > 1 else None}
    )
    sin, sout = op.shape_in[0], op.shape_out
    op.shape_in = ((int(np.prod(sin[:-1])), sin[-1]),)
    op.shape_out = (int(np.prod(sout[:-1])), sout[-1])
    return op


_MAX_TOKEN_ROWS = 1 << 24  # ids travel as floats in the arena: exact below 2 ** 24


def _lower_embedding(lw: _Lowering, n, acts) -> LOp:
    """NOTE [ Tokens in C ]
    A model whose input is integer (token ids, int64 in the graph) takes `int32_t` ids in the
    generated C (`et_sample_t` of the demo's samples, `et_input_t` of the library's API).
    They are stored in the arena's input buffer as floats (exact: the table has fewer than
    2 ** 24 rows), so the buffer and the plan's memory are the float input's. The one
    operator that reads them is `nn.Embedding` on the model's input itself: forward a row
    gather (`embedding_fwd`; an id outside [0, V) gives a zero row, where PyTorch raises), and
    for a trained table the backward scatter-adds each token's output gradient into its row
    as the SGD step (`embedding_bwd_sgd`: rows of repeated ids sum, as PyTorch's dense
    gradient does; no gradient buffer). No gradient flows to the ids. `padding_idx`,
    `scale_grad_by_freq`, `max_norm` and ids computed by other operators are refused (typed
    errors name the node)."""
    g = lw.graph
    pw = lw.params_of(n)
    ids = [t for t in n.inputs if t not in lw.pby]
    table = lw.shape[n.inputs[0]] if pw else ()
    odd = [k for k in ("padding_idx", "scale_grad_by_freq") if n.attr(k) is not None]
    max_norm = None if lw.hyper is None else lw.hyper.get(n.module, {}).get("max_norm")
    ok = (
        len(pw) == 1
        and len(ids) == 1
        and ids[0] == g.inputs[0]
        and len(table) == 2
        and table[0] < _MAX_TOKEN_ROWS
        and not odd
        and max_norm is None
    )
    if not ok:
        raise UnsupportedKernelError(
            f"node {n.name} ({n.module or 'functional'}): embedding of "
            f"{[lw.shape.get(t) for t in n.inputs]}"
            f"{' with ' + ', '.join(odd) if odd else ''}"
            f"{f' with max_norm {max_norm}' if max_norm is not None else ''}; the C kernel "
            "gathers rows of a 2-D parameter table (under 2 ** 24 rows) by the model's "
            "integer input, with no padding_idx, scale_grad_by_freq or max_norm"
        )
    d = lw.decisions.get(pw[0])
    if d is not None and d.decision is ParamDecision.CHANNELS:
        raise UnsupportedPlanError(
            f"node {n.name}: the plan trains some channels of the embedding table {pw[0]}; "
            "the C trainer trains it whole or not at all. Re-plan with --policy all or last:K"
        )
    extra = {"tokens": int(np.prod(lw.shape[ids[0]])), "V": table[0], "D": table[1]}
    return lw.op(LKind.EMBEDDING, n, (ids[0],), weight=lw.array_for(pw[0]), extra=extra)


def _lower_rnn(lw: _Lowering, n, acts) -> LOp:
    """NOTE [ LSTM in C ]
    Eager CPU runs an `nn.LSTM` layer as oneDNN's fused `mkldnn_rnn_layer`, and capture keeps
    it one node (the PyTorch executor's cost model prices it as PyTorch runs it). The C trainer
    runs it as one operator too (`lstm_fwd` / `lstm_bwd`, _op_kernels.py): the forward keeps
    each step's gates (i, f, g, o after their activations), cell and hidden state in a
    workspace arena buffer (`a:<output>.ws`, T * B * 6H floats, plus 3 * B * H for the
    backward's running dh / dc), live from the forward to the backward; the backward runs
    backpropagation through time, writing each step's gate gradients over its saved gates,
    then the input gradient and the four arrays' SGD steps summed over time (the old W_hh for
    every step's dh, as PyTorch; no gradient buffers). Its C output is the one result the
    model reads: the whole sequence (T, B, H) or the final hidden state (B, H); both, the cell
    state, reverse / bidirectional layers, projections and gradients into h0 / c0 are refused
    (typed errors name the node)."""
    g = lw.graph
    ins, scal = n.inputs, tuple(n.attr("scalars", ()))
    live_outs = [
        t
        for t in (n.output, *n.attr("results", ()))
        if any(g.nodes[i].name in lw.live for i in g.consumers.get(t, ()))
    ]
    params = [lw.pby[t].name for t in ins[1:5] if t in lw.pby]
    ok = (
        len(ins) == 7
        and len(params) == 4
        and len(scal) >= 7
        and scal[0] is False
        and scal[5] is True
        and scal[6] is False
        and len(live_outs) == 1
        and live_outs[0] in (n.output, *n.attr("results", ())[:1])
        and all(t in acts for t in (ins[0], ins[5], ins[6]))
    )
    x = lw.shape[ins[0]]
    if ok:
        t_, b_, i_ = x
        h = lw.shape[ins[2]][1]
        ok = (
            lw.shape[ins[1]] == (4 * h, i_)
            and lw.shape[ins[2]] == (4 * h, h)
            and lw.shape[ins[5]] == lw.shape[ins[6]] == (b_, h)
        )
    if not ok:
        raise UnsupportedKernelError(
            f"node {n.name} ({n.module or 'functional'}): {n.attr('fn')} of "
            f"{[lw.shape.get(t) for t in ins]} (scalars {scal}, outputs read {live_outs}); "
            "the C kernel runs one forward, unidirectional nn.LSTM layer with biases over "
            "(T, B, I), reading either its output sequence or its final hidden state"
        )
    for p in params:
        d = lw.decisions.get(p)
        if d is not None and d.decision is ParamDecision.CHANNELS:
            raise UnsupportedPlanError(
                f"node {n.name}: the plan trains some channels of {p}; the C LSTM trains its "
                "arrays whole or not at all. Re-plan with --policy all or last:K"
            )
    last = live_outs[0] != n.output
    extra = {"T": t_, "B": b_, "I": i_, "H": h, "last": last, "ws": t_ * b_ * 6 * h + 3 * b_ * h}
    op = lw.op(LKind.LSTM, n, (ins[0], ins[5], ins[6]), extra=extra)
    op.output, op.shape_out = live_outs[0], lw.shape[live_outs[0]]
    op.weight, op.bias = lw.array_for(params[0]), lw.array_for(params[2])
    op.extra["more"] = (lw.array_for(params[1]), lw.array_for(params[3]))
    return op


_SDPA = ("_scaled_dot_product_flash_attention_for_cpu",)


def _lower_bmm(lw: _Lowering, n, acts) -> LOp:
    """a (..., M, K) @ b (..., K, N) of two activations (mm: no leading dims; matmul: equal
    leading dims, flattened to B), both contiguous buffers (a
    transposed operand is a gather before it, NOTE [ Views in C ]). Backward: da = dy b^T,
    db = a^T dy; each reads the other operand."""
    sa, sb = lw.shape[acts[0]], lw.shape[acts[1]]
    ok = len(sa) == len(sb) >= 2 and sa[:-2] == sb[:-2] and sa[-1] == sb[-2]
    if not ok:
        raise UnsupportedKernelError(
            f"node {n.name} ({n.module or 'functional'}): {n.attr('fn')} of {sa} and {sb}; "
            "the C kernel multiplies (..., M, K) by (..., K, N) activations with equal "
            "leading dimensions (no broadcasting)"
        )
    a3 = (int(np.prod(sa[:-2])), *sa[-2:])
    b3 = (a3[0], *sb[-2:])
    extra = {"B": a3[0], "M": a3[1], "K": a3[2], "N": b3[2]}
    return lw.op(LKind.BMM, n, acts, extra=extra)


def _find_safe_softmax(lw: _Lowering) -> None:
    """SDPA's math path guards softmax against rows that are all -inf (every key masked):
    `where(all(eq(x, -inf), -1), zeros_like(s), s)` with `s = softmax(x)`. Without a mask
    (the only attention the C trainer runs) a row of finite scores is never all -inf, so the
    guard is its softmax: `where` aliases `s`, and eq / all / zeros_like generate no C."""
    g = lw.graph
    made = {n.output: n for n in g.nodes}
    for w in (n for n in g.nodes if n.attr("fn") == "where" and len(n.inputs) == 3):
        cond, zeros, s = (made.get(t) for t in w.inputs)
        eq = made.get(cond.inputs[0]) if cond is not None and cond.inputs else None
        ok = (
            cond is not None
            and cond.attr("fn") == "all"
            and zeros is not None
            and zeros.attr("fn") == "zeros_like"
            and s is not None
            and s.op is OpKind.SOFTMAX
            and eq is not None
            and eq.attr("fn") == "eq"
            and eq.inputs[:1] == s.inputs[:1]
        )
        if ok:
            lw.skip |= {cond.name, zeros.name, eq.name}
            lw.safe_where[w.name] = s.output


def _lower_attention(lw: _Lowering, n, acts) -> LOp:
    """NOTE [ Attention in C ]
    Eager CPU runs `F.scaled_dot_product_attention` (nn.MultiheadAttention's core) as one
    fused flash kernel, and capture keeps it one MATMUL node: the PyTorch executor's cost
    model prices that node as PyTorch runs it (its saved output and log-sum-exp, no
    probability matrix), so it is not decomposed at capture. The C trainer runs it as one
    operator too (`attention_fwd` / `attention_bwd`, _op_kernels.py): per head, each query
    row's softmax over the keys with a running maximum (flash attention's online softmax), so
    no L x S score matrix is ever stored; the backward recomputes each row's probabilities
    from the saved q, k, v (three passes over the keys), so the arena holds q, k, v until the
    backward and nothing else. No attention mask, no dropout, not causal (refused: the graph
    records them as positional scalars and `masked`); the scale is the recorded one, else
    1 / sqrt(E)."""
    scal = tuple(n.attr("scalars", ()))
    shapes = [lw.shape.get(t) for t in n.inputs]
    ok = (
        n.attr("fn") in _SDPA
        and len(n.inputs) == 3
        and len(acts) == 3
        and not any(scal)
        and not n.attr("masked")
    )
    if ok:
        q, k, v = shapes
        ok = (
            len(q) >= 3
            and len(q) == len(k) == len(v)
            and q[:-2] == k[:-2] == v[:-2]
            and q[-1] == k[-1]
            and k[-2] == v[-2]
            and tuple(lw.shape[n.output]) == (*q[:-1], v[-1])
        )
    if not ok:
        raise UnsupportedKernelError(
            f"node {n.name} ({n.module or 'functional'}): {n.attr('fn')} of {shapes} "
            f"(scalars {scal}, mask {bool(n.attr('masked'))}); the C kernel runs fused "
            "scaled-dot-product attention of activations q (.., L, E), k (.., S, E), "
            "v (.., S, Ev) with no mask, no dropout, not causal"
        )
    q, k, v = shapes
    scale = n.attr("scale")
    extra = {
        "bh": int(np.prod(q[:-2])),
        "L": int(q[-2]),
        "S": int(k[-2]),
        "E": int(q[-1]),
        "Ev": int(v[-1]),
        "scale": float(scale) if scale is not None else 1.0 / float(np.sqrt(q[-1])),
    }
    return lw.op(LKind.ATTENTION, n, tuple(n.inputs), extra=extra)


def _lower_xent(lw: _Lowering, n, acts) -> LOp:
    return lw.op(LKind.XENT, n, acts)


def _module_attr(lw: _Lowering, n, attr: str, what: str):
    """An attribute of `n`'s module the graph does not record (dropout's p, leaky_relu's
    slope, GELU's approximation, layer norm's eps): from `lw.hyper` (`module_attributes` of
    the model: compile_project and the planner's C memory pass it); None while lowering for
    shapes only (memory does not depend on it; `render` refuses a None). A functional call,
    or a module without the attribute, has none to read: refused."""
    fix = f"Use the module form (e.g. nn.{_MODULE_OF[what]})"
    if not n.module:
        raise UnsupportedKernelError(
            f"node {n.name}: functional {what}; the graph does not record its {attr}, and "
            f"there is no module to read it from. {fix}"
        )
    if lw.hyper is None:
        return None
    v = lw.hyper.get(n.module, {}).get(attr)
    if v is None:
        raise UnsupportedKernelError(
            f"node {n.name} ({n.module}): {what} whose module has no {attr!r} attribute; the "
            f"graph does not record it. {fix}"
        )
    return v


_MODULE_OF = {
    "gelu": "GELU()",
    "leaky_relu": "LeakyReLU(slope)",
    "dropout": "Dropout(p)",
    "layer_norm": "LayerNorm(shape)",
}


def _lower_pointwise(lw: _Lowering, n, acts, fn: str) -> LOp:
    a = 0.0
    if fn == "gelu":
        approx = _module_attr(lw, n, "approximate", "gelu")
        fn = "gelu_tanh" if approx == "tanh" else "gelu"
        a = 0.0 if approx is not None else None
    elif POINTWISE[fn].param:
        a = _module_attr(lw, n, POINTWISE[fn].param, fn)
    return lw.op(LKind.POINTWISE, n, acts[:1], extra={"fn": fn, "a": a})


def _broadcast_p(small: tuple[int, ...], full: tuple[int, ...]) -> int:
    """P when `small` is `full` with its trailing dimensions 1 (one value per P values of
    the full operand), else 0."""
    if len(small) != len(full):
        return 0
    k = len(full)
    while k > 0 and small[k - 1] == 1:
        k -= 1
    if small[:k] != full[:k] or k == len(full):
        return 0
    return int(np.prod(full[k:]))


def _lower_binary(lw: _Lowering, n, acts, fn: str) -> LOp:
    """Same-shape operands, or the second broadcast over trailing dimensions (the first, for
    a commutative op: swapped); NOTE [ Op categories in C ]."""
    out = lw.shape[n.output]
    shapes = [lw.shape[t] for t in acts]
    if len(acts) == 2 and shapes[0] == shapes[1] == out:
        return lw.op(LKind.BINARY, n, acts, extra={"fn": fn, "bcast_p": 0})
    if len(acts) == 2 and BINARY[fn].commutative and shapes[1] == out:
        acts, shapes = acts[::-1], shapes[::-1]
    p = _broadcast_p(shapes[1], out) if len(acts) == 2 and shapes[0] == out else 0
    if not p:
        raise UnsupportedKernelError(
            f"node {n.name} ({n.module or 'functional'}): {fn} of "
            f"{[lw.shape.get(t) for t in n.inputs]} -> {out}; the C kernel takes two "
            "activations of the output's shape, or the second with trailing dimensions 1 "
            "(e.g. (B, C, 1, 1) against (B, C, H, W)); no other broadcasting, no scalar, "
            "parameter or constant operand"
        )
    return lw.op(LKind.BINARY, n, acts, extra={"fn": fn, "bcast_p": p})


def _lower_elementwise(lw: _Lowering, n, acts) -> LOp:
    """The point-wise and binary categories (NOTE [ Op categories in C ]), by the ATen name
    inside the category (`attrs["fn"]`) or the kind's own name (tanh, gelu, hardswish, mul).
    An in-place op (`add_`, `sigmoid_`: `attrs["inplace"]`) is its out-of-place op writing a
    buffer of its own (NOTE [ In-place ops in C ])."""
    fn = n.attr("fn") or n.op.value
    if n.name in lw.safe_where:
        return lw.op(LKind.VIEW, n, (lw.safe_where[n.name],))
    if n.attr("inplace") and fn.endswith("_"):
        fn = fn[:-1]
    if fn == "add" and n.op is OpKind.ELEMENTWISE:
        return _lower_add(lw, n, acts)
    scalar = n.attr("scalar")
    if scalar is not None and f"{fn}_scalar" in POINTWISE and len(acts) == 1:
        return lw.op(LKind.POINTWISE, n, acts, extra={"fn": f"{fn}_scalar", "a": float(scalar)})
    if n.op is OpKind.MUL and len(n.inputs) == 1 and len(acts) == 1 and scalar is None:
        acts = (acts[0], acts[0])  # x * x: the IR lists the one operand once (a MUL node
        # records a scalar operand as `scalar`; other categories do not: refused below)
    if fn in BINARY:
        return _lower_binary(lw, n, acts, fn)
    if fn in POINTWISE or fn == "gelu":
        return _lower_pointwise(lw, n, acts, fn)
    raise _unsupported(n)


def _lower_loss(lw: _Lowering, n, acts) -> LOp:
    fn = n.attr("fn")
    if fn not in LOSSES:
        raise _unsupported(n)
    return lw.op(LKind.LOSS, n, acts[:1], extra={"fn": fn})


def _lower_layer_norm(lw: _Lowering, n, acts) -> LOp:
    pw = lw.params_of(n)
    k = int(n.attr("normalized_ndim", 1))
    shape = lw.shape[acts[0]]
    d = int(np.prod(shape[len(shape) - k :]))
    if len(pw) == 1:  # weight only (bias=False): which one is not recorded apart from its role
        pw.append(None)
    return lw.op(
        LKind.LAYERNORM,
        n,
        acts[:1],
        extra={
            "w_param": pw[0] if pw else None,
            "b_param": pw[1] if len(pw) > 1 else None,
            "nrows": int(np.prod(shape)) // d,
            "d": d,
            "eps": _module_attr(lw, n, "eps", "layer_norm"),
        },
    )


def _lower_upsample(lw: _Lowering, n, acts) -> LOp:
    sin, sout = _plane(lw.shape[acts[0]]), _plane(lw.shape[n.output])
    ok = len(sin) == 4 and len(sout) == 4 and sin[:2] == sout[:2]
    ok = ok and all(sout[k] % sin[k] == 0 for k in (2, 3))
    if not ok:
        raise UnsupportedKernelError(
            f"node {n.name} ({n.module or 'functional'}): nearest upsampling {lw.shape[acts[0]]}"
            f" -> {lw.shape[n.output]}; the C kernel upsamples (B, C, L) / (B, C, H, W) by "
            "integer factors"
        )
    op = lw.op(
        LKind.UPSAMPLE, n, acts[:1], extra={"sh": sout[2] // sin[2], "sw": sout[3] // sin[3]}
    )
    op.shape_in, op.shape_out = (sin,), sout
    return op


def _lower_cat(lw: _Lowering, n, acts) -> LOp:
    """Concatenation along its recorded dimension (else the one where the output's size is
    the operands' sum); stack is the concatenation of its operands unsqueezed there."""
    out = lw.shape[n.output]
    shapes = [lw.shape[t] for t in acts]
    at = n.attr("dim")
    if n.attr("fn") == "stack" and at is not None:
        shapes = [s[:at] + (1,) + s[at:] for s in shapes]
    dims = [
        d
        for d in range(len(out))
        if all(len(s) == len(out) for s in shapes)
        and sum(s[d] for s in shapes) == out[d]
        and all(s[:d] + s[d + 1 :] == out[:d] + out[d + 1 :] for s in shapes)
        and at in (None, d)
    ]
    if len(acts) != len(n.inputs) or len(dims) != 1 or len(set(acts)) != len(acts):
        raise UnsupportedKernelError(
            f"node {n.name} ({n.module or 'functional'}): cat of "
            f"{[lw.shape.get(t) for t in n.inputs]} -> {out}; the C kernel concatenates "
            "distinct activations along one dimension (no parameter or constant operand, no "
            "operand twice)"
        )
    d = dims[0]
    inner = int(np.prod(out[d + 1 :]))
    chunks = [s[d] * inner for s in shapes]
    offsets = [sum(chunks[:k]) for k in range(len(chunks))]
    extra = {"outer": int(np.prod(out[:d])), "chunks": chunks, "offsets": offsets}
    return lw.op(LKind.CAT, n, acts, extra={**extra, "whole": out[d] * inner})


def _lower_softmax(lw: _Lowering, n, acts) -> LOp:
    shape = lw.shape[acts[0]]
    d = int(n.attr("dim", -1)) % len(shape)
    extra = {
        "log": n.op is OpKind.LOG_SOFTMAX,
        "outer": int(np.prod(shape[:d])),
        "n": int(shape[d]),
        "inner": int(np.prod(shape[d + 1 :])),
    }
    return lw.op(LKind.SOFTMAX, n, acts[:1], extra=extra)


_INDEX_OPS = {
    "upsample_nearest2d": _lower_upsample,
    "upsample_nearest1d": _lower_upsample,
    "cat": _lower_cat,
    "stack": _lower_cat,
}


def _lower_index(lw: _Lowering, n, acts) -> LOp:
    lower_index = _INDEX_OPS.get(n.attr("fn"))
    if lower_index is None:
        raise _unsupported(n)
    return lower_index(lw, n, acts)


def _lower_dropout(lw: _Lowering, n, acts) -> LOp:
    x = next(t for t in n.inputs if t not in lw.dropout_masks)
    k = sum(op.kind is LKind.DROPOUT for op in lw.ops)
    return lw.op(LKind.DROPOUT, n, (x,), extra={"p": lw.dropout_of[n.name], "index": k})


_LOWER: dict[OpKind, Callable[[_Lowering, object, tuple[str, ...]], "LOp | None"]] = {
    OpKind.CONV2D: _lower_conv,
    OpKind.CONV1D: _lower_conv,
    OpKind.MAX_POOL2D: _lower_pool,
    OpKind.AVG_POOL2D: _lower_pool,
    OpKind.BATCH_NORM: _lower_bn,  # None: folded into the convolution before it
    OpKind.RELU: _lower_relu,
    OpKind.HARDTANH: _lower_hardtanh,
    OpKind.ADD: _lower_add,
    OpKind.ADAPTIVE_AVG_POOL2D: _lower_adaptive_pool,
    OpKind.MEAN: _lower_mean,
    OpKind.VIEW: _lower_view,
    OpKind.COPY: _lower_copy,
    OpKind.FACTORY: _lower_factory,
    OpKind.MATMUL: _lower_matmul,
    OpKind.LINEAR: _lower_linear,
    OpKind.CROSS_ENTROPY: _lower_xent,
    OpKind.ELEMENTWISE: _lower_elementwise,
    OpKind.MUL: _lower_elementwise,
    OpKind.DIV: _lower_elementwise,
    OpKind.TANH: _lower_elementwise,
    OpKind.GELU: _lower_elementwise,
    OpKind.HARDSWISH: _lower_elementwise,
    OpKind.LOSS: _lower_loss,
    OpKind.LAYER_NORM: _lower_layer_norm,
    OpKind.INDEX: _lower_index,
    OpKind.SOFTMAX: _lower_softmax,
    OpKind.EMBEDDING: _lower_embedding,
    OpKind.LOG_SOFTMAX: _lower_softmax,
}
"""How each IR operator becomes a C operator (`SUPPORTED` in words)."""
_SKIPPED = frozenset({OpKind.BUFFER_UPDATE})  # BN running-statistics updates: frozen in C


def _live(g: Graph) -> frozenset[str]:
    """The nodes the loss depends on (what eager mode computes only for autograd, e.g. nn.GRU's
    `detach` and `clone` of saved gates, or an output nobody reads, has no C)."""
    need, live = {g.loss}, set()
    for n in reversed(g.nodes):
        outs = (n.output, *n.aux_outputs, *n.attr("results", ()))
        if any(t in need for t in outs):
            live.add(n.name)
            need.update(n.inputs)
    return frozenset(live)


class _Regions:
    """The storage elements each tensor covers (composed view maps; None: unknown)."""

    def __init__(self, g: Graph) -> None:
        self.g = g
        self.memo: dict[str, "np.ndarray | None"] = {}

    def of(self, t: str) -> "np.ndarray | None":
        if t not in self.memo:
            self.memo[t] = self._compute(t)
        return self.memo[t]

    def _compute(self, t: str) -> "np.ndarray | None":
        g, tt = self.g, self.g.tensor(t)
        i = g.node_index.get(tt.producer or "")
        n = g.nodes[i] if i is not None else None
        if n is None or not n.inputs or g.tensor(n.inputs[0]).storage != tt.storage:
            return np.arange(tt.numel)  # the tensor that made its storage
        src = self.of(n.inputs[0])
        if n.attr("inplace"):
            return src
        off, size, stride = (n.attr(k) for k in ("view_offset", "view_size", "view_stride"))
        if src is None or off is None:
            return None
        idx = np.full(tuple(size), off, dtype=np.int64)
        for k, (d, st) in enumerate(zip(size, stride)):
            shape = [1] * len(size)
            shape[k] = d
            idx = idx + np.arange(d, dtype=np.int64).reshape(shape) * st
        return src[idx.reshape(-1)]


def _check_inplace(g: Graph, live: frozenset[str]) -> None:
    """NOTE [ In-place ops in C ]
    Eager decompositions write in place (nn.GRU's gates: `add_`, `sigmoid_`, `mul_`, `tanh_`
    on chunks of one product). Capture names each write's result anew, and the C trainer runs
    every op out of place into a buffer of its own, which is eager mode's value exactly when
    no operator reads a tensor after an in-place write to storage elements it covers (its
    value then is the written one; in C it would be the one before). Such a stale read is
    refused (regions from the composed view maps, NOTE [ Views as index maps ]); every other
    in-place op runs as its out-of-place kernel."""
    writes: dict[str, list[int]] = {}
    for i, n in enumerate(g.nodes):
        if n.attr("inplace") and n.inputs:
            writes.setdefault(g.tensor(n.inputs[0]).storage, []).append(i)
    if not writes:
        return
    regions = _Regions(g)
    for q, reader in enumerate(g.nodes):
        if reader.name not in live:
            continue
        for t in reader.inputs:
            tt = g.tensor(t)
            made = g.node_index.get(tt.producer or "", -1)
            for i in writes.get(tt.storage, ()):
                if not made < i < q:
                    continue
                w, rt = regions.of(g.nodes[i].inputs[0]), regions.of(t)
                if w is None or rt is None or np.intersect1d(w, rt).size:
                    raise UnsupportedKernelError(
                        f"node {reader.name} ({reader.module or 'functional'}) reads {t} after "
                        f"the in-place {g.nodes[i].attr('fn')} of node {g.nodes[i].name} "
                        "wrote over it; the C trainer runs in-place ops out of place (NOTE "
                        "[ In-place ops in C ]). Use the op's out-of-place form in the model"
                    )


def _find_dropouts(lw: _Lowering) -> None:
    """NOTE [ Dropout in C ]: capture runs the model in training mode, so a dropout reaches
    the graph as its mask's composite: `empty -> expand -> bernoulli(1 - p) -> div(1 - p)` and
    `mul(x, mask)`. The C trainer draws the mask from an on-device generator (xorshift32,
    `_op_kernels.dropout_fwd`): the whole composite is one C operator on x, whose backward
    draws the same mask again from the generator's saved state (4 bytes, no mask buffer).
    Evaluation and `et_predict` run it as the identity (PyTorch's eval mode). p is not in the
    graph: it is read from the module (`nn.Dropout`; a functional dropout is refused). A
    composite of another shape (Dropout1d/2d's per-channel masks, AlphaDropout) is refused;
    nothing is silently skipped."""
    g = lw.graph
    for rnd in (n for n in g.nodes if n.op is OpKind.RANDOM):
        key = (rnd.module, rnd.attr("composite"))
        group = [m for m in g.nodes if (m.module, m.attr("composite")) == key]
        made = {m.output for m in group}
        muls = [
            m for m in group if m.op is OpKind.MUL and sum(t not in made for t in m.inputs) == 1
        ]
        ok = (
            rnd.attr("composite")
            and len(muls) == 1
            and lw.shape[rnd.output] == lw.shape[muls[0].output]
        )
        if not ok:
            raise UnsupportedKernelError(
                f"node {rnd.name} ({rnd.module or 'functional'}): a random mask "
                f"{lw.shape[rnd.output]} that is not element-wise dropout (nn.Dropout) has no "
                "C kernel (Dropout1d/2d, AlphaDropout and other random ops are not supported); "
                "use nn.Dropout, or nn.Identity() in its place for on-device training"
            )
        p = _module_attr(lw, rnd, "p", "dropout")
        if p is not None and not 0.0 <= float(p) < 1.0:
            raise UnsupportedKernelError(
                f"node {rnd.name} ({rnd.module}): dropout p={p}; the C kernel needs 0 <= p < 1"
            )
        lw.skip |= {m.name for m in group if m is not muls[0]}
        lw.dropout_masks |= made
        lw.dropout_of[muls[0].name] = None if p is None else float(p)


def _lower_nodes(lw: _Lowering) -> None:
    g = lw.graph
    live = lw.live = _live(g)
    _check_inplace(g, live)
    _find_dropouts(lw)
    _find_safe_softmax(lw)
    lw.param_views = {
        n.output: n
        for n in g.nodes
        if n.op is OpKind.VIEW and n.name in live and n.inputs and n.inputs[0] in lw.pby
    }
    for n in g.nodes:
        if n.op in _SKIPPED or n.name not in live or n.name in lw.skip:
            continue
        if n.output in lw.param_views:
            continue  # read by the operator it feeds (a linear's transposed weight)
        if n.op is not OpKind.MATMUL and any(t in lw.param_views for t in n.inputs):
            raise UnsupportedKernelError(
                f"node {n.name} ({n.module or 'functional'}): {n.op.value} reads a view of a "
                "parameter; the C kernels take parameters as they are (a linear layer's "
                "transposed weight is the one view they read)"
            )
        acts = tuple(
            t
            for t in n.inputs
            if t not in lw.pby
            and t not in lw.param_views
            and lw.shape.get(t) is not None
            and t != g.target
            and not _is_buffer(g, t)
        )
        lower_node = _lower_dropout if n.name in lw.dropout_of else _LOWER.get(n.op)
        if lower_node is None:
            raise _unsupported(n)
        op = lower_node(lw, n, acts)
        if op is None:
            continue
        if op.kind in (LKind.CONV, LKind.LINEAR, LKind.LAYERNORM):
            w = op.extra["w_param"]
            op.weight = lw.array_for(w) if w else None
            op.bias = lw.array_for(op.extra["b_param"]) if op.extra["b_param"] else None
        lw.ops.append(op)
        lw.producer[op.output] = op
    for op in lw.ops:  # rows of partial-channel updates
        if op.kind in (LKind.CONV, LKind.LINEAR) and op.extra.get("w_param"):
            op.extra["rows"] = lw.rows(op.extra["w_param"], op.shape_out[1])
    if lw.ops[-1].kind not in LOSS_KINDS:
        raise UnsupportedKernelError(
            "the graph does not end in a loss the C trainer has (cross_entropy, "
            f"{', '.join(LOSSES)}); capture the model with one of them (plan --loss)"
        )


def _shared_gradients(ops: list[LOp], arrays: dict[str, Array]) -> dict[str, int]:
    """NOTE [ Shared weights in C ]
    A trained array that several operators read (nn.GRU's recurrent weights, one linear per
    time step) cannot take its SGD step inside each operator's backward as an unshared one
    does: the earlier operators' input gradients need the old values, and PyTorch steps by the
    sum of the contributions. Its gradient is summed in an arena buffer instead (`p:<symbol>`,
    zeroed at the first backward use, live until the last), and the step is applied after the
    last one (`sgd_apply`). Linear layers only (their weight-gradient kernel sums with lr -1);
    other operators sharing a trained array are refused. Returns symbol -> floats of its
    gradient buffer (the rows a partial-channel plan trains)."""
    users: dict[str, list[LOp]] = {}
    for op in ops:
        for sym in dict.fromkeys((op.weight, op.bias, *_more(op))):
            if sym and arrays[sym].trainable:
                users.setdefault(sym, []).append(op)
    out: dict[str, int] = {}
    for sym, those in users.items():
        if len(those) < 2:
            continue
        bad = [op for op in those if op.kind is not LKind.LINEAR or op.weight == op.bias]
        if bad:
            raise UnsupportedKernelError(
                f"parameter {arrays[sym].param} is trained and read by {len(those)} operators "
                f"({', '.join(op.name for op in those[:4])}); the C trainer sums the gradients "
                "of shared weights for linear layers only (NOTE [ Shared weights in C ])"
            )
        op = those[0]
        rows = op.extra.get("rows", op.shape_out[1])
        out[sym] = rows * (op.shape_in[0][1] if sym == op.weight else 1)
    return out


def lower(
    plan: Plan,
    graph: Graph,
    weights: "dict[str, np.ndarray]",
    *,
    reserved: frozenset[str] = frozenset(),
    hyper: "dict[str, dict] | None" = None,
) -> Lowered:
    """Lower `plan` over `graph`; array identifiers avoid `reserved` (the caller's fixed C
    text) besides the kernels' and driver's (NOTE [ Names in generated C ]). `hyper`: module
    name -> the attributes of it the graph does not record (`module_attributes`)."""
    _check_plan(plan, graph)
    missing = [p.name for p in graph.params if p.name not in weights]
    if missing:
        raise UnsupportedPlanError(
            f"{len(missing)} parameters of the graph have no weights: {missing[:4]}; pass the "
            "model's state_dict (parameters and buffers) as `weights`"
        )
    lw = _Lowering(
        graph,
        weights,
        {p.name: p for p in plan.params},
        plan.freeze_batch_norm,
        reserved,
        hyper,
    )
    _lower_nodes(lw)
    ops = lw.ops
    referenced = {
        s
        for op in ops
        for s in (op.weight, op.bias, op.extra.get("mean"), op.extra.get("invstd"), *_more(op))
        if s
    }
    arrays = {k: a for k, a in lw.arrays.items() if k in referenced}  # folded originals go
    rg = _requires_grad(ops, arrays)
    trainable_syms = [a for a in arrays.values() if a.trainable]
    if not trainable_syms:
        raise UnsupportedPlanError(
            "the plan trains no parameter; choose a trainable set (e.g. --policy last:2)"
        )
    consumers: dict[str, list[LOp]] = {}
    for op in ops:
        for t in op.inputs:
            consumers.setdefault(t, []).append(op)
    input_tensor = graph.inputs[0]
    bwd_reads = _bwd_reads(ops, arrays, rg)
    shared = _shared_gradients(ops, arrays)
    uf = _aliases(ops, rg, consumers, bwd_reads, input_tensor)
    sizes, span = _lifetimes(ops, arrays, rg, lw.shape, input_tensor, uf, shared)
    buffers = place_largest_first(sizes, span)
    keys = {k for op in ops for t in (*op.inputs, op.output) for k in ("a:" + t, "g:" + t)}
    keys.add("a:" + ops[-1].output + ".prob")
    keys.update("a:" + op.output + ".ws" for op in ops if op.extra.get("ws"))
    keys.update("p:" + sym for sym in shared)
    alias = {k: uf.root(k) for k in keys if uf.root(k) in sizes}
    shape = lw.shape
    return Lowered(
        tuple(ops),
        tuple(arrays.values()),
        frozenset(rg),
        tuple(buffers),
        alias,
        arena_bytes(buffers),
        input_tensor,
        tuple(shape[input_tensor]),
        int(ops[-1].shape_in[0][1]) if ops[-1].kind is LKind.XENT else 0,
        int(shape[input_tensor][0]),
        tuple(a.param for a in trainable_syms),
        tuple(lw.folded),
        shared,
        graph.tensor(input_tensor).dtype not in ("float32", "float"),
    )


def zero_weights(graph: Graph) -> dict[str, np.ndarray]:
    """Zeros for every parameter and buffer of `graph`: lowering for shapes only (memory does
    not depend on the values)."""
    zeros = {p.name: np.zeros(p.shape, dtype=np.float32) for p in graph.params}
    zeros.update(
        {
            t.name: np.zeros(t.shape, dtype=np.float32)
            for t in graph.tensors
            if t.role is TensorRole.BUFFER
        }
    )
    return zeros


def check_kernels(graph: Graph, hyper: "dict[str, dict] | None" = None) -> None:
    """Raise `UnsupportedKernelError` for the first operator of `graph` (captured with batch
    norm frozen) that has no C kernel, whatever the plan trains; with `hyper`
    (`module_attributes(model)`) also for a module attribute the kernels need and lack."""
    lw = _Lowering(graph, zero_weights(graph), {}, freeze_batch_norm=True, hyper=hyper)
    _lower_nodes(lw)


_HYPER = ("p", "negative_slope", "approximate", "eps", "max_norm")  # what the graph does not record


def module_attributes(model) -> dict[str, dict]:
    """Module name -> the attributes of it the IR does not record and the C kernels need
    (dropout's p, leaky_relu's negative_slope, GELU's approximate, layer norm's eps), of a
    `torch.nn.Module` (duck-typed: `named_modules()`): `lower`'s / `render`'s `hyper`."""
    out = {}
    for name, m in model.named_modules():
        found = {a: getattr(m, a) for a in _HYPER if isinstance(getattr(m, a, None), (float, str))}
        if found:
            out[name] = found
    return out


# -- the pruned backward, aliases and lifetimes (NOTE [ Arena assignment ]) -------------------
def _more(op: LOp) -> tuple[str, ...]:
    """The arrays of an operator beyond its weight and bias (an LSTM's W_hh, b_hh)."""
    return tuple(op.extra.get("more", ()))


def _requires_grad(ops: list[LOp], arrays: dict[str, Array]) -> set[str]:
    """Activations whose gradient the pruned backward computes."""
    rg: set[str] = set()
    for op in ops:
        if op.extra.get("detach"):
            continue  # no gradient flows through detach
        own = any(arrays[s].trainable for s in (op.weight, op.bias, *_more(op)) if s)
        if own or any(t in rg for t in op.inputs):
            rg.add(op.output)
    return rg


_READS_INPUT_WHEN_TRAINED = (LKind.CONV, LKind.BN, LKind.LINEAR)  # for the weight gradient
_READS_OUTPUT = (LKind.RELU, LKind.RELU6, LKind.SOFTMAX)  # the derivative from the output
_READS_INPUT = (LKind.MAXPOOL, LKind.LAYERNORM)  # always: the window's maximum / row statistics


def saved_for_backward(op: LOp, trainable: set[str], rg: set[str]) -> tuple[str, ...]:
    """The forward activations the backward of `op` reads (`trainable`: the symbols of the
    trained arrays; `rg`: the activations whose gradient is computed)."""
    x = op.inputs[0] if op.inputs else None
    if op.kind in _READS_INPUT_WHEN_TRAINED:
        return (x,) if op.weight in trainable else ()
    if op.kind in _READS_OUTPUT:
        return (op.output,)
    if op.kind in _READS_INPUT:
        return (x,)
    if op.kind is LKind.ATTENTION:
        return tuple(dict.fromkeys(op.inputs))  # each row's probabilities are recomputed
    if op.kind is LKind.EMBEDDING:
        return (x,) if op.weight in trainable else ()  # the ids of the rows to step
    if op.kind is LKind.LSTM:
        return tuple(op.inputs)  # x, h0, c0; each step's h, c and gates: its workspace
    if op.kind is LKind.BMM:
        a, b = op.inputs
        return tuple(dict.fromkeys([*((b,) if a in rg else ()), *((a,) if b in rg else ())]))
    if op.kind is LKind.POINTWISE:
        return (x,) if POINTWISE[op.extra["fn"]].reads is Reads.INPUT else (op.output,)
    if op.kind is LKind.BINARY:
        reads = BINARY[op.extra["fn"]].operands_read(tuple(t in rg for t in op.inputs))
        return tuple(dict.fromkeys(t for t, r in zip(op.inputs, reads) if r))
    return ()


def _bwd_reads(ops: list[LOp], arrays: dict[str, Array], rg: set[str]) -> set[str]:
    """Forward activations the backward reads (they may not be overwritten in place)."""
    trainable = {k for k, a in arrays.items() if a.trainable}
    reads: set[str] = set()
    for op in ops:
        if op.output in rg:
            reads.update(saved_for_backward(op, trainable, rg))
    return reads


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def root(self, k: str) -> str:
        while k in self.parent:
            k = self.parent[k]
        return k

    def union(self, child: str, to: str) -> None:
        rc, rt = self.root(child), self.root(to)
        if rc != rt:
            self.parent[rc] = rt


def _aliases(
    ops: list[LOp], rg: set[str], consumers: dict, bwd_reads: set[str], input_tensor: str
) -> _UnionFind:
    """Keys that share a buffer: views, in-place ReLU/ReLU6, and input gradients written
    into the output gradient's buffer."""
    uf = _UnionFind()
    for op in ops:
        if op.kind is LKind.VIEW:
            uf.union("a:" + op.output, "a:" + op.inputs[0])
    readers: dict[str, int] = {}  # per buffer: the operators reading it other than aliases
    for t, those in consumers.items():
        r = uf.root("a:" + t)
        readers[r] = readers.get(r, 0) + sum(op.kind is not LKind.VIEW for op in those)
    for op in ops:
        x = op.inputs[0] if op.inputs else None
        if (
            op.kind in (LKind.RELU, LKind.RELU6)
            and x != input_tensor
            and readers[uf.root("a:" + x)] == 1
        ):
            rx = uf.root("a:" + x)
            if not any(uf.root("a:" + t) == rx for t in bwd_reads):
                uf.union("a:" + op.output, "a:" + x)
    for op in reversed(ops):
        if op.output not in rg:
            continue
        if op.kind is LKind.VIEW and op.inputs[0] in rg and len(consumers[op.inputs[0]]) == 1:
            uf.union("g:" + op.inputs[0], "g:" + op.output)  # else copied (accumulated)
        elif (
            op.kind in (LKind.RELU, LKind.RELU6, LKind.BN)
            and op.inputs[0] in rg
            and len(consumers[op.inputs[0]]) == 1
        ):
            uf.union("g:" + op.inputs[0], "g:" + op.output)
        elif op.kind is LKind.ADD:
            for t in op.inputs:
                if t in rg and len(consumers[t]) == 1 and op.inputs[0] != op.inputs[1]:
                    uf.union("g:" + t, "g:" + op.output)
                    break
    return uf


def _lifetimes(
    ops: list[LOp],
    arrays: dict[str, Array],
    rg: set[str],
    shape: dict,
    input_tensor: str,
    uf: _UnionFind,
    shared: dict[str, int],
) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Every buffer's size (fp32 bytes) and [first, last] step: the forward operators, then
    the pruned backward in reverse (shared weights' gradient sums included: NOTE [ Shared
    weights in C ])."""
    sizes: dict[str, int] = {}
    span: dict[str, list[int]] = {}
    trainable = {k for k, a in arrays.items() if a.trainable}

    def use(key: str, step: int, numel: int) -> None:
        r = uf.root(key)
        sizes[r] = max(sizes.get(r, 0), numel * 4)
        s = span.setdefault(r, [step, step])
        s[0], s[1] = min(s[0], step), max(s[1], step)

    numel = {t: int(np.prod(s)) for t, s in shape.items()}
    use("a:" + input_tensor, 0, numel[input_tensor])
    for step, op in enumerate(ops):
        for t in op.inputs:
            use("a:" + t, step, numel[t])
        if op.kind in LOSS_KINDS:
            use("a:" + op.output + ".prob", step, numel[op.inputs[0]])
        elif op.extra.get("ws"):
            use("a:" + op.output + ".ws", step, op.extra["ws"])
            use("a:" + op.output, step, numel[op.output])
        else:
            use("a:" + op.output, step, numel[op.output])
    nf = len(ops)
    for k, op in enumerate(op for op in reversed(ops) if op.output in rg):
        s = nf + k
        x = op.inputs[0] if op.inputs else None
        if op.kind in LOSS_KINDS:
            use("a:" + op.output + ".prob", s, numel[x])
            use("g:" + x, s, numel[x])
            continue
        use("g:" + op.output, s, numel[op.output])
        if op.extra.get("ws"):
            use("a:" + op.output + ".ws", s, op.extra["ws"])
        for t in op.inputs:
            if t in rg:
                use("g:" + t, s, numel[t])
        for sym in {op.weight, op.bias} & shared.keys():
            use("p:" + sym, s, shared[sym])
        for t in saved_for_backward(op, trainable, rg):
            use("a:" + t, s, numel[t])
    return sizes, span


def _is_buffer(graph: Graph, t: str) -> bool:
    return graph.tensor(t).role is TensorRole.BUFFER


def _buffer_name(graph: Graph, t: str) -> str:
    return t  # buffers are named by their module path in the IR


def _check_plan(plan: Plan, graph: Graph) -> None:
    if plan.optimizer != "sgd":
        raise UnsupportedPlanError(
            f"the plan's optimizer is {plan.optimizer!r}; the C trainer runs plain SGD. "
            "Re-plan with --optimizer sgd"
        )
    if plan.micro_batch_size != plan.batch_size:
        raise UnsupportedPlanError(
            f"the plan accumulates {plan.accumulation_steps} micro-batches of "
            f"{plan.micro_batch_size}; the C trainer runs one batch per step. Re-plan with "
            f"--batch-size {plan.micro_batch_size} or a budget that fits batch {plan.batch_size}"
        )
    if graph.batch_size != plan.micro_batch_size:
        raise UnsupportedPlanError(
            f"the graph was captured at batch {graph.batch_size} but the plan runs batches of "
            f"{plan.micro_batch_size}; capture with batch_size={plan.micro_batch_size}"
        )
    odd = [s.name for s in plan.stages if s.decision is not ActivationDecision.KEEP]
    if odd:
        raise UnsupportedPlanError(
            f"stages {odd[:4]} are planned to recompute or page; the C trainer keeps what its "
            "pruned backward needs and does not recompute or page yet. Re-plan with "
            "--strategy keep-all or a larger --budget"
        )
    names = {p.name for p in graph.params}
    extra = [p.name for p in plan.params if p.name not in names]
    if extra:
        raise UnsupportedPlanError(
            f"the plan names parameters the graph lacks: {extra[:4]}; was the plan made for "
            f"model {plan.model!r}?"
        )
