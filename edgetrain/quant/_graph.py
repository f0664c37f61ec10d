"""The int8 graph: fixed-point arithmetic, its ops, BN folding, calibration and conversion.

NOTE [ int8 arithmetic, bit for bit ]
Every rule below is what `run_int8` computes and what a C kernel must compute to match it.

Tensors. An activation tensor holds int8 values q in [-128, 127] with a float `scale` s and an
integer `zero_point` z; its real value is s * (q - z). Weights are int8 in [-127, 127],
symmetric per output channel (zero point 0, scale s_W[c] = h * max|w[c]| / 127, h the layer's
`weight_headroom`, default 1; an all-zero channel takes the median scale of the layer's other
channels); a bias is int32 with scale s_x * s_W[c] (zero point 0). Activation scales and zero
points come from min/max calibration: s = (max - min) / 255, z = clamp(round_half_away(-128 -
min / s), -128, 127), with the range widened to include 0. Layouts are NCHW (activations) and
OIHW (weights). Every scale, zero point and multiplier is data of the graph (`save_graph`).

Offline rounding (weights, biases, the input image): `round_half_away(v)` =
sign(v) * floor(|v| + 0.5), e.g. 2.5 -> 3, -2.5 -> -3, then clamped to the type's range.
The input image is quantised as q = clamp(round_half_away(x / s_in) + z_in, -128, 127) in
float64 on the host; the integer graph starts at that int8 tensor.

Multipliers. A real multiplier M > 0 is stored as (m0, shift) with M ~= m0 * 2**(shift - 31),
m0 an int32 in [2**30, 2**31): (mantissa, exponent) = frexp(M), m0 = round-half-even(mantissa *
2**31) (Python `round` of an exactly representable double), and if m0 == 2**31 then m0 = 2**30,
exponent += 1; shift = exponent. The right shift n = 31 - shift must lie in [1, 62].

Requantisation (single rounding, as TFLite's and CMSIS-NN's `*_SINGLE_ROUNDING` builds):
    requantize(acc, m0, shift) = (acc * m0 + 2**(n - 1)) >> n,   n = 31 - shift
computed in int64 with an arithmetic (flooring) right shift: rounds half towards +infinity.
`acc` must fit in int32 (an accumulator outside int32 raises `AccumulatorOverflowError`).

conv2d (standard, depthwise, pointwise) and linear, per output channel c:
    acc[c] = bias[c] + sum((q_x - z_x) * w[c])       (int32; padding contributes 0)
    q_y[c] = clamp(requantize(acc[c], m0[c], shift[c]) + z_y, act_min, act_max)
with M[c] = s_x * s_W[c] / s_y. act_min/act_max are [-128, 127] narrowed by the fused
activation: ReLU -> act_min = max(-128, z_y); ReLU6 -> also act_max = min(127, z_y +
round_half_away(6 / s_y)).

add (residual), TFLite's scheme with left_shift = 20:
    twice = 2 * max(s_a, s_b); M_a = s_a / twice; M_b = s_b / twice;
    M_out = twice / (2**20 * s_y)
    a = requantize((q_a - z_a) * 2**20, M_a); b = requantize((q_b - z_b) * 2**20, M_b)
    q_y = clamp(requantize(a + b, M_out) + z_y, -128, 127)

global average pool (output scale and zero point = the input's), over the H*W = N values:
    S = sum(q_x);  avg = (S + N // 2) // N if S >= 0 else -((-S + N // 2) // N)
(round half away from zero; C: `S >= 0 ? (S + N/2) / N : (S - N/2) / N` with truncating
division), giving (batch, C). Flatten is this op's output shape.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgetrain.errors import (
    AccumulatorOverflowError,
    InvalidArgumentError,
    QuantizationError,
    UnsupportedModuleError,
)

QMIN, QMAX = -128, 127
WMAX = 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
ADD_LEFT_SHIFT = 20


class Activation(enum.Enum):
    NONE = "none"
    RELU = "relu"
    RELU6 = "relu6"


class ConvKind(enum.Enum):
    STANDARD = "standard"
    DEPTHWISE = "depthwise"
    POINTWISE = "pointwise"


# ---------------------------------------------------------------- fixed-point primitives


def round_half_away(v: torch.Tensor) -> torch.Tensor:
    """sign(v) * floor(|v| + 0.5): the offline rounding of weights, biases and the input."""
    return torch.sign(v) * torch.floor(v.abs() + 0.5)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """`real` -> (m0, shift) with real ~= m0 * 2**(shift - 31), m0 in [2**30, 2**31)."""
    if not (math.isfinite(real) and real > 0):
        raise QuantizationError(
            f"a requantisation multiplier must be a finite positive number, got {real!r}; "
            f"check that every scale is positive (calibrate on inputs with a non-zero range)"
        )
    mant, exp = math.frexp(real)
    m0 = round(mant * (1 << 31))
    if m0 == 1 << 31:
        m0, exp = 1 << 30, exp + 1
    n = 31 - exp
    if not 1 <= n <= 62:
        raise QuantizationError(
            f"multiplier {real:.6g} needs a right shift of {n}, outside 1..62; the scales "
            f"around this layer differ by more than 2**31 -- recalibrate with more samples"
        )
    return m0, exp


def multiplier_value(m0: torch.Tensor | int, shift: torch.Tensor | int) -> torch.Tensor:
    """The real number a (m0, shift) pair represents, in float64."""
    m = torch.as_tensor(m0, dtype=torch.float64)
    s = torch.as_tensor(shift, dtype=torch.float64)
    return m * torch.pow(2.0, s - 31)


def requantize(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(acc * m0 + 2**(n-1)) >> n with n = 31 - shift, in int64; acc must fit in int32."""
    acc = acc.to(torch.int64)
    lo, hi = (int(acc.min()), int(acc.max())) if acc.numel() else (0, 0)
    if lo < INT32_MIN or hi > INT32_MAX:
        raise AccumulatorOverflowError(
            f"an int32 accumulator holds {lo if lo < INT32_MIN else hi:,}, outside "
            f"[{INT32_MIN:,}, {INT32_MAX:,}]; the layer's weights or bias grew too large "
            f"(lower the learning rate) or its input range is too wide"
        )
    n = 31 - shift.to(torch.int64)
    return (acc * m0.to(torch.int64) + (torch.ones_like(n) << (n - 1))) >> n


def _act_bounds(act: Activation, scale: float, zp: int) -> tuple[int, int]:
    lo, hi = QMIN, QMAX
    if act in (Activation.RELU, Activation.RELU6):
        lo = max(QMIN, zp)
    if act is Activation.RELU6:
        hi = min(QMAX, zp + int(round_half_away(torch.tensor(6.0 / scale, dtype=torch.float64))))
    return lo, hi


# ---------------------------------------------------------------- graph data


@dataclass(frozen=True)
class QTensor:
    """An int8 activation tensor: `shape` is per sample (no batch dimension)."""

    name: str
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    @property
    def bytes_per_sample(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, eq=False)
class QConv2d:
    """conv2d with BN folded and the activation fused (NOTE [ int8 arithmetic, bit for bit ])."""

    name: str  # the conv module's path in the float model, e.g. "features.1.0"
    input: str
    output: str
    kind: ConvKind
    weight: torch.Tensor  # int8 (O, I/groups, k, k)
    bias: torch.Tensor  # int32 (O,)
    weight_scale: torch.Tensor  # float64 (O,)
    multiplier: torch.Tensor  # int32 (O,) m0
    shift: torch.Tensor  # int32 (O,)
    stride: int
    padding: int
    groups: int
    activation: Activation
    act_min: int
    act_max: int


@dataclass(frozen=True, eq=False)
class QLinear:
    name: str
    input: str
    output: str
    weight: torch.Tensor  # int8 (O, I)
    bias: torch.Tensor  # int32 (O,)
    weight_scale: torch.Tensor  # float64 (O,)
    multiplier: torch.Tensor
    shift: torch.Tensor
    act_min: int = QMIN
    act_max: int = QMAX


@dataclass(frozen=True)
class QAdd:
    name: str
    a: str
    b: str
    output: str
    multiplier_a: int
    shift_a: int
    multiplier_b: int
    shift_b: int
    multiplier_out: int
    shift_out: int
    left_shift: int = ADD_LEFT_SHIFT


@dataclass(frozen=True)
class QGlobalAvgPool:
    name: str
    input: str
    output: str


QOp = QConv2d | QLinear | QAdd | QGlobalAvgPool


@dataclass(frozen=True, eq=False)
class QuantGraph:
    """A real int8 graph: `ops` in execution order over the named `tensors`."""

    model: str
    input: str
    output: str
    tensors: tuple[QTensor, ...]
    ops: tuple[QOp, ...]

    def tensor(self, name: str) -> QTensor:
        for t in self.tensors:
            if t.name == name:
                return t
        raise InvalidArgumentError(f"no tensor {name!r} in the int8 graph of {self.model}")

    @property
    def weighted_ops(self) -> tuple[QConv2d | QLinear, ...]:
        return tuple(op for op in self.ops if isinstance(op, (QConv2d, QLinear)))

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Float images -> int8 input tensor (round half away from zero, in float64)."""
        t = self.tensor(self.input)
        if tuple(x.shape[1:]) != t.shape:
            raise InvalidArgumentError(
                f"{self.model}'s int8 graph takes inputs of shape (N, {', '.join(map(str, t.shape))}),"
                f" got {tuple(x.shape)}; resize the images (edgetrain.data.resize_for)"
            )
        q = round_half_away(x.to(torch.float64) / t.scale) + t.zero_point
        return q.clamp(QMIN, QMAX).to(torch.int8)

    def dequantize_output(self, q: torch.Tensor) -> torch.Tensor:
        t = self.tensor(self.output)
        return (q.to(torch.float64) - t.zero_point) * t.scale


# ---------------------------------------------------------------- integer reference


def _conv_int(x: torch.Tensor, op: QConv2d, zx: int, zy: int) -> torch.Tensor:
    n = x.shape[0]
    o, ig, k, _ = op.weight.shape
    g = op.groups
    xs = (x.to(torch.int64) - zx).to(torch.float64)  # |values| <= 255: an exact copy
    patches = F.unfold(xs, k, padding=op.padding, stride=op.stride).to(torch.int64)
    hw = patches.shape[-1]
    patches = patches.view(n, g, ig * k * k, hw)
    w = op.weight.to(torch.int64).view(g, o // g, ig * k * k)
    acc = torch.einsum("gok,ngkl->ngol", w, patches).reshape(n, o, hw)
    acc = acc + op.bias.to(torch.int64).view(1, o, 1)
    y = requantize(acc, op.multiplier.view(1, o, 1), op.shift.view(1, o, 1)) + zy
    hout = (x.shape[2] + 2 * op.padding - k) // op.stride + 1
    wout = (x.shape[3] + 2 * op.padding - k) // op.stride + 1
    return y.clamp(op.act_min, op.act_max).view(n, o, hout, wout).to(torch.int8)


def _linear_int(x: torch.Tensor, op: QLinear, zx: int, zy: int) -> torch.Tensor:
    acc = (x.to(torch.int64) - zx) @ op.weight.to(torch.int64).T + op.bias.to(torch.int64)
    y = requantize(acc, op.multiplier.view(1, -1), op.shift.view(1, -1)) + zy
    return y.clamp(op.act_min, op.act_max).to(torch.int8)


def _add_raw(a: torch.Tensor, b: torch.Tensor, op: QAdd, za: int, zb: int, zy: int) -> torch.Tensor:
    """The add's int64 result before the final clamp to int8."""

    def rq(v: torch.Tensor, m: int, s: int) -> torch.Tensor:
        return requantize(v, torch.tensor(m), torch.tensor(s))

    sa = rq((a.to(torch.int64) - za) << op.left_shift, op.multiplier_a, op.shift_a)
    sb = rq((b.to(torch.int64) - zb) << op.left_shift, op.multiplier_b, op.shift_b)
    return rq(sa + sb, op.multiplier_out, op.shift_out) + zy


def _add_int(a: torch.Tensor, b: torch.Tensor, op: QAdd, za: int, zb: int, zy: int) -> torch.Tensor:
    return _add_raw(a, b, op, za, zb, zy).clamp(QMIN, QMAX).to(torch.int8)


def _avgpool_int(x: torch.Tensor) -> torch.Tensor:
    s = x.to(torch.int64).sum(dim=(2, 3))
    n = x.shape[2] * x.shape[3]
    pos = (s + n // 2) // n
    neg = -((-s + n // 2) // n)
    return torch.where(s >= 0, pos, neg).clamp(QMIN, QMAX).to(torch.int8)


def run_int8(graph: QuantGraph, q_input: torch.Tensor) -> torch.Tensor:
    """Run the integer graph on an int8 input (N, C, H, W); returns the int8 output (N, classes).

    Pure integer arithmetic (int64 tensors; accumulators checked to fit in int32) following
    NOTE [ int8 arithmetic, bit for bit ]; this is the reference a C kernel must match.
    """
    if q_input.dtype != torch.int8:
        raise InvalidArgumentError(
            f"run_int8 takes an int8 input tensor, got {q_input.dtype}; quantise float images "
            f"with graph.quantize_input(x)"
        )
    env = {graph.input: q_input}
    for op in graph.ops:
        if isinstance(op, QConv2d):
            env[op.output] = _conv_int(
                env[op.input],
                op,
                graph.tensor(op.input).zero_point,
                graph.tensor(op.output).zero_point,
            )
        elif isinstance(op, QLinear):
            env[op.output] = _linear_int(
                env[op.input],
                op,
                graph.tensor(op.input).zero_point,
                graph.tensor(op.output).zero_point,
            )
        elif isinstance(op, QAdd):
            env[op.output] = _add_int(
                env[op.a],
                env[op.b],
                op,
                graph.tensor(op.a).zero_point,
                graph.tensor(op.b).zero_point,
                graph.tensor(op.output).zero_point,
            )
        else:
            env[op.output] = _avgpool_int(env[op.input])
    return env[graph.output]


# ---------------------------------------------------------------- BN folding (float)


class FoldedConv(nn.Module):
    """Conv2d with the BatchNorm folded into weight and bias, then the activation."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: Activation, name: str) -> None:
        super().__init__()
        std = torch.sqrt(bn.running_var.detach().double() + bn.eps)
        gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(std)
        w = conv.weight.detach().double() * (gamma / std).view(-1, 1, 1, 1)
        b0 = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(std)
        b = beta + (b0 - bn.running_mean.detach().double()) * gamma / std
        self.conv = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            groups=conv.groups,
            bias=True,
        )
        with torch.no_grad():
            self.conv.weight.copy_(w.float())
            self.conv.bias.copy_(b.float())
        self.act = act
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.act is Activation.RELU:
            return F.relu(y)
        if self.act is Activation.RELU6:
            return F.hardtanh(y, 0.0, 6.0)
        return y


class FoldedBlock(nn.Module):
    def __init__(self, convs: list[FoldedConv], residual: bool, name: str) -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.residual = residual
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for c in self.convs:
            y = c(y)
        return x + y if self.residual else y


class FoldedNet(nn.Module):
    """The float32 model with every BatchNorm folded: the graph `quantize` converts, and the
    fp32 reference trained with the same parameters (conv weights and biases, classifier)."""

    def __init__(
        self,
        units: list[nn.Module],
        classifier: nn.Linear,
        input_shape: tuple[int, ...],
        name: str,
        classifier_name: str,
    ) -> None:
        super().__init__()
        self.units = nn.ModuleList(units)
        self.classifier = nn.Linear(classifier.in_features, classifier.out_features)
        with torch.no_grad():
            self.classifier.weight.copy_(classifier.weight)
            self.classifier.bias.copy_(classifier.bias)
        self.input_shape = input_shape
        self.model_name = name
        self.classifier_name = classifier_name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for u in self.units:
            x = u(x)
        return self.classifier(x.mean(dim=(2, 3)))

    def layer_params(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by layer name (the conv module paths and the classifier's)."""
        out: dict[str, list[nn.Parameter]] = {}
        for m in self.modules():
            if isinstance(m, FoldedConv):
                out[m.name] = [m.conv.weight, m.conv.bias]
        out[self.classifier_name] = [self.classifier.weight, self.classifier.bias]
        return out


SUPPORTED = (
    "Sequential(Conv2d, BatchNorm2d[, ReLU | ReLU6]) (ConvBNAct)",
    "inverted residual blocks with a `.conv` Sequential of those and `use_residual`",
    "a final AdaptiveAvgPool2d(1) `pool` and Linear `classifier`",
)


def _unsupported(path: str, m: nn.Module, why: str) -> UnsupportedModuleError:
    return UnsupportedModuleError(
        f"int8 conversion: module {path!r} ({type(m).__name__}) is not supported: {why}. "
        f"Supported: a model with `features` (nn.Sequential), `pool` and `classifier` built from "
        f"{'; '.join(SUPPORTED)} -- e.g. mcu-cnn, mbv2-w0.35, mcunet"
    )


def _fold_convbnact(seq: nn.Module, path: str) -> FoldedConv:
    mods = list(seq.children()) if isinstance(seq, nn.Sequential) else []
    if (
        len(mods) not in (2, 3)
        or not isinstance(mods[0], nn.Conv2d)
        or not isinstance(mods[1], nn.BatchNorm2d)
    ):
        raise _unsupported(path, seq, "expected Conv2d -> BatchNorm2d -> optional ReLU/ReLU6")
    conv = mods[0]
    k = conv.kernel_size
    if (
        k[0] != k[1]
        or conv.stride[0] != conv.stride[1]
        or conv.padding[0] != conv.padding[1]
        or conv.dilation != (1, 1)
        or isinstance(conv.padding, str)
    ):
        raise _unsupported(path, conv, "only square kernels, strides and paddings, dilation 1")
    act = Activation.NONE
    if len(mods) == 3:
        a = mods[2]
        if isinstance(a, nn.ReLU6):
            act = Activation.RELU6
        elif isinstance(a, nn.ReLU):
            act = Activation.RELU
        elif isinstance(a, nn.Hardtanh) and a.min_val == 0.0 and a.max_val == 6.0:
            act = Activation.RELU6
        else:
            raise _unsupported(f"{path}.2", a, "activation must be ReLU or ReLU6")
    return FoldedConv(conv, mods[1], act, f"{path}.0")


def fold_batchnorm(model: nn.Module, example: torch.Tensor, name: str = "model") -> FoldedNet:
    """Fold every BatchNorm (running statistics) into its conv: a float32 `FoldedNet`."""
    feats = getattr(model, "features", None)
    pool = getattr(model, "pool", None)
    cls = getattr(model, "classifier", None)
    if not isinstance(feats, nn.Sequential):
        raise _unsupported(
            "features",
            feats if isinstance(feats, nn.Module) else model,
            "the model needs a `features` nn.Sequential",
        )
    if not (isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))):
        raise _unsupported(
            "pool",
            pool if isinstance(pool, nn.Module) else model,
            "the model needs `pool = nn.AdaptiveAvgPool2d(1)`",
        )
    if not isinstance(cls, nn.Linear):
        raise _unsupported(
            "classifier",
            cls if isinstance(cls, nn.Module) else model,
            "the model needs a `classifier` nn.Linear",
        )
    units: list[nn.Module] = []
    for i, child in enumerate(feats.children()):
        path = f"features.{i}"
        inner = getattr(child, "conv", None)
        if isinstance(inner, nn.Sequential) and hasattr(child, "use_residual"):
            convs = [_fold_convbnact(c, f"{path}.conv.{j}") for j, c in enumerate(inner.children())]
            units.append(FoldedBlock(convs, bool(child.use_residual), path))
        else:
            units.append(_fold_convbnact(child, path))
    return FoldedNet(units, cls, tuple(example.shape[1:]), name, "classifier")


# ---------------------------------------------------------------- calibration and conversion


def _qparams(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= 0:
        hi = lo + 1.0  # an all-zero tensor: any positive scale represents it exactly
    scale = (hi - lo) / (QMAX - QMIN)
    zp = int(round_half_away(torch.tensor(QMIN - lo / scale, dtype=torch.float64)))
    return scale, max(QMIN, min(QMAX, zp))


def _weight_quant(w: torch.Tensor, headroom: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.detach().double()
    amax = w.reshape(w.shape[0], -1).abs().amax(dim=1)
    # An all-zero channel (e.g. a freshly added class) takes the median scale of the layer's
    # other channels, so it can learn at the same resolution (1.0 if the whole layer is zero).
    fill = amax[amax > 0].median() / WMAX if bool((amax > 0).any()) else torch.tensor(1.0)
    scale = torch.where(amax > 0, amax / WMAX, fill.to(amax.dtype)) * headroom
    q = round_half_away(w / scale.view(-1, *([1] * (w.ndim - 1)))).clamp(-WMAX, WMAX)
    return q.to(torch.int8), scale


def _bias_quant(b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    q = round_half_away(b.detach().double() / scale)
    if float(q.abs().max()) > INT32_MAX:
        raise QuantizationError(
            f"a bias of {float(b.abs().max()):.4g} at scale {float(scale.min()):.3g} exceeds int32"
        )
    return q.to(torch.int32)


def _multipliers(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [quantize_multiplier(float(r)) for r in real]
    return (
        torch.tensor([p[0] for p in pairs], dtype=torch.int32),
        torch.tensor([p[1] for p in pairs], dtype=torch.int32),
    )


def _conv_kind(conv: nn.Conv2d) -> ConvKind:
    if conv.groups == conv.in_channels == conv.out_channels and conv.groups > 1:
        return ConvKind.DEPTHWISE
    if conv.kernel_size == (1, 1) and conv.groups == 1:
        return ConvKind.POINTWISE
    if conv.groups != 1:
        raise UnsupportedModuleError(
            f"int8 conversion: grouped conv with {conv.groups} groups over {conv.in_channels} "
            f"channels is not supported (only standard, depthwise and pointwise)"
        )
    return ConvKind.STANDARD


def _check_quantize_args(
    calibration: torch.Tensor, weight_headroom: Mapping[str, float] | None
) -> dict[str, float]:
    """The headroom by layer name, after checking it and the calibration batch."""
    headroom = dict(weight_headroom or {})
    for k, h in headroom.items():
        if isinstance(h, bool) or not (isinstance(h, (int, float)) and math.isfinite(h) and h >= 1):
            raise InvalidArgumentError(
                f"weight_headroom[{k!r}] must be a finite number >= 1, got {h!r}"
            )
    if not isinstance(calibration, torch.Tensor) or calibration.ndim != 4 or len(calibration) < 1:
        raise InvalidArgumentError(
            f"calibration must be a float tensor (N, C, H, W) with N >= 1 images, got "
            f"{getattr(calibration, 'shape', type(calibration).__name__)}"
        )
    return headroom


def _calibration_ranges(
    net: FoldedNet, calibration: torch.Tensor
) -> dict[str, tuple[float, float]]:
    """(min, max) of every activation of `net` over the calibration images, by tensor name."""
    ranges: dict[str, tuple[float, float]] = {}

    def note(key: str, t: torch.Tensor) -> None:
        ranges[key] = (float(t.min()), float(t.max()))

    x = calibration.float()
    with torch.no_grad():
        note("input", x)
        for u in net.units:
            if isinstance(u, FoldedBlock):
                y = x
                for c in u.convs:
                    y = c(y)
                    note(c.name, y)
                if u.residual:
                    y = x + y
                    note(f"{u.name}.add", y)
                x = y
            else:
                x = u(x)
                note(u.name, x)
        pooled = x.mean(dim=(2, 3))
        note(net.classifier_name, net.classifier(pooled))
    return ranges


def _activation_shapes(net: FoldedNet, calibration: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Per-sample shape of every activation of `net` (one calibration image), by tensor name."""
    shapes: dict[str, tuple[int, ...]] = {}
    with torch.no_grad():
        x = calibration[:1].float()
        shapes["input"] = tuple(x.shape[1:])
        for u in net.units:
            convs = u.convs if isinstance(u, FoldedBlock) else [u]
            y = x
            for c in convs:
                y = c(y)
                shapes[c.name] = tuple(y.shape[1:])
            if isinstance(u, FoldedBlock) and u.residual:
                y = x + y
                shapes[f"{u.name}.add"] = tuple(y.shape[1:])
            x = y
    return shapes


@dataclass(frozen=True)
class _Conversion:
    """What converting each layer reads (scale and zero point, shape and weight headroom, by
    tensor / layer name), and the tensors and ops converted so far (appended to)."""

    qp: dict[str, tuple[float, int]]
    shapes: dict[str, tuple[int, ...]]
    headroom: dict[str, float]
    tensors: list[QTensor]
    ops: list[QOp]


def quantize(
    model: nn.Module,
    calibration: torch.Tensor,
    *,
    name: str = "model",
    weight_headroom: Mapping[str, float] | None = None,
) -> QuantGraph:
    """Convert a trained float model (or a `FoldedNet`) into a real int8 `QuantGraph`.

    BatchNorms are folded with their running statistics; weights become per-channel symmetric
    int8, biases int32; each activation's scale and zero point come from its min/max over
    `calibration` (float images, N >= 1), the range always including 0.

    `weight_headroom` maps layer names (conv module paths, "classifier") to a factor h >= 1:
    that layer's weight scales become h * max|w[c]| / 127, so its weights can grow h-fold in
    on-device training before they saturate at +-127 (scales stay fixed while training), at the
    price of log2(h) bits of resolution. Layers not named keep h = 1.
    """
    headroom = _check_quantize_args(calibration, weight_headroom)
    net = model if isinstance(model, FoldedNet) else fold_batchnorm(model, calibration[:1], name)
    name = net.model_name if isinstance(model, FoldedNet) else name
    qp = {k: _qparams(*v) for k, v in _calibration_ranges(net, calibration).items()}
    shapes = _activation_shapes(net, calibration)
    cv = _Conversion(qp, shapes, headroom, [QTensor("input", shapes["input"], *qp["input"])], [])
    cur = "input"
    for u in net.units:
        if isinstance(u, FoldedBlock):
            block_in = cur
            for c in u.convs:
                cur = _convert_conv(cv, c, cur)
            if u.residual:
                cur = _convert_add(cv, f"{u.name}.add", block_in, cur)
        else:
            cur = _convert_conv(cv, u, cur)
    _convert_head(cv, net, cur)
    ops = cv.ops
    unknown = sorted(set(headroom) - {op.name for op in ops})
    if unknown:
        raise InvalidArgumentError(
            f"weight_headroom names layers {unknown} that are not in the model; its layers: "
            f"{', '.join(op.name for op in ops if isinstance(op, (QConv2d, QLinear)))}"
        )
    return QuantGraph(name, "input", net.classifier_name, tuple(cv.tensors), tuple(ops))


def _convert_conv(cv: _Conversion, c: FoldedConv, src: str) -> str:
    sx, _ = cv.qp[src]
    sy, zy = cv.qp[c.name]
    wq, ws = _weight_quant(c.conv.weight, cv.headroom.get(c.name, 1.0))
    bq = _bias_quant(c.conv.bias, sx * ws)
    m0, sh = _multipliers(sx * ws / sy)
    lo, hi = _act_bounds(c.act, sy, zy)
    cv.tensors.append(QTensor(c.name, cv.shapes[c.name], sy, zy))
    cv.ops.append(
        QConv2d(
            c.name,
            src,
            c.name,
            _conv_kind(c.conv),
            wq,
            bq,
            ws,
            m0,
            sh,
            c.conv.stride[0],
            c.conv.padding[0],
            c.conv.groups,
            c.act,
            lo,
            hi,
        )
    )
    return c.name


def _convert_add(cv: _Conversion, out: str, a: str, b: str) -> str:
    """The residual add `out` = `a` + `b` (TFLite's scheme, see the module's NOTE)."""
    sa, sb = cv.qp[a][0], cv.qp[b][0]
    sy, zy = cv.qp[out]
    twice = 2 * max(sa, sb)
    ma, sha = quantize_multiplier(sa / twice)
    mb, shb = quantize_multiplier(sb / twice)
    mo, sho = quantize_multiplier(twice / ((1 << ADD_LEFT_SHIFT) * sy))
    cv.tensors.append(QTensor(out, cv.shapes[out], sy, zy))
    cv.ops.append(QAdd(out, a, b, out, ma, sha, mb, shb, mo, sho))
    return out


def _convert_head(cv: _Conversion, net: FoldedNet, cur: str) -> None:
    """The global average pool over `cur` and the classifier."""
    src = cv.qp[cur]
    pool_name = "pool"
    cv.tensors.append(QTensor(pool_name, (cv.shapes[cur][0],), *src))
    cv.ops.append(QGlobalAvgPool(pool_name, cur, pool_name))
    cls = net.classifier
    sx = src[0]
    sy, zy = cv.qp[net.classifier_name]
    wq, ws = _weight_quant(cls.weight, cv.headroom.get(net.classifier_name, 1.0))
    bq = _bias_quant(cls.bias, sx * ws)
    m0, sh = _multipliers(sx * ws / sy)
    cv.tensors.append(QTensor(net.classifier_name, (cls.out_features,), sy, zy))
    cv.ops.append(QLinear(net.classifier_name, pool_name, net.classifier_name, wq, bq, ws, m0, sh))


def with_weights(
    graph: QuantGraph, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
) -> QuantGraph:
    """A copy of `graph` whose conv/linear ops take new int8 weights and int32 biases (by op
    name); scales, multipliers and zero points are unchanged (they stay fixed in training)."""
    ops: list[QOp] = []
    for op in graph.ops:
        if isinstance(op, (QConv2d, QLinear)) and op.name in weights:
            w, b = weights[op.name]
            if w.shape != op.weight.shape or b.shape != op.bias.shape:
                raise InvalidArgumentError(
                    f"weights for {op.name}: shapes {tuple(w.shape)}/{tuple(b.shape)}, expected "
                    f"{tuple(op.weight.shape)}/{tuple(op.bias.shape)}"
                )
            kw = {f: getattr(op, f) for f in op.__dataclass_fields__}
            kw["weight"], kw["bias"] = w.to(torch.int8), b.to(torch.int32)
            ops.append(type(op)(**kw))
        else:
            ops.append(op)
    return QuantGraph(graph.model, graph.input, graph.output, graph.tensors, tuple(ops))


def accuracy_int8(graph: QuantGraph, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of the integer graph (argmax of the int8 logits; ties -> lowest index)."""
    correct = 0
    for i in range(0, len(x), batch):
        q = run_int8(graph, graph.quantize_input(x[i : i + batch]))
        correct += int((q.to(torch.int64).argmax(1) == y[i : i + batch]).sum())
    return correct / max(1, len(x))


def op_names(graph: QuantGraph) -> Sequence[str]:
    return [op.name for op in graph.weighted_ops]
