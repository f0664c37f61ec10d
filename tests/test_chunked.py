"""Frozen per-sample segments run a few samples at a time (NOTE [ Sample-chunked frozen
segments ] in cost/_chunk.py): the same parameters as plain PyTorch, the allocator's peak as
predicted, and less of it than the whole batch at once."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgetrain.errors import InvalidArgumentError, PlanFileError
from edgetrain.planner import Plan, StepRequest
from edgetrain.runtime import PYTORCH_RUNNER, Trainer
from tests.test_lean import _BN, _plan, _trained_and_oracle


class _Residual(nn.Module):
    """x + project(relu(bn(expand(x)))), the relu called in the module's own forward (its
    site, `res#0`, counts per chunk: NOTE [ Sample-chunked frozen segments ])."""

    def __init__(self, c: int, mid: int) -> None:
        super().__init__()
        self.expand, self.bn = nn.Conv2d(c, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.project = nn.Sequential(nn.Conv2d(mid, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(F.relu(self.bn(self.expand(x))))


class _Wide(nn.Module):
    """A stem, an inverted-residual block whose expanded tensor is 768 KiB a sample, a
    residual block (an add inside the segment), a pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(
            nn.Conv2d(8, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU6(),
            nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48),
            nn.ReLU6(), nn.Conv2d(48, 8, 1, bias=False), nn.BatchNorm2d(8),
        )  # fmt: skip
        self.res = _Residual(8, 48)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.res(self.block(self.stem(x))).mean((2, 3)))


class _Wide1d(nn.Module):
    """A 1-D sensor CNN: an inverted-residual Conv1d block 1 MiB a sample when expanded."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv1d(3, 8, 5, padding=2)
        self.block = nn.Sequential(
            nn.Conv1d(8, 64, 1, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
            nn.Conv1d(64, 64, 5, padding=2, groups=64, bias=False), nn.BatchNorm1d(64),
            nn.LeakyReLU(0.1), nn.Conv1d(64, 8, 1, bias=False), nn.BatchNorm1d(8),
        )  # fmt: skip
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).amax(2))


def _wide(kind: str = "2d"):
    torch.manual_seed(0)
    m = _Wide() if kind == "2d" else _Wide1d()
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, _BN):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.bias.uniform_(-0.2, 0.2)
    return m, torch.randn(1, 3, 64, 64) if kind == "2d" else torch.randn(1, 3, 4096)


def _measured(model, plan, xb, yb) -> int:
    return PYTORCH_RUNNER.measured_peak_bytes(StepRequest(copy.deepcopy(model), plan, xb, yb))


@pytest.mark.parametrize("kind", ["2d", "1d"])
def test_chunked_segments_train_as_plain_pytorch_in_the_predicted_peak(kind):
    # Prepare: bias-only (BN biases, the stem's bias, the head), batch 4, frozen BN
    model, x = _wide(kind)
    plan = _plan(model, x, "bias-only", 4, name=f"wide{kind}")
    whole = Plan.from_dict({**plan.to_dict(), "chunked_modules": []})
    g = torch.Generator().manual_seed(1)
    xb = torch.randn(4, *x.shape[1:], generator=g)
    yb = torch.randint(0, 5, (4,), generator=g)
    # Execute
    ours, oracle = _trained_and_oracle(model, plan, xb, yb, steps=2)
    measured, measured_whole = _measured(model, plan, xb, yb), _measured(model, whole, xb, yb)
    # Assert: the wide block runs one sample at a time (768 KiB, 1 MiB a sample); parameters equal
    # plain PyTorch's up to the order of the per-chunk bias sums; the prediction is the
    # allocator's peak; and the peak is lower than the whole batch's at once
    assert plan.lean_backward and ("block", 1) in plan.chunked_modules
    for (n, a), b in zip(ours.named_parameters(), oracle.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    assert any(not torch.equal(a, b) for a, b in zip(ours.parameters(), model.parameters()))
    assert plan.predicted_peak_bytes == pytest.approx(measured, rel=0.01)
    assert measured < measured_whole - 1_000_000


def test_a_segment_with_an_add_trains_as_plain_pytorch(monkeypatch):
    # Prepare: the residual block alone chunked (its input is read by its first conv and
    # by the add), two chunks of two samples; count the in-place activations that run
    import edgetrain.runtime._lean as lean_mod

    model, x = _wide()
    planned = _plan(model, x, "bias-only", 4, name="wide")
    plan = Plan.from_dict({**planned.to_dict(), "chunked_modules": [["res", 2]]})
    whole = Plan.from_dict({**planned.to_dict(), "chunked_modules": []})
    g = torch.Generator().manual_seed(2)
    xb, yb = torch.randn(4, 3, 64, 64, generator=g), torch.randint(0, 10, (4,), generator=g)
    cls = lean_mod._MaskedActivationInPlace
    calls: list[int] = []
    real = cls.forward
    monkeypatch.setattr(cls, "forward", staticmethod(lambda *a: calls.append(1) or real(*a)))
    # Execute
    ours, oracle = _trained_and_oracle(model, plan, xb, yb, steps=2)
    n_chunked = len(calls)
    calls.clear()
    _trained_and_oracle(model, whole, xb, yb, steps=2)
    # Assert: parameters as plain PyTorch's; the relu inside `res` (site `res#0`) runs in
    # place in each chunk, as the cost model counts it, not only in the first
    for (n, a), b in zip(ours.named_parameters(), oracle.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    assert "res#0" in plan.in_place_activations
    assert n_chunked == len(calls) + 2  # one more call per step: two chunks instead of one


def test_a_chunk_that_does_not_divide_the_micro_batch_is_refused():
    model, x = _wide()
    d = _plan(model, x, "bias-only", 4, name="wide").to_dict()
    for bad in ([["block", 3]], [["block", 0]], [["block"]], [[1, 1]], "block"):
        with pytest.raises(PlanFileError, match="chunked_modules|chunk"):
            Plan.from_dict({**d, "chunked_modules": bad})
    with pytest.raises(PlanFileError, match="lean backward"):
        Plan.from_dict({**d, "lean_backward": False, "chunked_modules": [["block", 1]]})
    with pytest.raises(PlanFileError, match="in-place update"):
        Plan.from_dict({**d, "in_place_update": True, "chunked_modules": [["block", 1]]})


def test_a_chunked_module_the_model_lacks_is_a_typed_error():
    model, x = _wide()
    d = _plan(model, x, "bias-only", 4, name="wide").to_dict()
    plan = Plan.from_dict({**d, "chunked_modules": [["nowhere", 1]]})
    with pytest.raises(InvalidArgumentError, match="nowhere"):
        with Trainer(copy.deepcopy(model), plan):
            pass


def test_the_trainer_restores_the_chunked_forward_on_exit():
    model, x = _wide()
    plan = _plan(model, x, "bias-only", 4, name="wide")
    m = copy.deepcopy(model)
    with Trainer(m, plan) as t:
        assert "forward" in vars(m.block)
        t.step(torch.randn(4, 3, 64, 64), torch.zeros(4, dtype=torch.long))
        with torch.no_grad():  # outside a step the module runs whole
            m(torch.randn(3, 3, 64, 64))
    assert "forward" not in vars(m.block)
