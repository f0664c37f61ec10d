"""Lowering of composite operators to the primitives edgetrain has cost rules for.

NOTE [ Capture op set ]
    `torch.export` keeps ATen operators at the level user code calls them (`aten.conv1d`,
    `aten.gru.input`, `aten.dropout`, `aten.scaled_dot_product_attention`, `aten.chunk`, ...).
    Capture keeps an exported node as it is when it has a rule, and otherwise lowers it with
    `make_fx` over the functionalised operator and the decomposition table below, recursively,
    so every composite reaches the cost model as the primitives it is made of. The table is
    PyTorch's Core ATen table (`torch._decomp.core_aten_decompositions()`) minus every operator
    that has a rule, so a primitive with its own eager kernel (and autograd formula) stays one
    node, as eager PyTorch runs it:
      - kept at the level edgetrain had rules for (unchanged IR for existing models): conv2d,
        linear, batch_norm, layer_norm, relu, hardtanh, hardswish, gelu, tanh, add, mul, div,
        max/avg/adaptive-avg pool 2-D, mean, matmul, softmax, log_softmax, embedding,
        cross_entropy, views, clone/contiguous;
      - by category (`rules.category_rule`): views/aliases (`OpOverload.is_view`, multi-output
        views such as split/unbind/chunk through their getitems), point-wise ops
        (`Tag.pointwise`: sigmoid, sub/rsub, exp, where, clamp, comparisons, ...), reductions
        (`Tag.reduction`), random ops (`Tag.nondeterministic_seeded`: dropout's bernoulli),
        factories (no tensor argument, or `*_like`), matmul-like (mm, bmm, addmm, baddbmm),
        convolution (1-D and 2-D), max pooling with indices (1-D pooling lowers to it),
        normalisation (native batch/layer norm), indexing/scatter/cat/pad/upsample, losses
        (mse, l1, smooth-l1, huber, bce(-with-logits), nll) and dtype copies.
    So `relu6` -> hardtanh, `conv1d` -> convolution, `max_pool1d` -> unsqueeze +
    max_pool2d_with_indices + squeeze, `dropout` -> empty_like + bernoulli + div + mul (the
    CPU eager kernel), `gru`/`lstm` -> linear + split + sigmoid/tanh + mul/add per step,
    `scaled_dot_product_attention` -> mul + bmm + softmax + bmm, `zeros` -> full,
    `rsub` -> sub, `unflatten`/`chunk`/`unbind` -> views. An operator none of this covers is
    reported, all of them at once, by `UnsupportedOpError` with its node, module and line.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree
from torch.fx.experimental.proxy_tensor import make_fx

from edgetrain.capture._rules import LEGACY_RULES, category_rule


def has_rule(op: Any) -> bool:
    return op in LEGACY_RULES or category_rule(op) is not None


_TABLE: dict[Any, Any] | None = None


def decomposition_table() -> dict[Any, Any]:
    """Core ATen decompositions minus every operator that has a rule (NOTE above)."""
    global _TABLE
    if _TABLE is None:
        from torch._decomp import core_aten_decompositions

        _TABLE = {k: v for k, v in core_aten_decompositions().items() if not has_rule(k)}
    return _TABLE


def _example(val: Any, requires_grad: bool) -> Any:
    """A real tensor with `val`'s metadata (make_fx traces it as a fake one)."""
    if not isinstance(val, torch.Tensor):
        return val
    t = torch.empty_strided(tuple(val.shape), tuple(val.stride()), dtype=val.dtype)
    t.zero_()
    if requires_grad and t.is_floating_point():
        t.requires_grad_(True)
    return t


def lower(op: Any, args: tuple, kwargs: dict, vals: list[Any], grads: list[bool]):
    """Trace `op(*args, **kwargs)` into primitives; tensor leaves are replaced, in flattening
    order, by examples built from `vals` (requiring grad where `grads` says so).

    Returns the fx GraphModule; its placeholders are the tensor leaves in that order.
    """
    flat, spec = pytree.tree_flatten((args, kwargs))
    slots = [i for i, a in enumerate(flat) if isinstance(a, torch.Tensor)]

    def fn(*tensors):
        leaves = list(flat)
        for i, t in zip(slots, tensors):
            leaves[i] = t
        a, k = pytree.tree_unflatten(leaves, spec)
        return op(*a, **k)

    examples = [_example(v, g) for v, g in zip(vals, grads)]
    traced = torch.func.functionalize(fn, remove="mutations")
    return make_fx(traced, decomposition_table=decomposition_table(), tracing_mode="fake")(
        *examples
    )
