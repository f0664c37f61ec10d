"""A lifetime-aware memory arena (Melon's memory pool) over a profiled allocation trace.

NOTE [ Arena layouts and fragmentation ]
    A training step's tensor allocations are recorded from the CPU allocator's own events
    (torch.profiler with `profile_memory=True`, as `edgetrain.measure` does), each allocation
    paired with its free by address: a `Block` is (size, first event, last event). Tensors live
    when the region starts (weights, optimizer state, the batch) are outside the arena.

    `first_fit_layout` places blocks in time order at the lowest free offset, as a
    general-purpose allocator does; holes left by freed blocks that later, larger tensors cannot
    use are fragmentation. `lifetime_aware_layout` knows every lifetime in advance (Melon's
    pool, like TFLite's greedy-by-size planner): largest blocks first, each at the lowest offset
    that overlaps no already placed block alive at the same time. The arena a layout needs is
    max(offset + size); no layout can need less than the most bytes live at once
    (`max_live_bytes`); the difference is the fragmentation the layout adds to the peak.
    Sizes are rounded up to `ALIGNMENT_BYTES` (c10's CPU allocation alignment).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

from edgetrain.measure import stderr_silenced, walk_events

ALIGNMENT_BYTES = 64


@dataclass(frozen=True, slots=True)
class Block:
    size_bytes: int
    start: int  # index of its allocation event
    end: int  # index of its free event (the trace's length when never freed)


@dataclass(frozen=True, slots=True)
class Layout:
    offsets_bytes: tuple[int, ...]  # per block, in the order given
    arena_bytes: int
    max_live_bytes: int

    @property
    def fragmentation_bytes(self) -> int:
        return self.arena_bytes - self.max_live_bytes


def _aligned(n: int) -> int:
    return -(-n // ALIGNMENT_BYTES) * ALIGNMENT_BYTES


def record_blocks(fn: Callable[[], object]) -> tuple[Block, ...]:
    """Run `fn()` under the allocator profiler; return the blocks it allocated (CPU)."""
    prof = profile(
        activities=[ProfilerActivity.CPU],
        profile_memory=True,
        record_shapes=False,
        with_stack=False,
    )
    logger = logging.getLogger("torch")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with stderr_silenced():
            prof.__enter__()
        try:
            fn()
        finally:
            with stderr_silenced():
                prof.__exit__(None, None, None)
    finally:
        logger.setLevel(old)
    events = []
    for node in walk_events(prof.profiler.kineto_results.experimental_event_tree()):
        if node.tag != _EventType.Allocation or node.extra_fields.device.type != "cpu":
            continue
        events.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.ptr))
    events.sort(key=lambda e: e[0])
    open_: dict[int, tuple[int, int]] = {}
    blocks: list[Block] = []
    for k, (_, size, ptr) in enumerate(events):
        if size > 0:
            open_[ptr] = (size, k)
        elif ptr in open_:  # frees of blocks born before the region are not ours
            s, start = open_.pop(ptr)
            blocks.append(Block(s, start, k))
    blocks.extend(Block(s, start, len(events)) for s, start in open_.values())
    blocks.sort(key=lambda b: b.start)
    return tuple(blocks)


def max_live_bytes(blocks: tuple[Block, ...]) -> int:
    deltas = sorted(
        [(b.start, _aligned(b.size_bytes)) for b in blocks]
        + [(b.end, -_aligned(b.size_bytes)) for b in blocks],
        key=lambda e: (e[0], e[1]),
    )  # a free at the same index comes first
    run = peak = 0
    for _, d in deltas:
        run += d
        peak = max(peak, run)
    return peak


def _lowest_gap(placed: list[tuple[int, int]], size: int) -> int:
    """Lowest offset where [off, off + size) misses every (offset, size) in `placed`."""
    off = 0
    for o, s in sorted(placed):
        if off + size <= o:
            return off
        off = max(off, o + s)
    return off


def first_fit_layout(blocks: tuple[Block, ...]) -> Layout:
    """Time-ordered first fit: what a general-purpose allocator does without lifetimes."""
    order = sorted(range(len(blocks)), key=lambda i: blocks[i].start)
    live: dict[int, tuple[int, int]] = {}
    offsets = [0] * len(blocks)
    frees = sorted(range(len(blocks)), key=lambda i: blocks[i].end)
    fi = 0
    arena = 0
    for i in order:
        while fi < len(frees) and blocks[frees[fi]].end <= blocks[i].start:
            live.pop(frees[fi], None)
            fi += 1
        size = _aligned(blocks[i].size_bytes)
        off = _lowest_gap(list(live.values()), size)
        offsets[i] = off
        live[i] = (off, size)
        arena = max(arena, off + size)
    return Layout(tuple(offsets), arena, max_live_bytes(blocks))


def lifetime_aware_layout(blocks: tuple[Block, ...]) -> Layout:
    """Melon's pool: largest first (longest-lived on ties), each at the lowest offset free for
    its whole lifetime."""
    order = sorted(
        range(len(blocks)),
        key=lambda i: (
            -_aligned(blocks[i].size_bytes),
            -(blocks[i].end - blocks[i].start),
            blocks[i].start,
        ),
    )
    placed: list[int] = []
    offsets = [0] * len(blocks)
    arena = 0
    for i in order:
        b = blocks[i]
        size = _aligned(b.size_bytes)
        overlapping = [
            (offsets[j], _aligned(blocks[j].size_bytes))
            for j in placed
            if blocks[j].start < b.end and b.start < blocks[j].end
        ]
        offsets[i] = _lowest_gap(overlapping, size)
        placed.append(i)
        arena = max(arena, offsets[i] + size)
    return Layout(tuple(offsets), arena, max_live_bytes(blocks))
