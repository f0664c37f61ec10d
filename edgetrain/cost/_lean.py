"""What a node saves under the PyTorch executor's lean backward (no torch).

NOTE [ Lean saved tensors ]
    Under a schedule with `lean_backward` the runtime routes some calls to lean autograd
    Functions (NOTE [ Lean backward ] in runtime/_lean.py). The cost model applies the same
    rules, by operator category, to the node's inputs and to which of them need a gradient:
      - a convolution whose weight is frozen saves nothing (the weight is resident); its
        backward computes no weight gradient, so its kernel workspace is the one profiled
        without it (`weight_grad=False`). Where one sample's input or output exceeds
        `CHUNK_BYTES` / batch, forward and input gradient run `frozen_conv_chunk` samples at a
        time into one whole-batch result (ATen materialises the backward's stand-in input and
        keeps a reordered copy of a depthwise gradient: a whole-batch call holds both); the
        profiled transients are one chunk's kernel plus its result before the copy;
      - relu / hardtanh (relu6) / leaky_relu save a packed 1-bit mask of ceil(n / 8) bytes
        instead of a tensor; packing and unpacking work in chunks of `MASK_CHUNK` elements and
        hold two chunk-sized byte temporaries while they run (read from the allocator);
      - eval-mode batch norm with a frozen (or no) scale saves nothing;
      - dropout (the model's `aten.dropout` call, not in place) saves its random mask as the
        same packed bits instead of the float32 noise tensor (its product node carries the
        rule; the noise dies with the call);
      - max pooling whose indices the model never reads saves one byte per output (the
        offset inside its window) instead of its input and int64 indices; its index
        arithmetic runs in chunks, and the backward rebuilds the int64 indices;
      - average pooling (1-d and 2-d) saves nothing: its backward reads only the input's
        sizes;
      - every other node saves what `saved_for_backward` says (products already save an
        operand only when the other one needs a gradient), and so does an activation, pool
        or batch norm whose input is a non-contiguous view (`is_contiguous`): the runtime
        leaves those to plain PyTorch.
    A mask is not always less: where another node saves the very tensor the activation would
    save (a trainable convolution's input, an average pool's input), plain PyTorch's save costs
    nothing and the mask adds its bytes. So the plan names such activations
    (`Plan.plain_activations`, chosen by `plain_activation_sites`) and they run plain. An
    activation is named by its site, `module#k`: the k-th relu-family call inside a call of
    the module that runs it (the innermost module of the exported node); the runtime counts
    the same way, so the two agree for every module that is called once per forward.

NOTE [ Lean in-place gradients ]
    A gradient that only this backward holds may be overwritten: autograd hands a node its
    incoming gradient, and where no other node, view or saved tensor shares it (the runtime's
    `owned`: one reference to the tensor and to its storage), nothing can read it after the
    node. relu / relu6 / hardtanh masks and dropout's mask then multiply the gradient in
    place, and frozen eval-mode batch norm (its bias gradient, a sum, read first) scales it in
    place, `frozen_conv_chunk` samples at a time. A gradient an add hands to both its operands
    is shared until the first of them is done; one a view hands on keeps its base alive. The
    cost model follows the same rule with its reference-counted gradient buffers (a buffer
    that passed through a view is never owned), so predictions stay exact.

NOTE [ Lean in-place activations ]
    A relu-family activation may also overwrite its input in forward (`Plan.in_place_
    activations`, chosen by `in_place_activation_sites`): where every call of its site reads
    a tensor that a lean frozen convolution or eval-mode batch norm made (neither backward
    reads its result), that no other node reads and no view shares, the runtime packs the
    mask first and then clamps the tensor in place (`torch.relu_`, `clamp_`, `leaky_relu_`:
    the same values). Eval-mode batch norm does the same over a lean frozen convolution's
    result (site `module#bnK`), `frozen_conv_chunk` samples at a time (an element-wise map:
    each chunk's values are the whole call's). So a conv -> BN -> ReLU6 chain holds one
    tensor instead of three. The cost model gives such a node's result its input's storage
    (`_alias_in_place`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgetrain.ir import Graph, Node, OpKind, TensorRole, contiguous_strides

MASK_CHUNK = 1 << 14
"""Elements the runtime packs per pass (`edgetrain.runtime._lean.MASK_CHUNK`)."""

CHUNK_BYTES = 1 << 20
"""Bytes of one sample's conv input (or output) above which a frozen convolution runs in
batch chunks (NOTE above)."""

_MASKED_FNS = frozenset({"relu", "hardtanh", "leaky_relu", "relu6"})
_DROPOUT_OPS = frozenset({"aten.dropout.default"})
_POOL_OPS = frozenset({"aten.max_pool1d.default", "aten.max_pool2d.default"})
_POOL1D_OPS = frozenset({"aten.max_pool1d.default", "aten.avg_pool1d.default"})


@dataclass(frozen=True, slots=True)
class LeanSaves:
    """A node's saves under lean backward: the IR tensors it still saves, the bytes of the
    packed mask it makes for itself, and its kernels' transients beyond the plain ones."""

    saved: tuple[str, ...]
    mask_bytes: int = 0
    forward_workspace_bytes: int = 0
    backward_workspace_bytes: int = 0
    weight_grad: bool = True
    in_place_grad_workspace_bytes: int | None = None
    """Set where the input gradient may be written over an owned incoming gradient (NOTE
    [ Lean in-place gradients ]): the backward's transients then, instead of the plain ones."""
    in_place_forward_workspace_bytes: int = 0
    """The forward's transients where the node overwrites its input (NOTE [ Lean in-place
    activations ]) beyond `forward_workspace_bytes`."""


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def frozen_conv_chunk(batch: int, sample_bytes: int) -> int:
    """Samples per chunk of a frozen convolution whose largest per-sample tensor (input or
    output) has `sample_bytes`: the whole batch while it stays within `CHUNK_BYTES`, else as
    many samples as fit (at least one). The runtime and the cost model both call this."""
    if batch <= 1 or sample_bytes * batch <= CHUNK_BYTES:
        return max(1, batch)
    return max(1, CHUNK_BYTES // max(1, sample_bytes))


def conv_chunk(graph: Graph, node: Node) -> int:
    """`frozen_conv_chunk` for a convolution node (its batch: the input's first dimension,
    1 for an unbatched input)."""
    x, out = graph.tensor(node.inputs[0]), graph.tensor(node.output)
    nd = len(graph.tensor(node.inputs[1]).shape) - 2
    batch = x.shape[0] if len(x.shape) == nd + 2 else 1
    return frozen_conv_chunk(batch, max(x.nbytes, out.nbytes) // max(1, batch))


def is_masked_activation(node: Node) -> bool:
    """relu / relu6 / hardtanh / leaky_relu, as a legacy node or a lowered primitive."""
    if node.op in (OpKind.RELU, OpKind.HARDTANH):
        return True
    return node.op is OpKind.ELEMENTWISE and node.attr("fn") in _MASKED_FNS


def is_dropout_mask_product(node: Node) -> bool:
    """The product with the random mask inside the model's call of dropout (`F.dropout`,
    `nn.Dropout`, not in place): the lean mode saves its mask as bits."""
    return node.op is OpKind.MUL and node.attr("composite_op") in _DROPOUT_OPS


def site_key(node: Node) -> str:
    """The module call a node's site counts in: its module, per chunk inside a chunked
    segment (NOTE [ Sample-chunked frozen segments ] in cost/_chunk.py)."""
    chunk = node.attr("chunk")
    return node.module if chunk is None else f"{node.module}@{chunk[1]}"


def activation_sites(graph: Graph) -> dict[int, str]:
    """Node index -> site (`module#k`) of every relu-family node (NOTE above)."""
    counts: dict[str, int] = {}
    out: dict[int, str] = {}
    for i, n in enumerate(graph.nodes):
        if is_masked_activation(n):
            k = counts.get(site_key(n), 0)
            counts[site_key(n)] = k + 1
            out[i] = f"{n.module}#{k}"
    return out


def batch_norm_sites(graph: Graph) -> dict[int, str]:
    """Node index -> site (`module#bnK`: the K-th batch norm inside one call of the module that
    runs it) of every batch-norm node (NOTE [ Lean in-place activations ])."""
    counts: dict[str, int] = {}
    out: dict[int, str] = {}
    for i, n in enumerate(graph.nodes):
        if n.op is OpKind.BATCH_NORM:
            k = counts.get(site_key(n), 0)
            counts[site_key(n)] = k + 1
            out[i] = f"{n.module}#bn{k}"
    return out


def _bn_weight(graph: Graph, node: Node) -> str | None:
    """The scale of a batch norm (its first parameter of two), None without an affine pair."""
    params = [i for i in node.inputs[1:] if graph.tensor(i).role is TensorRole.PARAMETER]
    return params[0] if len(params) == 2 else None


def is_contiguous(graph: Graph, name: str) -> bool:
    """Whether tensor `name` is contiguous when the step runs, as far as the IR tells: an
    operator's result is; a view's is where its index map (NOTE [ Views as index maps ]) is
    the contiguous one (size-1 dimensions aside) over a contiguous source. The lean runtime
    leaves a non-contiguous input of an activation, a pool or batch norm to plain PyTorch
    (TCN's causal chomp, `conv(x)[:, :, :-pad]`), and so does this rule."""
    t = graph.tensor(name)
    j = graph.node_index.get(t.producer or "")
    if j is None or graph.nodes[j].op is not OpKind.VIEW:
        return True
    n = graph.nodes[j]
    size, stride = n.attr("view_size"), n.attr("view_stride")
    if size is None or stride is None:
        return True
    want = contiguous_strides(tuple(size))
    if any(d != 1 and s != w for d, s, w in zip(size, stride, want)):
        return False
    return not n.inputs or is_contiguous(graph, n.inputs[0])


_NEEDS_CONTIGUOUS = frozenset({OpKind.BATCH_NORM, OpKind.MAX_POOL2D, OpKind.AVG_POOL2D})


def lean_saves(graph: Graph, node: Node, requires_grad: frozenset[str]) -> LeanSaves | None:
    """The lean rule of `node` (NOTE [ Lean saved tensors ]); None where it runs as plain
    PyTorch (then `saved_for_backward` applies)."""
    strided = node.op in _NEEDS_CONTIGUOUS or is_masked_activation(node)
    strided = strided or (node.op is OpKind.VIEW and node.attr("composite_op") in _POOL1D_OPS)
    if strided and node.inputs and not is_contiguous(graph, node.inputs[0]):
        return None  # the runtime runs it as plain PyTorch
    if node.op in (OpKind.CONV2D, OpKind.CONV1D):
        if node.inputs[1] in requires_grad:
            return None
        return LeanSaves((), weight_grad=False)
    if is_masked_activation(node) or is_dropout_mask_product(node):
        n = _numel(graph.tensor(node.output).shape)
        chunk = 2 * min(8 * math.ceil(n / 8), MASK_CHUNK)
        # leaky_relu's formula reads the gradient after writing its product: never in place
        leaky = node.attr("fn") == "leaky_relu"
        return LeanSaves((), math.ceil(n / 8), chunk, chunk, True, None if leaky else chunk)
    if node.op is OpKind.MAX_POOL2D and _pool_indices_internal(graph, node):
        return _max_pool_saves(graph, node)
    if node.op is OpKind.AVG_POOL2D:
        return LeanSaves(())  # its backward reads only the input's sizes
    if node.op is OpKind.VIEW and node.attr("composite_op") in _POOL1D_OPS:
        return LeanSaves(())  # a 1-d pool's unsqueezed input: the pool's save, now dropped
    if node.op is OpKind.BATCH_NORM and node.attr("training") is False:
        w = _bn_weight(graph, node)
        if w is not None and w in requires_grad:
            return None
        x = graph.tensor(node.inputs[0])
        if len(x.shape) < 2:
            return LeanSaves(())
        chunk = x.nbytes // x.shape[0] * frozen_conv_chunk(x.shape[0], x.nbytes // x.shape[0])
        # in place: one chunk's gradient and ATen's temporary of its size; in forward, one
        # chunk's result before it is copied over the input
        return LeanSaves(
            (), in_place_grad_workspace_bytes=2 * chunk, in_place_forward_workspace_bytes=chunk
        )
    return None


def _pool_indices_internal(graph: Graph, node: Node) -> bool:
    """Whether the model never reads the pool's indices (it called max_pool without
    `return_indices`, which the lean mode replaces)."""
    if node.attr("composite_op") is not None:
        return node.attr("composite_op") in _POOL_OPS
    aux = set(node.aux_outputs)
    return not any(aux.intersection(n.inputs) for n in graph.nodes)


def _max_pool_saves(graph: Graph, node: Node) -> LeanSaves:
    """Window offsets of `offset_bytes` each; the forward's and backward's chunked index
    arithmetic (runtime `_window_offsets` / `_flat_indices`): each output row's and column's
    base (int64) and two int64 chunks of whole output planes; the backward also holds the
    rebuilt int64 indices."""
    shape = graph.tensor(node.output).shape
    oh, ow = shape[-2:]
    n = _numel(shape)
    k = node.attr("kernel") or (1, 1)
    offset_bytes = 1 if k[0] * k[1] <= 256 else 4
    plane = oh * ow
    rows = max(1, MASK_CHUNK // plane)
    chunk = min(rows, n // plane) * plane
    work = 8 * (oh + ow) + 2 * 8 * chunk
    return LeanSaves((), n * offset_bytes, work, 8 * n + work)
