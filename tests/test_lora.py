"""LoRA adapters as a trainable-set kind (NOTE [ LoRA adapters ]): plain PyTorch LoRA as the
oracle for the gradients, the allocator for the peak, merging for what leaves the Trainer."""

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import edgetrain
from edgetrain.errors import InvalidArgumentError
from edgetrain.models import LoraSpec, add_lora, merge_lora, parse_lora
from edgetrain.planner import StepRequest
from edgetrain.runtime import PYTORCH_RUNNER, Trainer
from edgetrain.validate import policy as check_policy


class _Attn(nn.Module):
    """A small self-attention classifier with query/key/value projections and a 1x1 conv."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, d, 1)
        self.query, self.key, self.value = (nn.Linear(d, d) for _ in range(3))
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x).flatten(2).transpose(1, 2)  # (B, T, d)
        q, k, v = self.query(h), self.key(h), self.value(h)
        a = torch.softmax(q @ k.transpose(1, 2) / 4.0, -1) @ v
        return self.head(F.relu(a).mean(1))


def _model():
    torch.manual_seed(0)
    return _Attn(), torch.randn(1, 3, 4, 4)


def _plain_lora_forward(base: _Attn, ab: dict, x):
    """Independent LoRA: y = x W^T + b + (x A^T) B^T, written out by hand."""

    def lin(m, name, h):
        a, b = ab[name]
        return h @ m.weight.T + m.bias + (h @ a.T) @ b.T

    h = base.proj(x).flatten(2).transpose(1, 2)
    q, k, v = lin(base.query, "query", h), lin(base.key, "key", h), lin(base.value, "value", h)
    a = torch.softmax(q @ k.transpose(1, 2) / 4.0, -1) @ v
    return base.head(F.relu(a).mean(1))


def test_adapter_gradients_equal_a_plain_pytorch_lora():
    # Prepare: ours (hooks), and the hand-written LoRA on the same A, B (B non-zero)
    model, x = _model()
    ours = copy.deepcopy(model)
    add_lora(ours, LoraSpec(4, ("query", "key", "value")))
    with torch.no_grad():
        for n in ("query", "key", "value"):
            getattr(ours, n).lora_b.normal_()
    ab = {
        n: (
            getattr(ours, n).lora_a.detach().clone().requires_grad_(),
            getattr(ours, n).lora_b.detach().clone().requires_grad_(),
        )
        for n in ("query", "key", "value")
    }
    xb, yb = torch.randn(8, 3, 4, 4), torch.randint(0, 10, (8,))
    # Execute
    F.cross_entropy(ours(xb), yb).backward()
    F.cross_entropy(_plain_lora_forward(model, ab, xb), yb).backward()
    # Assert
    for n, (a, b) in ab.items():
        assert torch.allclose(getattr(ours, n).lora_a.grad, a.grad, rtol=1e-5, atol=1e-7), n
        assert torch.allclose(getattr(ours, n).lora_b.grad, b.grad, rtol=1e-5, atol=1e-7), n


def test_lora_plan_trains_adapters_and_head_then_merges():
    # Prepare
    model, x = _model()
    plan = edgetrain.plan(
        model, x, device="rpi4", batch_size=8, policy="lora:4:query,key,value", name="attn"
    )
    xb, yb = torch.randn(8, 3, 4, 4), torch.randint(0, 10, (8,))
    before = copy.deepcopy(model)
    # Execute
    with Trainer(model, plan, lr=0.5) as t:
        for _ in range(3):
            t.step(xb, yb)
        adapted = copy.deepcopy(model)  # with its adapters, inside the Trainer
    # Assert: the plan names the adapters; the model leaves as a plain model whose merged
    # weights compute what the adapted one did
    assert plan.lora_rank == 4 and plan.lora_modules == ("query", "key", "value")
    trained = {p.name for p in plan.params if p.decision.value == "trainable"}
    assert trained == {f"{m}.lora_{k}" for m in ("query", "key", "value") for k in "ab"} | {
        "head.weight",
        "head.bias",
    }
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert not model.query._forward_hooks
    assert torch.equal(model.proj.weight, before.proj.weight)
    assert not torch.equal(model.query.weight, before.query.weight)  # B @ A merged in
    with torch.no_grad():
        want, got = adapted(xb), model(xb)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def _chain():
    """No Python locals outlive their use (the lifetime simulation's one known gap)."""
    torch.manual_seed(0)
    d = 32
    body = [nn.Conv2d(3, d, 1), nn.ReLU(), nn.Flatten(2), nn.Unflatten(2, (16,)), nn.Flatten(1)]
    mlp = [nn.Linear(16 * d, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)]
    return nn.Sequential(*body, *mlp), torch.randn(1, 3, 4, 4)


def test_lora_plan_predicts_the_allocator_and_beats_full_training():
    # Prepare
    model, x = _chain()
    xb, yb = x.expand(8, 3, 4, 4).contiguous(), torch.zeros(8, dtype=torch.long)
    plans = {
        pol: edgetrain.plan(
            model, x, device="rpi4", batch_size=8, policy=pol, measure=False, name="attn"
        )
        for pol in ("lora:2", "all")
    }
    # Execute
    measured = {
        pol: PYTORCH_RUNNER.measured_peak_bytes(StepRequest(copy.deepcopy(model), p, xb, yb))
        for pol, p in plans.items()
    }
    # Assert
    assert plans["lora:2"].predicted_peak_bytes == pytest.approx(measured["lora:2"], rel=0.05)
    assert plans["lora:2"].lora_modules == ("0", "5", "7")  # 1x1 conv, linears; not the head
    assert measured["lora:2"] < measured["all"]


def test_merge_folds_a_1x1_conv_adapter():
    conv = nn.Sequential(nn.Conv2d(4, 6, 1, stride=2))
    add_lora(conv, LoraSpec(2))
    with torch.no_grad():
        conv[0].lora_b.normal_()
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        want = conv(x)
        assert merge_lora(conv) == 1
        got = conv(x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_lora_policy_errors_name_the_form():
    model, x = _model()
    with pytest.raises(InvalidArgumentError, match="adapts no module"):
        edgetrain.plan(model, x, device="rpi4", policy="lora:4:nothere")
    with pytest.raises(InvalidArgumentError, match="lora:R"):
        check_policy("lora:0")
    with pytest.raises(InvalidArgumentError, match="PyTorch executor"):
        edgetrain.plan(model, x, device="rpi4", policy="lora:4", executor="c")


@given(st.text(max_size=20))
def test_lora_policy_parser_takes_only_its_form(text):
    value = "lora:" + text
    try:
        checked = check_policy(value)
    except InvalidArgumentError:
        return
    spec = parse_lora(checked)  # whatever the CLI accepts, the planner parses
    assert 1 <= spec.rank <= 4096
    assert all(m and " " not in m for m in spec.modules)


def test_lora_plan_under_last_k_peak_combines_micro_batching_and_stays_exact():
    # Prepare: last:2's measured peak as the budget of a LoRA plan (adapters in every layer,
    # so its backward crosses the whole network, which last:2's never enters)
    model, x = _chain()
    g = torch.Generator().manual_seed(3)
    xb, yb = torch.randn(8, 3, 4, 4, generator=g), torch.randint(0, 10, (8,), generator=g)

    def plan(policy, budget=1 << 33):
        return edgetrain.plan(
            model, x, device="rpi4", batch_size=8, policy=policy, budget_bytes=budget,
            measure=False, name="chain",
        )  # fmt: skip

    def measure(p):
        return PYTORCH_RUNNER.measured_peak_bytes(StepRequest(copy.deepcopy(model), p, xb, yb))

    last_k = measure(plan("last:2"))
    whole, fitted = plan("lora:2"), plan("lora:2", last_k - 1)
    # Execute: both LoRA plans train the same adapters from the same initial values
    trained = {}
    for key, p in (("whole", whole), ("fitted", fitted)):
        m = copy.deepcopy(model)
        torch.manual_seed(5)  # the adapters' initial A
        with Trainer(m, p, lr=0.5) as t:
            for _ in range(2):
                t.step(xb, yb)
        trained[key] = m
    peak = measure(fitted)
    # Assert: whole-batch LoRA needs more than last:2; the planner fits it under last:2 by
    # micro-batching (the same batch-8 gradient), predicts the allocator, and trains the same
    # merged weights up to summation order
    assert measure(whole) > last_k
    assert fitted.accumulation_steps > 1 and fitted.lora_rank == 2
    assert peak < last_k
    assert fitted.predicted_peak_bytes == pytest.approx(peak, rel=0.05)
    moved = 0
    for (n, a), b, c in zip(
        trained["whole"].named_parameters(), trained["fitted"].parameters(), model.parameters()
    ):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), n
        moved += not torch.allclose(a, c, rtol=1e-4, atol=1e-6)
    assert moved == 5  # the three adapted layers' merged weights, the head's weight and bias
