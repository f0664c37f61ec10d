"""On-device learning on the emulated MCU: plan (frozen BN) -> compile -> build -> run.

Used by the benchmark (`bench/c_step.py`) and meant for the end of `edgetrain demo`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edgetrain.codegen._compile import compile_project, samples_of
from edgetrain.codegen._render import TrainingSpec
from edgetrain.codegen._run import McuRunResult, mcu_run
from edgetrain.planner import Plan


def toolchain_present(target: str = "cortex-m4") -> bool:
    import shutil
    if target == "host":
        return shutil.which("cc") is not None
    return all(shutil.which(t) for t in ("arm-none-eabi-gcc", "arm-none-eabi-size",
                                         "qemu-system-arm"))


def train_on_mcu(model: torch.nn.Module, example: torch.Tensor, out_dir: "str | Path", *,
                 name: str = "mcu-cnn", device: str = "nrf52840", target: str = "cortex-m4",
                 data: str = "fashion-mnist:5-9", batch_size: int = 1, steps: int = 1000,
                 lr: float = 0.05, policy: str | None = None, train_samples: int = 400,
                 test_samples: int = 400, log_every: int = 10,
                 timeout_s: float = 600.0) -> tuple[Plan, McuRunResult]:
    from edgetrain._planning import plan as make_plan
    from edgetrain.data import load_dataset, resize_for
    from edgetrain.data._api import parse_spec

    p = make_plan(model, example, device=device, batch_size=batch_size, strategy="auto",
                  policy=policy, freeze_batch_norm=True, allow_paging=False, name=name)
    ds, _ = parse_spec(data)
    tr = load_dataset(data, split="train", limit=train_samples)
    te = load_dataset(data, split="test", limit=test_samples)
    shape = tuple(example.shape)
    exact = shape[1:] == tuple(tr.x.shape[1:])
    spec = TrainingSpec(samples_of(resize_for(tr.x, shape), tr.y, ds, exact=exact),
                        samples_of(resize_for(te.x, shape), te.y, ds, exact=exact),
                        steps=steps, lr=lr, log_every=log_every)
    out = compile_project(p, model, example, target, spec, out_dir, device=device)
    return p, mcu_run(out, timeout_s=timeout_s)
