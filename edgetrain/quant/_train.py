"""Training in the int8 graph, as TTE does (Lin et al., NeurIPS 2022), with QAS.

NOTE [ Training the int8 graph ]
The parameters are the int8-valued weights W_q and int32-valued biases b_q of the graph, in
integer units (W = s_W * W_q, b = s_x * s_W * b_q); every scale, zero point and multiplier stays
fixed, as in TTE. The forward pass IS the integer graph: each op's output value is computed by
the exact integer arithmetic of NOTE [ int8 arithmetic, bit for bit ] (a test checks it equals
`run_int8` bit for bit). Backward uses the float surrogate of each op (float64): a requantised
conv/linear y = z_y + M * acc has d y / d acc = M where the output was not clamped and 0 where
it was (the straight-through estimator for rounding, the clamp's own gradient for saturation);
add and average pooling use their real-valued slopes.

Gradients w.r.t. the integer parameters are G_Wq = s_W * G_W and G_bq = s_x s_W * G_b, so the
ratio |W_q| / |G_Wq| is s_W^-2 times that of the float model, and plain SGD on W_q with the
float model's learning rate barely moves it. QAS (quantisation-aware scaling) rescales
    G~_Wq = G_Wq * s_W^-2,   G~_bq = G_bq * (s_x s_W)^-2        (per output channel)
so an SGD step changes the real weight by exactly what float SGD would: s_W * lr * G~_Wq =
lr * G_W. `qas=False` is the unscaled baseline.

Weight storage (`WeightStorage`):
- `FP32_MASTER` (default): each TRAINABLE layer keeps a float copy of its int8-valued weights and
  int32-valued biases (in integer units); the forward pass rounds it (round half away from zero,
  clamped to [-127, 127] / int32) with a straight-through gradient, so updates smaller than one
  quantisation step accumulate. Frozen layers hold only their int8 weights. To our reading of
  TTE's released PyTorch training code (not re-checked for this module), its quantised ops also
  keep the int8 values as float parameters that SGD updates without re-rounding. The simulation
  stores the copy in float64; the memory accounting (`tensor_sizes`) counts it as fp32.
- `INT8`: no float copy anywhere: after every SGD step the trainable weights and biases are
  re-rounded to int8 / int32 (round half away from zero), so an update below half a step is lost.

The backward of a conv/linear (`Int8Backward`): `INTEGER` (default) is NOTE [ int8 integer
backward ] below; `FLOAT_SURROGATE` is the float64 surrogate described above, kept as the
reference the integer backward approximates (the C trainer runs `INTEGER` only).

NOTE [ int8 integer backward ]
At the output of every conv/linear on the backward path (trainable, or carrying the gradient
to a trainable op before it) the surrogate's accumulator gradient dacc = dy * M * inside
(float64; `inside`: the output was not clamped) is quantised per tensor, per step:
    s_g = max|dacc| / 127     (max over the whole batch; max == 0: every gradient of the op,
                               weights, bias and input, is exactly 0 and the op is skipped)
    dq  = clamp(round_half_away(dacc / s_g), -127, 127)                     (int8 values)
(one float64 division each; the host C trainer does the same in double, so it agrees bit for
bit; on Cortex-M `ET_REAL` is float). Then, with exact integer sums (int32 in C, int64 here):
    GW_int[c, k] = sum_p dq[c, p] * (q_x[k, p] - z_x)    (over batch and positions; padding
                                                          taps contribute 0)
    Gb_int[c]    = sum_p dq[c, p]
    dx_int[k, p] = sum_c W_q[c, k] * dq[c, p]            (the transposed conv / matmul)
    G_Wq = s_g * GW_int,  G_bq = s_g * Gb_int,  dx = s_g * dx_int         (one rounding each)
G_Wq and G_bq go through QAS and SGD as above (per weight); dx is the gradient that flows to
the op before (its dy). W_q is the weight the forward used (before the step). Bounds: |dq| <=
127, |q_x - z_x| <= 255, |W_q| <= 127, so GW_int needs 127 * 255 * L_w <= 2**31 - 1 with L_w =
batch x output positions, and dx_int 127 * 127 * L_x with L_x = (output channels per group) x
K x K; `check_integer_backward` raises `AccumulatorOverflowError` from the shapes before a
step could overflow. The C kernels (edgetrain/codegen/c/int8_runtime.c) compute these sums with
the DSP's dual 16-bit multiply-accumulate where the target has it; the sums are the same
integers.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgetrain.errors import AccumulatorOverflowError, InvalidArgumentError

from ._graph import (
    INT32_MAX,
    INT32_MIN,
    QMAX,
    QMIN,
    WMAX,
    QAdd,
    QConv2d,
    QGlobalAvgPool,
    QLinear,
    QuantGraph,
    _add_raw,
    _avgpool_int,
    multiplier_value,
    requantize,
    round_half_away,
    with_weights,
)


class WeightStorage(enum.Enum):
    FP32_MASTER = "fp32-master"
    INT8 = "int8"


class Int8Backward(enum.Enum):
    """How a conv/linear's backward runs (NOTE [ int8 integer backward ])."""

    INTEGER = "integer"  # int8 output gradient, exact integer sums
    FLOAT_SURROGATE = "float-surrogate"  # float64 throughout


DQ_MAX = 127  # |dq| of NOTE [ int8 integer backward ]


def check_integer_backward(graph: QuantGraph, batch_size: int) -> None:
    """Raise `AccumulatorOverflowError` if an int32 sum of NOTE [ int8 integer backward ] could
    overflow for `graph` at `batch_size` (from shapes only)."""
    for op in graph.weighted_ops:
        shape = graph.tensor(op.output).shape
        positions = math.prod(shape[1:]) if isinstance(op, QConv2d) else 1
        lw = batch_size * positions
        if isinstance(op, QConv2d):
            k = op.weight.shape[-1]
            lx = (op.weight.shape[0] // op.groups) * k * k
        else:
            lx = op.weight.shape[0]
        for what, bound, fix in (
            (
                f"weight gradient sums {lw:,} products (batch {batch_size} x {positions:,} "
                f"output positions) of |dq| <= 127 and |q_x - z_x| <= 255",
                DQ_MAX * 255 * lw,
                "lower the batch size",
            ),
            (
                f"input gradient sums {lx:,} products of |W_q| <= 127 and |dq| <= 127",
                WMAX * DQ_MAX * lx,
                "split the layer",
            ),
        ):
            if bound > INT32_MAX:
                raise AccumulatorOverflowError(
                    f"int8 integer backward of {op.name}: the {what}, up to {bound:,}, beyond "
                    f"int32's {INT32_MAX:,}; {fix}, or train with "
                    f"backward=Int8Backward.FLOAT_SURROGATE in the simulation"
                )


def _quantize_grad(dacc: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(dq, s_g) of NOTE [ int8 integer backward ]: dq int64, s_g 0.0 when dacc is all 0."""
    m = float(dacc.abs().max()) if dacc.numel() else 0.0
    if m == 0.0:
        return torch.zeros_like(dacc, dtype=torch.int64), 0.0
    s_g = m / DQ_MAX
    dq = round_half_away(dacc / s_g).clamp(-DQ_MAX, DQ_MAX).to(torch.int64)
    return dq, s_g


class _IntegerConv(torch.autograd.Function):
    """Forward: `value` (the requantised output, exact integers); backward: NOTE [ int8
    integer backward ] for a conv2d whose input is `x` (int8 values) and weights `w`."""

    @staticmethod
    def forward(ctx, x, w, b, value, slope, zx, stride, padding, groups):  # type: ignore[override]
        ctx.save_for_backward(x, w, slope)
        ctx.conf = (zx, stride, padding, groups)
        return value.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, w, slope = ctx.saved_tensors
        zx, stride, padding, groups = ctx.conf
        dq, s_g = _quantize_grad(g * slope)
        nx, nw, nb = ctx.needs_input_grad[:3]
        if s_g == 0.0:
            z = torch.zeros
            return (
                z(x.shape, dtype=x.dtype) if nx else None,
                z(w.shape, dtype=w.dtype) if nw else None,
                z(w.shape[0], dtype=w.dtype) if nb else None,
            ) + (None,) * 6
        n, o, ho, wo = dq.shape
        k = w.shape[-1]
        ig = w.shape[1]
        dqg = dq.view(n, groups, o // groups, ho * wo)
        gx = gw = gb = None
        if nw:
            xs = (x.detach() - zx).to(torch.float64)  # |values| <= 255: exact
            patches = F.unfold(xs, k, padding=padding, stride=stride).to(torch.int64)
            patches = patches.view(n, groups, ig * k * k, ho * wo)
            gw_int = torch.einsum("ngol,ngkl->gok", dqg, patches).reshape(w.shape)
            gw = s_g * gw_int.to(torch.float64)
        if nb:
            gb = s_g * dq.sum(dim=(0, 2, 3)).to(torch.float64)
        if nx:
            wi = w.detach().to(torch.int64).view(groups, o // groups, ig * k * k)
            cols = torch.einsum("gok,ngol->ngkl", wi, dqg).reshape(n, groups * ig * k * k, -1)
            # fold sums at most K*K exact integers per element: exact in float64
            dx_int = F.fold(cols.to(torch.float64), x.shape[2:], k, padding=padding, stride=stride)
            gx = s_g * dx_int
        return (gx, gw, gb) + (None,) * 6


class _IntegerLinear(torch.autograd.Function):
    """`_IntegerConv` for a linear layer (x: (N, I) int8 values, w: (O, I))."""

    @staticmethod
    def forward(ctx, x, w, b, value, slope, zx):  # type: ignore[override]
        ctx.save_for_backward(x, w, slope)
        ctx.zx = zx
        return value.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, w, slope = ctx.saved_tensors
        dq, s_g = _quantize_grad(g * slope)
        nx, nw, nb = ctx.needs_input_grad[:3]
        gx = gw = gb = None
        if nw:
            xs = x.detach().to(torch.int64) - ctx.zx
            gw = s_g * (dq.T @ xs).to(torch.float64)
        if nb:
            gb = s_g * dq.sum(dim=0).to(torch.float64)
        if nx:
            gx = s_g * (dq @ w.detach().to(torch.int64)).to(torch.float64)
        return gx, gw, gb, None, None, None


class _Replace(torch.autograd.Function):
    """Forward: `value` (exact integers); backward: grad * `slope` to `x`."""

    @staticmethod
    def forward(ctx, x, value, slope):  # type: ignore[override]
        ctx.save_for_backward(slope)
        return value.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (slope,) = ctx.saved_tensors
        return g * slope, None, None


class _Replace2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, value, slope_a, slope_b):  # type: ignore[override]
        ctx.save_for_backward(slope_a, slope_b)
        return value.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        sa, sb = ctx.saved_tensors
        return g * sa, g * sb, None, None, None


class _Pool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, value):  # type: ignore[override]
        ctx.shape = x.shape
        return value.clone()

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        n, c, h, w = ctx.shape
        return (g / (h * w)).view(n, c, 1, 1).expand(n, c, h, w), None


def _key(name: str) -> str:
    return name.replace(".", "__")


class QuantModel(nn.Module):
    """The int8 graph as a trainable module (NOTE [ Training the int8 graph ]).

    `trainable`: names of the conv/linear ops that train (sparse update; their names are the
    float model's module paths, see `op_names`), None for all of them. The forward takes float
    images (quantised with `graph.quantize_input`) or an int8 tensor and returns the real-valued
    logits s_y * (q_y - z_y) in float64.
    """

    def __init__(
        self,
        graph: QuantGraph,
        *,
        trainable: Sequence[str] | None = None,
        storage: WeightStorage = WeightStorage.FP32_MASTER,
        backward: Int8Backward = Int8Backward.INTEGER,
    ) -> None:
        super().__init__()
        if not isinstance(storage, WeightStorage):
            raise InvalidArgumentError(
                f"storage must be a WeightStorage ({', '.join(s.name for s in WeightStorage)}), "
                f"got {storage!r}"
            )
        if not isinstance(backward, Int8Backward):
            raise InvalidArgumentError(
                f"backward must be an Int8Backward "
                f"({', '.join(s.name for s in Int8Backward)}), got {backward!r}"
            )
        self.backward_kind = backward
        names = [op.name for op in graph.weighted_ops]
        chosen = list(names) if trainable is None else list(trainable)
        unknown = [n for n in chosen if n not in names]
        if unknown:
            raise InvalidArgumentError(
                f"trainable layers {unknown} are not in the int8 graph of {graph.model}; "
                f"its conv/linear layers are: {', '.join(names)}"
            )
        self.graph = graph
        self.storage = storage
        self.trainable = tuple(n for n in names if n in chosen)
        self.weights = nn.ParameterDict()
        self.biases = nn.ParameterDict()
        for op in graph.weighted_ops:
            train = op.name in self.trainable
            self.weights[_key(op.name)] = nn.Parameter(
                op.weight.to(torch.float64), requires_grad=train
            )
            self.biases[_key(op.name)] = nn.Parameter(
                op.bias.to(torch.float64), requires_grad=train
            )

    # ------------------------------------------------------------ parameters and scales
    def parameter_scales(self) -> list[tuple[nn.Parameter, torch.Tensor, bool]]:
        """(parameter, its per-element real scale broadcastable to it, is_weight) for every
        trainable parameter: s_W for weights, s_x * s_W for biases."""
        out = []
        for op in self.graph.weighted_ops:
            if op.name not in self.trainable:
                continue
            sx = self.graph.tensor(op.input).scale
            w = self.weights[_key(op.name)]
            ws = op.weight_scale.view(-1, *([1] * (w.ndim - 1)))
            out.append((w, ws, True))
            out.append((self.biases[_key(op.name)], sx * op.weight_scale, False))
        return out

    def _wb(self, op: QConv2d | QLinear) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = self.weights[_key(op.name)], self.biases[_key(op.name)]
        if self.storage is WeightStorage.FP32_MASTER and w.requires_grad:
            one = torch.ones((), dtype=torch.float64)
            wq = round_half_away(w.detach()).clamp(-WMAX, WMAX)
            bq = round_half_away(b.detach()).clamp(INT32_MIN, INT32_MAX)
            return _Replace.apply(w, wq, one), _Replace.apply(b, bq, one)
        return w, b

    def integer_weights(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The int8 weights and int32 biases the forward pass uses now, by op name."""
        out = {}
        for op in self.graph.weighted_ops:
            w, b = self.weights[_key(op.name)].detach(), self.biases[_key(op.name)].detach()
            out[op.name] = (
                round_half_away(w).clamp(-WMAX, WMAX).to(torch.int8),
                round_half_away(b).clamp(INT32_MIN, INT32_MAX).to(torch.int32),
            )
        return out

    def to_graph(self) -> QuantGraph:
        """The trained int8 graph (same scales), ready for `run_int8` or a C generator."""
        return with_weights(self.graph, self.integer_weights())

    # ------------------------------------------------------------ forward
    def _requant_out(
        self, acc: torch.Tensor, op: QConv2d | QLinear, shape: Sequence[int]
    ) -> torch.Tensor:
        q, slope = self._requant(acc, op, shape)
        return _Replace.apply(acc, q, slope)

    def _requant(
        self, acc: torch.Tensor, op: QConv2d | QLinear, shape: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The output's int8 values and the surrogate's slope d q / d acc (M where not
        clamped, else 0)."""
        zy = self.graph.tensor(op.output).zero_point
        with torch.no_grad():
            pre = (
                requantize(
                    acc.detach().round().to(torch.int64),
                    op.multiplier.view(*shape),
                    op.shift.view(*shape),
                )
                + zy
            )
            q = pre.clamp(op.act_min, op.act_max).to(torch.float64)
            inside = (pre >= op.act_min) & (pre <= op.act_max)
            slope = multiplier_value(op.multiplier, op.shift).view(*shape) * inside
        return q, slope

    def _integer_conv(self, op: QConv2d, x: torch.Tensor) -> torch.Tensor:
        """The conv's integer output, with NOTE [ int8 integer backward ] as its backward."""
        w, b = self._wb(op)
        zx = self.graph.tensor(op.input).zero_point
        with torch.no_grad():
            acc = F.conv2d(x - zx, w, b, op.stride, op.padding, 1, op.groups)
        q, slope = self._requant(acc, op, (1, -1, 1, 1))
        return _IntegerConv.apply(x, w, b, q, slope, zx, op.stride, op.padding, op.groups)

    def _integer_linear(self, op: QLinear, x: torch.Tensor) -> torch.Tensor:
        w, b = self._wb(op)
        zx = self.graph.tensor(op.input).zero_point
        with torch.no_grad():
            acc = (x - zx) @ w.T + b
        q, slope = self._requant(acc, op, (1, -1))
        return _IntegerLinear.apply(x, w, b, q, slope, zx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.graph
        q_in = x if x.dtype == torch.int8 else g.quantize_input(x)
        env = {g.input: q_in.to(torch.float64)}
        integer = self.backward_kind is Int8Backward.INTEGER
        if integer and torch.is_grad_enabled():
            check_integer_backward(g, q_in.shape[0])
        for op in g.ops:
            if integer and isinstance(op, QConv2d):
                env[op.output] = self._integer_conv(op, env[op.input])
            elif integer and isinstance(op, QLinear):
                env[op.output] = self._integer_linear(op, env[op.input])
            elif isinstance(op, QConv2d):
                w, b = self._wb(op)
                xin = env[op.input] - g.tensor(op.input).zero_point
                acc = F.conv2d(xin, w, b, op.stride, op.padding, 1, op.groups)
                env[op.output] = self._requant_out(acc, op, (1, -1, 1, 1))
            elif isinstance(op, QLinear):
                w, b = self._wb(op)
                acc = (env[op.input] - g.tensor(op.input).zero_point) @ w.T + b
                env[op.output] = self._requant_out(acc, op, (1, -1))
            elif isinstance(op, QAdd):
                a, b = env[op.a], env[op.b]
                ta, tb, ty = g.tensor(op.a), g.tensor(op.b), g.tensor(op.output)
                with torch.no_grad():
                    ai, bi = a.detach().to(torch.int64), b.detach().to(torch.int64)
                    pre = _add_raw(ai, bi, op, ta.zero_point, tb.zero_point, ty.zero_point)
                    inside = (pre >= QMIN) & (pre <= QMAX)
                    val = pre.clamp(QMIN, QMAX).to(torch.float64)
                env[op.output] = _Replace2.apply(
                    a, b, val, inside * (ta.scale / ty.scale), inside * (tb.scale / ty.scale)
                )
            elif isinstance(op, QGlobalAvgPool):
                xin = env[op.input]
                with torch.no_grad():
                    val = _avgpool_int(xin.detach().to(torch.int64)).to(torch.float64)
                env[op.output] = _Pool.apply(xin, val)
            else:  # pragma: no cover - the graph holds only the four op types
                raise InvalidArgumentError(f"unknown op {op!r}")
        out = g.tensor(g.output)
        return (env[g.output] - out.zero_point) * out.scale


class QuantSGD(torch.optim.Optimizer):
    """SGD on a `QuantModel`'s integer parameters, with QAS (`qas=True`) or without.

    No momentum or weight decay (TTE trains with plain SGD). With `WeightStorage.INT8` every
    updated parameter is re-rounded to its integer type after the step.
    """

    def __init__(self, model: QuantModel, lr: float, *, qas: bool = True) -> None:
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise InvalidArgumentError(f"lr must be a positive number, got {lr!r}")
        groups = []
        for p, scale, is_weight in model.parameter_scales():
            groups.append(
                {
                    "params": [p],
                    "inv_scale2": 1.0 / scale.to(torch.float64) ** 2,
                    "bounds": (-WMAX, WMAX) if is_weight else (INT32_MIN, INT32_MAX),
                }
            )
        if not groups:
            raise InvalidArgumentError("the QuantModel has no trainable layers; pass trainable=")
        super().__init__(groups, {"lr": float(lr)})
        self.qas = bool(qas)
        self.reround = model.storage is WeightStorage.INT8

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (p,) = group["params"]
            if p.grad is None:
                continue
            g = p.grad * group["inv_scale2"] if self.qas else p.grad
            p.add_(g, alpha=-group["lr"])
            if self.reround:
                lo, hi = group["bounds"]
                p.copy_(round_half_away(p).clamp(lo, hi))
        return loss
