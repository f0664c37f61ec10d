"""ExecuTorch export (issue 17): the exported program trains in ExecuTorch's runtime as the
Trainer trains the same plan in PyTorch; ExecuTorch's memory plan against edgetrain's
prediction; plans ExecuTorch cannot express are refused with the decision and the fix.

Oracles: `edgetrain.Trainer` (plain PyTorch autograd and torch.optim.SGD) on the same batches;
the written `.pte` deserialised by ExecuTorch for the planned buffers."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math

import pytest
import torch

import edgetrain
from edgetrain.cli import main
from edgetrain.errors import (
    DeviceLimitError,
    ExportUnsupportedError,
    InvalidArgumentError,
    OutputPathError,
    PlanFileError,
)
from edgetrain.export import export, load_program
from edgetrain.models import build_model, model_loss
from edgetrain.planner import ActivationDecision, Executor, ParamDecision, Plan, Precision

pytest.importorskip("executorch")


def _batches(plan, model, steps: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        x = torch.randn((plan.batch_size, *plan.input_shape), generator=g)
        with torch.no_grad():
            like = model(x)
        if plan.loss == "cross-entropy":
            y = torch.randint(0, like.shape[1], (plan.batch_size,), generator=g)
        else:
            y = torch.rand(like.shape, generator=g)
        out.append((x, y))
    return out


def _train_both(name, tmp_path, *, batch, policy, optimizer="sgd", lr=0.05, steps=20):
    """Plan for ExecuTorch, export, train `steps` steps in ExecuTorch and in the Trainer (the
    same plan as PyTorch runs it) on the same batches."""
    model, example = build_model(name)
    plan = edgetrain.plan(
        model,
        example,
        device="snapdragon-865",
        batch_size=batch,
        policy=policy,
        optimizer=optimizer,
        loss=model_loss(name),
        executor="executorch",
        freeze_batch_norm=True,
    )
    result = export(copy.deepcopy(model), plan, tmp_path / "et", lr=lr)
    program = load_program(tmp_path / "et")
    data = _batches(plan, copy.deepcopy(model), steps)
    et_losses = [program.step(x, y) for x, y in data]
    ref = copy.deepcopy(model)
    with edgetrain.Trainer(ref, dataclasses.replace(plan, executor=Executor.PYTORCH), lr=lr) as t:
        ref_losses = [t.step(x, y) for x, y in data]
    return plan, result, program, model, ref, et_losses, ref_losses


def _assert_same_training(plan, program, model, ref, et_losses, ref_losses, tol=1e-5):
    trained = {p.name for p in plan.params if p.decision is ParamDecision.TRAINABLE}
    et_params = program.named_parameters()
    assert set(et_params) == trained
    assert et_losses == pytest.approx(ref_losses, rel=tol, abs=tol)
    ref_params, start = dict(ref.named_parameters()), dict(model.named_parameters())
    for name, value in et_params.items():
        torch.testing.assert_close(value, ref_params[name].detach(), rtol=tol, atol=tol)
    # training moved the weights (a tensor whose updates round away in fp32 may stay put)
    assert any(not torch.equal(v, start[n].detach()) for n, v in et_params.items())
    for name in set(start) - trained:  # frozen tensors stay as they were in the Trainer
        assert torch.equal(ref_params[name].detach(), start[name].detach())


def test_mcu_cnn_with_frozen_batch_norm_trains_in_executorch_as_in_the_trainer(tmp_path):
    # Prepare / Execute
    plan, result, program, model, ref, et_l, ref_l = _train_both(
        "mcu-cnn", tmp_path, batch=4, policy="all"
    )
    # Assert: 20 steps of losses and every trained tensor within fp32 tolerance
    assert plan.executor is Executor.EXECUTORCH and plan.freeze_batch_norm
    _assert_same_training(plan, program, model, ref, et_l, ref_l)
    assert {f.name for f in (tmp_path / "et").iterdir()} == {
        "model.pte",
        "model.ptd",
        "manifest.json",
        "README.md",
    }


def test_mlp_autoencoder_mse_with_momentum_trains_as_in_the_trainer(tmp_path):
    plan, result, program, model, ref, et_l, ref_l = _train_both(
        "mlp-autoencoder", tmp_path, batch=8, policy="all", optimizer="momentum", lr=0.01
    )
    assert plan.loss == "mse"
    assert result.manifest["optimizer"]["momentum"] == 0.9
    _assert_same_training(plan, program, model, ref, et_l, ref_l)


def test_transformer_encoder_trains_as_in_the_trainer(tmp_path):
    # vit-tiny: nn.MultiheadAttention, LayerNorm, GELU (attention exported as its mathematics)
    plan, result, program, model, ref, et_l, ref_l = _train_both(
        "vit-tiny", tmp_path, batch=2, policy="all", lr=0.02
    )
    _assert_same_training(plan, program, model, ref, et_l, ref_l, tol=2e-5)


@pytest.mark.slow
def test_mbv2_last_k_trains_as_in_the_trainer(tmp_path):
    plan, result, program, model, ref, et_l, ref_l = _train_both(
        "mbv2-w0.35", tmp_path, batch=2, policy="last:4"
    )
    assert 0 < len(result.manifest["trainable"]) < len(plan.params)
    _assert_same_training(plan, program, model, ref, et_l, ref_l)


def test_manifest_memory_is_the_runtimes_memory_plan_and_near_the_prediction(tmp_path):
    # Prepare
    model, example = build_model("mcu-cnn")
    plan = edgetrain.plan(
        model, example, device="rpi4", batch_size=8, executor="executorch", freeze_batch_norm=True
    )
    # Execute
    result = export(model, plan, tmp_path / "et")
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary((tmp_path / "et" / "model.pte").read_bytes()).program
    on_file = next(p for p in pte.execution_plan if p.name == "forward").non_const_buffer_sizes
    # Assert: the manifest is the written program's memory plan; within 10 % of edgetrain's
    mem = result.memory
    assert mem["executorch"]["planned_buffer_bytes"] == list(on_file)
    assert abs(mem["difference_ratio"]) <= 0.10, mem
    assert not plan.in_place_update  # ExecuTorch's SGD steps after the method returns
    on_disk = json.loads((tmp_path / "et" / "manifest.json").read_text())
    assert on_disk == result.manifest
    assert [i["shape"] for i in on_disk["inputs"]] == [[8, 1, 28, 28], [8]]


# -- refusals -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def base():
    model, example = build_model("mcu-cnn")
    plan = edgetrain.plan(
        model,
        example,
        device="rpi4",
        batch_size=4,
        strategy="keep-all",
        freeze_batch_norm=True,
        measure=False,
    )
    return model, plan


def _stages(plan, decision):
    first = dataclasses.replace(plan.stages[0], decision=decision)
    return (first, *plan.stages[1:])


_REFUSED = {
    "recompute": (lambda p: {"stages": _stages(p, ActivationDecision.RECOMPUTE)}, "recompute"),
    "page": (lambda p: {"stages": _stages(p, ActivationDecision.PAGE)}, "page"),
    "micro-batch": (lambda p: {"micro_batch_size": 2, "in_place_update": False}, "micro-batch"),
    "batch statistics": (lambda p: {"freeze_batch_norm": False}, "--freeze-batch-norm"),
    "adam": (lambda p: {"optimizer": "adam"}, "--optimizer sgd"),
    "schedule": (lambda p: {"schedule": "cosine"}, "--schedule constant"),
    "channels": (
        lambda p: {
            "params": tuple(
                dataclasses.replace(q, decision=ParamDecision.CHANNELS, channel_ratio=0.5)
                for q in p.params
            )
        },
        "--policy",
    ),
    "C executor": (
        lambda p: {"executor": Executor.C, "precision": Precision.FP32},
        "--executor executorch",
    ),
}


@pytest.mark.parametrize("case", sorted(_REFUSED))
def test_plans_executorch_cannot_express_are_refused_with_the_decision_and_the_fix(
    base, case, tmp_path
):
    # Prepare
    model, plan = base
    change, fix = _REFUSED[case]
    bad = dataclasses.replace(plan, **change(plan))
    # Execute / Assert: typed, names the decision and a plan flag, writes nothing
    with pytest.raises(ExportUnsupportedError) as e:
        export(model, bad, tmp_path / "et")
    assert fix in str(e.value) and "edgetrain plan" in str(e.value)
    assert not (tmp_path / "et").exists()


def test_an_executorch_plan_file_asking_for_recompute_is_refused(base):
    _, plan = base
    bad = dataclasses.replace(
        plan, executor=Executor.EXECUTORCH, stages=_stages(plan, ActivationDecision.RECOMPUTE)
    )
    with pytest.raises(PlanFileError, match="recompute or paging"):
        Plan.from_json(bad.to_json())
    ok = dataclasses.replace(plan, executor=Executor.EXECUTORCH)
    assert Plan.from_json(ok.to_json()).executor is Executor.EXECUTORCH


def test_planning_for_executorch_refuses_adam_with_the_fix():
    model, example = build_model("mcu-cnn")
    with pytest.raises(ExportUnsupportedError, match="--optimizer sgd"):
        edgetrain.plan(model, example, device="rpi4", executor="executorch", optimizer="adam")


def test_export_leaves_the_model_as_it_was(base, tmp_path):
    model, plan = base
    model.eval()
    flags = [p.requires_grad for p in model.parameters()]
    export(model, plan, tmp_path / "et")
    assert not model.training
    assert [p.requires_grad for p in model.parameters()] == flags


# -- command line -------------------------------------------------------------------------------
def test_cli_plans_for_executorch_and_exports(tmp_path, capsys):
    # Prepare
    plan_file, out = tmp_path / "plan.json", tmp_path / "et"
    argv = ["plan", "--model", "mcu-cnn", "--device", "rpi4", "--batch-size", "2"]
    assert (
        main([*argv, "--executor", "executorch", "--policy", "last:2", "-o", str(plan_file)]) == 0
    )
    capsys.readouterr()
    # Execute
    rc = main(["export", "--plan", str(plan_file), "--format", "executorch", "-o", str(out)])
    rc_json = main(["export", "--plan", str(plan_file), "-o", str(out), "--json"])
    # Assert
    assert rc == 0 and rc_json == 0
    manifest = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert manifest["plan"]["executor"] == "executorch"
    assert [t["name"] for t in manifest["trainable"]] == list(Plan.load(plan_file).trainable()[-4:])
    assert "TrainingModule" in (out / "README.md").read_text()


def test_export_refuses_a_folder_of_other_files(base, tmp_path):
    model, plan = base
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputPathError, match="--force"):
        export(model, plan, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_edgetrain_export_is_the_function_and_the_package():
    import edgetrain.export as package

    assert callable(edgetrain.export) and callable(package)
    assert package.export is export


def test_an_operator_without_an_executorch_kernel_is_refused_and_the_policy_avoids_it(tmp_path):
    # Prepare: kws-dscnn's AvgPool2d, whose backward has no kernel in ExecuTorch 1.5.1
    model, example = build_model("kws-dscnn")
    full, head = (
        edgetrain.plan(
            model,
            example,
            device="rpi4",
            batch_size=2,
            policy=policy,
            executor="executorch",
            freeze_batch_norm=True,
        )
        for policy in ("all", "last:1")
    )
    # Execute / Assert: refused at export (not at the first step on the device), naming it
    with pytest.raises(ExportUnsupportedError, match="avg_pool2d_backward") as e:
        export(model, full, tmp_path / "all")
    assert "--policy" in str(e.value)
    export(model, head, tmp_path / "head")
    loss = load_program(tmp_path / "head").step(
        torch.randn(2, *example.shape[1:]), torch.tensor([0, 1])
    )
    assert math.isfinite(loss) and loss > 0


def test_a_program_over_the_plans_budget_is_refused_and_nothing_written(tmp_path):
    # Prepare: vit-tiny's attention runs as matmuls in ExecuTorch and needs more than the
    # prediction (docs/results.md); a budget between the two
    model, example = build_model("vit-tiny")
    free = edgetrain.plan(model, example, device="snapdragon-865", batch_size=4,
                          executor="executorch")  # fmt: skip
    budget = int(free.predicted_peak_bytes * 1.2)
    plan = edgetrain.plan(model, example, device="snapdragon-865", batch_size=4,
                          executor="executorch", budget_bytes=budget)  # fmt: skip
    # Execute / Assert: a typed error with both numbers; no folder left behind
    with pytest.raises(DeviceLimitError, match=f"over the plan's budget of {budget:,}"):
        export(model, plan, tmp_path / "et")
    assert not (tmp_path / "et").exists()


def test_a_changed_or_foreign_program_file_is_refused_before_the_first_step(tmp_path):
    # Prepare: a real export, then (a) one byte of model.pte changed, (b) model.pte replaced
    # by bytes that are not a program, with the manifest rewritten to match them
    from edgetrain.errors import ExportManifestError

    model, example = build_model("mcu-cnn")
    plan = edgetrain.plan(
        model, example, device="snapdragon-865", batch_size=2, policy="last:1",
        executor="executorch", freeze_batch_norm=True,
    )  # fmt: skip
    out = tmp_path / "et"
    export(copy.deepcopy(model), plan, out)
    # a batch, targets or a learning rate the program does not take: typed, before ExecuTorch
    program = load_program(out)
    x, y = torch.randn(2, *plan.input_shape), torch.zeros(2, dtype=torch.long)
    for bad_x, bad_y, what in (
        (x[:1], y, "batch has shape"),
        (x, y.float(), "targets is float32"),
        (x, y[:1], "targets has shape"),
    ):
        with pytest.raises(InvalidArgumentError, match=what):
            program.step(bad_x, bad_y)
    assert math.isfinite(program.step(x, y))
    with pytest.raises(InvalidArgumentError, match="learning rate"):
        load_program(out, lr=-1.0)
    pte = out / "model.pte"
    good = pte.read_bytes()
    pte.write_bytes(good[:100] + bytes([good[100] ^ 1]) + good[101:])
    # Execute / Assert (a)
    with pytest.raises(ExportManifestError, match="model.pte.*changed or truncated"):
        load_program(out)
    # Execute / Assert (b)
    junk = b"not a program" * 10
    pte.write_bytes(junk)
    m = json.loads((out / "manifest.json").read_text())
    m["files"]["model.pte"] = {"bytes": len(junk), "sha256": hashlib.sha256(junk).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ExportManifestError, match="could not load"):
        load_program(out)
