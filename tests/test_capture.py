"""Capture -> IR: every operator rule against what eager autograd really saves."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgetrain.capture import capture, loss_function
from edgetrain.errors import InvalidArgumentError, UnsupportedOpError
from edgetrain.ir import Graph, OpKind, TensorRole
from edgetrain.measure import saved_activation_bytes


class Attention(nn.Module):
    def __init__(self, vocab=50, d=16, heads=2):
        super().__init__()
        self.e, self.q, self.k, self.v = (
            nn.Embedding(vocab, d),
            nn.Linear(d, d),
            nn.Linear(d, d),
            nn.Linear(d, d),
        )
        self.ln, self.head, self.h = nn.LayerNorm(d), nn.Linear(d, 3), heads

    def forward(self, t):
        x = self.e(t)
        b, n, c = x.shape
        q = self.q(x).view(b, n, self.h, c // self.h).transpose(1, 2)
        k = self.k(x).view(b, n, self.h, c // self.h).transpose(1, 2)
        v = self.v(x).view(b, n, self.h, c // self.h).transpose(1, 2)
        a = ((q @ k.transpose(-2, -1)) / 4.0).softmax(-1)
        o = (a @ v).transpose(1, 2).reshape(b, n, c)
        o = self.ln(F.gelu(o) * 0.5 + x)
        return self.head(torch.tanh(o.mean(1)))


class Residual(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2 = nn.Conv2d(c, c, 3, padding=1, groups=c)

    def forward(self, x):
        return F.relu(x + self.c2(F.relu(self.b1(self.c1(x)))))


CASES = {
    "conv-bn-relu6-maxpool": (
        lambda: nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU6(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, 10),
        ),
        (1, 1, 8, 8),
    ),
    "depthwise-hardswish-avgpool": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 6, 1),
            nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6),
            nn.Hardswish(),
            nn.AvgPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, 4),
        ),
        (1, 3, 12, 12),
    ),
    "adaptive-pool-2x2": (
        lambda: nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 4)
        ),
        (1, 3, 9, 9),
    ),
    "residual": (
        lambda: nn.Sequential(Residual(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)),
        (1, 8, 6, 6),
    ),
    "first-layer-maxpool-no-grad": (
        lambda: nn.Sequential(
            nn.MaxPool2d(2), nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 2 * 2, 3)
        ),
        (1, 2, 8, 8),
    ),
}


def _input(shape):
    torch.manual_seed(0)
    return torch.randn(*shape)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", sorted(CASES) + ["attention"])
def test_predicted_saved_bytes_equal_autograd(case, batch):
    # Prepare
    torch.manual_seed(0)
    if case == "attention":
        model, x = Attention(), torch.randint(0, 50, (1, 6))
    else:
        factory, shape = CASES[case]
        model, x = factory(), _input(shape)
    # Execute
    graph = capture(model, x, batch_size=batch)
    xb = x.expand(batch, *x.shape[1:]).contiguous()
    y = torch.arange(batch) % 3
    measured, _ = saved_activation_bytes(model, lambda: F.cross_entropy(model(xb), y))
    # Assert: exact, byte for byte
    assert graph.activation_bytes == measured


def test_views_share_storage_and_copies_do_not():
    g = capture(Attention(), torch.randint(0, 50, (1, 6)), batch_size=2)
    by_op = {}
    for n in g.nodes:
        by_op.setdefault(n.op, []).append(n)
    for n in by_op[OpKind.VIEW]:
        assert g.tensor(n.output).storage == g.tensor(n.inputs[0]).storage
    # reshape after transpose must copy; batched matmul saves 3-D copies of transposed operands
    assert any(n.aten == "aten.reshape.default" for n in by_op[OpKind.COPY])
    assert any(n.aux_outputs for n in by_op[OpKind.MATMUL])


def test_ir_is_plain_data_and_round_trips_json():
    g = capture(CASES["residual"][0](), _input(CASES["residual"][1]), batch_size=2)
    text = g.to_json()
    g2 = Graph.from_json(text)
    assert g2.to_dict() == json.loads(text)
    assert g2.activation_bytes == g.activation_bytes
    assert {p.name for p in g.params} == {
        "0.c1.weight",
        "0.b1.weight",
        "0.b1.bias",
        "0.c2.weight",
        "0.c2.bias",
        "3.weight",
        "3.bias",
    }
    assert all(t.role is not TensorRole.ACTIVATION or t.producer for t in g.tensors)


def test_capture_does_not_change_model_state():
    model = CASES["conv-bn-relu6-maxpool"][0]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    capture(model, _input((1, 1, 8, 8)), batch_size=4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_frozen_parameters_are_recorded():
    model = CASES["residual"][0]()
    model[0].c1.weight.requires_grad_(False)
    g = capture(model, _input((1, 8, 6, 6)))
    frozen = [p.name for p in g.params if not p.trainable]
    assert frozen == ["0.c1.weight"]


def test_flops_match_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    model, x = Attention(), torch.randint(0, 50, (1, 6))
    g = capture(model, x, batch_size=2)
    with FlopCounterMode(display=False) as fc:
        model(x.expand(2, -1).contiguous())
    assert sum(n.flops_forward for n in g.nodes) == fc.get_total_flops()


def test_unsupported_op_names_op_node_and_fix():
    class Sorts(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(4, 4)

        def forward(self, x):
            return torch.cumsum(self.l(x), dim=1)

    with pytest.raises(UnsupportedOpError) as e:
        capture(Sorts(), torch.randn(1, 4))
    msg = str(e.value)
    assert "cumsum" in msg and "node" in msg and "Supported" in msg


@pytest.mark.parametrize("bad", [0, -2, 1.5, True])
def test_bad_batch_size(bad):
    with pytest.raises(InvalidArgumentError, match="batch size"):
        capture(nn.Linear(2, 2), torch.randn(1, 2), batch_size=bad)


def test_example_input_must_have_batch_one():
    with pytest.raises(InvalidArgumentError, match="batch size 1"):
        capture(nn.Linear(2, 2), torch.randn(4, 2))


def test_ir_cost_and_plan_layers_import_no_torch():
    code = (
        "import sys, edgetrain.ir, edgetrain.cost, edgetrain.planner; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_graph_cache_hit_equals_fresh_capture_and_tracks_trainable_flags():
    # Prepare
    model = CASES["residual"][0]()
    x = _input((1, 8, 6, 6))
    # Execute
    fresh = capture(model, x, batch_size=2, cache=False)
    first = capture(model, x, batch_size=2)
    hit = capture(model, x, batch_size=2)
    model[0].c1.weight.requires_grad_(False)
    after_freeze = capture(model, x, batch_size=2)
    # Assert
    assert first.to_dict() == fresh.to_dict() == hit.to_dict()
    assert [p.trainable for p in after_freeze.params] != [p.trainable for p in hit.params]


# -- op categories on their own: what capture predicts against what eager autograd saves ------
class _Cat(nn.Module):
    def __init__(self, body, head_in, classes=3):
        super().__init__()
        self.body, self.head = body, nn.Linear(head_in, classes)

    def forward(self, x):
        return self.head(self.body(x).flatten(1))


class _Fn(nn.Module):
    def __init__(self, fn, ch=4):
        super().__init__()
        self.fn, self.lin = fn, nn.Linear(ch, ch)

    def forward(self, x):
        return self.fn(self.lin(x))


CATEGORY_CASES = {
    "convolution-1d-dilated": (
        lambda: _Cat(nn.Conv1d(2, 4, 3, dilation=2, padding=2), 4 * 8),
        (1, 2, 8),
    ),
    "pooling-1d-max-avg": (
        lambda: _Cat(nn.Sequential(nn.Conv1d(2, 4, 3), nn.MaxPool1d(2), nn.AvgPool1d(3)), 4),
        (1, 2, 8),
    ),
    "normalisation-batchnorm1d": (
        lambda: _Cat(nn.Sequential(nn.Conv1d(2, 4, 1), nn.BatchNorm1d(4)), 4 * 5),
        (1, 2, 5),
    ),
    "random-dropout": (lambda: _Cat(nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.3)), 6), (1, 6)),
    "elementwise-sigmoid-rsub-relu6": (
        lambda: _Fn(lambda h: F.relu6(1 - torch.sigmoid(h)) * torch.exp(h)),
        (1, 4),
    ),
    "reduction-sum-amax": (
        lambda: _Fn(lambda h: h.unsqueeze(1).expand(-1, 3, -1).sum(1) + h.amax(1, keepdim=True)),
        (1, 4),
    ),
    "views-chunk-unbind-unflatten": (
        lambda: _Fn(
            lambda h: torch.cat(
                torch.stack(h.unflatten(1, (2, 2)).unbind(1), 1).chunk(2, dim=2), 1
            ).flatten(1)
        ),
        (1, 4),
    ),
    "index-cat-pad-gather": (
        lambda: _Fn(
            lambda h: torch.cat([F.pad(h, (1, 1)), h], 1).gather(
                1, torch.tensor([[0, 3, 5, 7]]).expand(h.shape[0], -1)
            )
        ),
        (1, 4),
    ),
    "factory-zeros-full": (
        lambda: _Fn(lambda h: h + torch.zeros(4) + torch.full((4,), 2.0)),
        (1, 4),
    ),
    "matmul-like-sdpa": (
        lambda: _Fn(
            lambda h: F.scaled_dot_product_attention(
                h.view(-1, 1, 2, 2), h.view(-1, 1, 2, 2), h.view(-1, 1, 2, 2)
            ).flatten(1)
        ),
        (1, 4),
    ),
    "recurrent-gru": (lambda: _RNN(nn.GRU(3, 4, batch_first=True)), (1, 5, 3)),
    "recurrent-lstm": (lambda: _RNN(nn.LSTM(3, 4, batch_first=True)), (1, 5, 3)),
    "upsample-nearest": (
        lambda: _Cat(nn.Sequential(nn.Conv2d(1, 2, 1), nn.Upsample(scale_factor=2)), 2 * 16),
        (1, 1, 2, 2),
    ),
}


class _RNN(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn, self.fc = rnn, nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("case", sorted(CATEGORY_CASES))
def test_category_saved_bytes_equal_eager_autograd(case, batch):
    # Prepare
    torch.manual_seed(0)
    factory, shape = CATEGORY_CASES[case]
    model, x = factory(), _input(shape)
    # Execute
    graph = capture(model, x, batch_size=batch, cache=False)
    xb = x.expand(batch, *x.shape[1:]).contiguous()
    y = torch.arange(batch) % 3
    measured, _ = saved_activation_bytes(model, lambda: F.cross_entropy(model(xb), y))
    # Assert: exact, byte for byte, against an independent eager run
    assert graph.activation_bytes == measured


@pytest.mark.parametrize("loss", ["mse", "l1", "smooth-l1", "bce", "callable"])
def test_losses_are_captured_with_their_saved_tensors(loss):
    # Prepare
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5)), torch.randn(1, 4)
    fn = (lambda o, t: ((o - t) ** 2).sum()) if loss == "callable" else loss
    # Execute
    graph = capture(model, x, batch_size=2, loss=fn, cache=False)
    loss_fn = loss_function(fn)
    target = (torch.arange(10) % 2).float().reshape(2, 5)
    xb = x.expand(2, 4).contiguous()
    measured, _ = saved_activation_bytes(model, lambda: loss_fn(model(xb), target))
    # Assert: the loss is in the graph (its own node, the step's output) and costed exactly
    last = graph.nodes[-1]
    assert graph.tensor(graph.loss).role is TensorRole.LOSS and last.output == graph.loss
    assert last.op is not OpKind.CROSS_ENTROPY
    assert graph.activation_bytes == measured
    assert graph.tensor(graph.target).shape == (2, 5)


def test_unknown_loss_and_cross_entropy_on_non_class_output_are_refused():
    with pytest.raises(InvalidArgumentError, match="unknown loss"):
        capture(nn.Linear(2, 2), torch.randn(1, 2), loss="hinge")
    with pytest.raises(UnsupportedOpError, match="loss='mse'"):
        capture(nn.Conv2d(1, 1, 1), torch.randn(1, 1, 2, 2), cache=False)


def test_unsupported_model_gets_one_error_listing_every_op_with_module_and_line():
    class TwoMissing(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(4, 4)

        def forward(self, x):
            h = torch.cumsum(self.l(x), dim=1)
            return torch.cumprod(h, dim=1)

    with pytest.raises(UnsupportedOpError) as e:
        capture(TwoMissing(), torch.randn(1, 4), cache=False)
    msg = str(e.value)
    assert "cumsum" in msg and "cumprod" in msg
    assert "test_capture.py:" in msg and "torch.cumprod(h, dim=1)" in msg
    assert "module 'l'" not in msg and "node 'cumsum'" in msg and "Supported" in msg
