"""Federated training on Flower (issue 6): fleet files, the non-IID split, partial-update
aggregation against a numpy oracle, screening of bad updates, what a client uploads, and a
small federation on Flower's simulation engine through the CLI handler, with resume."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from edgetrain.data import load_dataset

flwr_app = pytest.importorskip("flwr.app")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.common.serde import message_to_proto  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from edgetrain.federated import (
    FaultKind,
    FederationConfig,
    FleetFileError,
    PartialFedAvg,
    Partition,
    load_fleet,
    make_client_app,
    parse_fleet,
)
from edgetrain.federated._client import build_client_model, client_train, local_data, trained_ranges
from edgetrain.federated._config import split_indices
from edgetrain.federated._server import initial_state
from edgetrain.federated._strategy import message_bytes
from edgetrain.planner import Plan

FLEET = {"device": [{"kind": "nrf52840", "count": 2}, {"kind": "rpi4", "count": 1}]}


@pytest.fixture(scope="module")
def config():
    from edgetrain.federated import prepare_plans

    cfg = FederationConfig(
        model="mcu-cnn",
        fleet=parse_fleet(FLEET),
        rounds=2,
        local_steps=5,
        train_samples=2000,
        test_samples=500,
    )
    return dataclasses.replace(cfg, plans=prepare_plans(cfg.model, cfg))


@pytest.fixture
def identity():
    """Flower stamps messages with the process's task identity; give this process one."""
    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


def _train_msg(state, rnd, node_id):
    TaskIdentity.node_id = 0
    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})
    return Message(
        content=RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": rnd})}),
        message_type="train",
        dst_node_id=node_id,
    )


def _reply(request, node_id, arrays, ranges, n, cid):
    TaskIdentity.node_id = node_id
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}),
            "trained": ConfigRecord({k: [a, b] for k, (a, b) in ranges.items()}),
            "metrics": MetricRecord(
                {
                    "num-examples": n,
                    "client-id": cid,
                    "train-loss": 1.0,
                    "local-steps": 1,
                    "device-time-s": 0.1,
                    "device-energy-j": 0.1,
                }
            ),
        }
    )
    return Message(content=content, reply_to=request)


def _strategy(state, n_clients, **kwargs):
    s = PartialFedAvg(num_clients=n_clients, **kwargs)

    class _Grid:  # configure_train asks the grid which nodes are connected
        def get_node_ids(self):
            return list(range(1, n_clients + 1))

    arrays = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in state.items()})
    s.configure_train(1, arrays, ConfigRecord(), _Grid())
    return s


# -- fleet file -----------------------------------------------------------------------------------
def test_example_fleet_file_loads():
    fleet = load_fleet("examples/fleet.toml")
    assert [(g.kind, g.count) for g in fleet.groups] == [
        ("nrf52840", 6),
        ("rpi4", 3),
        ("snapdragon-865", 1),
    ]
    assert [c.name for c in fleet.clients()][:2] == ["nrf52840-0", "nrf52840-1"]
    assert len(fleet.clients()) == 10


@pytest.mark.parametrize(
    "text, field",
    [
        ('[[device]]\nkind = "nrf52840"\ncount = 0\n', "count"),
        ('[[device]]\nkind = "nrf52840"\ncount = "six"\n', "count"),
        ('[[device]]\nkind = "no-such-board"\ncount = 1\n', "kind"),
        ("[[device]]\ncount = 2\n", "kind"),
        ('[[device]]\nkind = "rpi4"\ncount = 1\ncolour = "red"\n', "colour"),
        ('[[device]]\nkind = "rpi4"\ncount = 1\nfault = "scale:x"\n', "fault"),
        ('[[device]]\nkind = "rpi4"\ncount = 1\nbatch_size = 0\n', "batch_size"),
        ('kind = "rpi4"\n', "device"),
        ("[[device]\n", "TOML"),
    ],
)
def test_bad_fleet_files_name_the_field(tmp_path, text, field):
    # Prepare
    p = tmp_path / "fleet.toml"
    p.write_text(text)
    # Execute / Assert
    with pytest.raises(FleetFileError) as e:
        load_fleet(p)
    assert field in str(e.value)


def test_missing_fleet_file_says_how_to_fix(tmp_path):
    with pytest.raises(FleetFileError, match="examples/fleet.toml"):
        load_fleet(tmp_path / "absent.toml")


# -- data split -----------------------------------------------------------------------------------
def test_dirichlet_split_is_seeded_disjoint_and_skewed():
    # Prepare
    y = load_dataset("fashion-mnist", limit=3000).y.numpy()
    part = Partition.parse("dirichlet:0.3")
    # Execute
    a, props = split_indices(y, 6, part, seed=4, min_size=8)
    b, _ = split_indices(y, 6, part, seed=4, min_size=8)
    iid, _ = split_indices(y, 6, Partition.parse("iid"), seed=4)
    # Assert: deterministic, a partition of all samples, every client >= min_size
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    allidx = np.concatenate(a)
    assert len(allidx) == len(y) and len(np.unique(allidx)) == len(y)
    assert min(len(p) for p in a) >= 8
    # non-IID: the largest class share of a client is far above the IID split's (~0.1)
    top = [np.bincount(y[p], minlength=10).max() / len(p) for p in a]
    top_iid = [np.bincount(y[p], minlength=10).max() / len(p) for p in iid]
    assert np.mean(top) > 2 * np.mean(top_iid)


@pytest.mark.parametrize("text", ["dirichlet:0", "dirichlet:-1", "dirichlet:x", "zipf:2"])
def test_bad_partition_is_rejected(text):
    from edgetrain.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="dirichlet:ALPHA"):
        Partition.parse(text)


# -- aggregation ----------------------------------------------------------------------------------
def test_partial_updates_average_only_over_their_trainers(identity):
    # Prepare: a global model of two tensors; client 0 trains all of `w` and rows [0, 2) of `b`,
    # client 1 trains only `w`, client 2 trains rows [0, 1) of `b` only.
    rng = np.random.default_rng(0)
    g = {
        "w": rng.normal(size=(3, 2)).astype(np.float32),
        "b": rng.normal(size=(4,)).astype(np.float32),
        "u": rng.normal(size=(2,)).astype(np.float32),
    }
    s = _strategy(g, 3)
    w0, w1 = rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=(3, 2)).astype(np.float32)
    b0, b2 = rng.normal(size=(2,)).astype(np.float32), rng.normal(size=(1,)).astype(np.float32)
    reqs = [_train_msg(g, 1, n) for n in (1, 2, 3)]
    replies = [
        _reply(reqs[0], 1, {"w": w0, "b": b0}, {"w": (0, 3), "b": (0, 2)}, 10, 0),
        _reply(reqs[1], 2, {"w": w1}, {"w": (0, 3)}, 30, 1),
        _reply(reqs[2], 3, {"b": b2}, {"b": (0, 1)}, 20, 2),
    ]
    # Execute
    arrays, _ = s.aggregate_train(1, replies)
    out = {k: v.numpy() for k, v in arrays.items()}
    # Assert against the hand-written weighted average
    np.testing.assert_allclose(out["w"], (10 * w0 + 30 * w1) / 40, rtol=1e-6)
    np.testing.assert_allclose(out["b"][0], (10 * b0[0] + 20 * b2[0]) / 30, rtol=1e-6)
    np.testing.assert_allclose(out["b"][1], b0[1], rtol=1e-6)
    np.testing.assert_array_equal(out["b"][2:], g["b"][2:])  # nobody trained these rows
    np.testing.assert_array_equal(out["u"], g["u"])  # nobody trained this tensor


def test_server_momentum_steps_only_the_trained_rows_like_fedavgm(identity):
    # Prepare: FedAvgM (beta 0.9, eta 0.5) on parameters `w`, `b`; `r` is a BN statistic
    # (plainly averaged). Round 1: client 0 trains `w` and rows [0, 2) of `b`, client 1 trains
    # `w` and `r`. Round 2: client 0 trains rows [1, 3) of `b` only.
    beta, eta = 0.9, 0.5
    rng = np.random.default_rng(1)
    f32 = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    g = {"w": f32(3, 2), "b": f32(4), "r": f32(2)}
    s = _strategy(
        g,
        2,
        server_lr=eta,
        server_momentum=beta,
        server_opt_names={"w", "b"},
        max_client_weight_fraction=1.0,  # the weights 10 : 30 as claimed (no share cap)
    )
    w0, w1, b0, r1, b_2 = f32(3, 2), f32(3, 2), f32(2), f32(2), f32(2)
    reqs = [_train_msg(g, 1, n) for n in (1, 2)]
    round1 = [
        _reply(reqs[0], 1, {"w": w0, "b": b0}, {"w": (0, 3), "b": (0, 2)}, 10, 0),
        _reply(reqs[1], 2, {"w": w1, "r": r1}, {"w": (0, 3), "r": (0, 2)}, 30, 1),
    ]
    # Execute round 1, then round 2 from its result
    out1 = {k: v.numpy() for k, v in s.aggregate_train(1, round1)[0].items()}
    s.configure_train(
        2,
        ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in out1.items()}),
        ConfigRecord(),
        type("G", (), {"get_node_ids": lambda self: [1, 2]})(),
    )
    req2 = _train_msg(out1, 2, 1)
    out2 = {
        k: v.numpy()
        for k, v in s.aggregate_train(2, [_reply(req2, 1, {"b": b_2}, {"b": (1, 3)}, 10, 0)])[
            0
        ].items()
    }
    # Assert against the FedAvgM recursion written out element by element in float64
    G = {k: v.astype(np.float64) for k, v in g.items()}
    vw = G["w"] - (10 * w0 + 30 * w1) / 40  # v1 = 0.9 * 0 + delta
    vb = np.zeros(4)
    vb[:2] = G["b"][:2] - b0
    w_1, b_1 = G["w"] - eta * vw, G["b"].copy()
    b_1[:2] -= eta * vb[:2]
    np.testing.assert_allclose(out1["w"], w_1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out1["b"], b_1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out1["r"], r1, rtol=1e-6)  # a BN statistic: the plain average
    vb2 = vb.copy()
    vb2[1:3] = beta * vb[1:3] + (out1["b"][1:3].astype(np.float64) - b_2)
    b_2_expected = out1["b"].astype(np.float64)
    b_2_expected[1:3] -= eta * vb2[1:3]
    np.testing.assert_allclose(out2["b"], b_2_expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out2["w"], out1["w"])  # untrained this round: no momentum step
    np.testing.assert_allclose(s.momentum["w"], vw, rtol=1e-6)  # and its momentum is kept
    np.testing.assert_allclose(s.momentum["b"], vb2, rtol=1e-6)


def test_plain_settings_are_exactly_fedavg(identity):
    # Prepare: the same replies through the default strategy and through beta 0, eta 1 spelled out
    rng = np.random.default_rng(2)
    g = {"w": rng.normal(size=(3, 2)).astype(np.float32)}
    w0 = rng.normal(size=(3, 2)).astype(np.float32)
    outs = []
    for kwargs in ({}, {"server_lr": 1.0, "server_momentum": 0.0}):
        s = _strategy(g, 1, **kwargs)
        req = _train_msg(g, 1, 1)
        # Execute
        outs.append(s.aggregate_train(1, [_reply(req, 1, {"w": w0}, {"w": (0, 3)}, 5, 0)])[0])
    # Assert: the client's weights, bit for bit, and no momentum kept
    np.testing.assert_array_equal(outs[0]["w"].numpy(), w0)
    np.testing.assert_array_equal(outs[1]["w"].numpy(), w0)
    assert s.momentum == {}


def test_nan_and_huge_updates_leave_the_global_model_unchanged(config, identity):
    # Prepare: real client rounds of an honest rpi4 client, a NaN client and a x1e6 client
    state = initial_state(config)
    honest = config.clients()[2]
    up, ranges, m = client_train(config, honest, state, 1)
    bad_nan = dataclasses.replace(config.clients()[0], fault=FaultKind.NAN)
    bad_big = dataclasses.replace(config.clients()[1], fault=FaultKind.SCALE, fault_scale=1e6)
    up_nan, r_nan, m_nan = client_train(config, bad_nan, state, 1)
    up_big, r_big, m_big = client_train(config, bad_big, state, 1)
    assert all(np.isnan(v).all() for v in up_nan.values())

    def run(which):
        s = _strategy(state, 3)
        reqs = {n: _train_msg(state, 1, n) for n in (1, 2, 3)}
        replies = [
            _reply(reqs[n], n, u, r, mm["num-examples"], mm["client-id"]) for n, (u, r, mm) in which
        ]
        arrays, _ = s.aggregate_train(1, replies)
        return {k: v.numpy() for k, v in arrays.items()}, s.logs[1]

    # Execute
    alone, _ = run([(3, (up, ranges, m))])
    mixed, log = run(
        [(1, (up_nan, r_nan, m_nan)), (2, (up_big, r_big, m_big)), (3, (up, ranges, m))]
    )
    only_bad, _ = run([(1, (up_nan, r_nan, m_nan)), (2, (up_big, r_big, m_big))])
    # Assert: the bad clients change nothing; alone they leave the global model bit-identical
    for k in state:
        np.testing.assert_array_equal(mixed[k], alone[k])
        np.testing.assert_array_equal(only_bad[k], state[k])
    reasons = {r["client_id"]: r["reason"] for r in log.rejected}
    assert "non-finite" in reasons[0] and "norm" in reasons[1]
    assert log.accepted == [2]


# -- what a client sends --------------------------------------------------------------------------
def test_sparse_client_uploads_only_what_its_plan_trains(config, identity):
    # Prepare: the real Flower ClientApp, called as a SuperNode would call it
    app = make_client_app(config)
    state = initial_state(config)
    sizes, keys = {}, {}
    for cid in (0, 2):  # nrf52840-0 (sparse plan), rpi4-0 (trains everything)
        req = _train_msg(state, 1, 10 + cid)
        ctx = Context(
            run_id=1,
            node_id=10 + cid,
            node_config={"partition-id": cid},
            state=RecordDict(),
            run_config={},
        )
        # Execute
        TaskIdentity.node_id = 10 + cid
        reply = app(req, ctx)
        sizes[cid] = message_bytes(reply)
        keys[cid] = set(reply.content["arrays"].keys())
        payload = sum(len(a.data) for a in reply.content["arrays"].values())
        plan = Plan.from_json(config.plans[config.clients()[cid].kind])
        model = build_client_model(config, state)
        expect = trained_ranges(model, plan)
        # Assert: exactly the plan's trained tensors travel, and the message is their bytes
        # plus a small envelope
        assert keys[cid] == set(expect)
        expect_bytes = sum(
            4 * (b - a) * int(np.prod(state[k].shape[1:])) for k, (a, b) in expect.items()
        )
        assert expect_bytes <= payload <= expect_bytes + 200 * len(expect)
        assert payload <= sizes[cid] <= payload + 2000 + 100 * len(expect)
    full = {k for k in state if not k.endswith("num_batches_tracked")}
    assert keys[2] == full
    assert keys[0] < full
    assert sizes[0] < 0.5 * sizes[2]


def test_no_raw_sample_leaves_a_client(config, identity):
    # Prepare: the client's own training images and labels, as float32 and as raw bytes
    app = make_client_app(config)
    state = initial_state(config)
    cid = 2
    data = local_data(config, cid)
    req = _train_msg(state, 1, 7)
    ctx = Context(
        run_id=1, node_id=7, node_config={"partition-id": cid}, state=RecordDict(), run_config={}
    )
    # Execute
    TaskIdentity.node_id = 7
    reply = app(req, ctx)
    wire = message_to_proto(reply).SerializeToString()
    # Assert: only parameter tensors (named as in the model, shaped as in the model) and the
    # allowed scalars are in the reply...
    from edgetrain.federated._client import TRAIN_METRIC_KEYS

    c = reply.content
    assert set(c.array_records) == {"arrays"} and set(c.metric_records) == {"metrics"}
    assert set(c.config_records) == {"trained"}
    for k, a in c["arrays"].items():
        assert k in state and tuple(a.shape)[1:] == state[k].shape[1:]
    assert set(c["metrics"]) <= set(TRAIN_METRIC_KEYS)
    assert all(isinstance(v, (int, float)) for v in c["metrics"].values())
    # ...and no training image appears in the serialised message, in any encoding
    for i in range(0, len(data.y_train), max(1, len(data.y_train) // 50)):
        img = data.x_train[i].numpy().astype(np.float32)
        row = img.reshape(-1)[img.size // 2 : img.size // 2 + 16]
        assert row.tobytes() not in wire
        raw = np.clip(np.round((img * 0.3530 + 0.2860) * 255), 0, 255).astype(np.uint8)
        assert raw.reshape(-1)[300:332].tobytes() not in wire
    assert data.y_train.numpy().astype(np.int64).tobytes()[:64] not in wire


def test_dp_clips_the_update_and_adds_noise(config):
    # Prepare
    state = initial_state(config)
    c = config.clients()[2]
    plain = client_train(config, c, state, 1)[0]
    clipped_cfg = dataclasses.replace(config, clip_norm=0.01)
    noisy_cfg = dataclasses.replace(config, clip_norm=0.01, noise_multiplier=1.0)
    # Execute
    clipped = client_train(clipped_cfg, c, state, 1)[0]
    noisy = client_train(noisy_cfg, c, state, 1)[0]

    def norm(up):
        return math.sqrt(sum(float(((up[k].astype(np.float64) - state[k]) ** 2).sum()) for k in up))

    # Assert: the clipped update has norm <= C; noise of std C per coordinate makes it larger
    assert norm(plain) > 0.01
    assert norm(clipped) == pytest.approx(0.01, rel=1e-3)
    n = sum(v.size for v in noisy.values())
    assert norm(noisy) == pytest.approx(0.01 * math.sqrt(n), rel=0.2)


# -- a small federation on Flower's simulation engine, through the CLI --------------------------
def _cli(argv):
    from edgetrain.federated._cli import register

    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="command"))
    args = ap.parse_args(argv)
    return args.func(args)


def test_small_federation_runs_checkpoints_and_resumes(tmp_path, capsys):
    # Prepare: 2 x nrf52840 + 1 x rpi4, one client dropping out at random
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        '[[device]]\nkind = "nrf52840"\ncount = 2\n\n[[device]]\nkind = "rpi4"\ncount = 1\n'
    )
    out = tmp_path / "run"
    common = [
        "federate",
        "--model",
        "mcu-cnn",
        "--fleet",
        str(fleet),
        "--data",
        "fashion-mnist",
        "--partition",
        "dirichlet:0.5",
        "--local-steps",
        "10",
        "--train-samples",
        "2000",
        "--test-samples",
        "500",
        "--out",
        str(out),
        "--json",
    ]
    # Execute: 2 rounds, then the same command asked for 3 resumes at round 3
    assert _cli(common + ["--rounds", "2", "--dropout", "0.3"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert _cli(common + ["--rounds", "3", "--dropout", "0.3", "--no-baselines"]) == 0
    second = json.loads(capsys.readouterr().out)
    # Assert: the required keys, per round
    assert [r["round"] for r in first["rounds"]] == [1, 2]
    for r in first["rounds"]:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert set(r["accuracy_by_kind"]) <= {"nrf52840", "rpi4"}
        assert set(r["participants"]) | set(r["failed"]) == {"nrf52840-0", "nrf52840-1", "rpi4-0"}
        assert set(r["bytes_down"]) == {"nrf52840-0", "nrf52840-1", "rpi4-0"}
        for name, b in r["bytes_up"].items():
            assert b < (0.5 if name.startswith("nrf") else 2) * r["bytes_down"][name]
    assert set(first["local_only_accuracy_by_kind"]) == {"nrf52840", "rpi4"}
    assert first["final_accuracy"] == first["rounds"][-1]["accuracy"]
    assert (
        first["plans"]["nrf52840"]["trainable_tensors"]
        < first["plans"]["rpi4"]["trainable_tensors"]
    )
    # the resumed run kept rounds 1-2 and ran only round 3
    assert second["resumed_at"] == [2]
    assert second["rounds"][:2] == first["rounds"]
    assert [r["round"] for r in second["rounds"]] == [1, 2, 3]
    assert (out / "checkpoint" / "global-r0003.safetensors").exists()
    assert (out / "accuracy.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "flag, value",
    [("--server-momentum", "1.0"), ("--server-momentum", "-0.1"), ("--server-lr", "x")],
)
def test_bad_server_optimiser_flags_are_rejected(flag, value, capsys):
    # Prepare
    from edgetrain.federated._cli import register

    parser = argparse.ArgumentParser(prog="edgetrain")
    register(parser.add_subparsers(dest="cmd"))
    # Execute
    with pytest.raises(SystemExit) as e:
        parser.parse_args(
            ["federate", "--model", "mcu-cnn", "--fleet", "f.toml", "--rounds", "1", flag, value]
        )
    # Assert: argparse's usage error names the flag
    assert e.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.slow
def test_deployment_runs_real_flower_processes_on_loopback(tmp_path):
    # Prepare: the same federation as real SuperLink / SuperNode processes (about 30-60 s)
    from edgetrain.federated import federate

    cfg = FederationConfig(
        model="mcu-cnn",
        fleet=parse_fleet(
            {"device": [{"kind": "nrf52840", "count": 1}, {"kind": "rpi4", "count": 1}]}
        ),
        rounds=2,
        local_steps=5,
        train_samples=2000,
        test_samples=500,
    )
    # Execute
    r = federate(cfg, out_dir=tmp_path / "dep", deployment=True, baselines=False)
    # Assert: both rounds ran through Flower's processes, each client uploaded its own tensors
    assert r.deployment and [x["round"] for x in r.rounds] == [1, 2]
    last = r.rounds[-1]
    assert set(last["accepted"]) == {"nrf52840-0", "rpi4-0"}
    assert last["bytes_up"]["nrf52840-0"] < 0.5 * last["bytes_up"]["rpi4-0"]
    logs = sorted(p.name for p in (tmp_path / "dep" / "deployment").glob("*.log"))
    assert logs == ["flwr-run.log", "superlink.log", "supernode-0.log", "supernode-1.log"]
    assert (
        "Received 2 results and 0 failures"
        in (tmp_path / "dep" / "deployment" / "flwr-run.log").read_text()
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "server", [{"server_momentum": 0.0, "server_lr": 1.0}, {}], ids=["fedavg", "fedavgm-default"]
)
def test_resumed_federation_equals_the_uninterrupted_one(tmp_path, server):
    # Prepare (with server momentum, its buffers must be checkpointed for the resume to match)
    from edgetrain.federated import federate
    from edgetrain.storage import load_tensors

    cfg = FederationConfig(
        model="mcu-cnn",
        fleet=parse_fleet(FLEET),
        rounds=3,
        local_steps=5,
        train_samples=2000,
        test_samples=500,
        **server,
    )
    # Execute: 2 rounds, "crash", resume to 3 rounds; and 3 rounds straight through
    federate(dataclasses.replace(cfg, rounds=2), out_dir=tmp_path / "a", baselines=False)
    resumed = federate(cfg, out_dir=tmp_path / "a", baselines=False)
    straight = federate(cfg, out_dir=tmp_path / "b", baselines=False)
    # Assert: the same global model, bit for bit, and the same accuracy
    wa = load_tensors(tmp_path / "a" / "checkpoint" / "global-r0003.safetensors")
    wb = load_tensors(tmp_path / "b" / "checkpoint" / "global-r0003.safetensors")
    assert resumed.resumed_at == (2,)
    for k in wb:
        assert torch.equal(wa[k], wb[k]), k
    assert resumed.final_accuracy == straight.final_accuracy


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("rounds", 0, "positive integer"),
        ("dropout", 1.0, "[0, 1)"),
        ("lr", -0.1, "positive"),
        ("lr_decay", 1.5, "(0, 1]"),
        ("noise_multiplier", 1.0, "clip_norm"),
        ("clip_norm", 0.0, "positive L2 norm"),
        ("server_momentum", 1.0, "[0, 1)"),
        ("server_lr", 0.0, "positive"),
    ],
)
def test_bad_federation_settings_are_rejected(field, value, words):
    from edgetrain.errors import InvalidArgumentError

    kwargs = {"model": "mcu-cnn", "fleet": parse_fleet(FLEET), "rounds": 2, field: value}
    with pytest.raises(InvalidArgumentError) as e:
        FederationConfig(**kwargs)
    assert field in str(e.value) and words in str(e.value)


def test_infeasible_device_in_the_fleet_names_the_kind():
    from edgetrain.federated import prepare_plans

    cfg = FederationConfig(
        model="mcu-cnn", rounds=1, fleet=parse_fleet({"device": [{"kind": "samd21", "count": 1}]})
    )
    with pytest.raises(FleetFileError, match="samd21.*batch_size = 8"):
        prepare_plans(cfg.model, cfg)


@pytest.mark.slow
def test_a_straggler_and_a_crashing_client_do_not_stop_the_rounds(tmp_path):
    # Prepare: rpi4-0 honest, nrf52840-0 crashes every round, nrf52840-1 replies 45 s late
    # while a round times out after 15 s (about 70 s in all)
    from edgetrain.federated import federate

    fleet = parse_fleet(
        {
            "device": [
                {"kind": "rpi4", "count": 1},
                {"kind": "nrf52840", "count": 1, "fault": "crash"},
                {"kind": "nrf52840", "count": 1, "fault": "slow:45"},
            ]
        }
    )
    assert [c.name for c in fleet.clients()] == ["rpi4-0", "nrf52840-0", "nrf52840-1"]
    cfg = FederationConfig(
        model="mcu-cnn",
        fleet=fleet,
        rounds=3,
        local_steps=5,
        train_samples=2000,
        test_samples=500,
        round_timeout_s=15.0,
    )
    # Execute
    r = federate(cfg, out_dir=tmp_path / "run", baselines=False)
    # Assert: every round completed; only the honest client's update was ever used (round 1
    # may time out entirely while the simulation's workers start), the straggler never was
    assert [x["round"] for x in r.rounds] == [1, 2, 3]
    for x in r.rounds:
        assert x["accepted"] in ([], ["rpi4-0"])
        assert "nrf52840-1" not in x["participants"]
    assert r.rounds[-1]["accepted"] == ["rpi4-0"]
    assert any("crashed on purpose" in f for x in r.rounds for f in x["failure_reasons"])
    from edgetrain.storage import load_tensors

    final = load_tensors(tmp_path / "run" / "checkpoint" / "global-r0003.safetensors")
    init = initial_state(cfg)
    assert not np.array_equal(final["classifier.weight"].numpy(), init["classifier.weight"])
