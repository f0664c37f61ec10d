"""`mandheling` — Mandheling (Xu, Xu, Wang, Liu, Mei, Liu, Wang; MobiCom 2022): "Mandheling:
Mixed-Precision On-Device DNN Training with DSP Offloading".

Reproduced:
  - int8 mixed-precision training of the whole network: the forward pass is the real int8
    graph (`edgetrain.quant.QuantModel`), gradients rescaled per layer so int8 SGD moves the
    weights like float SGD (`QuantSGD(qas=True)`, standing in for Mandheling's self-adaptive
    rescaling), fp32 master copies of the weights (NOTE [ Training the int8 graph ]); scales
    stay fixed, so every layer is quantised with a weight-scale headroom of 8 (as `tte`'s
    trained layers) to let its weights grow without saturating at +-127;
  - batch splitting: the batch is split into the largest micro-batch whose int8 step fits the
    memory budget, with gradients accumulated (all layers' gradients live, no in-place update);
  - DSP offloading in the cost model (batch norm is folded, so it costs nothing): convolutions and linear layers (forward and both
    backward products) run on the device's accelerator at its int8 rate and power, element-wise
    work (requantisation, pooling, adds, the loss) on the CPU at its int8 rate; the plan's notes
    and `placement(prepared)` say which op goes where. Step time = DSP time + CPU time (no
    overlap), each with the device's per-operator dispatch overhead (`op_overhead_s`) for
    every forward and backward op run per micro-batch; energy = each unit's time x its active
    power. On a device without an int8 accelerator everything runs on the CPU.

NOTE [ What the mandheling prediction counts ]
    TinyEngine-style analytic count (`_tte.int8_step_bytes`: every frozen layer's input +
    output, no in-place kernels -- Mandheling runs on a phone's MNN, not the C trainer) with every layer
    trained at the micro-batch size, plus, since updates wait for the last micro-batch, every
    layer's fp32 gradient instead of the largest one, plus the int8 input batch.

Not reproduced: Mandheling's dynamic (per-iteration) rescaling policy and its int8/fp32 per-op
precision search, the DSP's own memory and the CPU-DSP transfer cost, and its scheduler's
overlap of CPU and DSP work. The host runs the int8 step as a float64 simulation, so its
allocator peak is reported only as a note.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from edgetrain import validate
from edgetrain.capture import capture
from edgetrain.cost import load_device
from edgetrain.errors import InvalidArgumentError, PlanInfeasibleError
from edgetrain.ir import OpKind
from edgetrain.planner import Prediction
from edgetrain.prepare import SAFETY_MARGIN
from edgetrain.prepare import trainer_plan as plan
from edgetrain.strategies._common import (
    WARMUP_STEPS,
    Prepared,
    System,
    SystemName,
    TrainReport,
    check_samples,
)
from edgetrain.strategies._tte import WEIGHT_HEADROOM, int8_step_bytes

_ON_ACCELERATOR = (OpKind.CONV2D, OpKind.LINEAR, OpKind.MATMUL)


def step_bytes(graph, micro_batch: int, batch: int) -> int:
    """NOTE [ What the mandheling prediction counts ]."""
    from edgetrain.quant import TensorKind, tensor_sizes

    layers = [op.name for op in graph.weighted_ops]
    sizes = tensor_sizes(graph, batch_size=micro_batch, trainable=layers)
    grads = [s.nbytes for s in sizes if s.kind is TensorKind.GRADIENT]
    batch_in = batch * graph.tensor(graph.input).bytes_per_sample
    return int8_step_bytes(graph, layers, micro_batch) - max(grads) + sum(grads) + batch_in


def _divisors(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def prepare(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    *,
    device="snapdragon-865",
    budget_bytes: int | None = None,
    batch_size: int = 1,
    name: str = "model",
    calibration: torch.Tensor | None = None,
    analysis: tuple | None = None,
    weight_headroom: float = WEIGHT_HEADROOM,
) -> Prepared:
    """`weight_headroom`: every layer's weight-scale headroom (`_tte.WEIGHT_HEADROOM`, 1 for
    none): scales stay fixed while training, so the weights need room to grow."""
    from edgetrain.quant import QuantModel, op_names, quantize

    if calibration is None or not isinstance(calibration, torch.Tensor) or len(calibration) == 0:
        raise InvalidArgumentError(
            "mandheling quantises the model before training: pass calibration=<a tensor of "
            "real input images> (e.g. 256 samples of the pretraining data)"
        )
    batch_size = validate.batch_size(batch_size)
    dev = load_device(device)
    budget = int(budget_bytes if budget_bytes is not None else dev.ram_bytes)
    graph = quantize(model, calibration, name=name)
    if weight_headroom != 1:  # every layer trains: each gets room to grow
        graph = quantize(
            model,
            calibration,
            name=name,
            weight_headroom={n: weight_headroom for n in op_names(graph)},
        )
    target = int(budget * (1 - SAFETY_MARGIN))
    mb = next(
        (d for d in _divisors(batch_size) if step_bytes(graph, d, batch_size) <= target), None
    )
    if mb is None:
        need = step_bytes(graph, 1, batch_size)
        raise PlanInfeasibleError(
            f"mandheling: even micro-batches of 1 need {need:,} bytes, over {budget:,} bytes "
            f"({need / budget:.2f}x) on {dev.name}; use a smaller batch or a larger budget"
        )
    peak = step_bytes(graph, mb, batch_size)
    # Work per op from the captured float graph (the int8 graph does the same MACs).
    g = capture(model, example_input, batch_size=batch_size, name=name)
    acc = (
        dev.accelerator
        if dev.accelerator is not None and dev.accelerator.int8_ops_per_s > 0
        else None
    )
    on_acc = cpu = 0
    placement = []
    for n in g.nodes:
        if n.op in (OpKind.BATCH_NORM, OpKind.BUFFER_UPDATE):
            continue  # folded into the int8 convolutions
        work = (
            n.flops_forward
            + n.flops_backward_input
            + n.flops_backward_params
            + n.vector_ops_forward
            + n.vector_ops_backward
        )
        if acc is not None and n.op in _ON_ACCELERATOR:
            on_acc += n.flops_forward + n.flops_backward_input + n.flops_backward_params
            cpu += n.vector_ops_forward + n.vector_ops_backward
            placement.append((n.name, "accelerator"))
        else:
            cpu += work
            placement.append((n.name, "cpu"))
    # Operator runs per step (forward + backward of each op, per micro-batch) each pay the
    # device's dispatch overhead, on whichever unit runs them: without it a step of a small
    # model on a multi-TOPS DSP would be modelled at a few microseconds. An op split across
    # units (MACs on the DSP, its element-wise part on the CPU) is dispatched on both.
    k = batch_size // mb
    n_acc = sum(1 for _, where in placement if where == "accelerator")
    n_cpu = len(placement)
    overhead_s = 2 * k * dev.compute.op_overhead_s
    acc_s = (on_acc / acc.int8_ops_per_s + n_acc * overhead_s) if acc is not None else 0.0
    cpu_s = cpu / dev.compute.int8_ops_per_s + n_cpu * overhead_s
    energy = (
        acc_s * (acc.active_power_w if acc is not None else 0.0)
        + cpu_s * dev.compute.active_power_w
    )
    fp = plan(
        model,
        example_input,
        device=dev,
        budget_bytes=1 << 40,
        batch_size=batch_size,
        strategy="exact",
        allow_paging=False,
        name=name,
    )
    where = (
        f"{sum(p == 'accelerator' for _, p in placement)} ops on {acc.name}"
        if acc
        else "no int8 accelerator: every op on the CPU"
    )
    p = replace(
        fp,
        budget_bytes=budget,
        micro_batch_size=mb,
        predicted=Prediction(peak, 0, acc_s + cpu_s, energy),
        notes=(f"int8 mixed precision, {batch_size // mb} x {mb} micro-batches; {where}",),
    )
    return Prepared(
        SystemName.MANDHELING,
        QuantModel(graph),
        example_input,
        p,
        dev,
        peak,
        p.notes,
        (("placement", tuple(placement)),),
    )


def placement(prepared: Prepared) -> dict[str, str]:
    """Which unit runs each op of the step: 'accelerator' or 'cpu'."""
    return dict(dict(prepared.state)["placement"])


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
    from edgetrain.quant import QuantModel, QuantSGD

    qm = prepared.model
    if not isinstance(qm, QuantModel):
        raise InvalidArgumentError("mandheling.train needs the model mandheling.prepare returned")
    b, mb = prepared.plan.batch_size, prepared.plan.micro_batch_size
    steps = check_samples(samples, b, len(x))
    opt = QuantSGD(qm, lr=lr, qas=True)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    losses, durations_s = [], []
    qm.train()
    for step in range(steps):
        idx = order[torch.arange(step * b, (step + 1) * b) % len(x)]
        xb, yb = x[idx].contiguous(), y[idx].contiguous()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(0, b, mb):  # batch splitting with gradient accumulation
            loss = F.cross_entropy(qm(xb[i : i + mb]), yb[i : i + mb]) * (mb / b)
            loss.backward()
            total += float(loss.detach())
        opt.step()
        if step >= WARMUP_STEPS:
            durations_s.append(time.perf_counter() - t0)
        losses.append(total)
    return TrainReport.from_timings(
        durations_s,
        steps=steps,
        batch_size=b,
        losses=losses,
        measured_peak_bytes=None,
        notes=("int8 step simulated in float64 on the host: no device peak measured",),
    )


SYSTEM = System(SystemName.MANDHELING, prepare, train)
