"""`edgetrain compile` and `edgetrain mcu-run` (registered by edgetrain/cli.py)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from edgetrain import validate
from edgetrain.errors import PlanPredictionError
from edgetrain.validate import cli_type, learning_rate, positive_float, positive_int, steps

console = Console()


def _cmd_compile(args: argparse.Namespace) -> int:
    from edgetrain.codegen._files import check_output_dir, check_weights_file
    from edgetrain.planner import Plan

    # every file argument, before any work: the output directory, the plan, the weights
    check_output_dir(args.output, force=args.force)
    plan = Plan.load(args.plan)
    precision = args.precision or plan.precision.value
    spec = plan.model_to_build(
        args.model, trust_plan=args.trust_plan, plan_path=args.plan
    )  # before any import
    validate.loss_for_plan(args.loss, plan.loss)
    _check_executor(plan, args.plan)
    weights = check_weights_file(args.weights) if args.weights else None
    out, train, test = _compile(args, plan, spec, precision, weights)
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


def _check_executor(plan, path: str) -> None:
    """A plan for the PyTorch executor predicts PyTorch's allocator, not the C program, so
    compile cannot check its prediction against its own layout (`check_prediction`): refused,
    with the command that makes a C plan. (The Python API compiles such plans unchecked: the
    caller made them in-process.)"""
    from edgetrain.planner import Executor

    if plan.executor is not Executor.C:
        raise PlanPredictionError(
            f"plan file {path!r} was made for the {plan.executor.value} executor: its "
            f"predicted peak ({plan.predicted_peak_bytes:,} B) is PyTorch's, not the C "
            "program's, so compile cannot check it. Make a plan for this compiler: edgetrain "
            f"plan --model {plan.model} --device {plan.device} --batch-size {plan.batch_size} "
            "--executor c -o plan.json"
        )


def _compile(args: argparse.Namespace, plan, spec: str, precision: str, weights):
    import torch

    from edgetrain.codegen._compile import compile_project, samples_of
    from edgetrain.codegen._files import load_weights
    from edgetrain.codegen._render import TrainingSpec
    from edgetrain.data import load_dataset, parse_spec, resize_for
    from edgetrain.models import build_model

    model, example = build_model(spec)
    plan.check_matches_model(model)
    if weights is not None:
        load_weights(model, weights)
    name, _ = parse_spec(args.data)
    tr = load_dataset(args.data, split="train", limit=args.train_samples)
    te = load_dataset(args.data, split="test", limit=args.test_samples)
    shape = tuple(example.shape)
    exact = shape[1:] == tuple(tr.x.shape[1:])
    train = samples_of(resize_for(tr.x, shape), tr.y, name, exact=exact)
    test = samples_of(resize_for(te.x, shape), te.y, name, exact=exact)
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
            force=args.force,
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
                plan,
                model,
                example,
                args.target,
                spec,
                args.output,
                device=args.device,
                force=args.force,
            )
    return out, train, test


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
        help="plan.json from `edgetrain plan --executor c` (its predicted peak is checked "
        "against the compiler's own layout)",
    )
    c.add_argument("--target", choices=["host", "cortex-m4", "cortex-m7"], default="host")
    c.add_argument(
        "-o",
        "--output",
        required=True,
        help="folder for the C project: new, empty or one compile wrote before",
    )
    c.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty output folder compile did not create (its files named "
        "like the project's are overwritten)",
    )
    c.add_argument("--weights", help="start from these weights (.safetensors)")
    c.add_argument(
        "--model",
        default=None,
        help="the model to build (default: the plan's, "
        "if built in; a plan's model file is imported only with --trust-plan)",
    )
    c.add_argument(
        "--trust-plan",
        action="store_true",
        help="import the model file the plan names (its SHA-256 must match)",
    )
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
    c.add_argument(
        "--loss",
        type=cli_type(validate.loss_name),
        default=None,
        help="the plan's loss (recorded in it; the default; the C trainer runs cross-entropy)",
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
