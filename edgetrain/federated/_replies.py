"""The server's schema for client replies, and the cap on each client's aggregation weight.

A client's reply is untrusted input. Before its update is screened (non-finite values, absurd
norms) and averaged, `parse_train_reply` checks it against the schema below and raises
`ClientReplyError` (the reason, with the values and what was expected) on anything else; the
strategy then rejects that one client for the round and logs the reason.

A train reply holds exactly three records:
- `metrics` (MetricRecord): exactly the keys `TRAIN_METRIC_KEYS`; `client-id` an integer naming
  a client of this federation; `num-examples` an integer >= 1; the others finite numbers.
- `trained` (ConfigRecord): tensor name -> `[start, stop]`, two integers with
  `0 <= start < stop <= rows the client's plan trains` of that tensor; the names a subset of
  what the client's plan trains.
- `arrays` (ArrayRecord): the same names; each array of the global tensor's float dtype and of
  shape `(stop - start, *global shape[1:])`; a batch-norm `running_var` positive (non-finite
  values are left to the screening, which names them).
An evaluate reply holds one `metrics` record with exactly `EVAL_METRIC_KEYS`: `client-id` as
above, `num-examples` an integer >= 1 (at most `max_eval_examples` when given), `accuracy` in
[0, 1].

Which client may use which id (each id at most once per round, and from the node that first
used it) is the strategy's part: this module sees one reply at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgetrain.errors import ClientReplyError

# Scalar keys a client's reply carries besides parameter tensors: the server's schema and the
# privacy test both check replies against these lists.
TRAIN_METRIC_KEYS = (
    "num-examples",
    "client-id",
    "train-loss",
    "local-steps",
    "device-time-s",
    "device-energy-j",
)
EVAL_METRIC_KEYS = ("num-examples", "client-id", "accuracy")


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """What one client's plan lets it send: the rows `[0, stop)` of each tensor it trains, and
    the examples it can train in one round (local steps x its plan's batch size)."""

    trained_rows: Mapping[str, tuple[int, int]]
    max_examples_per_round: int


@dataclass(frozen=True, slots=True)
class TrainReply:
    client_id: int
    num_examples: int  # as claimed; the strategy caps it (`capped_weights`)
    ranges: dict[str, tuple[int, int]]
    arrays: dict[str, np.ndarray]
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class EvalReply:
    client_id: int
    num_examples: int
    accuracy: float
    metrics: dict[str, float]


def _show(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_records(content, expected: dict[str, str]) -> None:
    """`content` (a RecordDict) holds exactly the records `expected` (name -> record kind)."""
    kinds = {
        "array": content.array_records,
        "config": content.config_records,
        "metric": content.metric_records,
    }
    names = set(content.keys())
    for name, kind in expected.items():
        if name not in kinds[kind]:
            have = f"a record {name!r} of another kind" if name in names else "none"
            raise ClientReplyError(f"reply lacks its {kind} record {name!r} (has {have})")
    extra = sorted(names - set(expected))
    if extra:
        raise ClientReplyError(
            f"reply carries unexpected record(s) {_show(extra)}; a reply holds only "
            f"{sorted(expected)}"
        )


def _client_id(metrics: dict, num_clients: int, known: Mapping | None) -> int:
    cid = metrics["client-id"]
    if not _is_int(cid):
        raise ClientReplyError(f"client-id = {_show(cid)} is not an integer")
    cid = int(cid)
    if not 0 <= cid < num_clients or (known is not None and cid not in known):
        raise ClientReplyError(
            f"client-id = {cid} names no client of this federation (ids 0..{num_clients - 1})"
        )
    return cid


def _metrics(record, keys: tuple[str, ...]) -> dict:
    metrics = dict(record)
    missing = [k for k in keys if k not in metrics]
    if missing:
        raise ClientReplyError(f"reply's metrics lack {missing}")
    extra = sorted(set(metrics) - set(keys))
    if extra:
        raise ClientReplyError(
            f"reply's metrics carry unknown key(s) {_show(extra)}; allowed: {list(keys)}"
        )
    for k, v in metrics.items():
        if not (_is_int(v) or isinstance(v, (float, np.floating))) or not math.isfinite(v):
            raise ClientReplyError(f"metric {k!r} = {_show(v)} is not a finite number")
    n = metrics["num-examples"]
    if not _is_int(n) or n < 1:
        raise ClientReplyError(f"num-examples = {_show(n)} is not a positive integer")
    return metrics


def _range(name: str, value, stop: int) -> tuple[int, int]:
    if not (
        isinstance(value, list) and len(value) == 2 and all(_is_int(x) for x in value)
    ):  # a scalar, a string, floats, bools or another length
        raise ClientReplyError(
            f"trained range of {name!r} = {_show(value)} is not a list of two integers "
            "[start, stop]"
        )
    a, b = int(value[0]), int(value[1])
    if not 0 <= a < b <= stop:
        raise ClientReplyError(
            f"trained range of {name!r} = [{a}, {b}) is not within the rows [0, {stop}) "
            "this client's plan trains"
        )
    return a, b


def _array(name: str, arr, global_: np.ndarray, a: int, b: int) -> np.ndarray:
    want = (b - a, *global_.shape[1:])
    # the declared dtype and shape first: nothing is decoded that could not be valid
    if str(getattr(arr, "dtype", "")) != global_.dtype.name or tuple(
        getattr(arr, "shape", ())
    ) != tuple(want):
        raise ClientReplyError(
            f"tensor {name!r}: dtype {_show(getattr(arr, 'dtype', None), 24)} shape "
            f"{_show(tuple(getattr(arr, 'shape', ())), 40)}, expected {global_.dtype.name} "
            f"{want} (rows [{a}, {b}) of the global {tuple(global_.shape)})"
        )
    try:
        v = arr.numpy()
    except Exception as e:  # undecodable bytes: never trusted, never re-raised
        raise ClientReplyError(
            f"tensor {name!r} cannot be decoded ({type(e).__name__}: {str(e)[:80]})"
        ) from None
    if v.dtype != global_.dtype or v.shape != want:
        raise ClientReplyError(
            f"tensor {name!r}: decoded as {v.dtype} {v.shape}, declared {global_.dtype.name} {want}"
        )
    if name.endswith("running_var") and np.isfinite(v).all() and (v <= 0).any():
        raise ClientReplyError(
            f"tensor {name!r}: {int((v <= 0).sum())} batch-norm variances <= 0 (min "
            f"{float(v.min()):.4g}); a variance is positive"
        )
    return v


def parse_train_reply(
    content,
    global_: Mapping[str, np.ndarray],
    num_clients: int,
    limits: Mapping[int, ClientLimits] | None = None,
) -> TrainReply:
    """Check one train reply (a Flower RecordDict) against the schema in the module
    docstring; raises `ClientReplyError` naming the first violation."""
    _check_records(content, {"arrays": "array", "trained": "config", "metrics": "metric"})
    metrics = _metrics(content["metrics"], TRAIN_METRIC_KEYS)
    cid = _client_id(metrics, num_clients, limits)
    allowed = None if limits is None else limits[cid].trained_rows
    trained, arrays = dict(content["trained"]), content["arrays"]
    if set(trained) != set(arrays.keys()):
        raise ClientReplyError(
            "the trained record and the uploaded arrays name different tensors: "
            f"{_show(sorted(set(trained) ^ set(arrays.keys())))}"
        )
    if not trained:
        raise ClientReplyError("reply uploads no tensor")
    ranges, out = {}, {}
    for name in sorted(trained):
        g = global_.get(name)
        if g is None or not np.issubdtype(g.dtype, np.floating) or g.ndim == 0:
            raise ClientReplyError(f"tensor {_show(name)} is not a trainable tensor of the model")
        if allowed is not None and name not in allowed:
            raise ClientReplyError(
                f"tensor {_show(name)} is not one client {cid}'s plan trains "
                f"({len(allowed)} tensors)"
            )
        stop = allowed[name][1] if allowed is not None else g.shape[0]
        ranges[name] = _range(name, trained[name], stop)
        out[name] = _array(name, arrays[name], g, *ranges[name])
    return TrainReply(cid, int(metrics["num-examples"]), ranges, out, metrics)


def parse_eval_reply(
    content, num_clients: int, known: Mapping | None = None, max_eval_examples: int | None = None
) -> EvalReply:
    """Check one evaluate reply; raises `ClientReplyError` naming the first violation."""
    _check_records(content, {"metrics": "metric"})
    metrics = _metrics(content["metrics"], EVAL_METRIC_KEYS)
    cid = _client_id(metrics, num_clients, known)
    n = int(metrics["num-examples"])
    if max_eval_examples is not None and n > max_eval_examples:
        raise ClientReplyError(
            f"num-examples = {n} exceeds the {max_eval_examples} test samples of the federation"
        )
    acc = float(metrics["accuracy"])
    if not 0.0 <= acc <= 1.0:
        raise ClientReplyError(f"accuracy = {acc!r} is not in [0, 1]")
    return EvalReply(cid, n, acc, metrics)


def capped_weights(
    claims: Mapping[int, int], caps: Mapping[int, int], fraction: float
) -> dict[int, float]:
    """Each client's aggregation weight: its claimed example count, capped at what its plan
    trains in a round (`caps`, when given for that client), then capped so that no client has
    more than `fraction` of the total.

    The second cap is the water-filling solution: the largest weights are lowered to a common
    level c with c = fraction x (the new total), the others keep theirs. A fraction below
    1 / (number of clients) cannot hold; then every client gets the same weight.
    """
    w = {c: float(min(n, caps[c]) if c in caps else n) for c, n in claims.items()}
    k = len(w)
    if k == 0:
        return {}
    if fraction * k <= 1.0:
        level = min(w.values())
        return {c: level for c in w}
    order = sorted(w.values(), reverse=True)
    total = sum(order)
    if order[0] <= fraction * total:
        return w
    level = order[0]
    for m in range(1, k):  # the m largest are lowered to `level`
        rest = sum(order[m:])
        level = fraction * rest / (1.0 - fraction * m)
        if order[m] <= level:
            break
    return {c: min(v, level) for c, v in w.items()}
