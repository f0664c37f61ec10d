"""The int8 C trainer's SRAM: in-place frozen depthwise / pointwise kernels (bit-exact against
the PyTorch int8 simulation), `int8_layout` (the pure sizing `render_int8` itself uses) and the
measured peak of MobileNetV2-w0.35 at 128x128 on an emulated Cortex-M7."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _int8_oracle import assert_int8_params_equal_simulation
from _toolchain import needs_arm, needs_cc

from edgetrain.codegen import (
    Int8Kernel,
    Int8Spec,
    UnsupportedPlanError,
    int8_layout,
    mcu_run,
    render_int8,
)
from edgetrain.models import build_model
from edgetrain.quant import QuantModel, QuantSGD, WeightStorage, quantize, run_int8

TTE_MBV2_128_F746_BYTES = 141_000  # Tiny Training Engine's measured SRAM, mbv2-w0.35 128x128


def _mbv2(size: int, varied: bool):
    m, x = build_model("mbv2-w0.35")
    x = x[..., :size, :size].contiguous()
    m.eval()
    g = torch.Generator().manual_seed(0)
    if varied:  # BN statistics and a head that make activations and logits vary (random init
        # gives nearly one int8 level per logit, and then only biases train)
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) * 0.4 - 0.2)
                    mod.running_var.copy_(torch.rand(mod.num_features, generator=g) * 0.05 + 0.01)
            m.classifier.weight.normal_(0, 0.3, generator=g)
    qg = quantize(m, torch.randn(8, *x.shape[1:], generator=g), name="mbv2-w0.35")
    xs = torch.randn(6, *x.shape[1:], generator=g)
    ys = torch.randint(0, 10, (6,), generator=g)
    return qg, xs, ys


@pytest.fixture(scope="module")
def mbv2_128():
    return _mbv2(128, varied=False)


def _write(files: dict[str, str], out):
    out.mkdir()
    for k, v in files.items():
        (out / k).write_text(v)
    return out


def _simulate(qg, trainable, xs, ys, steps: int, batch: int, lr: float):
    """The oracle: the PyTorch int8 simulation (WeightStorage.INT8, QAS) trained on the same
    6 samples in the C driver's order; returns (model, losses, trained QuantGraph)."""
    qm = QuantModel(qg, trainable=trainable, storage=WeightStorage.INT8)
    opt = QuantSGD(qm, lr=lr, qas=True)
    losses = []
    for s in range(steps):
        idx = [(s * batch + k) % 6 for k in range(batch)]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(qm(xs[idx]), ys[idx])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return qm, losses, qm.to_graph()


def _assert_trained_like_the_simulation(res, qm, qg, trained, trainable, losses, xs, ys) -> int:
    """Every trained int8 weight and int32 bias of the C run equals the PyTorch int8
    simulation's (and some changed), the losses match, and the test accuracy before and after
    is the integer reference's; returns the number of test samples."""
    assert set(res.params) == set(trainable)
    assert_int8_params_equal_simulation(res, qm, qg)
    np.testing.assert_allclose(res.losses, losses, rtol=1e-6)
    n = res.test_samples
    assert round(res.accuracy_before * n) == (
        (run_int8(qg, qg.quantize_input(xs[:n])).argmax(1) == ys[:n]).sum().item()
    )
    assert round(res.accuracy_after * n) == (
        (run_int8(trained, trained.quantize_input(xs[:n])).argmax(1) == ys[:n]).sum().item()
    )
    return n


def _packing_is_valid(bufs) -> None:
    for i, a in enumerate(bufs):
        assert a.offset % 8 == 0
        for b in bufs[i + 1 :]:
            if a.first <= b.last and b.first <= a.last:
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset, (a, b)


@needs_cc
@pytest.mark.parametrize("batch", [1, 2])
def test_in_place_kernels_train_bit_exactly_like_the_pytorch_int8_simulation(tmp_path, batch):
    # Prepare: mbv2-w0.35 at 32x32 with the last residual block, the last conv and the
    # classifier trainable; every earlier op is frozen, so its depthwise / projection convs run
    # in place (batch 1: next to the fused expansion->depthwise pairs; batch 2: without them).
    qg, xs, ys = _mbv2(32, varied=True)
    trainable = [
        "features.16.conv.0.0",
        "features.16.conv.1.0",
        "features.16.conv.2.0",
        "features.17.conv.2.0",
        "features.18.0",
        "classifier",
    ]
    steps, lr = 3, 0.0003
    q = qg.quantize_input(xs).numpy()
    mem = int8_layout(qg, trainable, batch_size=batch, target="host")
    kinds = dict(mem.kernels)
    assert kinds["features.1.conv.0.0"] is Int8Kernel.IN_PLACE_DEPTHWISE
    assert kinds["features.1.conv.1.0"] is Int8Kernel.IN_PLACE_POINTWISE
    assert sum(k is Int8Kernel.IN_PLACE_POINTWISE for k in kinds.values()) >= 10
    if batch == 2:
        assert sum(k is Int8Kernel.IN_PLACE_DEPTHWISE for k in kinds.values()) >= 10
    files = render_int8(
        qg,
        trainable,
        "host",
        Int8Spec(
            q, ys.numpy(), q, ys.numpy(), steps=steps, lr=lr, batch_size=batch, dump_params=True
        ),
    )
    assert "qdw_inplace_fwd(((int8_t" in files["et_model.c"]
    assert "qpw_inplace_fwd(((int8_t" in files["et_model.c"]
    # features.18.0 feeds only the global average pool: its dacc is never stored
    assert "const qgap_dacc gd = {" in files["et_model.c"]
    assert "qgap_bwd(((" not in files["et_model.c"]
    assert not any(b.name == "g:features.18.0" for b in mem.buffers)
    # Execute: the C program, then the PyTorch int8 simulation (WeightStorage.INT8, QAS) and
    # the integer reference on the test samples before and after
    res = mcu_run(_write(files, tmp_path / "int8"))
    qm, losses, trained = _simulate(qg, trainable, xs, ys, steps, batch, lr)
    # Assert: every trained int8 weight and int32 bias equals the simulation's (and some
    # changed), the logits give the same losses and the same test accuracy before and after
    n = _assert_trained_like_the_simulation(res, qm, qg, trained, trainable, losses, xs, ys)
    assert n == 6 // batch * batch


@pytest.mark.parametrize("last", [1, 2, 4, 9])
def test_int8_layout_is_what_the_build_file_predicts(mbv2_128, last):
    # Prepare
    qg, xs, ys = mbv2_128
    trainable = [op.name for op in qg.weighted_ops][-last:]
    q = qg.quantize_input(xs[:1]).numpy()
    # Execute: the pure sizing, and the renderer's build file
    mem = int8_layout(qg, trainable, batch_size=1, target="cortex-m7")
    meta = json.loads(
        render_int8(
            qg,
            trainable,
            "cortex-m7",
            Int8Spec(q, ys[:1].numpy(), q, ys[:1].numpy(), steps=1, lr=0.01),
            device_sram_bytes=327_680,
            device_flash_bytes=1 << 20,
        )["edgetrain_build.json"]
    )
    # Assert: one number, one layout
    assert mem.predicted_peak_sram_bytes == meta["codegen_predicted_peak_sram_bytes"]
    assert mem.arena_bytes == meta["arena_bytes"]
    assert mem.trainable_bytes == meta["trainable_bytes"]
    assert [(b.name, b.nbytes, b.offset, b.first, b.last) for b in mem.buffers] == [
        (b["name"], b["bytes"], b["offset"], b["first_step"], b["last_step"])
        for b in meta["buffers"]
    ]
    assert mem.predicted_peak_sram_bytes == (
        mem.arena_bytes + mem.trainable_bytes + mem.labels_bytes + mem.runtime_reserve_bytes
    )
    # trainable bytes: int8 weights + int32 biases of exactly the chosen ops
    by = {op.name: op for op in qg.weighted_ops}
    assert mem.trainable_bytes == sum(
        by[t].weight.numel() + 4 * by[t].bias.numel() for t in trainable
    )
    # a valid packing of at least the bytes live at the busiest step, and the live bytes
    # recomputed here from the buffers
    _packing_is_valid(mem.buffers)
    steps = max(b.last for b in mem.buffers) + 1
    live = max(
        sum((b.nbytes + 7) // 8 * 8 for b in mem.buffers if b.first <= t <= b.last)
        for t in range(steps)
    )
    assert live == mem.peak_live_bytes <= mem.arena_bytes
    # the in-place chain features.0.0 -> features.1.conv.0.0 (depthwise, 16x64x64) ->
    # features.1.conv.1.0 (pointwise 16 -> 8): the pointwise output's 8x64x64 bytes at the
    # chain's base, directly above them the depthwise output's other half, which dies when the
    # pointwise op has read it; the first conv's output has no bytes of its own
    buf = {b.name: b for b in mem.buffers}
    pw, dw = buf["a:features.1.conv.1.0"], buf["a:features.1.conv.0.0"]
    assert (pw.nbytes, dw.nbytes) == (8 * 64 * 64, 8 * 64 * 64)
    assert dw.offset == pw.offset + pw.nbytes
    assert pw.first == dw.first == 0 and dw.last == 2 < pw.last
    assert "a:features.0.0" not in buf


def test_int8_layout_counts_in_place_savings_and_is_cheap(mbv2_128):
    qg, _, _ = mbv2_128
    names = [op.name for op in qg.weighted_ops]
    # Execute: the TTE greedy loop's pattern, ~50 calls
    t0 = time.perf_counter()
    mems = [int8_layout(qg, names[-(1 + k % 10) :]) for k in range(50)]
    per_call_s = (time.perf_counter() - t0) / 50
    # Assert: cheap; classifier-only: the first frozen depthwise runs in place, so its output
    # has no buffer of its own, and the arena is below input + output of that op
    assert per_call_s < 0.05
    mem = mems[0]
    assert mem.kernel("features.1.conv.0.0") is Int8Kernel.IN_PLACE_DEPTHWISE
    assert mem.kernel("features.1.conv.1.0") is Int8Kernel.IN_PLACE_POINTWISE
    dw_in_plus_out = 2 * 16 * 64 * 64
    assert mem.arena_bytes < dw_in_plus_out
    # what is left is the first (standard) conv's input + output, and the packing reaches it
    assert mem.arena_bytes == mem.peak_live_bytes == 3 * 128 * 128 + 16 * 64 * 64
    # more trainable layers never need less SRAM
    preds = [int8_layout(qg, names[-k:]).predicted_peak_sram_bytes for k in (1, 2, 4, 8)]
    assert preds == sorted(preds)


def test_int8_layout_refuses_bad_arguments_with_typed_errors(mbv2_128):
    qg, _, _ = mbv2_128
    with pytest.raises(UnsupportedPlanError, match="choose among"):
        int8_layout(qg, ["features.99"])
    with pytest.raises(UnsupportedPlanError, match="choose among"):
        int8_layout(qg, [])
    with pytest.raises(UnsupportedPlanError, match="batch size 0"):
        int8_layout(qg, ["classifier"], batch_size=0)
    with pytest.raises(UnsupportedPlanError, match="no op"):
        int8_layout(qg, ["classifier"]).kernel("nope")


@needs_arm
def test_cortex_m7_mbv2_128_classifier_training_fits_tte_sram(tmp_path, mbv2_128):
    # Prepare: mbv2-w0.35, 3x128x128, batch 1, classifier only, for the STM32F746
    # (320 KiB SRAM, 1 MiB flash), two training steps
    qg, xs, ys = mbv2_128
    q = qg.quantize_input(xs[:2]).numpy()
    mem = int8_layout(qg, ["classifier"], batch_size=1, target="cortex-m7")
    files = render_int8(
        qg,
        ["classifier"],
        "cortex-m7",
        Int8Spec(q, ys[:2].numpy(), q[:1], ys[:1].numpy(), steps=2, lr=0.01),
        device_sram_bytes=327_680,
        device_flash_bytes=1 << 20,
        device_name="stm32f746",
    )
    # Execute: link and run under QEMU (mps2-an500); static + painted stack high-water mark
    res = mcu_run(_write(files, tmp_path / "m7"))
    # Assert: at or below the Tiny Training Engine's measured 141 KB, and the prediction
    # made from shapes within 5 % of the linked and run program
    assert res.peak_sram_bytes == res.static_sram_bytes + res.stack_peak_bytes
    assert res.peak_sram_bytes <= TTE_MBV2_128_F746_BYTES
    assert abs(res.peak_sram_bytes / mem.predicted_peak_sram_bytes - 1) < 0.05
    assert res.static_sram_bytes >= mem.arena_bytes + mem.trainable_bytes
    assert len(res.losses) == 2 and all(np.isfinite(res.losses))


# ---- line buffering (NOTE [ Line-buffered frozen prefix ], `line_buffer=True`)

PROBE_C = r"""#include <stdio.h>
#include "et_model.c"
/* the forward pass alone on every test batch; prints the int8 logits */
int main(void) {
    for (int i = 0; i + ET_BATCH <= et_test_n; i += ET_BATCH) {
        et_load(et_test_x, et_test_y, et_test_n, i);
        forward();
        const int8_t *q = (const int8_t *)(et_arena + LOGITS_OFFSET);
        for (int k = 0; k < ET_BATCH * ET_CLASSES; k++) printf("%d ", q[k]);
        printf("\n");
    }
    return 0;
}
"""


def _probe_logits(out) -> np.ndarray:
    """Compile the rendered model with a forward-only main and return its logits per sample."""
    meta = json.loads((out / "edgetrain_build.json").read_text())
    off = next(b["offset"] for b in meta["buffers"] if b["name"] == "a:classifier")
    (out / "probe.c").write_text(PROBE_C.replace("LOGITS_OFFSET", str(off)))
    exe = out / "probe"
    subprocess.run(
        [
            "cc",
            "-std=c99",
            "-O2",
            "-I",
            str(out),
            "-o",
            str(exe),
            str(out / "probe.c"),
            str(out / "et_data.c"),
            str(out / "et_platform.c"),
            "-lm",
        ],
        check=True,
    )
    text = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return np.array([[int(v) for v in line.split()] for line in text.splitlines()])


@needs_cc
@pytest.mark.parametrize("batch", [1, 2])
def test_line_buffered_prefix_trains_bit_exactly_like_the_pytorch_int8_simulation(tmp_path, batch):
    # Prepare: mbv2-w0.35 at 32x32, classifier only; with line_buffer the frozen prefix from
    # the input streams row by row: the strided standard conv, the depthwise and the
    # pointwise (batch 1), and also the next block's expansion, strided depthwise and
    # projection (batch 2, whose full-size activations cost twice as much)
    qg, xs, ys = _mbv2(32, varied=True)
    trainable = ["classifier"]
    steps, lr = 3, 0.0003
    q = qg.quantize_input(xs).numpy()
    mem = int8_layout(qg, trainable, batch_size=batch, target="host", line_buffer=True)
    off = int8_layout(qg, trainable, batch_size=batch, target="host")
    streamed = [n for n, k in mem.kernels if k is Int8Kernel.LINE_BUFFERED]
    want_chain = ["features.0.0", "features.1.conv.0.0", "features.1.conv.1.0"]
    if batch == 2:
        want_chain += ["features.2.conv.0.0", "features.2.conv.1.0", "features.2.conv.2.0"]
    assert streamed == want_chain
    assert not any(k is Int8Kernel.LINE_BUFFERED for _, k in off.kernels)
    assert mem.arena_bytes < off.arena_bytes
    spec = Int8Spec(
        q, ys.numpy(), q, ys.numpy(), steps=steps, lr=lr, batch_size=batch, dump_params=True
    )
    files = render_int8(qg, trainable, "host", spec, line_buffer=True)
    files_off = render_int8(qg, trainable, "host", spec)
    assert "qlb_chain(q_lb, " in files["et_model.c"]
    assert "qlb_chain(q_lb, " not in files_off["et_model.c"]
    # Execute: the C trainer (line buffered), the forward pass alone with line_buffer on and
    # off, the PyTorch int8 simulation (WeightStorage.INT8, QAS) and the integer reference
    out = _write(files, tmp_path / "lb")
    res = mcu_run(out)
    logits_on = _probe_logits(out)
    logits_off = _probe_logits(_write(files_off, tmp_path / "plain"))
    ref = run_int8(qg, qg.quantize_input(xs)).numpy().reshape(len(logits_on), -1)
    qm, losses, trained = _simulate(qg, trainable, xs, ys, steps, batch, lr)
    # Assert: the logits are the integer reference's with line buffering on and off; the
    # trained int8 weights and int32 biases equal the simulation's (and some changed), the
    # losses and the test accuracy before and after match
    np.testing.assert_array_equal(logits_on, ref)
    np.testing.assert_array_equal(logits_on, logits_off)
    _assert_trained_like_the_simulation(res, qm, qg, trained, trainable, losses, xs, ys)


@pytest.mark.parametrize("last", [1, 2])
def test_line_buffered_int8_layout_is_what_the_build_file_predicts(mbv2_128, last):
    # Prepare
    qg, xs, ys = mbv2_128
    trainable = [op.name for op in qg.weighted_ops][-last:]
    q = qg.quantize_input(xs[:1]).numpy()
    # Execute: the pure sizing with and without line buffering, and the renderer's build file
    mem = int8_layout(qg, trainable, batch_size=1, target="cortex-m7", line_buffer=True)
    off = int8_layout(qg, trainable, batch_size=1, target="cortex-m7")
    meta = json.loads(
        render_int8(
            qg,
            trainable,
            "cortex-m7",
            Int8Spec(q, ys[:1].numpy(), q, ys[:1].numpy(), steps=1, lr=0.01),
            device_sram_bytes=327_680,
            device_flash_bytes=1 << 20,
            line_buffer=True,
        )["edgetrain_build.json"]
    )
    # Assert: one number, one layout, a valid packing of at least the live bytes
    assert mem.predicted_peak_sram_bytes == meta["codegen_predicted_peak_sram_bytes"]
    assert mem.arena_bytes == meta["arena_bytes"]
    assert [(b.name, b.nbytes, b.offset, b.first, b.last) for b in mem.buffers] == [
        (b["name"], b["bytes"], b["offset"], b["first_step"], b["last_step"])
        for b in meta["buffers"]
    ]
    _packing_is_valid(mem.buffers)
    steps = max(b.last for b in mem.buffers) + 1
    live = max(
        sum((b.nbytes + 7) // 8 * 8 for b in mem.buffers if b.first <= t <= b.last)
        for t in range(steps)
    )
    assert live == mem.peak_live_bytes <= mem.arena_bytes
    # never more than without, and the same trainable bytes
    assert mem.arena_bytes <= off.arena_bytes
    assert mem.trainable_bytes == off.trainable_bytes
    buf = {b.name: b for b in mem.buffers}
    chain = [n for n, k in mem.kernels if k is Int8Kernel.LINE_BUFFERED]
    assert chain[:3] == ["features.0.0", "features.1.conv.0.0", "features.1.conv.1.0"]
    # the streamed intermediates are rings, never full tensors: 3 rows of the first conv's
    # 16 x 64 output for the 3x3 depthwise, one 16 x 64 row of the depthwise's for the
    # pointwise; the last op's output is materialised, the others have no activation buffer
    assert buf["s:features.0.0"].nbytes == 3 * 16 * 64
    assert buf["s:features.1.conv.0.0"].nbytes == 1 * 16 * 64
    assert not any("a:" + n in buf for n in chain[:-1])
    assert "s:" + chain[-1] not in buf
    if last == 1:
        # classifier only: the whole 6-conv prefix up to the second block's projection
        # streams; at its step the input, the rings and the 8x32x32 output are live, and that
        # step is the arena (the off layout's first conv input + output: 114,688 B)
        assert len(chain) == 6
        assert buf["s:features.2.conv.0.0"].nbytes == 3 * 48 * 64
        rings = sum(b.nbytes for k, b in buf.items() if k.startswith("s:") and k[2:] in chain)
        assert rings == 3 * 16 * 64 + 16 * 64 + 8 * 64 + 3 * 48 * 64 + 48 * 32
        assert mem.arena_bytes == 3 * 128 * 128 + rings + 8 * 32 * 32 < off.arena_bytes
        assert off.arena_bytes == 3 * 128 * 128 + 16 * 64 * 64


def test_line_buffer_refuses_a_non_boolean(mbv2_128):
    qg, xs, ys = mbv2_128
    q = qg.quantize_input(xs[:1]).numpy()
    with pytest.raises(UnsupportedPlanError, match="line_buffer='yes' must be True or False"):
        int8_layout(qg, ["classifier"], line_buffer="yes")
    with pytest.raises(UnsupportedPlanError, match="must be True or False"):
        render_int8(
            qg,
            ["classifier"],
            "host",
            Int8Spec(q, ys[:1].numpy(), q, ys[:1].numpy(), steps=1, lr=0.01),
            line_buffer=1,
        )


@needs_arm
def test_cortex_m7_mbv2_128_line_buffered_classifier_training_under_100_kb(tmp_path):
    # Prepare: mbv2-w0.35, 3x128x128 (varied BN statistics and head, so that the logits and
    # the classifier's update depend on every activation), batch 1, classifier only, STM32F746
    # sizes, two steps, with and without line buffering (same samples)
    qg, xs, ys = _mbv2(128, varied=True)
    q = qg.quantize_input(xs[:2]).numpy()
    spec = Int8Spec(q, ys[:2].numpy(), q[:1], ys[:1].numpy(), steps=2, lr=0.01, dump_params=True)
    mem = int8_layout(qg, ["classifier"], batch_size=1, target="cortex-m7", line_buffer=True)
    runs = {}
    # Execute: link and run both under QEMU (mps2-an500); static + painted stack high-water
    for lb in (True, False):
        files = render_int8(
            qg,
            ["classifier"],
            "cortex-m7",
            spec,
            device_sram_bytes=327_680,
            device_flash_bytes=1 << 20,
            device_name="stm32f746",
            line_buffer=lb,
        )
        runs[lb] = mcu_run(_write(files, tmp_path / f"m7-{lb}"))
    res = runs[True]
    # Assert: at most 100,000 B measured, the prediction from shapes within 5 % of it, well
    # below the run without line buffering; and line buffering changes no result: the
    # trained classifier is bit for bit the same, and so are the losses
    assert res.peak_sram_bytes == res.static_sram_bytes + res.stack_peak_bytes
    assert res.peak_sram_bytes <= 100_000
    assert abs(res.peak_sram_bytes / mem.predicted_peak_sram_bytes - 1) < 0.05
    assert res.static_sram_bytes >= mem.arena_bytes + mem.trainable_bytes
    assert runs[False].peak_sram_bytes - res.peak_sram_bytes > 30_000
    init = {op.name: op for op in qg.weighted_ops}["classifier"]
    w, b = res.params["classifier"]
    assert (w, b) == runs[False].params["classifier"]
    assert w != init.weight.reshape(-1).tolist()
    assert res.losses == runs[False].losses and all(np.isfinite(res.losses))
    assert res.losses[0] != res.losses[1]
