"""`PartialFedAvg`: Flower's FedAvg for clients that train different parts of the model.

Each client reports which tensors it trained (and the row range, for partial channels) and
uploads only those. Each state-dict entry is averaged over the clients that trained it, weighted
by their (capped) example counts, row by row; entries (or rows) no accepted client trained keep
the global value. Replies are screened first: a reply whose values are not all finite, whose
update norm exceeds `reject_norm_factor` x the (lower) median update norm of the round, or whose
update norm exceeds `reject_relative_norm` x the norm of the whole global model is rejected and
logged, and contributes nothing. Norms are taken per group, the model's parameters and its
batch-norm statistics, each against its own median: the statistics' update is ~10x the
parameters' (mcu-cnn), so one norm over both would not see a parameter update scaled 9x. An
accepted update longer than `bound_norm_factor` x its group's median is scaled down to that
length (norm bounding, Sun et al. 2019, "Can you really backdoor federated learning?").

Server-side momentum (FedAvgM, Hsu et al. 2019, "Measuring the effects of non-identical data
distribution for federated visual classification"): with `server_momentum` beta > 0 or
`server_lr` eta != 1, the server treats the partial average as a pseudo-gradient
delta = global - average and steps v <- beta v + delta, global <- global - eta v, per tensor and
only on the rows some accepted client trained this round; rows nobody trained keep both their
global value and their momentum. beta = 0, eta = 1 is plain FedAvg. Only the tensors named in
`server_opt_names` (the model's parameters) take the server step; the others (batch-norm running
statistics) are plainly averaged.

NOTE [ a client's reply is untrusted ]
Nothing a client sends is used before it passes, in this order:
1. the schema (`_replies.parse_train_reply`): records, metric keys and types, a known
   `client-id`, a positive integer `num-examples`, tensor names within the client's plan, float32
   arrays of the global shape, well-formed row ranges within the plan's rows;
2. the identity rules here: each `client-id` at most once per round, and only from the node that
   first used it in this run (and a node answers as one client only). Before an id is pinned, a
   round in which two nodes claim it uses neither;
3. the screening (non-finite values, update norm against the median and the global model),
   and norm bounding of what passes;
4. the weight cap (`_replies.capped_weights`): `num-examples` bounded by local steps x the
   batch size of the client's plan, and no client above `max_client_weight_fraction` of the
   round's total weight.
A reply failing 1-3 is rejected: the client contributes nothing this round, and the reason is in
the round's `RoundLog.rejected` (and the report). Nothing in a reply can make the server raise:
an unexpected exception while parsing is itself a rejection. The pins are per run (a resumed
run, with new node ids, pins again).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.serde import message_to_proto
from flwr.serverapp.strategy import FedAvg

from edgetrain.errors import ClientReplyError
from edgetrain.federated._replies import (
    ClientLimits,
    capped_weights,
    parse_eval_reply,
    parse_train_reply,
)

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
    # {client_id (None when the reply named no valid one), node_id, phase, reason}
    rejected: list[dict] = field(default_factory=list)
    claimed_examples: dict[int, int] = field(default_factory=dict)  # client id -> num-examples
    weights: dict[int, float] = field(default_factory=dict)  # client id -> weight used
    bounded: dict[int, float] = field(default_factory=dict)  # client id -> scale on its update
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
        client_limits: Mapping[int, ClientLimits] | None = None,
        max_client_weight_fraction: float = 0.5,
        max_eval_examples: int | None = None,
        bound_norm_factor: float | None = None,
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
        f = max_client_weight_fraction
        if not (math.isfinite(f) and 0 < f <= 1):
            raise ValueError(f"max_client_weight_fraction = {f} must be in (0, 1]")
        if bound_norm_factor is not None and not (
            math.isfinite(bound_norm_factor) and bound_norm_factor >= 1
        ):
            raise ValueError(f"bound_norm_factor = {bound_norm_factor} must be >= 1 or None")
        self.bound_norm_factor = bound_norm_factor
        self.num_clients = num_clients
        self.client_limits = None if client_limits is None else dict(client_limits)
        self.max_client_weight_fraction = float(f)
        self.max_eval_examples = max_eval_examples
        self._node_of_client: dict[int, int] = {}  # the identity pins (NOTE above)
        self._client_of_node: dict[int, int] = {}
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
        rnd = server_round + self.round_offset
        rl = self._log(server_round)
        valid, errors = self._check_and_log_replies(list(replies), is_train=True, validate=False)
        for m in errors:
            rl.failed_nodes.append(m.metadata.src_node_id)
            rl.failures.append(f"node {m.metadata.src_node_id}: {_short_reason(m.error.reason)}")
        parsed = []
        for node, m, r in self._admit(rnd, valid, rl, "train", self._parse_train):
            try:
                wire = message_to_proto(m).SerializeToString()
            except Exception as e:  # e.g. an integer too large for the wire format
                self._reject(rnd, rl, "train", r.client_id, node, f"unserialisable reply: {e}")
                continue
            rl.node_client[node] = r.client_id
            rl.bytes_up[r.client_id] = len(wire)
            rl.metrics[r.client_id] = r.metrics
            rl.claimed_examples[r.client_id] = r.num_examples
            if self.message_sink is not None:
                self.message_sink(rnd, r.client_id, wire)
            parsed.append((r.client_id, r.num_examples, r.ranges, r.arrays))
        parsed.sort(key=lambda p: p[0])  # a fixed order: the average does not depend on arrival
        accepted = self._screen(rnd, parsed, rl)
        caps = {c: lim.max_examples_per_round for c, lim in (self.client_limits or {}).items()}
        weights = capped_weights(
            {p[0]: p[1] for p in accepted}, caps, self.max_client_weight_fraction
        )
        rl.weights = weights
        new = self._average([(c, weights[c], ranges, arrays) for c, _n, ranges, arrays in accepted])
        rl.accepted = [p[0] for p in accepted]
        out = ArrayRecord({k: Array(np.require(v, requirements="C")) for k, v in new.items()})
        metrics = MetricRecord(
            {
                "num-examples": int(round(sum(weights.values()))),
                "accepted": len(accepted),
                "rejected": len(rl.rejected),
                "failed": len(errors),
            }
        )
        return out, metrics

    def _parse_train(self, content):
        return parse_train_reply(content, self._global, self.num_clients, self.client_limits)

    def _parse_eval(self, content):
        return parse_eval_reply(
            content, self.num_clients, self.client_limits, self.max_eval_examples
        )

    def _reject(self, rnd: int, rl: RoundLog, phase: str, cid, node, reason: str) -> None:
        """Log a rejection. Without a trusted id in the reply, the client is the one the node
        proved to be by an earlier admitted reply (None if it never did)."""
        if cid is None:
            cid = self._client_of_node.get(node)
        log.warning("round %d: %s reply from node %s rejected: %s", rnd, phase, node, reason)
        rl.rejected.append({"client_id": cid, "node_id": node, "phase": phase, "reason": reason})

    def _admit(self, rnd: int, msgs: list[Message], rl: RoundLog, phase: str, parse):
        """The replies that pass the schema and the identity rules, as (node, message, parsed);
        the others are rejected with their reason (see the NOTE in the module docstring)."""
        ok: dict[int, list] = {}
        for m in msgs:
            node = m.metadata.src_node_id
            try:
                r = parse(m.content)
            except ClientReplyError as e:
                self._reject(rnd, rl, phase, None, node, str(e))
                continue
            except Exception as e:  # a reply never makes the server raise
                self._reject(
                    rnd, rl, phase, None, node, f"malformed reply ({type(e).__name__}: {e})"[:300]
                )
                continue
            ok.setdefault(r.client_id, []).append((node, m, r))
        out = []
        for cid, claims in sorted(ok.items()):
            pinned = self._node_of_client.get(cid)
            for node, m, r in claims:
                reason = None
                if self._client_of_node.get(node, cid) != cid:
                    reason = f"node {node} answered as client {self._client_of_node[node]} before"
                elif pinned is not None and node != pinned:
                    reason = f"client-id {cid} belongs to node {pinned} (its first reply)"
                elif pinned is None and len(claims) > 1:
                    nodes = sorted(n for n, _m, _r in claims)
                    reason = f"client-id {cid} claimed by {len(claims)} nodes {nodes} this round"
                if reason is not None:
                    self._reject(rnd, rl, phase, None, node, reason)
                    continue
                self._node_of_client[cid], self._client_of_node[node] = node, cid
                out.append((node, m, r))
        return out

    def _group(self, name: str) -> str:
        """The norm group of a tensor: the model's parameters, or its statistics (BN)."""
        if self.server_opt_names is None or name in self.server_opt_names:
            return "parameters"
        return "statistics"

    def _norms(self, ranges, arrays) -> dict[str, float]:
        """The update's L2 norm per group (only the groups it has tensors in)."""
        d2: dict[str, float] = {}
        for k, v in arrays.items():
            a, b = ranges[k]
            g = self._global[k][a:b].astype(np.float64)
            grp = self._group(k)
            d2[grp] = d2.get(grp, 0.0) + float(((v.astype(np.float64) - g) ** 2).sum())
        return {grp: math.sqrt(x) if math.isfinite(x) else math.inf for grp, x in d2.items()}

    def _screen(self, rnd: int, parsed, rl: RoundLog):
        """Reject non-finite updates, updates longer than `reject_relative_norm` x the global
        model, and updates whose norm in a group (parameters, statistics) exceeds
        `reject_norm_factor` x that group's (lower) median over the round; bound the rest."""
        norms, reasons = [], []
        for _cid, _n, ranges, arrays in parsed:
            nm = self._norms(ranges, arrays)
            total = math.sqrt(sum(x * x for x in nm.values()))
            norms.append(nm)
            if not all(np.isfinite(v).all() for v in arrays.values()):
                reasons.append("non-finite values (NaN or inf) in the update")
            elif not total <= self.reject_relative_norm * max(self._global_norm, 1e-12):
                reasons.append(
                    f"update norm {total:.4g} exceeds {self.reject_relative_norm:g} x the norm "
                    f"of the global model ({self._global_norm:.4g})"
                )
            else:
                reasons.append(None)
        medians: dict[str, tuple[float, int]] = {}
        for grp in sorted({g for nm in norms for g in nm}):
            good = sorted(nm[grp] for nm, r in zip(norms, reasons) if r is None and grp in nm)
            medians[grp] = (good[(len(good) - 1) // 2] if good else math.inf, len(good))
        accepted = []
        for p, nm, reason in zip(parsed, norms, reasons):
            for grp, x in sorted(nm.items()):
                med, count = medians[grp]
                if reason is None and count > 1 and x > self.reject_norm_factor * med:
                    reason = (
                        f"update norm of the {grp} {x:.4g} exceeds {self.reject_norm_factor:g} "
                        f"x the median update norm {med:.4g}"
                    )
            if reason is None:
                accepted.append(self._bound(p, nm, medians, rl))
            else:
                node = next((n for n, c in rl.node_client.items() if c == p[0]), None)
                self._reject(rnd, rl, "train", p[0], node, reason)
        return accepted

    def _bound(self, p, norms: dict[str, float], medians: dict, rl: RoundLog):
        """Norm bounding: the part of an accepted update (parameters, statistics) longer than
        `bound_norm_factor` x that group's median update norm is scaled down to that length
        (its direction kept; a convex mix of global and upload, so a variance stays > 0)."""
        cid, n, ranges, arrays = p
        if self.bound_norm_factor is None:
            return p
        scale = {}
        for grp, x in norms.items():
            med, count = medians[grp]
            if count > 1 and x > self.bound_norm_factor * med:
                scale[grp] = self.bound_norm_factor * med / x
        if not scale:
            return p
        out = dict(arrays)
        for k, v in arrays.items():
            f = scale.get(self._group(k))
            if f is not None:
                a, b = ranges[k]
                g = self._global[k][a:b].astype(np.float64)
                out[k] = g + f * (v.astype(np.float64) - g)
        rl.bounded[cid] = min(scale.values())
        log.info("round update of client %d scaled by %s (norm bounding)", cid, scale)
        return cid, n, ranges, out

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
        rnd = server_round + self.round_offset
        rl = self._log(server_round)
        valid, _errors = self._check_and_log_replies(list(replies), is_train=False, validate=False)
        admitted = self._admit(rnd, valid, rl, "evaluate", self._parse_eval)
        for node, _m, r in admitted:
            rl.node_client[node] = r.client_id
            rl.eval_metrics[r.client_id] = r.metrics
        if not admitted:
            return None
        n = sum(int(r["num-examples"]) for r in rl.eval_metrics.values())
        acc = sum(float(r["accuracy"]) * int(r["num-examples"]) for r in rl.eval_metrics.values())
        return MetricRecord({"accuracy": acc / max(n, 1), "num-examples": n})
