"""The int8 C trainer's arena layout, from shapes only: which kernel runs each op, every
buffer's size, lifetime and offset, and the program's SRAM peak. No weight values and no C
text: the planner calls `int8_layout` for every candidate, and `render_int8`
(`_int8_render.py`) lays its program out with the very same `place_int8`.

NOTE [ int8 SRAM of the C trainer ]
    `int8_layout(graph, trainable, batch_size=, target=)` is the C trainer's memory, computed
    from shapes only (no weight is rendered); `render_int8` lays its program out with the very
    same function, so `Int8ArenaLayout.predicted_peak_sram_bytes` is exactly the build file's
    `codegen_predicted_peak_sram_bytes`. Memory in brief: int8 activations (1 byte per
    element), a 1-byte "not clamped" mask per output element of every op on the backward path,
    real-valued gradients only on that path, frozen int8 weights and int32 biases in flash,
    trainable ones in SRAM; one arena. It counts:
    - the arena (`arena_bytes`): one step is a linear schedule, the forward ops (steps
      0..F-1), the loss (step F), then the backward ops of the pruned backward in reverse
      (steps F+1..). Its buffers, each with a lifetime [first, last] step in which it is
      written or read: `a:<t>` int8 activations (B x numel bytes; the input batch, every op's
      output; an activation the backward reads -- the input of a trainable op -- lives until
      that backward step); `m:<t>` 1-byte "not clamped" masks of the ops on the backward
      path; `g:<t>` real-valued gradients (8 bytes on the host, 4 on Cortex-M); the int8 dq of
      a conv/linear on the backward path (NOTE [ int8 integer backward ], edgetrain/quant/
      _train.py: dy x mask x M quantised per tensor) is written over its mask, which nothing
      reads after it, so it has no buffer of its own; a conv whose output only a global
      average pool reads (mbv2's last 1x1 conv, 1280 x 4 x 4 at 128x128) has no dy buffer:
      its dy is the pool's dy / P, read where the dq is computed (`qacc_quant` with a
      `qgap_dacc`, the same operations as the stored path, so bit for bit the same), and the
      pool's dy (B x C reals) lives until that step -- the 81,920 B the stored gradient took
      would otherwise dominate every update that reaches past mbv2's classifier; `z:<logits>`
      the loss's K reals of logits (not a stack array); `p:<op>` the weight-gradient scratch
      of a trainable 3x3
      conv (stride 1 or 2): one input plane padded with the input's zero point, (H + 2p) x
      (W + 2p) bytes + 8 (`pad_plane_bytes`), live at the op's backward step, so every output
      takes the same DSP loop (no border cases), and for a one-group 3x3 a second plane (with
      at least 2 input channels), then where its dq rows fit as 16-bit pairs (8 Co ceil(Ho
      Wo / 4) bytes at most 4 KiB) the paired-output tables and rows
      (`paired_weight_grad_bytes`, NOTE [ Paired-output weight gradient ] in
      int8_runtime.c), else Ho x Wo int32 window offsets, 2 int32 per output channel and Ho x
      Wo words of a tap pair's rows (`weight_grad_scratch_bytes`, NOTE [ int8 mat-mult weight
      gradient ]); a trainable one-group 1x1 (stride 1, at least 2 input channels) has
      `p:<op>` too: the paired-output bytes where they fit, else Ho x Wo words of an input
      channel pair's rows and 2 int32 per output channel;
      a one-group 1x1 (stride 1, no padding) whose input gradient runs has a `p:<op>` of at
      least its weights' 16-bit output-channel pairs for a group of input channels
      (`input_grad_scratch_bytes`, NOTE [ Paired 1x1 input gradient ]), and a one-group 3x3
      at stride 2 with Co >= 4 whose input gradient runs one of one sample's dq as 4-channel
      16-bit pairs and one input channel's weights as 16-bit pairs (NOTE [ Paired stride-2 3x3 input
      gradient ]), and a 3x3 depthwise conv at stride 1 with padding 1 whose input gradient
      runs one of a zero-padded dq plane and H x W int32 sums where that is at most 4 KiB
      (NOTE [ Depthwise input gradient as a forward ]): the input gradient
      and the weight gradient run one after the other, so they share it (the larger size);
      `f:<op>` the forward scratch of a trainable conv, live at its forward step
      (`forward_scratch_bytes`): for a one-group 3x3 (stride 1 or 2) or 1x1 the mat-mult
      kernel's tap offsets and two columns, 8 Ci K^2 bytes (NOTE [ int8 mat-mult forward ] in
      int8_runtime.c), and its weights unpacked to 16-bit pairs where that is at most 4 KiB
      (`wpair16_bytes`, NOTE [ Paired weight rows ]), then 16 bytes per output channel where
      Co <= 64 (`rq_table_bytes`, NOTE [ Hoisted requantisation ]), then for a 3x3 two byte
      patches of Ci K^2 taps (NOTE [ Mat-mult 3x3 columns ]); for another 3x3 the padded plane
      and Ho x Wo int32 sums (none for a depthwise one: NOTE [ Padded 3x3 forward ]); `s:<op>`
      kernel scratch, which is
      * a frozen pointwise -> depthwise pair whose intermediate nothing else reads: fused, one
        expanded channel at a time (H x W bytes), the expanded tensor never exists (batch 1);
      * in-place frozen depthwise (TinyEngine's in-place depthwise): an op off the backward
        path whose input is read by nothing else (one consumer, not the graph input, not read
        by the backward) computes each output channel plane into one Ho x Wo plane and copies
        it over its input; in NCHW plane i = n*C + c lands at i*Ho*Wo, inside input planes
        <= i, already consumed (any stride, Ho*Wo <= H*W). Output and input share one buffer;
      * in-place frozen pointwise with Cout <= Cin (stride 1, same conditions): pixel by
        pixel, the Cin inputs of pixel q go to a Cin-byte temp, the Cout outputs are written at
        (n*Cout + c)*H*W + q, bytes of pixel q (already read) or of earlier pixels/samples.
      * the rings of the line-buffered chain (`line_buffer=True`, NOTE [ Line-buffered frozen
        prefix ] below): `s:<op>` for each chain op but the last, R x Co x Wo bytes (one
        sample's), live at the chain's step.
      An in-place chain x0 -> x1 -> .. -> xk (in-place outputs never grow) is one placement
      group at one base offset: xk's [0, size) is the buffer `a:xk`, and each xj's bytes above
      x(j+1)'s are the buffer `a:xj`, live from x0's first step to xj's last (so a shrinking
      chain frees its top as it goes; a member with no bytes of its own has no buffer). Groups
      are placed as NOTE [ Arena assignment ] (edgetrain/codegen/_lower.py) places buffers:
      the lowest 8-byte-aligned base at which none of its buffers overlaps a placed buffer of
      intersecting lifetime; in four orders (largest first, first use, longest lifetime, size
      x lifetime), keeping the smallest arena (stopping early at the bound). `peak_live_bytes`,
      the most (8-byte-rounded) buffer bytes live at one step, is the bound no packing can
      beat (`pack_groups`, edgetrain/codegen/_arena.py).
    - `trainable_bytes`: the trainable ops' int8 weights and int32 biases (`static` arrays in
      .data, updated in place; frozen ones are `const`, in flash);
    - 4 x B bytes of labels and RUNTIME_RESERVE_BYTES (edgetrain/codegen/_arena.py), which
      covers the platform's other statics (~130 B) and most of the stack (~500 B measured on
      Cortex-M7: no kernel keeps a large local); the measured peak (`mcu_run`: .data + .bss +
      the painted stack's high-water mark) is within 0.1 % of the prediction for mbv2-w0.35
      at 128x128.
    Not counted: the requantisation constants, QAS scales and frozen weights (const, flash),
    the baked samples (flash).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edgetrain.codegen._arena import (
    RUNTIME_RESERVE_BYTES,
    Buffer,
    Segment,
    aligned,
    arena_bytes,
    pack_groups,
)
from edgetrain.codegen._targets import Target, TargetKind, get_target
from edgetrain.errors import UnsupportedPlanError

INT8_OPS = ("QConv2d", "QLinear", "QAdd", "QGlobalAvgPool")  # the ops of a QuantGraph it runs
WEIGHTED_OPS = ("QConv2d", "QLinear")


class Int8Kernel(enum.Enum):
    """How the C trainer runs one forward op (NOTE [ int8 SRAM of the C trainer ])."""

    OUT_OF_PLACE = "out-of-place"  # its own output buffer
    FUSED_INTO_DEPTHWISE = "fused-into-depthwise"  # a pointwise run inside its depthwise reader
    FUSED_POINTWISE_DEPTHWISE = "fused-pointwise-depthwise"  # the depthwise running the pair
    IN_PLACE_DEPTHWISE = "in-place-depthwise"
    IN_PLACE_POINTWISE = "in-place-pointwise"
    LINE_BUFFERED = "line-buffered"  # in the line-buffered chain of frozen convs at the input


@dataclass(frozen=True)
class Int8ArenaLayout:
    """The int8 C trainer's SRAM, from shapes (NOTE [ int8 SRAM of the C trainer ])."""

    target: str
    batch_size: int
    arena_bytes: int
    trainable_bytes: int
    labels_bytes: int
    runtime_reserve_bytes: int
    predicted_peak_sram_bytes: int  # arena + trainable + labels + runtime reserve
    peak_live_bytes: int  # the most (aligned) buffer bytes live at one step: the arena's bound
    buffers: tuple[Buffer, ...]  # arena buffers by offset (in-place outputs share their input's)
    kernels: tuple[tuple[str, Int8Kernel], ...]  # forward op name -> how it runs

    def kernel(self, op_name: str) -> Int8Kernel:
        for name, k in self.kernels:
            if name == op_name:
                return k
        raise UnsupportedPlanError(
            f"no op {op_name!r} in this int8 program; its ops: "
            f"{', '.join(n for n, _ in self.kernels)}"
        )


@dataclass(frozen=True)
class Int8Placement:
    """A laid-out int8 program: its `Int8ArenaLayout` and what the renderer needs to address
    every buffer and pick every kernel."""

    layout: Int8ArenaLayout
    rg: frozenset  # tensors whose gradient the backward computes
    bwd_ops: tuple  # ops on the backward path, in backward order
    fused: dict  # depthwise op name -> the pointwise op name it runs
    kernels: dict  # op name -> Int8Kernel
    alias: dict  # buffer key -> the arena buffer it lives in
    offsets: dict  # arena buffer name -> offset
    numel: dict  # tensor -> B x elements
    tensors: dict  # tensor name -> QTensor
    chain: tuple  # the line-buffered chain's ops, in order (empty: none)
    rings: dict  # chain op name (all but the last) -> rows of its output in its ring
    gap_of: dict  # conv op name -> the global average pool whose backward it fuses

    def offset(self, key: str) -> int:
        return self.offsets[self.alias[key]]


# -- the public entry points -------------------------------------------------------------------
def int8_layout(
    graph,
    trainable: Sequence[str],
    *,
    batch_size: int = 1,
    target: "str | Target" = "cortex-m7",
    line_buffer: bool = False,
) -> Int8ArenaLayout:
    """The SRAM of the int8 C trainer `render_int8` writes for `graph` (an
    `edgetrain.quant.QuantGraph`) with the conv/linear ops named in `trainable` updated, from
    shapes only; NOTE [ int8 SRAM of the C trainer ] says what it counts. `line_buffer`
    streams the frozen conv prefix row by row (the chain length that minimises the arena)."""
    check_line_buffer(line_buffer)
    return place_int8(graph, list(trainable), batch_size, get_target(target), line_buffer).layout


int8_memory = int8_layout  # its earlier name, which edgetrain.strategies (TTE) imports


def int8_trainable_ops(plan, graph) -> tuple[str, ...]:
    """The int8 graph's conv/linear ops a plan (`edgetrain.planner.Plan`) trains: an op trains
    when the plan trains a parameter of its module or of the batch norm folded into it (the
    next module of the same parent, as in conv -> BN -> act)."""
    mods = set()
    for p in plan.params:
        if p.name in plan.trainable():
            m = p.name.rsplit(".", 1)[0]
            mods.add(m)
            head, _, last = m.rpartition(".")
            if last.isdigit() and int(last) > 0:
                mods.add(f"{head}.{int(last) - 1}" if head else str(int(last) - 1))
    return tuple(op.name for op in graph.weighted_ops if op.name in mods)


def check_line_buffer(line_buffer) -> None:
    if not isinstance(line_buffer, bool):
        raise UnsupportedPlanError(f"line_buffer={line_buffer!r} must be True or False")


def check_program(graph, trainable: Sequence[str], batch_size: int) -> None:
    """Typed refusals of what the int8 C trainer does not run."""
    kinds = {type(op).__name__ for op in graph.ops}
    if not kinds <= set(INT8_OPS):
        raise UnsupportedPlanError(
            f"int8 graph ops {sorted(kinds)}: the C generator knows {', '.join(INT8_OPS)}"
        )
    names = [op.name for op in graph.weighted_ops]
    bad = [t for t in trainable if t not in names]
    if bad or not trainable:
        raise UnsupportedPlanError(
            f"trainable int8 layers {list(trainable)}: choose among {', '.join(names)}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise UnsupportedPlanError(f"batch size {batch_size!r} must be a positive integer")


def inputs_of(op) -> list[str]:
    return [op.a, op.b] if hasattr(op, "a") else [op.input]


# -- NOTE [ Line-buffered frozen prefix ] ------------------------------------------------------
#     Line buffering (`line_buffer=True` on `int8_layout` and `render_int8`; off by default,
#     and then every number of NOTE [ int8 SRAM of the C trainer ] is unchanged -- the TTE
#     strategy's prediction does not stream rows): MCUNetV2's row-streamed execution of the
#     frozen prefix. The line-bufferable chain is the longest run of convs (standard /
#     depthwise / pointwise, any stride and padding) c0 -> c1 -> .. starting at a reader of
#     the graph input, each frozen and off the backward path, each output but the last read by
#     exactly one op, the next conv of the run (so no backward reads it). The chain runs as one
#     forward step (at its last op's step; Int8Kernel.LINE_BUFFERED): the graph input and the
#     last op's output are materialised in full; op j's output (j < last) exists only as a ring
#     of R_j = min(K_(j+1), H_(j+1)) rows (row r in slot r mod R_j, Co x Wo bytes; a pointwise
#     reader needs one row), the arena buffer `s:c_j`. The last op produces its rows in order;
#     before op j computes its row r it makes op j-1 produce its rows up to
#     min(H-1, r*s - p + K - 1), in order, which leaves exactly rows
#     [r*s - p, r*s - p + K - 1] (clipped to [0, H)) in the ring (R_j >= K and no row is
#     produced twice). Each output element is the same int32 sum over the same in-bounds taps
#     as qconv_fwd's (zero-point padding: out-of-bounds taps are skipped, `x - zx` = 0), so
#     the results are the unfused program's bit for bit. Batches loop over samples, reusing
#     the rings. The chain is walked with an explicit cursor (2 ints per op on the stack, no
#     recursion; `qlb_chain` in edgetrain/codegen/c/int8_runtime.c).
#     Which prefix: every length 2 .. the longest chain (and none) is laid out, and the one
#     with the smallest arena is kept (the shortest of equal ones: a chain that does not pay
#     is not used); `Int8ArenaLayout.kernels` says which ops stream. mbv2-w0.35 at 3x128x128,
#     classifier only, batch 1, Cortex-M7: the chain is features.0.0 .. features.2.conv.2.0
#     (6 convs; rings 3x16x64 + 16x64 + 8x64 + 3x48x64 + 48x32 B), live at its step: input
#     49,152 + rings 15,360 + output 8x32x32 = 8,192 = the arena, 72,704 B (the busiest step;
#     a 3-op chain would leave 86,016 B), predicted peak 86,060 B, measured under QEMU
#     86,236 B (off: 114,688 / 128,044 / 128,140 B).
def place_int8(
    graph, trainable: Sequence[str], B: int, tgt: Target, line_buffer: bool
) -> Int8Placement:
    """Without `line_buffer`: the plain layout. With it: the chain length (none, or 2 .. the
    longest chain) whose arena is smallest (the shortest of equal ones)."""
    best = _place(graph, trainable, B, tgt, ())
    if not line_buffer:
        return best
    chain = _max_chain(graph, trainable)
    for n in range(2, len(chain) + 1):
        lay = _place(graph, trainable, B, tgt, tuple(chain[:n]))
        if lay.layout.arena_bytes < best.layout.arena_bytes:
            best = lay
    return best


def _max_chain(graph, trainable: Sequence[str]) -> list[str]:
    """The longest line-bufferable chain (NOTE [ Line-buffered frozen prefix ]): frozen convs
    off the backward path from the graph input, each output read only by the next one."""
    rg, consumers = _grad_and_consumers(graph, trainable)

    def ok(op) -> bool:
        return type(op).__name__ == "QConv2d" and op.name not in trainable and op.output not in rg

    readers: dict[str, list] = {}
    for op in graph.ops:
        for i in inputs_of(op):
            readers.setdefault(i, []).append(op)
    first = [op for op in readers.get(graph.input, []) if ok(op)]
    if not first:
        return []
    chain = [first[0]]
    while True:
        t = chain[-1].output
        nxt = readers.get(t, [])
        if t == graph.output or consumers.get(t, 0) != 1 or len(nxt) != 1 or not ok(nxt[0]):
            break
        chain.append(nxt[0])
    return [op.name for op in chain]


# -- what runs how -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Program:
    """The graph's ops as the C trainer runs them: shapes, the backward path, the kernels."""

    graph: object
    trainable: tuple
    B: int
    real: int  # bytes of a real-valued gradient element (ET_REAL)
    T: dict
    numel: dict
    rg: frozenset
    consumers: dict
    bwd_ops: tuple
    chain: tuple
    rings: dict
    gap_of: dict
    fused: dict
    kernels: dict
    ops_by_name: dict


def _grad_and_consumers(graph, trainable: Sequence[str]) -> tuple[set, dict]:
    rg: set[str] = set()
    for op in graph.ops:
        if getattr(op, "name", None) in trainable or any(i in rg for i in inputs_of(op)):
            rg.add(op.output)
    consumers: dict[str, int] = {}
    for op in graph.ops:
        for i in inputs_of(op):
            consumers[i] = consumers.get(i, 0) + 1
    return rg, consumers


def _pool_fused(graph, rg, consumers: dict) -> dict:
    """Convs on the backward path whose output only a global average pool reads: their dacc is
    computed from the pool's dy where it is used (NOTE [ int8 SRAM of the C trainer ])."""
    by_out = {op.output: op for op in graph.ops}
    out = {}
    for op in graph.ops:
        if type(op).__name__ != "QGlobalAvgPool" or op.input not in rg:
            continue
        src = by_out.get(op.input)
        if src is not None and type(src).__name__ == "QConv2d" and consumers.get(op.input) == 1:
            out[src.name] = op
    return out


def _fused_pairs(graph, rg, consumers: dict, in_chain: set, B: int) -> dict[str, str]:
    """Frozen pointwise -> depthwise pairs whose intermediate nothing else reads (batch 1):
    depthwise op name -> pointwise op name."""
    fused: dict[str, str] = {}
    by_out = {op.output: op for op in graph.ops}
    for op in graph.ops:
        if (
            type(op).__name__ != "QConv2d"
            or op.kind.value != "depthwise"
            or op.output in rg
            or op.name in in_chain
        ):
            continue
        src = by_out.get(op.input)
        if (
            src is not None
            and type(src).__name__ == "QConv2d"
            and src.name not in in_chain
            and src.kind.value == "pointwise"
            and src.output not in rg
            and consumers.get(src.output, 0) == 1
            and B == 1
        ):
            fused[op.name] = src.name
    return fused


def _in_place_kernel(op, graph, consumers: dict, bwd_reads: set, rg, T: dict) -> Int8Kernel:
    """A frozen conv off the backward path whose input nothing else reads runs in place when
    its shapes allow (NOTE [ int8 SRAM of the C trainer ])."""
    if type(op).__name__ != "QConv2d" or op.output in rg:
        return Int8Kernel.OUT_OF_PLACE
    x = op.input
    if x == graph.input or consumers.get(x, 0) != 1 or x in bwd_reads:
        return Int8Kernel.OUT_OF_PLACE
    ci, h, w = T[x].shape
    co, ho, wo = T[op.output].shape
    if op.kind.value == "depthwise" and ci == co and ho * wo <= h * w:
        return Int8Kernel.IN_PLACE_DEPTHWISE
    if (
        op.kind.value == "pointwise"
        and op.groups == 1
        and op.stride == 1
        and op.padding == 0
        and op.weight.shape[-1] == 1
        and (ho, wo) == (h, w)
        and co <= ci
    ):
        return Int8Kernel.IN_PLACE_POINTWISE
    return Int8Kernel.OUT_OF_PLACE


def _kernels(graph, trainable, rg, consumers, chain, fused, T) -> dict[str, Int8Kernel]:
    fused_src = set(fused.values())
    bwd_reads = {op.input for op in graph.ops if getattr(op, "name", None) in trainable}
    kernels: dict[str, Int8Kernel] = {}
    for op in graph.ops:
        if op.name in chain:
            kernels[op.name] = Int8Kernel.LINE_BUFFERED
        elif op.name in fused:
            kernels[op.name] = Int8Kernel.FUSED_POINTWISE_DEPTHWISE
        elif op.name in fused_src:
            kernels[op.name] = Int8Kernel.FUSED_INTO_DEPTHWISE
        else:
            kernels[op.name] = _in_place_kernel(op, graph, consumers, bwd_reads, rg, T)
    return kernels


def _program(
    graph, trainable: Sequence[str], B: int, tgt: Target, chain: tuple[str, ...]
) -> _Program:
    check_program(graph, trainable, B)
    T = {t.name: t for t in graph.tensors}
    numel = {k: B * math.prod(t.shape) for k, t in T.items()}
    rg, consumers = _grad_and_consumers(graph, trainable)
    ops_by_name = {op.name: op for op in graph.ops}
    rings: dict[str, int] = {}  # chain op -> rows of its output the next op's window spans
    for a, b in zip(chain, chain[1:]):
        nb = ops_by_name[b]
        rings[a] = min(int(nb.weight.shape[-1]), T[nb.input].shape[1])
    fused = _fused_pairs(graph, rg, consumers, set(chain), B)
    kernels = _kernels(graph, trainable, rg, consumers, set(chain), fused, T)
    return _Program(
        graph=graph,
        trainable=tuple(trainable),
        B=B,
        real=8 if tgt.kind is TargetKind.HOST else 4,
        T=T,
        numel=numel,
        rg=frozenset(rg),
        consumers=consumers,
        bwd_ops=tuple(op for op in reversed(graph.ops) if op.output in rg),
        chain=tuple(chain),
        rings=rings,
        gap_of=_pool_fused(graph, rg, consumers),
        fused=fused,
        kernels=kernels,
        ops_by_name=ops_by_name,
    )


# -- buffers and lifetimes ---------------------------------------------------------------------
@dataclass
class _Uses:
    """Buffer keys with their sizes and lifetimes, and the keys that live in another's buffer
    (`parent`: an in-place output in its input's)."""

    sizes: dict[str, int] = field(default_factory=dict)
    span: dict[str, list[int]] = field(default_factory=dict)
    parent: dict[str, str] = field(default_factory=dict)

    def __call__(self, key: str, step: int, nbytes: int) -> None:
        self.sizes[key] = max(self.sizes.get(key, 0), nbytes)
        s = self.span.setdefault(key, [step, step])
        s[0], s[1] = min(s[0], step), max(s[1], step)

    def root(self, k: str) -> str:
        while k in self.parent:
            k = self.parent[k]
        return k


# What a forward op reads at its step, by kernel, and the scratch it uses there; None: it
# does not run at a step of its own.
_StepUse = Callable[[_Program, object, int, _Uses], "list[str] | None"]


def _reads_inputs(p: _Program, op, i: int, use: _Uses) -> list[str]:
    return inputs_of(op)


def _runs_inside_reader(p: _Program, op, i: int, use: _Uses) -> None:
    return None  # runs inside the depthwise op that reads it


def _runs_chain(p: _Program, op, i: int, use: _Uses) -> "list[str] | None":
    if op.name != p.chain[-1]:
        return None  # the whole chain runs at its last op's step
    for a in p.chain[:-1]:  # one sample's rings (the chain loops over the batch)
        co, _, wo = p.T[p.ops_by_name[a].output].shape
        use("s:" + a, i, p.rings[a] * co * wo)
    return [p.graph.input]


def _runs_pair(p: _Program, op, i: int, use: _Uses) -> list[str]:
    use("s:" + op.name, i, p.numel[op.input] // p.T[op.input].shape[0])  # one expanded plane
    return [p.ops_by_name[p.fused[op.name]].input]


def _runs_dw_in_place(p: _Program, op, i: int, use: _Uses) -> list[str]:
    use("s:" + op.name, i, math.prod(p.T[op.output].shape[1:]))  # one output plane
    return inputs_of(op)


def _runs_pw_in_place(p: _Program, op, i: int, use: _Uses) -> list[str]:
    use("s:" + op.name, i, p.T[op.input].shape[0])  # one pixel's input channels
    return inputs_of(op)


_STEP_USES: dict[Int8Kernel, _StepUse] = {
    Int8Kernel.OUT_OF_PLACE: _reads_inputs,
    Int8Kernel.FUSED_INTO_DEPTHWISE: _runs_inside_reader,
    Int8Kernel.FUSED_POINTWISE_DEPTHWISE: _runs_pair,
    Int8Kernel.IN_PLACE_DEPTHWISE: _runs_dw_in_place,
    Int8Kernel.IN_PLACE_POINTWISE: _runs_pw_in_place,
    Int8Kernel.LINE_BUFFERED: _runs_chain,
}


def _forward_uses(p: _Program, use: _Uses) -> dict[str, list[str]]:
    """The forward steps' buffers; returns the in-place chains (first key -> keys sharing its
    storage), whose members `use.parent` maps to the chain's first key."""
    g = p.graph
    chains: dict[str, list[str]] = {}
    for op in g.ops:
        if p.kernels[op.name] in (Int8Kernel.IN_PLACE_DEPTHWISE, Int8Kernel.IN_PLACE_POINTWISE):
            r = use.root("a:" + op.input)
            use.parent["a:" + op.output] = r
            chains.setdefault(r, [r]).append("a:" + op.output)
    use("a:" + g.input, 0, p.numel[g.input])
    for i, op in enumerate(g.ops):
        ins = _STEP_USES[p.kernels[op.name]](p, op, i, use)
        if ins is None:
            continue
        for t in ins:
            use("a:" + t, i, p.numel[t])
        if op.name in p.trainable and p.kernels[op.name] is Int8Kernel.OUT_OF_PLACE:
            fb = forward_scratch_bytes(op, p.T[op.input].shape, p.T[op.output].shape)
            if fb:
                use("f:" + op.name, i, fb)
        use("a:" + op.output, i, p.numel[op.output])
        if op.output in p.rg and type(op).__name__ != "QGlobalAvgPool":
            use("m:" + op.output, i, p.numel[op.output])
    return chains


def _weighted_bwd_uses(p: _Program, op, s: int, use: _Uses) -> None:
    use("m:" + op.output, s, p.numel[op.output])
    if op.name in p.gap_of:  # dy is the pool's dy / P, read where dq is computed: no buffer
        gap = p.gap_of[op.name]
        use("g:" + gap.output, s, p.numel[gap.output] * p.real)
    if op.name in p.trainable:
        use("a:" + op.input, s, p.numel[op.input])
    pb = backward_scratch_bytes(
        op, p.T[op.input].shape, p.T[op.output].shape, op.name in p.trainable, op.input in p.rg
    )
    if pb:
        use("p:" + op.name, s, pb)
    if op.input in p.rg:
        use("g:" + op.input, s, p.numel[op.input] * p.real)


PAD_SLACK_BYTES = 8  # Q_PAD_SLACK in int8_runtime.c: bytes its 4-byte loads read past a plane


def runs_mat_mult_forward(op) -> bool:
    """A trainable conv whose forward is the mat-mult kernel (NOTE [ int8 mat-mult forward ],
    int8_runtime.c): one group of at least 2 input channels, a 3x3 at stride 1 or 2 or a 1x1
    at stride 1 without padding (one input channel: a 3x3 takes the padded 3x3 forward)."""
    if type(op).__name__ != "QConv2d" or op.groups != 1 or op.weight.shape[1] < 2:
        return False
    k = op.weight.shape[-1]
    return (k == 3 and op.stride in (1, 2)) or (k == 1 and op.stride == 1 and op.padding == 0)


def forward_scratch_bytes(op, in_shape, out_shape) -> int:
    """The forward scratch of a trainable conv: for the mat-mult forward (NOTE [ int8 mat-mult
    forward ], int8_runtime.c) Ci K^2 int32 tap offsets and two columns of as many int16
    taps, then the weight rows unpacked to 16-bit pairs where small (`wpair16_bytes`, NOTE
    [ Paired weight rows ]), then the bias and requantisation constants (`rq_table_bytes`),
    then for a 3x3 two byte patches of Kt taps rounded up to 4 (NOTE [ Mat-mult 3x3
    columns ]); for another 3x3 (NOTE [ Padded 3x3 forward ]) its padded input plane (4-byte
    aligned) and, unless each group is one input and one output channel (a depthwise conv,
    requantised from registers), Ho x Wo int32 sums."""
    if runs_mat_mult_forward(op):
        kt = in_shape[0] * op.weight.shape[-1] ** 2
        patch = 2 * ((kt + 3) // 4 * 4) if op.weight.shape[-1] == 3 else 0  # 3x3 columns
        return 8 * kt + wpair16_bytes(out_shape[0], kt) + rq_table_bytes(out_shape[0]) + patch
    pb = pad_plane_bytes(op, in_shape)
    if not pb:
        return 0
    if in_shape[0] == op.groups and out_shape[0] == op.groups:  # no stored sums
        return (pb + 3) // 4 * 4
    return (pb + 3) // 4 * 4 + 4 * out_shape[1] * out_shape[2]


def pad_plane_bytes(op, in_shape) -> int:
    """The weight-gradient scratch of a trainable 3x3 conv (stride 1 or 2): one input plane
    with its zero-point padding, (H + 2p) x (W + 2p) bytes and the loads' slack; 0 for other
    ops (NOTE [ int8 SRAM of the C trainer ])."""
    if type(op).__name__ != "QConv2d" or op.weight.shape[-1] != 3 or op.stride not in (1, 2):
        return 0
    _, h, w = in_shape
    return (h + 2 * op.padding) * (w + 2 * op.padding) + PAD_SLACK_BYTES


def weight_grad_scratch_bytes(op, in_shape, out_shape) -> int:
    """The backward scratch `p:<op>` of a trainable conv: for a one-group 3x3 at stride 1 or 2
    (NOTE [ int8 mat-mult weight gradient ], int8_runtime.c) two padded planes (4-byte
    aligned; one for one input channel), then, where its dq rows fit as 16-bit pairs, the
    paired-output tables and rows (`paired_weight_grad_bytes`, NOTE [ Paired-output weight
    gradient ]), else Ho x Wo int32 window offsets, 2 int32 per output channel and Ho x Wo
    words of a tap pair's rows; for a 1x1 of `runs_mat_mult_forward` the paired-output bytes
    where they fit, else Ho x Wo words of an input channel pair's rows and 2 int32 per output
    channel; for another 3x3 the padded plane (`pad_plane_bytes`); 0 for other ops."""
    if runs_mat_mult_forward(op) and op.weight.shape[-1] == 1:
        co, hw = out_shape[0], out_shape[1] * out_shape[2]
        paired = paired_weight_grad_bytes(co, 1, hw, 1)
        return paired if paired else 4 * hw + 8 * co
    pb = pad_plane_bytes(op, in_shape)
    if not pb or op.groups != 1:
        return pb
    co, hw = out_shape[0], out_shape[1] * out_shape[2]
    planes = (2 if in_shape[0] > 1 else 1) * ((pb + 3) // 4 * 4)
    paired = paired_weight_grad_bytes(co, out_shape[1], out_shape[2], op.stride)
    return planes + (paired if paired else 8 * hw + 8 * co)


def paired_weight_grad_bytes(co: int, ho: int, wo: int, stride: int) -> int:
    """The paired-output weight gradient's scratch (NOTE [ Paired-output weight gradient ],
    int8_runtime.c) where its dq words, 8 Co ceil(P / 4) bytes, are at most DQ16_MAX_BYTES,
    else 0: 4 ceil(P / 4) words of rows, 4 int32 per output channel, an int32 per stride-2 word
    or stride-1 word pair of the rows' whole groups, 2 int32 per row-end output and the dq
    words."""
    p = ho * wo
    nq = (p + 3) // 4
    if 8 * co * nq > DQ16_MAX_BYTES:
        return 0
    g = 4 if stride == 1 else 2
    tail = ho * (wo % g)
    return 16 * nq + 16 * co + 4 * ((p - tail) // g) + 8 * tail + 8 * co * nq


DQ16_MAX_BYTES = 4096  # Q_DQ16_MAX in int8_runtime.c
RQ_MAX_CHANNELS = 64  # Q_RQMAX in int8_runtime.c


def rq_table_bytes(co: int) -> int:
    """The mat-mult forward's bias and requantisation constants, 16 bytes per output channel
    where Co is at most RQ_MAX_CHANNELS, else 0 (NOTE [ Hoisted requantisation ],
    int8_runtime.c)."""
    return 16 * co if co <= RQ_MAX_CHANNELS else 0


def wpair16_bytes(co: int, kt: int) -> int:
    """The mat-mult forward's weight rows unpacked to 16-bit pairs, interleaved by output
    channel pair: 2 (Co rounded up to even) (Kt // 4 * 4) bytes where that is at most
    DQ16_MAX_BYTES, else 0 (NOTE [ Paired weight rows ], int8_runtime.c)."""
    n = 2 * ((co + 1) // 2 * 2) * (kt // 4 * 4)
    return n if n <= DQ16_MAX_BYTES else 0


def input_grad_scratch_bytes(op, out_shape) -> int:
    """The input-gradient scratch of a one-group conv: for a 1x1 (stride 1, no padding) its
    weights as 16-bit output-channel pairs for one input-channel pair, 4 Co bytes, then dq as
    16-bit output-channel pairs, 2 Co (Ho Wo rounded up to a multiple of 4) bytes where that
    is at most DQ16_MAX_BYTES (NOTE [ Paired 1x1 input gradient ], int8_runtime.c); for a 3x3 at stride
    2 with Co >= 4 one sample's dq as 16-bit pairs of 4 channels, 8 (Co // 4) Ho Wo bytes,
    then one input channel's weights as 16-bit pairs, 72 (Co // 4) bytes (NOTE [ Paired
    stride-2 3x3 input gradient ]); 0 for other ops."""
    if type(op).__name__ != "QConv2d":
        return 0
    if op.groups != 1:
        return _depthwise_input_grad_bytes(op, out_shape)
    if op.weight.shape[-1] == 3 and op.stride == 2 and out_shape[0] >= 4:
        return out_shape[0] // 4 * (8 * out_shape[1] * out_shape[2] + 72)
    if op.weight.shape[-1] != 1:
        return 0
    if op.stride != 1 or op.padding != 0:
        return 0
    hw = out_shape[1] * out_shape[2]
    e = 2 * out_shape[0] * ((hw + 3) // 4 * 4)
    return 4 * out_shape[0] + (e if e <= DQ16_MAX_BYTES else 0)


def _depthwise_input_grad_bytes(op, out_shape) -> int:
    """A 3x3 depthwise conv at stride 1 with padding 1: one dq plane zero-padded by 1 (4-byte
    aligned, with the loads' slack) and H x W int32 sums, where that is at most
    DQ16_MAX_BYTES (NOTE [ Depthwise input gradient as a forward ], int8_runtime.c)."""
    c, h, w = out_shape
    if op.weight.shape[-1] != 3 or op.stride != 1 or op.padding != 1 or op.groups != c:
        return 0
    n = ((h + 2) * (w + 2) + PAD_SLACK_BYTES + 3) // 4 * 4 + 4 * h * w
    return n if n <= DQ16_MAX_BYTES else 0


def backward_scratch_bytes(op, in_shape, out_shape, trainable: bool, input_grad: bool) -> int:
    """The backward scratch `p:<op>`, shared by the input gradient and the weight gradient
    that run one after the other: the larger of the two that run."""
    wb = weight_grad_scratch_bytes(op, in_shape, out_shape) if trainable else 0
    ib = input_grad_scratch_bytes(op, out_shape) if input_grad else 0
    return max(wb, ib)


def _add_bwd_uses(p: _Program, op, s: int, use: _Uses) -> None:
    use("m:" + op.output, s, p.numel[op.output])
    for t in (op.a, op.b):
        if t in p.rg:
            use("g:" + t, s, p.numel[t] * p.real)


def _gap_bwd_uses(p: _Program, op, s: int, use: _Uses) -> None:
    pooled = {gap.input for gap in p.gap_of.values()}
    if op.input in p.rg and op.input not in pooled:
        use("g:" + op.input, s, p.numel[op.input] * p.real)


_BACKWARD_USES: dict[str, Callable[[_Program, object, int, _Uses], None]] = {
    "QConv2d": _weighted_bwd_uses,
    "QLinear": _weighted_bwd_uses,
    "QAdd": _add_bwd_uses,
    "QGlobalAvgPool": _gap_bwd_uses,
}


def _backward_uses(p: _Program, use: _Uses) -> None:
    """The loss step (F) and the backward steps (F+1..)."""
    g = p.graph
    nf = len(g.ops)
    K = g.tensor(g.output).shape[-1]
    use("a:" + g.output, nf, p.numel[g.output])  # the loss reads the logits
    use("z:" + g.output, nf, K * p.real)  # the loss's logits scratch
    use("g:" + g.output, nf, p.numel[g.output] * p.real)
    for k, op in enumerate(p.bwd_ops):
        s = nf + 1 + k
        if op.name not in p.gap_of:
            use("g:" + op.output, s, p.numel[op.output] * p.real)
        _BACKWARD_USES[type(op).__name__](p, op, s, use)


def _groups(use: _Uses, chains: dict[str, list[str]]) -> list[tuple[Segment, ...]]:
    """Placement groups: one per buffer, and one per in-place chain x0 -> x1 -> .. -> xk
    (sizes never grow) at one base: xj's bytes above x(j+1)'s live from x0's first step to
    xj's last, xk's [0, size) to its last."""
    sizes, span = use.sizes, use.span
    groups: list[tuple[Segment, ...]] = []
    members = {k for c in chains.values() for k in c}
    for key in sizes:
        if key not in members:
            groups.append((Segment(key, 0, sizes[key], span[key][0], span[key][1]),))
    for c in chains.values():
        f0 = span[c[0]][0]
        segs = []
        for j, key in enumerate(c):
            lo = aligned(sizes[c[j + 1]]) if j + 1 < len(c) else 0
            if sizes[key] > lo:
                segs.append(Segment(key, lo, sizes[key] - lo, f0, span[key][1]))
        groups.append(tuple(reversed(segs)))
    return groups


def _place(
    graph, trainable: Sequence[str], B: int, tgt: Target, chain: tuple[str, ...]
) -> Int8Placement:
    p = _program(graph, trainable, B, tgt, chain)
    use = _Uses()
    chains = _forward_uses(p, use)
    _backward_uses(p, use)
    bufs, bound = pack_groups(_groups(use, chains))
    arena = arena_bytes(bufs)
    trainable_bytes = sum(
        op.weight.numel() + 4 * op.bias.numel() for op in graph.weighted_ops if op.name in trainable
    )
    layout = Int8ArenaLayout(
        target=tgt.name,
        batch_size=B,
        arena_bytes=arena,
        trainable_bytes=trainable_bytes,
        labels_bytes=4 * B,
        runtime_reserve_bytes=RUNTIME_RESERVE_BYTES,
        predicted_peak_sram_bytes=arena + trainable_bytes + 4 * B + RUNTIME_RESERVE_BYTES,
        peak_live_bytes=bound,
        buffers=tuple(bufs),
        kernels=tuple((op.name, p.kernels[op.name]) for op in graph.ops),
    )
    keys = {
        k
        for op in graph.ops
        for t in (*inputs_of(op), op.output)
        for k in ("a:" + t, "g:" + t, "m:" + t, "z:" + t)
    }
    keys |= {k + op.name for op in graph.ops for k in ("s:", "p:", "f:")}
    offsets = {b.name: b.offset for b in bufs}
    for c in chains.values():  # every member of a chain starts at the group's base
        offsets[c[0]] = min(offsets[k] for k in c if k in offsets)
    alias = {k: use.root(k) for k in keys if use.root(k) in offsets}
    return Int8Placement(
        layout,
        p.rg,
        p.bwd_ops,
        p.fused,
        p.kernels,
        alias,
        offsets,
        p.numel,
        p.T,
        p.chain,
        p.rings,
        p.gap_of,
    )
