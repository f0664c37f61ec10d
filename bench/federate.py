"""Acceptance numbers for federated training (issue 6): a mixed fleet on non-IID Fashion-MNIST.

    .venv/bin/python bench/federate.py [--rounds 30] [--local-steps 20] [--fleet examples/fleet.toml]

Runs the federation twice on Flower's simulation engine, without dropout and with 30 % of the
clients dropping out at random each round, and reports the global model's held-out accuracy
against every device kind's local-only training. Writes results/bench/federate.json and the
accuracy plots under results/bench/federate*/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

from edgetrain._checkpoint import write_json_atomic
from edgetrain.federated import FederationConfig, Partition, federate, load_fleet
from edgetrain.federated._run import prepare_plans


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fleet", default="examples/fleet.toml")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--local-steps", type=int, default=20)
    ap.add_argument("--partition", default="dirichlet:0.5")
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args(argv)
    out = Path(args.out)
    cfg = FederationConfig(model="mcu-cnn", fleet=load_fleet(args.fleet), rounds=args.rounds,
                           partition=Partition.parse(args.partition), local_steps=args.local_steps)
    cfg = dataclasses.replace(cfg, plans=prepare_plans(cfg.model, cfg))
    runs = {}
    for name, c in (("no_dropout", cfg), ("dropout", dataclasses.replace(cfg, dropout=args.dropout))):
        d = out / f"federate-{name}"
        shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        r = federate(c, out_dir=d, baselines=(name == "no_dropout"))
        runs[name] = dict(r.to_dict(), wall_s=time.perf_counter() - t0)
        print(f"{name}: final accuracy {100 * r.final_accuracy:.2f} % after {args.rounds} rounds "
              f"({runs[name]['wall_s']:.0f} s)", flush=True)
    base = runs["no_dropout"]
    lo = base["local_only_accuracy_by_kind"]
    lol = base["local_only_local_accuracy_by_kind"]
    summary = {
        "rounds": args.rounds, "local_steps": args.local_steps, "partition": args.partition,
        "fleet": cfg.fleet.to_dict(), "dropout": args.dropout,
        "final_accuracy": base["final_accuracy"],
        "final_accuracy_with_dropout": runs["dropout"]["final_accuracy"],
        "dropout_gap_points": 100 * (base["final_accuracy"] - runs["dropout"]["final_accuracy"]),
        "accuracy_by_kind": base["accuracy_by_kind"],
        "local_only_accuracy_by_kind": lo,
        "local_only_local_accuracy_by_kind": lol,
        "global_beats_every_local_only": all(base["final_accuracy"] > v for v in lo.values()),
        "global_beats_every_local_only_on_local_data": all(
            base["accuracy_by_kind"][k] > v for k, v in lol.items()),
        "bytes_up_last_round": base["rounds"][-1]["bytes_up"],
        "bytes_down_last_round": base["rounds"][-1]["bytes_down"],
        "plans": base["plans"],
        "runs": runs,
    }
    write_json_atomic(summary, out / "federate.json")
    print(f"{'kind':16} {'local-only (test)':>18} {'local-only (own)':>17} {'global on own':>14}")
    for k in lo:
        print(f"{k:16} {100 * lo[k]:17.2f}% {100 * lol[k]:16.2f}% "
              f"{100 * base['accuracy_by_kind'][k]:13.2f}%")
    print(f"global model (held-out test set): {100 * base['final_accuracy']:.2f} %; with "
          f"{100 * args.dropout:.0f} % dropout: {100 * runs['dropout']['final_accuracy']:.2f} % "
          f"(gap {summary['dropout_gap_points']:.2f} points)")
    print(f"wrote {out / 'federate.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
