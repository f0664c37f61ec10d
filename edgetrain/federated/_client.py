"""The client side: one device trains the global model locally under its own plan.

A client receives the global model, trains `local_steps` steps of its plan's batch size on its
own data (never sent anywhere), and replies with ONLY the tensors its plan trained (rows
`[0, k)` for a partial-channel tensor), its example count and scalar metrics. With DP on, the
update (new - global) is clipped to an L2 norm and Gaussian noise of std
`noise_multiplier * clip_norm` is added on the device before upload.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from edgetrain.errors import ClientDropoutError, ClientFaultError
from edgetrain.federated._config import FederationConfig, split_indices
from edgetrain.federated._fleet import ClientSpec, FaultKind
from edgetrain.federated._replies import EVAL_METRIC_KEYS, TRAIN_METRIC_KEYS  # noqa: F401
from edgetrain.planner import ParamDecision, Plan

_BN = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)

# The forged replies of a `forge` client (fleet file), one per round in this order, cycling:
# each breaks the server's reply schema in one way ("none": its plain, possibly inflated reply).
FORGERIES = (
    "none",
    "missing-client-id",
    "scalar-range",
    "unicode-array",
    "unknown-client-id",
    "duplicate-client-id",
    "missing-num-examples",
    "foreign-tensor",
    "float-num-examples",
)


@dataclass(frozen=True, slots=True)
class LocalData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@functools.lru_cache(maxsize=2)
def _split(
    data: str,
    train_samples: int,
    test_samples: int,
    n_clients: int,
    partition: str,
    seed: int,
    min_size: int,
):
    from edgetrain.data import load_dataset
    from edgetrain.federated._config import Partition

    train = load_dataset(data, split="train", limit=train_samples, seed=seed)
    test = load_dataset(data, split="test", limit=test_samples, seed=seed)
    part = Partition.parse(partition)
    tr, props = split_indices(train.y.numpy(), n_clients, part, seed, min_size=min_size)
    te, _ = split_indices(test.y.numpy(), n_clients, part, seed + 1, proportions=props)
    return train, test, tr, te


def global_test_set(config: FederationConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out global test set (the server's; it is no client's data)."""
    _, test, _, _ = _data_split(config)
    return _fit_input(config, test.x), test.y


def _data_split(config: FederationConfig):
    min_size = max(c.batch_size for c in config.clients())
    return _split(
        config.data,
        config.train_samples,
        config.test_samples,
        len(config.clients()),
        str(config.partition),
        config.seed,
        min_size,
    )


@functools.lru_cache(maxsize=4)
def _example_shape(model_spec: str) -> tuple[int, ...]:
    from edgetrain.models import build_model

    return tuple(build_model(model_spec)[1].shape)


def _fit_input(config: FederationConfig, x: torch.Tensor) -> torch.Tensor:
    from edgetrain.data import resize_for

    return resize_for(x, _example_shape(config.model))


def local_data(config: FederationConfig, client_id: int) -> LocalData:
    """Client `client_id`'s own training data and local test split (seeded, deterministic)."""
    train, test, tr, te = _data_split(config)
    i, j = torch.from_numpy(tr[client_id]), torch.from_numpy(te[client_id])
    return LocalData(
        _fit_input(config, train.x[i]), train.y[i], _fit_input(config, test.x[j]), test.y[j]
    )


def trained_ranges(model: torch.nn.Module, plan: Plan) -> dict[str, tuple[int, int]]:
    """State-dict entries the plan trains -> the row range `[start, stop)` it trains.

    Trainable parameters train all rows; partial-channel ones the first k (the runtime's own
    rounding); a batch-norm module whose affine parameters train also contributes its running
    statistics over the same rows.
    """
    named = dict(model.named_parameters())
    out: dict[str, tuple[int, int]] = {}
    for pp in plan.params:
        if pp.decision is ParamDecision.TRAINABLE:
            out[pp.name] = (0, int(named[pp.name].shape[0]))
        elif pp.decision is ParamDecision.CHANNELS:
            rows = int(named[pp.name].shape[0])
            out[pp.name] = (0, max(1, int(round(pp.channel_ratio * rows))))
    for mname, mod in model.named_modules():
        if isinstance(mod, _BN):
            prefix = f"{mname}." if mname else ""
            spans = [out[prefix + p] for p in ("weight", "bias") if prefix + p in out]
            if spans:
                stop = max(s[1] for s in spans)
                for b in ("running_mean", "running_var"):
                    if getattr(mod, b, None) is not None:
                        out[prefix + b] = (0, stop)
    return out


def build_client_model(config: FederationConfig, state: dict[str, np.ndarray]):
    from edgetrain.models import build_model

    model, _ = build_model(config.model)
    model.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()})
    return model


def local_train(
    model: torch.nn.Module,
    plan: Plan,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float,
    seed: int,
) -> float:
    """`steps` optimizer steps of the plan's batch size through `edgetrain.Trainer`, batches
    drawn by a seeded permutation cycling over the local data; returns the mean loss."""
    from edgetrain.runtime import Trainer

    b = plan.batch_size
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=gen)
    pos, losses = 0, []
    with Trainer(model, plan, lr=lr) as t:
        for _ in range(steps):
            if pos + b > len(order):
                order, pos = torch.randperm(len(y), generator=gen), 0
            idx = order[pos : pos + b]
            pos += b
            loss = t.step(x[idx], y[idx])
            if math.isfinite(loss):
                losses.append(loss)
    return float(np.mean(losses)) if losses else float("nan")


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    from edgetrain.tasks import accuracy as _acc

    return _acc(model, x, y)


def _round_rng(config: FederationConfig, server_round: int, client_id: int, salt: int):
    return np.random.default_rng([config.seed, server_round, client_id, salt])


def client_train(
    config: FederationConfig, client: ClientSpec, state: dict[str, np.ndarray], server_round: int
):
    """One client's round: returns (upload arrays, trained ranges, metrics).

    Raises `ClientDropoutError` when the seeded dropout draw takes it offline this round and
    `ClientFaultError` for a `crash` fault.
    """
    if (
        config.dropout > 0
        and _round_rng(config, server_round, client.client_id, 1).random() < config.dropout
    ):
        raise ClientDropoutError(
            f"client {client.name} is offline in round {server_round} "
            f"(simulated dropout, p = {config.dropout})"
        )
    if client.fault is FaultKind.CRASH:
        raise ClientFaultError(f"client {client.name} crashed on purpose (fault = crash)")
    if client.fault is FaultKind.SLOW:
        time.sleep(client.fault_delay_s)
    plan = Plan.from_json(config.plans[client.kind], device=client.kind)
    model = build_client_model(config, state)
    data = local_data(config, client.client_id)
    loss = local_train(
        model,
        plan,
        data.x_train,
        data.y_train,
        steps=config.local_steps,
        lr=config.round_lr(server_round),
        seed=config.seed * 100_003 + server_round * 1009 + client.client_id,
    )
    ranges = trained_ranges(model, plan)
    new = model.state_dict()
    deltas = {
        k: new[k][a:b].detach().double().numpy() - state[k][a:b].astype(np.float64)
        for k, (a, b) in ranges.items()
    }
    if config.clip_norm is not None:
        norm = math.sqrt(sum(float((d * d).sum()) for d in deltas.values()))
        scale = min(1.0, config.clip_norm / norm) if norm > 0 else 1.0
        gen = _round_rng(config, server_round, client.client_id, 2)
        sigma = config.noise_multiplier * config.clip_norm
        deltas = {
            k: d * scale + (gen.normal(0.0, sigma, d.shape) if sigma > 0 else 0.0)
            for k, d in deltas.items()
        }
    if client.fault is FaultKind.SCALE:  # the parameters' update; BN statistics stay valid
        stats = ("running_mean", "running_var")
        deltas = {k: d if k.endswith(stats) else d * client.fault_scale for k, d in deltas.items()}
    upload = {
        k: (state[k][a:b].astype(np.float64) + deltas[k]).astype(state[k].dtype)
        for k, (a, b) in ranges.items()
    }
    if client.fault is FaultKind.NAN:
        upload = {k: np.full_like(v, np.nan) for k, v in upload.items()}
    metrics = {
        "num-examples": client.fault_claim_examples or int(len(data.y_train)),
        "client-id": client.client_id,
        "train-loss": loss if math.isfinite(loss) else -1.0,
        "local-steps": config.local_steps,
        "device-time-s": plan.predicted.latency_s * config.local_steps,
        "device-energy-j": plan.predicted.energy_j * config.local_steps,
    }
    return upload, ranges, metrics


def forge_reply(
    config: FederationConfig,
    client: ClientSpec,
    state: dict[str, np.ndarray],
    server_round: int,
    upload: dict[str, np.ndarray],
    ranges: dict[str, tuple[int, int]],
    metrics: dict,
) -> tuple[str, dict, dict, dict]:
    """A `forge` client's reply of this round: (forgery name, arrays, trained, metrics), the
    honest parts changed as `FORGERIES[(round - 1) % len]` says."""
    kind = FORGERIES[(server_round - 1) % len(FORGERIES)]
    arrays, metrics = dict(upload), dict(metrics)
    trained: dict = {k: [int(a), int(b)] for k, (a, b) in ranges.items()}
    first = sorted(arrays)[0]
    if kind == "missing-client-id":
        del metrics["client-id"]
    elif kind == "missing-num-examples":
        del metrics["num-examples"]
    elif kind == "scalar-range":
        trained = {k: int(b) for k, (_a, b) in ranges.items()}
    elif kind == "unicode-array":
        arrays[first] = np.array(["x"] * arrays[first].shape[0])
    elif kind == "unknown-client-id":
        metrics["client-id"] = len(config.clients()) + 7
    elif kind == "duplicate-client-id":  # another client of its kind, if there is one
        peers = [c.client_id for c in config.clients() if c.client_id != client.client_id]
        same = [c.client_id for c in config.clients() if c.kind == client.kind]
        metrics["client-id"] = next((c for c in same if c != client.client_id), peers[0])
    elif kind == "foreign-tensor":
        other = [k for k, v in state.items() if k not in ranges and v.dtype.kind == "f"]
        name = other[0] if other else "not.a.tensor"
        arrays[name] = np.asarray(state.get(name, np.zeros(1, np.float32)), np.float32)
        trained[name] = [0, int(arrays[name].shape[0])]
    elif kind == "float-num-examples":
        metrics["num-examples"] = float(metrics["num-examples"]) + 0.5
    return kind, arrays, trained, metrics


def client_evaluate(config: FederationConfig, client: ClientSpec, state: dict[str, np.ndarray]):
    """The global model's accuracy on this client's local test split (metrics only)."""
    model = build_client_model(config, state)
    data = local_data(config, client.client_id)
    return {
        "num-examples": int(len(data.y_test)),
        "client-id": client.client_id,
        "accuracy": accuracy(model, data.x_test, data.y_test),
    }


# -- the Flower ClientApp ------------------------------------------------------------------------
@contextlib.contextmanager
def one_thread():
    """One intra-op thread while a client works (restored after): a device has one core, and
    on a shared 2-core host mcu-cnn's tiny kernels run 40-100x slower with two OpenMP threads."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def make_client_app(config: FederationConfig | None = None):
    """The Flower `ClientApp`. With `config=None` (deployment) it reads the federation's
    config file from the run config key `config-path` and its client id from the node config
    key `partition-id`."""
    from flwr.app import (
        Array,
        ArrayRecord,
        ConfigRecord,
        Context,
        Message,
        MetricRecord,
        RecordDict,
    )
    from flwr.clientapp import ClientApp

    app = ClientApp()

    def _setup(msg: Message, context: Context):
        cfg = config if config is not None else _config_from_context(context)
        cid = int(context.node_config["partition-id"])
        client = cfg.clients()[cid]
        state = {k: v.numpy() for k, v in msg.content["arrays"].items()}
        return cfg, client, state

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        cfg, client, state = _setup(msg, context)
        rnd = int(msg.content["config"]["server-round"])
        with one_thread():
            upload, ranges, metrics = client_train(cfg, client, state, rnd)
        trained = {k: [int(a), int(b)] for k, (a, b) in ranges.items()}
        if client.fault_forge:
            _, upload, trained, metrics = forge_reply(
                cfg, client, state, rnd, upload, ranges, metrics
            )
        content = RecordDict(
            {
                "arrays": ArrayRecord(
                    {k: Array(np.ascontiguousarray(v)) for k, v in upload.items()}
                ),
                "trained": ConfigRecord(trained),
                "metrics": MetricRecord(metrics),
            }
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        cfg, client, state = _setup(msg, context)
        with one_thread():
            metrics = client_evaluate(cfg, client, state)
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


@functools.lru_cache(maxsize=2)
def _read_config(path: str) -> FederationConfig:
    with open(path) as f:
        return FederationConfig.from_json(f.read())


def _config_from_context(context) -> FederationConfig:
    return _read_config(str(context.run_config["config-path"]))
