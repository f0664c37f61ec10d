"""The static arena of a generated program: buffers with lifetimes, their placement, and the
SRAM a program uses beyond it. Shapes only (no weights, no C text); shared by the fp32 lowering
(`_lower.py`) and the int8 layout (`_int8_layout.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ALIGN = 8  # every buffer starts at an 8-byte-aligned offset

MIN_STACK_BYTES = 2048  # the linker script's floor for the stack (Cortex-M)
RUNTIME_RESERVE_BYTES = 512
"""SRAM the generated program uses beyond its arena, trainable parameters and labels: newlib's
reentrancy data (~100 B), the tick counter, and the stack of the driver and kernels (measured
320-340 B on Cortex-M4/M7 for every model compiled so far; the stack's frames do not grow
with the model)."""


@dataclass(frozen=True)
class Buffer:
    """One arena buffer: `nbytes` at `offset`, live from step `first` to step `last`."""

    name: str
    nbytes: int
    first: int
    last: int
    offset: int


def aligned(n: int) -> int:
    """`n` rounded up to ALIGN."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


def arena_bytes(buffers: Sequence[Buffer]) -> int:
    return max((b.offset + b.nbytes for b in buffers), default=0)


def place_largest_first(sizes: dict[str, int], span: dict[str, list[int]]) -> list[Buffer]:
    """NOTE [ Arena assignment ] (edgetrain/codegen/_lower.py): largest first, each at the
    lowest aligned offset free of every placed buffer whose lifetime intersects its own."""
    order = sorted(sizes, key=lambda k: (-sizes[k], span[k][0], k))
    placed: list[Buffer] = []
    for k in order:
        size = aligned(sizes[k])
        first, last = span[k]
        live = sorted(
            (b for b in placed if not (b.last < first or b.first > last)), key=lambda b: b.offset
        )
        off = 0
        for b in live:
            if off + size <= b.offset:
                break
            off = max(off, aligned(b.offset + b.nbytes))
        placed.append(Buffer(k, sizes[k], first, last, off))
    return sorted(placed, key=lambda b: b.offset)


@dataclass(frozen=True)
class Segment:
    """A buffer of a placement group: `rel` bytes above the group's base offset."""

    name: str
    rel: int
    nbytes: int
    first: int
    last: int


def place_groups(groups: Sequence[tuple[Segment, ...]]) -> list[Buffer]:
    """NOTE [ Arena assignment ]'s placement, group by group in the given order: the lowest
    8-byte-aligned base at which no segment overlaps a placed buffer of intersecting lifetime
    (a group of one segment is one buffer; an in-place chain is several, at one base)."""
    placed: list[Buffer] = []
    for segs in groups:
        conf = [
            [
                (b.offset, b.offset + aligned(b.nbytes))
                for b in placed
                if not (b.last < g.first or b.first > g.last)
            ]
            for g in segs
        ]
        cands = sorted(
            {0} | {hi - g.rel for g, cs in zip(segs, conf) for _, hi in cs if hi >= g.rel}
        )
        for base in cands:
            if all(
                hi <= base + g.rel or base + g.rel + aligned(g.nbytes) <= lo
                for g, cs in zip(segs, conf)
                for lo, hi in cs
            ):
                break
        placed.extend(Buffer(g.name, g.nbytes, g.first, g.last, base + g.rel) for g in segs)
    return sorted(placed, key=lambda b: (b.offset, b.name))


def _size(segs) -> int:
    return max(g.rel + g.nbytes for g in segs)


def _first(segs) -> int:
    return min(g.first for g in segs)


def _length(segs) -> int:
    return max(g.last for g in segs) - _first(segs) + 1


_ORDERS = (
    lambda gs: (-_size(gs), _first(gs), gs[0].name),  # largest first (TFLite Micro's)
    lambda gs: (_first(gs), -_size(gs), gs[0].name),  # first use
    lambda gs: (-_length(gs), -_size(gs), gs[0].name),  # longest lifetime
    lambda gs: (-_size(gs) * _length(gs), gs[0].name),  # size x lifetime
)


def peak_live_bytes(groups: Sequence[tuple[Segment, ...]]) -> int:
    """The most (aligned) segment bytes live at one step: the bound no packing can beat."""
    last = max(g.last for segs in groups for g in segs)
    live = [0] * (last + 1)
    for segs in groups:
        for g in segs:
            for t in range(g.first, g.last + 1):
                live[t] += aligned(g.nbytes)
    return max(live)


def pack_groups(groups: Sequence[tuple[Segment, ...]]) -> tuple[list[Buffer], int]:
    """The smallest arena of a few placement orders, stopping early at the bound; returns
    (buffers, peak live bytes)."""
    bound = peak_live_bytes(groups)
    best: list[Buffer] = []
    for key in _ORDERS:
        bufs = place_groups(sorted(groups, key=key))
        if not best or arena_bytes(bufs) < arena_bytes(best):
            best = bufs
        if arena_bytes(best) <= bound:
            break
    return best, bound
