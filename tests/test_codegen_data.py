"""`edgetrain compile --data`: the user's samples (any rank) baked into flash, split into
training and held-out samples; 1-D models (Conv1d, BatchNorm1d, pooling) in C against PyTorch;
the flash check and the dropout refusal as typed errors."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from _toolchain import needs_arm, needs_cc

import edgetrain
from edgetrain.codegen import (
    SampleSet,
    TrainingSpec,
    compile_project,
    mcu_run,
    normalised,
    render,
    weights_of,
)
from edgetrain.errors import DeviceLimitError, UnsupportedKernelError
from edgetrain.runtime import Trainer

MODEL_FILE = """
import torch
import torch.nn as nn


def make(num_classes=6):
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv1d(3, 8, 7, padding=3),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.MaxPool1d(4),
        nn.Conv1d(8, 16, 5, padding=4, dilation=2),
        nn.ReLU(),
        nn.MaxPool1d(4),
        nn.Flatten(),
        nn.Linear(16 * 8, num_classes),
    )
    return m, torch.randn(1, 3, 128)
"""


def _sensor_set(n_per_class: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """6 classes of 3-axis windows (3 x 128): a class's sinusoid frequency, its dominant axis,
    random phases, and noise; stored sorted by class (as sensor logs often are)."""
    g = np.random.default_rng(seed)
    t = np.arange(128) / 128.0
    xs, ys = [], []
    for c, f in enumerate((2, 3, 5, 7, 10, 13)):
        amp = np.roll(np.array([1.0, 0.6, 0.3]), c % 3)
        for _ in range(n_per_class):
            ph = g.uniform(0, 2 * np.pi, 3)
            x = amp[:, None] * np.sin(2 * np.pi * f * t[None, :] + ph[:, None])
            xs.append(x + 0.7 * g.standard_normal((3, 128)))
            ys.append(c)
    return np.stack(xs).astype(np.float32), np.array(ys, dtype=np.int64)


@pytest.fixture
def sensor(tmp_path):
    """The data (.npz), the model file and a C plan for the nRF52840 (Cortex-M4F)."""
    x, y = _sensor_set()
    np.savez(tmp_path / "sensor.npz", x=x, y=y)
    (tmp_path / "har.py").write_text(MODEL_FILE)
    spec = f"{tmp_path / 'har.py'}:make"
    from edgetrain.models import build_model

    m, ex = build_model(spec)
    plan = edgetrain.plan(m, ex, device="nrf52840", executor="c", policy="last:2", name=spec)
    (tmp_path / "plan.json").write_text(plan.to_json())
    return tmp_path, spec


def _cli(args: list[str], capsys) -> dict:
    from edgetrain.codegen._cli import register

    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="command", required=True))
    a = ap.parse_args(args)
    assert a.fn(a) == 0
    return json.loads(capsys.readouterr().out)


def _compile_and_run(tmp_path, spec: str, target: str, capsys) -> tuple[dict, dict]:
    out = tmp_path / f"proj-{target}"
    compiled = _cli(
        [
            "compile",
            "--layout",
            "demo",
            "--plan",
            str(tmp_path / "plan.json"),
            "--model",
            spec,
            "--data",
            str(tmp_path / "sensor.npz"),
            "--target",
            target,
            "-o",
            str(out),
            "--steps",
            "600",
            "--lr",
            "0.05",
            "--log-every",
            "50",
            "--json",
        ],
        capsys,
    )
    return compiled, _cli(["mcu-run", str(out), "--json"], capsys)


@needs_cc
def test_sensor_windows_train_through_compile_data_on_the_host(sensor, capsys):
    # Prepare: 360 windows of 3 x 128, 10 % held out (seeded, per class)
    tmp_path, spec = sensor
    # Execute: compile --data x.npz for the host, then mcu-run
    compiled, ran = _compile_and_run(tmp_path, spec, "host", capsys)
    # Assert: the held-out split is the test samples, and the model learns (chance: 1/6)
    assert compiled["data"]["train_samples"] == 324 and compiled["data"]["test_samples"] == 36
    assert ran["test_samples"] == 36 and ran["metric"] == "accuracy"
    assert "held-out" in ran["evaluated_on"] and ran["data_source"].endswith("sensor.npz")
    assert ran["losses"][-1] < ran["losses"][0]
    assert ran["accuracy_after"] > ran["accuracy_before"]
    assert ran["accuracy_after"] >= 0.6


@needs_arm
def test_sensor_windows_train_through_compile_data_on_cortex_m4(sensor, capsys):
    # Prepare / Execute: the same project for the nRF52840's core, run under QEMU
    tmp_path, spec = sensor
    _, host = _compile_and_run(tmp_path, spec, "host", capsys)
    compiled, ran = _compile_and_run(tmp_path, spec, "cortex-m4", capsys)
    # Assert: it learns, within the device's memory, with the host's arithmetic
    assert ran["accuracy_after"] >= 0.6 and ran["accuracy_after"] > ran["accuracy_before"]
    assert ran["peak_sram_bytes"] <= ran["sram_limit_bytes"] == 256 * 1024
    floats = (324 + 36) * 3 * 128 * 4
    assert floats < ran["flash_bytes"] <= ran["flash_limit_bytes"] == 1024 * 1024
    np.testing.assert_allclose(ran["losses"], host["losses"], rtol=1e-3, atol=1e-4)
    assert ran["instructions_per_step"] > 0


# -- 1-D operators against PyTorch -------------------------------------------------------------
def _conv1d_model() -> tuple[torch.nn.Module, torch.Tensor]:
    nn = torch.nn
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv1d(3, 8, 5, padding=2),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.MaxPool1d(4),
        nn.Conv1d(8, 8, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.AvgPool1d(2),
        nn.Flatten(),
        nn.Linear(8 * 16, 6),
    )
    with torch.no_grad():  # non-trivial running statistics, so folding BN1d is tested
        m[1].running_mean.uniform_(-0.2, 0.2)
        m[1].running_var.uniform_(0.5, 1.5)
    return m, torch.randn(1, 3, 128)


@needs_cc
@pytest.mark.parametrize(("policy", "batch"), [("last:2", 1), ("all", 1), ("all", 2)])
def test_conv1d_bn1d_pooling_in_c_match_pytorch(tmp_path, policy, batch):
    # Prepare: the same start for both; float samples as compile --data bakes them
    m, x = _conv1d_model()
    plan = edgetrain.plan(
        m,
        x,
        device="nrf52840",
        strategy="keep-all",
        policy=policy,
        batch_size=batch,
        freeze_batch_norm=True,
        name="conv1d",
        budget_bytes=1 << 40,
    )
    g = np.random.default_rng(0)
    s = SampleSet(
        g.standard_normal((4 * batch, 3, 128)).astype(np.float32), g.integers(0, 6, 4 * batch)
    )
    steps = 5
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    # Execute: the C program, then PyTorch's Trainer over the same samples
    spec = TrainingSpec(s, s, steps=steps, lr=0.05, dump_params=True)
    res = mcu_run(compile_project(plan, m, x, "host", spec, tmp_path / "c"))
    xs, ys, losses = normalised(s), torch.from_numpy(s.labels), []
    with Trainer(m, plan, lr=0.05) as t:
        for k in range(steps):
            idx = [(k * batch + j) % len(ys) for j in range(batch)]
            losses.append(t.step(xs[idx], ys[idx]))
    # Assert: the same losses and trained parameters
    named = dict(m.named_parameters())
    assert set(res.params) == set(plan.trainable())
    if policy == "all":
        assert {"0.weight", "1.weight", "4.weight"} <= set(res.params)
    for name, values in res.params.items():
        want = named[name].detach().reshape(-1)
        assert not torch.equal(want, before[name].reshape(-1)), f"{name} did not train"
        torch.testing.assert_close(torch.tensor(values), want, rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(torch.tensor(res.losses), torch.tensor(losses), rtol=1e-4, atol=1e-5)


# -- typed errors ------------------------------------------------------------------------------
def test_samples_that_overflow_the_devices_flash_name_the_numbers_and_the_fix(tmp_path):
    # Prepare: 600 + 100 float windows (1,537 B each with the label) for a 1 MiB device
    m, x = _conv1d_model()
    plan = edgetrain.plan(m, x, device="nrf52840", executor="c", policy="last:2", name="conv1d")
    g = np.random.default_rng(0)
    tr = SampleSet(g.standard_normal((600, 3, 128)).astype(np.float32), g.integers(0, 6, 600))
    te = SampleSet(g.standard_normal((100, 3, 128)).astype(np.float32), g.integers(0, 6, 100))
    # Execute
    with pytest.raises(DeviceLimitError) as e:
        compile_project(plan, m, x, "cortex-m4", TrainingSpec(tr, te, 1, 0.01), tmp_path / "o")
    # Assert: the count, bytes per sample, total, the flash, and the largest N that fits
    msg = str(e.value)
    weights = sum(v.size * 4 for k, v in weights_of(m).items() if "num_batches" not in k)
    assert "600 training + 100 test samples x 1,537 B" in msg
    assert f"{700 * 1537:,} B" in msg and "1,048,576 B" in msg and "nrf52840" in msg
    n = int(msg.split("--train-samples ")[1].split()[0])
    assert 0 < n < 600
    fit = (n + 100) * 1537 + weights + 16 * 1024
    assert fit <= 1 << 20 < fit + 1537 + 4 * 1024  # the largest N, up to folding BN
    assert not (tmp_path / "o").exists()


def test_a_device_whose_flash_holds_no_samples_says_so(tmp_path):
    m, x = _conv1d_model()
    plan = edgetrain.plan(m, x, device="nrf52840", executor="c", policy="last:2", name="c")
    from edgetrain.capture import capture

    s = SampleSet(np.zeros((4, 3, 128), np.float32), np.zeros(4, np.int64))
    with pytest.raises(DeviceLimitError, match="no room for samples") as e:
        render(
            plan,
            capture(m, x, name="c"),
            weights_of(m),
            "cortex-m4",
            TrainingSpec(s, s, 1, 0.01),
            device_sram_bytes=1 << 20,
            device_flash_bytes=8 * 1024,
            device_name="tinyboard",
        )
    assert "tinyboard" in str(e.value) and "8,192 B" in str(e.value)


@pytest.mark.parametrize("policy", ["last:1", "all"])
def test_dropout_plans_and_compiles_for_c_with_its_backward_where_trained(tmp_path, policy):
    # Prepare: dropout before the trained head (last:1), or inside the trained part (all)
    nn = torch.nn
    layers = [nn.Conv1d(3, 8, 5, padding=2), nn.ReLU(), nn.MaxPool1d(4), nn.Flatten()]
    layers += [nn.Dropout(0.2), nn.Linear(8 * 32, 6)]
    m, x = nn.Sequential(*layers), torch.randn(1, 3, 128)
    s = SampleSet(np.zeros((2, 3, 128), np.float32), np.zeros(2, np.int64))
    # Execute: planning for C and compiling (NOTE [ Dropout in C ])
    plan = edgetrain.plan(m, x, device="nrf52840", executor="c", policy=policy, name="d")
    out = compile_project(plan, m, x, "host", TrainingSpec(s, s, 1, 0.01), tmp_path / "o")
    # Assert: the mask is drawn on the device; its backward only where a gradient passes
    text = (out / "et_model.c").read_text()
    assert "dropout_fwd(" in text and "et_rng" in text
    assert ("dropout_bwd(" in text) == (policy == "all")


def test_per_channel_dropout_is_refused_with_the_reason():
    # Prepare: Dropout1d draws one mask value per channel (a broadcast mask)
    nn = torch.nn
    m = nn.Sequential(nn.Conv1d(3, 8, 5), nn.Dropout1d(0.2), nn.Flatten(), nn.Linear(8 * 124, 6))
    # Execute / Assert
    with pytest.raises(UnsupportedKernelError, match="not element-wise dropout"):
        edgetrain.plan(m, torch.randn(1, 3, 128), device="nrf52840", executor="c", name="d1")


def test_float_samples_of_any_rank_and_uint8_pixels_are_baked_flat(tmp_path):
    from edgetrain.codegen import samples_from

    vec = samples_from(torch.randn(5, 32), torch.arange(5))
    assert vec.is_float and vec.sample_bytes == 32 * 4 + 1
    x = torch.randint(0, 256, (3, 1, 4, 4)).float() / 255.0
    px = samples_from((x - 0.2860) / 0.3530, torch.arange(3), "fashion-mnist")
    assert not px.is_float and px.pixels.dtype == np.uint8 and px.sample_bytes == 17
    with pytest.raises(Exception, match="class"):
        samples_from(torch.randn(3, 4), torch.randn(3))


def test_integer_samples_bake_as_int32_token_ids_and_bad_ids_are_refused():
    # Prepare: token ids as a user's .npz holds them (int64), and ids int32 cannot hold
    from edgetrain.codegen._compile import normalised, samples_from
    from edgetrain.errors import UnsupportedPlanError

    x = torch.tensor([[3, 999, 0], [7, 1, 2]], dtype=torch.int64)
    y = torch.tensor([1, 0])
    # Execute
    s = samples_from(x, y)
    # Assert: the flash holds int32 ids; the host reference embeds the same ids
    assert s.is_tokens and s.pixels.dtype == np.int32
    assert torch.equal(normalised(s), x)
    for bad in (x - 5, x + 2**31):
        with pytest.raises(UnsupportedPlanError, match="token ids as int32"):
            samples_from(bad, y)
