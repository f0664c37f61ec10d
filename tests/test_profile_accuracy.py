"""Acceptance of the cost model: predictions against autograd and the allocator, every
reference model at batch sizes 1 and 8."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from edgetrain.models import build_model, model_names
from edgetrain.prepare._profile import profile

MODELS = [
    "mcu-cnn",
    "mbv2-w0.35",
    "mcunet",
    "resnet18",
    "resnet18-cifar",
    "transformer-tiny",
    "minilm",
]


def test_every_reference_model_is_covered():
    assert set(MODELS) <= set(model_names())


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name", MODELS)
def test_prediction_matches_measurement(name, batch):
    # Prepare
    torch.manual_seed(0)
    model, example = build_model(name, pretrained=False)
    # Execute: predict and measure one real step (allocator events, autograd's saved tensors)
    p = profile(
        model, example, device="rpi4", batch_size=batch, optimizer="sgd", measure=True, name=name
    )
    c, m = p.cost, p.measured
    # Assert
    assert abs(c.activation_bytes - m.activation_bytes) <= 0.01 * m.activation_bytes, (
        c.activation_bytes,
        m.activation_bytes,
    )
    # within 1 % (the table in the README: within 52 bytes on the reference host); the issue's
    # acceptance bound is 10 %
    assert abs(c.peak_bytes - m.peak_bytes) <= 0.01 * m.peak_bytes, (c.peak_bytes, m.peak_bytes)
    # the peak is a simulation, not a sum of parts: it never exceeds the sum, and exceeds
    # the state that is live throughout
    assert c.peak_bytes > c.params_bytes + c.batch_bytes


@pytest.mark.parametrize("name", MODELS)
def test_forward_flops_match_flop_counter(name):
    torch.manual_seed(0)
    model, example = build_model(name, pretrained=False)
    p = profile(model, example, device="rpi4", batch_size=2, name=name)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(example.expand(2, *example.shape[1:]).contiguous())
    expected = fc.get_total_flops()
    assert abs(p.cost.flops_forward - expected) <= 0.01 * expected


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_optimizer_state_counted_in_peak(optimizer):
    torch.manual_seed(0)
    model, example = build_model("mcu-cnn", pretrained=False)
    p = profile(
        model,
        example,
        device="nrf52840",
        batch_size=4,
        optimizer=optimizer,
        measure=True,
        name="mcu-cnn",
    )
    expected_state = p.cost.trainable_params_bytes * (1 if optimizer == "momentum" else 2)
    assert p.cost.optimizer_bytes >= expected_state
    assert abs(p.cost.peak_bytes - p.measured.peak_bytes) <= 0.01 * p.measured.peak_bytes
