"""`edgetrain bench`: the CLI handler (registered by `edgetrain/cli.py` through `register`)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from edgetrain.units import format_bytes
from edgetrain.validate import cli_type, output_dir, positive_int

console = Console()


def _cmd_bench(args: argparse.Namespace) -> int:
    from edgetrain.cost import load_device
    from edgetrain.strategies._bench import config_from_args, run_bench

    for d in args.devices or ():
        load_device(d)  # an unknown device fails before any work
    cfg = config_from_args(
        args.quick,
        systems=args.strategies,
        devices=args.devices,
        models=args.models,
        samples=args.samples,
    )
    res = run_bench(cfg, str(args.out), show_progress=not args.json)
    if args.json:
        print(json.dumps(res))
        return 0
    t = Table(title=f"edgetrain bench — {res['task']}")
    for col in (
        "strategy",
        "model",
        "device",
        "fits",
        "peak pred.",
        "peak meas.",
        "energy/step",
        "acc. before",
        "acc. after",
        "samples/s",
    ):
        t.add_column(col, justify="left" if col in ("strategy", "model", "device") else "right")

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    for r in res["rows"]:
        t.add_row(
            r["system"],
            r["model"],
            r["device"],
            "yes" if r["fits"] else "[red]no[/]",
            format_bytes(r["predicted_peak_bytes"]),
            format_bytes(r["measured_peak_bytes"]),
            "-" if r["energy_per_step_j"] is None else f"{1e3 * r['energy_per_step_j']:,.3f} mJ",
            pct(r["accuracy_before"]),
            pct(r["accuracy_after"]),
            "-" if r["samples_per_s"] is None else f"{r['samples_per_s']:,.0f}",
        )
    console.print(t)
    for a in res["auto_pareto"]:
        console.print(
            f"auto on {a['model']} / {a['device']}: on the accuracy-vs-peak front "
            f"{a['on_front_accuracy_vs_peak']}, accuracy-vs-energy front "
            f"{a['on_front_accuracy_vs_energy']}"
        )
    console.print(
        f"results: {args.out}/bench.json, bench.md, "
        + ", ".join(p.rsplit("/", 1)[-1] for p in res["plots"])
    )
    return 0


def register(subparsers) -> None:
    """Add `edgetrain bench` to the `edgetrain` command's subparsers."""
    from edgetrain.strategies._catalog import system_names

    b = subparsers.add_parser(
        "bench", help="every strategy on Fashion-MNIST new-class transfer, across devices"
    )
    b.add_argument(
        "--quick",
        action="store_true",
        help="mcu-cnn only, fewer samples (a few minutes on 2 cores)",
    )
    b.add_argument(
        "--out",
        default="results/bench-strategies",
        type=cli_type(lambda v: output_dir(v, "bench results folder (--out)")),
        help="results folder",
    )
    b.add_argument(
        "--strategies",
        nargs="+",
        metavar="NAME",
        choices=system_names(),
        help=f"subset of: {' '.join(system_names())}",
    )
    b.add_argument(
        "--devices",
        nargs="+",
        metavar="DEV",
        help="devices (default: nrf52840 rpi4 snapdragon-865)",
    )
    b.add_argument("--models", nargs="+", metavar="MODEL", help="mcu-cnn and/or mbv2-w0.35")
    b.add_argument(
        "--samples",
        type=cli_type(lambda v: positive_int(v, "samples per strategy (--samples)")),
        help="on-device sample budget per strategy",
    )
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(fn=_cmd_bench, func=_cmd_bench)
