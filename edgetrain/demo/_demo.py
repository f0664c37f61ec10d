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

from rich.console import Console
from rich.table import Table

from edgetrain.storage import write_json_atomic
from edgetrain.tasks import DEMO_MODEL, NEW_CLASSES, PRETRAIN_DATA, accuracy, pretrain

console = Console()


def run_demo(
    out_dir: "str | Path" = "results/demo", device: str = "nrf52840", quick: bool = False
) -> int:
    from edgetrain.cost import load_device
    from edgetrain.data import load_dataset
    from edgetrain.plot import plot_profile
    from edgetrain.prepare import profile

    out = Path(out_dir)
    t0 = time.perf_counter()
    dev = load_device(device)
    console.rule("[bold]edgetrain demo[/] — on-device learning of new classes")
    console.print(f"Stage 0 (cloud): pretrain [bold]{DEMO_MODEL}[/] on {PRETRAIN_DATA}")
    model, example, info = pretrain(samples=6000 if quick else None, epochs=1 if quick else 2)
    console.print(
        f"  held-out accuracy on classes 0-4: {100 * info['accuracy_classes_0_4']:.1f} %"
        f"  (weights: {info['cached']})"
    )
    new = load_dataset(NEW_CLASSES, split="test")
    accuracy_before_new = accuracy(model, new.x, new.y)
    console.print(
        f"  accuracy on the new classes 5-9 before on-device learning: "
        f"{100 * accuracy_before_new:.1f} %"
    )

    console.print(
        f"\nPreparation stage: capture and profile on [bold]{dev.display_name}[/] "
        f"({dev.ram_bytes // 1024} KB memory), batch 1, SGD"
    )
    p = profile(
        model, example, device=dev, batch_size=1, optimizer="sgd", measure=True, name=DEMO_MODEL
    )
    c, m = p.cost, p.measured
    assert m is not None
    t = Table(title=f"one training step of {DEMO_MODEL} (full fine-tuning)")
    t.add_column("")
    t.add_column("predicted", justify="right")
    t.add_column("measured (PyTorch allocator)", justify="right")
    t.add_row("weights", f"{c.params_bytes / 1024:,.1f} KiB", "")
    t.add_row("gradients", f"{c.grads_bytes / 1024:,.1f} KiB", "")
    t.add_row(
        "saved activations",
        f"{c.activation_bytes / 1024:,.1f} KiB",
        f"{m.activation_bytes / 1024:,.1f} KiB",
    )
    t.add_row("peak", f"{c.peak_bytes / 1024:,.1f} KiB", f"{m.peak_bytes / 1024:,.1f} KiB")
    t.add_row(f"{dev.name} memory", f"{dev.ram_bytes / 1024:,.0f} KiB", "")
    t.add_row("step latency on device", f"{c.latency_s * 1e3:,.1f} ms", "")
    t.add_row("step energy on device", f"{c.energy_j * 1e3:,.2f} mJ", "")
    console.print(t)
    verdict = "[green]fits[/]" if c.fits else "[red]does not fit[/]"
    console.print(
        f"Full fine-tuning {verdict} in {dev.name}'s memory "
        f"({100 * c.peak_bytes / dev.ram_bytes:.0f} % of it); prediction/measurement "
        f"= {c.peak_bytes / m.peak_bytes:.3f}."
    )
    plot = plot_profile(p, out / "profile.png")

    # Training stage: plan within the device's memory, then learn the new classes on-device.
    from edgetrain.prepare import trainer_plan as make_plan
    from edgetrain.runtime import train_loop

    batch, steps, lr = 2, (300 if quick else 1000), 0.05
    console.print(
        f"\nPlanning: batch {batch}, budget {dev.ram_bytes // 1024} KB "
        f"(strategy auto, objective time)"
    )
    plan = make_plan(model, example, device=dev, batch_size=batch, name=DEMO_MODEL)
    write_json_atomic(plan.to_dict(), out / "plan.json")
    dec = (
        ", ".join(
            f"{s.name}: {s.decision.value}" for s in plan.stages if s.decision.value != "keep"
        )
        or "keep every activation"
    )
    console.print(
        f"  plan: {plan.accumulation_steps} x {plan.micro_batch_size} micro-batches, "
        f"{dec}; in-place update {plan.in_place_update}; predicted peak "
        f"{plan.predicted_peak_bytes / 1024:.1f} KiB"
    )
    train = load_dataset(NEW_CLASSES, split="train")
    console.print(f"Training stage: {steps} steps on {NEW_CLASSES} ({steps * batch} samples)")
    res = train_loop(model, plan, train.x, train.y, steps=steps, lr=lr)
    after = accuracy(model, new.x, new.y)
    console.print(
        f"  held-out accuracy on classes 5-9: {100 * accuracy_before_new:.1f} % -> "
        f"[bold]{100 * after:.1f} %[/]"
    )
    console.print(
        f"  memory: measured peak {res.measured_peak_bytes / 1024:.1f} KiB (allocator), "
        f"planned {plan.predicted_peak_bytes / 1024:.1f} KiB, budget "
        f"{plan.budget_bytes / 1024:.0f} KiB -> "
        f"{'within budget' if res.measured_peak_bytes <= plan.budget_bytes else 'OVER BUDGET'}"
    )
    report = {
        "model": DEMO_MODEL,
        "device": dev.name,
        "pretrain": info,
        "profile": p.to_dict(),
        "train": {
            **res.to_dict(),
            "accuracy_before": accuracy_before_new,
            "accuracy_after": after,
            "lr": lr,
            "batch_size": batch,
        },
        "elapsed_s": time.perf_counter() - t0,
    }
    # Last: the same on-device learning as C code on the emulated MCU, when the toolchain is here.
    from edgetrain.demo._mcu import demo_mcu_stage

    mcu = demo_mcu_stage(dev.name, out, quick=quick, console=console)
    if mcu is not None:
        report["mcu"] = mcu
    report["elapsed_s"] = time.perf_counter() - t0
    write_json_atomic(report, out / "report.json")
    console.print(f"plot: {plot}\nreport: {out / 'report.json'}")
    return 0
