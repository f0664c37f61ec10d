"""The `edgetrain` command line."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from importlib import import_module

from rich.console import Console
from rich.table import Table

from edgetrain import validate
from edgetrain.errors import (
    EdgetrainError,
    InvalidArgumentError,
    PlanFileError,
    WeightsFileError,
)
from edgetrain.strategies import CATALOG, SystemName, system_info
from edgetrain.units import format_bytes, parse_size
from edgetrain.validate import (
    batch_size,
    cli_type,
    learning_rate,
    output_dir,
    output_file,
    positive_float,
    positive_int,
    steps,
)

console = Console(stderr=False)
errc = Console(stderr=True)


def _kib(n: float) -> str:
    return format_bytes(n)


def _cmd_devices(args: argparse.Namespace) -> int:
    from edgetrain.cost import DEVICE_TABLE_HEADER, catalog, format_device_table

    devices = catalog()
    if args.json:
        print(json.dumps([d.to_dict() for d in devices], indent=2))
        return 0
    t = Table(title="edgetrain device catalog")
    for col in DEVICE_TABLE_HEADER:
        t.add_column(col, no_wrap=True)
    for row in format_device_table(devices):
        *rest, acc = row
        t.add_row(*rest, acc.split(" (")[0].split(":")[0])
    Console(width=max(console.width, 180)).print(t)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from edgetrain.models import model_info

    infos = model_info()
    if args.json:
        print(json.dumps([asdict(i) for i in infos], indent=2))
        return 0
    t = Table(title="edgetrain built-in models (--model NAME)")
    for col in ("model", "input (batch 1)", "loss", "source"):
        t.add_column(col)
    for i in infos:
        shape = "x".join(map(str, i.input_shape)) + ("" if i.input_dtype == "float32" else " int64")
        t.add_row(i.name, shape, i.loss, i.note.split(". ")[0])
    Console(width=max(console.width, 160)).print(t)
    return 0


def _print_profile(p) -> None:
    c = p.cost
    console.print(
        f"[bold]{c.model}[/] on [bold]{c.device}[/] — batch {c.batch_size}, optimizer "
        f"{c.optimizer}, loss {p.loss}"
    )
    t = Table(show_header=True)
    t.add_column("component")
    t.add_column("bytes", justify="right")
    t.add_column("", justify="right")
    rows = [
        ("weights", c.params_bytes),
        ("buffers", c.buffers_bytes),
        ("gradients", c.grads_bytes),
        ("optimizer state", c.optimizer_bytes),
        ("saved activations (incl. batch)", c.activation_bytes),
    ]
    for name, v in rows:
        t.add_row(name, f"{v:,}", _kib(v))
    t.add_row(
        "[bold]peak (lifetime simulation)[/]", f"[bold]{c.peak_bytes:,}[/]", _kib(c.peak_bytes)
    )
    if p.measured is not None:
        m = p.measured
        t.add_row("measured saved activations", f"{m.activation_bytes:,}", _kib(m.activation_bytes))
        t.add_row(
            "measured peak (allocator)",
            f"{m.peak_bytes:,}",
            f"{_kib(m.peak_bytes)}  (pred/meas {c.peak_bytes / m.peak_bytes:.3f})",
        )
    t.add_row("device memory", f"{c.memory_budget_bytes:,}", _kib(c.memory_budget_bytes))
    console.print(t)
    verdict = "[green]fits[/]" if c.fits else "[red]does NOT fit[/]"
    console.print(
        f"peak at {c.peak_phase} of {c.peak_node}: {verdict} "
        f"({100 * c.peak_bytes / c.memory_budget_bytes:.1f} % of {c.device}'s memory)"
    )
    console.print(
        f"FLOPs forward {c.flops_forward:,}  backward {c.flops_backward:,}  "
        f"element-wise {c.vector_ops:,}"
    )
    console.print(f"modelled step on {c.device}: {c.latency_s:.4g} s, {c.energy_j:.4g} J")


def _sample_bytes(example) -> int:
    """Bytes of one input sample (the example input has batch size 1)."""
    return example.numel() * example.element_size()


def _cmd_profile(args: argparse.Namespace) -> int:
    from edgetrain.cost import load_device

    t0 = time.perf_counter()
    dev = load_device(args.device)  # torch-free: a bad device answers at once
    from edgetrain.models import build_model, model_loss
    from edgetrain.prepare import profile

    model, example = build_model(args.model)
    loss = args.loss or model_loss(args.model)
    validate.batch_fits(
        args.batch_size,
        sample_bytes=_sample_bytes(example),
        limit_bytes=dev.ram_bytes,
        device=dev.name,
        limit="memory",
    )
    p = profile(
        model,
        example,
        device=dev,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        measure=args.measure,
        name=args.model,
        loss=loss,
    )
    if args.plot:
        from edgetrain.plot import plot_profile

        plot_profile(p, args.plot)
    if args.json:
        d = p.to_dict()
        d["model"] = args.model
        d["elapsed_s"] = round(time.perf_counter() - t0, 3)
        if args.plot:
            d["plot"] = str(args.plot)
        print(json.dumps(d))
    else:
        _print_profile(p)
        if args.plot:
            console.print(f"plot written to {args.plot}")
    return 0


PLANNER_STRATEGIES = ("exact", "auto", "keep-all", "sqrt", "greedy")
SYSTEM_STRATEGIES = tuple(n.value for n in CATALOG if n is not SystemName.AUTO)
"""Surveyed systems `edgetrain plan --strategy` also accepts (from the strategy catalog, which
imports no torch; `auto` is the planner's own)."""
DEFAULT_CALIBRATION = "fashion-mnist"


def _plan_with_system(args: argparse.Namespace, model, example, calibration):
    """`edgetrain plan --strategy SYSTEM`: the system's preparation stage. Returns (plan, the
    system's predicted peak, its notes)."""
    from edgetrain.strategies import get_system

    kwargs: dict = {}
    info = system_info(args.strategy)
    if info.needs_calibration:
        if calibration is None:  # quantisation needs real images: the default data set's
            from edgetrain.data import load_dataset, resize_for

            cal = load_dataset(DEFAULT_CALIBRATION, split="train", limit=args.calibration_samples)
            calibration = (resize_for(cal.x, tuple(example.shape)), cal.y)
        kwargs = {"calibration": calibration[0], "analysis": calibration}
    elif info.takes_deadline:
        kwargs = {"deadline_s": args.deadline_s}
    prepared = get_system(args.strategy).prepare(
        model,
        example,
        device=args.device_record,
        budget_bytes=args.budget,
        batch_size=args.batch_size,
        name=args.model,
        **kwargs,
    )
    return prepared.plan, prepared.predicted_peak_bytes, prepared.notes


def _cmd_plan(args: argparse.Namespace) -> int:
    from edgetrain.cost import load_device
    from edgetrain.planner import Plan

    # NOTE [ CLI inputs are checked before work starts ]
    #     Argument types (`validate`, via `cli_type`) are checked while parsing; what needs the
    #     device or the model is checked here, before any capture: the budget against the
    #     device's memory (unless --force-budget) and the batch against the budget (every plan
    #     holds the whole input batch, so a batch whose inputs alone exceed it never fits).
    dev = args.device_record = load_device(args.device)
    budget = dev.ram_bytes
    if args.budget is not None:
        budget = validate.budget_within_device(
            args.budget, device=dev.name, ram_bytes=dev.ram_bytes, force=args.force_budget
        )
    from edgetrain.models import build_model, model_loss  # torch from here on
    from edgetrain.prepare import PlanRequest, plan
    from edgetrain.storage import write_text_atomic

    model, example = build_model(args.model)
    loss = args.loss or model_loss(args.model)
    if args.strategy in SYSTEM_STRATEGIES and loss != "cross-entropy":
        raise InvalidArgumentError(
            f"the surveyed systems (--strategy {args.strategy}) train classifiers with "
            f"cross-entropy, not {loss}; use --strategy auto or exact for this loss"
        )
    validate.batch_fits(
        args.batch_size, sample_bytes=_sample_bytes(example), limit_bytes=budget, device=dev.name
    )
    calibration = None
    if args.calibration:
        from edgetrain.data import load_dataset, resize_for

        cal = load_dataset(args.calibration, split="train", limit=args.calibration_samples)
        calibration = (resize_for(cal.x, tuple(example.shape)), cal.y)
    system_notes: tuple[str, ...] = ()
    if args.strategy in SYSTEM_STRATEGIES:
        p, peak, system_notes = _plan_with_system(args, model, example, calibration)
    else:
        p = plan(
            model,
            example,
            PlanRequest(
                device=dev,
                budget_bytes=args.budget,
                batch_size=args.batch_size,
                objective=args.objective,
                strategy=args.strategy,
                optimizer=args.optimizer,
                deadline_s=args.deadline_s,
                policy=args.policy,
                allow_paging=not args.no_paging,
                name=args.model,
                calibration=calibration,
                freeze_batch_norm=True if args.freeze_batch_norm else None,
                executor=args.executor,
                precision=args.precision,
                loss=loss,
                measure=not args.no_check,
                weight_decay=args.weight_decay,
                schedule=args.schedule,
            ),
        )
        peak = p.predicted_peak_bytes
    # What is written must load: the file goes through the same checks as any plan from
    # elsewhere (NOTE [ Plans are data ]).
    Plan.from_dict(p.to_dict(), device=dev)
    if args.output:
        write_text_atomic(p.to_json(), args.output)
    if args.json:
        d = p.to_dict()
        d["system_predicted_peak_bytes"] = peak  # the system's own (a pool, ...)
        d["system"] = args.strategy
        d["system_notes"] = list(system_notes)
        d["predicted"]["timeline"] = d["predicted"]["timeline"][:0]  # kept in the plan file
        print(json.dumps(d))
        return 0
    if system_notes:
        console.print(f"[bold]{args.strategy}[/]: " + "; ".join(system_notes))
    label = args.strategy if args.strategy in SYSTEM_STRATEGIES else p.strategy.value
    console.print(
        f"[bold]{p.model}[/] on [bold]{p.device}[/]: strategy {label}, "
        f"objective {p.objective.value}, loss {p.loss}"
    )
    console.print(
        f"  budget {_kib(p.budget_bytes)}  predicted peak {_kib(peak)}"
        f"  storage written/step {_kib(p.predicted.storage_bytes_written)}"
    )
    console.print(
        f"  executor {p.executor.value}, precision {p.precision.value}"
        + ("  (run it: edgetrain compile --plan PLAN.json)" if p.executor.value == "c" else "")
    )
    console.print(
        f"  batch {p.batch_size} = {p.accumulation_steps} x {p.micro_batch_size}, "
        f"optimizer {p.optimizer}"
        + (f" (weight decay {p.weight_decay:g})" if p.weight_decay else "")
        + f", schedule {p.schedule}, in-place update {p.in_place_update}"
    )
    # a BIAS_ONLY weight is frozen (its module's bias trains); CHANNELS trains part of one
    n_train = sum(1 for q in p.params if q.decision.value not in ("frozen", "bias_only"))
    console.print(f"  trains {n_train}/{len(p.params)} parameter tensors ({p.notes[0]})")
    dec = (
        " ".join(f"{s.name}:{s.decision.value}" for s in p.stages if s.decision.value != "keep")
        or "keep everything"
    )
    console.print(f"  activations: {dec}")
    if p.lean_backward:  # NOTE [ Lean backward ], NOTE [ Sample-chunked frozen segments ]
        chunked = ", ".join(f"{m} by {c}" for m, c in p.chunked_modules) or "none"
        console.print(
            f"  lean backward: {len(p.in_place_activations)} in-place sites, "
            f"samples-at-a-time segments: {chunked}"
        )
    console.print(f"  modelled step: {p.predicted.latency_s:.4g} s, {p.predicted.energy_j:.4g} J")
    if args.output:
        console.print(f"plan written to {args.output}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from edgetrain.planner import Plan

    # The plan is checked (and its model's trust decided) before torch is even imported.
    p = Plan.load(args.plan, device=args.device)  # NOTE [ Plans are data ]
    spec = p.model_to_build(args.model, trust_plan=args.trust_plan, plan_path=args.plan)
    validate.loss_for_plan(args.loss, p.loss)
    from edgetrain.models import build_model
    from edgetrain.runtime import evaluate, train_loop

    with errc.status("building the model"):
        model, example = build_model(spec)
    p.check_matches_model(model)
    if args.weights:
        from edgetrain.storage import load_weights_file

        load_weights_file(model, str(args.weights))
    with errc.status(f"loading {args.data}"):
        train, held_out = _train_data(args, p, model, example)
    with errc.status("evaluating before training"):
        metric, before = evaluate(model, p, (held_out.x, held_out.y))
    res = train_loop(
        model,
        p,
        train.x,
        train.y,
        steps=args.steps,
        lr=args.lr,
        checkpoint_dir=args.resume,
        checkpoint_every=args.checkpoint_every,
        show_progress=not args.json,
        data_spec=args.data,
        resume_anyway=args.resume_anyway,
    )
    with errc.status("evaluating after training"):
        res.metric_name, res.metric_before = metric, before
        res.metric_after = evaluate(model, p, (held_out.x, held_out.y))[1]
    if metric == "accuracy":
        res.accuracy_before, res.accuracy_after = res.metric_before, res.metric_after
    res.extra["held_out_samples"] = len(held_out.x)
    if args.json:
        print(json.dumps(res.to_dict()))
        return 0
    show = (lambda v: f"{100 * v:.1f} %") if metric == "accuracy" else (lambda v: f"{v:.4g}")
    console.print(
        f"trained {res.steps} steps on {args.data} ({len(train.x):,} samples): {metric} on "
        f"{len(held_out.x):,} held-out samples {show(before)} -> {show(res.metric_after)}"
    )
    console.print(
        f"memory: measured peak {_kib(res.measured_peak_bytes)}, predicted "
        f"{_kib(res.predicted_peak_bytes)}, budget {_kib(res.budget_bytes)}; "
        f"storage written {_kib(res.storage_bytes_written)}"
    )
    return 0


def _task_of(loss: str, model, example) -> tuple[str, int | None]:
    """The task a loss trains, and a classifier's class count (its output width)."""
    import copy

    import torch

    with torch.no_grad():
        out = copy.deepcopy(model).eval()(example)
    if loss == "cross-entropy":
        return "classification", int(out.shape[1])
    same = tuple(out.shape) == tuple(example.shape)
    return ("reconstruction" if same else "regression"), None


def _train_data(args: argparse.Namespace, plan, model, example):
    """The training split and the held-out split (`--test-data`, or the `--val-split` part)."""
    from edgetrain.data import load_data

    task, classes = _task_of(plan.loss, model, example)
    kw = dict(
        input_shape=plan.input_shape or tuple(example.shape[1:]),
        input_dtype=plan.input_dtype or str(example.dtype).removeprefix("torch."),
        task=task,
        num_classes=classes,
        label=args.label,
        x_key=args.x_key,
        y_key=args.y_key,
        resize=args.resize,
        val_split=args.val_split,
    )
    train = load_data(args.data, split="train", **kw)
    held_out = (
        load_data(args.test_data, split="train", **{**kw, "val_split": 0.0})
        if args.test_data
        else load_data(args.data, split="test", **kw)
    )
    return train, held_out


def _cmd_data(args: argparse.Namespace) -> int:
    from edgetrain.data import inspect_data

    kw: dict = dict(label=args.label, x_key=args.x_key, y_key=args.y_key, resize=args.resize)
    if args.model:
        from edgetrain.models import build_model, model_loss

        model, example = build_model(args.model)
        task, classes = _task_of(model_loss(args.model), model, example)
        kw |= dict(
            input_shape=tuple(example.shape[1:]),
            input_dtype=str(example.dtype).removeprefix("torch."),
            task=task,
            num_classes=classes,
        )
    with errc.status(f"reading {args.source}"):
        report = inspect_data(args.source, **kw)
    d = report.to_dict()
    if args.json:
        print(json.dumps(d))
        return 0
    t = Table(title=f"data: {args.source}", show_header=False)
    for k, v in d.items():
        t.add_row(k, str(v))
    console.print(t)
    return 0 if report.fits or not args.model else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from edgetrain.cost import load_device
    from edgetrain.demo import run_demo

    load_device(args.device)  # a bad device fails before any work
    return run_demo(out_dir=str(args.out), device=args.device, quick=args.quick)


# Later stages of the pipeline register their own commands. They are imported only when their
# command (or the full help) is asked for, so `edgetrain profile` does not pay for Flower's or
# the code generator's imports.
_STAGE_COMMANDS = {
    "compile": "edgetrain.codegen._cli",
    "mcu-run": "edgetrain.codegen._cli",
    "bench": "edgetrain.strategies._cli",
    "federate": "edgetrain.federated._cli",
    "export": "edgetrain.export._cli",
}


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors read like every other error: one line,
    `error: TypeName: ...`, exit code 2 (subcommands' parsers are of this class too)."""

    def error(self, message: str):  # type: ignore[override]
        m = re.match(r"(argument [^:]+: )(\w+Error): (.*)", message, re.DOTALL)
        kind, text = ("InvalidArgumentError", message) if m is None else (m[2], m[1] + m[3])
        _report(kind, f"{self.prog}: {text} (see `{self.prog} --help`)")
        self.exit(2)


def _report(kind: str, message: str) -> None:
    errc.print(f"[bold red]error:[/] {kind}: ", end="", highlight=False, soft_wrap=True)
    errc.print(message, markup=False, highlight=False, soft_wrap=True)


def _add_plan_parser(sub) -> None:
    """`edgetrain plan` and its arguments."""
    pl = sub.add_parser("plan", help="plan training within a memory budget")
    pl.add_argument("--model", required=True, help="built-in model name or path/to/file.py:factory")
    pl.add_argument("--device", required=True, help="catalog name or path/to/board.toml")
    pl.add_argument(
        "--budget",
        type=cli_type(parse_size),
        default=None,
        help="memory budget, e.g. 256KB (default: the device's memory; more than the "
        "device's memory needs --force-budget)",
    )
    pl.add_argument(
        "--force-budget",
        action="store_true",
        help="allow a --budget above the device's memory (the plan records that it was forced)",
    )
    pl.add_argument("--batch-size", type=cli_type(batch_size), default=1)
    pl.add_argument("--objective", choices=["time", "energy"], default="time")
    pl.add_argument("--deadline-s", type=cli_type(positive_float), default=None)
    pl.add_argument(
        "--strategy",
        choices=[*PLANNER_STRATEGIES, *SYSTEM_STRATEGIES],
        default="auto",
        help="the planner (exact, auto), a baseline (keep-all, sqrt, greedy) or a "
        "surveyed system's preparation stage (full, tinyol, tinytl, minilearn, "
        "poet, mandheling, melon, sage, tte; see `edgetrain bench`)",
    )
    pl.add_argument(
        "--policy",
        type=cli_type(validate.policy),
        default=None,
        help="what trains: all, bias-only, last:K, parameter names, fisher "
        "(needs --calibration), or lora:R[:MODULES] (rank-R adapters on linear and 1x1 "
        "conv layers, e.g. lora:8:query,key,value)",
    )
    pl.add_argument(
        "--calibration",
        metavar="DATA",
        default=None,
        help="a few local samples (e.g. fashion-mnist:5-9) to rank layers by Fisher "
        "information per byte for the sparse update (strategy auto); for tte, "
        "mandheling and minilearn the images they quantise with and analyse "
        f"(default: {DEFAULT_CALIBRATION})",
    )
    pl.add_argument("--calibration-samples", type=cli_type(positive_int), default=16)
    pl.add_argument("--optimizer", choices=["sgd", "momentum", "adam", "adamw"], default="sgd")
    pl.add_argument(
        "--weight-decay",
        type=cli_type(validate.weight_decay),
        default=0.0,
        help="L2 weight decay (decoupled for adamw), recorded in the plan",
    )
    pl.add_argument(
        "--schedule",
        type=cli_type(validate.lr_schedule),
        default="constant",
        help="learning-rate schedule the Trainer follows: constant, cosine, step:N:GAMMA, "
        "optionally after warmup:N+ (recorded in the plan)",
    )
    pl.add_argument(
        "--loss", type=cli_type(validate.loss_name), default=None, help=validate.LOSS_HELP
    )
    pl.add_argument("--no-paging", action="store_true", help="never page to storage")
    pl.add_argument(
        "--no-check",
        action="store_true",
        help="do not run a PyTorch plan on this host before writing it (by default its peak "
        "is measured and a plan over its simulation is corrected or re-planned)",
    )
    pl.add_argument(
        "--executor",
        choices=["pytorch", "c", "executorch"],
        default=None,
        help="what runs the plan: pytorch (edgetrain train), c (edgetrain compile) or "
        "executorch (edgetrain export: every activation kept, SGD or momentum); "
        "the predicted peak is that executor's memory (default: pytorch; "
        "strategy auto falls back to c when pytorch does not fit)",
    )
    pl.add_argument(
        "--precision",
        choices=["fp32", "int8"],
        default=None,
        help="arithmetic of the step; int8 runs on the C executor (default: fp32; "
        "strategy auto falls back to int8 when fp32 does not fit)",
    )
    pl.add_argument(
        "--freeze-batch-norm",
        action="store_true",
        help="batch norm uses its running statistics (needed by edgetrain compile)",
    )
    pl.add_argument(
        "-o", "--output", type=cli_type(output_file), help="write the plan as JSON to this file"
    )
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(fn=_cmd_plan)


def _add_train_parser(sub) -> None:
    """`edgetrain train` and its arguments."""
    tr = sub.add_parser("train", help="execute a plan on real data")
    tr.add_argument(
        "--plan",
        required=True,
        type=cli_type(lambda v: validate.existing_file(v, "plan file (--plan)", PlanFileError)),
        help="plan.json from `edgetrain plan` (checked before use: NOTE [ Plans are data ])",
    )
    tr.add_argument(
        "--model",
        default=None,
        help="the plan's model, named by you: needed when the plan's model is a Python file "
        "(path/to/file.py:factory), which must be the file the plan was made for (SHA-256)",
    )
    tr.add_argument(
        "--trust-plan",
        action="store_true",
        help="import the model file the plan names without --model (its SHA-256 must still "
        "match the plan's)",
    )
    tr.add_argument(
        "--device",
        default=None,
        help="the device file the plan was made for, when it is not in the catalog "
        "(path/to/board.toml)",
    )
    tr.add_argument(
        "--loss",
        type=cli_type(validate.loss_name),
        default=None,
        help="the plan's loss (recorded in it; the default): a different one is refused",
    )
    tr.add_argument(
        "--data",
        default="fashion-mnist:5-9",
        help="a built-in set (fashion-mnist:5-9, digits), data.npz, x.npy,y.npy, data.csv, a "
        "folder of class sub-folders of images, or file.py:make_dataset",
    )
    validate.add_data_arguments(
        tr, held_out="fraction of the data held out for the metric (default 0.1)"
    )
    tr.add_argument(
        "--test-data", default=None, help="held-out data to report the metric on instead"
    )
    tr.add_argument("--steps", type=cli_type(steps), default=100)
    tr.add_argument("--lr", type=cli_type(learning_rate), default=0.01)
    tr.add_argument(
        "--weights",
        type=cli_type(
            lambda v: validate.existing_file(v, "weights file (--weights)", WeightsFileError)
        ),
        help="start from these weights (.safetensors)",
    )
    tr.add_argument(
        "--resume",
        metavar="DIR",
        type=cli_type(lambda v: output_dir(v, "checkpoint folder (--resume)")),
        help="checkpoint folder: resume from it and checkpoint into it",
    )
    tr.add_argument(
        "--resume-anyway",
        action="store_true",
        help="resume a checkpoint written with another --lr, --data, data order or edgetrain "
        "version (never another plan, model or optimizer)",
    )
    tr.add_argument("--checkpoint-every", type=cli_type(positive_int), default=10)
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(fn=_cmd_train)


def _add_data_parser(sub) -> None:
    """`edgetrain data inspect`."""
    da = sub.add_parser("data", help="inspect a data source")
    dsub = da.add_subparsers(dest="data_command", required=True)
    ins = dsub.add_parser("inspect", help="what a data source holds and whether it fits a model")
    ins.add_argument("source", help="a built-in set, .npz, x.npy,y.npy, .csv, image folder, .py")
    ins.add_argument("--model", default=None, help="check it against this model's input")
    validate.add_data_arguments(ins)
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(fn=_cmd_data)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    ap = _Parser(
        prog="edgetrain",
        description="On-device training: capture a PyTorch model, cost it on a device, plan, train.",
    )
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("devices", help="list the device catalog")
    d.add_argument("--json", action="store_true", help="print the catalog as JSON")
    d.set_defaults(fn=_cmd_devices)

    mo = sub.add_parser("models", help="list the built-in models, their inputs and losses")
    mo.add_argument("--json", action="store_true", help="print the list as JSON")
    mo.set_defaults(fn=_cmd_models)

    p = sub.add_parser("profile", help="what plain training of a model costs on a device")
    p.add_argument("--model", required=True, help="built-in model name or path/to/file.py:factory")
    p.add_argument("--device", required=True, help="catalog name or path/to/board.toml")
    p.add_argument("--batch-size", type=cli_type(batch_size), default=1)
    p.add_argument("--optimizer", choices=["sgd", "momentum", "adam", "adamw"], default="sgd")
    p.add_argument(
        "--loss", type=cli_type(validate.loss_name), default=None, help=validate.LOSS_HELP
    )
    p.add_argument(
        "--measure", action="store_true", help="also run one real step in PyTorch and measure it"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        type=cli_type(output_file),
        help="draw where the memory goes",
    )
    p.set_defaults(fn=_cmd_profile)

    _add_plan_parser(sub)

    _add_train_parser(sub)

    _add_data_parser(sub)

    m = sub.add_parser("demo", help="the two-stage story on the built-in default")
    m.add_argument(
        "--out",
        default="results/demo",
        type=cli_type(lambda v: output_dir(v, "demo folder (--out)")),
        help="folder for the report and plots",
    )
    m.add_argument("--device", default="nrf52840")
    m.add_argument("--quick", action="store_true", help="fewer pretraining samples (CI)")
    m.set_defaults(fn=_cmd_demo)

    args = sys.argv[1:] if argv is None else argv
    command = next((a for a in args if not a.startswith("-")), None)
    wanted = (
        [_STAGE_COMMANDS[command]]
        if command in _STAGE_COMMANDS
        else []
        if command in sub.choices
        else list(_STAGE_COMMANDS.values())
    )
    for module in dict.fromkeys(wanted):
        import_module(module).register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure is one `error: TypeName: message` on stderr and exit
    code 2, never a traceback: edgetrain's own errors, and the OS's and Python's value errors
    a handler did not anticipate (a file vanishing, a disk filling, the host running out of
    memory)."""
    args = build_parser(argv).parse_args(argv)
    try:
        return args.fn(args)
    except EdgetrainError as e:
        _report(type(e).__name__, str(e))
    except (OSError, ValueError, MemoryError) as e:
        _report(type(e).__name__, str(e) or repr(e))
    except RuntimeError as e:
        text = str(e)
        if "can't allocate memory" not in text and "out of memory" not in text.lower():
            raise
        _report(
            "MemoryError",
            f"this host ran out of memory ({text.splitlines()[0]}); use a smaller batch size "
            "or model",
        )
    return 2


if __name__ == "__main__":
    sys.exit(main())
