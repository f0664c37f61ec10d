"""On-device learning on the emulated MCU: plan (frozen BN) -> compile -> build -> run.

Used by the benchmark (`bench/c_step.py`) and meant for the end of `edgetrain demo`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgetrain.codegen import (
    McuRunResult,
    TrainingSpec,
    compile_project,
    mcu_run,
    samples_of,
    target_for_device,
    toolchain_present,
)
from edgetrain.planner import Plan


def train_on_mcu(
    model: torch.nn.Module,
    example: torch.Tensor,
    out_dir: "str | Path",
    *,
    name: str = "mcu-cnn",
    device: str = "nrf52840",
    target: str = "cortex-m4",
    data: str = "fashion-mnist:5-9",
    batch_size: int = 1,
    steps: int = 1000,
    lr: float = 0.05,
    policy: str | None = None,
    train_samples: int = 400,
    test_samples: int = 400,
    log_every: int = 10,
    timeout_s: float = 600.0,
) -> tuple[Plan, McuRunResult]:
    from edgetrain.data import load_dataset, parse_spec, resize_for
    from edgetrain.prepare import plan as make_plan

    p = make_plan(
        model,
        example,
        device=device,
        batch_size=batch_size,
        strategy="auto",
        policy=policy,
        name=name,
        executor="c",
    )
    ds, _ = parse_spec(data)
    tr = load_dataset(data, split="train", limit=train_samples)
    te = load_dataset(data, split="test", limit=test_samples)
    shape = tuple(example.shape)
    exact = shape[1:] == tuple(tr.x.shape[1:])
    spec = TrainingSpec(
        samples_of(resize_for(tr.x, shape), tr.y, ds, exact=exact),
        samples_of(resize_for(te.x, shape), te.y, ds, exact=exact),
        steps=steps,
        lr=lr,
        log_every=log_every,
    )
    out = compile_project(p, model, example, target, spec, out_dir, device=device)
    return p, mcu_run(out, timeout_s=timeout_s)


def demo_mcu_stage(device: str, out_dir: "str | Path", *, quick: bool, console) -> dict | None:
    """The end of `edgetrain demo`: compile the on-device-learning plan to C for the device's
    emulated core and train under QEMU. Returns the report entry, or None (with a printed
    reason) when the device has no emulated target or the toolchain is absent."""
    from edgetrain.tasks import pretrain

    target = target_for_device(device)
    if target is None:
        console.print(f"\n(no emulated Cortex-M target for {device}: skipping the C build)")
        return None
    if not toolchain_present(target):
        console.print(
            "\n(Arm toolchain / QEMU absent: apt-get install -y gcc-arm-none-eabi "
            "libnewlib-arm-none-eabi qemu-system-arm — skipping the MCU run)"
        )
        return None
    model, example, _ = pretrain(samples=6000 if quick else None, epochs=1 if quick else 2)
    steps = 300 if quick else 1000
    console.print(
        f"\nOn the MCU: `edgetrain compile` -> C99 for {target} within {device}'s "
        f"SRAM/flash, {steps} steps under QEMU ({target}, semihosting)"
    )
    plan, r = train_on_mcu(
        model,
        example,
        Path(out_dir) / "mcu",
        device=device,
        target=target,
        policy="last:4",
        lr=0.05,
        steps=steps,
    )
    console.print(
        f"  held-out accuracy on classes 5-9: {100 * r.accuracy_before:.1f} % -> "
        f"[bold]{100 * r.accuracy_after:.1f} %[/] ({r.test_samples} samples)"
    )
    console.print(
        f"  SRAM peak {r.peak_sram_bytes / 1024:.1f} KiB (static "
        f"{r.static_sram_bytes / 1024:.1f} + stack {r.stack_peak_bytes} B) of "
        f"{r.sram_limit_bytes // 1024} KiB; flash {r.flash_bytes / 1024:.0f} KiB; "
        f"{r.instructions_per_step / 1e6:.2f} M instructions per step"
    )
    return {**r.to_dict(), "policy": "last:4", "lr": 0.05}
