"""Benchmark: the generated C training step against PyTorch eager, and training on emulated MCUs.

    .venv/bin/python bench/c_step.py [--out results/bench] [--skip-mcu]

1. Host: `mcu-cnn`, batch 1, frozen BN, SGD; for the full update (`all`) and a sparse one
   (`last:4`): seconds per training step (forward, loss, backward, update) of the C program
   built with the system compiler (-O2), measured inside the program around each step, and of
   PyTorch eager (forward, cross-entropy, backward, SGD step) in this process, run side by side
   (alternating, 5 rounds; the fastest round of each side, which is the least disturbed by
   other processes on a shared machine). PyTorch runs with its default threads and with 1.
2. Cortex-M4 (QEMU mps2-an386) with the nRF52840's 256 KB SRAM / 1 MB flash: `mcu-cnn`
   pretrained on Fashion-MNIST classes 0-4 (edgetrain demo's weights), learning classes 5-9
   on-device; peak SRAM, flash, instructions per step, held-out accuracy before/after, and the
   planner's predicted peak beside the measured one. The same on Cortex-M7 (mps2-an500) with
   the STM32F746's 320 KB / 1 MB.
3. `mbv2-w0.35` at 128x128 (TTE's setup) on the STM32F746 profile: fp32 (compiled and linked
   against the device's limits; the linker's refusal, with sizes, is recorded) and int8 with
   QAS (edgetrain.quant; trains the classifier; 2 steps on Cortex-M7): peak SRAM beside TTE's
   published 141 KB.
4. int8 (QAS) on-device learning of `mcu-cnn` on the nRF52840 / Cortex-M4, as in 2.

Writes c_step.json and c_step.md under --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import edgetrain
from edgetrain.codegen import (
    BuildError,
    SampleSet,
    TrainingSpec,
    compile_project,
    mcu_run,
    normalised,
    toolchain_present,
)
from edgetrain.demo import train_on_mcu
from edgetrain.models import build_model
from edgetrain.storage import write_json_atomic, write_text_atomic


def _torch_step_s(model, plan, x, y, steps: int, threads: int) -> float:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        trainable = set(plan.trainable())
        params = []
        for n, p in model.named_parameters():
            p.requires_grad_(n in trainable)
            if n in trainable:
                params.append(p)
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        opt = torch.optim.SGD(params, lr=1e-3)
        times = []
        for s in range(steps + 20):
            i = s % len(y)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
            opt.step()
            if s >= 20:  # warm-up excluded
                times.append(time.perf_counter() - t0)
        return sum(times) / len(times)
    finally:
        torch.set_num_threads(old)


def host_ratio(out: Path, steps: int = 500, rounds: int = 5) -> list[dict]:
    rows = []
    for policy in ("all", "last:4"):
        m, x = build_model("mcu-cnn")
        plan = edgetrain.plan(
            m,
            x,
            device="nrf52840",
            strategy="keep-all",
            policy=policy,
            freeze_batch_norm=True,
            name="mcu-cnn",
        )
        g = np.random.default_rng(0)
        s = SampleSet(
            g.integers(0, 256, (64, 1, 28, 28), dtype=np.uint8),
            g.integers(5, 10, 64),
            0.2860,
            0.3530,
        )
        proj = compile_project(
            plan,
            m,
            x,
            "host",
            TrainingSpec(s, s, steps=steps, lr=1e-3, log_every=steps),
            out / f"host-{policy.replace(':', '')}",
        )
        xs, ys = normalised(s), torch.from_numpy(s.labels)
        c, tdef, t1 = [], [], []
        for _ in range(rounds):  # alternate, so both sides see the same machine load
            c.append(mcu_run(proj).step_time_s)
            tdef.append(_torch_step_s(m, plan, xs, ys, steps // 2, torch.get_num_threads()))
            t1.append(_torch_step_s(m, plan, xs, ys, steps // 2, 1))
        cs, ts, ts1 = min(c), min(tdef), min(t1)
        rows.append(
            {
                "model": "mcu-cnn",
                "batch_size": 1,
                "policy": policy,
                "c_step_s": cs,
                "torch_eager_step_s": ts,
                "torch_threads": torch.get_num_threads(),
                "torch_1thread_step_s": ts1,
                "speedup_vs_torch": ts / cs,
                "speedup_vs_torch_1thread": ts1 / cs,
                "rounds": {"c_step_s": c, "torch_eager_step_s": tdef, "torch_1thread_step_s": t1},
            }
        )
    return rows


def mcu_runs(out: Path) -> list[dict]:
    from edgetrain.tasks import pretrain

    rows = []
    for target, device in (("cortex-m4", "nrf52840"), ("cortex-m7", "stm32f746")):
        model, example, info = pretrain()
        t0 = time.perf_counter()
        plan, r = train_on_mcu(
            model,
            example,
            out / f"mcu-cnn-{target}",
            device=device,
            target=target,
            policy="last:4",
            lr=0.05,
            steps=1000,
            batch_size=1,
            train_samples=400,
            test_samples=400,
        )
        d = r.to_dict()
        d.update(
            model="mcu-cnn",
            device=device,
            policy="last:4",
            lr=0.05,
            wall_s=time.perf_counter() - t0,
            measured_over_predicted=r.peak_sram_bytes / plan.predicted_peak_bytes,
        )
        rows.append(d)
    return rows


def mbv2_tte(out: Path) -> dict:
    m, x = build_model("mbv2-w0.35")
    plan = edgetrain.plan(
        m,
        x,
        device="stm32f746",
        strategy="keep-all",
        policy="last:4",
        freeze_batch_norm=True,
        name="mbv2-w0.35",
        budget_bytes=1 << 40,
    )
    g = np.random.default_rng(0)
    s = SampleSet(
        g.integers(0, 256, (2, 3, 128, 128), dtype=np.uint8), g.integers(0, 10, 2), 0.5, 0.25
    )
    proj = compile_project(
        plan,
        m,
        x,
        "cortex-m7",
        TrainingSpec(s, s, steps=2, lr=1e-3),
        out / "mbv2-cortex-m7",
        device="stm32f746",
    )
    meta = json.loads((proj / "edgetrain_build.json").read_text())
    row = {
        "model": "mbv2-w0.35",
        "resolution": 128,
        "device": "stm32f746",
        "policy": "last:4",
        "arena_bytes": meta["arena_bytes"],
        "trainable_bytes": meta["trainable_bytes"],
        "const_weight_bytes": meta["const_weight_bytes"],
        "tte_published_peak_sram_kb": 141,
    }
    try:
        r = mcu_run(proj)
        row.update(r.to_dict())
    except BuildError as e:
        row["overflow"] = [
            ln.split("ld: ")[-1] for ln in str(e).splitlines() if "overflowed by" in ln
        ]
        row["build_error"] = str(e)[-600:]
    return row


def mbv2_int8_tte(out: Path) -> dict:
    from edgetrain.codegen import compile_int8_project, samples_of
    from edgetrain.data import load_dataset, resize_for

    m, x = build_model("mbv2-w0.35")
    plan = edgetrain.plan(
        m,
        x,
        device="stm32f746",
        strategy="keep-all",
        policy="last:1",
        freeze_batch_norm=True,
        name="mbv2-w0.35",
        budget_bytes=1 << 40,
    )
    tr = load_dataset("fashion-mnist:5-9", split="train", limit=4)
    te = load_dataset("fashion-mnist:5-9", split="test", limit=4)
    sh = tuple(x.shape)
    proj, _, trainable = compile_int8_project(
        plan,
        m,
        samples_of(resize_for(tr.x, sh), tr.y, exact=False),
        samples_of(resize_for(te.x, sh), te.y, exact=False),
        "cortex-m7",
        out / "mbv2-int8",
        steps=2,
        lr=1e-3,
        device="stm32f746",
    )
    r = mcu_run(proj)
    return {
        **r.to_dict(),
        "model": "mbv2-w0.35",
        "resolution": 128,
        "device": "stm32f746",
        "precision": "int8-qas",
        "trainable_ops": list(trainable),
        "tte_published_peak_sram_kb": 141,
    }


def mcu_cnn_int8(out: Path) -> dict:
    from edgetrain.codegen import compile_int8_project, samples_of
    from edgetrain.data import load_dataset
    from edgetrain.tasks import pretrain

    model, example, _ = pretrain()
    plan = edgetrain.plan(
        model,
        example,
        device="nrf52840",
        strategy="keep-all",
        policy="last:4",
        freeze_batch_norm=True,
        name="mcu-cnn",
    )
    tr = load_dataset("fashion-mnist:5-9", split="train", limit=400)
    te = load_dataset("fashion-mnist:5-9", split="test", limit=400)
    calib = load_dataset("fashion-mnist:0-4", split="train", limit=64).x  # the cloud's data
    proj, _, trainable = compile_int8_project(
        plan,
        model,
        samples_of(tr.x, tr.y),
        samples_of(te.x, te.y),
        "cortex-m4",
        out / "mcu-cnn-int8",
        steps=1000,
        lr=0.01,
        calibration=calib,
        log_every=10,
    )
    r = mcu_run(proj)
    return {
        **r.to_dict(),
        "model": "mcu-cnn",
        "device": "nrf52840",
        "precision": "int8-qas",
        "policy": "last:4",
        "trainable_ops": list(trainable),
        "lr": 0.01,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--skip-mcu", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        res = {"host": host_ratio(work)}
        if not args.skip_mcu and toolchain_present("cortex-m4"):
            res["mcu"] = mcu_runs(work)
            res["mbv2_tte"] = mbv2_tte(work)
            res["mbv2_int8_tte"] = mbv2_int8_tte(work)
            res["mcu_cnn_int8"] = mcu_cnn_int8(work)
    write_json_atomic(res, out / "c_step.json")
    lines = [
        "| policy | C step (µs) | PyTorch eager (µs, %d threads) | PyTorch 1 thread (µs) | "
        "speed-up | speed-up (1 thread) |" % res["host"][0]["torch_threads"],
        "|---|---|---|---|---|---|",
    ]
    for r in res["host"]:
        lines.append(
            f"| {r['policy']} | {r['c_step_s'] * 1e6:,.1f} | "
            f"{r['torch_eager_step_s'] * 1e6:,.1f} | {r['torch_1thread_step_s'] * 1e6:,.1f}"
            f" | {r['speedup_vs_torch']:.1f}x | {r['speedup_vs_torch_1thread']:.1f}x |"
        )
    for r in res.get("mcu", []):
        lines.append(
            f"\n{r['target']} / {r['device']}: peak SRAM {r['peak_sram_bytes']:,} B "
            f"(static {r['static_sram_bytes']:,} + stack {r['stack_peak_bytes']:,}) of "
            f"{r['sram_limit_bytes']:,}; flash {r['flash_bytes']:,} of "
            f"{r['flash_limit_bytes']:,}; planner predicted {r['planner_predicted_peak_bytes']:,} "
            f"(measured/predicted {r['measured_over_predicted']:.3f}); "
            f"{r['instructions_per_step']:,.0f} instructions/step; accuracy "
            f"{100 * r['accuracy_before']:.1f} % -> {100 * r['accuracy_after']:.1f} %"
        )
    if "mbv2_tte" in res:
        r = res["mbv2_tte"]
        lines.append(
            f"\nmbv2-w0.35 128x128 fp32 on stm32f746: arena {r['arena_bytes']:,} B, "
            f"frozen weights {r['const_weight_bytes']:,} B; "
            + (
                f"peak SRAM {r['peak_sram_bytes']:,} B"
                if "peak_sram_bytes" in r
                else "does not link: " + "; ".join(r["overflow"])
            )
            + " (TTE, int8: 141 KB)"
        )
    if "mbv2_int8_tte" in res:
        r = res["mbv2_int8_tte"]
        lines.append(
            f"\nmbv2-w0.35 128x128 int8 (QAS, trains {', '.join(r['trainable_ops'])}) "
            f"on stm32f746 / cortex-m7: peak SRAM {r['peak_sram_bytes']:,} B (static "
            f"{r['static_sram_bytes']:,} + stack {r['stack_peak_bytes']:,}) of "
            f"{r['sram_limit_bytes']:,}; TTE published {r['tte_published_peak_sram_kb']} KB;"
            f" flash {r['flash_bytes']:,} of {r['flash_limit_bytes']:,}; "
            f"{r['instructions_per_step']:,.0f} instructions/step"
        )
    if "mcu_cnn_int8" in res:
        r = res["mcu_cnn_int8"]
        lines.append(
            f"\nmcu-cnn int8 (QAS) on nrf52840 / cortex-m4: peak SRAM "
            f"{r['peak_sram_bytes']:,} B; flash {r['flash_bytes']:,} B; "
            f"{r['instructions_per_step']:,.0f} instructions/step; accuracy "
            f"{100 * r['accuracy_before']:.1f} % -> {100 * r['accuracy_after']:.1f} %"
        )
    write_text_atomic("\n".join(lines) + "\n", out / "c_step.md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
