"""The loss travels with the plan (issue 12): any loss and output shape is captured, costed,
recorded in the Plan and used by the Trainer; data that does not match the plan is refused."""

import copy

import pytest
import torch
import torch.nn.functional as F

from edgetrain.capture import capture, loss_label
from edgetrain.errors import InvalidArgumentError, UnsupportedOpError
from edgetrain.models import build_model, model_loss
from edgetrain.planner import Plan
from edgetrain.prepare import plan
from edgetrain.prepare._profile import profile
from edgetrain.runtime import Trainer


def _huber(out, target):
    return F.huber_loss(out, target, delta=0.5)


@pytest.fixture(scope="module")
def autoencoder_plan():
    model, x = build_model("mlp-autoencoder")
    return model, x, plan(model, x, device="rpi4", strategy="exact", loss="mse", name="ae")


def test_built_in_models_know_their_task_s_loss():
    assert model_loss("mlp-autoencoder") == "mse" and model_loss("unet-tiny") == "bce"
    assert model_loss("kws-dscnn") == model_loss("mcu-cnn") == "cross-entropy"
    assert model_loss("my_model.py:factory") == "cross-entropy"


def test_the_plan_records_loss_and_one_sample_and_reloads(autoencoder_plan):
    _, x, p = autoencoder_plan
    assert p.loss == "mse" and p.input_shape == (128,) and p.input_dtype == "float32"
    assert Plan.from_json(p.to_json()) == p


def test_trainer_trains_with_the_plan_s_loss(autoencoder_plan):
    # Prepare
    model, x, p = autoencoder_plan
    model, reference = copy.deepcopy(model), copy.deepcopy(model)
    xb, yb = torch.randn(1, 128), torch.rand(1, 128)
    # Execute: the plan's loss (no loss_fn given) against plain PyTorch with MSE
    with Trainer(model, p, lr=0.1) as t:
        loss = t.step(xb, yb)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    want = F.mse_loss(reference(xb), yb)
    want.backward()
    opt.step()
    # Assert
    assert loss == pytest.approx(float(want))
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("xb", "why"),
    [
        (torch.randn(1, 64), r"\(64,\) float32"),
        (torch.randn(1, 128, dtype=torch.float64), r"\(128,\) float64"),
        (torch.randn(1, 2, 64), r"\(2, 64\)"),
    ],
)
def test_trainer_refuses_samples_the_plan_was_not_made_for(autoencoder_plan, xb, why):
    model, _, p = autoencoder_plan
    with Trainer(copy.deepcopy(model), p) as t, pytest.raises(InvalidArgumentError, match=why):
        t.step(xb, torch.rand(1, 128))


def test_an_explicit_loss_fn_is_checked_against_the_output(autoencoder_plan):
    model, _, p = autoencoder_plan
    with Trainer(copy.deepcopy(model), p, loss_fn=F.cross_entropy) as t:
        with pytest.raises(InvalidArgumentError, match=r"output \(1, 128\).*targets \(1, 3\)"):
            t.step(torch.randn(1, 128), torch.rand(1, 3))
    with Trainer(copy.deepcopy(model), p, loss_fn=lambda o, y: (o - y) ** 2) as t:
        with pytest.raises(InvalidArgumentError, match="one differentiable number"):
            t.step(torch.randn(1, 128), torch.rand(1, 128))


def test_a_python_loss_is_captured_recorded_and_must_be_passed_to_the_trainer():
    # Prepare
    model, x = build_model("mlp-autoencoder")
    # Execute
    p = plan(model, x, device="rpi4", strategy="exact", loss=_huber, name="ae")
    # Assert: recorded by name, never imported back; the Trainer asks for the function
    assert p.loss == loss_label(_huber) and p.loss.startswith("custom:") and "_huber" in p.loss
    assert Plan.from_json(p.to_json()).loss == p.loss
    with pytest.raises(InvalidArgumentError, match="pass it"):
        Trainer(model, p)
    with Trainer(model, p, loss_fn=_huber) as t:
        assert t.step(torch.randn(1, 128), torch.rand(1, 128)) > 0


def test_the_loss_is_costed_reconstruction_saves_differ_from_cross_entropy():
    # Prepare: the same classifier-shaped output costed under two losses
    model, x = build_model("mlp-784")
    # Execute
    ce = capture(model, x, batch_size=4, loss="cross-entropy", cache=False)
    bce = capture(model, x, batch_size=4, loss="bce", cache=False)
    # Assert: targets of the loss's kind; bce saves its float target-sized work
    assert ce.tensor(ce.target).dtype == "int64" and ce.tensor(ce.target).shape == (4,)
    assert bce.tensor(bce.target).dtype == "float32" and bce.tensor(bce.target).shape == (4, 10)
    assert ce.nodes[-1].attr("fn") != bce.nodes[-1].attr("fn")


def test_cross_entropy_on_an_image_output_says_which_loss_to_choose():
    model, x = build_model("unet-tiny")
    with pytest.raises(UnsupportedOpError, match="loss='mse', 'bce'"):
        profile(model, x, device="rpi4", loss="cross-entropy")


def test_profile_measures_with_the_loss_it_costs():
    model, x = build_model("mlp-autoencoder")
    p = profile(model, x, device="rpi4", batch_size=4, loss="mse", measure=True)
    assert p.loss == "mse" and p.to_dict()["loss"] == "mse"
    assert p.cost.activation_bytes == p.measured.activation_bytes
    assert abs(p.cost.peak_bytes - p.measured.peak_bytes) <= 0.05 * p.measured.peak_bytes
