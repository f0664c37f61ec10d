"""`edgetrain compile` and `edgetrain mcu-run` (registered by edgetrain/cli.py)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.markup import escape

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
            f"{len(train.labels)} training / {len(test.labels)} held-out test samples "
            f"({'x'.join(map(str, train.pixels.shape[1:]))} "
            f"{train.pixels.dtype}) of {escape(args.data)} baked in"
        )
        if meta.get("layout") == "library":
            console.print(
                f"the C library: {out / 'src'} (edgetrain_model.h documents the API); an "
                f"example firmware: make -C {out / 'extras' / 'firmware'} run"
            )
        else:
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


def _samples(args: argparse.Namespace, plan, example):
    """The training split and the held-out split of `--data` for the plan's input (the
    model's example input for plans without one), baked as `samples_from` does; and what the
    build file records of them.

    NOTE [ compile's data ]
        `load_data` reads `--data` for one sample of the plan's `input_shape` / `input_dtype`
        (any rank; images resized only with `--resize`): the "train" split is trained on, the
        "test" split (a user's file: its seeded, per-class held-out `--val-split` part; a
        built-in set: its own test split) is what the accuracy before and after is measured
        on. `--train-samples` / `--test-samples` bound each (a seeded, class-balanced pick);
        a smaller split is baked whole. The driver cycles through the training samples in
        order, so they are shuffled (seed 0) first. Samples are flat arrays in flash: uint8
        pixels for a built-in image set, float32 values otherwise; `render` checks that they,
        the weights and the code fit the device's flash before anything is written
        (`check_flash`: `DeviceLimitError` with the `--train-samples` that fits)."""
    import torch

    from edgetrain.codegen._compile import samples_from
    from edgetrain.data import load_data

    task = "classification" if plan.loss == "cross-entropy" else "reconstruction"
    kw = dict(
        input_shape=plan.input_shape or tuple(example.shape[1:]),
        input_dtype=plan.input_dtype or str(example.dtype).removeprefix("torch."),
        task=task,
        label=args.label,
        x_key=args.x_key,
        y_key=args.y_key,
        resize=args.resize,
        val_split=args.val_split,
    )
    tr = _at_most(load_data, args.data, "train", args.train_samples, kw)
    te = _at_most(load_data, args.data, "test", args.test_samples, kw)
    # the driver cycles through the training samples in order: shuffled (seeded) here, as
    # sources sorted by class would otherwise train one class after the other
    order = torch.randperm(len(tr.y), generator=torch.Generator().manual_seed(0))
    if task == "reconstruction":  # the target is the sample (NOTE [ Regression in the demo ])
        train = samples_from(tr.x[order], torch.zeros(len(order), dtype=torch.long), tr.name)
        test = samples_from(te.x, torch.zeros(len(te.x), dtype=torch.long), te.name)
    else:
        train = samples_from(tr.x[order], tr.y[order], tr.name)
        test = samples_from(te.x, te.y, te.name)
    data = data_record(args.data, tr.source is None, args.val_split, len(train.labels), len(te.x))
    if task == "reconstruction":
        data.update(task=task, metric="none (reconstruction: the training loss is the measure)")
    return train, test, data


def _at_most(load_data, source: str, split: str, limit: int, kw: dict):
    """The split, or `limit` samples of it (load_data's seeded, class-balanced pick) when it
    holds more: `--train-samples` / `--test-samples` bound what is baked, a split with fewer
    samples is baked whole."""
    data = load_data(source, split=split, **kw)
    return load_data(source, split=split, limit=limit, **kw) if len(data.y) > limit else data


def data_record(source: str, builtin: bool, val_split: float, n_train: int, n_test: int) -> dict:
    """What the build file says of the baked data (`mcu-run` reports the metric on it)."""
    held_out = (
        f"{source}, its test split"
        if builtin
        else f"{source}, the held-out {val_split:g} (seeded per class, never trained on)"
    )
    return {
        "source": source,
        "task": "classification",
        "metric": "accuracy",
        "train_samples": n_train,
        "test_samples": n_test,
        "evaluated_on": held_out,
    }


def _compile(args: argparse.Namespace, plan, spec: str, precision: str, weights):
    import torch

    from edgetrain.codegen._compile import compile_project
    from edgetrain.codegen._files import load_weights
    from edgetrain.codegen._render import TrainingSpec
    from edgetrain.models import build_model

    model, example = build_model(spec)
    plan.check_matches_model(model)
    if weights is not None:
        load_weights(model, weights)
    train, test, data = _samples(args, plan, example)
    if precision == "int8":
        from edgetrain.codegen._compile import compile_int8_project

        if args.layout != "demo":
            from edgetrain.errors import UnsupportedPlanError

            raise UnsupportedPlanError(
                "the int8 (QAS) trainer has the demo layout only; compile it with --layout "
                "demo (the C library API is fp32)"
            )

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
            data=data,
        )
    else:
        spec = TrainingSpec(
            train,
            test,
            steps=args.steps,
            lr=args.lr,
            log_every=args.log_every,
            dump_params=args.dump_params,
            data=data,
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
                layout=args.layout,
            )
    return out, train, test


def _cmd_mcu_run(args: argparse.Namespace) -> int:
    from edgetrain.codegen._run import mcu_run

    r = mcu_run(args.outdir, timeout_s=args.timeout_s)
    if args.json:
        print(json.dumps(r.to_dict()))
        return 0
    held_out = (
        f"held-out {r.metric} {100 * r.accuracy_before:.1f} % -> "
        f"{100 * r.accuracy_after:.1f} % ({r.test_samples} samples"
        f"{f' of {escape(r.evaluated_on)}' if r.evaluated_on else ''})"
        if r.metric == "accuracy"
        else f"held-out metric {r.metric}"  # a reconstruction has no accuracy to print
    )
    console.print(
        f"[bold]{r.target}[/]: {r.steps} steps, loss {r.losses[0]:.4f} -> "
        f"{r.losses[-1]:.4f}; {held_out}",
        highlight=False,
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
    c.add_argument(
        "--layout",
        choices=["library", "demo"],
        default="library",
        help="library (default): src/edgetrain_model.h/.c with the C API your firmware calls "
        "(et_init, et_train_step, et_predict, et_save_weights / et_load_weights), a "
        "CMakeLists.txt, an Arduino library layout and an example firmware streaming the "
        "--data samples; demo: a driver that trains on the samples baked into flash and "
        "prints the report `edgetrain mcu-run` reads",
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
    c.add_argument(
        "--data",
        default="fashion-mnist:5-9",
        help="the samples baked into flash, for the model's input (any rank): a built-in set "
        "(fashion-mnist:5-9, digits), data.npz, x.npy,y.npy, data.csv, a folder of class "
        "sub-folders of images, or file.py:make_dataset",
    )
    validate.add_data_arguments(
        c,
        held_out="fraction of a user's data held out (seeded, per class) as the test samples "
        "the accuracy is measured on (default 0.1; built-in sets use their test split)",
    )
    c.add_argument(
        "--train-samples",
        type=cli_type(positive_int),
        default=400,
        help="at most this many training samples baked into flash (cycled through)",
    )
    c.add_argument(
        "--test-samples",
        type=cli_type(positive_int),
        default=400,
        help="at most this many held-out samples baked into flash for the accuracy",
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
