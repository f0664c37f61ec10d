"""The `edgetrain` command: devices, profile, and a clear error for every bad input."""

import json
import subprocess
import sys
import textwrap

import pytest

from edgetrain.cli import main

REQUIRED_KEYS = {
    "model",
    "device",
    "batch_size",
    "params_bytes",
    "grads_bytes",
    "optimizer_bytes",
    "activation_bytes",
    "peak_bytes",
    "flops_forward",
    "flops_backward",
    "latency_s",
    "energy_j",
    "fits",
    "layers",
}
LAYER_KEYS = {"name", "op", "output_shape", "params_bytes", "activation_bytes", "flops"}


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_devices_json_lists_the_catalog(capsys):
    code, out, _ = run(capsys, "devices", "--json")
    names = {d["name"] for d in json.loads(out)}
    assert code == 0
    assert {
        "samd21",
        "nrf52840",
        "stm32f746",
        "esp32",
        "stm32h743",
        "rpi-zero-2w",
        "rpi4",
        "jetson-nano",
        "jetson-tx2",
        "snapdragon-865",
    } <= names


def test_devices_table(capsys):
    code, out, _ = run(capsys, "devices")
    assert code == 0 and "nrf52840" in out and "snapdragon-865" in out


def test_profile_json_has_the_documented_keys(capsys):
    code, out, _ = run(
        capsys,
        "profile",
        "--model",
        "mcu-cnn",
        "--device",
        "nrf52840",
        "--batch-size",
        "2",
        "--measure",
        "--json",
    )
    d = json.loads(out)
    assert code == 0
    assert REQUIRED_KEYS <= set(d)
    assert {"measured_activation_bytes", "measured_peak_bytes"} <= set(d)
    assert d["batch_size"] == 2 and d["device"] == "nrf52840" and d["model"] == "mcu-cnn"
    assert all(LAYER_KEYS <= set(layer) for layer in d["layers"])
    assert sum(layer["activation_bytes"] for layer in d["layers"]) == d["activation_bytes"]
    assert d["fits"] == (d["peak_bytes"] <= 256 * 1024)


def test_profile_plot_writes_png(capsys, tmp_path):
    png = tmp_path / "mem.png"
    code, _, _ = run(
        capsys, "profile", "--model", "mcu-cnn", "--device", "stm32f746", "--plot", str(png)
    )
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


USER_MODEL = textwrap.dedent("""
    import torch, torch.nn as nn

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean((2, 3)))

    def factory():
        return Tiny(), torch.randn(1, 2, 10, 10)

    def sorts():
        class S(nn.Module):
            def forward(self, x):
                return torch.cumsum(x, 1)
        return S(), torch.randn(1, 5)
""")


def test_user_model_file_profiles_unchanged(capsys, tmp_path):
    f = tmp_path / "my_model.py"
    f.write_text(USER_MODEL)
    code, out, _ = run(
        capsys, "profile", "--model", f"{f}:factory", "--device", "esp32", "--measure", "--json"
    )
    d = json.loads(out)
    assert code == 0
    assert d["params_bytes"] == (4 * 2 * 9 + 4 + 3 * 4 + 3) * 4
    assert d["activation_bytes"] == d["measured_activation_bytes"]


def test_unknown_model_lists_valid_names(capsys):
    code, _, err = run(capsys, "profile", "--model", "resnet-9000", "--device", "rpi4")
    assert code == 2
    assert "resnet-9000" in err and "mcu-cnn" in err and "file.py:factory" in err


def test_unknown_device_lists_valid_names(capsys):
    code, _, err = run(capsys, "profile", "--model", "mcu-cnn", "--device", "pdp-11")
    assert code == 2
    assert "pdp-11" in err and "nrf52840" in err


def test_malformed_device_file_names_field_value_and_unit(capsys, tmp_path):
    from pathlib import Path

    import edgetrain.cost as cost

    src = Path(cost.__file__).parent / "devices" / "nrf52840.toml"
    bad = tmp_path / "board.toml"
    bad.write_text(src.read_text().replace("ram_bytes = ", "ram_bytes = -", 1))
    code, _, err = run(capsys, "profile", "--model", "mcu-cnn", "--device", str(bad))
    assert code == 2
    assert "ram_bytes" in err and "-" in err and "bytes" in err


def test_unsupported_op_names_the_op(capsys, tmp_path):
    f = tmp_path / "m.py"
    f.write_text(USER_MODEL)
    code, _, err = run(capsys, "profile", "--model", f"{f}:sorts", "--device", "rpi4")
    assert code == 2
    assert "UnsupportedOpError" in err and "cumsum" in err


@pytest.mark.parametrize("bad", ["0", "-3", "x"])
def test_batch_size_must_be_positive(bad):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgetrain.cli",
            "profile",
            "--model",
            "mcu-cnn",
            "--device",
            "rpi4",
            "--batch-size",
            bad,
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "batch" in r.stderr.lower() and bad in r.stderr


def test_plan_strategy_names_every_surveyed_system():
    from edgetrain.cli import PLANNER_STRATEGIES, SYSTEM_STRATEGIES
    from edgetrain.strategies._catalog import system_names

    assert set(SYSTEM_STRATEGIES) | {"auto"} == set(system_names())
    assert not set(SYSTEM_STRATEGIES) & set(PLANNER_STRATEGIES)


@pytest.mark.parametrize("system", ["tinyol", "tte"])
def test_plan_with_a_system_strategy_is_that_systems_preparation(capsys, system):
    # Prepare: the system's own preparation stage, called directly (the oracle)
    import torch

    from edgetrain.data import load_dataset
    from edgetrain.models import build_model
    from edgetrain.strategies._catalog import get_system

    torch.manual_seed(0)
    model, x = build_model("mcu-cnn")
    kw = {}
    if system == "tte":
        cal = load_dataset("fashion-mnist", split="train", limit=16)
        kw = {"calibration": cal.x, "analysis": (cal.x, cal.y)}
    want = get_system(system).prepare(
        model, x, device="nrf52840", batch_size=1, name="mcu-cnn", **kw
    )
    # Execute
    rc = main(
        ["plan", "--model", "mcu-cnn", "--device", "nrf52840", "--strategy", system, "--json"]
    )
    d = json.loads(capsys.readouterr().out)
    # Assert: same prediction, same trainable set, the system named
    assert rc == 0 and d["system"] == system
    assert d["predicted_peak_bytes"] == want.predicted_peak_bytes
    got = {q["name"] for q in d["params"] if q["decision"] != "frozen"}
    assert got == set(want.plan.trainable())


def test_models_lists_every_built_in_model_with_its_input_and_loss(capsys):
    # Execute
    code, out, _ = run(capsys, "models", "--json")
    # Assert: the reference models and the zoo, each with what data and loss it takes
    from edgetrain.models import ZOO, model_names

    listed = {m["name"]: m for m in json.loads(out)}
    assert code == 0 and list(listed) == model_names()
    for name, e in ZOO.items():
        assert listed[name]["loss"] == e.loss and listed[name]["note"]
        assert tuple(listed[name]["input_shape"]) == e.input_shape
    assert listed["text-gru"]["input_dtype"] == "int64"
