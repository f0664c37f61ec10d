"""`minilearn` — MiniLearn (Profentzas, Almgren, Landsiedel; EWSN 2022): "MiniLearn: On-Device
Learning for Low-Power IoT Devices".

MiniLearn re-trains an already deployed int8 network on the device: it dequantises the int8
model, prunes filters until training fits the device's RAM, retrains the smaller network in
float32, and quantises it back to int8 for inference. The paper reports up to 2x faster
inference, up to 50 % less memory and +3-9 % accuracy on a subset of classes on an
nRF52840-class MCU.

Reproduced:
  - the int8 starting point: the pretrained model is quantised with `edgetrain.quant.quantize`
    (BN folded, per-channel int8 weights, int8 activations); before training, the strategy's
    model IS that original integer graph (`edgetrain.quant.QuantModel`, frozen), so the bench's
    "accuracy before" is the deployed int8 model's;
  - dequantisation: float weights W = s_W * W_q and biases b = s_x s_W b_q loaded into the
    BN-folded float network (`edgetrain.quant.FoldedNet`);
  - structured filter pruning, physically: every prunable layer (NOTE [ Which filters
    minilearn can prune ]) keeps the same share of its filters, those with the largest L1 norm
    of the dequantised weights; the consumers' input channels (and any depthwise conv in
    between) shrink with them, giving a smaller `nn.Module`. The pruning ratio starts at
    `min_prune_ratio` and grows in steps of 1/16 until `edgetrain.plan` (fp32, every parameter
    trained, every activation kept: plain training) fits the pruned network's training step in
    the budget;
  - fp32 retraining of every parameter of the pruned network with `edgetrain.Trainer` on that
    plan (SGD, the plan's batch), metered by the allocator (`train_planned`);
  - re-quantisation to int8 with fresh scales calibrated on the device's own training images
    (the first `RECALIBRATION_SAMPLES`), after which the model's forward is the new, smaller
    integer graph (`MiniLearnModel.to_graph()` gives it for `run_int8` or a C generator).

NOTE [ Which filters minilearn can prune ]
    A filter (output channel) of a standard or pointwise conv can be removed when its output
    tensor reaches only the next conv's input: then that consumer's input channel goes too, and a
    depthwise conv in between loses the same channel. Channels that meet a residual add (the last
    conv of a residual block, the conv feeding a residual block) are kept, and the classifier's
    outputs (the classes) are never pruned. For mcu-cnn every conv is prunable (conv0 -> conv1,
    conv1 -> depthwise -> pointwise, pointwise -> classifier); for MobileNetV2 the expansion
    convs (with their depthwise) are.

Reported (`Prepared.notes`, and `state`): the pruning ratio and filters kept, the predicted fp32
training peak of the pruned network against the unpruned one's, and the inference-speed change
as int8 MACs of the original vs the pruned graph, with the modelled int8 inference latency on
the device (2 ops per MAC at the device's int8 rate). `TrainReport` carries the allocator's
measured training peak.

Not reproduced: MiniLearn's exact pruning criterion and schedule (the paper's filter
importance and its fixed pruning levels; ours is per-layer L1 norm with the smallest uniform
ratio that fits, never below `min_prune_ratio`), its C implementation and on-device timing, and
its handling of the dequantised model's memory (the paper streams weights from flash; our plan
counts the fp32 pruned model in RAM). Re-quantisation uses new scales, so no weight-headroom is
needed (unlike `tte`/`mandheling`, whose scales stay fixed while training).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from edgetrain import validate
from edgetrain.cost import load_device
from edgetrain.errors import InvalidArgumentError, PlanInfeasibleError
from edgetrain.prepare import trainer_plan as plan
from edgetrain.strategies._common import Prepared, System, SystemName, TrainReport, train_planned

RATIO_STEP = 1 / 16
RECALIBRATION_SAMPLES = 256
DEFAULT_MIN_PRUNE_RATIO = 0.25


@dataclass(frozen=True)
class PruneGroup:
    """One prunable channel set: `producer`'s filters, the `depthwise` convs that carry the same
    channels, and the `consumer` (conv or classifier) whose input channels they are."""

    producer: str
    depthwise: tuple[str, ...]
    consumer: str


@dataclass(frozen=True)
class PruneResult:
    ratio: float
    filters_before: int
    filters_after: int
    kept: tuple[tuple[str, tuple[int, ...]], ...]  # producer -> kept filter indices


class MiniLearnModel(nn.Module):
    """The model minilearn trains: `fp32` is the pruned, dequantised float network the training
    stage updates; `int8` is the integer graph the forward pass runs (the original int8 model
    before training, the pruned, re-quantised one after)."""

    def __init__(self, fp32: nn.Module, int8: nn.Module) -> None:
        super().__init__()
        self.fp32 = fp32
        self.int8 = int8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.int8(x)

    def to_graph(self):
        """The int8 graph the forward pass runs now."""
        return self.int8.to_graph()


# ---------------------------------------------------------------- dequantise


def _folded_convs(net) -> list:
    from edgetrain.quant import FoldedBlock, FoldedConv

    out = []
    for u in net.units:
        out.extend(u.convs if isinstance(u, FoldedBlock) else [u])
    assert all(isinstance(c, FoldedConv) for c in out)
    return out


def dequantize(graph, template) -> nn.Module:
    """A copy of the `FoldedNet` `template` whose weights are the int8 graph's, dequantised:
    W = s_W * W_q, b = s_x * s_W * b_q (float32)."""
    net = copy.deepcopy(template)
    layers = {c.name: c.conv for c in _folded_convs(net)}
    layers[net.classifier_name] = net.classifier
    with torch.no_grad():
        for op in graph.weighted_ops:
            mod = layers[op.name]
            sx = graph.tensor(op.input).scale
            ws = op.weight_scale.view(-1, *([1] * (op.weight.ndim - 1)))
            mod.weight.copy_((op.weight.double() * ws).float())
            mod.bias.copy_((op.bias.double() * sx * op.weight_scale).float())
    return net


# ---------------------------------------------------------------- prune


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def prune_groups(net) -> list[PruneGroup]:
    """NOTE [ Which filters minilearn can prune ]."""
    from edgetrain.quant import FoldedBlock

    convs, tied = [], set()
    for u in net.units:
        if isinstance(u, FoldedBlock):
            if u.residual:
                if convs:
                    tied.add(convs[-1].name)  # the block's input meets the add
                tied.add(u.convs[-1].name)
            convs.extend(u.convs)
        else:
            convs.append(u)
    groups = []
    for i, c in enumerate(convs):
        if c.conv.groups != 1 or c.name in tied:
            continue
        j, dws = i + 1, []
        while j < len(convs) and _is_depthwise(convs[j].conv):
            dws.append(convs[j].name)
            j += 1
        if any(d in tied for d in dws):
            continue
        consumer = convs[j] if j < len(convs) else None
        if consumer is not None and consumer.conv.groups != 1:
            continue
        groups.append(
            PruneGroup(
                c.name, tuple(dws), consumer.name if consumer is not None else net.classifier_name
            )
        )
    return groups


def _keep_count(channels: int, ratio: float) -> int:
    return max(1, channels - math.floor(ratio * channels + 1e-9))


def prune(net, ratio: float) -> tuple[nn.Module, PruneResult]:
    """A physically smaller copy of the `FoldedNet` `net`: every prunable layer keeps its
    `1 - ratio` share of filters with the largest L1 norm (at least one)."""
    if not (isinstance(ratio, (int, float)) and 0 <= ratio < 1):
        raise InvalidArgumentError(f"pruning ratio must lie in [0, 1), got {ratio!r}")
    groups = prune_groups(net)
    convs = {c.name: c for c in _folded_convs(net)}
    out_keep: dict[str, torch.Tensor] = {}
    in_keep: dict[str, torch.Tensor] = {}
    for g in groups:
        w = convs[g.producer].conv.weight.detach()
        l1 = w.abs().reshape(w.shape[0], -1).sum(1)
        n = _keep_count(w.shape[0], ratio)
        keep = torch.sort(torch.argsort(l1, descending=True, stable=True)[:n]).values
        out_keep[g.producer] = keep
        for d in g.depthwise:
            out_keep[d] = keep
            in_keep[d] = keep
        in_keep[g.consumer] = keep
    small = copy.deepcopy(net)
    with torch.no_grad():
        for c in _folded_convs(small):
            old = c.conv
            o = out_keep.get(c.name, torch.arange(old.out_channels))
            i = in_keep.get(c.name, torch.arange(old.in_channels))
            if _is_depthwise(old):
                new = nn.Conv2d(
                    len(o),
                    len(o),
                    old.kernel_size,
                    old.stride,
                    old.padding,
                    groups=len(o),
                    bias=True,
                )
                new.weight.copy_(old.weight[o])
            else:
                new = nn.Conv2d(len(i), len(o), old.kernel_size, old.stride, old.padding, bias=True)
                new.weight.copy_(old.weight[o][:, i])
            new.bias.copy_(old.bias[o])
            c.conv = new
        cls = small.classifier
        i = in_keep.get(small.classifier_name, torch.arange(cls.in_features))
        new_cls = nn.Linear(len(i), cls.out_features)
        new_cls.weight.copy_(cls.weight[:, i])
        new_cls.bias.copy_(cls.bias)
        small.classifier = new_cls
    before = sum(convs[g.producer].conv.out_channels for g in groups)
    after = sum(len(out_keep[g.producer]) for g in groups)
    return small, PruneResult(
        float(ratio),
        before,
        after,
        tuple((g.producer, tuple(int(k) for k in out_keep[g.producer])) for g in groups),
    )


# ---------------------------------------------------------------- inference cost


def int8_macs(graph) -> int:
    """Multiply-accumulates of one int8 inference of `graph` at batch 1."""
    from edgetrain.quant import QConv2d

    total = 0
    for op in graph.weighted_ops:
        out = graph.tensor(op.output).shape
        if isinstance(op, QConv2d):
            total += math.prod(op.weight.shape) * out[1] * out[2]
        else:
            total += math.prod(op.weight.shape)
    return total


def filter_count(graph) -> int:
    """Output channels of every conv of the int8 graph (the classifier's classes excluded)."""
    from edgetrain.quant import QConv2d

    return sum(op.weight.shape[0] for op in graph.weighted_ops if isinstance(op, QConv2d))


# ---------------------------------------------------------------- the system


def prepare(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    device="nrf52840",
    budget_bytes: int | None = None,
    batch_size: int = 1,
    name: str = "model",
    calibration: torch.Tensor | None = None,
    analysis: tuple | None = None,
    min_prune_ratio: float = DEFAULT_MIN_PRUNE_RATIO,
) -> Prepared:
    """`calibration`: images to quantise the starting int8 model with (e.g. the pretraining
    data). `analysis` is accepted for the int8 strategies' common call and unused.
    `min_prune_ratio`: the smallest share of filters pruned even when the unpruned network's
    training already fits (MiniLearn prunes for inference speed too); 0 prunes only to fit."""
    from edgetrain.quant import QuantModel, fold_batchnorm, quantize

    del analysis
    if calibration is None or not isinstance(calibration, torch.Tensor) or len(calibration) == 0:
        raise InvalidArgumentError(
            "minilearn starts from an int8 model: pass calibration=<a tensor of real input "
            "images> (e.g. 256 samples of the pretraining data) to quantise it"
        )
    if not (isinstance(min_prune_ratio, (int, float)) and 0 <= min_prune_ratio < 1):
        raise InvalidArgumentError(f"min_prune_ratio must lie in [0, 1), got {min_prune_ratio!r}")
    batch_size = validate.batch_size(batch_size)
    dev = load_device(device)
    budget = validate.budget_bytes(budget_bytes if budget_bytes is not None else dev.ram_bytes)
    original = quantize(model, calibration, name=name)
    dense = dequantize(original, fold_batchnorm(model, calibration[:1], name))
    unpruned = plan(
        dense,
        example_input,
        device=dev,
        budget_bytes=1 << 40,
        batch_size=batch_size,
        strategy="keep-all",
        allow_paging=False,
        name=name,
    )
    ratio, chosen, last_peak, last = float(min_prune_ratio), None, None, None
    while ratio < 1:
        pruned, result = prune(dense, ratio)
        try:
            p = plan(
                pruned,
                example_input,
                device=dev,
                budget_bytes=budget,
                batch_size=batch_size,
                strategy="keep-all",
                allow_paging=False,
                name=name,
            )
            chosen = (pruned, result, p)
            break
        except PlanInfeasibleError:
            last = result
            last_peak = plan(
                pruned,
                example_input,
                device=dev,
                budget_bytes=1 << 40,
                batch_size=batch_size,
                strategy="keep-all",
                allow_paging=False,
                name=name,
            ).predicted_peak_bytes
        if result.filters_after == len(result.kept):  # one filter per layer left
            break
        ratio += RATIO_STEP
    if chosen is None:
        raise PlanInfeasibleError(
            f"minilearn: even pruned by {last.ratio:.0%} ({last.filters_before} -> "
            f"{last.filters_after} filters in prunable layers), fp32 training of {name} at batch "
            f"{batch_size} needs {last_peak:,} bytes, over the {budget:,}-byte budget on "
            f"{dev.name}; use a smaller batch or a larger budget"
        )
    pruned, result, p = chosen
    macs_before = int8_macs(original)
    # the pruned network quantised with the same calibration, for its MACs (weights unused)
    macs_after = int8_macs(quantize(pruned, calibration, name=name))
    lat = 2 / dev.compute.int8_ops_per_s
    notes = (
        f"dequantised int8 -> pruned {result.ratio:.0%} of filters by L1 norm "
        f"({result.filters_before} -> {result.filters_after} filters in prunable layers) -> "
        f"fp32 retraining -> int8",
        f"fp32 training peak predicted {p.predicted_peak_bytes:,} B pruned vs "
        f"{unpruned.predicted_peak_bytes:,} B unpruned "
        f"({1 - p.predicted_peak_bytes / unpruned.predicted_peak_bytes:.0%} less)",
        f"int8 inference {macs_before:,} -> {macs_after:,} MACs "
        f"({macs_before / macs_after:.2f}x faster modelled: {macs_before * lat * 1e3:.3g} -> "
        f"{macs_after * lat * 1e3:.3g} ms on {dev.name})",
    )
    plan_ = replace(p, notes=(*p.notes, notes[0]))
    wrapped = MiniLearnModel(pruned, QuantModel(original, trainable=[]))
    state = (
        ("prune", result),
        ("unpruned_peak_bytes", unpruned.predicted_peak_bytes),
        ("macs_before", macs_before),
        ("macs_after", macs_after),
        ("filters_before", filter_count(original)),
    )
    return Prepared(
        SystemName.MINILEARN,
        wrapped,
        example_input,
        plan_,
        dev,
        p.predicted_peak_bytes,
        notes,
        state,
    )


def train(
    prepared: Prepared,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    samples: int,
    lr: float = 0.05,
    seed: int = 0,
    measure_steps: int = 1,
) -> TrainReport:
    """Retrain the pruned network in fp32 on `prepared.plan`, then re-quantise it to int8
    (scales calibrated on the first `RECALIBRATION_SAMPLES` of `x`)."""
    from edgetrain.quant import QuantModel, quantize

    wrapped = prepared.model
    if not isinstance(wrapped, MiniLearnModel):
        raise InvalidArgumentError("minilearn.train needs the model minilearn.prepare returned")
    rep = train_planned(
        replace(prepared, model=wrapped.fp32),
        x,
        y,
        samples=samples,
        lr=lr,
        seed=seed,
        measure_steps=measure_steps,
    )
    wrapped.fp32.eval()
    graph = quantize(wrapped.fp32, x[:RECALIBRATION_SAMPLES], name=wrapped.int8.graph.model)
    wrapped.int8 = QuantModel(graph, trainable=[])
    return replace(
        rep,
        notes=(
            *rep.notes,
            f"re-quantised to int8 ({filter_count(graph)} conv output channels in all, "
            f"{int8_macs(graph):,} MACs), scales calibrated on "
            f"{min(len(x), RECALIBRATION_SAMPLES)} device images",
        ),
    )


SYSTEM = System(SystemName.MINILEARN, prepare, train)
