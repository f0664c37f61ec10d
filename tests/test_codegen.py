"""edgetrain.codegen: generated C training code against PyTorch (the oracle), on the host and
on an emulated Cortex-M4 (QEMU); memory limits enforced at link time; typed errors."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch
from _int8_oracle import assert_int8_params_equal_simulation
from _toolchain import full_training_case, needs_arm, needs_cc

import edgetrain
from edgetrain.codegen import (
    BuildError,
    SampleSet,
    ToolchainMissingError,
    TrainingSpec,
    UnsupportedPlanError,
    compile_int8_project,
    compile_project,
    lower,
    mcu_run,
    normalised,
    render,
    weights_of,
)
from edgetrain.models import build_model
from edgetrain.planner import ActivationDecision
from edgetrain.runtime import Trainer


def _model(name: str, size: int | None = None):
    m, x = build_model(name)
    if size is not None:
        x = x[..., :size, :size].contiguous()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial running statistics, so folding BN is really tested
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) * 0.4 - 0.2)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return m, x


def _plan(m, x, policy: str, batch: int = 1, name: str = "mcu-cnn"):
    return edgetrain.plan(
        m,
        x,
        device="stm32h743",
        strategy="keep-all",
        policy=policy,
        batch_size=batch,
        freeze_batch_norm=True,
        name=name,
        budget_bytes=1 << 40,
    )


def _samples(n: int, shape, seed: int = 0) -> SampleSet:
    g = np.random.default_rng(seed)
    return SampleSet(
        g.integers(0, 256, (n, *shape), dtype=np.uint8), g.integers(0, 10, n), 0.2860, 0.3530
    )


def _torch_reference(m, plan, samples: SampleSet, steps: int, lr: float) -> list[float]:
    xs, ys = normalised(samples), torch.from_numpy(samples.labels)
    b, n = plan.batch_size, len(ys)
    losses = []
    with Trainer(m, plan, lr=lr) as t:
        for s in range(steps):
            idx = [(s * b + k) % n for k in range(b)]
            losses.append(t.step(xs[idx], ys[idx]))
    return losses


def _check_against_torch(tmp_path, name, policy, batch, steps, size=None, target="host"):
    # Prepare: a model, a sparse plan with frozen BN, samples, and the same start for both sides.
    m, x = _model(name, size)
    plan = _plan(m, x, policy, batch, name)
    return check_model_against_torch(tmp_path, m, x, plan, steps, target)


def check_model_against_torch(tmp_path, m, x, plan, steps, target="host"):
    """Compile `plan` for `m`, run it, train PyTorch's Trainer from the same weights on the
    same samples, and assert the same losses and trained parameters (by name)."""
    batch = plan.batch_size
    samples = _samples(4 * batch, tuple(x.shape[1:]))
    spec = TrainingSpec(samples, samples, steps=steps, lr=0.05, dump_params=True)
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    # Execute: the generated C program, then PyTorch's Trainer from the same weights.
    res = mcu_run(compile_project(plan, m, x, target, spec, tmp_path / "c"))
    ref_losses = _torch_reference(m, plan, samples, steps, 0.05)
    # Assert: the same losses, and every trained parameter agrees after N SGD steps.
    named = dict(m.named_parameters())
    assert set(res.params) == set(plan.trainable())
    for pname, values in res.params.items():
        got = torch.tensor(values, dtype=torch.float32)
        want = named[pname].detach().reshape(-1)
        assert not torch.equal(want, before[pname].reshape(-1)), f"{pname} did not train"
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=pname)
    torch.testing.assert_close(
        torch.tensor(res.losses), torch.tensor(ref_losses), rtol=1e-4, atol=1e-5
    )
    return res, plan


@needs_cc
def test_host_c_matches_pytorch_mcu_cnn_sparse_update(tmp_path):
    res, _ = _check_against_torch(tmp_path, "mcu-cnn", "last:2", batch=1, steps=6)
    assert res.step_time_s is not None and res.step_time_s > 0


@needs_cc
def test_host_c_matches_pytorch_mcu_cnn_full_training_batch2(tmp_path):
    _check_against_torch(tmp_path, "mcu-cnn", "all", batch=2, steps=5)


@needs_cc
def test_host_c_matches_pytorch_mbv2_residual_blocks(tmp_path):
    # last:20 trains the last residual blocks: ReLU6, residual add and depthwise backward.
    _check_against_torch(tmp_path, "mbv2-w0.35", "last:20", batch=1, steps=3, size=64)


@needs_arm
def test_cortex_m4_trains_within_device_limits_and_matches_pytorch(tmp_path):
    res, plan = _check_against_torch(
        tmp_path, "mcu-cnn", "last:2", batch=1, steps=8, target="cortex-m4"
    )
    assert res.sram_limit_bytes == 1024 * 1024  # stm32h743's SRAM from its device file
    assert 0 < res.stack_peak_bytes < 4096
    assert res.peak_sram_bytes == res.static_sram_bytes + res.stack_peak_bytes
    assert res.static_sram_bytes >= res.arena_bytes
    assert res.peak_sram_bytes <= res.sram_limit_bytes
    assert 0 < res.flash_bytes <= res.flash_limit_bytes
    assert 1e5 < res.instructions_per_step < 1e8
    # the generator's own prediction (arena + trainable + labels + runtime reserve), made
    # before building, against the linked and run program
    assert abs(res.peak_sram_bytes / res.codegen_predicted_peak_sram_bytes - 1) < 0.05


@needs_arm
def test_program_larger_than_device_sram_fails_to_link(tmp_path):
    # Prepare: render for a device with only 16 KiB SRAM (the arena alone needs more).
    m, x = _model("mcu-cnn")
    plan = _plan(m, x, "all")
    from edgetrain.capture import capture

    graph = capture(m, x, name="mcu-cnn")
    s = _samples(2, tuple(x.shape[1:]))
    files = render(
        plan,
        graph,
        weights_of(m),
        "cortex-m4",
        TrainingSpec(s, s, steps=1, lr=0.01),
        device_sram_bytes=16 * 1024,
        device_flash_bytes=1 << 20,
    )
    out = tmp_path / "small"
    out.mkdir()
    for k, v in files.items():
        (out / k).write_text(v)
    # Execute / Assert: the linker refuses, and the error names the limits and the fixes.
    with pytest.raises(BuildError, match="16,384 B") as e:
        mcu_run(out)
    assert "overflow" in str(e.value) or "edgetrain:" in str(e.value)


def test_arena_buffers_with_overlapping_lifetimes_never_share_bytes():
    # Prepare
    m, x = _model("mbv2-w0.35", 64)
    plan = _plan(m, x, "last:20", name="mbv2-w0.35")
    from edgetrain.capture import capture

    low = lower(plan, capture(m, x, name="mbv2-w0.35"), weights_of(m))
    # Assert: a valid packing, smaller than giving every buffer its own bytes
    bufs = low.buffers
    for i, a in enumerate(bufs):
        assert a.offset % 8 == 0
        for b in bufs[i + 1 :]:
            if a.first <= b.last and b.first <= a.last:
                assert a.offset + a.nbytes <= b.offset or b.offset + b.nbytes <= a.offset, (a, b)
    assert low.arena_bytes == max(b.offset + b.nbytes for b in bufs)
    assert low.arena_bytes < 0.5 * sum(b.nbytes for b in bufs)
    # frozen prefix: every frozen conv+BN pair before the trained blocks is folded
    assert len(low.folded) > 20


def test_plans_the_c_trainer_cannot_execute_raise_typed_errors():
    m, x = _model("mcu-cnn")
    from edgetrain.capture import capture

    g = capture(m, x, name="mcu-cnn")
    w = weights_of(m)
    live_bn = edgetrain.plan(
        m,
        x,
        device="stm32h743",
        strategy="keep-all",
        policy="all",
        freeze_batch_norm=False,
        name="mcu-cnn",
    )
    with pytest.raises(UnsupportedPlanError, match="freeze_batch_norm=True"):
        lower(live_bn, g, w)
    frozen = _plan(m, x, "all")
    with pytest.raises(UnsupportedPlanError, match="--optimizer sgd"):
        lower(dataclasses.replace(frozen, optimizer="adam"), g, w)
    recompute = dataclasses.replace(
        frozen,
        stages=tuple(
            dataclasses.replace(s, decision=ActivationDecision.RECOMPUTE) for s in frozen.stages
        ),
    )
    with pytest.raises(UnsupportedPlanError, match="recompute or page"):
        lower(recompute, g, w)
    with pytest.raises(UnsupportedPlanError, match="no weights"):
        lower(frozen, g, {})


def test_missing_toolchain_names_the_apt_get_line(tmp_path, monkeypatch):
    m, x = _model("mcu-cnn")
    plan = _plan(m, x, "last:2")
    s = _samples(2, tuple(x.shape[1:]))
    out = compile_project(
        plan, m, x, "cortex-m4", TrainingSpec(s, s, steps=1, lr=0.01), tmp_path / "p"
    )
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(
        ToolchainMissingError, match="apt-get install -y gcc-arm-none-eabi libnewlib-arm-none-eabi"
    ):
        mcu_run(out)


@needs_cc
def test_cli_compile_and_mcu_run_json(tmp_path, capsys):
    pytest.importorskip("edgetrain.data")
    from edgetrain.codegen._cli import register
    from edgetrain.data import load_dataset
    from edgetrain.errors import DatasetMissingError

    try:
        load_dataset("fashion-mnist:5-9", split="test", limit=4)
    except DatasetMissingError:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    # Prepare: a plan file and the two subcommands on a fresh parser
    m, x = build_model("mcu-cnn")
    plan = edgetrain.plan(m, x, device="nrf52840", policy="last:2", executor="c", name="mcu-cnn")
    (tmp_path / "plan.json").write_text(plan.to_json())
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="command", required=True))
    out = tmp_path / "proj"
    # Execute
    a = ap.parse_args(
        [
            "compile",
            "--layout",
            "demo",
            "--plan",
            str(tmp_path / "plan.json"),
            "--target",
            "host",
            "-o",
            str(out),
            "--steps",
            "20",
            "--train-samples",
            "20",
            "--test-samples",
            "10",
            "--log-every",
            "1",
            "--json",
        ]
    )
    assert a.fn(a) == 0
    compiled = json.loads(capsys.readouterr().out)
    a = ap.parse_args(["mcu-run", str(out), "--json"])
    assert a.fn(a) == 0
    ran = json.loads(capsys.readouterr().out)
    # Assert
    assert compiled["trainable_params"] == list(plan.trainable())
    assert len(ran["losses"]) == 20 and all(np.isfinite(ran["losses"]))
    for k in (
        "static_sram_bytes",
        "stack_peak_bytes",
        "peak_sram_bytes",
        "flash_bytes",
        "sram_limit_bytes",
        "instructions_per_step",
        "accuracy_before",
        "accuracy_after",
    ):
        assert k in ran
    assert ran["test_samples"] == 10


CALIBRATION_MAIN = r"""
#include "et_model.h"
int main(void) {
    uint32_t n = 1000000u;
    const uint64_t t0 = et_ticks();
    __asm__ volatile("1: subs %0, %0, #1\n bne 1b" : "+r"(n));  /* 2 instructions x 1e6 */
    const uint64_t t1 = et_ticks();
    et_puts("TICKS "); et_put_u32((uint32_t)(t1 - t0)); et_puts("\n");
    return 0;
}
"""


@needs_arm
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m7"])
def test_instruction_counter_counts_a_known_loop(tmp_path, target):
    # Prepare: the generated platform layer and linker script around a loop of 2,000,000
    # instructions whose count is known independently of QEMU's timers.
    import subprocess

    from edgetrain.codegen._run import build_project, run_command
    from edgetrain.codegen._targets import get_target

    m, x = _model("mcu-cnn")
    s = _samples(2, tuple(x.shape[1:]))
    out = compile_project(
        _plan(m, x, "last:2"), m, x, target, TrainingSpec(s, s, steps=1, lr=0.01), tmp_path / "cal"
    )
    (out / "main.c").write_text(CALIBRATION_MAIN)
    tgt = get_target(target)
    # Execute
    r = subprocess.run(
        run_command(tgt, build_project(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    ticks = int(r.stdout.split("TICKS")[1].split()[0])
    # Assert: ticks x (1e9 / counter_hz) is the instruction count, to one tick
    assert abs(ticks * 1e9 / tgt.counter_hz - 2_000_000) <= 1e9 / tgt.counter_hz


# ------------------------------------------------------------------------------ int8 (QAS)


def _int8_case(
    name: str,
    size: int | None,
    trainable: list[str],
    steps: int,
    lr: float,
    big_head: bool,
    target: str,
    tmp_path,
):
    import torch.nn.functional as F

    from edgetrain.codegen import Int8Spec, render_int8
    from edgetrain.quant import QuantModel, QuantSGD, WeightStorage, quantize

    # Prepare: an int8 graph (edgetrain.quant), samples, and the C project for it
    m, x = build_model(name)
    if size:
        x = x[..., :size, :size].contiguous()
    m.eval()
    g = torch.Generator().manual_seed(0)
    if big_head:  # logits that are not all one int8 level, so gradients reach the weights
        with torch.no_grad():
            m.classifier.weight.normal_(0, 0.3, generator=g)
    qg = quantize(m, torch.randn(8, *x.shape[1:], generator=g), name=name)
    xs, ys = torch.randn(6, *x.shape[1:], generator=g), torch.randint(0, 10, (6,), generator=g)
    q = qg.quantize_input(xs).numpy()
    files = render_int8(
        qg,
        trainable,
        target,
        Int8Spec(q, ys.numpy(), q, ys.numpy(), steps=steps, lr=lr, dump_params=True),
        device_sram_bytes=1 << 20,
        device_flash_bytes=2 << 20,
    )
    out = tmp_path / "int8"
    out.mkdir()
    for k, v in files.items():
        (out / k).write_text(v)
    # Execute: C, then the PyTorch int8 simulation (WeightStorage.INT8, QAS)
    res = mcu_run(out)
    qm = QuantModel(qg, trainable=trainable, storage=WeightStorage.INT8)
    opt = QuantSGD(qm, lr=lr, qas=True)
    for s in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(qm(xs[[s % 6]]), ys[[s % 6]]).backward()
        opt.step()
    return res, qm, qg


@needs_cc
@pytest.mark.parametrize("case", ["mcu-cnn", "mbv2-residual"])
def test_host_int8_training_is_bit_exact_with_the_pytorch_int8_simulation(tmp_path, case):
    if case == "mcu-cnn":
        res, qm, qg = _int8_case(
            "mcu-cnn", None, ["features.3.0", "classifier"], 6, 0.05, False, "host", tmp_path
        )
    else:  # the gradient crosses two residual adds, depthwise and ReLU6 clamps
        res, qm, qg = _int8_case(
            "mbv2-w0.35",
            32,
            [
                "features.15.conv.0.0",
                "features.15.conv.1.0",
                "features.15.conv.2.0",
                "features.16.conv.1.0",
                "features.16.conv.2.0",
                "features.18.0",
                "classifier",
            ],
            3,
            0.001,
            True,
            "host",
            tmp_path,
        )
    # Assert: every trained int8 weight and int32 bias equals the simulation's, and training
    # changed some of them
    assert_int8_params_equal_simulation(res, qm, qg)


@needs_arm
def test_cortex_m4_int8_training_runs_and_reports_memory(tmp_path):
    res, qm, _ = _int8_case("mcu-cnn", None, ["classifier"], 4, 0.05, False, "cortex-m4", tmp_path)
    assert res.peak_sram_bytes == res.static_sram_bytes + res.stack_peak_bytes
    assert abs(res.peak_sram_bytes / res.codegen_predicted_peak_sram_bytes - 1) < 0.05
    # float gradients on the MCU: the int8 weights match the float64 simulation closely
    w, b = res.params["classifier"]
    want_w = qm.integer_weights()["classifier"][0].reshape(-1).to(torch.int64)
    assert (torch.tensor(w) - want_w).abs().max() <= 1


@needs_arm
@pytest.mark.parametrize("policy", ["last:2", "all"])
def test_planner_prediction_for_the_c_executor_matches_the_compiled_program(tmp_path, policy):
    # Prepare: a plan for the C executor on the nRF52840 (its prediction is made before any C
    # exists, from shapes only).
    m, x = _model("mcu-cnn")
    plan = edgetrain.plan(
        m, x, device="nrf52840", strategy="auto", policy=policy, executor="c", name="mcu-cnn"
    )
    samples = _samples(4, tuple(x.shape[1:]))
    spec = TrainingSpec(samples, samples, steps=3, lr=0.05)
    # Execute: compile for the Cortex-M4 with the device's limits and run under QEMU
    res = mcu_run(compile_project(plan, m, x, "cortex-m4", spec, tmp_path / "c", device="nrf52840"))
    # Assert: the linked program's measured peak (static + painted stack) within 5 %
    assert plan.executor is edgetrain.planner.Executor.C and plan.freeze_batch_norm
    assert res.peak_sram_bytes <= plan.budget_bytes
    assert abs(res.peak_sram_bytes / plan.predicted_peak_bytes - 1) < 0.05


def test_c_executor_plans_refuse_what_the_c_trainer_cannot_run():
    m, x = _model("mcu-cnn")
    with pytest.raises(edgetrain.errors.InvalidArgumentError, match="plain SGD"):
        edgetrain.plan(m, x, device="nrf52840", executor="c", optimizer="momentum")
    with pytest.raises(edgetrain.errors.InvalidArgumentError, match="no recompute or paging"):
        edgetrain.plan(m, x, device="nrf52840", executor="c", strategy="sqrt")
    with pytest.raises(edgetrain.PlanInfeasibleError, match="C executor"):
        edgetrain.plan(m, x, device="nrf52840", executor="c", precision="fp32", budget_bytes=4096)


class _OddNet(torch.nn.Module):
    """Shapes none of the zoo's int8 models has: 3 input channels, 13x11 images, a stride-1 3x3,
    a stride-2 depthwise, a 20-channel 3x3 at stride 1 and one at stride 2 to 10 channels."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn

        def block(ci, co, k, s, g=1):
            conv = nn.Conv2d(ci, co, k, s, k // 2, groups=g, bias=False)
            return nn.Sequential(conv, nn.BatchNorm2d(co), nn.ReLU())

        self.features = nn.Sequential(
            block(3, 12, 3, 1), block(12, 12, 3, 2, 12), block(12, 20, 1, 1),
            block(20, 20, 3, 1), block(20, 10, 3, 2),
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(10, 7)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@needs_arm
def test_cortex_m4_int8_full_training_of_unusual_shapes_matches_the_host(tmp_path):
    # Prepare: full int8 QAS training of a CNN whose layers take the DSP kernels' odd paths
    # (remainder channels and columns, odd sizes, both strides); the host build is bit for bit
    # the edgetrain.quant simulation (test above), so it is the oracle
    torch.manual_seed(1)
    m, x = _OddNet(), torch.randn(1, 3, 13, 11)
    plan, s = full_training_case(m, x, "odd-cnn", 4, 7)
    # Execute: 4 steps on the host and on the Cortex-M4 under QEMU
    runs = {
        t: mcu_run(
            compile_int8_project(
                plan, m, s, s, t, tmp_path / t, steps=4, lr=0.05, dump_params=True
            )[0]
        )  # fmt: skip
        for t in ("host", "cortex-m4")
    }
    # Assert: the same losses to float precision and every trained int8 parameter within one
    # step of rounding (the M4's backward is float where the host's is double), most equal
    host, m4 = runs["host"], runs["cortex-m4"]
    assert host.losses == pytest.approx(m4.losses, rel=1e-5)
    diffs = [
        abs(a - b)
        for name in host.params
        for u, v in zip(host.params[name], m4.params[name])
        for a, b in zip(u, v)
    ]
    assert len(diffs) > 3000 and max(diffs) <= 1 and sum(d > 0 for d in diffs) < 0.01 * len(diffs)
