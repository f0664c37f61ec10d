"""`edgetrain demo`: the survey's two-stage story on the built-in default.

Stage 0, in the cloud: pretrain `mcu-cnn` on Fashion-MNIST classes 0-4 (cached).
Preparation stage: capture the model, profile on-device learning of the new classes on the
default MCU (nRF52840-class, 256 KB SRAM), check the prediction against one measured step, and
plan training within the device's memory. Training stage: run the plan on classes 5-9 and report
accuracy before/after and measured against planned memory.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edgetrain._checkpoint import cache_dir, load_tensors, save_tensors_atomic, write_json_atomic

console = Console()

DEMO_MODEL = "mcu-cnn"
PRETRAIN_DATA = "fashion-mnist:0-4"
NEW_CLASSES = "fashion-mnist:5-9"


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    was = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    model.train(was)
    return correct / max(1, len(x))


def pretrain(model_name: str = DEMO_MODEL, *, samples: int | None = None, epochs: int = 2,
             seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, dict]:
    """Pretrain on classes 0-4 ("in the cloud"); weights are cached atomically by config."""
    from edgetrain.data import load_dataset
    from edgetrain.models import build_model

    torch.manual_seed(seed)
    model, example = build_model(model_name)
    key = f"{model_name}-{PRETRAIN_DATA.replace(':', '_')}-n{samples or 'all'}-e{epochs}-s{seed}"
    path = cache_dir() / "pretrained" / f"{key}.safetensors"
    test = load_dataset(PRETRAIN_DATA, split="test")
    if path.exists():
        model.load_state_dict(load_tensors(path))
        info = {"cached": str(path)}
    else:
        train = load_dataset(PRETRAIN_DATA, split="train", limit=samples)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        gen = torch.Generator().manual_seed(seed)
        bs = 64
        steps = epochs * ((len(train) + bs - 1) // bs)
        model.train()
        with Progress(TextColumn("pretraining on classes 0-4"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} steps"), TimeRemainingColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task("pretrain", total=steps)
            for _ in range(epochs):
                perm = torch.randperm(len(train), generator=gen)
                for i in range(0, len(train), bs):
                    idx = perm[i:i + bs]
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(model(train.x[idx]), train.y[idx]).backward()
                    opt.step()
                    bar.advance(task)
        save_tensors_atomic(model.state_dict(), path)
        info = {"trained_samples": len(train), "epochs": epochs, "cached": str(path)}
    info["accuracy_classes_0_4"] = accuracy(model, test.x, test.y)
    return model, example, info


def run_demo(out_dir: "str | Path" = "results/demo", device: str = "nrf52840",
             quick: bool = False) -> int:
    from edgetrain._plot import plot_profile
    from edgetrain._profile import profile
    from edgetrain.cost import load_device
    from edgetrain.data import load_dataset

    out = Path(out_dir)
    t0 = time.perf_counter()
    dev = load_device(device)
    console.rule("[bold]edgetrain demo[/] — on-device learning of new classes")
    console.print(f"Stage 0 (cloud): pretrain [bold]{DEMO_MODEL}[/] on {PRETRAIN_DATA}")
    model, example, info = pretrain(samples=6000 if quick else None, epochs=1 if quick else 2)
    console.print(f"  held-out accuracy on classes 0-4: {100 * info['accuracy_classes_0_4']:.1f} %"
                  f"  (weights: {info['cached']})")
    new = load_dataset(NEW_CLASSES, split="test")
    accuracy_before_new = accuracy(model, new.x, new.y)
    console.print(f"  accuracy on the new classes 5-9 before on-device learning: "
                  f"{100 * accuracy_before_new:.1f} %")

    console.print(f"\nPreparation stage: capture and profile on [bold]{dev.display_name}[/] "
                  f"({dev.ram_bytes // 1024} KB memory), batch 1, SGD")
    p = profile(model, example, device=dev, batch_size=1, optimizer="sgd", measure=True,
                name=DEMO_MODEL)
    c, m = p.cost, p.measured
    assert m is not None
    t = Table(title=f"one training step of {DEMO_MODEL} (full fine-tuning)")
    t.add_column("")
    t.add_column("predicted", justify="right")
    t.add_column("measured (PyTorch allocator)", justify="right")
    t.add_row("weights", f"{c.params_bytes / 1024:,.1f} KiB", "")
    t.add_row("gradients", f"{c.grads_bytes / 1024:,.1f} KiB", "")
    t.add_row("saved activations", f"{c.activation_bytes / 1024:,.1f} KiB",
              f"{m.activation_bytes / 1024:,.1f} KiB")
    t.add_row("peak", f"{c.peak_bytes / 1024:,.1f} KiB", f"{m.peak_bytes / 1024:,.1f} KiB")
    t.add_row(f"{dev.name} memory", f"{dev.ram_bytes / 1024:,.0f} KiB", "")
    t.add_row("step latency on device", f"{c.latency_s * 1e3:,.1f} ms", "")
    t.add_row("step energy on device", f"{c.energy_j * 1e3:,.2f} mJ", "")
    console.print(t)
    verdict = "[green]fits[/]" if c.fits else "[red]does not fit[/]"
    console.print(f"Full fine-tuning {verdict} in {dev.name}'s memory "
                  f"({100 * c.peak_bytes / dev.ram_bytes:.0f} % of it); prediction/measurement "
                  f"= {c.peak_bytes / m.peak_bytes:.3f}.")
    plot = plot_profile(p, out / "profile.png")

    # Training stage: plan within the device's memory, then learn the new classes on-device.
    from edgetrain._planning import trainer_plan as make_plan
    from edgetrain.runtime._loop import train_loop

    batch, steps, lr = 2, (300 if quick else 1000), 0.05
    console.print(f"\nPlanning: batch {batch}, budget {dev.ram_bytes // 1024} KB "
                  f"(strategy auto, objective time)")
    plan = make_plan(model, example, device=dev, batch_size=batch, name=DEMO_MODEL)
    write_json_atomic(plan.to_dict(), out / "plan.json")
    dec = ", ".join(f"{s.name}: {s.decision.value}" for s in plan.stages
                    if s.decision.value != "keep") or "keep every activation"
    console.print(f"  plan: {plan.accumulation_steps} x {plan.micro_batch_size} micro-batches, "
                  f"{dec}; in-place update {plan.in_place_update}; predicted peak "
                  f"{plan.predicted_peak_bytes / 1024:.1f} KiB")
    train = load_dataset(NEW_CLASSES, split="train")
    console.print(f"Training stage: {steps} steps on {NEW_CLASSES} ({steps * batch} samples)")
    res = train_loop(model, plan, train.x, train.y, steps=steps, lr=lr)
    after = accuracy(model, new.x, new.y)
    console.print(f"  held-out accuracy on classes 5-9: {100 * accuracy_before_new:.1f} % -> "
                  f"[bold]{100 * after:.1f} %[/]")
    console.print(f"  memory: measured peak {res.measured_peak_bytes / 1024:.1f} KiB (allocator), "
                  f"planned {plan.predicted_peak_bytes / 1024:.1f} KiB, budget "
                  f"{plan.budget_bytes / 1024:.0f} KiB -> "
                  f"{'within budget' if res.measured_peak_bytes <= plan.budget_bytes else 'OVER BUDGET'}")
    report = {"model": DEMO_MODEL, "device": dev.name, "pretrain": info,
              "profile": p.to_dict(),
              "train": {**res.to_dict(), "accuracy_before": accuracy_before_new,
                        "accuracy_after": after, "lr": lr, "batch_size": batch},
              "elapsed_s": time.perf_counter() - t0}
    # Last: the same on-device learning as C code on the emulated MCU, when the toolchain is here.
    from edgetrain.codegen._mcu_demo import demo_mcu_stage

    mcu = demo_mcu_stage(dev.name, out, quick=quick, console=console)
    if mcu is not None:
        report["mcu"] = mcu
    report["elapsed_s"] = time.perf_counter() - t0
    write_json_atomic(report, out / "report.json")
    console.print(f"plot: {plot}\nreport: {out / 'report.json'}")
    return 0
