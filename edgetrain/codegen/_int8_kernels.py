"""The int8 kernel table: for each op kind (and, forward, the way `_int8_layout` runs it) the
runtime functions it calls and how a call is written. The kernels themselves are C, in
edgetrain/codegen/c/int8_runtime.c (package data, `int8_runtime_source()`).

The renderer (`_int8_render.py`) walks the graph forward, then the pruned backward, and for
each op appends what `FORWARD_KERNELS[(kind, Int8Kernel)]` / `BACKWARD_KERNELS[kind]` emit
into one `Int8Emitter`: the call statements, the arrays they read (weights, requantisation
constants, QAS scales) and the line-buffered chain's descriptors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from edgetrain.codegen._int8_layout import (
    INT8_OPS,
    WEIGHTED_OPS,
    Int8Kernel,
    Int8Placement,
    inputs_of,
    runs_mat_mult_forward,
)
from edgetrain.codegen._names import Identifiers, c_string, identifiers_in, wire_name
from edgetrain.codegen._platform import fixed_sources as platform_sources
from edgetrain.codegen._project import fixed_sources as project_sources


@functools.cache
def int8_runtime_source() -> str:
    """The int8 runtime's C source (edgetrain/codegen/c/int8_runtime.c)."""
    return (
        resources.files("edgetrain.codegen")
        .joinpath("c", "int8_runtime.c")
        .read_text(encoding="utf-8")
    )


def hexd(x: float) -> str:
    """A C literal that reads back as exactly the double `x` (hexadecimal float)."""
    return float(x).hex()


def ints(v: np.ndarray) -> str:
    vals = [str(int(x)) for x in np.asarray(v).reshape(-1).tolist()]
    return ",\n".join(",".join(vals[i : i + 32]) for i in range(0, len(vals), 32))


def reals(v) -> str:
    return ", ".join(hexd(x) for x in np.asarray(v, dtype=np.float64).reshape(-1).tolist())


@functools.cache
def _fixed_identifiers() -> frozenset[str]:
    """The identifiers of the fixed C every int8 program holds: runtime, driver, platform."""
    return identifiers_in(int8_runtime_source(), *platform_sources(), *project_sources())


@dataclass(frozen=True)
class _Weighted:
    """A conv/linear op's symbols and shape arguments, shared by its forward and backward."""

    sym: str  # C prefix of its arrays: <sym>_w, _b, _m0, _sh (and backward _M, _iw, _ib)
    dims: str  # the shape arguments its kernels end with
    P: int  # output positions per channel
    C: int  # output channels
    x: str  # its input activation
    zx: int  # its input's zero point
    trainable: bool


@dataclass
class Int8Emitter:
    """What the renderer accumulates, op by op, for one program."""

    graph: object
    lay: Int8Placement
    batch: int
    trainable: frozenset[str]
    qas: bool
    arrays: list[str] = field(default_factory=list)
    fwd: list[str] = field(default_factory=list)
    bwd: list[str] = field(default_factory=list)
    descs: list[str] = field(default_factory=list)  # the line-buffered chain's ops (qlb_op)
    dumps: list[str] = field(default_factory=list)
    const_bytes: int = 0
    weighted: dict[str, _Weighted] = field(default_factory=dict)
    written: set[str] = field(default_factory=set)
    reserved: frozenset[str] = frozenset()  # identifiers of the renderer's fixed C text
    ids: Identifiers = field(init=False)

    def __post_init__(self) -> None:
        self.ids = Identifiers(_fixed_identifiers() | self.reserved)

    @property
    def T(self) -> dict:
        return self.lay.tensors

    def op(self, name: str):
        return next(o for o in self.graph.ops if o.name == name)

    def A(self, key: str, ctype: str) -> str:
        return f"(({ctype} *)(et_arena + {self.lay.offset(key)}))"

    def A_or_0(self, key: str, ctype: str) -> str:
        return self.A(key, ctype) if key in self.lay.alias else "0"

    def dx(self, t: str) -> tuple[str, int]:
        """The gradient buffer of `t` and whether the kernel adds to it (already written)."""
        acc = 1 if t in self.written else 0
        self.written.add(t)
        return self.A("g:" + t, "ET_REAL"), acc

    def int_dx(self, t: str) -> str | None:
        """The C variable holding the scale of `t`'s integer input gradient (NOTE [ Integer
        dx ]), or None where `t`'s gradient is stored as ET_REAL: it qualifies where a conv /
        linear produced `t`, its dy is read (not a pool's dy), and one conv / linear reads it."""
        src = next((o for o in self.graph.ops if getattr(o, "output", None) == t), None)
        readers = [o for o in self.graph.ops if t in inputs_of(o)]
        if (
            src is None
            or type(src).__name__ not in WEIGHTED_OPS
            or src.name in self.lay.gap_of
            or len(readers) != 1
            or type(readers[0]).__name__ not in WEIGHTED_OPS
            or t not in self.lay.rg
        ):
            return None
        return f"{self.weighted[src.name].sym}_ds"

    def out(self, op) -> tuple[str, str, int]:
        """An op's output, its "not clamped" mask (0 when off the backward path) and zero
        point."""
        y = self.A_or_0("a:" + op.output, "int8_t")
        mask = (
            self.A("m:" + op.output, "uint8_t")
            if ("m:" + op.output) in self.lay.alias and op.output in self.lay.rg
            else "0"
        )
        return y, mask, self.T[op.output].zero_point


# -- declaring a conv / linear's arrays --------------------------------------------------------
def _conv_shape(em: Int8Emitter, op, w: np.ndarray) -> tuple[str, int, int]:
    ci, h, wd = em.T[op.input].shape
    co, ho, wo = em.T[op.output].shape
    return (
        f"{em.batch}, {ci}, {h}, {wd}, {co}, {ho}, {wo}, {w.shape[-1]}, {op.stride}, "
        f"{op.padding}, {op.groups}",
        ho * wo,
        co,
    )


def _linear_shape(em: Int8Emitter, op, w: np.ndarray) -> tuple[str, int, int]:
    return f"{em.batch}, {w.shape[1]}, {w.shape[0]}", 1, w.shape[0]


# the arrays of one conv/linear: <sym>_w, _b, _m0, _sh (forward), _M, _iw, _ib (backward)
_ARRAY_SUFFIXES = ("_w", "_b", "_m0", "_sh", "_M", "_iw", "_ib")

_SHAPE_ARGS = {"QConv2d": _conv_shape, "QLinear": _linear_shape}


def declare_weighted(em: Int8Emitter, op) -> _Weighted:
    """A conv/linear's weights, bias and requantisation constants: `static` in SRAM when it
    trains (and dumped at the end), `const` in flash when frozen."""
    sym = em.ids.get(("layer", op.name), "q_" + op.name, _ARRAY_SUFFIXES)
    tr = op.name in em.trainable
    q = "" if tr else "const "
    w, b = np.asarray(op.weight), np.asarray(op.bias)
    em.arrays.append(f"static {q}int8_t {sym}_w[{w.size}] = {{\n{ints(w)}\n}};")
    em.arrays.append(f"static {q}int32_t {sym}_b[{b.size}] = {{ {ints(b)} }};")
    em.arrays.append(f"static const int32_t {sym}_m0[{b.size}] = {{ {ints(op.multiplier)} }};")
    em.arrays.append(f"static const int32_t {sym}_sh[{b.size}] = {{ {ints(op.shift)} }};")
    if tr:
        em.dumps.append(
            f"    dump({c_string(wire_name(op.name))}, {sym}_w, {w.size}, {sym}_b, {b.size});"
        )
    else:
        em.const_bytes += w.size + 4 * b.size
    dims, P, C = _SHAPE_ARGS[type(op).__name__](em, op, w)
    info = _Weighted(
        sym, dims, P, C, em.A_or_0("a:" + op.input, "int8_t"), em.T[op.input].zero_point, tr
    )
    em.weighted[op.name] = info
    return info


# -- forward kernels ---------------------------------------------------------------------------
def _qconv_fwd(em: Int8Emitter, op) -> list[str]:
    i = em.weighted[op.name]
    y, mask, zy = em.out(op)
    if ("f:" + op.name) in em.lay.alias:  # NOTE [ Padded 3x3 forward ] (int8_runtime.c)
        fn = "qconv_mm_fwd" if runs_mat_mult_forward(op) else "qconv3_fwd"
        return [
            f"{fn}({i.x}, {i.zx}, {i.sym}_w, {i.sym}_b, {i.sym}_m0, {i.sym}_sh, "
            f"{zy}, {op.act_min}, {op.act_max}, {y}, {mask}, "
            f"{em.A('f:' + op.name, 'int8_t')}, {i.dims});"
        ]
    return [
        f"qconv_fwd({i.x}, {i.zx}, {i.sym}_w, {i.sym}_b, {i.sym}_m0, {i.sym}_sh, "
        f"{zy}, {op.act_min}, {op.act_max}, {y}, {mask}, {i.dims});"
    ]


def _inside_reader(em: Int8Emitter, op) -> list[str]:
    return []  # emitted with its depthwise reader (qpwdw_fwd)


def _qpwdw_fwd(em: Int8Emitter, op) -> list[str]:
    T, i = em.T, em.weighted[op.name]
    a = em.op(em.lay.fused[op.name])  # the pointwise op it runs
    sa = em.weighted[a.name].sym
    y, _, zy = em.out(op)
    _, h, wd = T[op.input].shape
    co, ho, wo = T[op.output].shape
    sym = i.sym
    return [
        f"qpwdw_fwd({em.A('a:' + a.input, 'int8_t')}, {T[a.input].zero_point}, {sa}_w, "
        f"{sa}_b, {sa}_m0, {sa}_sh, {T[a.output].zero_point}, {a.act_min}, {a.act_max}, "
        f"{sym}_w, {sym}_b, {sym}_m0, {sym}_sh, {zy}, {op.act_min}, {op.act_max}, {y}, "
        f"{em.A('s:' + op.name, 'int8_t')}, {em.batch}, {T[a.input].shape[0]}, {h}, {wd}, "
        f"{co}, {ho}, {wo}, {op.weight.shape[-1]}, {op.stride}, {op.padding});"
    ]


def _qdw_inplace_fwd(em: Int8Emitter, op) -> list[str]:
    i = em.weighted[op.name]
    _, _, zy = em.out(op)
    ci, h, wd = em.T[op.input].shape
    _, ho, wo = em.T[op.output].shape
    return [
        f"qdw_inplace_fwd({i.x}, {i.zx}, {i.sym}_w, {i.sym}_b, {i.sym}_m0, "
        f"{i.sym}_sh, {zy}, {op.act_min}, {op.act_max}, "
        f"{em.A('s:' + op.name, 'int8_t')}, {em.batch}, {ci}, {h}, {wd}, {ho}, "
        f"{wo}, {op.weight.shape[-1]}, {op.stride}, {op.padding});"
    ]


def _qpw_inplace_fwd(em: Int8Emitter, op) -> list[str]:
    i = em.weighted[op.name]
    _, _, zy = em.out(op)
    ci, h, wd = em.T[op.input].shape
    co = em.T[op.output].shape[0]
    return [
        f"qpw_inplace_fwd({i.x}, {i.zx}, {i.sym}_w, {i.sym}_b, {i.sym}_m0, "
        f"{i.sym}_sh, {zy}, {op.act_min}, {op.act_max}, "
        f"{em.A('s:' + op.name, 'int8_t')}, {em.batch}, {ci}, {co}, {h * wd});"
    ]


def _qlb_chain(em: Int8Emitter, op) -> list[str]:
    """One `qlb_op` descriptor per chain op; the chain runs at its last op
    (NOTE [ Line-buffered frozen prefix ], edgetrain/codegen/_int8_layout.py)."""
    i, lay = em.weighted[op.name], em.lay
    y, _, zy = em.out(op)
    ci, h, wd = em.T[op.input].shape
    co, ho, wo = em.T[op.output].shape
    ring = (
        f"{em.A('s:' + op.name, 'int8_t')}, {lay.rings[op.name]} }}"
        if op.name in lay.rings
        else "0, 0 }"
    )
    em.descs.append(
        f"{{ {i.sym}_w, {i.sym}_b, {i.sym}_m0, {i.sym}_sh, {i.zx}, {zy}, {op.act_min}, "
        f"{op.act_max}, {ci}, {h}, {wd}, {co}, {ho}, {wo}, {op.weight.shape[-1]}, "
        f"{op.stride}, {op.padding}, {op.groups}, " + ring
    )
    if op.name != lay.chain[-1]:
        return []
    n = len(lay.chain)
    return [
        f"{{ int st[{2 * n}]; qlb_chain(q_lb, {n}, st, "
        f"{em.A('a:' + em.graph.input, 'int8_t')}, {y}, {em.batch}); }}"
    ]


def _qlinear_fwd(em: Int8Emitter, op) -> list[str]:
    i = em.weighted[op.name]
    y, mask, zy = em.out(op)
    return [
        f"qlinear_fwd({i.x}, {i.zx}, {i.sym}_w, {i.sym}_b, {i.sym}_m0, {i.sym}_sh, {zy}, "
        f"{op.act_min}, {op.act_max}, {y}, {mask}, {i.dims});"
    ]


def _qadd_fwd(em: Int8Emitter, op) -> list[str]:
    T = em.T
    y, mask, zy = em.out(op)
    a, b = em.A("a:" + op.a, "int8_t"), em.A("a:" + op.b, "int8_t")
    return [
        f"qadd_fwd({a}, {T[op.a].zero_point}, {b}, {T[op.b].zero_point}, {zy}, "
        f"{op.multiplier_a}, {op.shift_a}, {op.multiplier_b}, {op.shift_b}, "
        f"{op.multiplier_out}, {op.shift_out}, {op.left_shift}, {y}, {mask}, "
        f"{em.lay.numel[op.output]});"
    ]


def _qgap_fwd(em: Int8Emitter, op) -> list[str]:
    y, _, _ = em.out(op)
    c, h, wd = em.T[op.input].shape
    return [f"qgap_fwd({em.A('a:' + op.input, 'int8_t')}, {y}, {em.batch * c}, {h * wd});"]


# -- backward kernels --------------------------------------------------------------------------
def _weighted_bwd(em: Int8Emitter, op, *, prefix: str) -> list[str]:
    """NOTE [ int8 integer backward ]: dacc = dy x mask x M (dy read from the pool's dy where a
    global average pool is the only reader) quantised to the int8 dq over the mask, then the
    input gradient and the QAS-scaled SGD update from exact integer sums."""
    i, T, lay = em.weighted[op.name], em.T, em.lay
    mvals = np.asarray(op.multiplier, dtype=np.float64) * np.power(
        2.0, np.asarray(op.shift, dtype=np.float64) - 31
    )
    sx = float(T[op.input].scale)
    ws = np.asarray(op.weight_scale, dtype=np.float64)
    inv_w = 1.0 / ws**2 if em.qas else np.ones_like(ws)
    inv_b = 1.0 / (sx * ws) ** 2 if em.qas else np.ones_like(ws)
    em.arrays.append(f"static const ET_REAL {i.sym}_M[{i.C}] = {{ {reals(mvals)} }};")
    em.arrays.append(f"static const ET_REAL {i.sym}_iw[{i.C}] = {{ {reals(inv_w)} }};")
    em.arrays.append(f"static const ET_REAL {i.sym}_ib[{i.C}] = {{ {reals(inv_b)} }};")
    m = em.A("m:" + op.output, "uint8_t")
    dq = em.A("m:" + op.output, "const int8_t")
    out: list[str] = []
    if op.name in lay.gap_of:  # dy from the pool's dy where it is read
        gp = em.A("g:" + lay.gap_of[op.name].output, "ET_REAL")
        out.append(f"{{ const qgap_dacc gd = {{ {gp}, {i.P} }};")
        dy, gd = "0", "&gd"
    else:
        out.append("{")
        dy, gd = em.A_or_0("g:" + op.output, "ET_REAL"), "0"
    ds = em.int_dx(op.output) or "0"
    out.append(
        f"const ET_REAL s_g = qacc_quant({dy}, {ds}, {gd}, {m}, {i.sym}_M, {em.batch}, "
        f"{i.C}, {i.P});"
    )
    if op.input in lay.rg:
        g, acc = em.dx(op.input)
        pad = f"{em.A_or_0('p:' + op.name, 'int8_t')}, " if prefix == "qconv" else ""
        if (ds_in := em.int_dx(op.input)) is not None:  # NOTE [ Integer dx ]
            out.insert(0, f"ET_REAL {ds_in} = 0;")
            out.append(f"{ds_in} = s_g;")
            acc = "Q_DX_INT"
        out.append(f"{prefix}_bwd_input({dq}, s_g, {i.sym}_w, {g}, {acc}, {pad}{i.dims});")
    if i.trainable:
        pad = f"{em.A_or_0('p:' + op.name, 'int8_t')}, " if prefix == "qconv" else ""
        out.append(
            f"{prefix}_update({dq}, s_g, {i.x}, {i.zx}, {i.sym}_w, {i.sym}_b, "
            f"{i.sym}_iw, {i.sym}_ib, lr, {pad}{i.dims});"
        )
    return out + ["}"]


def _qadd_bwd(em: Int8Emitter, op) -> list[str]:
    dy = em.A_or_0("g:" + op.output, "ET_REAL")
    m = em.A("m:" + op.output, "uint8_t")
    sy = float(em.T[op.output].scale)
    out = []
    for t in (op.a, op.b):
        if t in em.lay.rg:
            g, acc = em.dx(t)
            # the simulation's slope is `inside * (s_in / s_out)`, a bool tensor times a
            # Python float: float32 in PyTorch; mirrored here to stay bit-exact
            slope = float(np.float32(float(em.T[t].scale) / sy))
            out.append(
                f"qadd_bwd({dy}, {m}, {hexd(slope)}, {g}, {acc}, {em.lay.numel[op.output]});"
            )
    return out


def _qgap_bwd(em: Int8Emitter, op) -> list[str]:
    if op.input not in em.lay.rg or op.input in {g.input for g in em.lay.gap_of.values()}:
        return []  # nothing to propagate, or the conv before it reads the pool's dy itself
    dy = em.A_or_0("g:" + op.output, "ET_REAL")
    c, h, wd = em.T[op.input].shape
    g, acc = em.dx(op.input)
    return [f"qgap_bwd({dy}, {g}, {acc}, {em.batch * c}, {h * wd});"]


# -- the table ---------------------------------------------------------------------------------
Emit = Callable[[Int8Emitter, object], "list[str]"]


@dataclass(frozen=True)
class Int8KernelRecord:
    """One entry of the int8 kernel table: the runtime functions (int8_runtime.c) an op's
    generated code calls, and the function that writes those calls."""

    functions: tuple[str, ...]
    emit: Emit


_K = Int8Kernel
FORWARD_KERNELS: dict[tuple[str, Int8Kernel], Int8KernelRecord] = {
    ("QConv2d", _K.OUT_OF_PLACE): Int8KernelRecord(
        ("qconv_fwd", "qconv3_fwd", "qconv_mm_fwd"), _qconv_fwd
    ),
    ("QConv2d", _K.FUSED_INTO_DEPTHWISE): Int8KernelRecord((), _inside_reader),
    ("QConv2d", _K.FUSED_POINTWISE_DEPTHWISE): Int8KernelRecord(("qpwdw_fwd",), _qpwdw_fwd),
    ("QConv2d", _K.IN_PLACE_DEPTHWISE): Int8KernelRecord(("qdw_inplace_fwd",), _qdw_inplace_fwd),
    ("QConv2d", _K.IN_PLACE_POINTWISE): Int8KernelRecord(("qpw_inplace_fwd",), _qpw_inplace_fwd),
    ("QConv2d", _K.LINE_BUFFERED): Int8KernelRecord(("qlb_chain", "qlb_row"), _qlb_chain),
    ("QLinear", _K.OUT_OF_PLACE): Int8KernelRecord(("qlinear_fwd",), _qlinear_fwd),
    ("QAdd", _K.OUT_OF_PLACE): Int8KernelRecord(("qadd_fwd",), _qadd_fwd),
    ("QGlobalAvgPool", _K.OUT_OF_PLACE): Int8KernelRecord(("qgap_fwd",), _qgap_fwd),
}
"""Forward kernels by (op kind, how `_int8_layout` runs the op)."""

BACKWARD_KERNELS: dict[str, Int8KernelRecord] = {
    "QConv2d": Int8KernelRecord(
        ("qacc_quant", "qconv_bwd_input", "qconv_update"),
        functools.partial(_weighted_bwd, prefix="qconv"),
    ),
    "QLinear": Int8KernelRecord(
        ("qacc_quant", "qlinear_bwd_input", "qlinear_update"),
        functools.partial(_weighted_bwd, prefix="qlinear"),
    ),
    "QAdd": Int8KernelRecord(("qadd_bwd",), _qadd_bwd),
    "QGlobalAvgPool": Int8KernelRecord(("qgap_bwd",), _qgap_bwd),
}
"""Backward kernels of the ops on the backward path, by op kind."""

assert {k for k, _ in FORWARD_KERNELS} == set(INT8_OPS) == set(BACKWARD_KERNELS)
assert set(WEIGHTED_OPS) == set(_SHAPE_ARGS)


def emit_forward(em: Int8Emitter, op) -> None:
    kind = type(op).__name__
    if kind in WEIGHTED_OPS:
        declare_weighted(em, op)
    em.fwd.extend(FORWARD_KERNELS[(kind, em.lay.kernels[op.name])].emit(em, op))


def emit_backward(em: Int8Emitter, op) -> None:
    em.bwd.extend(BACKWARD_KERNELS[type(op).__name__].emit(em, op))
