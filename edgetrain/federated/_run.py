"""`federate`: prepare each device kind's plan off the device, run the federation on Flower
(in-process simulation engine, or real server and client processes with `deployment=True`),
train the local-only baselines, and report."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgetrain.errors import FederationFailedError
from edgetrain.federated._config import FederationConfig
from edgetrain.federated._fleet import FleetFileError

log = logging.getLogger("edgetrain.federated")


@dataclass(frozen=True)
class FederationResult:
    rounds: tuple[dict, ...]
    final_accuracy: float
    initial_accuracy: float
    accuracy_by_kind: dict[str, float]
    local_only_accuracy_by_kind: dict[str, float]
    local_only_local_accuracy_by_kind: dict[str, float]
    plans: dict[str, dict]
    clip_norm: float | None
    noise_multiplier: float
    dropout: float
    deployment: bool
    out_dir: str
    resumed_at: tuple[int, ...] = ()
    plot: str | None = None
    wall_s: float = 0.0
    notes: tuple[str, ...] = field(default=())
    # every reply the server rejected, over all rounds: {round, phase, client, node_id, reason}
    rejections: tuple[dict, ...] = field(default=())

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rounds"] = list(self.rounds)
        d["resumed_at"] = list(self.resumed_at)
        d["notes"] = list(self.notes)
        d["rejections"] = list(self.rejections)
        return d


def prepare_plans(model_spec: str, config: FederationConfig) -> dict[str, str]:
    """The preparation stage, once per (kind, batch size), off the device: `edgetrain.plan`
    with strategy auto and batch norm live (every client's batch statistics stay comparable, so
    a small device trains a sparse subset rather than micro-batching with frozen BN)."""
    from edgetrain.errors import PlanInfeasibleError
    from edgetrain.models import build_model
    from edgetrain.prepare import trainer_plan as plan

    plans: dict[str, str] = {}
    for g in config.fleet.groups:
        if g.kind in plans:
            continue
        batches = {x.batch_size for x in config.fleet.groups if x.kind == g.kind}
        if len(batches) > 1:
            raise FleetFileError(
                f"device kind {g.kind!r} appears with batch sizes {sorted(batches)}; "
                "use one batch_size per kind"
            )
        model, example = build_model(model_spec)
        try:
            p = plan(
                model,
                example,
                device=g.kind,
                batch_size=g.batch_size,
                strategy="auto",
                name=model_spec,
                freeze_batch_norm=False,
            )
        except PlanInfeasibleError as e:
            raise FleetFileError(
                f"fleet device {g.kind!r}: no training plan for {model_spec} at "
                f"batch_size = {g.batch_size}: {e}"
            ) from None
        plans[g.kind] = p.to_json()
    return plans


def plan_summary(plan_json: str, kind: str | None = None) -> dict:
    from edgetrain.planner import Plan

    p = Plan.from_json(plan_json, device=kind)
    return {
        "trainable_tensors": len(p.trainable()),
        "tensors": len(p.params),
        "policy": p.notes[0] if p.notes else "",
        "batch_size": p.batch_size,
        "micro_batch_size": p.micro_batch_size,
        "predicted_peak_bytes": p.predicted_peak_bytes,
        "budget_bytes": p.budget_bytes,
        "step_latency_s": p.predicted.latency_s,
        "step_energy_j": p.predicted.energy_j,
        "paged_stages": [s.name for s in p.stages if s.decision.value == "page"],
        "recomputed_stages": [s.name for s in p.stages if s.decision.value == "recompute"],
    }


def local_only(config: FederationConfig) -> tuple[dict[str, float], dict[str, float]]:
    """Each client trains alone from the same initial model for rounds x local_steps steps
    under its plan, with the federation's per-round learning rates and batch draws. Returns the mean per kind of (held-out global test accuracy, accuracy on the
    client's own local test split)."""
    from edgetrain.federated._client import global_test_set, one_thread
    from edgetrain.federated._server import initial_state

    init = initial_state(config)
    xg, yg = global_test_set(config)
    # One intra-op thread, as on the clients (measured on a loaded 2-core host: 1.5 ms per
    # nRF52840 step with one thread, 62 ms with two).
    with one_thread():
        return _local_only(config, init, xg, yg)


def _local_only(config, init, xg, yg):
    import torch

    from edgetrain.federated._client import accuracy, build_client_model, local_data, local_train
    from edgetrain.planner import Plan

    glob: dict[str, list[float]] = {}
    loc: dict[str, list[float]] = {}
    for c in config.clients():
        plan = Plan.from_json(config.plans[c.kind], device=c.kind)
        model = build_client_model(config, init)
        d = local_data(config, c.client_id)
        with torch.random.fork_rng():
            for r in range(1, config.rounds + 1):  # the federation's steps and lr schedule
                local_train(
                    model,
                    plan,
                    d.x_train,
                    d.y_train,
                    steps=config.local_steps,
                    lr=config.round_lr(r),
                    seed=config.seed * 100_003 + r * 1009 + c.client_id,
                )
        glob.setdefault(c.kind, []).append(accuracy(model, xg, yg))
        loc.setdefault(c.kind, []).append(accuracy(model, d.x_test, d.y_test))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {k: mean(v) for k, v in glob.items()}, {k: mean(v) for k, v in loc.items()}


@contextlib.contextmanager
def _quiet_flower(verbose: bool):
    # Flower logs every failed client reply with a full traceback at ERROR level; the rounds'
    # records carry each failure's reason, so without --verbose Flower's log is silenced.
    flwr_log = logging.getLogger("flwr")
    old = flwr_log.level
    if not verbose:
        flwr_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        flwr_log.setLevel(old)


def ray_backend_config(num_cpus: int | None = None) -> dict:
    cpus = num_cpus or max(1, min(2, os.cpu_count() or 1))
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": cpus,
            "num_gpus": 0,
            "include_dashboard": False,
            "logging_level": "error",
            "log_to_driver": False,
        },
    }


def run_simulation(
    config: FederationConfig,
    out_dir: Path,
    *,
    message_sink=None,
    verbose: bool = False,
    on_round=None,
) -> None:
    """The federation on Flower's simulation engine (Ray), one virtual SuperNode per client."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import warnings

    from flwr.simulation import run_simulation as flwr_run_simulation

    from edgetrain.federated._client import make_client_app
    from edgetrain.federated._server import make_server_app

    with _quiet_flower(verbose), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flwr_run_simulation(
            server_app=make_server_app(config, out_dir, message_sink, on_round),
            client_app=make_client_app(config),
            num_supernodes=len(config.clients()),
            backend_config=ray_backend_config(),
            verbose_logging=verbose,
        )


def federate(
    config: FederationConfig,
    *,
    out_dir: "str | os.PathLike | None" = None,
    deployment: bool = False,
    baselines: bool = True,
    plot: bool = True,
    message_sink=None,
    verbose: bool = False,
    on_round=None,
    force: bool = False,
) -> FederationResult:
    """Run a federation end to end; see the package docstring. `on_round(record)` is called
    after each completed round of an in-process (simulation) run. With `deployment`, a
    non-empty `OUT/deployment` that edgetrain did not create is refused (`OutputPathError`)
    unless `force`."""
    t0 = time.perf_counter()
    tmp = None
    if out_dir is not None:
        _check_out_dir(Path(out_dir))
        if deployment:
            from edgetrain.federated._deploy import check_workdir

            check_workdir(Path(out_dir), force=force)
    if not config.plans:
        config = dataclasses.replace(config, plans=prepare_plans(config.model, config))
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="edgetrain-federate-")
        out_dir = tmp.name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if deployment:
            from edgetrain.federated._deploy import run_deployment

            run_deployment(config, out, verbose=verbose, force=force)
        else:
            run_simulation(
                config, out, message_sink=message_sink, verbose=verbose, on_round=on_round
            )
        from edgetrain.federated._checkpoint import checkpoint_dir, load_checkpoint

        cp = load_checkpoint(config, out)
        if cp is None:
            raise FederationFailedError(
                f"the federation wrote no checkpoint in {out}: no round completed; rerun with "
                "--verbose to see Flower's log"
            )
        state = cp.state
        if int(state["round"]) < config.rounds:
            raise FederationFailedError(
                f"the federation stopped after round {state['round']} of {config.rounds}; rerun "
                f"the same command to resume from {checkpoint_dir(out)}"
            )
        hist = tuple(state["history"])
        idle = [r["round"] for r in hist if not r["accepted"]]
        warnings_ = (
            (
                f"no client update was accepted in round(s) {idle}: the global model did not "
                "change there; see each round's failure_reasons and rejected",
            )
            if idle
            else ()
        )
        for w in warnings_:
            log.warning(w)
        lo_g, lo_l = local_only(config) if baselines else ({}, {})
        plot_path = None
        if plot and tmp is None:
            plot_path = str(out / "accuracy.png")
            plot_accuracy(hist, state["initial_accuracy"], lo_g, plot_path)
        result = FederationResult(
            rounds=hist,
            final_accuracy=hist[-1]["accuracy"] if hist else state["initial_accuracy"],
            initial_accuracy=state["initial_accuracy"],
            accuracy_by_kind=hist[-1]["accuracy_by_kind"] if hist else {},
            local_only_accuracy_by_kind=lo_g,
            local_only_local_accuracy_by_kind=lo_l,
            plans={k: plan_summary(v, k) for k, v in config.plans.items()},
            clip_norm=config.clip_norm,
            noise_multiplier=config.noise_multiplier,
            dropout=config.dropout,
            deployment=deployment,
            out_dir=str(out),
            resumed_at=tuple(state.get("resumed_at", ())),
            plot=plot_path,
            wall_s=time.perf_counter() - t0,
            notes=(
                "accuracy: global model on the held-out test set; accuracy_by_kind: global "
                "model on the local test splits of that kind's clients; local_only_*: each "
                "client trained alone for rounds x local_steps steps (mean per kind), on the "
                "held-out test set and on its own local test split",
                *warnings_,
            ),
            rejections=tuple(
                dict(r, round=rec["round"]) for rec in hist for r in rec.get("rejected", ())
            ),
        )
        if tmp is None:
            from edgetrain.storage import write_json_atomic

            write_json_atomic(result.to_dict(), out / "report.json")
        return result
    finally:
        if tmp is not None:
            tmp.cleanup()


def _check_out_dir(out: Path) -> None:
    from edgetrain.errors import OutputPathError

    if out.exists() and not out.is_dir():
        raise OutputPathError(
            f"--out {str(out)!r} is a file; the federation needs a folder (checkpoint, report, "
            "plot): give another path"
        )


def plot_accuracy(rounds, initial: float, local_only_by_kind: dict[str, float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    xs = [0] + [r["round"] for r in rounds]
    ax.plot(
        xs,
        [100 * initial] + [100 * r["accuracy"] for r in rounds],
        "k-o",
        lw=2,
        label="global model (held-out test set)",
    )
    kinds = sorted({k for r in rounds for k in r["accuracy_by_kind"]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, k in enumerate(kinds):
        pts = [
            (r["round"], 100 * r["accuracy_by_kind"][k])
            for r in rounds
            if k in r["accuracy_by_kind"]
        ]
        ax.plot(
            *zip(*pts),
            "-",
            color=colors[i % len(colors)],
            alpha=0.8,
            label=f"global model on {k}'s local test data",
        )
        if k in local_only_by_kind:
            ax.axhline(
                100 * local_only_by_kind[k],
                ls="--",
                color=colors[i % len(colors)],
                label=f"{k} local-only (held-out test set)",
            )
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
