"""The user's own data through `edgetrain plan` + `edgetrain train` (issue 13): a 3-axis
sensor set as .npz, .csv and a Python dataset; an image folder; an autoencoder on vectors."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
from PIL import Image

from edgetrain.cli import main

SENSOR_MODEL = textwrap.dedent('''
    import torch
    from torch import nn


    def make():
        """A small 1-D CNN for 3-axis IMU windows (3 x 128), 6 activities."""
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv1d(3, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(4),
            nn.Conv1d(16, 32, 5, padding=2), nn.BatchNorm1d(32), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, 6),
        )
        return model, torch.randn(1, 3, 128)
''')


def _sensor(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Six activities told apart by their dominant frequency, three axes, noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, n)
    t = np.arange(128) / 128.0
    f = np.array([2, 4, 6, 8, 10, 12])[y][:, None, None] * (1 + 0.1 * np.arange(3))[None, :, None]
    phase = rng.uniform(0, 2 * np.pi, (n, 3, 1))
    x = np.sin(2 * np.pi * f * t + phase) + 0.5 * rng.standard_normal((n, 3, 128))
    return x.astype(np.float32), y.astype(np.int64)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def sensor(tmp_path_factory):
    """The model file, its plan on the nRF52840 and the data in three forms."""
    root = tmp_path_factory.mktemp("sensor")
    (root / "sensor_model.py").write_text(SENSOR_MODEL)
    x, y = _sensor()
    np.savez(root / "har.npz", x=x, y=y)
    header = ",".join([f"v{i}" for i in range(384)] + ["label"])
    rows = [",".join(f"{v:.6g}" for v in xi.reshape(-1)) + f",{yi}" for xi, yi in zip(x, y)]
    (root / "har.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    (root / "har_data.py").write_text(
        "import numpy as np, torch\n"
        "def make_dataset():\n"
        f"    d = np.load({str(root / 'har.npz')!r})\n"
        "    return torch.utils.data.TensorDataset(torch.tensor(d['x']), torch.tensor(d['y']))\n"
    )
    main(["plan", "--model", f"{root / 'sensor_model.py'}:make", "--device", "nrf52840",
          "--batch-size", "8", "-o", str(root / "plan.json")])  # fmt: skip
    return root


@pytest.mark.parametrize("form", ["har.npz", "har.csv", "har_data.py:make_dataset"])
def test_a_sensor_set_in_any_form_trains_a_conv1d_model_on_the_nrf52840(capsys, sensor, form):
    # Execute
    code, out, err = run(
        capsys, "train", "--plan", sensor / "plan.json", "--trust-plan",
        "--data", sensor / form if ":" not in form else f"{sensor / form}",
        "--steps", "300", "--lr", "0.1", "--json",
    )  # fmt: skip
    # Assert: held-out accuracy up by >= 30 points to >= 60 %, the peak within the budget
    assert code == 0, err
    r = json.loads(out)
    assert r["metric"] == "accuracy" and r["held_out_samples"] == 60
    assert r["metric_after"] >= 0.6 and r["metric_after"] - r["metric_before"] >= 0.3, r
    assert r["measured_peak_bytes"] <= r["budget_bytes"] == 256 * 1024


def test_an_image_folder_trains_the_built_in_mcu_cnn(capsys, tmp_path):
    # Prepare: two classes of 28x28 PNGs (bright top half against bright bottom half)
    rng = np.random.default_rng(0)
    for cls, rows in (("top", slice(0, 14)), ("bottom", slice(14, 28))):
        (tmp_path / "img" / cls).mkdir(parents=True)
        for i in range(40):
            a = (rng.uniform(0, 60, (28, 28))).astype(np.uint8)
            a[rows] += 150
            Image.fromarray(a, mode="L").save(tmp_path / "img" / cls / f"{i}.png")
    run(capsys, "plan", "--model", "mcu-cnn", "--device", "nrf52840", "--batch-size", "4",
        "-o", tmp_path / "p.json")  # fmt: skip
    # Execute
    code, out, err = run(capsys, "train", "--plan", tmp_path / "p.json", "--data",
                         tmp_path / "img", "--steps", "60", "--lr", "0.05", "--val-split", "0.25",
                         "--json")  # fmt: skip
    # Assert: the classes are learned on images it did not train on
    assert code == 0, err
    r = json.loads(out)
    assert r["held_out_samples"] == 20 and r["metric_after"] >= 0.9, r


def test_an_autoencoder_trains_on_vectors_and_reports_reconstruction_error(capsys, tmp_path):
    # Prepare: 128-d vibration features from 4 latent sources (no labels: reconstruction)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((400, 4)) @ rng.standard_normal((4, 128)) / 2).astype(np.float32)
    np.savez(tmp_path / "vib.npz", x=x)
    run(capsys, "plan", "--model", "mlp-autoencoder", "--device", "nrf52840", "--batch-size",
        "8", "-o", tmp_path / "p.json")  # fmt: skip
    # Execute
    code, out, err = run(capsys, "train", "--plan", tmp_path / "p.json", "--data",
                         tmp_path / "vib.npz", "--steps", "200", "--lr", "0.1", "--json")  # fmt: skip
    # Assert: the plan's mse loss; held-out reconstruction error halves at least
    assert code == 0, err
    r = json.loads(out)
    assert r["metric"] == "loss" and r["metric_after"] < 0.5 * r["metric_before"], r


def test_data_inspect_says_what_a_source_holds_and_whether_it_fits(capsys, sensor):
    code, out, _ = run(capsys, "data", "inspect", sensor / "har.npz", "--json")
    d = json.loads(out)
    assert code == 0 and d["n_samples"] == 600 and d["sample_shape"] == [3, 128]
    code, out, _ = run(capsys, "data", "inspect", "fashion-mnist:5-9", "--model", "kws-dscnn")
    assert code == 1 and "--resize" in out
