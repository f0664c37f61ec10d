"""`edgetrain compile` and `edgetrain mcu-run` (registered by edgetrain/cli.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from edgetrain.errors import UnsupportedPlanError
from edgetrain.validate import cli_type, learning_rate, positive_float, positive_int, steps

console = Console()


def _cmd_compile(args: argparse.Namespace) -> int:
    import torch

    from edgetrain.codegen._compile import compile_project, samples_of
    from edgetrain.codegen._render import TrainingSpec
    from edgetrain.data import load_dataset, parse_spec, resize_for
    from edgetrain.models import build_model
    from edgetrain.planner import Plan
    from edgetrain.storage import load_tensors

    try:
        text = Path(args.plan).read_text()
    except OSError as e:
        raise UnsupportedPlanError(
            f"cannot read plan file {args.plan!r}: {e.strerror}; make one "
            "with `edgetrain plan ... -o plan.json`"
        ) from None
    plan = Plan.from_json(text)
    model, example = build_model(plan.model)
    if args.weights:
        model.load_state_dict(load_tensors(args.weights))
    name, _ = parse_spec(args.data)
    tr = load_dataset(args.data, split="train", limit=args.train_samples)
    te = load_dataset(args.data, split="test", limit=args.test_samples)
    shape = tuple(example.shape)
    exact = shape[1:] == tuple(tr.x.shape[1:])
    train = samples_of(resize_for(tr.x, shape), tr.y, name, exact=exact)
    test = samples_of(resize_for(te.x, shape), te.y, name, exact=exact)
    precision = args.precision or plan.precision.value
    if precision == "int8":
        from edgetrain.codegen._compile import compile_int8_project

        out, _, _ = compile_int8_project(
            plan,
            model,
            train,
            test,
            args.target,
            args.output,
            steps=args.steps,
            lr=args.lr,
            device=args.device,
            log_every=args.log_every,
            dump_params=args.dump_params,
        )
    else:
        spec = TrainingSpec(
            train,
            test,
            steps=args.steps,
            lr=args.lr,
            log_every=args.log_every,
            dump_params=args.dump_params,
        )
        with torch.no_grad():
            out = compile_project(
                plan, model, example, args.target, spec, args.output, device=args.device
            )
    meta = json.loads((out / "edgetrain_build.json").read_text())
    if args.json:
        print(json.dumps({k: v for k, v in meta.items() if k != "buffers"}))
    else:
        console.print(
            f"[bold]{plan.model}[/] -> C99 for [bold]{args.target}[/] in {out}: arena "
            f"{meta['arena_bytes']:,} B, trainable {meta['trainable_bytes']:,} B "
            f"(SRAM), frozen weights {meta['const_weight_bytes']:,} B (flash), "
            f"{len(train.labels)} training / {len(test.labels)} test samples baked in"
        )
        console.print(f"run it: edgetrain mcu-run {out}")
    return 0


def _cmd_mcu_run(args: argparse.Namespace) -> int:
    from edgetrain.codegen._run import mcu_run

    r = mcu_run(args.outdir, timeout_s=args.timeout_s)
    if args.json:
        print(json.dumps(r.to_dict()))
        return 0
    console.print(
        f"[bold]{r.target}[/]: {r.steps} steps, loss {r.losses[0]:.4f} -> "
        f"{r.losses[-1]:.4f}; held-out accuracy {100 * r.accuracy_before:.1f} % -> "
        f"{100 * r.accuracy_after:.1f} % ({r.test_samples} samples)"
    )
    if r.peak_sram_bytes is not None:
        console.print(
            f"  SRAM: static {r.static_sram_bytes:,} B + stack {r.stack_peak_bytes:,} B "
            f"= peak {r.peak_sram_bytes:,} B of {r.sram_limit_bytes:,} B; flash "
            f"{r.flash_bytes:,} B of {r.flash_limit_bytes:,} B"
        )
        planned = (
            f"{r.planner_predicted_peak_bytes:,} B"
            if r.planner_predicted_peak_bytes
            else "n/a (int8)"
        )
        console.print(
            f"  {r.instructions_per_step:,.0f} instructions per training step (QEMU "
            f"-icount); predicted peak: generator {r.codegen_predicted_peak_sram_bytes:,}"
            f" B, planner {planned}"
        )
    else:
        console.print(f"  {r.step_time_s * 1e6:,.1f} µs per training step on this host")
    return 0


def register(subparsers) -> None:
    c = subparsers.add_parser("compile", help="generate C99 training code for an MCU or the host")
    c.add_argument(
        "--plan",
        required=True,
        help="plan.json from `edgetrain plan` (frozen BN, sgd, keep-all stages)",
    )
    c.add_argument("--target", choices=["host", "cortex-m4", "cortex-m7"], default="host")
    c.add_argument("-o", "--output", required=True, help="folder for the C project")
    c.add_argument("--weights", help="start from these weights (.safetensors)")
    c.add_argument(
        "--precision",
        choices=["fp32", "int8"],
        default=None,
        help="fp32, or int8 with QAS (edgetrain.quant; calibrated on the training "
        "samples; the ops whose parameters the plan trains are updated); "
        "default: the plan's precision",
    )
    c.add_argument(
        "--device",
        default=None,
        help="device whose SRAM/flash bound the linker script (default: the plan's)",
    )
    c.add_argument("--data", default="fashion-mnist:5-9")
    c.add_argument(
        "--train-samples",
        type=cli_type(positive_int),
        default=400,
        help="training samples baked into flash (cycled through)",
    )
    c.add_argument(
        "--test-samples",
        type=cli_type(positive_int),
        default=400,
        help="held-out samples baked into flash for accuracy",
    )
    c.add_argument("--steps", type=cli_type(steps), default=1000)
    c.add_argument("--lr", type=cli_type(learning_rate), default=0.05)
    c.add_argument("--log-every", type=cli_type(positive_int), default=10)
    c.add_argument(
        "--dump-params",
        action="store_true",
        help="print the trained parameters bit-exactly at the end",
    )
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=_cmd_compile)

    r = subparsers.add_parser("mcu-run", help="build and run a compiled project (host or QEMU)")
    r.add_argument("outdir")
    r.add_argument("--timeout-s", type=cli_type(positive_float), default=600.0)
    r.add_argument("--json", action="store_true")
    r.set_defaults(fn=_cmd_mcu_run)
