"""Transient workspaces of PyTorch's CPU kernels: the bytes a kernel allocates and frees inside
one call, beyond its outputs.

NOTE [ Kernel workspaces on PyTorch CPU (torch 2.13) ]
    Convolution is the only kernel family of the reference models whose transients matter.
    ATen picks its backend in `_select_conv_backend` (aten/src/ATen/native/Convolution.cpp):
    oneDNN ("mkldnn") when `ConvParams::use_mkldnn` holds, i.e. for float32 input
        (strided or dilated or N >= 16 or kernel != 1x1 or threads > 1)
        and (groups > 1 or kernel > 3x3 in both dims or N > 1 or N*C*H*W > 20480),
    else the im2col kernel `_slow_conv2d_*`.
      - im2col forward and backward each unfold a `columns` buffer of
        C_in/groups * kh * kw * H_out * W_out floats (none for a 1x1, stride-1, unpadded conv);
      - oneDNN forward reorders input and weight into its own buffers and computes into its
        own output before copying out: max(input + weight, output) bytes beyond the output;
      - oneDNN backward holds reordered copies of grad_output and input (or the weight, when it
        is larger) while it computes: max(input + output, weight) bytes beyond the gradients.
    These formulas were fitted to the allocator events of torch 2.13.0 on x86-64 (oneDNN 3.x)
    and hold for wide layers; for narrow ones oneDNN's blocked layouts pad channels and its
    backward scratch grows several-fold. So, as in the survey's preparation stage, the host is
    profiled: `edgetrain.prepare._profile.host_kernels(graph)` runs each distinct convolution of the
    graph once under the allocator meter and records its transients in `measured`, which take
    precedence over the formulas.
    A 1-D convolution (`OpKind.CONV1D`) runs as a 2-D one over a (1, L) plane with a (1, k)
    kernel, and gets the same formulas (and is profiled on the host the same way).
    Fused layers (`PROFILED_FUSED`: oneDNN's LSTM layer `mkldnn_rnn_layer`, what eager CPU runs
    `nn.LSTM` as; the CPU flash-attention kernel of `scaled_dot_product_attention`) allocate
    scratch and reorder buffers inside the kernel in both directions
    (lstm-seq, 50 steps, hidden 32: 40 % of the step's peak at batch 1). No formula is fitted:
    they are profiled on the host like the convolutions, keyed by `kernel_signature`, and
    without a profile they count nothing.
    Batch norm's backward (`native_batch_norm_backward`, training and eval alike) allocates the
    input gradient twice, an `empty_like(input)` it then replaces by a contiguous one, so while
    it runs one input-sized transient sits beside the gradient (none without an input
    gradient). Keep-all steps never peak there, but under paging or recomputation the saved
    tensors around a BN are gone and its backward can become the step's peak (mbv2-w0.35 with
    its features paged, batch 1: 393,988 bytes, 6 %, under-predicted without it). Other
    kernels allocate only their outputs (within a few hundred bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetrain.cost._lean import conv_chunk
from edgetrain.ir import Graph, Node, OpKind


@dataclass(frozen=True, slots=True)
class KernelLibrary:
    """Which kernel implementations run the step (decides transient workspaces).

    `pytorch_cpu_threads` is the intra-op thread count of the PyTorch CPU build; it changes
    oneDNN's eligibility for 1x1 convolutions. `None` models a library without workspaces
    (the generated C code, which convolves directly into its output).
    """

    pytorch_cpu_threads: int | None = 1
    measured: tuple[tuple[str, int, int], ...] = ()  # (conv_signature, forward, backward)

    @property
    def table(self) -> dict[str, tuple[int, int]]:
        return {k: (f, b) for k, f, b in self.measured}

    @property
    def has_workspaces(self) -> bool:
        return self.pytorch_cpu_threads is not None


def _kernel_2d(node: Node) -> tuple[int, int]:
    """A 1-D convolution runs as a 2-D one over a (1, L) plane with a (1, k) kernel."""
    k = tuple(node.attr("kernel"))
    return (1, k[0]) if len(k) == 1 else (k[0], k[1])


def _as_2d(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], shape[1], 1, shape[2]) if len(shape) == 3 else shape


def _conv_uses_onednn(graph: Graph, node: Node, threads: int) -> bool:
    x = graph.tensor(node.inputs[0])
    n, c, h, w = _as_2d(x.shape)
    kh, kw = _kernel_2d(node)
    strided = any(s != 1 for s in node.attr("stride"))
    dilated = any(d != 1 for d in node.attr("dilation"))
    first = strided or dilated or n >= 16 or (kh, kw) != (1, 1) or threads > 1
    second = node.attr("groups") > 1 or (kh > 3 and kw > 3) or n > 1 or n * c * h * w > 20480
    return x.dtype == "float32" and first and second


def _columns_bytes(graph: Graph, node: Node) -> int:
    kh, kw = _kernel_2d(node)
    if (
        (kh, kw) == (1, 1)
        and all(s == 1 for s in node.attr("stride"))
        and all(p == 0 for p in node.attr("padding"))
    ):
        return 0
    x = graph.tensor(node.inputs[0])
    out = _as_2d(graph.tensor(node.output).shape)
    cin_g = x.shape[1] // node.attr("groups")
    return cin_g * kh * kw * out[2] * out[3] * 4


PROFILED_FUSED = frozenset({"mkldnn_rnn_layer", "_scaled_dot_product_flash_attention_for_cpu"})
"""Fused kernels (by `attrs["fn"]`) whose transients are profiled on the host."""


def is_profiled(node: Node) -> bool:
    """Whether `node`'s transients are read from the host profile (`KernelLibrary.measured`)."""
    return node.op in (OpKind.CONV2D, OpKind.CONV1D) or node.attr("fn") in PROFILED_FUSED


def kernel_signature(graph: Graph, node: Node, input_grad: bool, weight_grad: bool = True) -> str:
    """What a profiled kernel's transients depend on (`is_profiled`); `weight_grad=False`: a
    lean backward that computes no weight gradient (NOTE [ Lean saved tensors ])."""
    if node.op in (OpKind.CONV2D, OpKind.CONV1D):
        if weight_grad:
            return conv_signature(graph, node, input_grad)
        # the chunk and how its input is stood in for (NOTE [ Lean saved tensors ])
        return conv_signature(graph, node, input_grad) + f":wg0:c{conv_chunk(graph, node)}:slot"
    shapes = ",".join(
        "x".join(map(str, graph.tensor(t).shape)) + ":" + graph.tensor(t).dtype for t in node.inputs
    )
    return f"{node.attr('fn')}:{shapes}:{node.attr('scalars')}:ig{int(input_grad)}".replace(" ", "")


def conv_signature(graph: Graph, node: Node, input_grad: bool) -> str:
    """What a convolution's workspace depends on: shapes, hyper-parameters, input grad."""
    x = graph.tensor(node.inputs[0])
    w = graph.tensor(node.inputs[1])
    return (
        f"conv:{'x'.join(map(str, x.shape))}:{'x'.join(map(str, w.shape))}:"
        f"s{node.attr('stride')}:p{node.attr('padding')}:d{node.attr('dilation')}:"
        f"g{node.attr('groups')}:ig{int(input_grad)}"
    ).replace(" ", "")


def workspace_bytes(
    graph: Graph, node: Node, kernels: KernelLibrary, input_grad: bool, weight_grad: bool = True
) -> tuple[int, int]:
    """(forward, backward) transient bytes of `node` beyond its outputs and gradients."""
    if not kernels.has_workspaces:
        return 0, 0
    if node.op is OpKind.BATCH_NORM:
        return 0, graph.tensor(node.inputs[0]).nbytes if input_grad else 0
    if not is_profiled(node):
        return 0, 0
    assert kernels.pytorch_cpu_threads is not None
    if kernels.measured:
        hit = kernels.table.get(kernel_signature(graph, node, input_grad, weight_grad))
        if hit is not None:
            return hit
    if node.op is not OpKind.CONV2D and node.op is not OpKind.CONV1D:
        return 0, 0  # a fused kernel not profiled: no formula
    x = graph.tensor(node.inputs[0]).nbytes
    w = graph.tensor(node.inputs[1]).nbytes
    out = graph.tensor(node.output).nbytes
    if _conv_uses_onednn(graph, node, kernels.pytorch_cpu_threads):
        return max(x + w, out), max(x + out, w)
    cols = _columns_bytes(graph, node)
    return cols, cols
