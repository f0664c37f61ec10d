"""The `edgetrain` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time

from rich.console import Console
from rich.table import Table

from edgetrain.errors import EdgetrainError

console = Console(stderr=False)
errc = Console(stderr=True)


def _kib(n: float) -> str:
    if n >= 1024 ** 3:
        return f"{n / 1024 ** 3:,.2f} GiB"
    if n >= 1024 ** 2:
        return f"{n / 1024 ** 2:,.2f} MiB"
    return f"{n / 1024:,.1f} KiB"


def _cmd_devices(args: argparse.Namespace) -> int:
    from edgetrain.cost import catalog
    from edgetrain.cost._device import DEVICE_TABLE_HEADER, format_device_table

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


def _print_profile(p) -> None:
    c = p.cost
    console.print(f"[bold]{c.model}[/] on [bold]{c.device}[/] — batch {c.batch_size}, "
                  f"optimizer {c.optimizer}")
    t = Table(show_header=True)
    t.add_column("component")
    t.add_column("bytes", justify="right")
    t.add_column("", justify="right")
    rows = [("weights", c.params_bytes), ("buffers", c.buffers_bytes),
            ("gradients", c.grads_bytes), ("optimizer state", c.optimizer_bytes),
            ("saved activations (incl. batch)", c.activation_bytes)]
    for name, v in rows:
        t.add_row(name, f"{v:,}", _kib(v))
    t.add_row("[bold]peak (lifetime simulation)[/]", f"[bold]{c.peak_bytes:,}[/]",
              _kib(c.peak_bytes))
    if p.measured is not None:
        m = p.measured
        t.add_row("measured saved activations", f"{m.activation_bytes:,}", _kib(m.activation_bytes))
        t.add_row("measured peak (allocator)", f"{m.peak_bytes:,}",
                  f"{_kib(m.peak_bytes)}  (pred/meas {c.peak_bytes / m.peak_bytes:.3f})")
    t.add_row("device memory", f"{c.memory_budget_bytes:,}", _kib(c.memory_budget_bytes))
    console.print(t)
    verdict = "[green]fits[/]" if c.fits else "[red]does NOT fit[/]"
    console.print(
        f"peak at {c.peak_phase} of {c.peak_node}: {verdict} "
        f"({100 * c.peak_bytes / c.memory_budget_bytes:.1f} % of {c.device}'s memory)")
    console.print(f"FLOPs forward {c.flops_forward:,}  backward {c.flops_backward:,}  "
                  f"element-wise {c.vector_ops:,}")
    console.print(f"modelled step on {c.device}: {c.latency_s:.4g} s, {c.energy_j:.4g} J")


def _cmd_profile(args: argparse.Namespace) -> int:
    from edgetrain._profile import profile
    from edgetrain.models import build_model

    t0 = time.perf_counter()
    model, example = build_model(args.model)
    p = profile(model, example, device=args.device, batch_size=args.batch_size,
                optimizer=args.optimizer, measure=args.measure, name=args.model)
    if args.plot:
        from edgetrain._plot import plot_profile

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


def _cmd_demo(args: argparse.Namespace) -> int:
    from edgetrain._demo import run_demo

    return run_demo(out_dir=args.out, device=args.device, quick=args.quick)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(
            f"batch size must be a positive integer, got {v}; use e.g. --batch-size 1")
    return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="edgetrain",
        description="On-device training: capture a PyTorch model, cost it on a device, plan, train.")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("devices", help="list the device catalog")
    d.add_argument("--json", action="store_true", help="print the catalog as JSON")
    d.set_defaults(fn=_cmd_devices)

    p = sub.add_parser("profile", help="what plain training of a model costs on a device")
    p.add_argument("--model", required=True,
                   help="built-in model name or path/to/file.py:factory")
    p.add_argument("--device", required=True, help="catalog name or path/to/board.toml")
    p.add_argument("--batch-size", type=_positive_int, default=1)
    p.add_argument("--optimizer", choices=["sgd", "momentum", "adam"], default="sgd")
    p.add_argument("--measure", action="store_true",
                   help="also run one real step in PyTorch and measure it")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", metavar="FILE.png", help="draw where the memory goes")
    p.set_defaults(fn=_cmd_profile)

    m = sub.add_parser("demo", help="the two-stage story on the built-in default")
    m.add_argument("--out", default="results/demo", help="folder for the report and plots")
    m.add_argument("--device", default="nrf52840")
    m.add_argument("--quick", action="store_true", help="fewer pretraining samples (CI)")
    m.set_defaults(fn=_cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except EdgetrainError as e:
        errc.print(f"[bold red]error:[/] {type(e).__name__}: {e}", highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
