"""Lean backward: each operator saves only what the gradients the plan asks for need.

NOTE [ Lean backward ]
    PyTorch's convolution saves its input whenever anything downstream needs a gradient, even
    when its weight is frozen; ReLU-family activations save a float32 tensor where one bit per
    element decides the gradient; eval-mode batch norm saves its input although its input
    gradient is a per-channel scale. Under a plan with `lean_backward` the Trainer runs its
    steps inside `LeanBackward`, a `TorchFunctionMode` (pushed for the step, forward and
    backward, so checkpoint's re-runs see it too, and popped after) that routes these calls to
    custom `autograd.Function`s:
      - `conv1d` / `conv2d` with a frozen weight: saves nothing (the weight is resident); its
        backward is ATen's own `convolution_backward` with the weight's gradient masked out
        and the input given by its sizes (as `torch.nn.grad.conv2d_input` does), so the input
        and bias gradients are plain PyTorch's bit for bit;
      - `relu`, `relu6`, `hardtanh`, `leaky_relu`: a packed bit mask, 1 bit per element (the
        one predicate the backward formula of derivatives.yaml tests), made and read in chunks
        of `MASK_CHUNK` elements so the transient bool tensor stays small;
      - `batch_norm` in eval mode with a frozen (or no) scale: saves nothing; its backward is
        ATen's `native_batch_norm_backward` with the incoming gradient standing in for the
        input, which an eval-mode input or bias gradient never reads;
      - `dropout` in training mode, not in place: the same packed bits of its random mask
        instead of ATen's float32 noise tensor, drawn by the same calls (`_Dropout`);
      - `max_pool1d` / `max_pool2d` (without `return_indices`): each output's offset inside
        its window, one byte (`offset_dtype`), instead of the input and int64 indices; the
        backward rebuilds the indices and runs ATen's own backward (`_MaxPool`);
      - `avg_pool1d` / `avg_pool2d`: nothing (`_AvgPool`; ATen's backward gets a stand-in of
        the input's sizes).
    A frozen convolution with large samples runs in batch chunks, and a gradient or forward
    result that nothing else holds is overwritten in place (NOTE [ Lean in-place gradients ],
    NOTE [ Lean in-place activations ] in cost/_lean.py); the chunked calls sum bias
    gradients per chunk, so those equal plain PyTorch's up to summation order.
    An activation whose saved tensor another node saves anyway keeps plain PyTorch's save: the
    plan names it by its site, `module#k`, the k-th relu-family call inside one call of the
    innermost module running it (`Plan.plain_activations`, NOTE [ Lean saved tensors ]);
    `LeanBackward` tracks the module calls with global forward hooks (removable handles,
    filtered to the model's modules) while it is active.
    Linear and matmul need no help: their generated backward already saves an operand only
    when the other one needs a gradient. Everything else runs as plain PyTorch. The cost model
    applies the same rules (`lean_saves` in cost/_lean.py, NOTE [ Lean saved tensors ]).
    A module made only of such per-sample frozen operators may also run a few samples at a
    time in both passes (runtime/_chunked.py, NOTE [ Sample-chunked frozen segments ] in
    cost/_chunk.py).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from edgetrain.cost import frozen_conv_chunk

MASK_CHUNK = 1 << 14
"""Elements packed (or unpacked) per pass; a multiple of 8 (`edgetrain.cost.MASK_CHUNK`)."""

_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def _pack(flat: torch.Tensor, predicate) -> torch.Tensor:
    """`predicate(flat)` as a bit mask: ceil(n / 8) bytes, bit j of byte i is element 8i + j."""
    n = flat.numel()
    packed = torch.empty((n + 7) // 8, dtype=torch.uint8, device=flat.device)
    for a in range(0, n, MASK_CHUNK):
        m = predicate(flat[a : a + MASK_CHUNK])
        if m.numel() % 8:
            m = F.pad(m.view(torch.uint8), (0, 8 - m.numel() % 8))
        bits = m.view(torch.uint8).view(-1, 8) * _BIT_WEIGHTS
        del m  # at most two chunk-sized temporaries live at once
        torch.sum(bits, 1, dtype=torch.uint8, out=packed[a // 8 : (a + MASK_CHUNK) // 8])
        del bits
    return packed


def _unpack(packed: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """Elements [a, b) of a packed mask as a bool tensor (a is a multiple of 8)."""
    chunk = packed[a // 8 : (b + 7) // 8]
    bits = chunk.unsqueeze(1) & _BIT_WEIGHTS
    return bits.view(-1)[: b - a] != 0


class _MaskedActivation(torch.autograd.Function):
    """relu / relu6 / hardtanh / leaky_relu saving one bit per element."""

    @staticmethod
    def forward(ctx, x, fn, predicate, negative_slope):
        out = fn(x)
        packed = _pack(x.reshape(-1), predicate)
        ctx.save_for_backward(packed)
        ctx.negative_slope = negative_slope
        return out

    @staticmethod
    def backward(ctx, g):
        (packed,) = ctx.saved_tensors
        slope = ctx.negative_slope

        def fill(gc, m, dst):
            if slope is None:
                torch.where(m, gc, gc.new_zeros(()), out=dst)
            else:  # leaky_relu_backward: self > 0 ? grad : grad * negval, with no temporary
                torch.where(m, gc, torch.mul(gc, slope, out=dst), out=dst)

        # leaky_relu's formula reads the gradient after writing its product: never in place
        return _masked_grad(g, packed, fill, in_place=slope is None), None, None, None


def owned(g: torch.Tensor) -> bool:
    """Whether the incoming gradient `g` is held by this backward alone, so that it may be
    overwritten (NOTE [ Lean in-place gradients ]): no other tensor shares its TensorImpl or
    its storage (the count of 2 is `g`'s impl and the storage object asked here), and it is
    contiguous. `Tensor._use_count` and `torch._C._storage_Use_Count` are private APIs, pinned
    with torch==2.13.0; tests/test_lean.py checks that both outcomes occur where they must."""
    return (
        g._use_count() == 1
        and torch._C._storage_Use_Count(g.untyped_storage()._cdata) == 2
        and g.is_contiguous()
    )


def _masked_grad(g: torch.Tensor, packed: torch.Tensor, fill, in_place: bool) -> torch.Tensor:
    """The gradient, chunk by chunk: `fill(g chunk, its unpacked mask, destination)`; the
    destination is `g` itself where `in_place` allows it and `g` is `owned`."""
    g = g.contiguous()
    grad = g if in_place and owned(g) else torch.empty_like(g)  # before any view of g
    flat = g.reshape(-1)
    out = grad.view(-1)
    for a in range(0, flat.numel(), MASK_CHUNK):
        gc, dst = flat[a : a + MASK_CHUNK], out[a : a + MASK_CHUNK]
        m = _unpack(packed, a, a + gc.numel())
        fill(gc, m, dst)
        del m  # at most two chunk-sized temporaries live at once
    return grad


class _MaskedActivationInPlace(_MaskedActivation):
    """The same activation written over its input (NOTE [ Lean in-place activations ]): the
    mask is packed from the input first, then `fn_` clamps it in place."""

    @staticmethod
    def forward(ctx, x, fn_, predicate, negative_slope):
        packed = _pack(x.reshape(-1), predicate)
        fn_(x)
        ctx.mark_dirty(x)
        ctx.save_for_backward(packed)
        ctx.negative_slope = negative_slope
        return x


def _relu_mask(x: torch.Tensor) -> torch.Tensor:
    return ~(x <= 0)  # threshold_backward: result <= 0 -> 0 (NaN passes)


def _hardtanh_mask(lo: float, hi: float):
    def _inside(x: torch.Tensor) -> torch.Tensor:
        return ~((x <= lo) | (x >= hi))  # hardtanh_backward

    return _inside


def _positive(x: torch.Tensor) -> torch.Tensor:
    return x > 0  # leaky_relu_backward: self > 0 ? grad : grad * negval


class _Activation(NamedTuple):
    """One relu-family call: its input, the out-of-place and in-place functions, the
    predicate its backward tests, leaky_relu's slope, and the model's own `inplace` flag."""

    x: torch.Tensor
    fn: Callable
    fn_: Callable
    predicate: Callable
    negative_slope: float | None = None
    inplace: bool = False


def _relu_call(input, inplace=False) -> _Activation:
    return _Activation(input, torch.relu, torch.relu_, _relu_mask, inplace=inplace)


def _relu6_call(input, inplace=False) -> _Activation:
    fn_ = lambda t: F.hardtanh_(t, 0.0, 6.0)  # noqa: E731
    return _Activation(input, F.relu6, fn_, _hardtanh_mask(0.0, 6.0), inplace=inplace)


def _hardtanh_call(input, min_val=-1.0, max_val=1.0, inplace=False) -> _Activation:
    fn = lambda t: F.hardtanh(t, min_val, max_val)  # noqa: E731
    fn_ = lambda t: F.hardtanh_(t, min_val, max_val)  # noqa: E731
    return _Activation(input, fn, fn_, _hardtanh_mask(min_val, max_val), inplace=inplace)


def _leaky_relu_call(input, negative_slope=0.01, inplace=False) -> _Activation:
    fn = lambda t: F.leaky_relu(t, negative_slope)  # noqa: E731
    fn_ = lambda t: F.leaky_relu_(t, negative_slope)  # noqa: E731
    return _Activation(input, fn, fn_, _positive, negative_slope, inplace)


def _activation_handler(call, overwrite: bool):
    """The lean handler of one relu-family function (`call` reads its arguments): a packed
    mask, and with `overwrite` the in-place variant where the input is a lean frozen
    convolution's or batch norm's result (NOTE [ Lean in-place activations ]); None where
    the rule does not apply."""

    def handler(*args, **kwargs):
        a = call(*args, **kwargs)
        x = a.x
        if a.inplace or not x.requires_grad or not x.is_contiguous() or not x.is_floating_point():
            return None
        if not overwrite:
            return _MaskedActivation.apply(x, a.fn, a.predicate, a.negative_slope)
        if type(x.grad_fn) not in _LEAN_RESULTS:
            return None
        return _MaskedActivationInPlace.apply(x, a.fn_, a.predicate, a.negative_slope)

    return handler


class _Dropout(torch.autograd.Function):
    """Dropout saving one bit per element (NOTE [ Lean backward ]): the same random stream and
    arithmetic as ATen's `_dropout_impl` (noise = empty_like(x).bernoulli_(1 - p).div_(1 - p),
    out = x * noise), so outputs and gradients are plain PyTorch's bit for bit."""

    @staticmethod
    def forward(ctx, x, p):
        keep = 1.0 - p
        # the kept elements' factor, as div_ computes it (before the noise: off the peak)
        scale = float(torch.ones(1, dtype=x.dtype).div_(keep))
        noise = torch.empty_like(x).bernoulli_(keep)
        noise.div_(keep)
        out = x * noise
        packed = _pack(noise.reshape(-1), _nonzero)
        del noise
        ctx.save_for_backward(packed)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, g):
        (packed,) = ctx.saved_tensors
        scale = ctx.scale

        def fill(gc, m, dst):
            torch.mul(gc, scale, out=dst)  # MulBackward0: grad * noise, noise = scale or 0
            dst.mul_(m)  # x * 0 keeps the sign of x, as grad * 0.0 does

        return _masked_grad(g, packed, fill, in_place=True), None


def _nonzero(x: torch.Tensor) -> torch.Tensor:
    return x != 0


def _dropout(input, p=0.5, training=True, inplace=False):
    if not training or inplace or not 0.0 < p < 1.0:
        return None  # identity, in place, or ATen's special cases: plain PyTorch
    if not input.requires_grad or not input.is_floating_point() or input.numel() == 0:
        return None
    return _Dropout.apply(input, float(p))


def _pair(v, default=None) -> tuple[int, int]:
    v = default if v is None or (isinstance(v, (list, tuple)) and not v) else v
    v = (int(v),) * 2 if isinstance(v, (int, float)) else tuple(int(e) for e in v)
    return v * 2 if len(v) == 1 else v


def offset_dtype(window: int) -> torch.dtype:
    """The saved window offsets' type: one byte while the window has <= 256 elements."""
    return torch.uint8 if window <= 256 else torch.int32


def _bases(conf, oh: int, ow: int):
    """Each output row's and column's first input row / column: o * stride - padding."""
    (_, k, s, p, _, _) = conf
    bh = (torch.arange(oh) * s[0] - p[0]).view(oh, 1)
    bw = (torch.arange(ow) * s[1] - p[1]).view(1, ow)
    return bh, bw


def _chunk_rows(oh: int, ow: int) -> int:
    return max(1, MASK_CHUNK // (oh * ow))


def _window_offsets(idx: torch.Tensor, conf) -> torch.Tensor:
    """max_pool2d's flat input indices (ih * W + iw) as offsets inside each window
    ((ih - base_h) / dh * kw + (iw - base_w) / dw), chunk by chunk (two int64 chunks live)."""
    shape, k, _, _, d, _ = conf
    w_in = shape[-1]
    oh, ow = idx.shape[-2:]
    flat = idx.reshape(-1, oh, ow)
    out = torch.empty(flat.shape, dtype=offset_dtype(k[0] * k[1]))
    bh, bw = _bases(conf, oh, ow)
    step = _chunk_rows(oh, ow)
    for a in range(0, flat.shape[0], step):
        c = flat[a : a + step]
        row = torch.div(c, w_in, rounding_mode="floor")
        col = row * w_in
        torch.sub(c, col, out=col)
        row.sub_(bh)
        col.sub_(bw)
        if d[0] != 1:
            row.div_(d[0], rounding_mode="floor")
        if d[1] != 1:
            col.div_(d[1], rounding_mode="floor")
        row.mul_(k[1]).add_(col)
        out[a : a + step].copy_(row)
        del row, col  # at most two chunk-sized int64 temporaries live at once
    return out.view(idx.shape)


def _flat_indices(off: torch.Tensor, conf) -> torch.Tensor:
    """The inverse of `_window_offsets`: int64 flat input indices for the ATen backward."""
    shape, k, _, _, d, _ = conf
    w_in = shape[-1]
    oh, ow = off.shape[-2:]
    flat = off.reshape(-1, oh, ow)
    idx = torch.empty(flat.shape, dtype=torch.int64)
    bh, bw = _bases(conf, oh, ow)
    step = _chunk_rows(oh, ow)
    for a in range(0, flat.shape[0], step):
        row = flat[a : a + step].to(torch.int64)
        col = torch.remainder(row, k[1])
        row.div_(k[1], rounding_mode="floor")
        if d[0] != 1:
            row.mul_(d[0])
        if d[1] != 1:
            col.mul_(d[1])
        row.add_(bh).mul_(w_in)
        col.add_(bw)
        torch.add(row, col, out=idx[a : a + step])
        del row, col
    return idx.view(off.shape)


class _MaxPool(torch.autograd.Function):
    """max_pool2d saving each output's offset inside its window (one byte) instead of its
    input and int64 indices; forward and backward are ATen's own kernels."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode):
        conf = (tuple(x.shape), kernel, stride, padding, dilation, ceil_mode)
        out, idx = torch.ops.aten.max_pool2d_with_indices(x, *conf[1:])
        off = _window_offsets(idx, conf)
        del idx
        ctx.save_for_backward(off)
        ctx.conf = conf
        return out

    @staticmethod
    def backward(ctx, g):
        (off,) = ctx.saved_tensors
        shape, *args = ctx.conf
        gx = g.new_empty(shape)  # before the indices: the order the cost model counts
        idx = _flat_indices(off, ctx.conf)
        # sizes only: the backward scatters g to the indices and never reads the input
        torch.ops.aten.max_pool2d_with_indices_backward.grad_input(
            g, g.new_empty(1).expand(shape), *args, idx, grad_input=gx
        )
        return gx, None, None, None, None, None


def _pool_ok(x, return_indices) -> bool:
    return not return_indices and x.requires_grad and x.is_floating_point() and x.is_contiguous()


def _max_pool2d(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    if not _pool_ok(input, return_indices) or input.dim() not in (3, 4):
        return None
    k = _pair(kernel_size)
    conf = (k, _pair(stride, k), _pair(padding), _pair(dilation), bool(ceil_mode))
    return _MaxPool.apply(input, *conf)


def _max_pool1d(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    if not _pool_ok(input, return_indices) or input.dim() not in (2, 3):
        return None
    k = _pair(kernel_size)[0]
    s = _pair(stride, k)[0]
    conf = ((1, k), (1, s), (0, _pair(padding)[0]), (1, _pair(dilation)[0]), bool(ceil_mode))
    # ATen's max_pool1d_with_indices: the 2-d kernel over an unsqueezed row
    return _MaxPool.apply(input.unsqueeze(-2), *conf).squeeze(-2)


class _AvgPool(torch.autograd.Function):
    """avg_pool2d saving nothing: its backward reads only the input's sizes (ATen's
    `avg_pool2d_backward` gets a stand-in of those sizes)."""

    @staticmethod
    def forward(ctx, x, *conf):
        ctx.conf = (tuple(x.shape), *conf)
        return torch.ops.aten.avg_pool2d(x, *conf)

    @staticmethod
    def backward(ctx, g):
        shape, *conf = ctx.conf
        gx = torch.ops.aten.avg_pool2d_backward(g, g.new_empty(1).expand(shape), *conf)
        return (gx, *[None] * len(conf))


def _avg_pool2d(
    input,
    kernel_size,
    stride=None,
    padding=0,
    ceil_mode=False,
    count_include_pad=True,
    divisor_override=None,
):
    if not _pool_ok(input, False) or input.dim() not in (3, 4):
        return None
    k = list(_pair(kernel_size))
    conf = (k, list(_pair(stride, k)), list(_pair(padding)), bool(ceil_mode))
    return _AvgPool.apply(input, *conf, bool(count_include_pad), divisor_override)


def _avg_pool1d(
    input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True
):
    if not _pool_ok(input, False) or input.dim() not in (2, 3):
        return None
    k = _pair(kernel_size)[0]
    conf = ([1, k], [1, _pair(stride, k)[0]], [0, _pair(padding)[0]], bool(ceil_mode))
    # ATen's avg_pool1d: the 2-d kernel over an unsqueezed row
    return _AvgPool.apply(input.unsqueeze(-2), *conf, bool(count_include_pad), None).squeeze(-2)


def _in_chunks(n: int, chunk: int, fn) -> torch.Tensor:
    """`fn(a, b)` over the batch slices [a, b), written into one whole-batch tensor; a single
    call when `chunk` covers the batch. One chunk's result lives beside the whole at a time."""
    if chunk >= n:
        return fn(0, n)
    first = fn(0, chunk)
    out = first.new_empty((n, *first.shape[1:]))
    out[:chunk].copy_(first)
    del first
    for a in range(chunk, n, chunk):
        out[a : a + chunk].copy_(fn(a, min(n, a + chunk)))
    return out


class _FrozenConv(torch.autograd.Function):
    """A convolution whose weight is frozen: input and bias gradients, nothing saved; large
    samples run in batch chunks (`edgetrain.cost.frozen_conv_chunk`, NOTE [ Lean saved
    tensors ])."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        nd = weight.dim() - 2
        batched = x.dim() == nd + 2
        n = x.shape[0] if batched else 1
        conf = (stride, padding, dilation, False, [0] * nd, groups)
        out_sample = x.element_size() * _out_numel(x, weight, conf) // n
        chunk = frozen_conv_chunk(n, max(x[0].nbytes if batched else x.nbytes, out_sample))
        ctx.chunk = chunk if batched else n
        out = (
            _in_chunks(n, ctx.chunk, lambda a, b: torch.convolution(x[a:b], weight, bias, *conf))
            if batched
            else torch.convolution(x, weight, bias, *conf)
        )
        ctx.save_for_backward(weight)
        ctx.conf = (tuple(x.shape), conf)
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        return out

    @staticmethod
    def backward(ctx, g):
        (weight,) = ctx.saved_tensors
        shape, conf = ctx.conf
        need_x, _, need_b = ctx.needs_input_grad[:3]

        def grads(gc: torch.Tensor, sizes):
            # sizes only: a frozen weight needs no input values
            stand_in = g.new_empty(1).expand(sizes)
            mask = [need_x, False, need_b]
            return torch.ops.aten.convolution_backward(
                gc, stand_in, weight, ctx.bias_sizes, *conf, mask
            )

        n = shape[0]
        if len(shape) != weight.dim() or ctx.chunk >= n:
            gx, _, gb = grads(g, shape)
            return gx, None, gb, None, None, None, None
        # in chunks: each chunk's slot of the input gradient stands in for its input (it has
        # the sizes and layout, and a frozen weight's backward reads no input values)
        gx = g.new_empty(shape) if need_x else None
        gbs: list[torch.Tensor] = []
        for a in range(0, n, ctx.chunk):
            b = min(n, a + ctx.chunk)
            stand_in = gx[a:b] if gx is not None else g.new_empty(1).expand(b - a, *shape[1:])
            gx_c, _, gb_c = torch.ops.aten.convolution_backward(
                g[a:b], stand_in, weight, ctx.bias_sizes, *conf, [need_x, False, need_b]
            )
            if gx is not None:
                gx[a:b].copy_(gx_c)
            del gx_c
            if gb_c is not None:
                gbs.append(gb_c)
        gb = torch.stack(gbs).sum(0) if gbs else None
        return gx, None, gb, None, None, None, None


def _out_numel(x: torch.Tensor, weight: torch.Tensor, conf) -> int:
    """Elements of a convolution's output (the shape arithmetic of ATen's conv_output_size)."""
    stride, padding, dilation = conf[:3]
    spatial = [
        (i + 2 * p - d * (k - 1) - 1) // s + 1
        for i, k, s, p, d in zip(
            x.shape[-len(stride) :], weight.shape[2:], stride, padding, dilation
        )
    ]
    n = x.shape[0] if x.dim() == weight.dim() else 1
    return n * weight.shape[0] * math.prod(spatial)


def _expand(v, nd: int) -> list[int]:
    return [int(v)] * nd if isinstance(v, int) else [int(e) for e in v]


def _padding(padding, weight, dilation, nd: int) -> tuple[list[int], list[int]]:
    """Explicit padding, and the extra right-side padding an asymmetric 'same' needs (as
    `constant_pad_nd`'s argument; empty when symmetric). ATen's `_convolution_mode` pads the
    same way: each side gets total // 2 and the right side the remainder, by one
    `constant_pad_nd` before the convolution, which is also what the capture records."""
    if padding == "valid":
        return [0] * nd, []
    if padding != "same":
        return _expand(padding, nd), []
    total = [d * (k - 1) for d, k in zip(_expand(dilation, nd), weight.shape[2:])]
    if not any(t % 2 for t in total):
        return [t // 2 for t in total], []
    extra: list[int] = []
    for t in reversed(total):  # constant_pad_nd lists the last dimension first
        extra += [0, t - t // 2 - t // 2]
    return [t // 2 for t in total], extra


def _conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if weight.requires_grad:
        return None  # the weight's gradient needs the input: plain PyTorch
    if not (input.requires_grad or (bias is not None and bias.requires_grad)):
        return None
    nd = weight.dim() - 2
    padding, extra = _padding(padding, weight, dilation, nd)
    if extra:
        input = torch.constant_pad_nd(input, extra, 0.0)
    args = (_expand(stride, nd), _expand(padding, nd), _expand(dilation, nd), int(groups))
    return _FrozenConv.apply(input, weight, bias, *args)


class _FrozenBatchNorm(torch.autograd.Function):
    """Eval-mode batch norm with a frozen scale: input and bias gradients, nothing saved."""

    @staticmethod
    def forward(ctx, x, running_mean, running_var, weight, bias, eps):
        out = F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)
        ctx.save_for_backward(running_mean, running_var, weight)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, g):
        rm, rv, w = ctx.saved_tensors
        need_x, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[4]
        stats = (w, rm, rv, ctx.eps)
        if need_x and g.dim() > 1 and owned(g):
            # the bias gradient first (a sum that reads `g`), then the input's over it
            gb = _bn_grad(g, stats, [False, False, True])[2] if need_b else None
            return _bn_grad_in_place(g, stats), None, None, None, gb, None
        gx, _, gb = _bn_grad(g.contiguous(), stats, [need_x, False, need_b])
        return gx, None, None, None, gb, None


class _FrozenBatchNormInPlace(_FrozenBatchNorm):
    """The same batch norm written over its input, `frozen_conv_chunk` samples at a time (NOTE
    [ Lean in-place activations ]); the backward is `_FrozenBatchNorm`'s."""

    @staticmethod
    def forward(ctx, x, running_mean, running_var, weight, bias, eps):
        n = x.shape[0]
        chunk = frozen_conv_chunk(n, x[0].nbytes)
        for a in range(0, n, chunk):
            xc = x[a : a + chunk]
            xc.copy_(F.batch_norm(xc, running_mean, running_var, weight, bias, False, 0.0, eps))
        ctx.mark_dirty(x)
        ctx.save_for_backward(running_mean, running_var, weight)
        ctx.eps = eps
        return x


def _bn_grad(g: torch.Tensor, stats, mask):
    """ATen's eval-mode batch-norm backward; it reads no input, so `g` stands in for it (same
    sizes and layout, so ATen takes the same path as plain autograd)."""
    w, rm, rv, eps = stats
    return torch.ops.aten.native_batch_norm_backward(g, g, w, rm, rv, None, None, False, eps, mask)


def _bn_grad_in_place(g: torch.Tensor, stats) -> torch.Tensor:
    """The input gradient written over `g`, `frozen_conv_chunk` samples at a time (an
    element-wise scale: each chunk's values are the whole call's)."""
    n = g.shape[0]
    chunk = frozen_conv_chunk(n, g[0].nbytes)
    for a in range(0, n, chunk):
        gc = g[a : a + chunk]
        gc.copy_(_bn_grad(gc, stats, [True, False, False])[0])
    return g


def _bn_lean(input, running_mean, running_var, weight, bias, training) -> bool:
    """Whether eval-mode batch norm runs lean (NOTE [ Lean backward ])."""
    if training or running_mean is None or running_var is None:
        return False
    if weight is not None and weight.requires_grad:
        return False  # the scale's gradient needs the normalised input
    if not (input.requires_grad or (bias is not None and bias.requires_grad)):
        return False
    return input.is_contiguous()


def _batch_norm_handler(overwrite: bool):
    """The lean handler of `F.batch_norm` (one signature for both): saving nothing, and with
    `overwrite` written over `input` where it is a lean frozen convolution's result (NOTE
    [ Lean in-place activations ]); None where the rule does not apply."""

    def handler(
        input,
        running_mean,
        running_var,
        weight=None,
        bias=None,
        training=False,
        momentum=0.1,
        eps=1e-5,
    ):
        if overwrite and (type(input.grad_fn) is not _FrozenConv._backward_cls or input.dim() < 2):
            return None
        if not _bn_lean(input, running_mean, running_var, weight, bias, training):
            return None
        fn = _FrozenBatchNormInPlace if overwrite else _FrozenBatchNorm
        return fn.apply(input, running_mean, running_var, weight, bias, eps)

    return handler


_batch_norm = _batch_norm_handler(False)
_batch_norm_over = _batch_norm_handler(True)


_HANDLERS = {
    torch.conv1d: _conv,
    torch.conv2d: _conv,
    F.batch_norm: _batch_norm,
    F.dropout: _dropout,
    F.max_pool2d: _max_pool2d,
    F.max_pool1d: _max_pool1d,
    F.avg_pool2d: _avg_pool2d,
    F.avg_pool1d: _avg_pool1d,
}
_ACTIVATION_CALLS = {
    F.relu: _relu_call,
    torch.relu: _relu_call,
    torch.Tensor.relu: _relu_call,
    F.relu6: _relu6_call,
    F.hardtanh: _hardtanh_call,
    F.leaky_relu: _leaky_relu_call,
}
_ACTIVATIONS = {f: _activation_handler(c, False) for f, c in _ACTIVATION_CALLS.items()}
_LEAN_RESULTS = (
    _FrozenConv._backward_cls,
    _FrozenBatchNorm._backward_cls,
    _FrozenBatchNormInPlace._backward_cls,
)
_IN_PLACE = {f: _activation_handler(c, True) for f, c in _ACTIVATION_CALLS.items()}


class LeanBackward(TorchFunctionMode):
    """Routes the calls of NOTE [ Lean backward ] to their lean `autograd.Function`s while
    active; every other call (and these, where the rule does not apply, or an activation
    site in `plain_sites`) runs unchanged. An activation site in `in_place_sites` overwrites
    its input where NOTE [ Lean in-place activations ] allows it. `model`'s module calls are tracked to name sites."""

    def __init__(self, model: torch.nn.Module, plain_sites=(), in_place_sites=()) -> None:
        super().__init__()
        self.plain_sites = frozenset(plain_sites)
        self.in_place_sites = frozenset(in_place_sites)
        self.paths = {m: name for name, m in model.named_modules()}
        self.calls: list[list] = []  # [module path, relu-family, batch-norm calls] per call
        self._handles: list = []

    def __enter__(self):
        hooks = torch.nn.modules.module
        self._handles = [
            hooks.register_module_forward_pre_hook(self._enter_module),
            hooks.register_module_forward_hook(self._leave_module, always_call=True),
        ]
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.calls.clear()
        return super().__exit__(*exc)

    @contextlib.contextmanager
    def rerun(self, path: str):
        """Checkpoint's re-run of the stage module `path` (called as a function, without its
        hooks) inside backward: the mode is on and the stage's call frame is counted."""
        TorchFunctionMode.__enter__(self)
        self.calls.append([path, 0, 0])
        try:
            yield
        finally:
            self.calls.pop()
            TorchFunctionMode.__exit__(self, None, None, None)

    @contextlib.contextmanager
    def call_frame(self, path: str):
        """A fresh call of module `path` for the sites counted inside it: a chunked segment
        runs its module's forward once per chunk inside one module call (NOTE [ Sample-
        chunked frozen segments ])."""
        self.calls.append([path, 0, 0])
        try:
            yield
        finally:
            self.calls.pop()

    def _enter_module(self, module, args) -> None:
        path = self.paths.get(module)
        if path is not None:
            self.calls.append([path, 0, 0])

    def _leave_module(self, module, args, output) -> None:
        if module in self.paths and self.calls:
            self.calls.pop()

    def _site(self, kind: int) -> str:
        """The next site of `kind` (1: relu family, `module#k`; 2: batch norm, `module#bnk`)
        in the innermost module call."""
        if not self.calls:
            return "#" if kind == 1 else "#bn"
        call = self.calls[-1]
        call[kind] += 1
        return f"{call[0]}#{'bn' if kind == 2 else ''}{call[kind] - 1}"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.backward:
            # the mode is popped while its handler runs; backward re-runs checkpointed stages,
            # which must save what their forward saved: keep the mode on for the backward
            tensor, *rest = args
            if "gradient" in kwargs:
                kwargs["grad_tensors"] = kwargs.pop("gradient")
            TorchFunctionMode.__enter__(self)
            try:  # Tensor.backward's own body, without its torch-function dispatch
                return torch.autograd.backward(tensor, *rest, **kwargs)
            finally:
                TorchFunctionMode.__exit__(self, None, None, None)
        if not torch.is_grad_enabled():
            return func(*args, **kwargs)
        handlers = [_HANDLERS.get(func)]
        if func is F.batch_norm and self._site(2) in self.in_place_sites:
            handlers = [_batch_norm_over, _batch_norm]
        if func in _ACTIVATIONS:
            site = self._site(1)
            if site in self.in_place_sites:
                handlers = [_IN_PLACE[func], _ACTIVATIONS[func]]
            elif site not in self.plain_sites:
                handlers = [_ACTIVATIONS[func]]
        for handler in handlers:
            out = None if handler is None else handler(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


def mask_bytes(numel: int) -> int:
    """Bytes of a packed 1-bit mask of `numel` elements."""
    return math.ceil(numel / 8)
