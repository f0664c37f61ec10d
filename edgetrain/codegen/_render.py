"""The renderer: one pure function from (Plan, IR graph, weights, target, training data) to the
text of a self-contained C99 project (`dict[path, text]`). No I/O, no torch, no malloc in the
generated code.

Memory classes of the generated program:
    flash (`static const`)  frozen weights (BN folded into frozen convolutions), BN statistics,
                            the training and test samples (flat, any rank: uint8 pixels
                            normalised on the fly, or float32 values as they are)
    SRAM .data              trainable parameters (initial values copied from flash at reset)
    SRAM .bss               the arena (activations, activation gradients, the input batch;
                            offsets from tensor lifetimes, see NOTE [ Arena assignment ]) and
                            the labels of the batch
    SRAM stack              the rest of the device's SRAM

NOTE [ Regression in the demo ]
    A model whose loss takes float targets of its output's shape (MSE, L1, smooth L1, BCE with
    logits: `_op_kernels.LOSSES`) trains in the demo layout as a reconstruction: the target is
    the sample itself (an autoencoder), copied into `et_targets` by `et_load`, so the output
    must have the input's size (`UnsupportedPlanError` otherwise). The driver's accuracy counts
    stay 0 (no classes); the loss is the measure. The library layout takes any float targets
    from the caller (`et_train_step(x, y)`).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgetrain.codegen._arena import MIN_STACK_BYTES, RUNTIME_RESERVE_BYTES
from edgetrain.codegen._kernels import PRELUDE
from edgetrain.codegen._library import LIBRARY_FIXED_C, Layout, library_files
from edgetrain.codegen._lower import (
    LKind,
    LOp,
    Lowered,
    lower,
    saved_for_backward,
    zero_weights,
)
from edgetrain.codegen._names import c_comment, c_string, identifiers_in, wire_name
from edgetrain.codegen._op_kernels import kernel_texts
from edgetrain.codegen._platform import render_platform
from edgetrain.codegen._project import (
    c_bytes,
    cfloat,
    check_flash,
    check_labels,
    check_prediction,
    header_text,
    main_c,
    makefile,
)
from edgetrain.codegen._targets import Target, TargetKind, get_target
from edgetrain.errors import UnsupportedPlanError
from edgetrain.ir import Graph
from edgetrain.planner import Executor, Plan, Precision

_C_TYPES = {
    np.dtype(np.uint8): "uint8_t",
    np.dtype(np.float32): "float",
    np.dtype(np.int32): "int32_t",
}
"""The sample types the C driver takes: pixels, values, token ids."""


@dataclass(frozen=True)
class SampleSet:
    """Samples (N, ...) of any rank (vectors, (C, L) windows, (C, H, W) images) and class
    labels (N,), baked into flash as flat arrays. `pixels` holds either uint8 pixels, which the
    model sees as `(pixel / 255 - mean) / std` (the normalisation of `edgetrain.data`'s
    built-in sets: a quarter of float32's flash), or float32 values the model sees as they are
    (`mean` 0, `std` 1; what `samples_from` makes of a user's data), or int32 token ids for a
    model whose input is integer (NOTE [ Tokens in C ] in _lower.py)."""

    pixels: np.ndarray
    labels: np.ndarray
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        v = self.pixels
        if v.dtype not in _C_TYPES or v.ndim < 2:
            raise UnsupportedPlanError(
                f"samples must be uint8 pixels, float32 values or int32 token ids of shape "
                f"(N, ...), got {v.dtype} {v.shape}"
            )
        if len(self.labels) != len(v) or len(v) == 0:
            raise UnsupportedPlanError(
                f"{len(v)} samples and {len(self.labels)} labels; need the same positive number"
            )
        if self.is_float and not np.isfinite(v).all():
            bad = int(np.flatnonzero(~np.isfinite(v.reshape(len(v), -1)).all(axis=1))[0])
            raise UnsupportedPlanError(
                f"sample {bad} holds NaN or inf; the C trainer needs finite inputs"
            )

    @property
    def is_float(self) -> bool:
        return self.pixels.dtype == np.float32

    @property
    def is_tokens(self) -> bool:
        return self.pixels.dtype == np.int32

    @property
    def c_type(self) -> str:
        """The C type of one value in flash."""
        return _C_TYPES[self.pixels.dtype]

    @property
    def sample_bytes(self) -> int:
        """Flash bytes of one sample: its values and its label byte."""
        return int(np.prod(self.pixels.shape[1:])) * self.pixels.itemsize + 1

    @property
    def flash_bytes(self) -> int:
        return len(self.labels) * self.sample_bytes


@dataclass(frozen=True)
class TrainingSpec:
    """What the driver does: `steps` SGD steps at `lr` over `train` (cyclically, batches of the
    plan's batch size), held-out accuracy on `test` before and after."""

    train: SampleSet
    test: SampleSet
    steps: int
    lr: float
    log_every: int = 1
    dump_params: bool = False  # print the trained parameters bit-exactly (hex) at the end
    data: dict | None = None  # what the samples are (`_cli.data_record`), for the build file


def render(
    plan: Plan,
    graph: Graph,
    weights: "dict[str, np.ndarray]",
    target: "str | Target",
    spec: TrainingSpec,
    *,
    device_sram_bytes: int = 0,
    device_flash_bytes: int = 0,
    device_name: str | None = None,
    layout: "Layout | str" = Layout.DEMO,
    hyper: "dict[str, dict] | None" = None,
) -> dict[str, str]:
    """Render the C project in `layout` (NOTE [ Project layouts ]): the library the user's
    firmware calls, or the demo driver over baked samples; `spec`'s samples are the demo's
    data and the library example's stream. `device_*_bytes` set the linker script's limits
    (Cortex-M). `hyper`: the module attributes the graph does not record
    (`_compile.module_attributes`: dropout's p, leaky_relu's slope, GELU's approximation)."""
    tgt = get_target(target)
    layout = _layout(layout)
    if spec.steps <= 0 or not (spec.lr > 0):
        raise UnsupportedPlanError(f"steps {spec.steps} and lr {spec.lr} must be positive")
    low = lower(
        plan, graph, weights, reserved=identifiers_in(_MODEL_C, LIBRARY_FIXED_C), hyper=hyper
    )
    for what, s in (("training", spec.train), ("test", spec.test)):
        if s.pixels.shape[1:] != low.input_shape[1:]:
            raise UnsupportedPlanError(
                f"{what} samples have shape {s.pixels.shape[1:]} but the model takes "
                f"{low.input_shape[1:]}; load them for the model's input (edgetrain.data."
                "load_data(..., input_shape=...), resize=(H, W) for images: compile --resize)"
            )
    if spec.train.pixels.dtype != spec.test.pixels.dtype:
        raise UnsupportedPlanError(
            "the training and test samples must be of one type (uint8 pixels, float32 values "
            f"or int32 token ids), got {spec.train.pixels.dtype} and {spec.test.pixels.dtype}"
        )
    _check_tokens(low, spec)
    if tgt.kind is TargetKind.CORTEX_M and (device_sram_bytes <= 0 or device_flash_bytes <= 0):
        raise UnsupportedPlanError(
            "a Cortex-M target needs the device's SRAM and flash sizes for its linker script "
            f"(got {device_sram_bytes} and {device_flash_bytes} bytes)"
        )
    _check_inputs(plan, low, spec, device_flash_bytes, device_name or plan.device, layout)
    platform = render_platform(tgt, device_sram_bytes, device_flash_bytes, MIN_STACK_BYTES)
    if layout is Layout.LIBRARY:
        files = library_files(
            model_parts(low, tgt),
            spec,
            tgt,
            model=plan.model,
            arena_bytes=low.arena_bytes,
            has_dropout=_dropouts(low) > 0,
            seed=RNG_SEED,
            load_expr=_load_expr(spec.train),
            platform=platform,
        )
    else:
        files = {
            "et_model.h": _header(low, spec),
            "et_model.c": _model_c(low, spec, tgt),
            "et_data.c": _data_c(spec),
            "main.c": main_c(tgt),
            "Makefile": makefile(tgt),
            **platform,
        }
    meta = {
        "layout": layout.value,
        "target": tgt.name,
        "model": plan.model,
        "device": device_name or plan.device,
        "batch_size": low.batch_size,
        "steps": spec.steps,
        "lr": spec.lr,
        "arena_bytes": low.arena_bytes,
        "trainable_bytes": sum(a.values.size * 4 for a in low.arrays if a.trainable),
        "const_weight_bytes": sum(a.values.size * 4 for a in low.arrays if not a.trainable),
        "trainable_params": list(low.trainable_params),
        "folded": list(low.folded),
        "planner_predicted_peak_bytes": plan.predicted_peak_bytes,
        "codegen_predicted_peak_sram_bytes": _peak_sram_bytes(low),
        "sram_limit_bytes": device_sram_bytes,
        "flash_limit_bytes": device_flash_bytes,
        "counter_hz": tgt.counter_hz,
        "qemu_machine": tgt.qemu_machine,
        "data": spec.data or data_summary(spec.train, spec.test),
        "buffers": [
            {
                "name": b.name,
                "bytes": b.nbytes,
                "offset": b.offset,
                "first_step": b.first,
                "last_step": b.last,
            }
            for b in low.buffers
        ],
    }
    files["edgetrain_build.json"] = json.dumps(meta, indent=1)
    return files


def _layout(v: "Layout | str") -> Layout:
    try:
        return Layout(v)
    except ValueError:
        raise UnsupportedPlanError(
            f"layout {v!r} is not one of {', '.join(x.value for x in Layout)}"
        ) from None


def data_summary(train: SampleSet, test: SampleSet) -> dict:
    """The build file's record of samples given through the API (no source known)."""
    return {
        "source": None,
        "task": "classification",
        "metric": "accuracy",
        "train_samples": len(train.labels),
        "test_samples": len(test.labels),
        "evaluated_on": "the test samples given",
    }


def _check_inputs(
    plan: Plan, low: Lowered, spec: TrainingSpec, flash: int, device: str, layout: Layout
) -> None:
    """What the plan claims and what the data holds, checked before any C is written."""
    if plan.executor is Executor.C and plan.precision is Precision.FP32:
        check_prediction(plan, _peak_sram_bytes(low), "executor c, fp32")
    if low.num_classes:
        check_labels(spec.train.labels, low.num_classes, "training")
        check_labels(spec.test.labels, low.num_classes, "test")
    elif layout is Layout.DEMO and _numel(low.ops[-1].shape_in[0][1:]) != _numel(
        low.input_shape[1:]
    ):
        raise UnsupportedPlanError(
            f"the model's loss takes float targets of its output's shape "
            f"{low.ops[-1].shape_in[0][1:]}; the baked samples train a reconstruction (the "
            f"target is the sample, {low.input_shape[1:]}), which needs the output to have "
            "the input's size. Use the library layout and pass your targets to et_train_step"
        )
    check_flash(
        flash,
        device,
        train_n=len(spec.train.labels),
        test_n=len(spec.test.labels),
        sample_bytes=spec.train.sample_bytes,
        weights_bytes=sum(a.values.size * 4 for a in low.arrays),
        sample="x".join(map(str, spec.train.pixels.shape[1:])) + f" {spec.train.pixels.dtype}",
    )


def _check_tokens(low: Lowered, spec: TrainingSpec) -> None:
    """Token ids for a model whose input is integer, in range of its embedding table (NOTE
    [ Tokens in C ]); values for any other model."""
    if low.input_int != spec.train.is_tokens:
        want = "int32 token ids" if low.input_int else "uint8 pixels or float32 values"
        raise UnsupportedPlanError(
            f"the model's input {low.input_tensor} takes {want}, but the samples are "
            f"{spec.train.pixels.dtype}; pass {want}"
        )
    rows = [op.extra["V"] for op in low.ops if op.kind is LKind.EMBEDDING]
    for what, s in (("training", spec.train), ("test", spec.test)):
        if rows and (s.pixels.min() < 0 or s.pixels.max() >= min(rows)):
            raise UnsupportedPlanError(
                f"the {what} token ids span {s.pixels.min()}..{s.pixels.max()}; the embedding "
                f"table has {min(rows)} rows (ids 0..{min(rows) - 1})"
            )


def _peak_sram_bytes(low: Lowered) -> int:
    """SRAM of the compiled program at its peak: the arena, the trainable parameters (SRAM
    `.data`), the batch's labels (or float targets), the dropout generator's state and the
    runtime reserve (see RUNTIME_RESERVE_BYTES)."""
    k = _dropouts(low)
    targets = low.batch_size * (1 if low.num_classes else _numel(low.ops[-1].shape_in[0][1:]))
    return (
        low.arena_bytes
        + sum(a.values.size * 4 for a in low.arrays if a.trainable)
        + 4 * targets
        + (4 * k + 8 if k else 0)  # the dropout generator, saved states, training flag
        + RUNTIME_RESERVE_BYTES
    )


def predict_peak_sram_bytes(plan: Plan, graph: Graph) -> int:
    """The peak SRAM the program compiled from `plan` will use, before any weights exist.

    Pure: lowers the plan with zero weights (memory depends on shapes only) and applies the same
    formula `render` records as `codegen_predicted_peak_sram_bytes`. `edgetrain.plan(...,
    executor="c")` uses it as the plan's predicted peak.
    """
    return _peak_sram_bytes(lower(plan, graph, zero_weights(graph)))


# -- helpers -----------------------------------------------------------------------------------
def _floats(v: np.ndarray) -> str:
    if not np.isfinite(v).all():
        raise UnsupportedPlanError("the weights hold NaN or inf; train or load finite weights")
    vals = [cfloat(x) for x in v.astype(np.float32).tolist()]
    return ",\n".join(",".join(vals[i : i + 8]) for i in range(0, len(vals), 8))


def _numel(s) -> int:
    return int(np.prod(s))


class _Names:
    def __init__(self, low: Lowered) -> None:
        self.low = low
        self.off = {b.name: b.offset for b in low.buffers}
        self.dims: dict[tuple[int, ...], int] = {}  # int sequences -> offset in `et_dims`
        self.n_dims = 0

    def ints(self, v) -> str:
        """A kernel's per-dimension argument: a slice of the program's constant `et_dims`
        table (flash; a compound literal would take stack in the calling function)."""
        key = tuple(int(x) for x in v)
        if not key:
            return "0"
        if key not in self.dims:
            self.dims[key] = self.n_dims
            self.n_dims += len(key)
        return f"(et_dims + {self.dims[key]})"

    def dims_c(self) -> str:
        if not self.dims:
            return ""
        vals = [x for key in self.dims for x in key]
        return f"static const int et_dims[{len(vals)}] = {{{', '.join(map(str, vals))}}};"

    def a(self, t: str) -> str:
        return f"A({self.off[self.low.alias['a:' + t]] // 4})"

    def g(self, t: str) -> str:
        return f"A({self.off[self.low.alias['g:' + t]] // 4})"

    def prob(self, t: str) -> str:
        return f"A({self.off[self.low.alias['a:' + t + '.prob']] // 4})"

    def ws(self, t: str) -> str:
        """An operator's workspace (NOTE [ LSTM in C ])."""
        return f"A({self.off[self.low.alias['a:' + t + '.ws']] // 4})"

    def p(self, sym: str) -> str:
        """The gradient sum of a shared trained array (NOTE [ Shared weights in C ])."""
        return f"A({self.off[self.low.alias['p:' + sym]] // 4})"


def _header(low: Lowered, spec: TrainingSpec) -> str:
    return header_text(
        low.batch_size,
        low.num_classes,
        _numel(low.input_shape[1:]),
        low.arena_bytes,
        spec,
        spec.train.c_type,
    )


def _conv_dims(op: LOp) -> tuple[int, ...]:
    b, ci, h, w = op.shape_in[0]
    _, co, ho, wo = op.shape_out
    kh, kw = op.extra["kernel"]
    sh, sw = op.extra["stride"]
    ph, pw = op.extra["padding"]
    dh, dw = op.extra.get("dilation", (1, 1))
    return (b, ci, h, w, co, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, op.extra["groups"])


def _is_pw(op: LOp) -> bool:
    return (
        tuple(op.extra["kernel"]) == (1, 1)
        and tuple(op.extra["stride"]) == (1, 1)
        and tuple(op.extra["padding"]) == (0, 0)
        and op.extra["groups"] == 1
    )


# -- forward: one call per operator, by kind (KERNELS names the C functions) ------------------
def _conv_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    d = _conv_dims(op)
    b = op.bias or "0"
    if _is_pw(op):
        used.add("conv2d_pw_fwd")
        return (
            f"conv2d_pw_fwd({nm.a(op.inputs[0])}, {op.weight}, {b}, {nm.a(op.output)}, "
            f"{d[0]}, {d[1]}, {d[4]}, {d[2] * d[3]});"
        )
    used.add("conv2d_fwd")
    return (
        f"conv2d_fwd({nm.a(op.inputs[0])}, {op.weight}, {b}, {nm.a(op.output)}, "
        + ", ".join(map(str, d))
        + ");"
    )


def _bn_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("bn_fwd")
    b, c = op.shape_in[0][:2]
    return (
        f"bn_fwd({nm.a(op.inputs[0])}, {op.extra['mean']}, {op.extra['invstd']}, "
        f"{op.weight}, {op.bias}, {nm.a(op.output)}, {b}, {c}, "
        f"{_numel(op.shape_in[0][2:])});"
    )


def _relu_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("relu_fwd")
    return f"relu_fwd({nm.a(op.inputs[0])}, {nm.a(op.output)}, {_numel(op.shape_out)});"


def _relu6_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("hardtanh_fwd")
    return (
        f"hardtanh_fwd({nm.a(op.inputs[0])}, {nm.a(op.output)}, "
        f"{_numel(op.shape_out)}, {op.extra['lo']}f, {op.extra['hi']}f);"
    )


def _add_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("add_fwd")
    return (
        f"add_fwd({nm.a(op.inputs[0])}, {nm.a(op.inputs[1])}, {nm.a(op.output)}, "
        f"{_numel(op.shape_out)});"
    )


def _gap_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("gap_fwd")
    b, c = op.shape_in[0][:2]
    return (
        f"gap_fwd({nm.a(op.inputs[0])}, {nm.a(op.output)}, {b * c}, {_numel(op.shape_in[0][2:])});"
    )


def _pool_dims(op: LOp) -> str:
    """B*C, H, W, Ho, Wo, KH, KW, sh, sw, ph, pw of a pooling operator."""
    b, c, h, w = op.shape_in[0]
    ho, wo = op.shape_out[2:]
    d = (b * c, h, w, ho, wo, *op.extra["kernel"], *op.extra["stride"], *op.extra["padding"])
    return ", ".join(map(str, d))


def _pool_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    k = "maxpool_fwd" if op.kind is LKind.MAXPOOL else "avgpool_fwd"
    used.add(k)
    return f"{k}({nm.a(op.inputs[0])}, {nm.a(op.output)}, {_pool_dims(op)});"


def _view_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    return f"/* {c_comment(op.name)}: view (alias) */"


def _gather_args(op: LOp, nm: _Names) -> str:
    e = op.extra
    return f"{e['offset']}, {len(e['size'])}, {nm.ints(e['size'])}, {nm.ints(e['stride'])}"


def _gather_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("view_gather")
    return f"view_gather({nm.a(op.inputs[0])}, {nm.a(op.output)}, {_gather_args(op, nm)});"


def _fill_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("fill_fwd")
    v = cfloat(op.extra["value"])
    return f"fill_fwd({nm.a(op.output)}, {_numel(op.shape_out)}, {v});"


def _linear_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("linear_fwd")
    b, i = op.shape_in[0]
    return (
        f"linear_fwd({nm.a(op.inputs[0])}, {op.weight}, {op.bias or '0'}, "
        f"{nm.a(op.output)}, {b}, {i}, {op.shape_out[1]});"
    )


def _hyper(op: LOp, key: str, what: str):
    v = op.extra[key]
    if v is None:
        raise UnsupportedPlanError(
            f"node {op.name}: its module's {what} is unknown to the renderer; pass the model's "
            "module attributes: render(..., hyper=module_attributes(model)) "
            "(edgetrain.codegen._compile; compile_project does)"
        )
    return v


def _pointwise_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    k = f"pw_{op.extra['fn']}_fwd"
    used.add(k)
    a = cfloat(_hyper(op, "a", "parameter"))
    return f"{k}({nm.a(op.inputs[0])}, {nm.a(op.output)}, {_numel(op.shape_out)}, {a});"


def _binary_n(op: LOp) -> tuple[str, str]:
    """(kernel suffix, size arguments) of a binary operator: n, or n / P and P broadcast."""
    p = op.extra["bcast_p"]
    n = _numel(op.shape_out)
    return ("_bc", f"{n // p}, {p}") if p else ("", f"{n}")


def _binary_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    bc, sizes = _binary_n(op)
    k = f"bin_{op.extra['fn']}_fwd{bc}"
    used.add(k)
    a, b = (nm.a(t) for t in op.inputs)
    return f"{k}({a}, {b}, {nm.a(op.output)}, {sizes});"


def _loss_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    k = f"loss_{op.extra['fn']}_fwd"
    used.add(k)
    n = _numel(op.shape_in[0])
    return f"loss = {k}({nm.a(op.inputs[0])}, et_targets, {nm.prob(op.output)}, {n});"


def dropout_constants(op: LOp) -> tuple[int, str, str]:
    """(index, threshold, scale) of a dropout operator: keep where a 32-bit draw >= p * 2^32,
    scaled by 1 / (1 - p) in float32 (PyTorch's mask / (1 - p))."""
    p = float(_hyper(op, "p", "dropout probability p"))
    thr = min(int(round(p * 2.0**32)), 2**32 - 1)
    scale = cfloat(np.float32(1.0) / np.float32(1.0 - p))
    return op.extra["index"], f"{thr}u", scale


def _dropout_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.update(("et_rng_next", "dropout_fwd"))
    k, thr, scale = dropout_constants(op)
    return (
        f"dropout_fwd({nm.a(op.inputs[0])}, {nm.a(op.output)}, {_numel(op.shape_out)}, {thr}, "
        f"{scale}, &et_rng, &et_drop_state[{k}], et_training);"
    )


def _layer_norm_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("layernorm_fwd")
    eps = cfloat(_hyper(op, "eps", "eps"))
    return (
        f"layernorm_fwd({nm.a(op.inputs[0])}, {op.weight or '0'}, {op.bias or '0'}, "
        f"{nm.a(op.output)}, {op.extra['nrows']}, {op.extra['d']}, {eps});"
    )


def _upsample_dims(op: LOp) -> str:
    b, c, h, w = op.shape_in[0]
    return f"{b * c}, {h}, {w}, {op.extra['sh']}, {op.extra['sw']}"


def _upsample_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("upsample_nearest_fwd")
    return f"upsample_nearest_fwd({nm.a(op.inputs[0])}, {nm.a(op.output)}, {_upsample_dims(op)});"


def _cat_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("cat_fwd")
    e = op.extra
    return " ".join(
        f"cat_fwd({nm.a(t)}, {nm.a(op.output)}, {e['outer']}, {c}, {e['whole']}, {o});"
        for t, c, o in zip(op.inputs, e["chunks"], e["offsets"])
    )


def _softmax_args(op: LOp) -> str:
    e = op.extra
    return f"{e['outer']}, {e['n']}, {e['inner']}, {int(e['log'])}"


def _softmax_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("softmax_fwd")
    return f"softmax_fwd({nm.a(op.inputs[0])}, {nm.a(op.output)}, {_softmax_args(op)});"


def _xent_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("xent_fwd")
    b, kk = op.shape_in[0]
    return (
        f"loss = xent_fwd({nm.a(op.inputs[0])}, et_labels, {nm.prob(op.output)}, {b}, "
        f"{kk}, correct);"
    )


def _param_add_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("param_add_fwd")
    e = op.extra
    return (
        f"param_add_fwd({nm.a(op.inputs[0])}, {op.bias}, {nm.a(op.output)}, "
        f"{e['outer']}, {e['P']});"
    )


def _mean_args(op: LOp) -> str:
    return f"{op.extra['outer']}, {op.extra['n']}, {op.extra['inner']}"


def _mean_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("mean_fwd")
    return f"mean_fwd({nm.a(op.inputs[0])}, {nm.a(op.output)}, {_mean_args(op)});"


def _attention_args(op: LOp) -> str:
    e = op.extra
    return f"{e['bh']}, {e['L']}, {e['S']}, {e['E']}, {e['Ev']}, {cfloat(e['scale'])}"


def _attention_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("attention_fwd")
    q, k, v = (nm.a(t) for t in op.inputs)
    return f"attention_fwd({q}, {k}, {v}, {nm.a(op.output)}, {_attention_args(op)});"


def _embedding_args(op: LOp) -> str:
    return f"{op.extra['tokens']}, {op.extra['V']}, {op.extra['D']}"


def _embedding_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("embedding_fwd")
    x = nm.a(op.inputs[0])
    return f"embedding_fwd({x}, {op.weight}, {nm.a(op.output)}, {_embedding_args(op)});"


def _lstm_args(op: LOp) -> str:
    e = op.extra
    return f"{e['T']}, {e['B']}, {e['I']}, {e['H']}, {int(e['last'])}"


def _lstm_arrays(op: LOp) -> str:
    whh, bhh = op.extra["more"]
    return f"{op.weight}, {whh}, {op.bias}, {bhh}"


def _lstm_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("lstm_fwd")
    x, h0, c0 = (nm.a(t) for t in op.inputs)
    return (
        f"lstm_fwd({x}, {h0}, {c0}, {_lstm_arrays(op)}, {nm.a(op.output)}, "
        f"{nm.ws(op.output)}, {_lstm_args(op)});"
    )


def _bmm_args(op: LOp) -> str:
    e = op.extra
    return f"{e['B']}, {e['M']}, {e['K']}, {e['N']}"


def _bmm_fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    used.add("bmm_fwd")
    a, b = (nm.a(t) for t in op.inputs)
    return f"bmm_fwd({a}, {b}, {nm.a(op.output)}, {_bmm_args(op)});"


_FWD: dict[LKind, Callable[[LOp, _Names, set[str]], str]] = {
    LKind.CONV: _conv_fwd,
    LKind.BN: _bn_fwd,
    LKind.RELU: _relu_fwd,
    LKind.RELU6: _relu6_fwd,
    LKind.ADD: _add_fwd,
    LKind.GAP: _gap_fwd,
    LKind.MAXPOOL: _pool_fwd,
    LKind.AVGPOOL: _pool_fwd,
    LKind.VIEW: _view_fwd,
    LKind.LINEAR: _linear_fwd,
    LKind.XENT: _xent_fwd,
    LKind.POINTWISE: _pointwise_fwd,
    LKind.BINARY: _binary_fwd,
    LKind.LOSS: _loss_fwd,
    LKind.DROPOUT: _dropout_fwd,
    LKind.LAYERNORM: _layer_norm_fwd,
    LKind.UPSAMPLE: _upsample_fwd,
    LKind.CAT: _cat_fwd,
    LKind.SOFTMAX: _softmax_fwd,
    LKind.GATHER: _gather_fwd,
    LKind.FILL: _fill_fwd,
    LKind.BMM: _bmm_fwd,
    LKind.LSTM: _lstm_fwd,
    LKind.PARAM_ADD: _param_add_fwd,
    LKind.ATTENTION: _attention_fwd,
    LKind.MEAN: _mean_fwd,
    LKind.EMBEDDING: _embedding_fwd,
}


def _fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    return _FWD[op.kind](op, nm, used)


# -- backward: the pruned backward's calls per operator, by kind -------------------------------
class _Bwd:
    """What the backward calls of one program share: buffer names, the gradients written so
    far (a second writer accumulates), the kernels used."""

    def __init__(
        self, nm: _Names, low: Lowered, written: set[str], used: set[str], pending: dict
    ) -> None:
        self.nm, self.low, self.written, self.used = nm, low, written, used
        self.pending = pending  # shared trained array -> backward uses still to come
        self.rg = low.requires_grad
        self.trainable = {a.symbol for a in low.arrays if a.trainable}

    def dx(self, t: str) -> tuple[str, int]:
        key = "g:" + t  # per tensor: an in-place gradient overwrites its output gradient
        acc = 1 if key in self.written else 0
        self.written.add(key)
        return self.nm.g(t), acc

    def call(self, kernel: str, args: str) -> str:
        self.used.add(kernel)
        return f"{kernel}({args});"


def _xent_bwd(op: LOp, bw: _Bwd) -> list[str]:
    b, kk = op.shape_in[0]
    g, _ = bw.dx(op.inputs[0])
    return [bw.call("xent_bwd", f"{bw.nm.prob(op.output)}, et_labels, {g}, {b}, {kk}")]


def _conv_bwd(op: LOp, bw: _Bwd) -> list[str]:
    x, dy, out = op.inputs[0], bw.nm.g(op.output), []
    dd = _conv_dims(op)
    pw = _is_pw(op)
    d = f"{dd[0]}, {dd[1]}, {dd[4]}, {dd[2] * dd[3]}" if pw else ", ".join(map(str, dd))
    suffix = "conv2d_pw" if pw else "conv2d"
    if x in bw.rg:
        g, acc = bw.dx(x)
        out.append(bw.call(f"{suffix}_bwd_input", f"{dy}, {op.weight}, {g}, {acc}, {d}"))
    wt = op.weight in bw.trainable
    bt = op.bias is not None and op.bias in bw.trainable
    if wt or bt:
        w, b = op.weight if wt else "0", op.bias if bt else "0"
        xa = bw.nm.a(x) if wt else "0"
        rows = op.extra.get("rows", dd[4])
        out.append(bw.call(f"{suffix}_bwd_weight_sgd", f"{dy}, {xa}, {w}, {b}, lr, {rows}, {d}"))
    return out


def _bn_bwd(op: LOp, bw: _Bwd) -> list[str]:
    x, dy = op.inputs[0], bw.nm.g(op.output)
    b, c = op.shape_in[0][:2]
    tr = op.weight in bw.trainable or op.bias in bw.trainable
    if (op.weight in bw.trainable) != (op.bias in bw.trainable):
        raise UnsupportedPlanError(
            f"batch norm {op.name}: the plan trains only one of its weight and bias; the C "
            "trainer trains both or neither"
        )
    g, acc = bw.dx(x) if x in bw.rg else ("0", 0)
    xa = bw.nm.a(x) if tr else "0"
    return [
        bw.call(
            "bn_bwd",
            f"{dy}, {xa}, {op.extra['mean']}, {op.extra['invstd']}, "
            f"(float *){op.weight}, (float *){op.bias}, {g}, {acc}, lr, {int(tr)}, "
            f"{b}, {c}, {_numel(op.shape_in[0][2:])}",
        )
    ]


def _relu_bwd(op: LOp, bw: _Bwd) -> list[str]:
    g, acc = bw.dx(op.inputs[0])
    return [
        bw.call(
            "relu_bwd",
            f"{bw.nm.a(op.output)}, {bw.nm.g(op.output)}, {g}, {acc}, {_numel(op.shape_out)}",
        )
    ]


def _relu6_bwd(op: LOp, bw: _Bwd) -> list[str]:
    g, acc = bw.dx(op.inputs[0])
    return [
        bw.call(
            "hardtanh_bwd",
            f"{bw.nm.a(op.output)}, {bw.nm.g(op.output)}, {g}, {acc}, "
            f"{_numel(op.shape_out)}, {op.extra['lo']}f, {op.extra['hi']}f",
        )
    ]


def _add_bwd(op: LOp, bw: _Bwd) -> list[str]:
    bw.used.add("grad_pass")
    out = []
    for t in op.inputs:
        if t in bw.rg:
            g, acc = bw.dx(t)
            out.append(
                bw.call("grad_pass", f"{bw.nm.g(op.output)}, {g}, {acc}, {_numel(op.shape_out)}")
            )
    return out


def _gap_bwd(op: LOp, bw: _Bwd) -> list[str]:
    g, acc = bw.dx(op.inputs[0])
    b, c = op.shape_in[0][:2]
    return [
        bw.call(
            "gap_bwd", f"{bw.nm.g(op.output)}, {g}, {acc}, {b * c}, {_numel(op.shape_in[0][2:])}"
        )
    ]


def _pool_bwd(op: LOp, bw: _Bwd) -> list[str]:
    g, acc = bw.dx(op.inputs[0])
    dy = bw.nm.g(op.output)
    if op.kind is LKind.MAXPOOL:
        x = bw.nm.a(op.inputs[0])
        return [bw.call("maxpool_bwd", f"{x}, {dy}, {g}, {acc}, {_pool_dims(op)}")]
    return [bw.call("avgpool_bwd", f"{dy}, {g}, {acc}, {_pool_dims(op)}")]


def _view_bwd(op: LOp, bw: _Bwd) -> list[str]:
    x, alias = op.inputs[0], bw.low.alias
    if alias["g:" + x] == alias["g:" + op.output]:
        bw.dx(x)  # the gradient buffer is shared (alias): mark it written
        return [f"/* {c_comment(op.name)}: view, gradient aliased */"]
    g, acc = bw.dx(x)  # the input has other readers: its gradient sums this one in
    return [bw.call("grad_pass", f"{bw.nm.g(op.output)}, {g}, {acc}, {_numel(op.shape_out)}")]


def _linear_bwd(op: LOp, bw: _Bwd) -> list[str]:
    x, dy, out = op.inputs[0], bw.nm.g(op.output), []
    b, i = op.shape_in[0]
    o = op.shape_out[1]
    if x in bw.rg:
        g, acc = bw.dx(x)
        out.append(bw.call("linear_bwd_input", f"{dy}, {op.weight}, {g}, {acc}, {b}, {i}, {o}"))
    wt = op.weight in bw.trainable
    bt = op.bias is not None and op.bias in bw.trainable
    rows = op.extra.get("rows", o)
    # one call per learning rate: an unshared array steps in place (lr); a shared one's
    # gradient sums into its buffer (lr -1: g -= -1 * grad), stepped after its last use
    by_lr: dict[str, dict[str, str]] = {}
    after: list[str] = []
    for sym, on, role in ((op.weight, wt, "w"), (op.bias, bt, "b")):
        if not on:
            continue
        target, lr = sym, "lr"
        if sym in bw.low.shared:
            n, target, lr = bw.low.shared[sym], bw.nm.p(sym), "-1.0f"
            if "p:" + sym not in bw.written:
                bw.written.add("p:" + sym)
                out.append(f"k_zero({target}, {n});")
            bw.pending[sym] -= 1
            if bw.pending[sym] == 0:
                after.append(bw.call("sgd_apply", f"{sym}, {target}, lr, {n}"))
        by_lr.setdefault(lr, {"w": "0", "b": "0"})[role] = target
    for lr, d in by_lr.items():
        xa = bw.nm.a(x) if d["w"] != "0" else "0"
        out.append(
            bw.call(
                "linear_bwd_weight_sgd",
                f"{dy}, {xa}, {d['w']}, {d['b']}, {lr}, {rows}, {b}, {i}, {o}",
            )
        )
    return out + after


def _pointwise_bwd(op: LOp, bw: _Bwd) -> list[str]:
    saved = saved_for_backward(op, bw.trainable, bw.rg)[0]
    g, acc = bw.dx(op.inputs[0])
    a = cfloat(_hyper(op, "a", "parameter"))
    return [
        bw.call(
            f"pw_{op.extra['fn']}_bwd",
            f"{bw.nm.a(saved)}, {bw.nm.g(op.output)}, {g}, {acc}, {_numel(op.shape_out)}, {a}",
        )
    ]


def _binary_bwd(op: LOp, bw: _Bwd) -> list[str]:
    saved = saved_for_backward(op, bw.trainable, bw.rg)
    a, b = (bw.nm.a(t) if t in saved else "0" for t in op.inputs)
    bc, sizes = _binary_n(op)
    out = []
    for k, t in enumerate(op.inputs):
        if t in bw.rg:
            g, acc = bw.dx(t)
            out.append(
                bw.call(
                    f"bin_{op.extra['fn']}_bwd{k}{bc}",
                    f"{a}, {b}, {bw.nm.g(op.output)}, {g}, {acc}, {sizes}",
                )
            )
    return out


def _gather_bwd(op: LOp, bw: _Bwd) -> list[str]:
    g, acc = bw.dx(op.inputs[0])
    nx = _numel(op.shape_in[0])
    args = f"{bw.nm.g(op.output)}, {g}, {acc}, {nx}, {_gather_args(op, bw.nm)}"
    return [bw.call("view_scatter", args)]


def _loss_bwd(op: LOp, bw: _Bwd) -> list[str]:
    g, acc = bw.dx(op.inputs[0])
    n = _numel(op.shape_in[0])
    return [bw.call("grad_pass", f"{bw.nm.prob(op.output)}, {g}, {acc}, {n}")]


def _dropout_bwd(op: LOp, bw: _Bwd) -> list[str]:
    bw.used.add("et_rng_next")
    k, thr, scale = dropout_constants(op)
    g, acc = bw.dx(op.inputs[0])
    return [
        bw.call(
            "dropout_bwd",
            f"{bw.nm.g(op.output)}, {g}, {acc}, {_numel(op.shape_out)}, {thr}, {scale}, "
            f"et_drop_state[{k}]",
        )
    ]


def _layer_norm_bwd(op: LOp, bw: _Bwd) -> list[str]:
    x = op.inputs[0]
    g, acc = bw.dx(x) if x in bw.rg else ("0", 0)
    gw = op.weight if op.weight in bw.trainable else "0"
    gb = op.bias if op.bias in bw.trainable else "0"
    w = f"(float *){op.weight}" if op.weight else "0"
    eps = cfloat(_hyper(op, "eps", "eps"))
    return [
        bw.call(
            "layernorm_bwd",
            f"{bw.nm.a(x)}, {bw.nm.g(op.output)}, {w}, {gw}, {gb}, {g}, {acc}, lr, "
            f"{op.extra['nrows']}, {op.extra['d']}, {eps}",
        )
    ]


def _upsample_bwd(op: LOp, bw: _Bwd) -> list[str]:
    g, acc = bw.dx(op.inputs[0])
    dims = _upsample_dims(op)
    return [bw.call("upsample_nearest_bwd", f"{bw.nm.g(op.output)}, {g}, {acc}, {dims}")]


def _cat_bwd(op: LOp, bw: _Bwd) -> list[str]:
    e, out = op.extra, []
    for t, c, o in zip(op.inputs, e["chunks"], e["offsets"]):
        if t in bw.rg:
            g, acc = bw.dx(t)
            out.append(
                bw.call(
                    "cat_bwd",
                    f"{bw.nm.g(op.output)}, {g}, {acc}, {e['outer']}, {c}, {e['whole']}, {o}",
                )
            )
    return out


def _softmax_bwd(op: LOp, bw: _Bwd) -> list[str]:
    g, acc = bw.dx(op.inputs[0])
    y, dy = bw.nm.a(op.output), bw.nm.g(op.output)
    return [bw.call("softmax_bwd", f"{y}, {dy}, {g}, {acc}, {_softmax_args(op)}")]


def _param_add_bwd(op: LOp, bw: _Bwd) -> list[str]:
    out = []
    x, dy, e = op.inputs[0], bw.nm.g(op.output), op.extra
    if x in bw.rg:
        g, acc = bw.dx(x)
        n = e["outer"] * e["P"]
        out.append(bw.call("grad_pass", f"{dy}, {g}, {acc}, {n}"))
    if op.bias in bw.trainable:
        out.append(bw.call("param_add_bwd_sgd", f"{dy}, {op.bias}, lr, {e['outer']}, {e['P']}"))
    return out


def _mean_bwd(op: LOp, bw: _Bwd) -> list[str]:
    g, acc = bw.dx(op.inputs[0])
    return [bw.call("mean_bwd", f"{bw.nm.g(op.output)}, {g}, {acc}, {_mean_args(op)}")]


def _attention_bwd(op: LOp, bw: _Bwd) -> list[str]:
    grads, accs = [], []
    for t in op.inputs:
        g, acc = bw.dx(t) if t in bw.rg else ("0", 0)
        grads.append(g)
        accs.append(str(acc))
    q, k, v = (bw.nm.a(t) for t in op.inputs)
    args = f"{q}, {k}, {v}, {bw.nm.g(op.output)}, {', '.join(grads)}, {', '.join(accs)}"
    return [bw.call("attention_bwd", f"{args}, {_attention_args(op)}")]


def _embedding_bwd(op: LOp, bw: _Bwd) -> list[str]:
    if op.weight not in bw.trainable:
        return []
    args = f"{bw.nm.a(op.inputs[0])}, {bw.nm.g(op.output)}, {op.weight}, lr"
    return [bw.call("embedding_bwd_sgd", f"{args}, {_embedding_args(op)}")]


def _lstm_bwd(op: LOp, bw: _Bwd) -> list[str]:
    x, h0, c0 = op.inputs
    if h0 in bw.rg or c0 in bw.rg:
        raise UnsupportedPlanError(
            f"node {op.name}: the gradient of its initial state is needed; the C LSTM starts "
            "from a constant state (no gradient into h0 / c0)"
        )
    if op.extra["more"][0] in bw.low.shared or op.weight in bw.low.shared:
        raise UnsupportedPlanError(f"node {op.name}: an LSTM's arrays are read by other ops")
    g, acc = bw.dx(x) if x in bw.rg else ("0", 0)
    whh, bhh = op.extra["more"]
    flags = ", ".join(str(int(s in bw.trainable)) for s in (op.weight, whh, op.bias, bhh))
    args = (
        f"{bw.nm.a(x)}, {bw.nm.a(h0)}, {bw.nm.a(c0)}, {_lstm_arrays(op)}, "
        f"{bw.nm.g(op.output)}, {g}, {acc}, {bw.nm.ws(op.output)}, lr, {flags}"
    )
    return [bw.call("lstm_bwd", f"{args}, {_lstm_args(op)}")]


def _bmm_bwd(op: LOp, bw: _Bwd) -> list[str]:
    (a, b), dy, out = op.inputs, bw.nm.g(op.output), []
    if a in bw.rg:
        g, acc = bw.dx(a)
        out.append(bw.call("bmm_bwd_a", f"{dy}, {bw.nm.a(b)}, {g}, {acc}, {_bmm_args(op)}"))
    if b in bw.rg:
        g, acc = bw.dx(b)
        out.append(bw.call("bmm_bwd_b", f"{bw.nm.a(a)}, {dy}, {g}, {acc}, {_bmm_args(op)}"))
    return out


_BWD: dict[LKind, Callable[[LOp, _Bwd], list[str]]] = {
    LKind.XENT: _xent_bwd,
    LKind.CONV: _conv_bwd,
    LKind.BN: _bn_bwd,
    LKind.RELU: _relu_bwd,
    LKind.RELU6: _relu6_bwd,
    LKind.ADD: _add_bwd,
    LKind.GAP: _gap_bwd,
    LKind.MAXPOOL: _pool_bwd,
    LKind.AVGPOOL: _pool_bwd,
    LKind.VIEW: _view_bwd,
    LKind.LINEAR: _linear_bwd,
    LKind.POINTWISE: _pointwise_bwd,
    LKind.BINARY: _binary_bwd,
    LKind.LOSS: _loss_bwd,
    LKind.DROPOUT: _dropout_bwd,
    LKind.LAYERNORM: _layer_norm_bwd,
    LKind.UPSAMPLE: _upsample_bwd,
    LKind.CAT: _cat_bwd,
    LKind.SOFTMAX: _softmax_bwd,
    LKind.GATHER: _gather_bwd,
    LKind.BMM: _bmm_bwd,
    LKind.LSTM: _lstm_bwd,
    LKind.PARAM_ADD: _param_add_bwd,
    LKind.ATTENTION: _attention_bwd,
    LKind.MEAN: _mean_bwd,
    LKind.EMBEDDING: _embedding_bwd,
}


def _bwd(
    op: LOp, nm: _Names, low: Lowered, written: set[str], used: set[str], pending: dict
) -> list[str]:
    return _BWD[op.kind](op, _Bwd(nm, low, written, used, pending))


# -- et_model.c --------------------------------------------------------------------------------
def _arrays_c(low: Lowered, referenced: set[str]) -> list[str]:
    """The referenced arrays: trainable ones `static` (SRAM), frozen ones `static const`."""
    arrays = []
    for a in low.arrays:
        if a.symbol not in referenced:
            continue
        q = "" if a.trainable else "const "
        where = "SRAM, trained" if a.trainable else "flash"
        arrays.append(
            f"/* {c_comment(a.param or a.symbol)} ({where}) */\n"
            f"static {q}float {a.symbol}[{a.values.size}] = {{\n{_floats(a.values)}\n}};"
        )
    return arrays


@dataclass(frozen=True)
class ModelParts:
    """The C of one lowered model both layouts share (NOTE [ Project layouts ]): the kernels,
    arrays and arena; the forward of the model (`model_fwd`, up to the logits), of its loss
    (`loss_fwd`, a statement setting `loss`) and the pruned backward (`bwd`)."""

    header: str  # the generated-by comment
    prelude: str  # includes, kernels, arrays, arena, the batch's targets
    model_fwd: str
    loss_fwd: str
    bwd: str
    trained: tuple[tuple[str, str, int], ...]  # (symbol, parameter name, floats) referenced
    in_buf: str  # the input batch's buffer
    out_buf: str  # the logits' buffer (the loss's input)
    in_floats: int  # per sample
    out_floats: int  # per sample
    classes: int  # 0: the loss takes float targets of the output's shape
    batch: int
    in_type: str = "float"  # the C type of an input value ("int32_t": token ids)
    frozen_crc: int = 0  # CRC-32 of the referenced frozen arrays' float32 bytes (flash)


def model_parts(low: Lowered, tgt: Target) -> ModelParts:
    nm = _Names(low)
    used: set[str] = set()
    fwd = [f"    {_fwd(op, nm, used)}  /* {c_comment(op.name)} */" for op in low.ops]
    written: set[str] = set()
    pending = {
        sym: sum(sym in (op.weight, op.bias) for op in low.ops if op.output in low.requires_grad)
        for sym in low.shared
    }
    bwd = []
    for op in reversed(low.ops):
        if op.output in low.requires_grad:
            bwd += [
                f"    {s}  /* {c_comment(op.name)} */"
                for s in _bwd(op, nm, low, written, used, pending)
            ]
    body = "\n".join(fwd + bwd)
    referenced = {a.symbol for a in low.arrays} & set(re.findall(r"\b\w+\b", body))
    kernels = "\n".join(text for k, text in kernel_texts() if k in used)
    loss_op = low.ops[-1]
    classes = low.num_classes if loss_op.kind is LKind.XENT else 0
    logits = loss_op.inputs[0]
    per_out = _numel(loss_op.shape_in[0][1:])
    targets = (
        "static int32_t et_labels[ET_BATCH];"
        if classes
        else f"static float et_targets[{low.batch_size * per_out}];"
    )
    prelude = "\n".join(
        (
            f"#define ET_HAS_FPU {int(tgt.has_fpu)}",
            f"#define ET_HAS_DSP {int(tgt.has_dsp)}",
            PRELUDE,
            kernels,
            "",
            "\n".join(_arrays_c(low, referenced)),
            nm.dims_c(),
            "",
            f"static float et_arena[{max(1, (low.arena_bytes + 3) // 4)}] "
            "__attribute__((aligned(8)));",
            "#define A(off) (et_arena + (off))",
            targets,
            _dropout_state(low),
        )
    )
    header = (
        f"/* generated by edgetrain.codegen for target {tgt.name}: do not edit.\n"
        f"   model {c_comment(low.ops[0].name)}..{c_comment(loss_op.name)}; arena "
        f"{low.arena_bytes} bytes;\n   capabilities: FPU {int(tgt.has_fpu)}, DSP "
        f"{int(tgt.has_dsp)} */"
    )
    return ModelParts(
        header,
        prelude,
        "\n".join(fwd[:-1]),
        fwd[-1],
        "\n".join(bwd),
        tuple(
            (a.symbol, a.param, a.values.size)
            for a in low.arrays
            if a.trainable and a.symbol in referenced
        ),
        nm.a(low.input_tensor),
        nm.a(logits),
        _numel(low.input_shape[1:]),
        per_out,
        classes,
        low.batch_size,
        "int32_t" if low.input_int else "float",
        _frozen_crc(low, referenced),
    )


def _frozen_crc(low: Lowered, referenced: set[str]) -> int:
    """CRC-32 of the frozen arrays the program reads, in order (NOTE [ Weights image ])."""
    crc = 0
    for a in low.arrays:
        if not a.trainable and a.symbol in referenced:
            crc = zlib.crc32(np.ascontiguousarray(a.values, dtype=np.float32).tobytes(), crc)
    return crc


def _dropout_state(low: Lowered) -> str:
    """The dropout generator's state, each dropout's saved state and the training flag
    (NOTE [ Dropout in C ]); nothing without dropout."""
    k = _dropouts(low)
    if not k:
        return ""
    return (
        f"static uint32_t et_rng = {RNG_SEED}u;\n"
        f"static uint32_t et_drop_state[{k}];\n"
        "static int et_training;"
    )


RNG_SEED = 0x9E3779B9  # the dropout generator's state at reset and after et_init()


def _dropouts(low: Lowered) -> int:
    return sum(op.kind is LKind.DROPOUT for op in low.ops)


def _model_c(low: Lowered, spec: TrainingSpec, tgt: Target) -> str:
    """The demo layout's `et_model.c`: the model, `et_load` from the baked samples, and the
    driver's entry points."""
    mp = model_parts(low, tgt)
    dumps = [f"    dump({c_string(wire_name(param))}, {sym}, {n});" for sym, param, n in mp.trained]
    if mp.classes:
        load_target = "et_labels[b] = labels[i];"
    else:  # a reconstruction: the target is the sample (NOTE [ Regression in the demo ])
        d = mp.in_floats
        load_target = f"for (int k = 0; k < {d}; k++) et_targets[b * {d} + k] = x[b * {d} + k];"
    return _MODEL_C.format(
        header=mp.header,
        prelude=mp.prelude,
        in_buf=mp.in_buf,
        d=mp.in_floats,
        load=_load_expr(spec.train),
        load_target=load_target,
        fwd=mp.model_fwd + "\n" + mp.loss_fwd,
        bwd=mp.bwd,
        dumps="\n".join(dumps),
        eval_mode="et_training = 0; " if _dropouts(low) else "",
        train_mode="et_training = 1;\n    " if _dropouts(low) else "",
    )


_MODEL_C = """{header}
#include "et_model.h"
{prelude}

void et_load(const et_sample_t *samples, const uint8_t *labels, int n, int first) {{
    float *x = {in_buf};
    for (int b = 0; b < ET_BATCH; b++) {{
        const int i = (first + b) % n;
        const et_sample_t *px = samples + (size_t)i * {d};
        for (int k = 0; k < {d}; k++)
            x[b * {d} + k] = {load};
        {load_target}
    }}
}}

static float forward(int *correct) {{
    float loss;
{fwd}
    return loss;
}}

float et_eval_batch(int *correct) {{ {eval_mode}return forward(correct); }}

float et_train_step(float lr) {{
    {train_mode}const float loss = forward(0);
    /* a non-finite loss skips the update (weights untouched), as edgetrain's Trainer does */
    if (!(loss - loss == 0.0f)) return loss;
{bwd}
    return loss;
}}

static void dump(const char *name, const float *p, int n) {{
    et_puts("PARAM "); et_puts(name); et_puts(" "); et_put_u32((uint32_t)n);
    for (int i = 0; i < n; i++) {{
        uint32_t u; memcpy(&u, &p[i], 4);
        et_puts(" "); et_put_hex(u);
    }}
    et_puts("\\n");
}}

void et_dump_params(void) {{
{dumps}
}}
"""


def _load_expr(s: SampleSet) -> str:
    """What `et_load` makes of one flash value `px[k]`: float32 as it is, uint8 normalised."""
    if s.is_float or s.is_tokens:  # ids: converted to floats in the arena (exact)
        return "px[k]"
    return f"((float)px[k] / 255.0f - {cfloat(s.mean)}) / {cfloat(s.std)}"


def _samples_c(s: SampleSet) -> str:
    if s.is_tokens:
        v = s.pixels.reshape(-1).tolist()
        return ",\n".join(",".join(map(str, v[i : i + 16])) for i in range(0, len(v), 16))
    return _floats(s.pixels.reshape(-1)) if s.is_float else c_bytes(s.pixels)


def _data_c(spec: TrainingSpec) -> str:
    tr, te = spec.train, spec.test
    t = tr.c_type
    return f"""/* generated by edgetrain.codegen: training and test samples (flash) */
#include "et_model.h"
const int et_train_n = {len(tr.labels)};
const int et_test_n = {len(te.labels)};
const {t} et_train_x[] = {{
{_samples_c(tr)}
}};
const uint8_t et_train_y[] = {{ {c_bytes(tr.labels.astype(np.uint8))} }};
const {t} et_test_x[] = {{
{_samples_c(te)}
}};
const uint8_t et_test_y[] = {{ {c_bytes(te.labels.astype(np.uint8))} }};
"""
