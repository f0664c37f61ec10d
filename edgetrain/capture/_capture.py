"""Capture: a PyTorch model, its loss and an example input -> the plain-data IR
(`edgetrain.ir.Graph`).

The model is wrapped with its loss and exported with `torch.export.export`, which yields ATen
operators at the level eager PyTorch dispatches them (`aten.conv2d`, `aten.batch_norm`,
`aten.linear`, `aten.gru.input`, ...). An operator with a legacy rule becomes one IR node
(NOTE [ What autograd saves ] in `_rules.py`); any other is lowered to primitives (NOTE
[ Capture op set ] in `_decompose.py`) whose saved tensors come from eager autograd (NOTE
[ Saved tensors from eager autograd ] in `_eager.py`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import operator
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from edgetrain import validate
from edgetrain.capture._decompose import lower
from edgetrain.capture._eager import EagerSaves, eager_saves
from edgetrain.capture._losses import example_target, loss_function, loss_key
from edgetrain.capture._rules import (
    LEGACY_RULES,
    _Builder,
    _Ctx,
    _Rule,
    category_rule,
    view_attrs,
)
from edgetrain.errors import InvalidArgumentError, UnsupportedOpError
from edgetrain.ir import SCHEMA_VERSION, Graph, Node, OpKind, Param, TensorRole
from edgetrain.storage import cache_dir, write_text_atomic

_SOURCE_HASH = hashlib.sha256(
    b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py")))
).hexdigest()[:16]

aten = torch.ops.aten
_IGNORED = {aten._assert_tensor_metadata.default, aten.sym_size.int, aten.copy_.default}
_NON_DIFF = {OpKind.BUFFER_UPDATE, OpKind.RANDOM, OpKind.FACTORY}
_FLOATS = {"float32", "float64", "float16", "bfloat16"}

SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(str(k) for k in LEGACY_RULES))
SUPPORTED_CATEGORIES = (
    "convolution (1-D, 2-D, grouped/depthwise, dilated)",
    "linear and matmul-like (mm, bmm, addmm, baddbmm, matmul)",
    "normalisation (batch norm, layer norm)",
    "pooling (max/avg 1-D and 2-D, adaptive average)",
    "element-wise (activations, arithmetic, comparisons, where, clamp)",
    "reductions (mean, sum, amax, var)",
    "views/aliases (view, reshape, permute, transpose, chunk, split, unbind, unflatten)",
    "indexing/scatter/cat/stack/pad/upsample, embedding",
    "random (dropout masks), factories (zeros, full, arange)",
    "softmax, log-softmax, losses (cross-entropy, mse, l1, smooth-l1, bce)",
    "composites made of these (relu6, GRU, LSTM, multi-head and scaled-dot-product attention)",
)


class _WithLoss(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, loss_fn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model(x), y)


def _source_line(fx: torch.fx.Node) -> str:
    """The innermost frame of the user's code in the node's stack trace (file:line: code)."""
    trace = fx.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in \S+\n\s*(.*)', trace)
    torch_dir = str(Path(torch.__file__).parent)
    user = [f for f in frames if not f[0].startswith(torch_dir)]
    if not user:
        return "<unknown line>"
    path, line, code = user[-1]
    return f"{path}:{line}: {code.strip()}"


def _module_path(fx: torch.fx.Node) -> str:
    stack = fx.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.removeprefix("model.").removeprefix("model")


def _tensor_names(obj: Any) -> list[str]:
    return [a for a in pytree.tree_leaves(obj) if isinstance(a, str)]


@dataclass
class _Walk:
    """State of the walk over the exported program."""

    b: _Builder
    eager: EagerSaves | None
    rg: set[str] = field(default_factory=set)  # IR tensors that require grad (full training)
    outs: dict[str, list[str | None]] = field(default_factory=dict)  # fx node -> IR outputs
    split_views: dict[str, str] = field(default_factory=dict)  # multi-output view -> its base
    split_calls: dict[str, tuple] = field(default_factory=dict)  # ... -> (op, args, kwargs)
    by_ptr: dict[int, str] = field(default_factory=dict)  # eager storage address -> IR tensor
    missing: list[str] = field(default_factory=list)

    def resolve(self, fx: torch.fx.Node, mapping: dict[str, str]) -> tuple[list, list]:
        """fx args with nodes replaced by IR tensor names, and by their fake values."""
        names = torch.fx.node.map_arg(list(fx.args), lambda n: mapping.get(n.name))
        vals = torch.fx.node.map_arg(list(fx.args), lambda n: n.meta.get("val"))
        return list(names), list(vals)


def _emit(
    w: _Walk, fx: torch.fx.Node, name: str, module: str, mapping: dict[str, str], rule_fn
) -> Node | None:
    """One IR node for `fx` (an exported or a lowered node) through `rule_fn`."""
    b = w.b
    args, vals = w.resolve(fx, mapping)
    out = fx.meta.get("val")
    extra: list[Any] = []
    if isinstance(out, (list, tuple)):
        mapping[f"<multi>{fx.name}"] = name
        if isinstance(fx.target, torch._ops.OpOverload) and fx.target.is_view:
            w.split_views[name] = _tensor_names(args)[0]  # getitems become views of the base
            kwargs = torch.fx.node.map_arg(dict(fx.kwargs), lambda n: n.meta.get("val"))
            w.split_calls[name] = (fx.target, vals, kwargs)
            return None
        out, extra = out[0], list(out[1:])
    if not isinstance(out, torch.Tensor):
        return None
    rule: _Rule = rule_fn(_Ctx(name, fx, b, out, args, vals))
    t = b.add_tensor(name, out, TensorRole.ACTIVATION, name)
    mapping[fx.name] = t.name
    aux = list(rule.aux)
    outs: list[str | None] = [t.name]
    for k, v in enumerate(extra):
        if isinstance(v, torch.Tensor):
            aux.append(b.add_tensor(f"{name}.out{k + 1}", v, TensorRole.AUX, name).name)
            outs.append(aux[-1])
        else:
            outs.append(None)
    w.outs[name] = outs
    inputs = tuple(dict.fromkeys(a for a in _tensor_names(args) if a in b.tensors))
    if rule.op not in _NON_DIFF and t.dtype in _FLOATS and any(i in w.rg for i in inputs):
        w.rg.add(t.name)
    # a multi-output op's other float results (an LSTM layer's h_n and c_n) carry gradients
    # like its first one (`Graph.requires_grad_for` reads them from the "results" attribute)
    results = tuple(o for o, v in zip(outs[1:], extra) if o is not None and _dtype_of(v) in _FLOATS)
    attrs = dict(rule.attrs)
    if results and rule.op not in _NON_DIFF:
        attrs["results"] = results
        if t.name in w.rg:
            w.rg.update(results)
    node = Node(
        name=name,
        op=rule.op,
        aten=str(fx.target),
        inputs=inputs,
        output=t.name,
        aux_outputs=tuple(aux),
        saved=tuple(t.name if s == "<out>" else s for s in rule.saved),
        module=module,
        flops_forward=rule.flops,
        flops_backward_input=rule.flops_in,
        flops_backward_params=rule.flops_param,
        vector_ops_forward=rule.vec,
        vector_ops_backward=rule.vec_bwd,
        attrs=tuple(sorted((k, v) for k, v in attrs.items())),
    )
    b.nodes.append(node)
    return node


def _dtype_of(v: torch.Tensor) -> str:
    return str(v.dtype).removeprefix("torch.")


def _getitem(w: _Walk, fx: torch.fx.Node, name: str, module: str, mapping: dict[str, str]):
    """`out[i]` of a multi-output op: its IR output, or a view of a split's base."""
    src, idx = fx.args[0].name, int(fx.args[1])
    src_ir = mapping.get(f"<multi>{src}", src)
    if src_ir in w.split_views:
        base = w.split_views[src_ir]
        val = fx.meta["val"]
        t = w.b.add_tensor(name, val, TensorRole.ACTIVATION, name)
        mapping[fx.name] = t.name
        if base in w.rg and val.is_floating_point():
            w.rg.add(t.name)
        target, vals, kwargs = w.split_calls[src_ir]
        attrs = tuple(sorted(view_attrs(target, vals, kwargs, val, idx).items()))
        w.b.nodes.append(
            Node(name, OpKind.VIEW, "aten.getitem", (base,), t.name, module=module, attrs=attrs)
        )
        return
    outs = w.outs.get(src_ir, [])
    got = outs[idx] if idx < len(outs) else None  # None: its producer is reported missing
    if got is not None:
        mapping[fx.name] = got


def _rule_for(target: Any):
    """A lowered primitive's rule. In-place point-wise ops (eager GRU's `sigmoid_`, `add_`)
    are point-wise ops whose output shares its input's storage (as in eager mode)."""
    if isinstance(target, torch._ops.OpOverload) and torch.Tag.inplace in target.tags:
        return category_rule(target)
    return LEGACY_RULES.get(target) or category_rule(target)


def _where(fx: torch.fx.Node) -> str:
    return f"node {fx.name!r} (module {_module_path(fx) or '<top>'!r}, {_source_line(fx)})"


def _lower_exported(w: _Walk, fx: torch.fx.Node) -> list[int]:
    """Lower one exported node to primitives; returns the indices of the IR nodes made."""
    b = w.b
    module = _module_path(fx)
    first = len(b.nodes)
    rule_fn = category_rule(fx.target)
    if rule_fn is not None:  # a primitive already: one node
        try:
            _emit(w, fx, fx.name, module, b.fx_to_tensor, rule_fn)
        except UnsupportedOpError as e:
            w.missing.append(f"{fx.target} at {_where(fx)}: {e}")
        return list(range(first, len(b.nodes)))
    leaves = [a for a in pytree.tree_leaves((fx.args, fx.kwargs)) if isinstance(a, torch.fx.Node)]
    names = [b.fx_to_tensor.get(a.name) for a in leaves]
    vals = [a.meta.get("val") for a in leaves]
    args = torch.fx.node.map_arg(fx.args, lambda n: n.meta.get("val"))
    kwargs = torch.fx.node.map_arg(fx.kwargs, lambda n: n.meta.get("val"))
    try:
        gm = lower(fx.target, args, kwargs, vals, [n in w.rg for n in names])
    except Exception as e:  # make_fx raises many types; report with the node
        w.missing.append(
            f"{fx.target} at {_where(fx)}: could not be lowered ({type(e).__name__}: "
            f"{str(e)[:200]})"
        )
        return []
    local: dict[str, str] = {}
    b.local = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for ph, name in zip(placeholders, names):
        local[ph.name] = name
        if name is not None and isinstance(ph.meta.get("val"), torch.Tensor):
            b.local[ph.meta["val"].untyped_storage()._cdata] = b.tensors[name].storage
    try:
        for sub in gm.graph.nodes:
            if sub.op == "output":
                flat = pytree.tree_leaves(sub.args[0])
                w.outs[fx.name] = [
                    local.get(n.name) if isinstance(n, torch.fx.Node) else None for n in flat
                ]
                b.fx_to_tensor[f"<multi>{fx.name}"] = fx.name
                if w.outs[fx.name] and w.outs[fx.name][0] is not None:
                    b.fx_to_tensor[fx.name] = w.outs[fx.name][0]
            elif sub.op == "get_attr":
                val = getattr(gm, sub.target)
                t = b.add_tensor(f"{fx.name}.{sub.name}", val, TensorRole.BUFFER, None)
                local[sub.name] = t.name
            elif sub.op == "call_function":
                _lower_one(w, fx, sub, module, local)
    finally:
        b.local = None
    for i in range(first, len(b.nodes)):  # NOTE [ A lowered composite's held locals ]
        attrs = _with_attr(b.nodes[i].attrs, "composite", fx.name)
        # the ATen operator the model called (`aten.dropout.default`): the lean backward's
        # rules key on it (NOTE [ Lean saved tensors ])
        attrs = _with_attr(attrs, "composite_op", str(fx.target))
        b.nodes[i] = dataclasses.replace(b.nodes[i], attrs=attrs)
    # later exported nodes see this node's output through the exported program's fake tensors:
    # their storage is the storage of the lowering's output (views of it stay views)
    val = fx.meta.get("val")
    for v, t in zip(val if isinstance(val, (list, tuple)) else [val], w.outs.get(fx.name, [])):
        if isinstance(v, torch.Tensor) and t is not None:
            b.storages.setdefault(v.untyped_storage()._cdata, b.tensors[t].storage)
    return list(range(first, len(b.nodes)))


def _lower_one(w: _Walk, fx: torch.fx.Node, sub: torch.fx.Node, module: str, local) -> None:
    name = f"{fx.name}.{sub.name}"
    if sub.target is operator.getitem:
        _getitem(w, sub, name, module, local)
        return
    if sub.target in _IGNORED or sub.meta.get("val") is None:
        return
    rule_fn = _rule_for(sub.target)
    if rule_fn is None:
        w.missing.append(f"{sub.target} (lowered from {fx.target}) at {_where(fx)}")
        return
    try:
        _emit(w, sub, name, module, local, rule_fn)
    except UnsupportedOpError as e:
        w.missing.append(f"{sub.target} (lowered from {fx.target}) at {_where(fx)}: {e}")


def _attribute(w: _Walk, fx: torch.fx.Node, made: list[int]) -> None:
    """Saved tensors of a lowered exported node from eager autograd (NOTE in `_eager.py`)."""
    b, rec = w.b, w.eager
    assert rec is not None
    for i in made:  # the lowering's own guesses are replaced by what eager saved
        b.nodes[i] = dataclasses.replace(
            b.nodes[i], saved=(), attrs=_with_attr(b.nodes[i].attrs, "saved_by", "eager")
        )
    rg_nodes = [i for i in made if b.nodes[i].output in w.rg]
    if not rg_nodes:
        return  # autograd recorded nothing
    before = {t.storage for n in b.nodes[: made[0]] for t in map(b.tensors.get, n.inputs) if t}
    fresh: dict[str, tuple[str, int]] = {}  # storage first made by the lowering -> tensor, node
    for i in made:
        for t in (b.nodes[i].output, *b.nodes[i].aux_outputs):
            sid = b.tensors[t].storage
            if sid not in before:
                fresh.setdefault(sid, (t, i))
    own = dict(zip(rec.outputs.get(fx.name, []), w.outs.get(fx.name) or [None]))
    taken: set[str] = set()
    for r in {r.ptr: r for r in rec.saved.get(fx.name, [])}.values():
        name = w.by_ptr.get(r.ptr) or own.get(r.ptr)
        if name is None:
            name = next(
                (
                    t
                    for sid, (t, _) in fresh.items()
                    if sid not in taken
                    and b.tensors[t].storage_bytes == r.nbytes
                    and b.tensors[t].dtype == r.dtype
                ),
                None,
            )
        if name is None:
            i = rg_nodes[0]
            name = b.add_aux(b.nodes[i].name, f"saved{len(taken)}", (r.numel,), r.dtype)
            b.nodes[i] = dataclasses.replace(
                b.nodes[i], aux_outputs=b.nodes[i].aux_outputs + (name,)
            )
            fresh[b.tensors[name].storage] = (name, i)
        sid = b.tensors[name].storage
        taken.add(sid)
        i = fresh[sid][1] if sid in fresh else rg_nodes[0]
        i = i if i in rg_nodes else rg_nodes[0]
        b.nodes[i] = dataclasses.replace(b.nodes[i], saved=b.nodes[i].saved + (name,))


def _with_attr(attrs: tuple, key: str, value: Any) -> tuple:
    d = dict(attrs)
    d[key] = value
    return tuple(sorted(d.items()))


def _register_outputs(w: _Walk, fx: torch.fx.Node) -> None:
    """Eager storage addresses of `fx`'s outputs -> their IR tensors (first producer wins)."""
    if w.eager is None:
        return
    ptrs = w.eager.outputs.get(fx.name, [])
    names = w.outs.get(fx.name) or [w.b.fx_to_tensor.get(fx.name)]
    for p, name in zip(ptrs, names):
        if p is not None and name is not None:
            w.by_ptr.setdefault(p, name)


def _placeholder(w: _Walk, fx: torch.fx.Node, sig, named: dict, params: list, users: list) -> None:
    b = w.b
    val = fx.meta["val"]
    if fx.name in sig["param"]:
        fqn = sig["param"][fx.name]
        t = b.add_tensor(fqn, val, TensorRole.PARAMETER, None)
        trainable = bool(named[fqn].requires_grad)
        params.append(
            Param(fqn, t.name, t.shape, t.dtype, t.nbytes, trainable, fqn.rpartition(".")[0])
        )
        if trainable:
            w.rg.add(t.name)
    elif fx.name in sig["buffer"]:
        t = b.add_tensor(sig["buffer"][fx.name], val, TensorRole.BUFFER, None)
    elif fx.name in sig["constant"]:
        t = b.add_tensor(sig["constant"][fx.name], val, TensorRole.BUFFER, None)
    else:
        role = TensorRole.INPUT if not users else TensorRole.TARGET
        t = b.add_tensor(fx.name if role is TensorRole.INPUT else "target", val, role, None)
        users.append(t.name)
    b.fx_to_tensor[fx.name] = t.name
    if w.eager is not None and fx.name in w.eager.placeholders:
        w.by_ptr.setdefault(w.eager.placeholders[fx.name], t.name)


def _signature(ep) -> dict[str, dict[str, str]]:
    sig = ep.graph_signature

    def strip(d):
        return {k: v.removeprefix("model.") for k, v in d.items()}

    return {
        "param": strip(sig.inputs_to_parameters),
        "buffer": strip(sig.inputs_to_buffers),
        "constant": dict(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {}),
    }


def needs_lowering(ep) -> bool:
    """Whether any exported operator lacks a legacy rule (then eager autograd is consulted)."""
    return any(
        fx.op == "call_function"
        and fx.target not in LEGACY_RULES
        and fx.target not in _IGNORED
        and fx.target is not operator.getitem
        for fx in ep.graph.nodes
    )


def _legacy(w: _Walk, fx: torch.fx.Node) -> None:
    try:
        _emit(w, fx, fx.name, _module_path(fx), w.b.fx_to_tensor, LEGACY_RULES[fx.target])
    except UnsupportedOpError as e:
        w.missing.append(f"{fx.target} at {_where(fx)}: {e}")


def _to_ir(ep, model: torch.nn.Module, name: str, batch_size: int, eager) -> Graph:
    sig = _signature(ep)
    named = dict(model.named_parameters())
    w = _Walk(_Builder(), eager)
    params: list[Param] = []
    user_inputs: list[str] = []
    loss_name = None
    for fx in ep.graph.nodes:
        if fx.op == "placeholder":
            _placeholder(w, fx, sig, named, params, user_inputs)
        elif fx.op == "output":
            loss_name = w.b.fx_to_tensor.get(fx.args[0][0].name)
        elif fx.op != "call_function" or fx.target in _IGNORED:
            continue
        elif fx.target is operator.getitem:
            _getitem(w, fx, fx.name, _module_path(fx), w.b.fx_to_tensor)
        elif fx.target in LEGACY_RULES:
            _legacy(w, fx)
            _register_outputs(w, fx)
        else:
            made = _lower_exported(w, fx)
            if w.eager is not None and made:
                _attribute(w, fx, made)
            _register_outputs(w, fx)
    _raise_missing(w.missing)
    assert loss_name is not None
    b = w.b
    for n in b.nodes:  # the step's output is the loss; a buffer update is state
        role = TensorRole.LOSS if n.output == loss_name else None
        role = TensorRole.BUFFER if n.op is OpKind.BUFFER_UPDATE else role
        if role is not None:
            b.tensors[n.output] = dataclasses.replace(b.tensors[n.output], role=role)
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


def _raise_missing(missing: list[str]) -> None:
    if not missing:
        return
    lines = "\n".join(f"  - {m}" for m in dict.fromkeys(missing))
    raise UnsupportedOpError(
        f"{len(missing)} operator(s) of the model have no cost rule in edgetrain:\n{lines}\n"
        f"Supported: {'; '.join(SUPPORTED_CATEGORIES)}. Rewrite the module at the line shown "
        "with supported operations (or a composite of them), or file an issue naming the "
        "operator; everything above is reported at once."
    )


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
    loss="cross-entropy",
    target_example: torch.Tensor | None = None,
) -> Graph:
    """Export `model` with its loss at `batch_size` and return its IR graph.

    `example_input` has batch size 1 (its first dimension); it is repeated to `batch_size`.
    `loss` is "cross-entropy" (class indices as targets; the output must be (batch, classes)),
    "mse", "bce" (with logits), "l1", "smooth-l1" (targets of the output's shape) or a callable
    `loss_fn(output, target)` (its target: `target_example`, batch size 1, or by default a
    float tensor of the output's shape). The loss is captured with the model, so its saved
    tensors and FLOPs are costed.
    The model is captured in training mode, except batch-norm layers the caller has put in
    eval mode (frozen: running statistics, as `plan(freeze_batch_norm=True)` does); its state
    and modes are not changed. With `cache`, the IR is
    kept as JSON under the cache directory (`EDGETRAIN_CACHE_DIR`), keyed by a fingerprint of
    the model's structure, forward code, shapes, trainable flags, loss and the torch version,
    so a second capture of the same model skips torch.export (whose first import alone takes
    ~2.5 s).
    """
    batch_size = validate.batch_size(batch_size)
    loss_function(loss)  # an unknown loss name fails before any work
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
        if not (isinstance(loss, str) and loss.lower() == "cross-entropy"):
            t = target_example
            extra = f"{loss_key(loss)}|{None if t is None else (tuple(t.shape), t.dtype)}"
            key = hashlib.sha256(f"{key}|{extra}".encode()).hexdigest()[:32]
        path = cache_dir() / "graphs" / f"{key}.json"
        if path.exists():
            try:
                return Graph.from_json(path.read_text())
            except (ValueError, KeyError, TypeError):
                pass  # a stale or torn entry: capture again and overwrite it
    graph = _capture(model, example_input, batch_size, num_classes, name, loss, target_example)
    if path is not None:
        write_text_atomic(graph.to_json(), path)
    return graph


def _capture(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    batch_size: int,
    num_classes: int | None,
    name: str,
    loss="cross-entropy",
    target_example: torch.Tensor | None = None,
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
    eager = None
    try:
        model.train()
        for m in frozen_bn:
            m.eval()
        with torch.no_grad():
            out = model(x)
        if not isinstance(out, torch.Tensor):
            raise UnsupportedOpError(
                f"model output is {type(out).__name__}, not one tensor; return the tensor the "
                "loss is computed on"
            )
        y = example_target(loss, out, num_classes, target_example)
        wrapped = _WithLoss(model, loss_function(loss))
        with warnings.catch_warnings():
            # nn.GRU / nn.LSTM re-assign their `_flat_weights` list on every call; export
            # warns that they are not buffers, which says nothing about the user's model
            warnings.filterwarnings("ignore", message=r"The tensor attributes .*_flat_weights")
            ep = torch.export.export(wrapped, (x, y))
        if needs_lowering(ep):
            eager = eager_saves(ep, _eager_inputs(ep, wrapped, x, y))
    except (UnsupportedOpError, InvalidArgumentError):
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
    return _to_ir(ep, model, name, batch_size, eager)


def _eager_inputs(ep, wrapped: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[Any]:
    """The exported program's placeholders as real tensors: the model's own parameters, copies
    of its buffers (the run must not move running statistics), constants, then x and y."""
    sig = ep.graph_signature
    params = dict(wrapped.named_parameters())
    buffers = dict(wrapped.named_buffers())
    consts = getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {}
    user = iter((x, y))
    out: list[Any] = []
    for fx in ep.graph.nodes:
        if fx.op != "placeholder":
            continue
        if fx.name in sig.inputs_to_parameters:
            out.append(params[sig.inputs_to_parameters[fx.name]])
        elif fx.name in sig.inputs_to_buffers:
            out.append(buffers[sig.inputs_to_buffers[fx.name]].clone())
        elif fx.name in consts:
            out.append(ep.constants[consts[fx.name]])
        else:
            out.append(next(user))
    return out
