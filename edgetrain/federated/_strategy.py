"""`PartialFedAvg`: Flower's FedAvg for clients that train different parts of the model.

Each client reports which tensors it trained (and the row range, for partial channels) and
uploads only those. Each state-dict entry is averaged over the clients that trained it, weighted
by their example counts, row by row; entries (or rows) no accepted client trained keep the
global value. Replies are screened first: a reply whose values are not all finite, whose update
norm exceeds `reject_norm_factor` x the (lower) median update norm of the round, or whose update
norm exceeds `reject_relative_norm` x the norm of the whole global model is rejected and logged,
and contributes nothing.

Server-side momentum (FedAvgM, Hsu et al. 2019, "Measuring the effects of non-identical data
distribution for federated visual classification"): with `server_momentum` beta > 0 or
`server_lr` eta != 1, the server treats the partial average as a pseudo-gradient
delta = global - average and steps v <- beta v + delta, global <- global - eta v, per tensor and
only on the rows some accepted client trained this round; rows nobody trained keep both their
global value and their momentum. beta = 0, eta = 1 is plain FedAvg. Only the tensors named in
`server_opt_names` (the model's parameters) take the server step; the others (batch-norm running
statistics) are plainly averaged.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.serde import message_to_proto
from flwr.serverapp.strategy import FedAvg

log = logging.getLogger("edgetrain.federated")


def _short_reason(reason: str) -> str:
    """The client's own error message out of Flower's (and Ray's) wrapped traceback."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(reason))
    if "Message: " in text:
        text = text.rsplit("Message: ", 1)[1]
    text = " ".join(text.split()).rstrip("'>")
    return text[:300]


def message_bytes(msg: Message) -> int:
    """Bytes of the message as Flower serialises it for the wire (protobuf)."""
    return len(message_to_proto(msg).SerializeToString())


@dataclass
class RoundLog:
    """What the strategy saw in one round (node ids; names are resolved by the server app)."""

    bytes_down: dict[int, int] = field(default_factory=dict)  # node id -> bytes
    bytes_up: dict[int, int] = field(default_factory=dict)  # client id -> bytes
    node_client: dict[int, int] = field(default_factory=dict)  # node id -> client id
    accepted: list[int] = field(default_factory=list)  # client ids
    rejected: list[dict] = field(default_factory=list)  # {client_id, reason}
    failed_nodes: list[int] = field(default_factory=list)  # node ids
    failures: list[str] = field(default_factory=list)
    metrics: dict[int, dict] = field(default_factory=dict)  # client id -> train metrics
    eval_metrics: dict[int, dict] = field(default_factory=dict)  # client id -> eval metrics


class PartialFedAvg(FedAvg):
    """FedAvg over partial updates, with screening of non-finite and absurd-norm updates."""

    def __init__(
        self,
        *,
        num_clients: int,
        reject_norm_factor: float = 10.0,
        reject_relative_norm: float = 10.0,
        round_offset: int = 0,
        message_sink: Callable[[int, int, bytes], None] | None = None,
        server_lr: float = 1.0,
        server_momentum: float = 0.0,
        server_opt_names: Iterable[str] | None = None,
        momentum_state: dict[str, np.ndarray] | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("min_available_nodes", num_clients)
        kwargs.setdefault("min_train_nodes", num_clients)
        kwargs.setdefault("min_evaluate_nodes", num_clients)
        super().__init__(**kwargs)
        self.reject_norm_factor = reject_norm_factor
        self.reject_relative_norm = reject_relative_norm
        self.round_offset = round_offset
        self.message_sink = message_sink
        if not (math.isfinite(server_lr) and server_lr > 0):
            raise ValueError(f"server_lr = {server_lr} must be a positive number (1.0 is FedAvg)")
        if not (math.isfinite(server_momentum) and 0 <= server_momentum < 1):
            raise ValueError(f"server_momentum = {server_momentum} must be in [0, 1) (0 is FedAvg)")
        self.server_lr = float(server_lr)
        self.server_momentum = float(server_momentum)
        self.server_opt_names = None if server_opt_names is None else frozenset(server_opt_names)
        # the server's momentum buffers (float64), one per stepped tensor; checkpointed by the app
        self.momentum: dict[str, np.ndarray] = {
            k: np.array(v, np.float64) for k, v in (momentum_state or {}).items()
        }
        self.logs: dict[int, RoundLog] = {}
        self._global: dict[str, np.ndarray] = {}

    def _log(self, server_round: int) -> RoundLog:
        return self.logs.setdefault(server_round + self.round_offset, RoundLog())

    # -- training ------------------------------------------------------------------------------
    def configure_train(self, server_round, arrays: ArrayRecord, config: ConfigRecord, grid):
        self._global = {k: v.numpy() for k, v in arrays.items()}
        self._global_norm = math.sqrt(
            sum(
                float((v.astype(np.float64) ** 2).sum())
                for v in self._global.values()
                if np.issubdtype(v.dtype, np.floating)
            )
        )
        msgs = list(super().configure_train(server_round + self.round_offset, arrays, config, grid))
        rl = self._log(server_round)
        for m in msgs:
            rl.bytes_down[m.metadata.dst_node_id] = message_bytes(m)
        return msgs

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        rl = self._log(server_round)
        valid, errors = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        for m in errors:
            rl.failed_nodes.append(m.metadata.src_node_id)
            rl.failures.append(f"node {m.metadata.src_node_id}: {_short_reason(m.error.reason)}")
        parsed = []
        for m in valid:
            try:
                cid, n, ranges, arrays, metrics = self._parse(m)
            except ValueError as e:
                log.warning(
                    "round %d: reply from node %d rejected: %s",
                    server_round + self.round_offset,
                    m.metadata.src_node_id,
                    e,
                )
                rl.rejected.append(
                    {"client_id": None, "node_id": m.metadata.src_node_id, "reason": str(e)}
                )
                continue
            rl.node_client[m.metadata.src_node_id] = cid
            rl.bytes_up[cid] = message_bytes(m)
            rl.metrics[cid] = metrics
            if self.message_sink is not None:
                self.message_sink(
                    server_round + self.round_offset, cid, message_to_proto(m).SerializeToString()
                )
            parsed.append((cid, n, ranges, arrays))
        parsed.sort(key=lambda p: p[0])  # a fixed order: the average does not depend on arrival
        accepted = self._screen(server_round + self.round_offset, parsed, rl)
        new = self._average(accepted)
        rl.accepted = [p[0] for p in accepted]
        out = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in new.items()})
        total = sum(p[1] for p in accepted)
        metrics = MetricRecord(
            {
                "num-examples": int(total),
                "accepted": len(accepted),
                "rejected": len(rl.rejected),
                "failed": len(errors),
            }
        )
        return out, metrics

    def _parse(self, m: Message):
        c = m.content
        if (
            "arrays" not in c.array_records
            or "metrics" not in c.metric_records
            or "trained" not in c.config_records
        ):
            raise ValueError("reply lacks its arrays, trained or metrics record")
        metrics = dict(c["metrics"])
        cid, n = int(metrics["client-id"]), int(metrics["num-examples"])
        if n <= 0:
            raise ValueError(f"num-examples = {n} must be positive")
        ranges = {k: (int(v[0]), int(v[1])) for k, v in c["trained"].items()}
        arrays = {k: v.numpy() for k, v in c["arrays"].items()}
        if set(ranges) != set(arrays):
            raise ValueError("the trained record and the uploaded arrays name different tensors")
        for k, v in arrays.items():
            if k not in self._global:
                raise ValueError(f"tensor {k!r} is not in the global model")
            a, b = ranges[k]
            g = self._global[k]
            if not (0 <= a < b <= g.shape[0]) or v.shape != (b - a, *g.shape[1:]):
                raise ValueError(
                    f"tensor {k!r}: rows [{a}, {b}) and shape {v.shape} do not fit "
                    f"the global shape {g.shape}"
                )
        return cid, n, ranges, arrays, metrics

    def _screen(self, rnd: int, parsed, rl: RoundLog):
        norms, finite = [], []
        for _cid, _n, ranges, arrays in parsed:
            ok = all(np.isfinite(v).all() for v in arrays.values())
            finite.append(ok)
            if not ok:
                norms.append(math.inf)
                continue
            d2 = 0.0
            for k, v in arrays.items():
                a, b = ranges[k]
                g = self._global[k][a:b].astype(np.float64)
                d2 += float(((v.astype(np.float64) - g) ** 2).sum())
            norm = math.sqrt(d2)
            norms.append(norm if math.isfinite(norm) else math.inf)
            if norm > self.reject_relative_norm * max(self._global_norm, 1e-12):
                norms[-1] = -norm  # marked: rejected on the relative rule
        good = sorted(x for x, f in zip(norms, finite) if f and math.isfinite(x) and x >= 0)
        median = good[(len(good) - 1) // 2] if good else math.inf
        accepted = []
        for p, norm, ok in zip(parsed, norms, finite):
            reason = None
            if not ok:
                reason = "non-finite values (NaN or inf) in the update"
            elif norm < 0:
                reason = (
                    f"update norm {-norm:.4g} exceeds {self.reject_relative_norm:g} x the norm "
                    f"of the global model ({self._global_norm:.4g})"
                )
            elif norm > self.reject_norm_factor * median and len(good) > 1:
                reason = (
                    f"update norm {norm:.4g} exceeds {self.reject_norm_factor:g} x the "
                    f"median update norm {median:.4g}"
                )
            if reason is None:
                accepted.append(p)
            else:
                log.warning("round %d: update from client %d rejected: %s", rnd, p[0], reason)
                rl.rejected.append({"client_id": p[0], "reason": reason})
        return accepted

    def _average(self, accepted) -> dict[str, np.ndarray]:
        new = {}
        for k, g in self._global.items():
            contrib = [
                (n, ranges[k], arrays[k]) for _c, n, ranges, arrays in accepted if k in arrays
            ]
            if not contrib or not np.issubdtype(g.dtype, np.floating):
                new[k] = g.copy()
                continue
            acc = np.zeros(g.shape, np.float64)
            w = np.zeros(g.shape[0], np.float64)
            for n, (a, b), v in contrib:
                acc[a:b] += n * v.astype(np.float64)
                w[a:b] += n
            wb = w.reshape((-1,) + (1,) * (g.ndim - 1))
            g64 = g.astype(np.float64)
            out = np.where(wb > 0, acc / np.where(wb > 0, wb, 1.0), g64)
            if self._server_steps(k):
                out = self._server_step(k, g64, out, wb > 0)
            new[k] = out.astype(g.dtype)
        return new

    def _server_steps(self, name: str) -> bool:
        if self.server_lr == 1.0 and self.server_momentum == 0.0:
            return False
        return self.server_opt_names is None or name in self.server_opt_names

    def _server_step(
        self, name: str, g: np.ndarray, avg: np.ndarray, trained: np.ndarray
    ) -> np.ndarray:
        """FedAvgM on the rows trained this round: v <- beta v + (g - avg); g <- g - eta v."""
        v = self.momentum.get(name)
        if v is None or v.shape != g.shape:
            v = np.zeros(g.shape, np.float64)
        v_new = np.where(trained, self.server_momentum * v + (g - avg), v)
        self.momentum[name] = v_new
        return np.where(trained, g - self.server_lr * v_new, g)

    # -- evaluation (each client's global-model accuracy on its local test split) ---------------
    def configure_evaluate(self, server_round, arrays, config, grid):
        return super().configure_evaluate(server_round + self.round_offset, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        rl = self._log(server_round)
        valid, _errors = self._check_and_log_replies(list(replies), is_train=False, validate=False)
        for m in valid:
            metrics = dict(m.content["metrics"])
            cid = int(metrics["client-id"])
            rl.node_client[m.metadata.src_node_id] = cid
            rl.eval_metrics[cid] = metrics
        if not valid:
            return None
        n = sum(int(r["num-examples"]) for r in rl.eval_metrics.values())
        acc = sum(float(r["accuracy"]) * int(r["num-examples"]) for r in rl.eval_metrics.values())
        return MetricRecord({"accuracy": acc / max(n, 1), "num-examples": n})
