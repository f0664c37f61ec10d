"""`edgetrain federate`: federated training across a heterogeneous fleet, on Flower."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgetrain.errors import InvalidArgumentError
from edgetrain.validate import cli_type, fraction, non_negative_float, positive_float, positive_int

console = Console()


def _check(check, what: str):
    """An argparse type from a `validate` check, naming the flag in its error."""
    return cli_type(lambda v: check(v, what))


def _weight_fraction(value: object) -> float:
    """`--max-client-weight`: a share of a round's weight in (0, 1]."""
    what = "largest share of a round's weight per client (--max-client-weight)"
    v = positive_float(value, what)
    if v > 1:
        raise InvalidArgumentError(f"{what} must be in (0, 1] (e.g. 0.5), got {value!r}")
    return v


def register(subparsers) -> None:
    """Add `federate` to the `edgetrain` command's subparsers."""
    f = subparsers.add_parser(
        "federate", help="federated on-device training across a fleet (Flower)"
    )
    f.add_argument("--model", required=True, help="built-in model name or path/to/file.py:factory")
    f.add_argument(
        "--fleet",
        required=True,
        metavar="FLEET.toml",
        help="[[device]] tables with kind and count (see examples/fleet.toml)",
    )
    f.add_argument("--rounds", type=cli_type(positive_int), required=True)
    f.add_argument("--data", default="fashion-mnist", help="dataset spec (default fashion-mnist)")
    f.add_argument("--partition", default="dirichlet:0.5", help="dirichlet:ALPHA or iid")
    f.add_argument(
        "--local-steps",
        type=cli_type(positive_int),
        default=20,
        help="optimizer steps per client per round",
    )
    f.add_argument(
        "--lr",
        type=_check(positive_float, "learning rate (--lr)"),
        default=0.1,
        help="local SGD learning rate",
    )
    f.add_argument(
        "--lr-decay",
        type=_check(non_negative_float, "--lr-decay"),
        default=1.0,
        help="per-round factor on the learning rate (round r uses lr * decay^(r-1))",
    )
    f.add_argument(
        "--server-lr",
        type=_check(positive_float, "--server-lr"),
        default=0.5,
        help="server learning rate on the averaged update (default 0.5; 1 with "
        "--server-momentum 0 is plain FedAvg)",
    )
    f.add_argument(
        "--server-momentum",
        type=_check(fraction, "server momentum (--server-momentum)"),
        default=0.5,
        help="server momentum on the averaged update (FedAvgM, Hsu et al. 2019; default 0.5)",
    )
    f.add_argument("--seed", type=int, default=0)
    f.add_argument(
        "--train-samples",
        type=cli_type(positive_int),
        default=12000,
        help="training samples split over the clients",
    )
    f.add_argument(
        "--test-samples",
        type=cli_type(positive_int),
        default=2000,
        help="held-out test samples (global test set and local test splits)",
    )
    f.add_argument(
        "--dropout",
        type=_check(fraction, "dropout (--dropout)"),
        default=0.0,
        help="probability a client drops out of a round (robustness drill)",
    )
    f.add_argument(
        "--clip-norm",
        type=_check(positive_float, "--clip-norm"),
        default=None,
        help="clip each client's update to this L2 norm (differential privacy)",
    )
    f.add_argument(
        "--noise-multiplier",
        type=_check(non_negative_float, "--noise-multiplier"),
        default=0.0,
        help="Gaussian noise std = multiplier x clip norm, added on the client",
    )
    f.add_argument(
        "--round-timeout-s", type=_check(positive_float, "--round-timeout-s"), default=600.0
    )
    f.add_argument(
        "--max-client-weight",
        type=cli_type(_weight_fraction),
        default=0.5,
        metavar="FRACTION",
        help="the largest share of a round's aggregation weight one client may take, in (0, 1] "
        "(default 0.5); each client's claimed example count is also capped at local steps x "
        "its plan's batch size",
    )
    f.add_argument(
        "--deployment",
        action="store_true",
        help="real Flower SuperLink and SuperNode processes on loopback",
    )
    f.add_argument(
        "--force",
        action="store_true",
        help="with --deployment: use OUT/deployment even if it holds files edgetrain did not "
        "write (only edgetrain's own files there are replaced)",
    )
    f.add_argument("--no-baselines", action="store_true", help="skip local-only training")
    f.add_argument(
        "--out",
        default="results/federate",
        help="folder for the checkpoint (resumed if present), report and plot",
    )
    f.add_argument("--verbose", action="store_true", help="show Flower's log")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(fn=_cmd_federate, func=_cmd_federate)


def _cmd_federate(args: argparse.Namespace) -> int:
    from edgetrain.federated import FederationConfig, Partition, federate, load_fleet

    cfg = FederationConfig(
        model=args.model,
        fleet=load_fleet(args.fleet),
        rounds=args.rounds,
        data=args.data,
        partition=Partition.parse(args.partition),
        local_steps=args.local_steps,
        lr=args.lr,
        lr_decay=args.lr_decay,
        seed=args.seed,
        server_lr=args.server_lr,
        server_momentum=args.server_momentum,
        train_samples=args.train_samples,
        test_samples=args.test_samples,
        dropout=args.dropout,
        clip_norm=args.clip_norm,
        noise_multiplier=args.noise_multiplier,
        round_timeout_s=args.round_timeout_s,
        max_client_weight_fraction=args.max_client_weight,
    )
    if not args.json:
        console.print(
            f"federating [bold]{args.model}[/] over {len(cfg.clients())} clients "
            f"({', '.join(f'{g.count} x {g.kind}' for g in cfg.fleet.groups)}), "
            f"{args.rounds} rounds, {cfg.partition}, "
            f"{'deployment (loopback)' if args.deployment else 'simulation'}"
        )
    if args.json:
        r = federate(
            cfg,
            out_dir=args.out,
            deployment=args.deployment,
            baselines=not args.no_baselines,
            verbose=args.verbose,
            force=args.force,
        )
        print(json.dumps(r.to_dict()))
        return 0
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("rounds", total=args.rounds)

        def on_round(rec: dict) -> None:
            progress.update(
                task,
                completed=rec["round"],
                description=f"round {rec['round']}: {100 * rec['accuracy']:.1f} %",
            )

        r = federate(
            cfg,
            out_dir=args.out,
            deployment=args.deployment,
            baselines=not args.no_baselines,
            verbose=args.verbose,
            on_round=on_round,
            force=args.force,
        )
        progress.update(task, completed=args.rounds)
    _print_result(r)
    return 0


def _print_result(r) -> None:
    """The per-round table, each kind's plan, the outcome and every rejection."""
    t = Table(title="federated training per round")
    for col in (
        "round",
        "accuracy",
        *sorted(r.plans),
        "bytes up",
        "bytes down",
        "failed",
        "rejected",
    ):
        t.add_column(col, justify="right")
    for rd in r.rounds:
        t.add_row(
            str(rd["round"]),
            f"{100 * rd['accuracy']:.1f} %",
            *[
                f"{100 * rd['accuracy_by_kind'][k]:.1f} %" if k in rd["accuracy_by_kind"] else "-"
                for k in sorted(r.plans)
            ],
            f"{sum(rd['bytes_up'].values()):,}",
            f"{sum(rd['bytes_down'].values()):,}",
            str(len(rd["failed"])),
            str(len(rd["rejected"])),
        )
    console.print(t)
    for k, p in sorted(r.plans.items()):
        lo = r.local_only_accuracy_by_kind.get(k)
        console.print(
            f"  {k}: trains {p['trainable_tensors']}/{p['tensors']} tensors "
            f"({p['policy']}), peak {p['predicted_peak_bytes']:,} of "
            f"{p['budget_bytes']:,} bytes"
            + (f"; local-only accuracy {100 * lo:.1f} %" if lo is not None else "")
        )
    console.print(
        f"global model: {100 * r.final_accuracy:.1f} % on the held-out test set "
        f"(from {100 * r.initial_accuracy:.1f} %)"
        + (
            f"; DP noise multiplier {r.noise_multiplier:g}, clip {r.clip_norm:g}"
            if r.clip_norm is not None
            else ""
        )
    )
    for rej in r.rejections[:20]:
        who = rej.get("client") or f"node {rej.get('node_id')}"
        console.print(
            f"[yellow]rejected[/] round {rej['round']} {rej.get('phase', 'train')} reply of "
            f"{escape(str(who))}: {escape(str(rej['reason']))}",
            highlight=False,
        )
    if len(r.rejections) > 20:
        console.print(f"... and {len(r.rejections) - 20} more rejections in report.json")
    for note in r.notes[1:]:
        console.print(f"[yellow]warning:[/] {note}")
    if r.resumed_at:
        console.print(f"resumed from the checkpoint of round(s) {r.resumed_at}")
    console.print(f"report {r.out_dir}/report.json, plot {r.plot}")
