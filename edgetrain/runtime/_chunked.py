"""Frozen segments run a few samples at a time (NOTE [ Sample-chunked frozen segments ] in
cost/_chunk.py): a module's forward swapped for `chunked_forward` while a plan's step runs."""

from __future__ import annotations

import functools

import torch
from torch.autograd.graph import get_gradient_edge

from edgetrain.errors import InvalidArgumentError


class _Sink:
    """The whole input gradient that the chunks' entries write into (None: not needed)."""

    __slots__ = ("grad",)

    def __init__(self) -> None:
        self.grad: torch.Tensor | None = None


class _Entry(torch.autograd.Function):
    """A chunk's input: a view of the segment's (detached) input that requires grad through
    `token`; its backward copies the chunk's input gradient into the sink's slot."""

    @staticmethod
    def forward(ctx, x, token, sink, start):
        ctx.sink, ctx.start = sink, start
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        grad = ctx.sink.grad
        if grad is not None:
            grad[ctx.start : ctx.start + g.shape[0]].copy_(g)
        return None, None, None, None


class _Segment(torch.autograd.Function):
    """`run` over `chunk` samples at a time in both passes; each chunk's autograd graph is
    kept through its gradient edge only (what it holds: lean masks), so no chunk result or
    input stays alive."""

    @staticmethod
    def forward(ctx, x, token, run, chunk, frame):
        base, sink = x.detach(), _Sink()
        batch = base.shape[0]
        out, edges = None, []
        for a in range(0, batch, chunk):
            with torch.enable_grad(), frame():
                y = run(_Entry.apply(base[a : a + chunk], token, sink, a))
            if not isinstance(y, torch.Tensor) or y.shape[:1] != (chunk,) or y.grad_fn is None:
                raise InvalidArgumentError(
                    "a chunked module must return one tensor with the batch first that "
                    f"depends on its input; got {type(y).__name__}. Re-plan for this model"
                )
            if out is None:
                out = y.new_empty((batch, *y.shape[1:]))
            out[a : a + chunk].copy_(y)
            edges.append(get_gradient_edge(y))
            del y
        ctx.sink, ctx.edges, ctx.chunk, ctx.shape = sink, edges, chunk, base.shape
        return out

    @staticmethod
    def backward(ctx, g):
        sink = ctx.sink
        sink.grad = g.new_empty(ctx.shape) if ctx.needs_input_grad[0] else None
        for k in range(len(ctx.edges) - 1, -1, -1):
            a = k * ctx.chunk
            torch.autograd.backward(ctx.edges[k], g[a : a + ctx.chunk])
            ctx.edges[k] = None
        grad, sink.grad = sink.grad, None
        return grad, None, None, None, None


def chunked_forward(original, module: str, chunk: int, token, lean, *args, **kwargs):
    """Module `module`'s forward while a plan's step runs (`lean()` is its lean mode, None
    outside a step): its own forward, `chunk` samples at a time (`_Segment`), each chunk a
    call of its own for the lean mode's sites. Without grad, or outside a step, it is the
    module's own forward, whole."""
    mode = lean()
    if mode is None or not torch.is_grad_enabled():
        return original(*args, **kwargs)
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        raise InvalidArgumentError(
            f"the plan runs module {module!r} in chunks of {chunk} samples, which needs one "
            f"tensor argument; it was called with {len(args)} positional and {sorted(kwargs)} "
            "keyword arguments. Re-plan for this model"
        )
    x = args[0]
    if x.dim() < 2 or x.shape[0] % chunk:
        raise InvalidArgumentError(
            f"the plan runs module {module!r} in chunks of {chunk} samples, but its input has "
            f"shape {tuple(x.shape)}: the first dimension must be a multiple of {chunk}. "
            "Train with the plan's micro-batch size or re-plan"
        )
    return _Segment.apply(x, token, original, chunk, functools.partial(mode.call_frame, module))
