"""Frozen segments run a few samples at a time (no torch).

NOTE [ Sample-chunked frozen segments ]
    TinyTL's saving rests on frozen weights needing no activations; what then bounds a lean
    step is the width of one frozen block at the whole batch: MobileNetV2's expanded tensor
    (8 x 48 x 64 x 64 floats in mbv2-w0.35's second block, 6.3 MB) exists in forward and its
    gradient in backward, although every operator between the block's input and output works
    on each sample alone. A module call whose nodes are all such per-sample lean operators
    (`chunkable_segments`: frozen convolution, frozen eval-mode batch norm, relu family,
    pooling, add; one tensor in, one out, each with the batch as its first dimension) may run
    `chunk` samples at a time in both passes (`Plan.chunked_modules`):
      - forward: each chunk runs the module's own forward with grad enabled, its input an
        entry node that writes the chunk's input gradient into the whole input gradient; its
        result is copied into the whole-batch result (allocated after the first chunk) and
        only the chunk's autograd graph is kept, through its gradient edge (what it holds: the
        lean masks, never an activation);
      - backward: the whole input gradient is allocated, then each chunk, last first, runs
        its own backward from a view of the incoming gradient; its entry copies the chunk's
        input gradient into its slot. The incoming gradient is held until the last chunk.
    Parameters the segment trains (TinyTL's biases) accumulate a sum per chunk, so they equal
    the whole batch's up to summation order. The cost model simulates exactly this by
    rewriting the graph (`chunk_graph`): each chunk is a copy of the segment's nodes at the
    chunk's batch, between an `enter` view of the input and a `leave` copy into the result
    (`ENTER` / `LEAVE`, handled in `_simulate_backward`); a chunk's module calls are calls of
    their own (`_call_keys` in cost/_memory.py) and its activation sites count from zero
    (`site_key`), as the runtime gives each chunk a call frame of its own
    (`LeanBackward.call_frame`). Recomputation and paging never cover a chunked segment, and
    an in-place update (each chunk accumulates its own gradient) never meets one.
"""

from __future__ import annotations

import dataclasses

from edgetrain.cost._lean import CHUNK_BYTES, is_masked_activation, lean_saves
from edgetrain.errors import InvalidArgumentError
from edgetrain.ir import Graph, Node, OpKind, Tensor, TensorRole

ENTER = "edgetrain.chunk_enter"
LEAVE = "edgetrain.chunk_leave"

_PER_SAMPLE = frozenset(
    {OpKind.CONV1D, OpKind.CONV2D, OpKind.BATCH_NORM, OpKind.AVG_POOL2D, OpKind.MAX_POOL2D}
)


_READERS = frozenset(
    {OpKind.CONV1D, OpKind.CONV2D, OpKind.AVG_POOL2D, OpKind.MAX_POOL2D, OpKind.ADD}
)
"""What may read a segment's input: nothing that could overwrite it in place."""


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """A module call's nodes `[start, stop)`, its one input and its one result."""

    module: str
    start: int
    stop: int
    input: str
    output: str


def module_calls(module: str) -> list[str]:
    """The module calls a node runs inside: every prefix of its module path."""
    parts = module.split(".") if module else []
    return [".".join(parts[:k]) for k in range(1, len(parts) + 1)]


def _module_ranges(graph: Graph) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, n in enumerate(graph.nodes):
        for call in module_calls(n.module):
            out.setdefault(call, []).append(i)
    return out


def _segment(graph: Graph, module: str, idx: list[int]) -> Segment | None:
    """The module call's segment where its nodes are contiguous, read one outside activation
    and hand one result out; None otherwise."""
    start, stop = idx[0], idx[-1] + 1
    if len(idx) != stop - start or len(idx) < 2:
        return None
    inside = {graph.nodes[i].output for i in idx} | {
        a for i in idx for a in graph.nodes[i].aux_outputs
    }
    outer = {
        t
        for i in idx
        for t in graph.nodes[i].inputs
        if t not in inside and graph.tensor(t).role not in (TensorRole.PARAMETER, TensorRole.BUFFER)
    }
    last = graph.nodes[stop - 1].output
    leaks = [
        t
        for t in inside - {last}
        if any(j < start or j >= stop for j in graph.consumers.get(t, ()))
    ]
    if len(outer) != 1 or leaks or last == graph.loss:
        return None
    return Segment(module, start, stop, next(iter(outer)), last)


def _per_sample(graph: Graph, n: Node, rg: frozenset[str], batch: int) -> bool:
    """Whether node `n` works on each sample alone and, under lean backward, saves no
    activation (NOTE above)."""
    if n.output not in rg or graph.tensor(n.output).shape[:1] != (batch,):
        return False
    if n.op is OpKind.ADD:
        return all(graph.tensor(t).shape == graph.tensor(n.output).shape for t in n.inputs)
    if n.op not in _PER_SAMPLE and not is_masked_activation(n):
        return False
    if n.op is OpKind.BATCH_NORM and n.attr("training") is not False:
        return False
    rule = lean_saves(graph, n, rg)
    return rule is not None and not rule.saved


def segment_chunk(graph: Graph, seg: Segment) -> int:
    """Samples per chunk: the largest divisor of the batch whose widest tensor inside the
    segment stays within `CHUNK_BYTES` (at least one sample)."""
    batch = graph.tensor(seg.input).shape[0]
    widest = max(graph.tensor(graph.nodes[i].output).nbytes for i in range(seg.start, seg.stop))
    fits = max(1, CHUNK_BYTES // max(1, widest // batch))
    return max(c for c in range(1, batch + 1) if batch % c == 0 and c <= fits)


def chunkable_segments(graph: Graph, trainable: frozenset[str]) -> tuple[tuple[str, int], ...]:
    """(module, samples per chunk) of the outermost module calls that may run in chunks
    (NOTE [ Sample-chunked frozen segments ]) and whose chunk is smaller than the batch."""
    rg = graph.requires_grad_for(trainable)
    found: list[Segment] = []
    for module, idx in sorted(_module_ranges(graph).items(), key=lambda kv: kv[0].count(".")):
        if any(module.startswith(s.module + ".") for s in found):
            continue
        seg = _segment(graph, module, idx)
        if seg is None or seg.input not in rg:
            continue
        x = graph.tensor(seg.input)
        if len(x.shape) < 2 or x.shape[0] < 2 or x.role is not TensorRole.ACTIVATION:
            continue
        readers = [graph.nodes[i] for i in graph.consumers.get(seg.input, ()) if i in idx]
        if any(n.op not in _READERS for n in readers):
            continue  # an activation or batch norm could overwrite the chunk's view of x
        if all(_per_sample(graph, graph.nodes[i], rg, x.shape[0]) for i in idx):
            found.append(seg)
    chunks = [(s.module, segment_chunk(graph, s), graph.tensor(s.input).shape[0]) for s in found]
    return tuple((m, c) for m, c, batch in chunks if c < batch)


def find_segment(graph: Graph, module: str) -> Segment:
    """The segment of `module`'s call, or a typed error saying why it cannot run in chunks."""
    idx = _module_ranges(graph).get(module)
    seg = _segment(graph, module, idx) if idx else None
    if seg is None:
        raise InvalidArgumentError(
            f"module {module!r} is not one contiguous call with one input and one result in "
            f"graph {graph.model!r}; chunk only modules `chunkable_segments` lists"
        )
    return seg


def _scaled(t: Tensor, name: str, storage: str, batch: int, chunk: int, producer: str) -> Tensor:
    if t.shape[:1] != (batch,):
        return dataclasses.replace(t, name=name, storage=storage, producer=producer)
    return dataclasses.replace(
        t,
        name=name,
        shape=(chunk, *t.shape[1:]),
        storage=storage,
        storage_bytes=t.storage_bytes // batch * chunk,
        producer=producer,
    )


def _copy_node(n: Node, k: int, rename, scale: float, seg: str) -> Node:
    return dataclasses.replace(
        n,
        name=f"{n.name}@{k}",
        inputs=tuple(rename(t) for t in n.inputs),
        output=rename(n.output),
        aux_outputs=tuple(rename(t) for t in n.aux_outputs),
        saved=tuple(rename(t) for t in n.saved),
        flops_forward=round(n.flops_forward * scale),
        flops_backward_input=round(n.flops_backward_input * scale),
        flops_backward_params=round(n.flops_backward_params * scale),
        vector_ops_forward=round(n.vector_ops_forward * scale),
        vector_ops_backward=round(n.vector_ops_backward * scale),
        attrs=(*n.attrs, ("chunk", (seg, k))),
    )


def _unroll(graph: Graph, seg: Segment, chunk: int) -> tuple[list[Node], list[Tensor]]:
    """The segment's nodes once per chunk between `enter` and `leave` nodes, and the chunks'
    tensors (NOTE above)."""
    x = graph.tensor(seg.input)
    batch = x.shape[0]
    inside = {t for n in graph.nodes[seg.start : seg.stop] for t in (n.output, *n.aux_outputs)}
    nodes: list[Node] = []
    tensors: list[Tensor] = []
    for k in range(batch // chunk):
        xk, enter = f"{seg.input}@{k}", f"{seg.module}@{k}:enter"
        # a view of the input: its shape is the chunk's, its storage the whole input's
        shape = (chunk, *x.shape[1:])
        tensors.append(dataclasses.replace(x, name=xk, shape=shape, producer=enter))
        attrs = (("chunk", (seg.module, k)),)
        nodes.append(
            Node(enter, OpKind.VIEW, ENTER, (seg.input,), xk, module=seg.module, attrs=attrs)
        )

        def rename(t: str, k: int = k, xk: str = xk) -> str:
            return xk if t == seg.input else (f"{t}@{k}" if t in inside else t)

        for n in graph.nodes[seg.start : seg.stop]:
            m = _copy_node(n, k, rename, chunk / batch, seg.module)
            nodes.append(m)
            for t in (n.output, *n.aux_outputs):
                src = graph.tensor(t)
                tensors.append(_scaled(src, rename(t), f"{src.storage}@{k}", batch, chunk, m.name))
        leave = Node(
            f"{seg.module}@{k}:leave",
            OpKind.INDEX,
            LEAVE,
            (rename(seg.output), seg.input),
            seg.output,
            module=seg.module,
            attrs=attrs,
        )
        nodes.append(leave)
    return nodes, tensors


def chunk_graph(
    graph: Graph, segments: tuple[tuple[str, int], ...]
) -> tuple[Graph, dict[int, int]]:
    """`graph` with each (module, chunk) segment unrolled per chunk (NOTE [ Sample-chunked
    frozen segments ]), and the new index of every node outside the segments."""
    found = sorted(((find_segment(graph, m), c) for m, c in segments), key=lambda sc: sc[0].start)
    nodes: list[Node] = []
    tensors: dict[str, Tensor] = {t.name: t for t in graph.tensors}
    index: dict[int, int] = {}
    at = 0
    for seg, chunk in found:
        batch = graph.tensor(seg.input).shape[0]
        if chunk < 1 or batch % chunk or seg.start < at:
            raise InvalidArgumentError(
                f"module {seg.module!r} cannot run {chunk} samples at a time: its batch is "
                f"{batch} (the chunk must divide it) and segments must not overlap"
            )
        for i in range(at, seg.start):
            index[i] = len(nodes)
            nodes.append(graph.nodes[i])
        new_nodes, new_tensors = _unroll(graph, seg, chunk)
        for n in graph.nodes[seg.start : seg.stop]:
            for t in (n.output, *n.aux_outputs):
                if t != seg.output:
                    tensors.pop(t, None)
        tensors[seg.output] = dataclasses.replace(tensors[seg.output], producer=new_nodes[-1].name)
        tensors.update((t.name, t) for t in new_tensors)
        nodes.extend(new_nodes)
        at = seg.stop
    for i in range(at, len(graph.nodes)):
        index[i] = len(nodes)
        nodes.append(graph.nodes[i])
    return dataclasses.replace(graph, nodes=tuple(nodes), tensors=tuple(tensors.values())), index


def segment_ranges(graph: Graph, segments: tuple[tuple[str, int], ...]) -> list[range]:
    """The node ranges of the segments in `graph` (before `chunk_graph`)."""
    return [range(s.start, s.stop) for s in (find_segment(graph, m) for m, _ in segments)]
