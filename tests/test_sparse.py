"""Sparse-update selection by Fisher information per byte (TinyTrain-style), and its use in `auto`."""

import pytest
import torch
import torch.nn.functional as F

import edgetrain
from edgetrain.capture import capture
from edgetrain.cost import load_device
from edgetrain.errors import InvalidArgumentError
from edgetrain.models import build_model
from edgetrain.prepare._sparse import fisher_candidates, fisher_information, score_layers


def _samples(x, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *x.shape[1:], generator=g), torch.randint(0, 10, (n,), generator=g)


def test_fisher_equals_per_sample_gradients_from_torch_func():
    # Prepare
    torch.manual_seed(0)
    model, x = build_model("mcu-cnn", pretrained=False)
    model.eval()  # per-sample gradients through torch.func need no batch statistics
    xs, ys = _samples(x, 6)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_one(p, xi, yi):
        out = torch.func.functional_call(model, (p, buffers), (xi[None],))
        return F.cross_entropy(out, yi[None])

    # Execute: ours, and an independent oracle (vmap over per-sample grads)
    ours = fisher_information(model, (xs, ys))
    per_sample = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))(params, xs, ys)
    oracle = {k: float(g.pow(2).sum()) / xs.shape[0] for k, g in per_sample.items()}
    # Assert
    assert ours.keys() == oracle.keys()
    for k in ours:
        assert ours[k] == pytest.approx(oracle[k], rel=1e-4, abs=1e-12), k


def test_scoring_leaves_the_model_as_it_was():
    # Prepare
    torch.manual_seed(0)
    model, x = build_model("mcu-cnn", pretrained=False)
    model.features[0][0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    g = capture(model, x, name="mcu-cnn")
    # Execute
    scores = score_layers(model, g, _samples(x, 4), device=load_device("nrf52840"))
    # Assert: state, flags and gradients untouched; every module owning parameters is scored
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert {s.module for s in scores} == {p.module for p in g.params}
    assert all(s.memory_bytes > 0 and s.fisher >= 0 for s in scores)
    ratios = [s.fisher_per_byte for s in scores]
    assert ratios == sorted(ratios, reverse=True)


def test_candidates_are_nested_prefixes_largest_first():
    torch.manual_seed(0)
    model, x = build_model("mcu-cnn", pretrained=False)
    g = capture(model, x, name="mcu-cnn")
    scores = score_layers(model, g, _samples(x, 4), device=load_device("nrf52840"))
    cands = fisher_candidates(scores)
    assert cands[0] == frozenset(p.name for p in g.params)
    assert all(b < a for a, b in zip(cands, cands[1:]))
    assert cands[-1] == frozenset(scores[0].params)


def test_auto_with_calibration_trains_the_largest_fisher_prefix_that_fits():
    # Prepare: a budget full training cannot meet on the nRF52840
    torch.manual_seed(0)
    model, x = build_model("mcu-cnn", pretrained=False)
    cal = _samples(x, 8)
    full = edgetrain.plan(
        model,
        x,
        device="nrf52840",
        batch_size=8,
        strategy="keep-all",
        budget_bytes=1 << 30,
        name="mcu-cnn",
    )
    budget = int(full.predicted_peak_bytes * 0.15)  # full training needs >= 20 % of it
    # Execute
    p = edgetrain.plan(
        model,
        x,
        device="nrf52840",
        batch_size=8,
        budget_bytes=budget,
        strategy="auto",
        policy="fisher",
        calibration=cal,
        name="mcu-cnn",
    )
    # Assert: fits, trains a Fisher prefix, and the next larger prefix could not be planned
    assert p.predicted_peak_bytes <= budget
    assert p.notes[0].startswith("trainable policy: fisher:top-")
    g = capture(model, x, name="mcu-cnn")
    cands = fisher_candidates(score_layers(model, g, cal, device=load_device("nrf52840")))
    chosen = frozenset(p.trainable())
    assert chosen in cands
    larger = cands[cands.index(chosen) - 1]
    with pytest.raises(edgetrain.PlanInfeasibleError):
        edgetrain.plan(
            model,
            x,
            device="nrf52840",
            batch_size=8,
            budget_bytes=budget,
            strategy="auto",
            policy=",".join(sorted(larger)),
            name="mcu-cnn",
        )


def test_fisher_policy_errors_say_what_to_pass():
    model, x = build_model("mcu-cnn", pretrained=False)
    with pytest.raises(InvalidArgumentError, match="calibration"):
        edgetrain.plan(model, x, device="nrf52840", policy="fisher")
    with pytest.raises(InvalidArgumentError, match="strategy auto"):
        edgetrain.plan(
            model,
            x,
            device="nrf52840",
            policy="fisher",
            strategy="sqrt",
            calibration=_samples(x, 2),
        )
    with pytest.raises(InvalidArgumentError, match="same number of samples"):
        fisher_information(model, (torch.zeros(3, 1, 28, 28), torch.zeros(2, dtype=torch.long)))
