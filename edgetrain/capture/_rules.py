"""Cost rules: one exported operator -> an IR node (kind, FLOPs, attributes, what it saves).

NOTE [ What autograd saves ]
    The legacy rules (`LEGACY_RULES`: the ops edgetrain had rules for before any model was
    lowered to primitives) follow the `derivatives.yaml` formulas of PyTorch 2.13 for the eager
    kernels these composite ops dispatch to on CPU:
      conv2d -> convolution            saves input, weight
      linear -> addmm / mm (2-D view)   saves input (a view of it), weight.t()
      batch_norm -> native_batch_norm   saves input, weight, running stats, save_mean, save_invstd
      layer_norm -> native_layer_norm   saves input, weight, bias, mean, rstd
      relu, tanh, softmax, log_softmax  save their result
      hardtanh, hardswish, gelu         save their input
      max_pool2d -> max_pool2d_with_indices  saves input and int64 indices
      avg_pool2d, adaptive_avg_pool2d (non-1x1)  save input; adaptive 1x1 -> mean: saves nothing
      mul / div by a Python number      saves no tensor (the wrapped number is not stored)
      matmul (batched) -> bmm           saves both operands reshaped to 3-D (a copy when the
                                         reshape cannot be a view, e.g. after a transpose)
      embedding                         saves the int64 indices
      cross_entropy -> log_softmax + nll_loss  saves log-probabilities, target, total_weight
      add, mean, views, clone           save nothing
    Autograd records nothing for an op none of whose inputs requires grad. Storages are
    identified through the fake tensors of the exported graph, so views share their base's
    storage exactly as in eager mode. `tests/test_capture.py` checks every rule against the
    storages autograd really saves. Every other operator (the category rules below, and every
    primitive a composite op is lowered to) takes what it saves from eager autograd itself
    (NOTE [ Saved tensors from eager autograd ] in `_eager.py`); its rule gives only the kind,
    the FLOPs and the attributes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from edgetrain.errors import UnsupportedOpError
from edgetrain.ir import Node, OpKind, Tensor, TensorRole, contiguous_strides, itemsize

aten = torch.ops.aten


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _numel(shape) -> int:
    return math.prod(int(d) for d in shape)


@dataclass
class _Builder:
    """Mutable state while walking the exported graph."""

    tensors: dict[str, Tensor] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    storages: dict[int, str] = field(default_factory=dict)
    fx_to_tensor: dict[str, str] = field(default_factory=dict)

    local: dict[int, str] | None = None  # storages of a lowered sub-graph's fake tensors
    n_local: int = 0

    def storage_id(self, val: torch.Tensor) -> str:
        key = val.untyped_storage()._cdata
        if self.local is not None:  # a sub-graph: its fake storages live in their own table
            if key not in self.local:
                self.local[key] = self.fresh_storage()
            return self.local[key]
        if key not in self.storages:
            self.storages[key] = f"s{len(self.storages)}"
        return self.storages[key]

    def fresh_storage(self) -> str:
        sid = f"s{len(self.storages)}"
        self.storages[-len(self.storages) - 1] = sid  # reserve a unique id
        return sid

    def add_tensor(
        self, name: str, val: torch.Tensor, role: TensorRole, producer: str | None
    ) -> Tensor:
        t = Tensor(
            name=name,
            shape=tuple(int(d) for d in val.shape),
            dtype=_dtype(val),
            role=role,
            storage=self.storage_id(val),
            storage_bytes=int(val.untyped_storage().nbytes()),
            producer=producer,
        )
        self.tensors[name] = t
        return t

    def add_aux(self, node: str, suffix: str, shape, dtype: str) -> str:
        """A fresh storage allocated by `node` for its own backward."""
        name = f"{node}.{suffix}"
        nbytes = _numel(shape) * itemsize(dtype)
        sid = self.fresh_storage()
        self.tensors[name] = Tensor(
            name, tuple(int(d) for d in shape), dtype, TensorRole.AUX, sid, nbytes, node
        )
        return name


@dataclass
class _Ctx:
    """What a rule sees of one exported node."""

    name: str
    fx: torch.fx.Node
    b: _Builder
    out: torch.Tensor
    args: list[Any]  # tensor args replaced by IR tensor names; others as-is
    vals: list[Any]  # tensor args as fake tensors

    def t(self, i: int) -> str:
        return self.args[i]


@dataclass
class _Rule:
    op: OpKind
    saved: list[str] = field(default_factory=list)
    aux: list[str] = field(default_factory=list)
    flops: int = 0
    flops_in: int = 0
    flops_param: int = 0
    vec: int = 0
    vec_bwd: int = 0
    attrs: dict[str, Any] = field(default_factory=dict)


def _conv2d(c: _Ctx) -> _Rule:
    w = c.vals[1]
    a = list(c.args) + [None] * (7 - len(c.args))
    stride = tuple(a[3] or (1, 1))
    padding = a[4] if a[4] is not None else (0, 0)
    if isinstance(padding, str):
        raise UnsupportedOpError(
            f"node {c.name!r}: conv2d with padding={padding!r} is not supported; "
            "use integer padding (e.g. padding=k//2)"
        )
    dilation = tuple(a[5] or (1, 1))
    groups = int(a[6] or 1)
    cout, cin_g, kh, kw = (int(d) for d in w.shape)
    macs = _numel(c.out.shape) * cin_g * kh * kw
    return _Rule(
        OpKind.CONV2D,
        saved=[c.t(0), c.t(1)],
        flops=2 * macs,
        flops_in=2 * macs,
        flops_param=2 * macs,
        vec=_numel(c.out.shape) if a[2] else 0,
        attrs={
            "stride": stride,
            "padding": tuple(padding),
            "dilation": dilation,
            "groups": groups,
            "kernel": (kh, kw),
            "bias": a[2] is not None,
        },
    )


def _linear(c: _Ctx) -> _Rule:
    x, w = c.vals[0], c.vals[1]
    n_out, k = (int(d) for d in w.shape)
    m = _numel(x.shape) // k
    macs = m * n_out * k
    bias = len(c.args) > 2 and c.args[2] is not None
    return _Rule(
        OpKind.LINEAR,
        saved=[c.t(0), c.t(1)],
        flops=2 * macs,
        flops_in=2 * macs,
        flops_param=2 * macs,
        vec=m * n_out if bias else 0,
        attrs={"bias": bias},
    )


def _batch_norm(c: _Ctx) -> _Rule:
    training = bool(c.args[5])
    ch = int(c.vals[0].shape[1])
    m1 = c.b.add_aux(c.name, "save_mean", (ch,) if training else (0,), "float32")
    m2 = c.b.add_aux(c.name, "save_invstd", (ch,) if training else (0,), "float32")
    saved = [c.t(0)] + [c.args[i] for i in (1, 3, 4) if isinstance(c.args[i], str)] + [m1, m2]
    n = _numel(c.out.shape)
    return _Rule(
        OpKind.BATCH_NORM,
        saved=saved,
        aux=[m1, m2],
        vec=(7 if training else 2) * n,
        vec_bwd=8 * n,
        attrs={"training": training, "eps": float(c.args[7])},
    )


def _layer_norm(c: _Ctx) -> _Rule:
    shape = tuple(c.vals[0].shape)
    nd = len(c.args[1])
    stat = shape[: len(shape) - nd] + (1,) * nd
    m1 = c.b.add_aux(c.name, "mean", stat, "float32")
    m2 = c.b.add_aux(c.name, "rstd", stat, "float32")
    saved = [c.t(0)] + [a for a in c.args[2:4] if isinstance(a, str)] + [m1, m2]
    n = _numel(shape)
    return _Rule(
        OpKind.LAYER_NORM,
        saved=saved,
        aux=[m1, m2],
        vec=8 * n,
        vec_bwd=10 * n,
        attrs={"normalized_ndim": nd},
    )


def _unary(op: OpKind, save_result: bool, cost: int = 1) -> Callable[[_Ctx], _Rule]:
    def rule(c: _Ctx) -> _Rule:
        n = _numel(c.out.shape)
        return _Rule(op, saved=["<out>" if save_result else c.t(0)], vec=cost * n, vec_bwd=n)

    return rule


def _binary(op: OpKind) -> Callable[[_Ctx], _Rule]:
    def rule(c: _Ctx) -> _Rule:
        n = _numel(c.out.shape)
        if op is OpKind.ADD:
            other = c.args[1] if len(c.args) == 2 and not c.fx.kwargs else None
            num = isinstance(other, (int, float)) and math.isfinite(other)
            return _Rule(op, vec=n, vec_bwd=0, attrs={"scalar": float(other)} if num else {})
        other = c.args[1]
        if isinstance(other, str):  # tensor * tensor: each operand saved for the other's grad
            return _Rule(op, saved=[c.t(1), c.t(0)], vec=n, vec_bwd=2 * n)
        # By a Python number: autograd keeps the number itself, no tensor storage.
        return _Rule(op, vec=n, vec_bwd=n, attrs={"scalar": float(other)})

    return rule


def _max_pool2d(c: _Ctx) -> _Rule:
    idx = c.b.add_aux(c.name, "indices", tuple(c.out.shape), "int64")
    a = list(c.args) + [None] * (6 - len(c.args))
    k = tuple(a[1]) if isinstance(a[1], (list, tuple)) else (a[1], a[1])
    n = _numel(c.out.shape)
    return _Rule(
        OpKind.MAX_POOL2D,
        saved=[c.t(0), idx],
        aux=[idx],
        vec=n * k[0] * k[1],
        vec_bwd=n,
        attrs={"kernel": k, "stride": tuple(a[2] or k), "padding": tuple(a[3] or (0, 0))},
    )


def _avg_pool2d(c: _Ctx) -> _Rule:
    a = list(c.args) + [None] * (4 - len(c.args))
    k = tuple(a[1]) if isinstance(a[1], (list, tuple)) else (a[1], a[1])
    n = _numel(c.out.shape)
    return _Rule(
        OpKind.AVG_POOL2D,
        saved=[c.t(0)],
        vec=n * k[0] * k[1],
        vec_bwd=n * k[0] * k[1],
        attrs={"kernel": k, "stride": tuple(a[2] or k), "padding": tuple(a[3] or (0, 0))},
    )


def _adaptive_avg_pool2d(c: _Ctx) -> _Rule:
    out_hw = tuple(int(v) for v in c.args[1])
    n_in = _numel(c.vals[0].shape)
    if out_hw == (1, 1):  # eager lowers this to mean(-1, -2): only sizes are saved
        return _Rule(
            OpKind.ADAPTIVE_AVG_POOL2D, vec=n_in, vec_bwd=n_in, attrs={"output_size": out_hw}
        )
    return _Rule(
        OpKind.ADAPTIVE_AVG_POOL2D,
        saved=[c.t(0)],
        vec=n_in,
        vec_bwd=n_in,
        attrs={"output_size": out_hw},
    )


def _mean(c: _Ctx) -> _Rule:
    n_in = _numel(c.vals[0].shape)
    return _Rule(OpKind.MEAN, vec=n_in, vec_bwd=n_in, attrs={"dims": tuple(c.args[1])})


def view_attrs(
    target: Any, vals: list[Any], kwargs: dict[str, Any], out: torch.Tensor, index: int | None
) -> dict[str, Any]:
    """NOTE [ Views as index maps ]
    Every VIEW node (and a reshape that had to copy) records where its elements come from in
    its source tensor (the first tensor argument) laid out contiguously in its own logical
    order: `out[i_0, .., i_k] = src_flat[view_offset + sum_k i_k * view_stride[k]]`, with
    `view_size` the output's shape. The source's logical layout, not its storage, is the
    reference: every executor that materialises tensors (the C trainer's arena) stores each
    one contiguously, whatever strides PyTorch gave it. A contiguous source's map is read off
    the real (fake) tensors: the output's storage offset relative to the source's, and its
    strides. A non-contiguous source (a view of a view) is replaced by a contiguous meta
    tensor of its shape and the operator run again on it (`index`: the item of a multi-output
    view, unbind / chunk / split), which composes the two maps; a reshape that copies is the
    contiguous map. So transpose, permute, select, slice (with step), narrow, expand (stride
    0), squeeze, unsqueeze, the getitems of unbind / chunk / split and any other ATen view
    need no code of their own. Returns {} when the operator cannot be re-run on a meta tensor
    (an executor then refuses the node, naming it)."""
    src = next((v for v in vals if isinstance(v, torch.Tensor)), None)
    if src is None or not isinstance(out, torch.Tensor):
        return {}
    if (
        src.is_contiguous()
        and out.untyped_storage()._cdata == src.untyped_storage()._cdata
        and index is None
    ):
        offset, stride = out.storage_offset() - src.storage_offset(), tuple(out.stride())
    else:
        probe = torch.empty(tuple(src.shape), dtype=src.dtype, device="meta")
        args = [probe if v is src else v for v in vals]
        try:
            r = target(*args, **kwargs)
        except Exception:  # an operator that cannot run on meta tensors: no map
            return {}
        r = r[index] if index is not None else r
        if r.untyped_storage()._cdata != probe.untyped_storage()._cdata:
            offset, stride = 0, contiguous_strides(tuple(r.shape))  # a reshape that copied
        else:
            offset, stride = r.storage_offset(), tuple(r.stride())
    return {
        "view_offset": int(offset),
        "view_size": tuple(int(d) for d in out.shape),
        "view_stride": tuple(int(s) for s in stride),
    }


def _view(c: _Ctx) -> _Rule:
    kwargs = torch.fx.node.map_arg(dict(c.fx.kwargs), lambda n: n.meta.get("val"))
    attrs = view_attrs(c.fx.target, c.vals, kwargs, c.out, None)
    if c.b.storage_id(c.out) != c.b.storage_id(c.vals[0]):
        # a reshape that had to copy
        return _Rule(OpKind.COPY, vec=_numel(c.out.shape), attrs=attrs)
    return _Rule(OpKind.VIEW, attrs=attrs)


def _copy(c: _Ctx) -> _Rule:
    # `fn`: clone / contiguous / detach (no gradient flows through it) / _to_copy / ...
    return _Rule(OpKind.COPY, vec=_numel(c.out.shape), attrs={"fn": _fn(c)})


def _as_3d(c: _Ctx, i: int, shape3: tuple[int, int, int]) -> str:
    """matmul reshapes a batched operand to 3-D: a view when possible, else a saved copy."""
    v = c.vals[i]
    probe = torch.empty_strided(tuple(v.shape), tuple(v.stride()), device="meta")
    if probe.reshape(shape3)._base is not None or probe.is_contiguous():
        return c.t(i)
    return c.b.add_aux(c.name, f"operand{i}_3d", shape3, _dtype(v))


def _matmul(c: _Ctx) -> _Rule:
    a, b = c.vals[0], c.vals[1]
    if a.dim() < 2 or b.dim() < 2:
        raise UnsupportedOpError(
            f"node {c.name!r}: matmul with a 1-D operand ({tuple(a.shape)} @ {tuple(b.shape)}) "
            "is not supported; unsqueeze the vector to 2-D"
        )
    if b.dim() == 2:  # folds to mm on a (view of) 2-D a; b is usually a parameter
        m, k = _numel(a.shape[:-1]), int(a.shape[-1])
        n = int(b.shape[-1])
        macs = m * k * n
        return _Rule(
            OpKind.MATMUL,
            saved=[c.t(0), c.t(1)],
            flops=2 * macs,
            flops_in=4 * macs,
            attrs={"batched": False},
        )
    if tuple(a.shape[:-2]) != tuple(b.shape[:-2]):
        raise UnsupportedOpError(
            f"node {c.name!r}: matmul with broadcast batch dims {tuple(a.shape)} @ "
            f"{tuple(b.shape)} is not supported; expand the operands explicitly"
        )
    batch = _numel(a.shape[:-2])
    m, k, n = int(a.shape[-2]), int(a.shape[-1]), int(b.shape[-1])
    a3 = _as_3d(c, 0, (batch, m, k))
    b3 = _as_3d(c, 1, (batch, k, n))
    aux = [t for t in (a3, b3) if t not in c.args]
    macs = batch * m * k * n
    return _Rule(
        OpKind.MATMUL,
        saved=[a3, b3],
        aux=aux,
        flops=2 * macs,
        flops_in=4 * macs,
        vec=sum(_numel(c.b.tensors[t].shape) for t in aux),
        attrs={"batched": True},
    )


def _softmax(op: OpKind) -> Callable[[_Ctx], _Rule]:
    def rule(c: _Ctx) -> _Rule:
        n = _numel(c.out.shape)
        return _Rule(op, saved=["<out>"], vec=4 * n, vec_bwd=3 * n, attrs={"dim": int(c.args[1])})

    return rule


def _embedding(c: _Ctx) -> _Rule:
    """Records the options its backward depends on when they are not the default
    (`padding_idx`, `scale_grad_by_freq`): the C kernel refuses them."""
    a = list(c.args) + [-1, False, False][len(c.args) - 2 :]
    attrs = {"padding_idx": int(a[2])} if int(a[2]) != -1 else {}
    if a[3]:
        attrs["scale_grad_by_freq"] = True
    return _Rule(
        OpKind.EMBEDDING,
        saved=[c.t(1)],
        vec=_numel(c.out.shape),
        vec_bwd=_numel(c.out.shape),
        attrs=attrs,
    )


def _cross_entropy(c: _Ctx) -> _Rule:
    logits = c.vals[0]
    if logits.dim() != 2:
        raise UnsupportedOpError(
            f"node {c.name!r}: cross-entropy over logits of shape {tuple(logits.shape)}; "
            "edgetrain trains classifiers whose output is (batch, classes)"
        )
    lsm = c.b.add_aux(c.name, "log_probs", tuple(logits.shape), _dtype(logits))
    tw = c.b.add_aux(c.name, "total_weight", (), "float32")
    n = _numel(logits.shape)
    return _Rule(
        OpKind.CROSS_ENTROPY, saved=[lsm, c.t(1), tw], aux=[lsm, tw], vec=5 * n, vec_bwd=3 * n
    )


def _buffer_update(c: _Ctx) -> _Rule:
    return _Rule(OpKind.BUFFER_UPDATE)


LEGACY_RULES: dict[Any, Callable[[_Ctx], _Rule]] = {
    aten.conv2d.default: _conv2d,
    aten.linear.default: _linear,
    aten.batch_norm.default: _batch_norm,
    aten.layer_norm.default: _layer_norm,
    aten.relu.default: _unary(OpKind.RELU, save_result=True),
    aten.hardtanh.default: _unary(OpKind.HARDTANH, save_result=False),
    aten.hardswish.default: _unary(OpKind.HARDSWISH, save_result=False, cost=4),
    aten.gelu.default: _unary(OpKind.GELU, save_result=False, cost=8),
    aten.tanh.default: _unary(OpKind.TANH, save_result=True, cost=4),
    aten.add.Tensor: _binary(OpKind.ADD),
    aten.mul.Tensor: _binary(OpKind.MUL),
    aten.div.Tensor: _binary(OpKind.DIV),
    aten.max_pool2d.default: _max_pool2d,
    aten.avg_pool2d.default: _avg_pool2d,
    aten.adaptive_avg_pool2d.default: _adaptive_avg_pool2d,
    aten.mean.dim: _mean,
    aten.matmul.default: _matmul,
    aten.softmax.int: _softmax(OpKind.SOFTMAX),
    aten._softmax.default: _softmax(OpKind.SOFTMAX),
    aten.log_softmax.int: _softmax(OpKind.LOG_SOFTMAX),
    aten.embedding.default: _embedding,
    aten.cross_entropy_loss.default: _cross_entropy,
    aten.add_.Tensor: _buffer_update,
    aten.contiguous.default: _copy,
    aten.clone.default: _copy,
}
for _v in (
    "view.default",
    "reshape.default",
    "flatten.using_ints",
    "permute.default",
    "transpose.int",
    "t.default",
    "unsqueeze.default",
    "squeeze.dim",
    "expand.default",
    "select.int",
    "slice.Tensor",
    "_unsafe_view.default",
    "alias.default",
):
    _pkt, _ovl = _v.split(".")
    LEGACY_RULES[getattr(getattr(aten, _pkt), _ovl)] = _view


# -- category rules (NOTE [ Capture op set ] in _ops.py) ---------------------------------------
# Cost of one element of a point-wise op: transcendental functions take a few vector ops.
_TRANSCENDENTAL = frozenset(
    "sigmoid tanh exp exp2 expm1 log log1p log2 sqrt rsqrt erf pow silu gelu softplus elu "
    "mish hardswish hardsigmoid sin cos reciprocal".split()
)


def _fn(c: _Ctx) -> str:
    return (
        c.fx.target.__name__.split(".")[0] if hasattr(c.fx.target, "__name__") else str(c.fx.target)
    )


def _float_inputs(c: _Ctx) -> int:
    return sum(1 for v in c.vals if isinstance(v, torch.Tensor) and v.is_floating_point())


_SCALAR_FNS = frozenset({"mul", "div", "add", "sub"})  # by a Python number (no alpha)


def _elementwise(c: _Ctx) -> _Rule:
    n = _numel(c.out.shape)
    fn = _fn(c)
    cost = 4 if fn in _TRANSCENDENTAL else 1
    attrs: dict[str, Any] = {"fn": fn}
    if isinstance(c.fx.target, torch._ops.OpOverload) and torch.Tag.inplace in c.fx.target.tags:
        # eager GRU's `sigmoid_`, `add_`: the value of the out-of-place op `fn` without its
        # trailing underscore, written over its first operand (whose name the IR retires)
        attrs["inplace"] = True
    other = c.args[1] if len(c.args) == 2 and not c.fx.kwargs else None
    if fn in _SCALAR_FNS and isinstance(other, (int, float)) and math.isfinite(other):
        attrs["scalar"] = float(other)  # `mul.Scalar` (SDPA's math path scales q and k)
    return _Rule(OpKind.ELEMENTWISE, vec=cost * n, vec_bwd=cost * n * _float_inputs(c), attrs=attrs)


def _reduction(c: _Ctx) -> _Rule:
    n_in = _numel(c.vals[0].shape)
    return _Rule(OpKind.REDUCTION, vec=n_in, vec_bwd=n_in, attrs={"fn": _fn(c)})


def _index(c: _Ctx) -> _Rule:
    n = _numel(c.out.shape)
    attrs: dict[str, Any] = {"fn": _fn(c)}
    dim = _int_arg(c, "dim")
    if dim is not None:  # cat / stack / gather / index_select: the dimension, non-negative
        attrs["dim"] = dim % max(1, c.out.dim())
    return _Rule(OpKind.INDEX, vec=n, vec_bwd=n, attrs=attrs)


def _int_arg(c: _Ctx, name: str) -> int | None:
    """The operator's integer argument `name` (positional, keyword or its default)."""
    if not isinstance(c.fx.target, torch._ops.OpOverload):
        return None
    for k, a in enumerate(c.fx.target._schema.arguments):
        if a.name != name or str(a.type) != "int":
            continue
        if name in c.fx.kwargs:
            return int(c.fx.kwargs[name])
        if k < len(c.fx.args):
            return int(c.fx.args[k])
        return int(a.default_value) if a.has_default_value() else None
    return None


def _random(c: _Ctx) -> _Rule:
    return _Rule(OpKind.RANDOM, vec=_numel(c.out.shape), attrs={"fn": _fn(c)})


def _factory(c: _Ctx) -> _Rule:
    return _Rule(OpKind.FACTORY, vec=_numel(c.out.shape), attrs={"fn": _fn(c)})


def _loss(c: _Ctx) -> _Rule:
    n = _numel(c.vals[0].shape)
    return _Rule(OpKind.LOSS, vec=3 * n, vec_bwd=2 * n, attrs={"fn": _fn(c)})


def _convolution(c: _Ctx) -> _Rule:
    """aten.convolution (conv1d / conv2d with string padding lower to it)."""
    a = list(c.args) + [None] * (9 - len(c.args))
    w = c.vals[1]
    nd = w.dim() - 2
    if a[6] or nd not in (1, 2):
        raise UnsupportedOpError(
            f"{'transposed ' if a[6] else ''}convolution over {nd} spatial dims"
        )
    cout, cin_g, *k = (int(d) for d in w.shape)
    macs = _numel(c.out.shape) * cin_g * math.prod(k)
    return _Rule(
        OpKind.CONV2D if nd == 2 else OpKind.CONV1D,
        flops=2 * macs,
        flops_in=2 * macs,
        flops_param=2 * macs,
        vec=_numel(c.out.shape) if a[2] is not None else 0,
        attrs={
            "stride": tuple(int(v) for v in a[3]),
            "padding": tuple(int(v) for v in a[4]),
            "dilation": tuple(int(v) for v in a[5]),
            "groups": int(a[8] or 1),
            "kernel": tuple(k),
            "bias": a[2] is not None,
        },
    )


def _mm_like(c: _Ctx) -> _Rule:
    """mm / bmm / addmm / baddbmm: the two matrix operands are the last two tensor args."""
    tensors = [v for v in c.vals if isinstance(v, torch.Tensor)]
    names = [a for a in c.args if isinstance(a, str)]
    a, b = tensors[-2], tensors[-1]
    macs = _numel(a.shape) * int(b.shape[-1])
    b_is_param = c.b.tensors[names[-1]].role is TensorRole.PARAMETER
    return _Rule(
        OpKind.MATMUL,
        flops=2 * macs,
        flops_in=(2 if b_is_param else 4) * macs,
        flops_param=2 * macs if b_is_param else 0,
        vec=_numel(c.out.shape) if len(tensors) > 2 else 0,
        attrs={"batched": a.dim() == 3, "fn": _fn(c)},
    )


def _attention(c: _Ctx) -> _Rule:
    """Fused scaled-dot-product attention (eager CPU's flash kernel): two batched products."""
    q, k = c.vals[0], c.vals[1]
    macs = 2 * _numel(q.shape) * int(k.shape[-2])
    return _Rule(
        OpKind.MATMUL,
        flops=2 * macs,
        flops_in=4 * macs,
        vec=5 * _numel(q.shape[:-1]) * int(k.shape[-2]),
        vec_bwd=8 * _numel(q.shape[:-1]) * int(k.shape[-2]),
        attrs={"batched": True, "fn": _fn(c), "scalars": _scalars(c.args), **_sdpa_kwargs(c)},
    )


def _sdpa_kwargs(c: _Ctx) -> dict[str, Any]:
    """The keyword arguments a C kernel must honour (NOTE [ Attention in C ]): an explicit
    scale, and whether an attention mask is given (recorded only when set)."""
    kw = c.fx.kwargs
    out: dict[str, Any] = {}
    if isinstance(kw.get("scale"), (int, float)):
        out["scale"] = float(kw["scale"])
    if kw.get("attn_mask") is not None:
        out["masked"] = True
    return out


def _rnn_layer(c: _Ctx) -> _Rule:
    """A fused recurrent layer (eager CPU runs `nn.LSTM` as oneDNN's `mkldnn_rnn_layer`): its
    gate products are matmul-like, 2 FLOPs per MAC over input and hidden weights."""
    tensors = [v for v in c.vals if isinstance(v, torch.Tensor)]
    w_ih, w_hh = tensors[1], tensors[2]
    steps = _numel(c.vals[0].shape[:-1])
    macs = steps * (_numel(w_ih.shape) + _numel(w_hh.shape))
    return _Rule(
        OpKind.MATMUL,
        flops=2 * macs,
        flops_in=2 * macs,
        flops_param=2 * macs,
        vec=10 * _numel(c.out.shape),
        vec_bwd=10 * _numel(c.out.shape),
        # the non-tensor arguments, to run the kernel alone when the host is profiled
        attrs={"batched": True, "fn": _fn(c), "scalars": _scalars(c.args)},
    )


def _scalars(args: tuple) -> tuple:
    out = []
    for a in args:
        if isinstance(a, (bool, int, float)):
            out.append(a)
        elif isinstance(a, (list, tuple)) and all(isinstance(v, (bool, int, float)) for v in a):
            out.append(tuple(a))
    return tuple(out)


def _max_pool_with_indices(c: _Ctx) -> _Rule:
    a = list(c.args) + [None] * (6 - len(c.args))
    k = tuple(int(v) for v in a[1])
    k = k * 2 if len(k) == 1 else k
    stride = tuple(int(v) for v in (a[2] or k))
    padding = tuple(int(v) for v in (a[3] or (0, 0)))
    n = _numel(c.out.shape)
    return _Rule(
        OpKind.MAX_POOL2D,
        vec=n * k[0] * k[1],
        vec_bwd=n,
        attrs={
            "kernel": k,
            "stride": stride * 2 if len(stride) == 1 else stride,
            "padding": padding * 2 if len(padding) == 1 else padding,
        },
    )


def _batch_norm_functional(c: _Ctx) -> _Rule:
    n = _numel(c.out.shape)
    return _Rule(OpKind.BATCH_NORM, vec=7 * n, vec_bwd=8 * n, attrs={"training": True})


def _layer_norm_native(c: _Ctx) -> _Rule:
    n = _numel(c.out.shape)
    return _Rule(
        OpKind.LAYER_NORM, vec=8 * n, vec_bwd=10 * n, attrs={"normalized_ndim": len(c.args[1])}
    )


def _op(name: str) -> Any:
    pkt, _, ovl = name.partition(".")
    return getattr(getattr(aten, pkt), ovl or "default")


CATEGORY_RULES: dict[Any, Callable[[_Ctx], _Rule]] = {
    **{_op(n): _convolution for n in ("convolution", "_convolution")},
    **{_op(n): _mm_like for n in ("mm", "bmm", "addmm", "baddbmm")},
    _op("max_pool2d_with_indices"): _max_pool_with_indices,
    _op("_scaled_dot_product_flash_attention_for_cpu"): _attention,
    _op("mkldnn_rnn_layer"): _rnn_layer,
    _op("_native_batch_norm_legit_functional"): _batch_norm_functional,
    _op("native_batch_norm"): _batch_norm_functional,
    _op("native_layer_norm"): _layer_norm_native,
    _op("_log_softmax"): _softmax(OpKind.LOG_SOFTMAX),
    **{
        _op(n): _index
        for n in (
            "cat",
            "stack",
            "gather",
            "index.Tensor",
            "_unsafe_index.Tensor",
            "index_select",
            "scatter.src",
            "scatter.value",
            "scatter_add",
            "index_put",
            "constant_pad_nd",
            "upsample_nearest1d",
            "upsample_nearest2d",
            "upsample_nearest2d.vec",
            "upsample_bilinear2d",
            "upsample_bilinear2d.vec",
            "slice_scatter",
            "select_scatter",
            "embedding_dense_backward",
            "flip",
            "roll",
            "repeat",
            "tril",
            "triu",
        )
    },
    **{
        _op(n): _loss
        for n in (
            "mse_loss",
            "l1_loss",
            "smooth_l1_loss",
            "huber_loss",
            "binary_cross_entropy_with_logits",
            "binary_cross_entropy",
            "nll_loss_forward",
            "nll_loss",
        )
    },
    **{_op(n): _copy for n in ("_to_copy", "copy", "lift_fresh_copy", "detach")},
}


def _is_composite(op: Any) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd")


def category_rule(op: Any) -> Callable[[_Ctx], _Rule] | None:
    """The rule of `op` by its category: explicit table first, then ATen's own tags."""
    rule = CATEGORY_RULES.get(op)
    if rule is not None:
        return rule
    if not isinstance(op, torch._ops.OpOverload) or _is_composite(op):
        return None  # a composite is lowered to what it is made of (NOTE [ Capture op set ])
    tags = set(op.tags)
    if op.is_view or torch.Tag.inplace_view in tags:
        return _view
    if torch.Tag.pointwise in tags:
        return _elementwise
    if torch.Tag.reduction in tags:
        return _reduction
    if torch.Tag.nondeterministic_seeded in tags:
        return _random
    args = op._schema.arguments
    if not any(str(a.type) in ("Tensor", "Tensor?", "List[Tensor]") for a in args):
        return _factory
    if op._schema.name.endswith(("_like", "new_zeros", "new_ones", "new_full", "new_empty")):
        return _factory
    return None
