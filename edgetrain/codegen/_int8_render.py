"""int8 (QAS) training code: the renderer for `edgetrain.quant`'s integer graphs, a pure
function from (QuantGraph, trainable ops, target, quantised samples) to the text of a C99
project. The layout is `_int8_layout.py`'s, the calls are the kernel table's
(`_int8_kernels.py`), the kernels are edgetrain/codegen/c/int8_runtime.c.

NOTE [ The int8 training program ]
    The forward pass is the integer graph, bit for bit as NOTE [ int8 arithmetic, bit for bit ]
    (edgetrain/quant/_graph.py) specifies it; the backward pass is NOTE [ int8 integer
    backward ] (edgetrain/quant/_train.py, `Int8Backward.INTEGER`): a requantised
    conv/linear's accumulator gradient `dy * M` (where its output was not clamped, 0 where it
    was) is quantised per tensor to int8 (`qacc_quant`, written over the op's mask) and the
    weight and input gradients are exact int32 sums times that scale; add passes
    `dy * s_in / s_out` where not clamped, average pooling `dy / (H*W)`; gradients w.r.t. the
    integer weights are scaled by QAS (`s_W^-2`, biases `(s_x s_W)^-2`) and applied by SGD,
    then the weights are re-rounded to int8 / int32 (round half away from zero;
    `WeightStorage.INT8`: no float copy anywhere). Real-valued gradients (dy between ops, the
    scales) are `double` on the host (to match the float64 simulation) and `float` on
    Cortex-M (`ET_REAL`). Memory: NOTE [ int8
    SRAM of the C trainer ] (edgetrain/codegen/_int8_layout.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgetrain.codegen._arena import MIN_STACK_BYTES
from edgetrain.codegen._int8_kernels import (
    Int8Emitter,
    emit_backward,
    emit_forward,
    hexd,
    int8_runtime_source,
)
from edgetrain.codegen._int8_layout import check_line_buffer, check_program, place_int8
from edgetrain.codegen._names import identifiers_in
from edgetrain.codegen._platform import render_platform
from edgetrain.codegen._project import (
    c_bytes,
    check_flash,
    check_labels,
    header_text,
    main_c,
    makefile,
)
from edgetrain.codegen._targets import Target, TargetKind, get_target
from edgetrain.errors import UnsupportedPlanError
from edgetrain.quant import check_integer_backward


@dataclass(frozen=True)
class Int8Spec:
    """Quantised images (int8, N x C x H x W, from `QuantGraph.quantize_input`) and labels."""

    train_q: np.ndarray
    train_y: np.ndarray
    test_q: np.ndarray
    test_y: np.ndarray
    steps: int
    lr: float
    batch_size: int = 1
    qas: bool = True
    log_every: int = 1
    dump_params: bool = False


def render_int8(
    graph,
    trainable: Sequence[str],
    target: "str | Target",
    spec: Int8Spec,
    *,
    device_sram_bytes: int = 0,
    device_flash_bytes: int = 0,
    device_name: str = "",
    line_buffer: bool = False,
) -> dict[str, str]:
    """Render int8 QAS training of `graph` (an `edgetrain.quant.QuantGraph`; read, not
    changed) with the conv/linear ops named in `trainable` updated on the device;
    `line_buffer` as `int8_layout`'s."""
    check_line_buffer(line_buffer)
    tgt = get_target(target)
    trainable = list(trainable)
    check_program(graph, trainable, spec.batch_size)
    check_integer_backward(graph, spec.batch_size)
    if spec.steps <= 0 or not spec.lr > 0:
        raise UnsupportedPlanError(
            f"steps {spec.steps}, lr {spec.lr} and batch size {spec.batch_size} must be positive"
        )
    if tgt.kind is TargetKind.CORTEX_M and (device_sram_bytes <= 0 or device_flash_bytes <= 0):
        raise UnsupportedPlanError("a Cortex-M target needs the device's SRAM and flash sizes")
    K = graph.tensor(graph.output).shape[-1]
    check_labels(spec.train_y, K, "training")
    check_labels(spec.test_y, K, "test")
    train_q = np.asarray(spec.train_q)
    weights = sum(op.weight.numel() + 12 * op.bias.numel() for op in graph.weighted_ops)
    check_flash(
        device_flash_bytes,
        device_name,
        train_n=len(spec.train_y),
        test_n=len(spec.test_y),
        sample_bytes=int(np.prod(train_q.shape[1:])) + 1,
        weights_bytes=weights,
        sample=f"{'x'.join(map(str, train_q.shape[1:]))} int8",
    )
    B = spec.batch_size
    lay = place_int8(graph, trainable, B, tgt, line_buffer)
    # `q_lb`: the line-buffered chain's descriptors (_model_c)
    reserved = identifiers_in(_MODEL_C, "q_lb")
    em = Int8Emitter(graph, lay, B, frozenset(trainable), spec.qas, reserved=reserved)
    for op in graph.ops:
        emit_forward(em, op)
    for op in lay.bwd_ops:
        emit_backward(em, op)
    mem = lay.layout
    D = int(np.prod(lay.tensors[graph.input].shape))
    files = {
        "et_model.h": header_text(B, K, D, mem.arena_bytes, spec),
        "et_model.c": _model_c(em, spec, tgt),
        "et_data.c": _data_c(spec),
        "main.c": main_c(tgt),
        "Makefile": makefile(tgt),
    }
    files.update(render_platform(tgt, device_sram_bytes, device_flash_bytes, MIN_STACK_BYTES))
    meta = {
        "target": tgt.name,
        "model": graph.model,
        "device": device_name,
        "precision": "int8-qas",
        "batch_size": B,
        "steps": spec.steps,
        "lr": spec.lr,
        "arena_bytes": mem.arena_bytes,
        "trainable_bytes": mem.trainable_bytes,
        "const_weight_bytes": em.const_bytes,
        "trainable_params": list(trainable),
        "folded": [],
        "planner_predicted_peak_bytes": None,  # the planner has no int8 model of this program
        "codegen_predicted_peak_sram_bytes": mem.predicted_peak_sram_bytes,
        "sram_limit_bytes": device_sram_bytes,
        "flash_limit_bytes": device_flash_bytes,
        "counter_hz": tgt.counter_hz,
        "qemu_machine": tgt.qemu_machine,
        "buffers": [
            {
                "name": b.name,
                "bytes": b.nbytes,
                "offset": b.offset,
                "first_step": b.first,
                "last_step": b.last,
            }
            for b in mem.buffers
        ],
    }
    files["edgetrain_build.json"] = json.dumps(meta, indent=1)
    return files


def _model_c(em: Int8Emitter, spec: Int8Spec, tgt: Target) -> str:
    g, B = em.graph, em.batch
    out_t = em.T[g.output]
    lb_c = (
        (
            f"static const qlb_op q_lb[{len(em.descs)}] = {{\n    "
            + ",\n    ".join(em.descs)
            + "\n};\n"
        )
        if em.descs
        else ""
    )
    logits = em.A("a:" + g.output, "int8_t")
    scratch = em.A("z:" + g.output, "ET_REAL")
    return _MODEL_C.format(
        target=tgt.name,
        real="double" if tgt.kind is TargetKind.HOST else "float",
        dsp=1 if tgt.has_dsp else 0,
        runtime=int8_runtime_source(),
        arrays="\n".join(em.arrays),
        arena=em.lay.layout.arena_bytes,
        lb=lb_c,
        input=em.A("a:" + g.input, "int8_t"),
        D=int(np.prod(em.T[g.input].shape)),
        fwd="\n".join("    " + s for s in em.fwd),
        bwd="\n".join("    " + s for s in em.bwd),
        dumps="\n".join(em.dumps),
        lr=hexd(spec.lr),
        zero=out_t.zero_point,
        scale=hexd(out_t.scale),
        loss_args=f"{B}, {g.tensor(g.output).shape[-1]}",
        logits=logits,
        scratch=scratch,
        dlogits=em.A("g:" + g.output, "ET_REAL"),
    )


_MODEL_C = """/* generated by edgetrain.codegen (int8 QAS training) for {target}: do not edit */
#include "et_model.h"
#define ET_REAL {real}
#define ET_HAS_DSP {dsp}

{runtime}
{arrays}

static uint8_t et_arena[{arena}] __attribute__((aligned(8)));
static int32_t et_labels[ET_BATCH];
{lb}

void et_load(const uint8_t *pixels, const uint8_t *labels, int n, int first) {{
    int8_t *x = {input};
    for (int b = 0; b < ET_BATCH; b++) {{
        const int i = (first + b) % n;
        memcpy(x + (size_t)b * {D}, pixels + (size_t)i * {D}, {D});
        et_labels[b] = labels[i];
    }}
}}

static void forward(void) {{
{fwd}
}}

float et_eval_batch(int *correct) {{
    forward();
    return (float)qxent({logits}, {zero}, {scale}, et_labels, 0, {scratch}, {loss_args}, correct);
}}

float et_train_step(float lr_f) {{
    const ET_REAL lr = {lr};
    (void)lr_f;
    forward();
    const ET_REAL loss = qxent({logits}, {zero}, {scale}, et_labels, {dlogits}, {scratch}, {loss_args}, 0);
{bwd}
    return (float)loss;
}}

static void put_i32(int32_t v) {{
    if (v < 0) {{ et_puts("-"); et_put_u32((uint32_t)(-(int64_t)v)); }} else et_put_u32((uint32_t)v);
}}

static void dump(const char *name, const int8_t *w, int nw, const int32_t *b, int nb) {{
    et_puts("QPARAM "); et_puts(name); et_puts(" ");
    for (int i = 0; i < nw; i++) {{ et_puts(" "); put_i32(w[i]); }}
    et_puts(" |");
    for (int i = 0; i < nb; i++) {{ et_puts(" "); put_i32(b[i]); }}
    et_puts("\\n");
}}

void et_dump_params(void) {{
{dumps}
}}
"""


def _data_c(spec: Int8Spec) -> str:
    def u8(a: np.ndarray) -> np.ndarray:
        return np.asarray(a, dtype=np.int8).view(np.uint8)

    return f"""/* generated by edgetrain.codegen: quantised samples (int8 stored as bytes, flash) */
#include "et_model.h"
const int et_train_n = {len(spec.train_y)};
const int et_test_n = {len(spec.test_y)};
const uint8_t et_train_x[] = {{
{c_bytes(u8(spec.train_q))}
}};
const uint8_t et_train_y[] = {{ {c_bytes(np.asarray(spec.train_y).astype(np.uint8))} }};
const uint8_t et_test_x[] = {{
{c_bytes(u8(spec.test_q))}
}};
const uint8_t et_test_y[] = {{ {c_bytes(np.asarray(spec.test_y).astype(np.uint8))} }};
"""
