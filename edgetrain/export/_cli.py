"""`edgetrain export` (registered by edgetrain/cli.py)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from edgetrain import validate
from edgetrain.errors import PlanFileError
from edgetrain.validate import cli_type, learning_rate

console = Console()


def _cmd_export(args: argparse.Namespace) -> int:
    from edgetrain.planner import Plan

    plan = Plan.load(args.plan)
    spec = plan.model_to_build(args.model, trust_plan=args.trust_plan, plan_path=args.plan)
    from edgetrain.export._export import export
    from edgetrain.models import build_model
    from edgetrain.storage import load_weights_file

    model, example = build_model(spec)
    if args.weights:
        load_weights_file(model, args.weights)
    result = export(model, plan, args.output, lr=args.lr, example_input=example, force=args.force)
    m = result.manifest
    if args.json:
        print(json.dumps(m))
        return 0
    mem = m["memory"]
    et = mem["executorch"]
    console.print(
        f"[bold]{plan.model}[/] -> ExecuTorch in {result.out_dir}: model.pte "
        f"{m['files']['model.pte']['bytes']:,} B, model.ptd {m['files']['model.ptd']['bytes']:,} B;"
        f" {len(m['trainable'])} tensors train, {m['frozen_tensors']} constants"
    )
    ratio = mem["difference_ratio"]
    console.print(
        f"  memory: ExecuTorch plans {et['planned_bytes']:,} B + constants "
        f"{et['constant_bytes']:,} B + optimizer state {et['optimizer_state_bytes']:,} B = "
        f"{et['total_bytes']:,} B; edgetrain predicted {mem['predicted_peak_bytes']:,} B "
        f"({'n/a' if ratio is None else f'{100 * ratio:+.1f} %'})",
        highlight=False,
    )
    return 0


def register(subparsers) -> None:
    e = subparsers.add_parser(
        "export", help="export a plan as an ExecuTorch on-device training program"
    )
    e.add_argument(
        "--plan",
        required=True,
        type=cli_type(lambda v: validate.existing_file(v, "plan file (--plan)", PlanFileError)),
        help="plan.json from `edgetrain plan` (best made with --executor executorch)",
    )
    e.add_argument(
        "--format",
        choices=["executorch"],
        default="executorch",
        help="the program format: executorch (model.pte + model.ptd + manifest.json)",
    )
    e.add_argument(
        "-o",
        "--output",
        required=True,
        help="folder for model.pte, model.ptd, manifest.json and README.md",
    )
    e.add_argument("--force", action="store_true", help="write into a folder holding other files")
    e.add_argument(
        "--model",
        default=None,
        help="the model to build (default: the plan's, if built in; a plan's model file is "
        "imported only with --trust-plan)",
    )
    e.add_argument(
        "--trust-plan",
        action="store_true",
        help="import the model file the plan names (its SHA-256 must match)",
    )
    e.add_argument("--weights", help="start from these weights (.safetensors)")
    e.add_argument(
        "--lr",
        type=cli_type(learning_rate),
        default=0.05,
        help="the SGD learning rate the manifest records for the app's optimizer",
    )
    e.add_argument("--json", action="store_true", help="print the manifest as JSON")
    e.set_defaults(fn=_cmd_export)
