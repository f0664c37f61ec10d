"""Each surveyed system's defining mechanism, checked against plain PyTorch and the allocator.

Oracles: a plain PyTorch SGD loop (full), the pretrained model's own outputs and weights
(tinytl, tinyol), the allocator's events via edgetrain.measure (every measured peak), and
hand-computed arena layouts (melon's pool).
"""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch
import torch.nn.functional as F

from edgetrain.models import build_model
from edgetrain.planner import ActivationDecision, Objective
from edgetrain.planner._solvers import PlanInfeasibleError
from edgetrain.strategies import (
    SystemName,
    UnknownSystemError,
    _arena,
    _auto,
    _melon,
    _poet,
    _sage,
    _tinyol,
    _tinytl,
    get_system,
    system_names,
)
from edgetrain.strategies._arena import Block


@pytest.fixture(scope="module")
def pretrained():
    """mcu-cnn pretrained on Fashion-MNIST classes 0-4 (the demo's quick recipe)."""
    from edgetrain.tasks import pretrain

    model, example, _ = pretrain("mcu-cnn", samples=6000, epochs=1)
    return model, example


@pytest.fixture(scope="module")
def new_classes():
    from edgetrain.data import load_dataset

    train = load_dataset("fashion-mnist:5-9", split="train", limit=400)
    test = load_dataset("fashion-mnist:5-9", split="test", limit=500)
    return train, test


def _accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


# -- registry ---------------------------------------------------------------------------------
def test_registry_lists_every_system_and_rejects_unknown_names():
    # Prepare / Execute
    names = system_names()
    # Assert
    assert set(names) == {s.value for s in SystemName}
    assert get_system("POET").name is SystemName.POET
    with pytest.raises(UnknownSystemError, match="choose one of full, auto, poet"):
        get_system("checkmate")


# -- full: the reference equals plain PyTorch -------------------------------------------------
def test_full_trains_exactly_like_plain_pytorch_sgd():
    # Prepare
    model, example = build_model("mcu-cnn")
    oracle = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
    prepared = get_system("full").prepare(model, example, device="rpi4", batch_size=4)
    # Execute
    report = get_system("full").train(prepared, x, y, samples=16, lr=0.05, seed=3)
    opt = torch.optim.SGD(oracle.parameters(), lr=0.05)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    oracle.train()
    for s in range(4):
        idx = order[s * 4 : (s + 1) * 4]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(oracle(x[idx]), y[idx]).backward()
        opt.step()
    # Assert
    assert report.steps == 4 and report.samples == 16
    for (n, a), (_, b) in zip(model.state_dict().items(), oracle.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    assert (
        abs(report.measured_peak_bytes - prepared.predicted_peak_bytes)
        <= 0.01 * report.measured_peak_bytes
    )


# -- auto: task-adaptive selection by validation (NOTE [ Task-adaptive selection ]) -------------
def test_auto_chooses_layers_and_batch_by_validation_and_the_choice_reproduces(
    pretrained, new_classes
):
    # Prepare: 96 local samples, 72 to train pilots on and 24 to validate on
    model, example = pretrained
    train, _ = new_classes
    x, y = train.x[:96], train.y[:96]
    start = copy.deepcopy(model.state_dict())
    # Execute
    prepared = _auto.prepare(
        model,
        example,
        device="nrf52840",
        batch_size=4,
        name="mcu-cnn",
        analysis=(x, y),
        lr=0.05,
        seed=2,
    )
    tried = dict(prepared.state)["selection"]
    # Assert: every layer count at every batch 1, 2, 4 that fits was tried; the winner has the
    # best validation accuracy (ties: lower peak), and it is what the plan trains
    assert {c.batch_size for c in tried} == {1, 2, 4}
    assert len({c.layers for c in tried}) >= 3
    best = max(tried, key=lambda c: (c.validation_accuracy, -c.predicted_peak_bytes))
    assert prepared.plan.batch_size == best.batch_size
    assert prepared.predicted_peak_bytes == best.predicted_peak_bytes
    assert (
        len(
            {
                n.rsplit(".", 1)[0]
                for n in prepared.plan.trainable()
                if dict(model.named_parameters())[n].dim() >= 2
            }
        )
        == best.layers
    )
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())  # pilots copy
    # Assert (oracle): plain PyTorch SGD of the same parameters, batch, order and batch-norm
    # mode, for the 96-sample budget's steps cycling over the 72 samples, gives the winner's
    # validation accuracy on the other 24
    oracle = copy.deepcopy(model)
    trained = set(prepared.plan.trainable())
    for n, p in oracle.named_parameters():
        p.requires_grad_(n in trained)
    opt = torch.optim.SGD([p for p in oracle.parameters() if p.requires_grad], lr=0.05)
    b = best.batch_size
    order = torch.randperm(72, generator=torch.Generator().manual_seed(2))
    oracle.train()
    if prepared.plan.freeze_batch_norm:
        for m in oracle.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
    for s in range(96 // b):
        idx = order[torch.arange(s * b, (s + 1) * b) % 72]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(oracle(x[idx]), y[idx]).backward()
        opt.step()
    assert abs(_accuracy(oracle, x[72:], y[72:]) - best.validation_accuracy) <= 1 / 24 + 1e-9


def test_auto_without_local_samples_is_the_planners_plan_and_rejects_too_few():
    model, example = build_model("mcu-cnn")
    prepared = _auto.prepare(model, example, device="nrf52840", batch_size=4)
    assert prepared.batch_size == 4 and "selection" not in dict(prepared.state)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with pytest.raises(Exception, match="pass at least 7"):
        _auto.prepare(model, example, device="nrf52840", batch_size=4, analysis=(x, y))


def test_full_that_does_not_fit_raises_a_typed_error_with_the_numbers():
    model, example = build_model("mcu-cnn")
    with pytest.raises(
        PlanInfeasibleError, match=r"no plan fits 60,000 bytes.*smallest achievable peak"
    ):
        get_system("full").prepare(
            model, example, device="nrf52840", budget_bytes=60_000, batch_size=4
        )


# -- poet: recompute and page, minimum energy under a deadline --------------------------------
def test_poet_plans_recompute_and_page_under_a_tight_budget_and_the_step_stays_within_it():
    # Prepare: the SAMD21's slow core makes recomputation cost energy, so paging pays off too
    model, example = build_model("mcu-cnn")
    full_peak = (
        get_system("full").prepare(model, example, device="rpi4", batch_size=4).predicted_peak_bytes
    )
    budget = int(0.85 * full_peak)
    # Execute
    prepared = _poet.prepare(
        model, example, device="samd21", budget_bytes=budget, batch_size=4, deadline_s=100.0
    )
    x, y = torch.randn(12, 1, 28, 28), torch.randint(0, 10, (12,))
    report = _poet.SYSTEM.train(prepared, x, y, samples=12, measure_steps=2)
    # Assert
    decisions = {s.decision for s in prepared.plan.stages}
    assert ActivationDecision.RECOMPUTE in decisions and ActivationDecision.PAGE in decisions
    assert prepared.plan.objective is Objective.ENERGY
    assert prepared.plan.predicted.latency_s <= 100.0
    assert prepared.predicted_peak_bytes <= budget
    assert report.storage_bytes_written > 0  # pages really went to storage
    assert report.measured_peak_bytes <= budget


def test_poet_rejects_a_deadline_it_cannot_meet():
    model, example = build_model("mcu-cnn")
    with pytest.raises(PlanInfeasibleError):
        _poet.prepare(model, example, device="samd21", batch_size=4, deadline_s=1e-6)


# -- tinyol: batch-1 stream, frozen backbone, a growing head ----------------------------------
def test_tinyol_learns_from_a_batch_1_stream_and_adds_the_new_classes(pretrained, new_classes):
    # Prepare
    model, example = pretrained
    train, test = new_classes
    backbone_before = {
        k: v.clone() for k, v in model.state_dict().items() if not k.startswith("classifier")
    }
    prepared = _tinyol.prepare(
        copy.deepcopy(model), example, device="nrf52840", known_classes=range(5)
    )
    tol = prepared.model
    acc_before = _accuracy(tol, test.x, test.y)
    # Execute: one pass, one sample at a time
    report = _tinyol.train(prepared, train.x, train.y, samples=400, lr=0.05, seed=0)
    # Assert
    assert tol.head.weight.shape[0] == 10 and sorted(tol.head.labels) == list(range(10))
    assert len([n for n in report.notes if n.startswith("class")]) == 5
    assert acc_before == 0.0  # the head knew none of classes 5-9
    tol.eval()
    with torch.no_grad():
        predicted = set(tol(test.x).argmax(1).tolist())
    assert set(range(5, 10)) <= predicted  # every new class gets predicted
    assert _accuracy(tol, test.x, test.y) > 0.4  # chance is 0.2
    for k, v in tol.backbone.state_dict().items():
        assert torch.equal(v, backbone_before[k]), k  # backbone frozen (BN statistics too)
    assert report.steps == 400
    assert (
        abs(report.measured_peak_bytes - prepared.predicted_peak_bytes)
        <= 0.03 * prepared.predicted_peak_bytes
    )


def test_tinyol_rejects_batches_larger_than_one():
    model, example = build_model("mcu-cnn")
    with pytest.raises(Exception, match="batch size must be 1"):
        _tinyol.prepare(model, example, batch_size=4)


# -- tinytl: frozen weights; biases, lite residuals and the head train ------------------------
def test_tinytl_trains_only_biases_lite_residuals_and_the_head(pretrained, new_classes):
    # Prepare
    model, example = pretrained
    train, _ = new_classes
    prepared = _tinytl.prepare(copy.deepcopy(model), example, device="rpi4", batch_size=8)
    tl = prepared.model
    before = {k: v.clone() for k, v in tl.named_parameters()}
    model.eval(), tl.eval()
    with torch.no_grad():  # lite residuals start at zero: the pretrained function is unchanged
        torch.testing.assert_close(tl(train.x[:32]), model(train.x[:32]))
    model.train(), tl.train()
    # Execute
    report = _tinytl.SYSTEM.train(prepared, train.x, train.y, samples=80, lr=0.05)
    # Assert
    changed = {k for k, v in tl.named_parameters() if not torch.equal(v, before[k])}
    allowed = set(_tinytl.trainable_names(tl))
    assert changed <= allowed
    assert any(".lite." in k for k in changed) and any(k.endswith(".bias") for k in changed)
    frozen_weights = [
        k
        for k in before
        if k.endswith(".weight") and ".lite." not in k and not k.startswith("classifier")
    ]
    assert frozen_weights and not (set(frozen_weights) & changed)
    assert sum(isinstance(m, _tinytl.LiteResidual) for m in tl.modules()) == 4
    assert (
        abs(report.measured_peak_bytes - prepared.predicted_peak_bytes)
        <= 0.01 * report.measured_peak_bytes
    )


def test_tinytl_reports_its_memory_against_full_fine_tuning():
    model, example = build_model("mcu-cnn")
    saving = _tinytl.memory_saving(model, example, batch_size=4)
    assert saving["saving"] == pytest.approx(
        saving["full_peak_bytes"] / saving["tinytl_peak_bytes"]
    )


# -- melon: recompute + micro-batch, a lifetime-aware pool -----------------------------------
def test_arena_layouts_on_a_hand_computed_trace():
    # Prepare: A lives [0,2), B [1,5), C [2,4) -- C can reuse A's slot only if it fits
    blocks = (Block(128, 0, 2), Block(64, 1, 5), Block(192, 2, 4))
    # Execute
    ff = _arena.first_fit_layout(blocks)
    la = _arena.lifetime_aware_layout(blocks)
    # Assert: most live at once is B + C = 256; first fit puts C above B (A's 128 hole is too
    # small) -> 128 + 64 + 192 = 384; largest-first puts C at 0, B at 192, A at 192+64? A and C
    # do not overlap in time, so A goes to 0 -> arena 256
    assert ff.max_live_bytes == la.max_live_bytes == 256
    assert ff.offsets_bytes == (0, 128, 192) and ff.arena_bytes == 384
    assert la.offsets_bytes == (0, 192, 0) and la.arena_bytes == 256
    assert la.fragmentation_bytes == 0 and ff.fragmentation_bytes == 128


def test_melon_counts_its_pool_in_the_peak_and_adapts_when_the_budget_drops():
    # Prepare
    model, example = build_model("mcu-cnn")
    x, y = torch.randn(24, 1, 28, 28), torch.randint(0, 10, (24,))
    # Execute
    roomy = _melon.prepare(model, example, device="nrf52840", batch_size=8)
    tight = _melon.replan(roomy, 150_000)
    report = _melon.SYSTEM.train(tight, x, y, samples=24, measure_steps=2)
    # Assert
    for p in (roomy, tight):
        st = _melon.pool_stats(p)
        assert st["max_live_bytes"] <= st["pool_bytes"] <= st["first_fit_pool_bytes"]
        assert p.predicted_peak_bytes == st["outside_bytes"] + st["pool_bytes"]
        assert p.predicted_peak_bytes <= p.plan.budget_bytes
    assert tight.plan.budget_bytes == 150_000
    assert tight.plan.micro_batch_size < roomy.plan.micro_batch_size
    assert report.measured_peak_bytes <= tight.predicted_peak_bytes <= 150_000


# -- sage: re-plans at run time when the budget drops -----------------------------------------
def test_sage_replans_after_a_budget_drop_and_its_measured_peak_stays_under_the_new_budget():
    # Prepare
    model, example = build_model("mcu-cnn")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 28, 28, generator=g), torch.randint(0, 10, (96,), generator=g)
    prepared = _sage.prepare(model, example, device="rpi4", batch_size=8)
    first = prepared.plan
    dropped = int(0.45 * first.predicted_peak_bytes)
    # Execute: the budget falls to 45 % of the first plan's peak after 4 steps
    report = _sage.train(
        prepared,
        x,
        y,
        samples=96,
        measure_steps=3,
        budget_schedule=lambda s: first.budget_bytes if s < 4 else dropped,
    )
    # Assert
    assert len(report.notes) == 2
    after = report.notes[1]
    measured_after = int(after.rsplit("measured ", 1)[1])
    planned_after = int(after.split("plan ", 1)[1].split(" ")[0])
    assert planned_after <= dropped < first.predicted_peak_bytes
    assert 0 < measured_after <= dropped
    assert "(1 x 8)" not in after  # micro-batched after the drop
    assert all(torch.isfinite(torch.tensor(report.losses)))


# -- the bench and its CLI ---------------------------------------------------------------------
def test_bench_cli_writes_json_markdown_and_plots(tmp_path, capsys):
    from edgetrain.strategies._cli import register

    # Prepare
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="command"))
    args = ap.parse_args(
        [
            "bench",
            "--quick",
            "--out",
            str(tmp_path),
            "--strategies",
            "full",
            "tinyol",
            "auto",
            "--devices",
            "nrf52840",
            "rpi4",
            "--samples",
            "48",
            "--json",
        ]
    )
    # Execute
    rc = args.fn(args)
    out = json.loads(capsys.readouterr().out)
    # Assert
    assert rc == 0
    assert {p.rsplit("/", 1)[-1] for p in out["plots"]} == {
        "accuracy_vs_peak.png",
        "accuracy_vs_energy.png",
        "energy.png",
    }
    for f in ("bench.json", "bench.md", "accuracy_vs_peak.png", "energy.png"):
        assert (tmp_path / f).stat().st_size > 0
    rows = out["rows"]
    assert len(rows) == 6
    assert json.loads((tmp_path / "bench.json").read_text())["rows"] == rows
    full_mcu = next(r for r in rows if r["system"] == "full" and r["device"] == "nrf52840")
    assert not full_mcu["fits"]  # batch 8 of plain fine-tuning exceeds the nRF52840's 256 KB
    for r in rows:
        if r["fits"]:
            assert r["measured_peak_bytes"] > 0 and r["accuracy_after"] is not None
            assert (
                abs(r["measured_peak_bytes"] - r["predicted_peak_bytes"])
                <= 0.05 * r["predicted_peak_bytes"]
            )
    assert (tmp_path / "bench.md").read_text().count("| mcu-cnn |") == 6
    assert len(out["auto_pareto"]) == 2


def test_quick_bench_puts_auto_on_both_pareto_fronts(tmp_path):
    # Prepare: the quick bench's task (800 samples of classes 5-9), auto against the
    # strategies that came closest to it (TinyOL's stream, TTE's int8 sparse update, full)
    from edgetrain.strategies._bench import config_from_args, run_bench

    cfg = config_from_args(
        True, systems=["full", "tinyol", "tte", "auto"], devices=["nrf52840", "rpi4"]
    )
    # Execute
    out = run_bench(cfg, tmp_path, show_progress=False)
    # Assert: on each device no fitting strategy has >= accuracy at <= peak (or <= energy per
    # sample, with or without the selection's energy), one of them strictly
    assert [
        (
            a["device"],
            a["on_front_accuracy_vs_peak"],
            a["on_front_accuracy_vs_energy"],
            a["on_front_accuracy_vs_energy_with_preparation"],
        )
        for a in out["auto_pareto"]
    ] == [("nrf52840", True, True, True), ("rpi4", True, True, True)]
    for r in (r for r in out["rows"] if r["samples"]):  # the rows that trained
        assert (r["preparation_energy_j"] > 0) == (r["system"] == "auto")
        assert r["energy_per_sample_with_preparation_j"] == pytest.approx(
            r["energy_per_sample_j"] + r["preparation_energy_j"] / r["samples"]
        )


def test_bench_rejects_unknown_strategies_and_models():
    from edgetrain.strategies._bench import config_from_args

    with pytest.raises(UnknownSystemError):
        config_from_args(True, systems=["checkmate"])
    with pytest.raises(Exception, match="the bench runs models"):
        config_from_args(True, models=["resnet18"])


# -- tte: int8 training with QAS, sparse update by contribution, in-place update ----------------
def test_tte_int8_prediction_counts_exactly_what_its_note_says(pretrained):
    from edgetrain.quant import quantize
    from edgetrain.strategies import _tte

    # Prepare
    model, example = pretrained
    graph = quantize(model, torch.randn(32, 1, 28, 28), name="mcu-cnn")
    # Execute
    got = _tte.int8_step_bytes(graph, ["classifier"], batch_size=1)
    # Assert, by hand for mcu-cnn (int8 activations 1x28x28, 8x14x14, 16x7x7, 16x7x7, 32x7x7,
    # pool 32, logits 10): the classifier's int8 weight 320 + int32 bias 40 + requant 80 +
    # fp32 master 4 * 330; the frozen prefix's largest in + out pair is 784 + 1568 = 2352;
    # backward keeps pool + logits (42) + two fp32 gradients of 32 + the 4 * 330 gradient
    persistent = 320 + 40 + 80 + 4 * 330
    assert got == persistent + max(784 + 1568, 42 + 2 * 4 * 32 + 4 * 330)


def test_tte_trains_the_int8_graph_with_qas_and_beats_unscaled_sgd(pretrained, new_classes):
    from edgetrain.quant import QuantModel
    from edgetrain.strategies import _tte

    # Prepare
    model, example = pretrained
    train, test = new_classes
    calib = train.x[:64]
    accs = {}
    for qas in (True, False):
        prepared = _tte.prepare(
            copy.deepcopy(model),
            example,
            device="nrf52840",
            batch_size=4,
            calibration=calib,
            analysis=(train.x, train.y),
            qas=qas,
        )
        qm = prepared.model
        frozen = {n: p.clone() for n, p in qm.named_parameters() if not p.requires_grad}
        # Execute
        report = _tte.train(prepared, train.x, train.y, samples=120, lr=0.05)
        accs[qas] = _accuracy(qm, test.x[:200], test.y[:200])
        # Assert: an int8 graph is what trained; frozen layers did not move
        assert isinstance(qm, QuantModel)
        assert prepared.predicted_peak_bytes <= 0.97 * 256 * 1024
        assert report.measured_peak_bytes is None  # a float64 simulation's peak is not the device's
        for n, v in frozen.items():
            assert torch.equal(v, dict(qm.named_parameters())[n])
        assert all(op.weight.dtype == torch.int8 for op in qm.to_graph().weighted_ops)
    assert accs[True] > accs[False] + 0.1  # QAS makes int8 SGD learn; unscaled barely moves


# -- mandheling: int8 mixed precision, batch splitting, DSP offloading in the cost model --------
def test_mandheling_offloads_matmuls_to_the_phone_dsp_and_splits_the_batch_to_fit():
    from edgetrain.strategies import _mandheling

    # Prepare
    model, example = build_model("mcu-cnn")
    calib = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    # Execute
    phone = _mandheling.prepare(
        model, example, device="snapdragon-865", batch_size=8, calibration=calib
    )
    board = _mandheling.prepare(model, example, device="rpi4", batch_size=8, calibration=calib)
    tight = _mandheling.prepare(
        model, example, device="nrf52840", batch_size=8, budget_bytes=60_000, calibration=calib
    )
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    before = {n: p.clone() for n, p in tight.model.named_parameters()}
    report = _mandheling.train(tight, x, y, samples=16)
    # Assert: convolutions and the classifier go to the DSP, element-wise work stays on the CPU
    where = _mandheling.placement(phone)
    assert where["conv2d"] == "accelerator" and where["linear"] == "accelerator"
    assert where["relu"] == "cpu"
    assert set(_mandheling.placement(board).values()) == {"cpu"}
    assert phone.plan.predicted.latency_s < board.plan.predicted.latency_s
    # batch splitting: the 60 KB budget needs micro-batches; the whole-batch step does not fit
    assert tight.plan.micro_batch_size < 8
    assert _mandheling.step_bytes(tight.model.graph, 8, 8) > 0.97 * 60_000
    assert tight.predicted_peak_bytes <= 0.97 * 60_000
    assert report.steps == 2
    assert any(not torch.equal(p, before[n]) for n, p in tight.model.named_parameters())


# -- minilearn: int8 -> dequantise -> prune filters to fit -> fp32 retrain -> int8 --------------
def test_minilearn_prunes_to_fit_retrains_and_ends_with_a_smaller_int8_model(
    pretrained, new_classes
):
    from edgetrain.quant import QuantModel, quantize, run_int8
    from edgetrain.strategies import _minilearn

    # Prepare: nrf52840 at batch 8, where the unpruned dequantised network's fp32 training step
    # does not fit; min_prune_ratio=0 so only the budget forces the pruning
    model, example = pretrained
    train, test = new_classes
    calib = train.x[:64]
    budget = 256 * 1024
    original = quantize(model, calib, name="mcu-cnn")
    system = get_system("minilearn")
    prepared = system.prepare(
        model,
        example,
        device="nrf52840",
        batch_size=8,
        name="mcu-cnn",
        calibration=calib,
        min_prune_ratio=0.0,
    )
    before = _accuracy(prepared.model, test.x, test.y)
    # Execute
    report = system.train(prepared, train.x, train.y, samples=1200, lr=0.2)
    after = _accuracy(prepared.model, test.x, test.y)
    # Assert: the unpruned step does not fit, the pruned one does (predicted and allocator)
    state = dict(prepared.state)
    assert state["unpruned_peak_bytes"] > 0.97 * budget
    assert prepared.fits and prepared.predicted_peak_bytes <= 0.97 * budget
    assert report.measured_peak_bytes <= budget
    # fewer filters, and the kept ones are each layer's largest by L1 norm of the int8 model
    graph = prepared.model.to_graph()
    convs = {op.name: op for op in original.weighted_ops}
    assert _minilearn.filter_count(graph) < _minilearn.filter_count(original)
    assert _minilearn.int8_macs(graph) < _minilearn.int8_macs(original)
    for producer, kept in state["prune"].kept:
        op = convs[producer]
        l1 = op.weight.double().abs().flatten(1).sum(1) * op.weight_scale
        assert set(kept) == set(torch.topk(l1, len(kept)).indices.tolist())
        assert len(kept) < op.weight.shape[0]
    # it ends as an int8 model: int8 weights, and its forward is the integer graph
    assert isinstance(prepared.model.int8, QuantModel)
    assert all(op.weight.dtype == torch.int8 for op in graph.weighted_ops)
    with torch.no_grad():
        logits = prepared.model(test.x[:50])
    ref = graph.dequantize_output(run_int8(graph, graph.quantize_input(test.x[:50])))
    assert torch.equal(logits, ref)
    # retraining learnt the new classes the deployed int8 model never predicts
    assert before < 0.05 and after > 0.3


def test_tte_and_mandheling_give_trained_layers_weight_headroom(pretrained):
    from edgetrain.quant import quantize
    from edgetrain.strategies import _mandheling, _tte

    # Prepare
    model, example = pretrained
    calib = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    plain = {op.name: op.weight_scale for op in quantize(model, calib, name="m").weighted_ops}
    # Execute
    tte = _tte.prepare(model, example, device="nrf52840", budget_bytes=6000, calibration=calib)
    mand = _mandheling.prepare(model, example, device="rpi4", batch_size=2, calibration=calib)
    # Assert: trained layers' scales are WEIGHT_HEADROOM x the plain ones, frozen ones unchanged
    for op in tte.model.graph.weighted_ops:
        h = _tte.WEIGHT_HEADROOM if op.name in tte.model.trainable else 1.0
        assert torch.allclose(op.weight_scale, h * plain[op.name])
    assert "classifier" in tte.model.trainable and len(tte.model.trainable) < len(plain)
    for op in mand.model.graph.weighted_ops:
        assert torch.allclose(op.weight_scale, _tte.WEIGHT_HEADROOM * plain[op.name])


def test_minilearn_rejects_missing_calibration_and_budgets_no_pruning_meets(pretrained):
    from edgetrain.errors import InvalidArgumentError
    from edgetrain.strategies import _minilearn

    # Prepare
    model, example = pretrained
    calib = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    # Execute / Assert
    with pytest.raises(InvalidArgumentError, match="calibration="):
        _minilearn.prepare(model, example, device="nrf52840")
    with pytest.raises(PlanInfeasibleError, match=r"needs [\d,]+ bytes, over the 10,000-byte"):
        _minilearn.prepare(
            model, example, device="nrf52840", budget_bytes=10_000, batch_size=8, calibration=calib
        )
