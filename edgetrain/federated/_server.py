"""The Flower `ServerApp`: runs `PartialFedAvg`, evaluates the global model on the held-out test
set after every round, records what each round cost (and every reply it rejected, with the
reason), and checkpoints each round (`_checkpoint`: checksummed, FAT-safe) so that a crashed
federation resumes at the next round."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgetrain.errors import CheckpointMismatchError, InvalidArgumentError
from edgetrain.federated._checkpoint import (
    Checkpoint,
    checkpoint_dir,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from edgetrain.federated._config import FederationConfig

log = logging.getLogger("edgetrain.federated")

__all__ = [
    "Checkpoint",
    "CheckpointMismatchError",
    "checkpoint_dir",
    "client_limits",
    "load_checkpoint",
    "make_server_app",
    "read_checkpoint",
    "save_checkpoint",
]


def client_limits(config: FederationConfig):
    """Client id -> `ClientLimits` from its kind's plan: the rows of each tensor it trains and
    the examples it can train in a round (local_steps x the plan's batch size)."""
    from edgetrain.federated._client import trained_ranges
    from edgetrain.federated._replies import ClientLimits
    from edgetrain.models import build_model
    from edgetrain.planner import Plan

    missing = sorted({c.kind for c in config.clients()} - set(config.plans))
    if missing:
        raise InvalidArgumentError(
            f"the federation has no plan for device kind(s) {missing}; run federate() (it "
            "prepares one per kind) or pass plans from prepare_plans()"
        )
    model, _ = build_model(config.model)
    per_kind = {}
    for kind, text in config.plans.items():
        plan = Plan.from_json(text, device=kind)
        per_kind[kind] = ClientLimits(
            trained_ranges(model, plan), config.local_steps * plan.batch_size
        )
    return {c.client_id: per_kind[c.kind] for c in config.clients()}


def server_opt_names(config: FederationConfig) -> frozenset[str]:
    """The model's parameters: the tensors the server's optimiser steps (not BN statistics)."""
    from edgetrain.models import build_model

    model, _ = build_model(config.model)
    return frozenset(k for k, _ in model.named_parameters())


def initial_state(config: FederationConfig) -> dict[str, np.ndarray]:
    from edgetrain.models import build_model

    model, _ = build_model(config.model)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def evaluate_global(config: FederationConfig, weights: dict[str, np.ndarray]) -> float:
    from edgetrain.federated._client import accuracy, build_client_model, global_test_set

    x, y = global_test_set(config)
    return accuracy(build_client_model(config, weights), x, y)


def make_server_app(
    config: FederationConfig | None, out_dir: "str | Path | None", message_sink=None, on_round=None
):
    """The Flower `ServerApp`. With `config=None` (deployment) it reads the config file and the
    output folder from the run config keys `config-path` and `out-dir`. `on_round(record)` is
    called after each round's checkpoint (in-process runs: progress display)."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        if config is None:
            from edgetrain.federated._client import _read_config

            cfg = _read_config(str(context.run_config["config-path"]))
            out = Path(str(context.run_config["out-dir"]))
        else:
            cfg, out = config, Path(out_dir)
        from edgetrain.federated._client import one_thread

        with one_thread():
            _serve(cfg, out, grid, message_sink, on_round)

    return app


def _serve(cfg: FederationConfig, out: Path, grid, message_sink, on_round) -> None:
    """The server's federation: resume or start, run the strategy, record and checkpoint."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

    from edgetrain.federated._strategy import PartialFedAvg

    clients = cfg.clients()
    resumed = load_checkpoint(cfg, out)
    momentum: dict[str, np.ndarray] = {}
    if resumed is None:
        start, weights = 0, initial_state(cfg)
        state = {"history": [], "initial_accuracy": evaluate_global(cfg, weights), "resumed_at": []}
    else:
        start, weights, momentum = resumed.round, resumed.weights, resumed.momentum
        _check_weights(cfg, out, weights)
        state = dict(resumed.state, resumed_at=[*resumed.state.get("resumed_at", []), start])
        log.warning("resuming the federation from the checkpoint of round %d in %s", start, out)
    if start >= cfg.rounds:
        return
    strategy = PartialFedAvg(
        num_clients=len(clients),
        round_offset=start,
        reject_norm_factor=cfg.reject_norm_factor,
        reject_relative_norm=cfg.reject_relative_norm,
        message_sink=message_sink,
        server_lr=cfg.server_lr,
        server_momentum=cfg.server_momentum,
        server_opt_names=server_opt_names(cfg),
        momentum_state=momentum,
        client_limits=client_limits(cfg),
        max_client_weight_fraction=cfg.max_client_weight_fraction,
        max_eval_examples=cfg.test_samples,
        bound_norm_factor=cfg.bound_norm_factor,
    )

    def on_round_end(server_round: int, arrays: ArrayRecord):
        if server_round == 0:
            return None
        rnd = server_round + start
        w = {k: v.numpy() for k, v in arrays.items()}
        acc = evaluate_global(cfg, w)
        state["history"].append(_round_record(cfg, rnd, acc, strategy.logs.get(rnd)))
        save_checkpoint(cfg, out, rnd, w, state, strategy.momentum)
        if on_round is not None:
            on_round(state["history"][-1])
        log.info("round %d: global accuracy %.4f", rnd, acc)
        return MetricRecord({"accuracy": acc})

    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(
            {k: Array(np.require(v, requirements="C")) for k, v in weights.items()}
        ),
        num_rounds=cfg.rounds - start,
        timeout=cfg.round_timeout_s,
        train_config=ConfigRecord(),
        evaluate_fn=on_round_end,
    )


def _check_weights(cfg: FederationConfig, out: Path, weights: dict[str, np.ndarray]) -> None:
    """A resumed checkpoint holds exactly the model's tensors (names, shapes, dtypes)."""
    want = {k: (v.shape, v.dtype) for k, v in initial_state(cfg).items()}
    have = {k: (v.shape, v.dtype) for k, v in weights.items()}
    if have != want:
        diff = sorted(set(want) ^ set(have)) or sorted(k for k in want if want[k] != have[k])
        raise CheckpointMismatchError(
            f"{checkpoint_dir(out)} holds weights that do not fit {cfg.model} (e.g. {diff[:3]}); "
            f"use another --out folder or delete {checkpoint_dir(out)}"
        )


def _round_record(cfg: FederationConfig, rnd: int, acc: float, rl) -> dict:
    clients = cfg.clients()
    if rl is None:
        from edgetrain.federated._strategy import RoundLog

        rl = RoundLog()
    name = {c.client_id: c.name for c in clients}
    kind = {c.client_id: c.kind for c in clients}
    node_name = {n: name[c] for n, c in rl.node_client.items()}
    total_w = sum(rl.weights.values())
    by_kind: dict[str, list[float]] = {}
    for cid, m in sorted(rl.eval_metrics.items()):
        by_kind.setdefault(kind[cid], [0.0, 0.0])
        by_kind[kind[cid]][0] += float(m["accuracy"]) * int(m["num-examples"])
        by_kind[kind[cid]][1] += int(m["num-examples"])
    return {
        "round": rnd,
        "accuracy": acc,
        "accuracy_by_kind": {k: v[0] / v[1] for k, v in by_kind.items() if v[1] > 0},
        "bytes_up": {name[c]: b for c, b in sorted(rl.bytes_up.items())},
        "bytes_down": {node_name.get(n, f"node-{n}"): b for n, b in rl.bytes_down.items()},
        "participants": [name[c] for c in sorted(rl.bytes_up)],
        "accepted": [name[c] for c in rl.accepted],
        "rejected": [dict(r, client=name.get(r.get("client_id"), None)) for r in rl.rejected],
        "bounded": {name[c]: f for c, f in sorted(rl.bounded.items())},
        "claimed_examples": {name[c]: n for c, n in sorted(rl.claimed_examples.items())},
        "weight_share": {
            name[c]: w / total_w for c, w in sorted(rl.weights.items()) if total_w > 0
        },
        "failed": [node_name.get(n, f"node-{n}") for n in rl.failed_nodes],
        "failure_reasons": rl.failures,
        "train_loss": {name[c]: float(m["train-loss"]) for c, m in sorted(rl.metrics.items())},
        "device_time_s": {
            name[c]: float(m["device-time-s"]) for c, m in sorted(rl.metrics.items())
        },
        "device_energy_j": {
            name[c]: float(m["device-energy-j"]) for c, m in sorted(rl.metrics.items())
        },
    }
