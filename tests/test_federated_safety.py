"""Federation safety (issue 16): a client's reply is untrusted input, its weight is capped, the
server's state survives power loss, and `--deployment` never deletes a user's files.

Unit tests drive `PartialFedAvg` with hand-built Flower messages against numpy oracles;
property tests (hypothesis) mutate valid replies and fleet files at random; the acceptance test
runs a federation with one malicious client on Flower's simulation engine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import shutil
import tomllib

import numpy as np
import pytest
import tomli_w
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("flwr.app")

from flwr.app import (  # noqa: E402
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from edgetrain.errors import (  # noqa: E402
    CheckpointCorruptError,
    CheckpointMismatchError,
    DeploymentError,
    FleetFileError,
    OutputPathError,
)
from edgetrain.federated import (  # noqa: E402
    FaultKind,
    FederationConfig,
    PartialFedAvg,
    load_fleet,
    parse_fleet,
)
from edgetrain.federated._checkpoint import (  # noqa: E402
    checkpoint_dir,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from edgetrain.federated._fleet import MAX_CLIENTS  # noqa: E402
from edgetrain.federated._replies import (  # noqa: E402
    TRAIN_METRIC_KEYS,
    ClientLimits,
    capped_weights,
)

# -- a small model and three clients --------------------------------------------------------------
# `w`, `b` are parameters; the bn entries are batch-norm statistics; client 2's plan trains only
# rows [0, 2) of `b` (a sparse plan); each client can train 100 examples a round.
RNG = np.random.default_rng(7)
GLOBAL = {
    "w": RNG.normal(size=(4, 3)).astype(np.float32),
    "b": RNG.normal(size=(4,)).astype(np.float32),
    "bn.running_mean": RNG.normal(size=(4,)).astype(np.float32),
    "bn.running_var": RNG.uniform(0.5, 1.5, size=(4,)).astype(np.float32),
    "bn.num_batches_tracked": np.array(3, np.int64),
}
FULL = {"w": (0, 4), "b": (0, 4), "bn.running_mean": (0, 4), "bn.running_var": (0, 4)}
LIMITS = {
    0: ClientLimits(FULL, 100),
    1: ClientLimits(FULL, 100),
    2: ClientLimits({"b": (0, 2)}, 100),
}
PARAMS = {"w", "b"}


@contextlib.contextmanager
def task_identity():
    """Flower stamps messages with the process's task identity; give this process one."""
    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


@pytest.fixture
def identity():
    with task_identity():
        yield


def _arrays(state):
    return ArrayRecord({k: Array(np.require(v, requirements="C")) for k, v in state.items()})


def _strategy(**kwargs):
    kwargs = {
        "client_limits": LIMITS,
        "server_opt_names": PARAMS,
        "bound_norm_factor": None,
        **kwargs,
    }
    s = PartialFedAvg(num_clients=3, **kwargs)

    class _Grid:
        def get_node_ids(self):
            return [1, 2, 3]

    s.configure_train(1, _arrays(GLOBAL), ConfigRecord(), _Grid())
    return s


def _request(node):
    TaskIdentity.node_id = 0
    content = RecordDict({"arrays": _arrays(GLOBAL), "config": ConfigRecord({"server-round": 1})})
    return Message(content=content, message_type="train", dst_node_id=node)


def _honest(cid, scale=0.05, seed=None):
    """A valid reply's parts (arrays, trained, metrics): the plan's rows, moved a little."""
    rng = np.random.default_rng(cid if seed is None else seed)
    arrays = {}
    for k, (a, b) in LIMITS[cid].trained_rows.items():
        g = GLOBAL[k][a:b].astype(np.float64)
        v = g + scale * rng.normal(size=g.shape)
        if k.endswith("running_var"):
            v = np.abs(v)
        arrays[k] = v.astype(np.float32)
    trained = {k: [a, b] for k, (a, b) in LIMITS[cid].trained_rows.items()}
    metrics = {
        "num-examples": 50,
        "client-id": cid,
        "train-loss": 1.0,
        "local-steps": 5,
        "device-time-s": 0.1,
        "device-energy-j": 0.1,
    }
    return arrays, trained, metrics


def _message(node, arrays, trained, metrics, records=None):
    request = _request(node)
    TaskIdentity.node_id = node
    content = {
        "arrays": ArrayRecord(
            {k: v if isinstance(v, Array) else Array(v) for k, v in arrays.items()}
        ),
        "trained": ConfigRecord(trained),
        "metrics": MetricRecord(metrics),
    }
    if records is not None:
        content = records(content)
    return Message(content=RecordDict(content), reply_to=request)


def _aggregate(strategy, replies):
    arrays, _ = strategy.aggregate_train(1, replies)
    return {k: v.numpy() for k, v in arrays.items()}, strategy.logs[1]


def _oracle_average(parts: dict[int, tuple], weights: dict[int, float]) -> dict[str, np.ndarray]:
    """Each entry's weighted average over the clients that trained each row (float64)."""
    out = {}
    for k, g in GLOBAL.items():
        if not np.issubdtype(g.dtype, np.floating):
            out[k] = g
            continue
        acc = np.zeros(g.shape)
        w = np.zeros(g.shape[0])
        for cid, (arrays, trained, _m) in parts.items():
            if k in arrays:
                a, b = trained[k]
                acc[a:b] += weights[cid] * arrays[k].astype(np.float64)
                w[a:b] += weights[cid]
        wb = w.reshape((-1,) + (1,) * (g.ndim - 1))
        out[k] = np.where(wb > 0, acc / np.where(wb > 0, wb, 1), g)
    return out


# -- the weight cap -------------------------------------------------------------------------------
def test_inflated_num_examples_cannot_take_the_round(identity):
    # Prepare: two honest clients (50 examples each) and client 1 claiming 1e9 examples with an
    # update 9x the others' (the adversarial review's attack); its plan trains 100 a round
    parts = {0: _honest(0), 2: _honest(2)}
    arrays, trained, metrics = _honest(1)
    arrays = {
        k: (GLOBAL[k] + 9 * (v - GLOBAL[k])).astype(np.float32) if k in PARAMS else v
        for k, v in arrays.items()
    }
    parts[1] = (arrays, trained, dict(metrics, **{"num-examples": 10**9}))
    replies = [_message(cid + 1, *parts[cid]) for cid in (0, 1, 2)]
    # Execute
    out, rl = _aggregate(_strategy(max_client_weight_fraction=1.0), replies)
    # Assert: its weight is its plan's 100 examples, not 1e9: the hand-computed average
    expected = _oracle_average(parts, {0: 50, 1: 100, 2: 50})
    for k in GLOBAL:
        np.testing.assert_allclose(out[k], expected[k], rtol=1e-5, atol=1e-6)
    assert rl.claimed_examples[1] == 10**9 and rl.weights == {0: 50, 1: 100, 2: 50}


def test_no_client_takes_more_than_the_fraction_of_a_round(identity):
    # Prepare: no plan caps; client 1 claims 1e9 examples against two clients with 50
    parts = {cid: _honest(cid) for cid in (0, 1, 2)}
    parts[1] = (*parts[1][:2], dict(parts[1][2], **{"num-examples": 10**9}))
    replies = [_message(cid + 1, *parts[cid]) for cid in (0, 1, 2)]
    # Execute
    out, rl = _aggregate(_strategy(client_limits=None, max_client_weight_fraction=0.5), replies)
    # Assert: water-filling by hand: c = 0.5 x (50 + 50) / (1 - 0.5) = 100, half of the total
    assert rl.weights == {0: 50, 1: 100, 2: 50}
    expected = _oracle_average(parts, {0: 50, 1: 100, 2: 50})
    for k in GLOBAL:
        np.testing.assert_allclose(out[k], expected[k], rtol=1e-5, atol=1e-6)


@settings(max_examples=300, deadline=None)
@given(
    claims=st.lists(st.integers(1, 10**12), min_size=1, max_size=12),
    caps=st.lists(st.integers(1, 10**6), min_size=12, max_size=12),
    fraction=st.floats(0.01, 1.0),
)
def test_capped_weights_hold_both_caps(claims, caps, fraction):
    # Execute
    w = capped_weights(dict(enumerate(claims)), dict(enumerate(caps)), fraction)
    # Assert: never above the plan's cap or the claim; no share above the fraction (or equal
    # shares when the fraction cannot hold); a client below the level keeps its weight
    k, total = len(claims), sum(w.values())
    capped = [min(n, caps[i]) for i, n in enumerate(claims)]
    assert all(0 < w[i] <= capped[i] for i in range(k))
    if fraction * k <= 1:
        assert len(set(w.values())) == 1
    else:
        assert max(w.values()) <= fraction * total * (1 + 1e-9)
        level = max(w.values())
        assert all(w[i] == capped[i] or math.isclose(w[i], level) for i in range(k))


def test_a_9x_parameter_update_is_bounded_to_3x_the_median(identity):
    # Prepare: client 1's parameter update is 9x client 0's (under the 10x rejection factor)
    a0, t0, m0 = _honest(0)
    a1 = {k: (GLOBAL[k] + 9 * (v - GLOBAL[k])).astype(np.float32) for k, v in a0.items()}
    a1 = {k: a1[k] if k in PARAMS else a0[k] for k in a0}
    parts = {0: (a0, t0, m0), 1: (a1, t0, dict(m0, **{"client-id": 1}))}
    # Execute
    out, rl = _aggregate(
        _strategy(bound_norm_factor=3.0), [_message(1, *parts[0]), _message(2, *parts[1])]
    )

    # Assert: the parameters' median (the lower of two) is client 0's norm n; client 1's
    # parameter update is scaled to 3 n, i.e. by 3/9, its statistics untouched
    def pnorm(a):
        return math.sqrt(
            sum(float(((a[k] - GLOBAL[k]).astype(np.float64) ** 2).sum()) for k in PARAMS)
        )

    scale = 3 * pnorm(a0) / pnorm(a1)
    assert rl.bounded[1] == pytest.approx(scale, rel=1e-6) and scale == pytest.approx(
        1 / 3, rel=1e-5
    )
    bounded = {
        k: GLOBAL[k] + scale * (a1[k].astype(np.float64) - GLOBAL[k]) if k in PARAMS else a1[k]
        for k in a1
    }
    expected = _oracle_average({0: parts[0], 1: (bounded, t0, None)}, {0: 50, 1: 50})
    for k in GLOBAL:
        np.testing.assert_allclose(out[k], expected[k], rtol=1e-5, atol=1e-6)


def test_a_parameter_attack_hidden_under_large_statistics_is_rejected(identity):
    # Prepare: the statistics' updates are ~20x larger than the parameters' (as batch-norm
    # statistics' are in mcu-cnn); client 1 scales only its parameter update 20x, which leaves
    # its whole-update norm within 1.5x of the others' (a whole-update norm screen passes it)
    parts = {}
    for cid in (0, 1, 2):
        a, t, m = _honest(cid, scale=0.01)
        a = {k: v if k in PARAMS else GLOBAL[k] + (v - GLOBAL[k]) * 30 for k, v in a.items()}
        a = {k: (np.abs(v) if k.endswith("var") else v).astype(np.float32) for k, v in a.items()}
        parts[cid] = (a, t, m)
    a1 = parts[1][0]
    parts[1] = (
        {
            k: (GLOBAL[k] + 20 * (v - GLOBAL[k])).astype(np.float32) if k in PARAMS else v
            for k, v in a1.items()
        },
        *parts[1][1:],
    )
    # Execute
    out, rl = _aggregate(_strategy(), [_message(cid + 1, *parts[cid]) for cid in (0, 1, 2)])
    # Assert: rejected on the parameters' norm; the average is the honest clients' alone
    assert rl.accepted == [0, 2]
    assert [r["client_id"] for r in rl.rejected] == [1] and "parameters" in rl.rejected[0]["reason"]
    expected = _oracle_average({0: parts[0], 2: parts[2]}, {0: 50, 2: 50})
    for k in GLOBAL:
        np.testing.assert_allclose(out[k], expected[k], rtol=1e-5, atol=1e-6)


# -- the reply schema: each defect of the review, and more ----------------------------------------
def _drop(key):
    return lambda a, t, m: (a, t, {k: v for k, v in m.items() if k != key})


def _set_metric(key, value):
    return lambda a, t, m: (a, t, dict(m, **{key: value}))


def _set_array(key, value):
    return lambda a, t, m: (dict(a, **{key: value}), t, m)


def _set_range(key, value):
    return lambda a, t, m: (a, dict(t, **{key: value}), m)


BAD_REPLIES = {
    "missing client-id": (_drop("client-id"), "lack ['client-id']"),
    "missing num-examples": (_drop("num-examples"), "lack ['num-examples']"),
    "scalar trained range": (_set_range("b", 4), "not a list of two integers"),
    "unicode-dtype array": (_set_array("b", np.array(["x", "y", "z", "w"])), "dtype '<U1'"),
    "unknown client-id": (_set_metric("client-id", 17), "names no client"),
    "negative client-id": (_set_metric("client-id", -1), "names no client"),
    "float num-examples": (_set_metric("num-examples", 1e9), "not a positive integer"),
    "zero num-examples": (_set_metric("num-examples", 0), "not a positive integer"),
    "extra metric": (_set_metric("labels-histogram", 3), "unknown key"),
    "nan metric": (_set_metric("train-loss", float("nan")), "not a finite number"),
    "float64 array": (_set_array("b", GLOBAL["b"].astype(np.float64)), "expected float32"),
    "wrong shape": (_set_array("b", np.zeros((3,), np.float32)), "expected float32 (4,)"),
    "range outside the plan": (_set_range("b", [0, 5]), "not within the rows [0, 4)"),
    "empty range": (_set_range("b", [2, 2]), "not within the rows"),
    "float range": (_set_range("b", [0.0, 4.0]), "not a list of two integers"),
    "three-number range": (_set_range("b", [0, 2, 4]), "not a list of two integers"),
    "tensor not in the model": (
        lambda a, t, m: (dict(a, x=np.zeros(2, np.float32)), dict(t, x=[0, 2]), m),
        "not a trainable tensor",
    ),
    "integer tensor of the model": (
        lambda a, t, m: (
            dict(a, **{"bn.num_batches_tracked": np.array([3])}),
            dict(t, **{"bn.num_batches_tracked": [0, 1]}),
            m,
        ),
        "not a trainable tensor",
    ),
    "trained and arrays differ": (
        lambda a, t, m: (a, {k: v for k, v in t.items() if k != "w"}, m),
        "name different tensors",
    ),
    "undecodable array": (
        _set_array("b", Array(dtype="float32", shape=(4,), stype="numpy.ndarray", data=b"junk")),
        "cannot be decoded",
    ),
    "negative variance": (
        _set_array("bn.running_var", -np.ones(4, np.float32)),
        "variances <= 0",
    ),
    "extra record": (
        lambda a, t, m: (a, t, m),
        "unexpected record",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
def test_a_bad_reply_rejects_that_client_and_never_raises(identity, case):
    # Prepare: honest clients 0 and 2, and client 1's reply broken one way
    mutate, words = BAD_REPLIES[case]
    honest = {0: _honest(0), 2: _honest(2)}
    records = None
    if case == "extra record":
        records = lambda c: dict(c, stolen=MetricRecord({"x": 1.0}))  # noqa: E731
    bad = _message(2, *mutate(*_honest(1)), records=records)
    replies = [_message(1, *honest[0]), bad, _message(3, *honest[2])]
    # Execute: never raises
    out, rl = _aggregate(_strategy(), replies)
    # Assert: client 1's reply is rejected with the reason; the round is the honest clients'
    assert rl.accepted == [0, 2]
    assert len(rl.rejected) == 1 and rl.rejected[0]["node_id"] == 2
    assert words in rl.rejected[0]["reason"], rl.rejected[0]["reason"]
    expected = _oracle_average(honest, {0: 50, 2: 50})
    for k in GLOBAL:
        np.testing.assert_allclose(out[k], expected[k], rtol=1e-5, atol=1e-6)


def test_a_tensor_outside_the_clients_plan_is_rejected(identity):
    # Prepare: client 2's plan trains rows [0, 2) of `b` only; it uploads `w` as well
    a, t, m = _honest(2)
    a["w"], t["w"] = GLOBAL["w"].copy(), [0, 4]
    # Execute
    _out, rl = _aggregate(_strategy(), [_message(1, *_honest(0)), _message(3, a, t, m)])
    # Assert
    assert rl.accepted == [0]
    assert "'w' is not one client 2's plan trains" in rl.rejected[0]["reason"]


def test_a_duplicate_client_id_is_never_used_and_a_pinned_one_keeps_its_node(identity):
    # Prepare: round 1: nodes 1 and 2 both answer as client 0 (nobody pinned yet);
    # round 2: node 1 (pinned to client 0 by then) and node 2, again claiming 0
    s = _strategy()
    a0, t0, m0 = _honest(0)
    # Execute round 1: only node 3's client 2 is used
    _out, rl1 = _aggregate(
        s, [_message(1, a0, t0, m0), _message(2, a0, t0, m0), _message(3, *_honest(2))]
    )
    # the next round: node 1 answers alone first and is pinned to client 0
    s.aggregate_train(2, [_message(1, a0, t0, m0)])
    s.aggregate_train(3, [_message(1, a0, t0, m0), _message(2, a0, t0, m0)])
    rl3 = s.logs[3]
    # Assert
    assert rl1.accepted == [2]
    assert sorted(r["node_id"] for r in rl1.rejected) == [1, 2]
    assert all("claimed by 2 nodes" in r["reason"] for r in rl1.rejected)
    assert s.logs[2].accepted == [0]
    assert rl3.accepted == [0] and rl3.node_client == {1: 0}
    assert [r["node_id"] for r in rl3.rejected] == [2]
    assert "belongs to node 1" in rl3.rejected[0]["reason"]


def test_a_node_cannot_change_its_client_id(identity):
    # Prepare: node 2 answers as client 1, then as client 0's id while client 0 is silent
    s = _strategy()
    s.aggregate_train(1, [_message(2, *_honest(1))])
    a, t, m = _honest(0)
    # Execute
    s.aggregate_train(2, [_message(2, a, t, m)])
    # Assert: rejected, and the rejection names the client the node proved to be
    assert s.logs[2].accepted == []
    assert s.logs[2].rejected[0]["client_id"] == 1
    assert "answered as client 1 before" in s.logs[2].rejected[0]["reason"]


@pytest.mark.parametrize(
    "metrics, words",
    [
        ({"num-examples": 5, "accuracy": 0.5}, "lack ['client-id']"),
        ({"num-examples": 5, "client-id": 9, "accuracy": 0.5}, "names no client"),
        ({"num-examples": 5, "client-id": 1, "accuracy": 2.0}, "not in [0, 1]"),
        ({"num-examples": 10**9, "client-id": 1, "accuracy": 0.5}, "exceeds the 500 test"),
        ({"client-id": 1, "accuracy": 0.5}, "lack ['num-examples']"),
    ],
)
def test_a_bad_evaluate_reply_is_rejected(identity, metrics, words):
    # Prepare
    s = _strategy(max_eval_examples=500)
    req = _request(2)
    TaskIdentity.node_id = 2
    bad = Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=req)
    TaskIdentity.node_id = 1
    good = Message(
        content=RecordDict(
            {"metrics": MetricRecord({"num-examples": 10, "client-id": 0, "accuracy": 0.25})}
        ),
        reply_to=_request(1),
    )
    # Execute
    res = s.aggregate_evaluate(1, [good, bad])
    # Assert: the good reply alone makes the round's accuracy
    assert res["accuracy"] == 0.25
    assert words in s.logs[1].rejected[0]["reason"] and s.logs[1].rejected[0]["phase"] == "evaluate"


# -- property: random mutations of a valid reply ---------------------------------------------------
_VALUES = st.one_of(
    st.integers(-3, 6),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(-2, 6), max_size=4),
    st.lists(st.floats(-2, 6), min_size=1, max_size=3),
)
_CONFIG_VALUES = st.one_of(
    _VALUES,
    st.text(max_size=3),
    st.booleans(),
    st.lists(st.booleans(), min_size=1, max_size=3),
)
_DTYPES = st.sampled_from(["float32", "float64", "float16", "int32", "int64", "bool", "<U2"])
_NAMES = st.sampled_from([*GLOBAL, "x", ""])


@st.composite
def _mutation(draw):
    """A list of edits of client 1's reply: (where, key, value)."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["metric", "metric-drop", "range", "range-drop", "array"]))
        if where.startswith("metric"):
            key = draw(st.sampled_from([*TRAIN_METRIC_KEYS, "extra"]))
            edits.append((where, key, draw(_VALUES)))
        elif where.startswith("range"):
            edits.append((where, draw(_NAMES), draw(_CONFIG_VALUES)))
        else:
            shape = tuple(draw(st.lists(st.integers(0, 5), max_size=2)))
            dtype = draw(_DTYPES)
            fill = draw(st.floats(-3, 3))
            edits.append((where, draw(_NAMES), (shape, dtype, fill)))
    return edits


def _apply(edits):
    arrays, trained, metrics = _honest(1)
    for where, key, value in edits:
        if where == "metric":
            metrics[key] = value
        elif where == "metric-drop":
            metrics.pop(key, None)
        elif where == "range":
            trained[key] = value
        elif where == "range-drop":
            trained.pop(key, None)
        else:
            shape, dtype, fill = value
            arrays[key] = np.full(shape, "ab" if dtype == "<U2" else fill).astype(dtype)
    return arrays, trained, metrics


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _valid(arrays, trained, metrics) -> bool:
    """The reply schema, written independently of the server's code."""
    if set(metrics) != set(TRAIN_METRIC_KEYS):
        return False
    if not all((_is_int(v) or isinstance(v, float)) and math.isfinite(v) for v in metrics.values()):
        return False
    if not _is_int(metrics["num-examples"]) or metrics["num-examples"] < 1:
        return False
    if metrics["client-id"] != 1 or not _is_int(metrics["client-id"]):  # 0 and 2 are taken
        return False
    if set(arrays) != set(trained) or not arrays:
        return False
    for k, r in trained.items():
        if k not in FULL or not (isinstance(r, list) and len(r) == 2):
            return False
        if not all(_is_int(x) for x in r) or not 0 <= r[0] < r[1] <= 4:
            return False
        v = arrays[k]
        if v.dtype != np.float32 or v.shape != (r[1] - r[0], *GLOBAL[k].shape[1:]):
            return False
        if k.endswith("running_var") and np.isfinite(v).all() and (v <= 0).any():
            return False
    return True


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(edits=_mutation())
def test_random_reply_mutations_are_rejected_with_a_reason_or_valid(edits):
    # Prepare: honest clients 0 and 2, and client 1's reply with random edits (those Flower's
    # own records refuse to hold are not replies a client could send)
    arrays, trained, metrics = _apply(edits)
    with task_identity():
        try:
            bad = _message(2, arrays, trained, metrics)
        except (TypeError, ValueError):
            assume(False)
        replies = [_message(1, *_honest(0)), bad, _message(3, *_honest(2))]
        # Execute: never raises
        _out, rl = _aggregate(_strategy(), replies)
    # Assert: a valid reply passes the schema (it may still be screened out for non-finite
    # values or its norm, with that reason); an invalid one is rejected with a reason
    rejected = {r["node_id"]: r["reason"] for r in rl.rejected}
    if _valid(arrays, trained, metrics):
        assert 1 in rl.accepted or "norm" in rejected[2] or "non-finite" in rejected[2]
        assert rl.weights.get(1, 0) <= 100  # the plan's cap, whatever it claimed
    else:
        assert 1 not in rl.accepted and rejected.get(2)
    # the honest clients are used unless the mutated reply claimed their id (a duplicate: no
    # claimant of an unpinned id is used) or it moved the round's median norm
    for node, cid in ((1, 0), (3, 2)):
        why = rejected.get(node, "")
        assert cid in rl.accepted or "claimed by 2 nodes" in why or "norm" in why, why


# -- fleet files ----------------------------------------------------------------------------------
KINDS = {  # kind -> valid
    "nrf52840": True,
    "rpi4": True,
    " RPI4 ": True,
    "snapdragon-865": True,
    "no-such-board": False,
    "": False,
    "   ": False,
    "missing-board.toml": False,
    "~nouser-edgetrain/x.toml": False,
    "a" * 5000: False,
    "a\x00b": False,
}
FAULTS = {  # fault -> (kind, scale, delay, claimed examples, forge), None when invalid
    "none": (FaultKind.NONE, 1.0, 0.0, 0, False),
    "": (FaultKind.NONE, 1.0, 0.0, 0, False),
    " NaN ": (FaultKind.NAN, 1.0, 0.0, 0, False),
    "crash": (FaultKind.CRASH, 1.0, 0.0, 0, False),
    "scale:9": (FaultKind.SCALE, 9.0, 0.0, 0, False),
    "slow:2.5": (FaultKind.SLOW, 1.0, 2.5, 0, False),
    "inflate:1e9": (FaultKind.NONE, 1.0, 0.0, 10**9, False),
    "forge": (FaultKind.NONE, 1.0, 0.0, 0, True),
    "scale:9+inflate:1e9+forge": (FaultKind.SCALE, 9.0, 0.0, 10**9, True),
    "nan + forge": (FaultKind.NAN, 1.0, 0.0, 0, True),
    "scale:x": None,
    "scale:nan": None,
    "scale:inf": None,
    "slow:-1": None,
    "inflate:0": None,
    "inflate:1.5": None,
    "inflate:1e300": None,
    "nan+crash": None,
    "forge+forge": None,
    "+": None,
    "bogus": None,
    "scale": None,
}
_ANY = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def _device_table(draw):
    t = {}
    if draw(st.booleans()) or draw(st.booleans()):
        t["kind"] = draw(st.one_of(st.sampled_from(sorted(KINDS)), _ANY))
    if draw(st.booleans()) or draw(st.booleans()):
        t["count"] = draw(st.one_of(st.integers(-2, 1002), _ANY))
    if draw(st.booleans()):
        t["batch_size"] = draw(st.one_of(st.integers(-1, 5000), _ANY))
    if draw(st.booleans()):
        t["fault"] = draw(st.one_of(st.sampled_from(sorted(FAULTS)), _ANY))
    if draw(st.integers(0, 9)) == 0:
        t[draw(st.text(min_size=1, max_size=4))] = draw(_ANY)
    return t


@st.composite
def _fleet_doc(draw):
    doc = {"device": draw(st.lists(_device_table(), max_size=4))}
    if draw(st.integers(0, 9)) == 0:
        doc = {"device": draw(_ANY)}
    if draw(st.integers(0, 9)) == 0:
        doc[draw(st.text(min_size=1, max_size=4))] = draw(_ANY)
    return doc


def _int_in(v, lo, hi):
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _expected_fleet(doc):
    """The fleet a document describes, or None when it is invalid (independent oracle)."""
    tables = doc.get("device")
    if set(doc) != {"device"} or not isinstance(tables, list) or not tables:
        return None
    out = []
    for t in tables:
        if not isinstance(t, dict) or set(t) - {"kind", "count", "batch_size", "fault"}:
            return None
        kind, count = t.get("kind"), t.get("count")
        batch, fault = t.get("batch_size", 8), t.get("fault", "none")
        if not (isinstance(kind, str) and KINDS.get(kind)):
            return None
        if not (_int_in(count, 1, MAX_CLIENTS) and _int_in(batch, 1, 4096)):
            return None
        if not isinstance(fault, str) or FAULTS.get(fault) is None:
            return None
        out.append((kind, count, batch, *FAULTS[fault]))
    if sum(g[1] for g in out) > MAX_CLIENTS:
        return None
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_fleet_doc())
def test_random_fleet_files_load_exactly_or_fail_with_a_fleet_error(doc, tmp_path_factory):
    # Prepare: the document as a TOML file (the path a user's file takes)
    path = tmp_path_factory.mktemp("fleet") / "fleet.toml"
    try:
        path.write_text(tomli_w.dumps(doc))
    except (TypeError, ValueError):  # not representable in TOML (e.g. a NaN key)
        assume(False)
    expected = _expected_fleet(tomllib.loads(path.read_text()))
    # Execute / Assert: the fleet the document describes, or a FleetFileError; nothing else
    if expected is None:
        with pytest.raises(FleetFileError):
            load_fleet(path)
        return
    fleet = load_fleet(path)
    got = [
        (g.kind, g.count, g.batch_size, g.fault, g.fault_scale, g.fault_delay_s)
        + (g.fault_claim_examples, g.fault_forge)
        for g in fleet.groups
    ]
    assert got == expected


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_as_a_fleet_file_are_a_fleet_error_or_a_fleet(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("fleet") / "fleet.toml"
    path.write_bytes(data)
    try:
        fleet = load_fleet(path)
    except FleetFileError:
        return
    assert fleet.groups  # only a valid fleet file loads


@pytest.mark.parametrize(
    "kind", ["a" * 5000, "~nouser-edgetrain/x.toml"], ids=["too-long", "unknown-user"]
)
def test_a_fleet_kind_that_is_no_usable_path_is_a_fleet_error(kind):
    with pytest.raises(FleetFileError, match="'kind'"):
        parse_fleet({"device": [{"kind": kind, "count": 1}]})


def test_a_non_utf8_fleet_file_is_a_fleet_error(tmp_path):
    p = tmp_path / "fleet.toml"
    p.write_bytes(b'[[device]]\nkind = "\xff\xfe"\ncount = 1\n')
    with pytest.raises(FleetFileError, match="not UTF-8"):
        load_fleet(p)


def test_a_fleet_that_is_not_a_table_is_a_fleet_error():
    with pytest.raises(FleetFileError, match="not list"):
        parse_fleet([{"kind": "rpi4", "count": 1}])


def test_combined_faults_round_trip_through_the_config():
    # Prepare
    fleet = parse_fleet(
        {"device": [{"kind": "rpi4", "count": 2, "fault": "scale:9+inflate:1e9+forge"}]}
    )
    cfg = FederationConfig(model="mcu-cnn", fleet=fleet, rounds=1)
    # Execute
    back = FederationConfig.from_json(cfg.to_json())
    # Assert
    assert back == cfg and back.fingerprint() == cfg.fingerprint()
    assert fleet.to_dict()["device"][0]["fault"] == "scale:9+inflate:1000000000+forge"
    c = fleet.clients()[1]
    assert (c.fault, c.fault_scale, c.fault_claim_examples, c.fault_forge) == (
        FaultKind.SCALE,
        9.0,
        10**9,
        True,
    )


# -- the server's checkpoint ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_config():
    return FederationConfig(
        model="mcu-cnn", fleet=parse_fleet({"device": [{"kind": "rpi4", "count": 1}]}), rounds=3
    )


def _weights(rnd):
    return {k: (v + rnd).astype(v.dtype) for k, v in GLOBAL.items()}


def _commit(cfg, out, rounds):
    for r in rounds:
        history = [{"round": i, "accuracy": 0.1 * i} for i in range(1, r + 1)]
        state = {"history": history, "initial_accuracy": 0.1, "resumed_at": []}
        mom = {"w": np.full((4, 3), r, np.float64)}
        save_checkpoint(cfg, out, r, _weights(r), state, mom)


def _assert_round(cp, rnd):
    assert cp.round == rnd and [h["round"] for h in cp.state["history"]] == list(range(1, rnd + 1))
    for k, v in _weights(rnd).items():
        np.testing.assert_array_equal(cp.weights[k], v)
        assert cp.weights[k].shape == v.shape
    np.testing.assert_array_equal(cp.momentum["w"], np.full((4, 3), rnd, np.float64))


def test_a_truncated_state_json_is_not_a_traceback(tmp_path, small_config):
    # Prepare: two committed rounds, then the pointer file torn
    _commit(small_config, tmp_path, [1, 2])
    p = checkpoint_dir(tmp_path) / "state.json"
    p.write_bytes(p.read_bytes()[:7])
    # Execute / Assert: the newest valid state loads all the same
    _assert_round(load_checkpoint(small_config, tmp_path), 2)


@pytest.mark.parametrize(
    "victim", ["state-r0002.json", "global-r0002.safetensors", "momentum-r0002.safetensors"]
)
def test_a_torn_newest_generation_falls_back_to_the_previous_one(tmp_path, small_config, victim):
    # Prepare
    _commit(small_config, tmp_path, [1, 2])
    p = checkpoint_dir(tmp_path) / victim
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    # Execute
    cp = read_checkpoint(tmp_path)
    # Assert
    _assert_round(cp, 1)
    assert len(cp.skipped) == 1 and victim in cp.skipped[0]


def test_no_valid_state_is_a_typed_error_naming_each_file(tmp_path, small_config):
    _commit(small_config, tmp_path, [1, 2])
    for name in ("state-r0001.json", "state-r0002.json"):
        (checkpoint_dir(tmp_path) / name).write_text("{")
    with pytest.raises(
        CheckpointCorruptError,
        match="state-r0001.json.*state-r0002.json|state-r0002.json.*state-r0001.json",
    ):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "text, error",
    [
        ('{"round": 2, "weig', CheckpointCorruptError),
        ('{"round": "2", "weights": "x"}', CheckpointMismatchError),
    ],
    ids=["truncated", "legacy"],
)
def test_a_lone_old_or_torn_state_json_is_a_typed_error(tmp_path, small_config, text, error):
    ck = checkpoint_dir(tmp_path)
    ck.mkdir()
    (ck / "state.json").write_text(text)
    with pytest.raises(error, match="delete"):
        load_checkpoint(small_config, tmp_path)


def test_a_checkpoint_of_other_settings_is_refused(tmp_path, small_config):
    _commit(small_config, tmp_path, [1])
    other = dataclasses.replace(small_config, lr=0.01)
    with pytest.raises(CheckpointMismatchError, match="other settings"):
        load_checkpoint(other, tmp_path)


def test_power_loss_at_any_point_of_a_commit_leaves_a_valid_state(tmp_path, small_config):
    # Prepare: rounds 1-2 committed; record every file the commit of round 3 writes, and the
    # bytes of round 2's files (which the commit must never touch)
    out = tmp_path / "run"
    _commit(small_config, out, [1, 2])
    ck = checkpoint_dir(out)
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    shutil.copytree(ck, tmp_path / "before")
    _commit(small_config, out, [3])
    after = {p.name: p.read_bytes() for p in ck.iterdir()}
    written = sorted(n for n in after if after[n] != before.get(n))
    # Execute / Assert: for each file the commit wrote, a power loss that left it absent
    # (cut None), empty or torn at several lengths, the files before it in the write order
    # whole and those after it absent, loads round 2 or round 3, exactly
    assert all(before[n] == after[n] for n in before if n in after and "r0002" in n)
    order = [
        "global-r0003.safetensors",
        "momentum-r0003.safetensors",
        "state-r0003.json",
        "state.json",
    ]
    assert written == sorted(order)
    for i, name in enumerate(order):
        for cut in (0, 1, len(after[name]) // 3, len(after[name]) - 1, None):
            trial = tmp_path / f"t-{i}-{cut}" / "checkpoint"
            shutil.copytree(tmp_path / "before", trial)
            for done in order[:i]:
                (trial / done).write_bytes(after[done])
            if cut is not None:
                (trial / name).write_bytes(after[name][:cut])
            cp = read_checkpoint(trial.parent)
            # round 3 is committed once its state file is whole (before the pointer)
            _assert_round(cp, 3 if i == 3 else 2)


def test_old_generations_are_pruned_and_temporaries_removed(tmp_path, small_config):
    _commit(small_config, tmp_path, [1, 2, 3])
    ck = checkpoint_dir(tmp_path)
    (ck / ".tmp-global-r0004.safetensors").write_bytes(b"")
    _commit(small_config, tmp_path, [4])
    names = sorted(p.name for p in ck.iterdir())
    assert names == sorted(
        [
            f"{p}-r000{r}.{e}"
            for r in (3, 4)
            for p, e in (("global", "safetensors"), ("momentum", "safetensors"), ("state", "json"))
        ]
        + ["state.json"]
    )
    assert json.loads((ck / "state.json").read_text())["latest"] == "state-r0004.json"


# -- `--deployment` and the CLI ---------------------------------------------------------------------
@pytest.fixture
def no_flower(monkeypatch):
    """The deployment stops where it would start Flower's processes."""
    from edgetrain.federated import _deploy

    def _bin(name):
        raise DeploymentError(f"{name}: not started in this test")

    monkeypatch.setattr(_deploy, "_bin", _bin)


def test_deployment_refuses_a_users_folder_and_deletes_nothing(tmp_path, small_config, no_flower):
    # Prepare: the user's own files in OUT/deployment
    from edgetrain.federated._deploy import run_deployment

    work = tmp_path / "deployment"
    (work / "notes").mkdir(parents=True)
    (work / "notes" / "keep.txt").write_text("mine")
    (work / "app").mkdir()
    # Execute / Assert
    with pytest.raises(OutputPathError, match="--force"):
        run_deployment(small_config, tmp_path)
    assert (work / "notes" / "keep.txt").read_text() == "mine" and (work / "app").is_dir()


def test_deployment_with_force_replaces_only_its_own_files(tmp_path, small_config, no_flower):
    # Prepare
    from edgetrain.federated._deploy import MARKER, run_deployment

    work = tmp_path / "deployment"
    (work / "notes").mkdir(parents=True)
    (work / "notes" / "keep.txt").write_text("mine")
    (work / "superlink.log").write_text("old log")
    # Execute: it gets as far as starting Flower
    with pytest.raises(DeploymentError, match="not started"):
        run_deployment(small_config, tmp_path, force=True)
    # Assert: the user's file stays; edgetrain's are new, and the folder is marked its own
    assert (work / "notes" / "keep.txt").read_text() == "mine"
    assert (
        not (work / "superlink.log").exists() or (work / "superlink.log").read_text() != "old log"
    )
    assert (work / MARKER).is_file() and (work / "federation.json").is_file()
    # a second run needs no --force: the folder carries edgetrain's marker
    with pytest.raises(DeploymentError, match="not started"):
        run_deployment(small_config, tmp_path)


def test_federate_refuses_before_any_work(tmp_path, small_config, monkeypatch):
    from edgetrain.federated import _run, federate

    (tmp_path / "deployment").mkdir()
    (tmp_path / "deployment" / "x").write_text("mine")
    monkeypatch.setattr(_run, "prepare_plans", lambda *a: pytest.fail("planned before checking"))
    with pytest.raises(OutputPathError):
        federate(small_config, out_dir=tmp_path, deployment=True)


def _parse(argv, capsys):
    from edgetrain.federated._cli import register

    parser = argparse.ArgumentParser(prog="edgetrain")
    register(parser.add_subparsers(dest="cmd"))
    base = ["federate", "--model", "mcu-cnn", "--fleet", "f.toml", "--rounds", "1"]
    with pytest.raises(SystemExit) as e:
        parser.parse_args(base + argv)
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-client-weight", "0"],
        ["--max-client-weight", "1.5"],
        ["--max-client-weight", "nan"],
        ["--round-timeout-s", "0"],
        ["--server-lr", "0"],
        ["--clip-norm", "0"],
    ],
)
def test_bad_federate_flags_are_usage_errors(argv, capsys):
    code, err = _parse(argv, capsys)
    assert code == 2 and argv[0] in err and "Traceback" not in err


def test_the_weight_cap_and_force_reach_the_federation(tmp_path, monkeypatch):
    # Prepare: federate() replaced by a recorder
    from edgetrain.federated import _cli

    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[device]]\nkind = "rpi4"\ncount = 1\n')
    seen = {}

    def fake(cfg, **kw):
        seen.update(kw, cfg=cfg)
        raise SystemExit(0)

    monkeypatch.setattr("edgetrain.federated.federate", fake)
    parser = argparse.ArgumentParser(prog="edgetrain")
    _cli.register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(
        ["federate", "--model", "mcu-cnn", "--fleet", str(fleet), "--rounds", "1", "--json"]
        + ["--max-client-weight", "0.25", "--force", "--deployment"]
    )
    # Execute
    with pytest.raises(SystemExit):
        args.func(args)
    # Assert
    assert seen["cfg"].max_client_weight_fraction == 0.25 and seen["force"] and seen["deployment"]


# -- acceptance: one malicious client over several rounds -------------------------------------------
FORGED = {  # round -> what the forging client's rejection says (FORGERIES, in order)
    2: "lack ['client-id']",
    3: "not a list of two integers",
    4: "dtype '<U1'",
    5: "names no client",
    6: "answered as client 4 before",  # it claims rpi4-1's id (client 3), pinned to its node
    7: "lack ['num-examples']",
    8: "not a trainable tensor",  # rpi4's plan trains every tensor: it invents one
    9: "not a positive integer",
}


def test_a_malicious_client_neither_stops_nor_steers_the_federation(tmp_path):
    # Prepare: 2 x nrf52840 + 2 x rpi4 honest, and rpi4-2, which claims 1e9 examples, scales its
    # parameter update 9x, and forges its reply in rounds 2-9 (one schema violation each).
    # The honest-only run is the same fleet with rpi4-2 absent every round (it crashes), so
    # the honest clients hold the same data in both runs. Two federations of 9 rounds on
    # Flower's simulation engine: about 25-40 s.
    from edgetrain.federated import federate, prepare_plans

    def config(fault):
        fleet = parse_fleet(
            {
                "device": [
                    {"kind": "nrf52840", "count": 2},
                    {"kind": "rpi4", "count": 2},
                    {"kind": "rpi4", "count": 1, "fault": fault},
                ]
            }
        )
        return FederationConfig(
            model="mcu-cnn",
            fleet=fleet,
            rounds=9,
            local_steps=10,
            train_samples=2000,
            test_samples=1000,
        )

    honest_cfg = config("crash")
    plans = prepare_plans(honest_cfg.model, honest_cfg)
    honest_cfg = dataclasses.replace(honest_cfg, plans=plans)
    evil_cfg = dataclasses.replace(config("scale:9+inflate:1e9+forge"), plans=plans)
    # Execute
    honest = federate(honest_cfg, out_dir=tmp_path / "honest", baselines=False, plot=False)
    evil = federate(evil_cfg, out_dir=tmp_path / "evil", baselines=False, plot=False)
    # Assert: every round ran; within 2 points of the honest-only run's accuracy
    assert [r["round"] for r in evil.rounds] == list(range(1, 10))
    assert abs(evil.final_accuracy - honest.final_accuracy) <= 0.02, (
        evil.final_accuracy,
        honest.final_accuracy,
    )
    # round 1: its reply is valid; its weight is its plan's cap (a fifth of the round, like
    # every client's), not ~100 %, and its 9x update is bounded
    first = evil.rounds[0]
    assert first["claimed_examples"]["rpi4-2"] == 10**9
    assert first["weight_share"]["rpi4-2"] == pytest.approx(0.2)
    assert first["bounded"]["rpi4-2"] < 0.5
    # rounds 2-9: each forged reply rejected with its reason, in the round and in the result;
    # the honest clients (rpi4-1, whose id it claims in round 6, included) all used
    mine = [r for r in evil.rejections if r["client"] == "rpi4-2"]
    assert [r["round"] for r in mine] == list(range(2, 10)) and len(evil.rejections) == 8
    for rec, rej in zip(evil.rounds[1:], mine):
        assert FORGED[rec["round"]] in rej["reason"], (rec["round"], rej["reason"])
        assert rej in [dict(r, round=rec["round"]) for r in rec["rejected"]]
        assert rec["accepted"] == ["nrf52840-0", "nrf52840-1", "rpi4-0", "rpi4-1"]
    report = json.loads((tmp_path / "evil" / "report.json").read_text())
    assert report["rejections"] == [dict(r) for r in evil.rejections]
