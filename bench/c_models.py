"""Benchmark: zoo models a user brings, compiled for the Cortex-M4 on the nRF52840 profile and
trained on their own data under QEMU (mps2-an386).

    .venv/bin/python bench/c_models.py [--out results/c_models] [--models M ...]

For each model: a synthetic "user" data set written as an .npz (class-dependent patterns plus
noise, seeded), then the CLI as a user runs it:
    edgetrain plan --model M --device nrf52840 --executor c --batch-size 1 -o M.json
    edgetrain compile --plan M.json --data M.npz --target cortex-m4 --layout demo -o M/
    edgetrain mcu-run M/ --json
(conv models: `--weights`, the zoo model with batch-norm statistics of that data,
`calibrated_weights`), and the measured peak SRAM (static .data + .bss from the ELF + the painted stack's high-water
mark) against the plan's predicted peak and the device's SRAM, the loss over the steps and the
held-out accuracy before and after.

`mlp-autoencoder` (MSE) cannot get a plan for the C executor: `edgetrain.prepare` refuses
losses other than cross-entropy for it (prepare/_request.py), so it is planned for the PyTorch
executor and compiled through the Python API (`compile_project`, which does not check that
plan's prediction); its measured peak is set beside the C executor's own prediction
(`codegen_predicted_peak_sram_bytes`, the number `C_FP32_MEMORY` gives the planner).

Writes c_models.json and c_models.md under --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ET = str(Path(sys.executable).with_name("edgetrain"))
DEVICE = "nrf52840"

# model -> (input shape, classes; 0: reconstruction), train / test samples baked, SGD steps, lr
MODELS = {
    "kws-dscnn": ((1, 49, 10), 12, 48, 24, 600, 0.05),
    "har-cnn1d": ((3, 128), 6, 120, 60, 150, 0.01),
    "mlp-784": ((784,), 10, 120, 40, 400, 0.05),  # 784 float32s a sample: flash holds ~160
    "mlp-autoencoder": ((128,), 0, 200, 100, 3000, 0.05),
}


def make_data(path: Path, shape: tuple[int, ...], classes: int, n: int) -> None:
    """Seeded class-dependent patterns + noise (classification; for (C, time, bins) inputs a
    class's pattern is one profile over the bins, the same at every time step), or low-rank vectors
    (reconstruction), as data.npz with arrays x, y."""
    g = np.random.default_rng(0)
    if classes:
        y = np.arange(n) % classes
        centres = g.normal(size=(classes, *shape)).astype(np.float32)
        if len(shape) == 3:  # spectrogram-like (C, time, bins): a class is a spectral profile
            centres = np.broadcast_to(g.normal(size=(classes, 1, 1, shape[2])), centres.shape)
        x = centres[y] + 0.8 * g.normal(size=(n, *shape)).astype(np.float32)
    else:
        basis = g.normal(size=(8, *shape)).astype(np.float32)
        x = np.tensordot(g.normal(size=(n, 8)), basis, axes=1).astype(np.float32) * 0.3
        y = np.zeros(n, np.int64)
    np.savez(path, x=x.astype(np.float32), y=y.astype(np.int64))


def _run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout


def calibrated_weights(name: str, data: Path, out: Path) -> list[str]:
    """The zoo model (untrained, seeded) with its batch norms' running statistics computed on
    the user's inputs (forward passes in training mode, cumulative average; no weight
    changes), saved as safetensors for `compile --weights`; [] for a model without BN. A
    user's model arrives with statistics; the default ones (mean 0, var 1) leave a deep
    untrained stack's features vanishing (KWS's loss stays at ln 12)."""
    import torch
    from safetensors.torch import save_file

    from edgetrain.models import build_model

    m, _ = build_model(name)
    bns = [b for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return []
    for b in bns:
        b.reset_running_stats()
        b.momentum = None
    x = torch.from_numpy(np.load(data)["x"])
    m.train()
    with torch.no_grad():
        for k in range(0, len(x), 16):
            m(x[k : k + 16])
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(out))
    return ["--weights", str(out)]


def run_cli(name: str, work: Path) -> dict:
    shape, classes, n_train, n_test, steps, lr = MODELS[name]
    data = work / f"{name}.npz"
    make_data(data, shape, classes, n_train + n_test)
    weights = calibrated_weights(name, data, work / f"{name}.safetensors")
    plan = work / f"{name}.json"
    _run([ET, "plan", "--model", name, "--device", DEVICE, "--executor", "c"]
         + ["--batch-size", "1", "-o", str(plan)])  # fmt: skip
    out = work / name
    _run([ET, "compile", "--plan", str(plan), "--data", str(data), "--target", "cortex-m4"]
         + ["--layout", "demo", "-o", str(out), "--steps", str(steps), "--log-every", "1"]
         + ["--train-samples", str(n_train), "--test-samples", str(n_test), "--lr", str(lr)]
         + ["--val-split", f"{n_test / (n_train + n_test):.4f}", *weights])  # fmt: skip
    res = json.loads(_run([ET, "mcu-run", str(out), "--json"]))
    res["plan"] = json.loads(plan.read_text())
    return res


def run_api(name: str, work: Path) -> dict:
    """The reconstruction model through the Python API (see the module's docstring)."""
    import torch

    import edgetrain
    from edgetrain.codegen import TrainingSpec, compile_project, mcu_run
    from edgetrain.codegen._compile import samples_from
    from edgetrain.data import load_data
    from edgetrain.models import build_model

    shape, _, n_train, n_test, steps, lr = MODELS[name]
    data = work / f"{name}.npz"
    make_data(data, shape, 0, n_train + n_test)
    m, x = build_model(name)
    plan = edgetrain.plan(m, x, device=DEVICE, batch_size=1, loss="mse", name=name)
    split = n_test / (n_train + n_test)
    kw = dict(input_shape=shape, input_dtype="float32", task="reconstruction", val_split=split)
    tr, te = (load_data(str(data), split=s, **kw) for s in ("train", "test"))
    zeros = torch.zeros(len(tr.x), dtype=torch.long)
    train = samples_from(tr.x, zeros)
    test = samples_from(te.x, torch.zeros(len(te.x), dtype=torch.long))
    spec = TrainingSpec(train, test, steps=steps, lr=lr, log_every=1)
    with torch.no_grad():
        out = compile_project(
            plan, m, x, "cortex-m4", spec, work / name, device=DEVICE, layout="demo"
        )
    res = mcu_run(out).to_dict()
    res["plan"] = json.loads(plan.to_json())
    return res


def summarise(name: str, r: dict) -> dict:
    losses = r["losses"]
    k = max(1, len(losses) // 10)
    planned = r["planner_predicted_peak_bytes"] if r["plan"]["executor"] == "c" else None
    ref = planned or r["codegen_predicted_peak_sram_bytes"]
    return {
        "model": name,
        "plan_executor": r["plan"]["executor"],
        "trains": r["plan"].get("notes", [""])[:1],
        "peak_sram_bytes": r["peak_sram_bytes"],
        "planned_peak_bytes": planned,
        "c_predicted_peak_bytes": r["codegen_predicted_peak_sram_bytes"],
        "peak_vs_prediction": r["peak_sram_bytes"] / ref - 1.0,
        "sram_limit_bytes": r["sram_limit_bytes"],
        "flash_bytes": r["flash_bytes"],
        "instructions_per_step": r["instructions_per_step"],
        "loss_first": float(np.mean(losses[:k])),
        "loss_last": float(np.mean(losses[-k:])),
        "accuracy_before": r["accuracy_before"],
        "accuracy_after": r["accuracy_after"],
        "steps": r["steps"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="results/c_models")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            run = run_api if MODELS[name][1] == 0 else run_cli
            rows.append(summarise(name, run(name, Path(tmp))))
            print(json.dumps(rows[-1]), flush=True)
    (out / "c_models.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| model | plan | measured peak SRAM | predicted | diff | device SRAM | instr/step "
        "| loss first → last 10 % | held-out acc before → after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        pred = r["planned_peak_bytes"] or r["c_predicted_peak_bytes"]
        lines.append(
            f"| {r['model']} | {r['plan_executor']} | {r['peak_sram_bytes']:,} B | {pred:,} B "
            f"| {100 * r['peak_vs_prediction']:+.1f} % | {r['sram_limit_bytes']:,} B "
            f"| {r['instructions_per_step']:,.0f} | {r['loss_first']:.3f} → {r['loss_last']:.3f} "
            + (
                f"| {100 * r['accuracy_before']:.0f} % → {100 * r['accuracy_after']:.0f} % |"
                if MODELS[r["model"]][1]
                else "| n/a (reconstruction) |"
            )
        )
    (out / "c_models.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
