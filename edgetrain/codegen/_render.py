"""The renderer: one pure function from (Plan, IR graph, weights, target, training data) to the
text of a self-contained C99 project (`dict[path, text]`). No I/O, no torch, no malloc in the
generated code.

Memory classes of the generated program:
    flash (`static const`)  frozen weights (BN folded into frozen convolutions), BN statistics,
                            the training and test samples (uint8 pixels, normalised on the fly)
    SRAM .data              trainable parameters (initial values copied from flash at reset)
    SRAM .bss               the arena (activations, activation gradients, the input batch;
                            offsets from tensor lifetimes, see NOTE [ Arena assignment ]) and
                            the labels of the batch
    SRAM stack              the rest of the device's SRAM
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from edgetrain.codegen._errors import UnsupportedPlanError
from edgetrain.codegen._kernels import KERNELS, PRELUDE
from edgetrain.codegen._lower import LKind, LOp, Lowered, lower
from edgetrain.codegen._platform import render_platform
from edgetrain.codegen._targets import Target, TargetKind, get_target
from edgetrain.ir import Graph, TensorRole
from edgetrain.planner import Plan

MIN_STACK_BYTES = 2048
RUNTIME_RESERVE_BYTES = 512
"""SRAM the generated program uses beyond its arena, trainable parameters and labels: newlib's
reentrancy data (~100 B), the tick counter, and the stack of the driver and kernels (measured
320-340 B on Cortex-M4/M7 for every model compiled so far; the stack's frames do not grow
with the model)."""


@dataclass(frozen=True)
class SampleSet:
    """Images as uint8 pixels (N, C, H, W) and labels (N,); the model sees
    `(pixel / 255 - mean) / std`, the normalisation of `edgetrain.data`."""

    pixels: np.ndarray
    labels: np.ndarray
    mean: float
    std: float

    def __post_init__(self) -> None:
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 4:
            raise UnsupportedPlanError(
                f"sample pixels must be uint8 (N, C, H, W), got {self.pixels.dtype} "
                f"{self.pixels.shape}")
        if len(self.labels) != len(self.pixels) or len(self.pixels) == 0:
            raise UnsupportedPlanError(
                f"{len(self.pixels)} images and {len(self.labels)} labels; need the same "
                "positive number")


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


def render(plan: Plan, graph: Graph, weights: "dict[str, np.ndarray]",
           target: "str | Target", spec: TrainingSpec, *, device_sram_bytes: int = 0,
           device_flash_bytes: int = 0, device_name: str | None = None) -> dict[str, str]:
    """Render the C project. `device_*_bytes` set the linker script's limits (Cortex-M)."""
    tgt = get_target(target)
    if spec.steps <= 0 or not (spec.lr > 0):
        raise UnsupportedPlanError(f"steps {spec.steps} and lr {spec.lr} must be positive")
    low = lower(plan, graph, weights)
    if spec.train.pixels.shape[1:] != low.input_shape[1:]:
        raise UnsupportedPlanError(
            f"samples have shape {spec.train.pixels.shape[1:]} but the model takes "
            f"{low.input_shape[1:]}; resize them first (edgetrain.data.resize_for)")
    if tgt.kind is TargetKind.CORTEX_M and (device_sram_bytes <= 0 or device_flash_bytes <= 0):
        raise UnsupportedPlanError(
            "a Cortex-M target needs the device's SRAM and flash sizes for its linker script "
            f"(got {device_sram_bytes} and {device_flash_bytes} bytes)")
    files = {
        "et_model.h": _header(low, spec),
        "et_model.c": _model_c(low, spec, tgt),
        "et_data.c": _data_c(spec),
        "main.c": _main_c(low, spec, tgt),
        "Makefile": _makefile(tgt),
    }
    files.update(render_platform(tgt, device_sram_bytes, device_flash_bytes, MIN_STACK_BYTES))
    meta = {
        "target": tgt.name, "model": plan.model, "device": device_name or plan.device,
        "batch_size": low.batch_size, "steps": spec.steps, "lr": spec.lr,
        "arena_bytes": low.arena_bytes,
        "trainable_bytes": sum(a.values.size * 4 for a in low.arrays if a.trainable),
        "const_weight_bytes": sum(a.values.size * 4 for a in low.arrays if not a.trainable),
        "trainable_params": list(low.trainable_params),
        "folded": list(low.folded),
        "planner_predicted_peak_bytes": plan.predicted_peak_bytes,
        "codegen_predicted_peak_sram_bytes": _peak_sram_bytes(low),
        "sram_limit_bytes": device_sram_bytes, "flash_limit_bytes": device_flash_bytes,
        "counter_hz": tgt.counter_hz, "qemu_machine": tgt.qemu_machine,
        "buffers": [{"name": b.name, "bytes": b.nbytes, "offset": b.offset,
                     "first_step": b.first, "last_step": b.last} for b in low.buffers],
    }
    files["edgetrain_build.json"] = json.dumps(meta, indent=1)
    return files


def _peak_sram_bytes(low: Lowered) -> int:
    """SRAM of the compiled program at its peak: the arena, the trainable parameters (SRAM
    `.data`), the batch's labels and the runtime reserve (see RUNTIME_RESERVE_BYTES)."""
    return (low.arena_bytes + sum(a.values.size * 4 for a in low.arrays if a.trainable)
            + 4 * low.batch_size + RUNTIME_RESERVE_BYTES)


def predict_peak_sram_bytes(plan: Plan, graph: Graph) -> int:
    """The peak SRAM the program compiled from `plan` will use, before any weights exist.

    Pure: lowers the plan with zero weights (memory depends on shapes only) and applies the same
    formula `render` records as `codegen_predicted_peak_sram_bytes`. `edgetrain.plan(...,
    executor="c")` uses it as the plan's predicted peak.
    """
    zeros = {p.name: np.zeros(p.shape, dtype=np.float32) for p in graph.params}
    zeros.update({t.name: np.zeros(t.shape, dtype=np.float32)
                  for t in graph.tensors if t.role is TensorRole.BUFFER})
    return _peak_sram_bytes(lower(plan, graph, zeros))


# -- helpers -----------------------------------------------------------------------------------
def _cfloat(x: float) -> str:
    """A C float literal that reads back as exactly the float32 `x` (9 significant digits)."""
    s = f"{float(np.float32(x)):.9g}"
    if s in ("inf", "-inf", "nan"):
        raise UnsupportedPlanError(f"a weight or constant is {s}; the model is not finite")
    if "." not in s and "e" not in s:
        s += ".0"
    return s + "f"


def _floats(v: np.ndarray) -> str:
    if not np.isfinite(v).all():
        raise UnsupportedPlanError("the weights hold NaN or inf; train or load finite weights")
    vals = [_cfloat(x) for x in v.astype(np.float32).tolist()]
    return ",\n".join(",".join(vals[i:i + 8]) for i in range(0, len(vals), 8))


def _bytes(v: np.ndarray) -> str:
    vals = [str(x) for x in v.reshape(-1).tolist()]
    return ",\n".join(",".join(vals[i:i + 32]) for i in range(0, len(vals), 32))


def _numel(s) -> int:
    return int(np.prod(s))


class _Names:
    def __init__(self, low: Lowered) -> None:
        self.low = low
        self.off = {b.name: b.offset for b in low.buffers}

    def a(self, t: str) -> str:
        return f"A({self.off[self.low.alias['a:' + t]] // 4})"

    def g(self, t: str) -> str:
        return f"A({self.off[self.low.alias['g:' + t]] // 4})"

    def prob(self, t: str) -> str:
        return f"A({self.off[self.low.alias['a:' + t + '.prob']] // 4})"


def _header(low: Lowered, spec: TrainingSpec) -> str:
    return header_text(low.batch_size, low.num_classes, _numel(low.input_shape[1:]),
                       low.arena_bytes, spec)


def header_text(batch: int, classes: int, sample_bytes: int, arena_bytes: int, spec) -> str:
    """`et_model.h`: the driver's view of a generated model (fp32 and int8 alike); `spec` has
    `steps`, `log_every`, `lr` and `dump_params`."""
    return f"""/* generated by edgetrain.codegen: do not edit */
#ifndef ET_MODEL_H
#define ET_MODEL_H
#include <stdint.h>
#define ET_BATCH {batch}
#define ET_CLASSES {classes}
#define ET_SAMPLE_BYTES {sample_bytes}
#define ET_ARENA_BYTES {arena_bytes}
#define ET_STEPS {spec.steps}
#define ET_LOG_EVERY {spec.log_every}
#define ET_LR {_cfloat(spec.lr)}
#define ET_DUMP_PARAMS {int(spec.dump_params)}
extern const uint8_t et_train_x[], et_train_y[], et_test_x[], et_test_y[];
extern const int et_train_n, et_test_n;
void et_load(const uint8_t *pixels, const uint8_t *labels, int n, int first);
float et_train_step(float lr);
float et_eval_batch(int *correct);
void et_dump_params(void);
/* platform */
void et_puts(const char *s);
void et_put_u32(uint32_t v);
void et_put_hex(uint32_t v);
uint64_t et_ticks(void);
uint32_t et_stack_peak_bytes(void);
void et_platform_init(void);
void et_exit(int code);
#endif
"""


def _conv_dims(op: LOp) -> tuple[int, ...]:
    b, ci, h, w = op.shape_in[0]
    _, co, ho, wo = op.shape_out
    kh, kw = op.extra["kernel"]
    sh, sw = op.extra["stride"]
    ph, pw = op.extra["padding"]
    return (b, ci, h, w, co, ho, wo, kh, kw, sh, sw, ph, pw, op.extra["groups"])


def _is_pw(op: LOp) -> bool:
    return (tuple(op.extra["kernel"]) == (1, 1) and tuple(op.extra["stride"]) == (1, 1)
            and tuple(op.extra["padding"]) == (0, 0) and op.extra["groups"] == 1)


def _fwd(op: LOp, nm: _Names, used: set[str]) -> str:
    k = op.kind
    if k is LKind.CONV:
        d = _conv_dims(op)
        b = op.bias or "0"
        if _is_pw(op):
            used.add("conv2d_pw_fwd")
            return (f"conv2d_pw_fwd({nm.a(op.inputs[0])}, {op.weight}, {b}, {nm.a(op.output)}, "
                    f"{d[0]}, {d[1]}, {d[4]}, {d[2] * d[3]});")
        used.add("conv2d_fwd")
        return (f"conv2d_fwd({nm.a(op.inputs[0])}, {op.weight}, {b}, {nm.a(op.output)}, "
                + ", ".join(map(str, d)) + ");")
    if k is LKind.BN:
        used.add("bn_fwd")
        b, c = op.shape_in[0][:2]
        return (f"bn_fwd({nm.a(op.inputs[0])}, {op.extra['mean']}, {op.extra['invstd']}, "
                f"{op.weight}, {op.bias}, {nm.a(op.output)}, {b}, {c}, "
                f"{_numel(op.shape_in[0][2:])});")
    if k is LKind.RELU:
        used.add("relu_fwd")
        return f"relu_fwd({nm.a(op.inputs[0])}, {nm.a(op.output)}, {_numel(op.shape_out)});"
    if k is LKind.RELU6:
        used.add("hardtanh_fwd")
        return (f"hardtanh_fwd({nm.a(op.inputs[0])}, {nm.a(op.output)}, "
                f"{_numel(op.shape_out)}, {op.extra['lo']}f, {op.extra['hi']}f);")
    if k is LKind.ADD:
        used.add("add_fwd")
        return (f"add_fwd({nm.a(op.inputs[0])}, {nm.a(op.inputs[1])}, {nm.a(op.output)}, "
                f"{_numel(op.shape_out)});")
    if k is LKind.GAP:
        used.add("gap_fwd")
        b, c = op.shape_in[0][:2]
        return (f"gap_fwd({nm.a(op.inputs[0])}, {nm.a(op.output)}, {b * c}, "
                f"{_numel(op.shape_in[0][2:])});")
    if k is LKind.VIEW:
        return f"/* {op.name}: view (alias) */"
    if k is LKind.LINEAR:
        used.add("linear_fwd")
        b, i = op.shape_in[0]
        return (f"linear_fwd({nm.a(op.inputs[0])}, {op.weight}, {op.bias or '0'}, "
                f"{nm.a(op.output)}, {b}, {i}, {op.shape_out[1]});")
    if k is LKind.XENT:
        used.add("xent_fwd")
        b, kk = op.shape_in[0]
        return (f"loss = xent_fwd({nm.a(op.inputs[0])}, et_labels, {nm.prob(op.output)}, {b}, "
                f"{kk}, correct);")
    raise AssertionError(k)


def _bwd(op: LOp, nm: _Names, low: Lowered, written: set[str], used: set[str]) -> list[str]:
    rg = low.requires_grad
    trainable = {a.symbol for a in low.arrays if a.trainable}

    def dx(t: str) -> tuple[str, int]:
        key = "g:" + t  # per tensor: an in-place gradient overwrites its output gradient
        acc = 1 if key in written else 0
        written.add(key)
        return nm.g(t), acc

    k = op.kind
    x = op.inputs[0] if op.inputs else None
    out: list[str] = []
    if k is LKind.XENT:
        used.add("xent_bwd")
        b, kk = op.shape_in[0]
        g, _ = dx(x)
        return [f"xent_bwd({nm.prob(op.output)}, et_labels, {g}, {b}, {kk});"]
    dy = nm.g(op.output)
    if k is LKind.CONV:
        d = ", ".join(map(str, _conv_dims(op)))
        pw = _is_pw(op)
        dd = _conv_dims(op)
        pwd = f"{dd[0]}, {dd[1]}, {dd[4]}, {dd[2] * dd[3]}"
        if x in rg:
            g, acc = dx(x)
            if pw:
                used.add("conv2d_pw_bwd_input")
                out.append(f"conv2d_pw_bwd_input({dy}, {op.weight}, {g}, {acc}, {pwd});")
            else:
                used.add("conv2d_bwd_input")
                out.append(f"conv2d_bwd_input({dy}, {op.weight}, {g}, {acc}, {d});")
        wt = op.weight in trainable
        bt = op.bias is not None and op.bias in trainable
        if wt or bt:
            w = op.weight if wt else "0"
            b = op.bias if bt else "0"
            xa = nm.a(x) if wt else "0"
            rows = op.extra.get("rows", dd[4])
            if pw:
                used.add("conv2d_pw_bwd_weight_sgd")
                out.append(f"conv2d_pw_bwd_weight_sgd({dy}, {xa}, {w}, {b}, lr, {rows}, {pwd});")
            else:
                used.add("conv2d_bwd_weight_sgd")
                out.append(f"conv2d_bwd_weight_sgd({dy}, {xa}, {w}, {b}, lr, {rows}, {d});")
        return out
    if k is LKind.BN:
        used.add("bn_bwd")
        b, c = op.shape_in[0][:2]
        tr = op.weight in trainable or op.bias in trainable
        if (op.weight in trainable) != (op.bias in trainable):
            raise UnsupportedPlanError(
                f"batch norm {op.name}: the plan trains only one of its weight and bias; the C "
                "trainer trains both or neither")
        g, acc = dx(x) if x in rg else ("0", 0)
        xa = nm.a(x) if tr else "0"
        return [f"bn_bwd({dy}, {xa}, {op.extra['mean']}, {op.extra['invstd']}, "
                f"(float *){op.weight}, (float *){op.bias}, {g}, {acc}, lr, {int(tr)}, {b}, {c}, "
                f"{_numel(op.shape_in[0][2:])});"]
    if k in (LKind.RELU, LKind.RELU6):
        g, acc = dx(x)
        n = _numel(op.shape_out)
        if k is LKind.RELU:
            used.add("relu_bwd")
            return [f"relu_bwd({nm.a(op.output)}, {dy}, {g}, {acc}, {n});"]
        used.add("hardtanh_bwd")
        return [f"hardtanh_bwd({nm.a(op.output)}, {dy}, {g}, {acc}, {n}, {op.extra['lo']}f, "
                f"{op.extra['hi']}f);"]
    if k is LKind.ADD:
        used.add("grad_pass")
        for t in op.inputs:
            if t in rg:
                g, acc = dx(t)
                out.append(f"grad_pass({dy}, {g}, {acc}, {_numel(op.shape_out)});")
        return out
    if k is LKind.GAP:
        used.add("gap_bwd")
        g, acc = dx(x)
        b, c = op.shape_in[0][:2]
        return [f"gap_bwd({dy}, {g}, {acc}, {b * c}, {_numel(op.shape_in[0][2:])});"]
    if k is LKind.VIEW:
        dx(x)  # the gradient buffer is shared (alias): mark it written
        return [f"/* {op.name}: view, gradient aliased */"]
    if k is LKind.LINEAR:
        b, i = op.shape_in[0]
        o = op.shape_out[1]
        if x in rg:
            used.add("linear_bwd_input")
            g, acc = dx(x)
            out.append(f"linear_bwd_input({dy}, {op.weight}, {g}, {acc}, {b}, {i}, {o});")
        wt = op.weight in trainable
        bt = op.bias is not None and op.bias in trainable
        if wt or bt:
            used.add("linear_bwd_weight_sgd")
            out.append(f"linear_bwd_weight_sgd({dy}, {nm.a(x) if wt else '0'}, "
                       f"{op.weight if wt else '0'}, {op.bias if bt else '0'}, lr, "
                       f"{op.extra.get('rows', o)}, {b}, {i}, {o});")
        return out
    raise AssertionError(k)


def _model_c(low: Lowered, spec: TrainingSpec, tgt: Target) -> str:
    nm = _Names(low)
    used: set[str] = set()
    fwd = [f"    {_fwd(op, nm, used)}  /* {op.name} */" for op in low.ops]
    written: set[str] = set()
    bwd = []
    for op in reversed(low.ops):
        if op.output in low.requires_grad:
            bwd += [f"    {s}  /* {op.name} */" for s in _bwd(op, nm, low, written, used)]
    referenced = set()
    body = "\n".join(fwd + bwd)
    for a in low.arrays:
        if a.symbol in body:
            referenced.add(a.symbol)
    arrays = []
    for a in low.arrays:
        if a.symbol not in referenced:
            continue
        q = "" if a.trainable else "const "
        where = "SRAM, trained" if a.trainable else "flash"
        arrays.append(f"/* {a.param or a.symbol} ({where}) */\n"
                      f"static {q}float {a.symbol}[{a.values.size}] = {{\n{_floats(a.values)}\n}};")
    dumps = []
    for a in low.arrays:
        if a.trainable and a.symbol in referenced:
            dumps.append(f'    dump("{a.param}", {a.symbol}, {a.values.size});')
    d = _numel(low.input_shape[1:])
    in_buf = nm.a(low.input_tensor)
    kernels = "\n".join(KERNELS[k] for k in KERNELS if k in used)
    arena_floats = max(1, (low.arena_bytes + 3) // 4)
    return f"""/* generated by edgetrain.codegen for target {tgt.name}: do not edit.
   model {low.ops[0].name}..{low.ops[-1].name}; arena {low.arena_bytes} bytes;
   capabilities: FPU {int(tgt.has_fpu)}, DSP {int(tgt.has_dsp)} */
#include "et_model.h"
#define ET_HAS_FPU {int(tgt.has_fpu)}
#define ET_HAS_DSP {int(tgt.has_dsp)}
{PRELUDE}
{kernels}

{chr(10).join(arrays)}

static float et_arena[{arena_floats}] __attribute__((aligned(8)));
#define A(off) (et_arena + (off))
static int32_t et_labels[ET_BATCH];

void et_load(const uint8_t *pixels, const uint8_t *labels, int n, int first) {{
    float *x = {in_buf};
    for (int b = 0; b < ET_BATCH; b++) {{
        const int i = (first + b) % n;
        const uint8_t *px = pixels + (size_t)i * {d};
        for (int k = 0; k < {d}; k++)
            x[b * {d} + k] = ((float)px[k] / 255.0f - {_cfloat(spec.train.mean)}) / {_cfloat(spec.train.std)};
        et_labels[b] = labels[i];
    }}
}}

static float forward(int *correct) {{
    float loss;
{chr(10).join(fwd)}
    return loss;
}}

float et_eval_batch(int *correct) {{ return forward(correct); }}

float et_train_step(float lr) {{
    const float loss = forward(0);
    /* a non-finite loss skips the update (weights untouched), as edgetrain's Trainer does */
    if (!(loss - loss == 0.0f)) return loss;
{chr(10).join(bwd)}
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
{chr(10).join(dumps)}
}}
"""


def _data_c(spec: TrainingSpec) -> str:
    tr, te = spec.train, spec.test
    return f"""/* generated by edgetrain.codegen: training and test samples (flash) */
#include "et_model.h"
const int et_train_n = {len(tr.labels)};
const int et_test_n = {len(te.labels)};
const uint8_t et_train_x[] = {{
{_bytes(tr.pixels)}
}};
const uint8_t et_train_y[] = {{ {_bytes(tr.labels.astype(np.uint8))} }};
const uint8_t et_test_x[] = {{
{_bytes(te.pixels)}
}};
const uint8_t et_test_y[] = {{ {_bytes(te.labels.astype(np.uint8))} }};
"""


def _main_c(low: Lowered, spec: TrainingSpec, tgt: Target) -> str:
    return f"""/* generated by edgetrain.codegen: the training driver ({tgt.name}) */
#include "et_model.h"
#include <string.h>

static int evaluate(void) {{
    int correct = 0;
    for (int i = 0; i + ET_BATCH <= et_test_n; i += ET_BATCH) {{
        et_load(et_test_x, et_test_y, et_test_n, i);
        (void)et_eval_batch(&correct);
    }}
    return correct;
}}

static void put_kv(const char *k, uint32_t v) {{ et_puts(k); et_put_u32(v); et_puts("\\n"); }}

int main(void) {{
    et_platform_init();
    et_puts("ET_BEGIN {tgt.name}\\n");
    const uint32_t total = (uint32_t)(et_test_n / ET_BATCH * ET_BATCH);
    put_kv("ACC_BEFORE ", (uint32_t)evaluate());
    put_kv("TEST_N ", total);
    uint64_t ticks = 0;
    for (int s = 0; s < ET_STEPS; s++) {{
        et_load(et_train_x, et_train_y, et_train_n, s * ET_BATCH);
        const uint64_t t0 = et_ticks();
        const float loss = et_train_step(ET_LR);
        ticks += et_ticks() - t0;
        if (s % ET_LOG_EVERY == 0 || s == ET_STEPS - 1) {{
            uint32_t u; memcpy(&u, &loss, 4);
            et_puts("LOSS "); et_put_u32((uint32_t)s); et_puts(" "); et_put_hex(u); et_puts("\\n");
        }}
    }}
    et_puts("TICKS "); et_put_u32((uint32_t)(ticks >> 32)); et_puts(" ");
    et_put_u32((uint32_t)ticks); et_puts("\\n");
    put_kv("STEPS ", ET_STEPS);
    put_kv("ACC_AFTER ", (uint32_t)evaluate());
    if (ET_DUMP_PARAMS) et_dump_params();
    put_kv("STACK_PEAK ", et_stack_peak_bytes());
    et_puts("ET_END\\n");
    et_exit(0);
    return 0;
}}
"""


def _makefile(tgt: Target) -> str:
    srcs = "main.c et_model.c et_data.c et_platform.c"
    if tgt.kind is TargetKind.HOST:
        return (f"CC ?= {tgt.cc}\nCFLAGS ?= {' '.join(tgt.cflags)}\n\n"
                f"et_train: {srcs} et_model.h\n\t$(CC) $(CFLAGS) -o $@ {srcs} "
                f"{' '.join(tgt.ldflags)}\n\nrun: et_train\n\t./et_train\n")
    return (f"CC = {tgt.cc}\nCFLAGS = {' '.join(tgt.cflags)}\n\n"
            f"et_train.elf: {srcs} et_model.h link.ld\n\t$(CC) $(CFLAGS) -o $@ {srcs} "
            f"{' '.join(tgt.ldflags)} -Wl,-Map,et_train.map\n\n"
            f"run: et_train.elf\n\tqemu-system-arm -M {tgt.qemu_machine} -cpu {tgt.name} "
            "-icount shift=0 -semihosting -nographic -kernel et_train.elf\n")
