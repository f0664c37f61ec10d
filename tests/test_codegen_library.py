"""The library layout (NOTE [ Project layouts ]): the C API built with the Arm toolchain into a
firmware that streams samples through a callback, run under QEMU (mps2-an386, Cortex-M4):
the loss falls, the first loss is PyTorch's on the same batch, a saved weights image restores
the predictions bit-exactly, and damaged images are refused without touching the weights."""

from __future__ import annotations

import copy
import re
import shutil
import struct
import subprocess

import numpy as np
import pytest
import torch
from torch import nn

import edgetrain
from edgetrain.codegen import TrainingSpec, compile_project
from edgetrain.codegen._compile import samples_from
from edgetrain.codegen._project import cfloat
from edgetrain.codegen._run import mcu_run, run_command
from edgetrain.codegen._targets import get_target
from edgetrain.errors import BuildFileError
from tests._toolchain import needs_arm

BATCH, STEPS = 2, 60

# The test's own firmware: samples from a callback, then the save / load checks.
FIRMWARE = r"""
#include <string.h>
#include "edgetrain_model.h"
#include "et_model.h"
extern const float data_x[]; extern const int32_t data_y[]; extern const int data_n;
static void next_sample(int i, float *x, et_target_t *y) {
    memcpy(x, data_x + (i % data_n) * ET_INPUT_SIZE, sizeof(float) * ET_INPUT_SIZE);
    *y = data_y[i % data_n];
}
static float x[ET_BATCH * ET_INPUT_SIZE], out[ET_BATCH * ET_OUTPUT_SIZE];
static et_target_t y[ET_BATCH];
static uint8_t img[ET_WEIGHTS_SIZE], bad[ET_WEIGHTS_SIZE];
static void hex(const char *k, const float *v, int n) {
    et_puts(k);
    for (int i = 0; i < n; i++) { uint32_t u; memcpy(&u, &v[i], 4); et_puts(" "); et_put_hex(u); }
    et_puts("\n");
}
static void code(const char *k, int rc) { et_puts(k); et_put_u32((uint32_t)-rc); et_puts("\n"); }
static void step(int s) {
    for (int b = 0; b < ET_BATCH; b++) next_sample(s * ET_BATCH + b, x + b * ET_INPUT_SIZE, y + b);
    float l = et_train_step(x, y); hex("LOSS", &l, 1);
}
int main(void) {
    et_platform_init();
    et_init();
    for (int s = 0; s < STEPS; s++) step(s);
    next_sample(0, x, y); next_sample(1, x + ET_INPUT_SIZE, y + 1);
    et_predict(x, out); hex("PRED_SAVED", out, ET_BATCH * ET_OUTPUT_SIZE);
    code("SAVE ", et_save_weights(img, sizeof img));
    code("SAVE_SMALL ", et_save_weights(img, sizeof img - 1));
    for (int s = 0; s < 5; s++) step(STEPS + s);
    next_sample(0, x, y); next_sample(1, x + ET_INPUT_SIZE, y + 1);
    et_predict(x, out); hex("PRED_MOVED", out, ET_BATCH * ET_OUTPUT_SIZE);
    code("LOAD ", et_load_weights(img, sizeof img));
    et_predict(x, out); hex("PRED_LOADED", out, ET_BATCH * ET_OUTPUT_SIZE);
    memcpy(bad, img, sizeof img); bad[20] ^= 1; code("LOAD_DAMAGED ", et_load_weights(bad, sizeof bad));
    memcpy(bad, img, sizeof img); bad[8] ^= 1; code("LOAD_OTHER_MODEL ", et_load_weights(bad, sizeof bad));
    memcpy(bad, img, sizeof img); bad[4] = 9; code("LOAD_VERSION ", et_load_weights(bad, sizeof bad));
    memcpy(bad, img, sizeof img); bad[0] = 0; code("LOAD_MAGIC ", et_load_weights(bad, sizeof bad));
    code("LOAD_SHORT ", et_load_weights(img, sizeof img - 1));
    y[0] = ET_CLASSES; { float l = et_train_step(x, y); hex("LOSS_BAD_LABEL", &l, 1); }
    et_predict(x, out); hex("PRED_AFTER_ERRORS", out, ET_BATCH * ET_OUTPUT_SIZE);
    code("SIZE ", -(int)et_weights_size());
    et_puts("ET_END\n");
    et_exit(0);
    return 0;
}
"""


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(48) % 3
    centres = torch.randn(3, 12, generator=g) * 1.5
    return centres[y] + 0.5 * torch.randn(48, 12, generator=g), y


def _data_c(x: torch.Tensor, y: torch.Tensor) -> str:
    xs = ",".join(cfloat(v) for v in x.reshape(-1).tolist())
    ys = ",".join(str(int(v)) for v in y.tolist())
    return (
        "#include <stdint.h>\n"
        f"const float data_x[] = {{{xs}}};\nconst int32_t data_y[] = {{{ys}}};\n"
        f"const int data_n = {len(y)};\n"
    )


def _floats(line: str) -> list[float]:
    return [struct.unpack("<f", struct.pack("<I", int(h, 16)))[0] for h in line.split()[1:]]


def _run_firmware(tmp_path) -> dict:
    """Compile the library (plan for the nRF52840, library layout), build it into a static
    library with the Arm toolchain, link the test's firmware and run it under QEMU."""
    m, (x, y) = _model(), _data()
    plan = edgetrain.plan(m, x[:1], device="nrf52840", batch_size=BATCH, executor="c")
    s = samples_from(x, y)
    out = compile_project(
        plan,
        m,
        x[:1],
        "cortex-m4",
        TrainingSpec(s, s, steps=STEPS, lr=0.05),
        tmp_path / "lib",
        device="nrf52840",
        layout="library",
    )
    tgt = get_target("cortex-m4")
    b = tmp_path / "build"
    b.mkdir()
    src = out / "src"
    cc = [tgt.cc, *tgt.cflags, f"-I{src}", f"-I{out / 'extras' / 'firmware'}"]
    subprocess.run([*cc, "-c", str(src / "edgetrain_model.c"), "-o", str(b / "m.o")], check=True)
    subprocess.run(["arm-none-eabi-ar", "rcs", str(b / "libedgetrain_model.a"), str(b / "m.o")])
    (b / "fw.c").write_text(f"#define STEPS {STEPS}\n" + FIRMWARE)
    (b / "data.c").write_text(_data_c(x, y))
    ld = [
        f if f != "-Wl,-T,link.ld" else f"-Wl,-T,{out / 'extras' / 'firmware' / 'link.ld'}"
        for f in tgt.ldflags
    ]
    elf = b / "fw.elf"
    fw = [str(b / "fw.c"), str(b / "data.c"), str(out / "extras" / "firmware" / "et_platform.c")]
    subprocess.run(
        [*cc, "-o", str(elf), *fw, f"-L{b}", "-ledgetrain_model", *ld], check=True, text=True
    )
    r = subprocess.run(run_command(tgt, elf), capture_output=True, text=True, timeout=300)
    text = r.stdout + r.stderr
    assert "ET_END" in text and "ET_FAULT" not in text, text[-2000:]
    lines: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.split():
            lines.setdefault(line.split()[0], []).append(line)
    return {"lines": lines, "model": m, "x": x, "y": y, "out": out}


@needs_arm
def test_library_trains_and_round_trips_weights_under_qemu(tmp_path):
    # Prepare / Execute
    r = _run_firmware(tmp_path)
    lines = r["lines"]
    losses = [_floats(v)[0] for v in lines["LOSS"]]
    # Assert: the loss falls; the first step's loss is PyTorch's on the same batch
    assert len(losses) == STEPS + 5
    first = nn.functional.cross_entropy(r["model"](r["x"][:BATCH]), r["y"][:BATCH]).item()
    assert losses[0] == pytest.approx(first, rel=1e-5, abs=1e-6)
    assert np.mean(losses[STEPS - 10 : STEPS]) < 0.3 * np.mean(losses[:10])
    # the image restores the saved predictions bit-exactly; more training had moved them
    saved, moved = _floats(lines["PRED_SAVED"][0]), _floats(lines["PRED_MOVED"][0])
    assert moved != saved
    assert _floats(lines["PRED_LOADED"][0]) == saved
    assert lines["SAVE"][0].split()[1] == "0" and lines["LOAD"][0].split()[1] == "0"
    # damaged images: typed codes, nothing loaded; a bad label: NaN, no update
    codes = {k: int(lines[k][0].split()[1]) for k in lines if k.startswith(("LOAD_", "SAVE_"))}
    assert codes == {
        "SAVE_SMALL": 1,
        "LOAD_DAMAGED": 5,
        "LOAD_OTHER_MODEL": 4,
        "LOAD_VERSION": 3,
        "LOAD_MAGIC": 2,
        "LOAD_SHORT": 1,
    }
    assert np.isnan(_floats(lines["LOSS_BAD_LABEL"][0])[0])
    assert _floats(lines["PRED_AFTER_ERRORS"][0]) == saved
    trained = sum(p.numel() for p in r["model"].parameters())  # the plan trains all (tiny)
    assert int(lines["SIZE"][0].split()[1]) == 16 + 4 * trained + 4


@needs_arm
def test_library_layout_files_and_example_firmware(tmp_path):
    # Prepare / Execute: the example firmware as generated (make in extras/firmware)
    r = _run_firmware(tmp_path)
    out = r["out"]
    fw = out / "extras" / "firmware"
    subprocess.run(["make", "-s", "-C", str(fw)], check=True, capture_output=True)
    run = subprocess.run(
        run_command(get_target("cortex-m4"), fw / "firmware.elf"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = run.stdout + run.stderr
    # Assert: the example streams its samples, trains, saves and reloads
    assert "ET_END" in text and "SAVE 0" in text and "LOAD 0" in text, text[-1500:]
    losses = [_floats(v)[1] for v in text.splitlines() if v.startswith("LOSS ")]  # step, loss
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    for f in ("CMakeLists.txt", "library.properties", "examples/StreamTrain/StreamTrain.ino"):
        assert (out / f).is_file()
    props = dict(
        line.split("=", 1) for line in (out / "library.properties").read_text().splitlines()
    )
    assert props["includes"] == "edgetrain_model.h" and props["name"].startswith("edgetrain_")
    # and mcu-run, which runs demo drivers, says what to run instead of a missing main.c
    with pytest.raises(BuildFileError, match=r"extras/firmware run.*--layout demo"):
        mcu_run(out)


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("cc") is None, reason="no cmake")
def test_library_builds_with_cmake_on_the_host(tmp_path):
    # Prepare
    m, (x, y) = _model(), _data()
    plan = edgetrain.plan(m, x[:1], device="nrf52840", batch_size=BATCH, executor="c")
    s = samples_from(x, y)
    out = compile_project(
        plan, m, x[:1], "host", TrainingSpec(s, s, 5, 0.05), tmp_path / "lib", layout="library"
    )
    # Execute
    b = tmp_path / "b"
    subprocess.run(["cmake", "-S", str(out), "-B", str(b)], check=True, capture_output=True)
    r = subprocess.run(["cmake", "--build", str(b)], capture_output=True, text=True)
    # Assert
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(p.name.startswith("libedgetrain_model") for p in b.iterdir())


HOST_REGRESSION = r"""
#include <stdio.h>
#include "edgetrain_model.h"
extern const float data_x[]; extern const float data_t[]; extern const int data_n;
int main(void) {
    float x[ET_BATCH * ET_INPUT_SIZE], out[ET_BATCH * ET_OUTPUT_SIZE];
    et_target_t y[ET_BATCH * ET_TARGET_SIZE];
    et_init();
    for (int s = 0; s < 200; s++) {
        for (int b = 0; b < ET_BATCH; b++) {
            const int i = (s * ET_BATCH + b) % data_n;
            for (int k = 0; k < ET_INPUT_SIZE; k++) x[b * ET_INPUT_SIZE + k] = data_x[i * ET_INPUT_SIZE + k];
            for (int k = 0; k < ET_TARGET_SIZE; k++) y[b * ET_TARGET_SIZE + k] = data_t[i * ET_TARGET_SIZE + k];
        }
        printf("LOSS %.9g\n", et_train_step(x, y));
    }
    et_predict(x, out);
    printf("PRED %.9g %d\n", out[0], ET_CLASSES);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no host C compiler (cc)")
def test_library_takes_float_targets_for_a_regression_loss(tmp_path):
    # Prepare: y = a fixed linear map of x (2 outputs), MSE; a PyTorch plan (plan --executor c
    # takes cross-entropy only) compiled through the Python API
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 4, generator=g)
    t = x @ torch.randn(4, 2, generator=g)
    plan = edgetrain.plan(m, x[:1], device="nrf52840", batch_size=BATCH, loss="mse")
    s = samples_from(x, torch.zeros(32, dtype=torch.long))
    out = compile_project(
        plan, m, x[:1], "host", TrainingSpec(s, s, 5, 0.05), tmp_path / "lib", layout="library"
    )
    first = nn.functional.mse_loss(m(x[:BATCH]), t[:BATCH]).item()
    xs = ",".join(cfloat(v) for v in x.reshape(-1).tolist())
    ts = ",".join(cfloat(v) for v in t.reshape(-1).tolist())
    (tmp_path / "main.c").write_text(
        HOST_REGRESSION
        + f"const float data_x[] = {{{xs}}};\nconst float data_t[] = {{{ts}}};\n"
        + "const int data_n = 32;\n"
    )
    exe = tmp_path / "fw"
    # Execute
    subprocess.run(
        ["cc", "-std=c99", "-O2", "-ffp-contract=off", f"-I{out / 'src'}", "-o", str(exe)]
        + [str(tmp_path / "main.c"), str(out / "src" / "edgetrain_model.c"), "-lm"],
        check=True,
    )
    text = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    # Assert: float targets (ET_CLASSES 0), PyTorch's first loss, and the loss falls
    losses = [float(v.split()[1]) for v in text.splitlines() if v.startswith("LOSS")]
    assert text.splitlines()[-1].split()[2] == "0"
    assert losses[0] == pytest.approx(first, rel=1e-5)
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:20])


def test_the_weights_tag_tells_builds_with_other_frozen_weights_apart(tmp_path):
    # Prepare: a last-layer plan (the first Linear in flash), compiled for the same model
    # twice and for a copy whose frozen layer holds other weights
    m, (x, y) = _model(), _data()
    plan = edgetrain.plan(
        m, x[:1], device="nrf52840", batch_size=BATCH, executor="c", policy="last:1"
    )
    other = copy.deepcopy(m)
    with torch.no_grad():
        other[0].weight.add_(0.01)
    s = samples_from(x, y)

    def tag(model, name: str) -> str:
        out = compile_project(
            plan, model, x[:1], "cortex-m4", TrainingSpec(s, s, steps=STEPS, lr=0.05),
            tmp_path / name, device="nrf52840", layout="library",
        )  # fmt: skip
        header = (out / "src" / "edgetrain_model.h").read_text()
        return re.search(r"#define ET_MODEL_TAG (0x[0-9a-f]+)u", header).group(1)

    # Execute
    tags = [tag(m, "a"), tag(m, "b"), tag(other, "c")]
    # Assert: the same build gives the same tag; other frozen weights give another one, so
    # et_load_weights refuses an image saved by that firmware (ET_ERR_MODEL)
    assert tags[0] == tags[1]
    assert tags[2] != tags[0]
