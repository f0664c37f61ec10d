"""The model zoo: models users bring, captured and costed against eager autograd and the
allocator (issue 12)."""

import copy

import pytest
import torch

from edgetrain.capture import LOSSES, capture, example_target, loss_function
from edgetrain.cost import load_device, training_cost
from edgetrain.ir import OpKind
from edgetrain.measure import measure_training_step, saved_activation_bytes
from edgetrain.models import ZOO
from edgetrain.prepare._profile import host_kernels

# Recurrent models lower to ~1000 primitives: their capture takes ~20 s.
_SLOW_CAPTURE = {"gru-seq", "lstm-seq", "text-gru"}


def _params(names, batches, slow_if):
    out = []
    for name in names:
        for b in batches:
            marks = [pytest.mark.slow] if slow_if(name, b) else []
            out.append(pytest.param(name, b, marks=marks, id=f"{name}-{b}"))
    return out


def _step_inputs(entry, model, x, batch):
    xb = x.expand(batch, *x.shape[1:]).contiguous()
    with torch.no_grad():
        out = model(xb)
    return xb, example_target(entry.loss, out, None, None)


def test_zoo_has_the_issue_models_with_notes_and_losses():
    # Assert: the twelve models of issue 12, each with a source note and a known loss
    assert len(ZOO) >= 12
    for name, e in ZOO.items():
        model, x = e.factory()
        assert e.name == name and e.note.strip()
        assert e.loss in LOSSES
        assert tuple(x.shape) == e.input_shape and x.shape[0] == 1
        assert str(x.dtype).removeprefix("torch.") == e.input_dtype
        assert model.training


def test_zoo_factories_are_deterministic():
    for e in ZOO.values():
        (m1, x1), (m2, x2) = e.factory(), e.factory()
        assert torch.equal(x1, x2)
        for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
            assert torch.equal(a, b), (e.name, k)


@pytest.mark.parametrize(
    ("name", "batch"), _params(sorted(ZOO), [1, 3], lambda n, b: n in _SLOW_CAPTURE)
)
def test_zoo_saved_tensor_attribution_equals_eager_autograd(name, batch):
    # Prepare
    entry = ZOO[name]
    model, x = entry.factory()
    xb, y = _step_inputs(entry, model, x, batch)
    loss_fn = loss_function(entry.loss)
    # Execute
    graph = capture(model, x, batch_size=batch, loss=entry.loss, cache=False, name=name)
    measured, _ = saved_activation_bytes(model, lambda: loss_fn(model(xb), y))
    # Assert: byte for byte against an independent eager step of the original model
    assert graph.activation_bytes == measured
    assert graph.nodes[-1].output == graph.loss


def test_autoencoder_is_costed_with_its_mse_loss_not_cross_entropy():
    entry = ZOO["mlp-autoencoder"]
    model, x = entry.factory()
    graph = capture(model, x, batch_size=2, loss=entry.loss, cache=False)
    assert graph.nodes[-1].op is OpKind.LOSS and graph.nodes[-1].attr("fn") == "mse_loss"
    assert graph.tensor(graph.target).shape == (2, 128)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "batch"), _params(sorted(ZOO), [1, 8], lambda n, b: False))
def test_zoo_prediction_within_bounds_of_the_allocator(name, batch):
    # Prepare
    entry = ZOO[name]
    model, x = entry.factory()
    # Execute: predict, then measure one real step of a copy with the same loss
    graph = capture(model, x, batch_size=batch, loss=entry.loss, cache=False, name=name)
    cost = training_cost(graph, load_device("rpi4"), kernels=host_kernels(graph))
    m = copy.deepcopy(model)
    xb, y = _step_inputs(entry, m, x, batch)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01)
    meas = measure_training_step(m, xb, y, opt, loss_fn=loss_function(entry.loss))
    # Assert: saved activations within 1 %, peak within 5 %
    assert abs(cost.activation_bytes - meas.activation_bytes) <= 0.01 * meas.activation_bytes
    assert abs(cost.peak_bytes - meas.peak_bytes) <= 0.05 * meas.peak_bytes, (
        cost.peak_bytes,
        meas.peak_bytes,
    )
