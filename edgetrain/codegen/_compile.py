"""The torch-facing side of `edgetrain compile`: model + plan + data -> files on disk.

Captures the graph at the plan's batch size, reads the weights from the model's state_dict,
turns a `LabeledData` set into flat samples for flash (uint8 pixels of a built-in image set,
float32 values of anything else), calls the pure renderer and writes the project atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edgetrain.codegen._files import check_output_dir, write_project
from edgetrain.codegen._int8_layout import int8_layout, int8_trainable_ops
from edgetrain.codegen._lower import module_attributes
from edgetrain.codegen._project import check_prediction
from edgetrain.codegen._render import SampleSet, TrainingSpec, data_summary, render
from edgetrain.codegen._targets import TargetKind, get_target
from edgetrain.errors import PlanPredictionError, UnsupportedKernelError, UnsupportedPlanError
from edgetrain.ir import OpKind
from edgetrain.planner import Executor, Plan, Precision


def weights_of(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def samples_of(
    x: torch.Tensor, y: torch.Tensor, dataset: str = "fashion-mnist", *, exact: bool = True
) -> SampleSet:
    """Samples of `edgetrain.data`'s built-in `dataset`, normalised with its
    `NORMALIZATION`, -> the uint8 pixels they came from (any rank).

    `exact=False` accepts values that are not whole pixels (e.g. resized images) and rounds
    them to the nearest uint8 level; the C driver and any reference then see the rounded
    samples (`normalised(samples)`). For any other data, `samples_from`."""
    from edgetrain.data import NORMALIZATION

    mean, std = NORMALIZATION[dataset]
    raw = (x.double() * std + mean) * 255.0
    px = torch.round(raw)
    if exact and float((px - raw).abs().max()) > 1e-2:
        raise UnsupportedPlanError(
            f"samples are not {dataset} pixels normalised with mean {mean}, std {std}; bake "
            "them as float32 values (samples_from)"
        )
    return SampleSet(
        px.clamp(0, 255).to(torch.uint8).numpy(), y.numpy().astype(np.int64), mean, std
    )


def samples_from(x: torch.Tensor, y: torch.Tensor, dataset: str | None = None) -> SampleSet:
    """A set of `load_data` (any rank, float inputs or integer token ids, class labels) as the
    C driver bakes it: int32 token ids; uint8 pixels when `x` are exactly a built-in
    `dataset`'s normalised pixels (a quarter of the flash); else float32 values as they are."""
    from edgetrain.data import NORMALIZATION

    tokens = not x.dtype.is_floating_point and x.dtype is not torch.bool
    if tokens and x.numel() and (x.min() < 0 or x.max() > np.iinfo(np.int32).max):
        raise UnsupportedPlanError(
            f"the integer samples range over [{int(x.min())}, {int(x.max())}]; the C trainer "
            "takes token ids as int32 in [0, 2**31 - 1]"
        )
    if not tokens and not x.dtype.is_floating_point:
        raise UnsupportedPlanError(
            f"the samples are {str(x.dtype).replace('torch.', '')}; the C trainer takes float "
            "values or integer token ids"
        )
    if y.dtype.is_floating_point or y.ndim != 1:
        raise UnsupportedPlanError(
            f"the targets are {str(y.dtype).replace('torch.', '')} {tuple(y.shape)}, not class "
            "ids (N,); the C trainer trains classifiers (task classification)"
        )
    if tokens:  # token ids for an embedding: int32 in flash, as the generated C reads them
        return SampleSet(
            x.detach().to(torch.int32).contiguous().numpy(), y.numpy().astype(np.int64)
        )
    if dataset in NORMALIZATION:
        try:
            return samples_of(x, y, dataset, exact=True)
        except UnsupportedPlanError:
            pass
    v = x.detach().to(torch.float32).contiguous().numpy()
    return SampleSet(v, y.numpy().astype(np.int64))


def normalised(s: SampleSet) -> torch.Tensor:
    """What the C driver computes from the flash samples, in float32 as it does."""
    if s.is_float:
        return torch.from_numpy(s.pixels.copy())
    if s.is_tokens:  # ids the model embeds (the host reference runs them as int64)
        return torch.from_numpy(s.pixels.astype(np.int64))
    px = torch.from_numpy(s.pixels.astype(np.float32))
    return (px / 255.0 - np.float32(s.mean)) / np.float32(s.std)


def compile_project(
    plan: Plan,
    model: torch.nn.Module,
    example: torch.Tensor,
    target: str,
    spec: TrainingSpec,
    out_dir: "str | Path",
    *,
    device: "str | None" = None,
    force: bool = False,
    layout: str = "demo",
) -> Path:
    """Render and write the C project for `plan` into `out_dir` in `layout` ("demo": the
    driver `mcu_run` runs; "library": the C API, NOTE [ Project layouts ]); returns the
    directory.
    `out_dir` must be new, empty or compile's own unless `force` (NOTE [ compile's output
    directory ], `OutputPathError`); a C plan's prediction must be the layout's
    (`PlanPredictionError`)."""
    from edgetrain.capture import capture
    from edgetrain.cost import load_device

    check_output_dir(out_dir, force=force)
    tgt = get_target(target)
    if plan.loss.startswith("custom:"):
        raise UnsupportedKernelError(
            f"the plan's loss is {plan.loss}, a Python function; the C trainer has the losses "
            "cross-entropy, mse, l1 and bce (with logits): re-plan with one of them (--loss)"
        )
    graph = capture(
        model, example, batch_size=plan.micro_batch_size, name=plan.model, loss=plan.loss
    )
    modules = dict(model.named_modules())
    _check_pool_modules(graph, modules)
    for n in graph.nodes:
        if n.op is OpKind.HARDTANH:
            m = modules.get(n.module)
            lo, hi = getattr(m, "min_val", None), getattr(m, "max_val", None)
            if (lo, hi) != (0.0, 6.0):
                raise UnsupportedKernelError(
                    f"node {n.name} ({n.module}): hardtanh({lo}, {hi}); the C kernel is ReLU6 "
                    "(hardtanh 0..6)"
                )
    sram = flash = 0
    if tgt.kind is TargetKind.CORTEX_M:
        dev = load_device(device or plan.device)
        sram, flash = dev.ram_bytes, dev.flash_bytes
    files = render(
        plan,
        graph,
        weights_of(model),
        tgt,
        spec,
        device_sram_bytes=sram,
        device_flash_bytes=flash,
        device_name=device or plan.device,
        layout=layout,
        hyper=module_attributes(model),
    )
    return write_project(out_dir, files, force=force)


def _check_pool_modules(graph, modules: dict) -> None:
    """What the graph does not record of a pooling module and the C kernels do not run
    (NOTE [ 1-D models in C ]): dilated max pooling, average pooling that excludes the
    padding from its divisor or overrides it."""
    for n in graph.nodes:
        if n.op not in (OpKind.MAX_POOL2D, OpKind.AVG_POOL2D):
            continue
        m = modules.get(n.module)
        dil = getattr(m, "dilation", 1)
        bad = []
        if dil not in (1, (1,), (1, 1)):
            bad.append(f"dilation {dil}")
        if getattr(m, "divisor_override", None):
            bad.append(f"divisor_override {m.divisor_override}")
        pad = getattr(m, "padding", 0)
        if getattr(m, "count_include_pad", True) is False and pad not in (0, (0,), (0, 0)):
            bad.append("count_include_pad=False with padding")
        if bad:
            raise UnsupportedKernelError(
                f"node {n.name} ({n.module}): {n.op.value} with {', '.join(bad)} has no C "
                "kernel; supported: dilation 1, divisor the kernel size (padding counted)"
            )


def compile_int8_project(
    plan: Plan,
    model: torch.nn.Module,
    train: SampleSet,
    test: SampleSet,
    target: str,
    out_dir: "str | Path",
    *,
    steps: int,
    lr: float,
    calibration: torch.Tensor | None = None,
    device: "str | None" = None,
    log_every: int = 1,
    dump_params: bool = False,
    force: bool = False,
    data: dict | None = None,
):
    """Quantise `model` (edgetrain.quant, calibrated on `calibration` or the training images),
    render int8 QAS training of what `plan` trains, write it; returns (out_dir, QuantGraph,
    trainable op names). `out_dir` and `force` as `compile_project`'s; an int8 C plan's
    prediction must be the layout's (`PlanPredictionError`)."""
    from edgetrain.codegen._int8_render import Int8Spec, render_int8
    from edgetrain.cost import load_device
    from edgetrain.quant import quantize

    check_output_dir(out_dir, force=force)
    tgt = get_target(target)
    was = model.training
    model.eval()
    try:
        calib = calibration if calibration is not None else normalised(train)
        qg = quantize(model, calib, name=plan.model)
    finally:
        model.train(was)
    trainable = int8_trainable_ops(plan, qg)
    if plan.executor is Executor.C and plan.precision is Precision.INT8:
        _check_int8_prediction(plan, qg, trainable)
    spec = Int8Spec(
        qg.quantize_input(normalised(train)).numpy(),
        train.labels,
        qg.quantize_input(normalised(test)).numpy(),
        test.labels,
        steps=steps,
        lr=lr,
        batch_size=plan.batch_size,
        log_every=log_every,
        dump_params=dump_params,
    )
    sram = flash = 0
    if tgt.kind is TargetKind.CORTEX_M:
        dev = load_device(device or plan.device)
        sram, flash = dev.ram_bytes, dev.flash_bytes
    # Always line-buffered: never more SRAM than without (int8_layout picks the best chain,
    # none included), and bit-identical results (tests/test_codegen_int8_memory.py).
    files = render_int8(
        qg,
        trainable,
        tgt,
        spec,
        device_sram_bytes=sram,
        line_buffer=True,
        device_flash_bytes=flash,
        device_name=device or plan.device,
    )
    meta = json.loads(files["edgetrain_build.json"])
    if plan.precision is Precision.INT8:  # the planner predicted this program's SRAM
        meta["planner_predicted_peak_bytes"] = plan.predicted_peak_bytes
    meta["data"] = data or data_summary(train, test)
    files["edgetrain_build.json"] = json.dumps(meta, indent=1)
    return write_project(out_dir, files, force=force), qg, trainable


def _check_int8_prediction(plan: Plan, qg, trainable: list[str]) -> None:
    """The int8 plan's predicted peak against `int8_layout` of the plan as given, for the
    target the planner sized it for (the device's emulated core, else the host: NOTE [ The C
    trainer's memory, for the planner ]). The layout differs between the host (double
    gradients) and Cortex-M (float), so a prediction made for either kind is accepted."""
    from edgetrain.codegen._targets import target_for_device

    first = target_for_device(plan.device) or "host"
    preds = [
        int8_layout(
            qg, trainable, batch_size=plan.batch_size, target=t, line_buffer=True
        ).predicted_peak_sram_bytes
        for t in dict.fromkeys((first, "cortex-m7" if first == "host" else "host"))
    ]
    for p in preds[1:]:
        try:
            check_prediction(plan, p, "executor c, int8")
            return
        except PlanPredictionError:
            pass
    check_prediction(plan, preds[0], "executor c, int8")
