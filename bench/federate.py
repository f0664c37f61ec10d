"""Acceptance numbers for federated training (issue 6): a mixed fleet on non-IID Fashion-MNIST.

    .venv/bin/python bench/federate.py [--rounds 40] [--local-steps 20] [--seeds 0,1,2]
                                       [--fleet examples/fleet.toml] [--partition dirichlet:0.5]
                                       [--server-momentum 0.5] [--server-lr 0.5]

(--server-momentum 0 --server-lr 1 is plain FedAvg, for comparison.)

For every seed (which draws the data split, the batches and the dropouts) the federation runs
twice on Flower's simulation engine, without dropout and with 30 % of the clients dropping out
at random each round, and every client also trains alone (local-only) for the same steps. The
global model's held-out accuracy is compared with every device kind's local-only training.
Writes results/bench/federate.json and the accuracy plots under results/bench/federate-*/.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import time
from pathlib import Path

from edgetrain.federated import FederationConfig, Partition, federate, load_fleet, prepare_plans
from edgetrain.storage import write_json_atomic


def _mean(xs):
    return statistics.fmean(xs) if xs else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fleet", default="examples/fleet.toml")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--local-steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--lr-decay", type=float, default=1.0)
    ap.add_argument("--server-lr", type=float, default=0.5)
    ap.add_argument("--server-momentum", type=float, default=0.5)
    ap.add_argument("--partition", default="dirichlet:0.5")
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args(argv)
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    base_cfg = FederationConfig(
        model="mcu-cnn",
        fleet=load_fleet(args.fleet),
        rounds=args.rounds,
        partition=Partition.parse(args.partition),
        local_steps=args.local_steps,
        lr=args.lr,
        lr_decay=args.lr_decay,
        server_lr=args.server_lr,
        server_momentum=args.server_momentum,
    )
    plans = prepare_plans(base_cfg.model, base_cfg)
    per_seed = []
    for seed in seeds:
        cfg = dataclasses.replace(base_cfg, seed=seed, plans=plans)
        runs = {}
        for name, c in (
            ("no_dropout", cfg),
            ("dropout", dataclasses.replace(cfg, dropout=args.dropout)),
        ):
            d = out / f"federate-seed{seed}-{name}"
            shutil.rmtree(d, ignore_errors=True)
            t0 = time.perf_counter()
            r = federate(c, out_dir=d, baselines=(name == "no_dropout"))
            runs[name] = dict(r.to_dict(), wall_s=time.perf_counter() - t0)
            print(
                f"seed {seed} {name}: final accuracy {100 * r.final_accuracy:.2f} % after "
                f"{args.rounds} rounds ({runs[name]['wall_s']:.0f} s)",
                flush=True,
            )
        per_seed.append(runs)
    kinds = list(per_seed[0]["no_dropout"]["local_only_accuracy_by_kind"])
    nd = [r["no_dropout"] for r in per_seed]
    dr = [r["dropout"] for r in per_seed]
    final = _mean([r["final_accuracy"] for r in nd])
    final_dropout = _mean([r["final_accuracy"] for r in dr])
    lo = {k: _mean([r["local_only_accuracy_by_kind"][k] for r in nd]) for k in kinds}
    lol = {k: _mean([r["local_only_local_accuracy_by_kind"][k] for r in nd]) for k in kinds}
    glob_own = {k: _mean([r["accuracy_by_kind"][k] for r in nd]) for k in kinds}
    last = nd[0]["rounds"][-1]
    summary = {
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "lr": args.lr,
        "lr_decay": args.lr_decay,
        "server_lr": args.server_lr,
        "server_momentum": args.server_momentum,
        "partition": args.partition,
        "seeds": seeds,
        "fleet": base_cfg.fleet.to_dict(),
        "dropout": args.dropout,
        "final_accuracy_mean": final,
        "final_accuracy_with_dropout_mean": final_dropout,
        "dropout_gap_points_mean": 100 * (final - final_dropout),
        "final_accuracy_per_seed": [r["final_accuracy"] for r in nd],
        "final_accuracy_with_dropout_per_seed": [r["final_accuracy"] for r in dr],
        "accuracy_by_kind_mean": glob_own,
        "local_only_accuracy_by_kind_mean": lo,
        "local_only_local_accuracy_by_kind_mean": lol,
        "global_beats_every_local_only_every_seed": all(
            r["final_accuracy"] > v for r in nd for v in r["local_only_accuracy_by_kind"].values()
        ),
        "bytes_up_last_round_seed0": last["bytes_up"],
        "bytes_down_last_round_seed0": last["bytes_down"],
        "device_time_s_last_round_seed0": last["device_time_s"],
        "device_energy_j_last_round_seed0": last["device_energy_j"],
        "plans": nd[0]["plans"],
        "runs": per_seed,
    }
    write_json_atomic(summary, out / "federate.json")
    print(f"mean over seeds {seeds}:")
    print(
        f"{'kind':16} {'local-only (held-out)':>22} {'local-only (own data)':>22} "
        f"{'global (own data)':>18}"
    )
    for k in kinds:
        print(f"{k:16} {100 * lo[k]:21.2f}% {100 * lol[k]:21.2f}% {100 * glob_own[k]:17.2f}%")
    print(
        f"global model (held-out test set): {100 * final:.2f} %; with {100 * args.dropout:.0f} % "
        f"dropout: {100 * final_dropout:.2f} % (gap {summary['dropout_gap_points_mean']:.2f} points)"
    )
    print(f"wrote {out / 'federate.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
