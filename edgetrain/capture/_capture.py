"""Capture: a PyTorch model and example input -> the plain-data IR (`edgetrain.ir.Graph`).

The model is wrapped with its loss (cross-entropy) and exported with `torch.export.export`,
which yields ATen operators at the level eager PyTorch dispatches them (`aten.conv2d`,
`aten.batch_norm`, `aten.linear`, ...). For each operator we record what eager autograd saves
for backward.

NOTE [ What autograd saves ]
    The rules in `_RULES` follow the `derivatives.yaml` formulas of PyTorch 2.13 for the eager
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
    storages autograd really saves.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edgetrain import validate
from edgetrain.errors import InvalidArgumentError, UnsupportedOpError
from edgetrain.ir import SCHEMA_VERSION, Graph, Node, OpKind, Param, Tensor, TensorRole
from edgetrain.storage import cache_dir, write_text_atomic

_SOURCE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]

aten = torch.ops.aten


class _WithLoss(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(x), y)


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

    def storage_id(self, val: torch.Tensor) -> str:
        key = val.untyped_storage()._cdata
        if key not in self.storages:
            self.storages[key] = f"s{len(self.storages)}"
        return self.storages[key]

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
        nbytes = _numel(shape) * {"float32": 4, "float64": 8, "int64": 8}[dtype]
        sid = f"s{len(self.storages)}"
        self.storages[-len(self.storages) - 1] = sid  # reserve a unique id
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
            return _Rule(op, vec=n, vec_bwd=0)
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


def _view(c: _Ctx) -> _Rule:
    if c.b.storage_id(c.out) != c.b.storage_id(c.vals[0]):
        return _Rule(OpKind.COPY, vec=_numel(c.out.shape))  # reshape that had to copy
    return _Rule(OpKind.VIEW)


def _copy(c: _Ctx) -> _Rule:
    return _Rule(OpKind.COPY, vec=_numel(c.out.shape))


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
    return _Rule(
        OpKind.EMBEDDING, saved=[c.t(1)], vec=_numel(c.out.shape), vec_bwd=_numel(c.out.shape)
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


_RULES: dict[Any, Callable[[_Ctx], _Rule]] = {
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
    _RULES[getattr(getattr(aten, _pkt), _ovl)] = _view

_IGNORED = {aten._assert_tensor_metadata.default, aten.sym_size.int}

SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(str(k) for k in _RULES))


def _resolve_args(fx: torch.fx.Node, b: _Builder) -> tuple[list[Any], list[Any]]:
    names, vals = [], []
    for a in fx.args:
        if isinstance(a, torch.fx.Node):
            names.append(b.fx_to_tensor.get(a.name))
            vals.append(a.meta.get("val"))
        else:
            names.append(a)
            vals.append(a)
    return names, vals


def _module_path(fx: torch.fx.Node) -> str:
    stack = fx.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.removeprefix("model.").removeprefix("model")


def _fingerprint(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    batch_size: int,
    num_classes: int | None,
    name: str,
) -> str:
    """What the captured graph depends on: structure, forward code, shapes, flags, versions."""
    h = hashlib.sha256()
    for part in (
        torch.__version__,
        str(SCHEMA_VERSION),
        _SOURCE_HASH,
        name,
        str(batch_size),
        str(num_classes),
        str(tuple(example_input.shape)),
        str(example_input.dtype),
        repr(model),
    ):
        h.update(part.encode())
        h.update(b"\0")
    for n, p in model.named_parameters():
        h.update(f"{n}{tuple(p.shape)}{p.dtype}{p.requires_grad}".encode())
    for n, b in model.named_buffers():
        h.update(f"{n}{tuple(b.shape)}{b.dtype}".encode())
    for m in model.modules():
        h.update(f"{type(m).__module__}.{type(m).__qualname__}{m.training}".encode())
        try:
            h.update(inspect.getsource(type(m).forward).encode())
        except (OSError, TypeError):
            h.update(b"<no source>")
    return h.hexdigest()[:32]


def capture(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    *,
    batch_size: int = 1,
    num_classes: int | None = None,
    name: str = "model",
    cache: bool = True,
) -> Graph:
    """Export `model` with a cross-entropy loss at `batch_size` and return its IR graph.

    `example_input` has batch size 1 (its first dimension); it is repeated to `batch_size`.
    The model is captured in training mode, except batch-norm layers the caller has put in
    eval mode (frozen: running statistics, as `plan(freeze_batch_norm=True)` does); its state
    and modes are not changed. With `cache`, the IR is
    kept as JSON under the cache directory (`EDGETRAIN_CACHE_DIR`), keyed by a fingerprint of
    the model's structure, forward code, shapes, trainable flags and the torch version, so a
    second capture of the same model skips torch.export (whose first import alone takes ~2.5 s).
    """
    batch_size = validate.batch_size(batch_size)
    if not isinstance(example_input, torch.Tensor) or example_input.dim() == 0:
        raise InvalidArgumentError(
            "example_input must be a tensor with a leading batch dimension of 1, got "
            f"{type(example_input).__name__} {getattr(example_input, 'shape', '')}"
        )
    if example_input.shape[0] != 1:
        raise InvalidArgumentError(
            f"example_input must have batch size 1 (first dimension), got shape "
            f"{tuple(example_input.shape)}; pass example_input[:1]"
        )
    path = None
    if cache:
        key = _fingerprint(model, example_input, batch_size, num_classes, name)
        path = cache_dir() / "graphs" / f"{key}.json"
        if path.exists():
            try:
                return Graph.from_json(path.read_text())
            except (ValueError, KeyError, TypeError):
                pass  # a stale or torn entry: capture again and overwrite it
    graph = _capture(model, example_input, batch_size, num_classes, name)
    if path is not None:
        write_text_atomic(graph.to_json(), path)
    return graph


def _capture(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    batch_size: int,
    num_classes: int | None,
    name: str,
) -> Graph:
    modes = [(m, m.training) for m in model.modules()]
    # Batch norm the caller put in eval mode is frozen (running statistics) and stays so.
    frozen_bn = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not m.training
    ]
    x = example_input.expand(batch_size, *example_input.shape[1:]).contiguous()
    # Capturing must not change BN running stats or num_batches_tracked: snapshot and restore.
    state = {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}
    try:
        model.train()
        for m in frozen_bn:
            m.eval()
        with torch.no_grad():
            logits = model(x)
        if logits.dim() != 2:
            raise UnsupportedOpError(
                f"model output has shape {tuple(logits.shape)}; edgetrain trains classifiers "
                "whose output is (batch, classes) — add a pooling + linear head"
            )
        classes = num_classes or int(logits.shape[1])
        y = torch.arange(batch_size, dtype=torch.long) % classes
        ep = torch.export.export(_WithLoss(model), (x, y))
    except UnsupportedOpError:
        raise
    except Exception as e:  # torch.export has many failure types; re-raise with guidance
        raise UnsupportedOpError(
            f"torch.export could not capture the model: {type(e).__name__}: {str(e)[:500]}. "
            "Remove data-dependent Python control flow and non-tensor outputs from forward()."
        ) from e
    finally:
        model.load_state_dict(state)
        for m, t in modes:
            m.training = t
    return _to_ir(ep, model, name, batch_size)


def _to_ir(ep, model: torch.nn.Module, name: str, batch_size: int) -> Graph:
    sig = ep.graph_signature
    to_param = {k: v.removeprefix("model.") for k, v in sig.inputs_to_parameters.items()}
    to_buffer = {k: v.removeprefix("model.") for k, v in sig.inputs_to_buffers.items()}
    named = dict(model.named_parameters())
    b = _Builder()
    params: list[Param] = []
    user_inputs: list[str] = []
    loss_name = None
    for fx in ep.graph.nodes:
        if fx.op == "placeholder":
            val = fx.meta["val"]
            if fx.name in to_param:
                fqn = to_param[fx.name]
                t = b.add_tensor(fqn, val, TensorRole.PARAMETER, None)
                params.append(
                    Param(
                        fqn,
                        t.name,
                        t.shape,
                        t.dtype,
                        t.nbytes,
                        bool(named[fqn].requires_grad),
                        fqn.rpartition(".")[0],
                    )
                )
            elif fx.name in to_buffer:
                t = b.add_tensor(to_buffer[fx.name], val, TensorRole.BUFFER, None)
            else:
                role = TensorRole.INPUT if not user_inputs else TensorRole.TARGET
                t = b.add_tensor(fx.name if role is TensorRole.INPUT else "target", val, role, None)
                user_inputs.append(t.name)
            b.fx_to_tensor[fx.name] = t.name
            continue
        if fx.op == "output":
            loss_name = b.fx_to_tensor[fx.args[0][0].name]
            continue
        if fx.op != "call_function" or fx.target in _IGNORED:
            continue
        rule_fn = _RULES.get(fx.target)
        if rule_fn is None:
            raise UnsupportedOpError(
                f"operator {fx.target} at node {fx.name!r} (module {_module_path(fx) or '<top>'!r}) "
                "is not supported by edgetrain's cost model. Supported: conv2d (incl. grouped/"
                "depthwise), batch_norm, relu, relu6/hardtanh, hardswish, gelu, tanh, add, mul/div, "
                "max/avg/adaptive-avg pooling, mean, linear, flatten/view/reshape/permute/"
                "transpose, matmul, softmax, layer_norm, embedding, cross_entropy. Rewrite the "
                "module with these ops, or file an issue naming the op."
            )
        out = fx.meta.get("val")
        if not isinstance(out, torch.Tensor):
            raise UnsupportedOpError(
                f"operator {fx.target} at node {fx.name!r} returns {type(out).__name__}, not one "
                "tensor; edgetrain supports single-output operators"
            )
        args, vals = _resolve_args(fx, b)
        ctx = _Ctx(fx.name, fx, b, out, args, vals)
        rule = rule_fn(ctx)
        is_loss = rule.op is OpKind.CROSS_ENTROPY
        role = (
            TensorRole.LOSS
            if is_loss
            else (TensorRole.BUFFER if rule.op is OpKind.BUFFER_UPDATE else TensorRole.ACTIVATION)
        )
        t = b.add_tensor(fx.name, out, role, fx.name)
        b.fx_to_tensor[fx.name] = t.name
        saved = tuple(t.name if s == "<out>" else s for s in rule.saved)
        inputs = tuple(a for a in args if isinstance(a, str) and a in b.tensors)
        b.nodes.append(
            Node(
                name=fx.name,
                op=rule.op,
                aten=str(fx.target),
                inputs=inputs,
                output=t.name,
                aux_outputs=tuple(rule.aux),
                saved=saved,
                module=_module_path(fx),
                flops_forward=rule.flops,
                flops_backward_input=rule.flops_in,
                flops_backward_params=rule.flops_param,
                vector_ops_forward=rule.vec,
                vector_ops_backward=rule.vec_bwd,
                attrs=tuple(sorted((k, v) for k, v in rule.attrs.items())),
            )
        )
    assert loss_name is not None
    return Graph(
        model=name,
        batch_size=batch_size,
        nodes=tuple(b.nodes),
        tensors=tuple(b.tensors.values()),
        params=tuple(params),
        inputs=(user_inputs[0],),
        target=user_inputs[1],
        loss=loss_name,
    )
