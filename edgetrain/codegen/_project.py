"""What every generated project holds besides its model: the driver's header (`et_model.h`),
the training driver (`main.c`) and the `Makefile`, fp32 and int8 alike; and the C literal
formatting both renderers share. (The platform layer, `et_platform.c` and the linker script, is
`_platform.py`'s.)
"""

from __future__ import annotations

import numpy as np

from edgetrain.codegen._targets import Target, TargetKind
from edgetrain.errors import DeviceLimitError, PlanPredictionError, UnsupportedPlanError

PREDICTION_TOLERANCE = 0.01  # a plan's predicted peak may differ from the layout's by 1 %


def cfloat(x: float) -> str:
    """A C float literal that reads back as exactly the float32 `x` (9 significant digits)."""
    s = f"{float(np.float32(x)):.9g}"
    if s in ("inf", "-inf", "nan"):
        raise UnsupportedPlanError(f"a weight or constant is {s}; the model is not finite")
    if "." not in s and "e" not in s:
        s += ".0"
    return s + "f"


def c_bytes(v: np.ndarray) -> str:
    """Integers as a C initialiser list, 32 a line."""
    vals = [str(x) for x in v.reshape(-1).tolist()]
    return ",\n".join(",".join(vals[i : i + 32]) for i in range(0, len(vals), 32))


def check_labels(labels: np.ndarray, classes: int, what: str) -> None:
    """Labels are class indices 0..classes-1: the C loss indexes the logits with them (a label
    out of range would read past the logits) and the driver stores them as bytes."""
    v = np.asarray(labels)
    if v.dtype.kind not in "iu":
        raise UnsupportedPlanError(f"{what} labels are {v.dtype}, not integers; give class indices")
    bad = np.flatnonzero((v < 0) | (v >= classes))
    if bad.size:
        raise UnsupportedPlanError(
            f"{what} label {int(v[bad[0]])} (sample {int(bad[0])}, {bad.size} such) is not a class "
            f"of the model's {classes} outputs (0..{classes - 1}); relabel the data or use a "
            f"model with more outputs"
        )


CODE_RESERVE_BYTES = 16 * 1024
"""Flash the program's code takes besides its data: kernels, driver, platform layer and the
C library's pieces (measured on Cortex-M4 with -O2: about 5 KiB for fp32 programs, 11 KiB for
int8 ones); the linker checks the exact number."""


def check_flash(
    flash_bytes: int,
    device: str | None,
    *,
    train_n: int,
    test_n: int,
    sample_bytes: int,
    weights_bytes: int,
    sample: str = "",
) -> None:
    """The baked-in samples, the weights' initial values and the code fit the device's flash
    (0: the host, no limit). Checked before any C is written, with the largest
    `--train-samples` that fits; the linker checks the exact size later."""
    samples = (train_n + test_n) * sample_bytes
    need = samples + weights_bytes + CODE_RESERVE_BYTES
    if flash_bytes <= 0 or need <= flash_bytes:
        return
    dev = device or "the device"
    fit = (flash_bytes - weights_bytes - CODE_RESERVE_BYTES) // sample_bytes
    if fit > test_n:
        fix = f"bake fewer: --train-samples {fit - test_n} (the most that fit with {test_n} test samples)"
    elif fit >= 2:
        fix = (
            f"bake fewer: at most {fit} samples fit in all, e.g. --train-samples "
            f"{fit - fit // 2} --test-samples {fit // 2}"
        )
    else:
        fix = (
            "the weights and code alone leave no room for samples (whatever --train-samples "
            "/ --test-samples): use a smaller model"
        )
    raise DeviceLimitError(
        f"{dev}'s flash ({flash_bytes:,} B) cannot hold the baked-in data: {train_n:,} "
        f"training + {test_n:,} test samples x {sample_bytes:,} B each"
        f"{f' ({sample} and a label byte)' if sample else ''} = {samples:,} B, plus "
        f"{weights_bytes:,} B of weights and ~{CODE_RESERVE_BYTES:,} B of code = {need:,} B; "
        f"{fix}, or use a device with more flash"
    )


def check_prediction(plan, predicted_bytes: int, what: str) -> None:
    """A C plan's predicted peak is this compiler's own prediction for the plan as given
    (within `PREDICTION_TOLERANCE`); otherwise the plan was edited or made elsewhere."""
    claimed = plan.predicted_peak_bytes
    if abs(claimed - predicted_bytes) <= PREDICTION_TOLERANCE * max(predicted_bytes, 1):
        return
    raise PlanPredictionError(
        f"the plan for {plan.model} on {plan.device} ({what}, batch {plan.batch_size}, "
        f"{len(plan.trainable())} trainable tensors) predicts a peak of {claimed:,} B, but "
        f"this compiler's layout of that plan needs {predicted_bytes:,} B: the plan was edited "
        "by hand, or made for another executor or by another edgetrain version. Re-plan for "
        f"the C executor: edgetrain plan --model {plan.model} --device {plan.device} "
        f"--batch-size {plan.batch_size} --executor c -o plan.json"
    )


def header_text(
    batch: int,
    classes: int,
    sample_bytes: int,
    arena_bytes: int,
    spec,
    sample_type: str = "uint8_t",
) -> str:
    """`et_model.h`: the driver's view of a generated model (fp32 and int8 alike); `spec` has
    `steps`, `log_every`, `lr` and `dump_params`; the samples in flash are `sample_type`s
    (`uint8_t` pixels or bytes, or `float` values)."""
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
#define ET_LR {cfloat(spec.lr)}
#define ET_DUMP_PARAMS {int(spec.dump_params)}
typedef {sample_type} et_sample_t;
extern const et_sample_t et_train_x[], et_test_x[];
extern const uint8_t et_train_y[], et_test_y[];
extern const int et_train_n, et_test_n;
void et_load(const et_sample_t *samples, const uint8_t *labels, int n, int first);
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


def main_c(tgt: Target) -> str:
    """`main.c`: the training driver (evaluate, train, evaluate, report), fp32 and int8 alike."""
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


def makefile(tgt: Target) -> str:
    """The `Makefile` that builds (and, `make run`, runs) the project for `tgt`."""
    srcs = "main.c et_model.c et_data.c et_platform.c"
    if tgt.kind is TargetKind.HOST:
        return (
            f"CC ?= {tgt.cc}\nCFLAGS ?= {' '.join(tgt.cflags)}\n\n"
            f"et_train: {srcs} et_model.h\n\t$(CC) $(CFLAGS) -o $@ {srcs} "
            f"{' '.join(tgt.ldflags)}\n\nrun: et_train\n\t./et_train\n"
        )
    return (
        f"CC = {tgt.cc}\nCFLAGS = {' '.join(tgt.cflags)}\n\n"
        f"et_train.elf: {srcs} et_model.h link.ld\n\t$(CC) $(CFLAGS) -o $@ {srcs} "
        f"{' '.join(tgt.ldflags)} -Wl,-Map,et_train.map\n\n"
        f"run: et_train.elf\n\tqemu-system-arm -M {tgt.qemu_machine} -cpu {tgt.name} "
        "-icount shift=0 -semihosting -nographic -kernel et_train.elf\n"
    )


def fixed_sources() -> tuple[str, ...]:
    """The driver's and header's fixed C text (for `_names.fixed_source_identifiers`)."""
    from types import SimpleNamespace

    from edgetrain.codegen._targets import TARGETS

    spec = SimpleNamespace(steps=1, log_every=1, lr=1.0, dump_params=False)
    return (
        header_text(1, 1, 1, 1, spec),
        header_text(1, 1, 1, 1, spec, "float"),
        *(main_c(t) for t in TARGETS.values()),
    )
