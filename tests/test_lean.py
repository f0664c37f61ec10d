"""Lean backward (NOTE [ Lean backward ], NOTE [ Lean saved tensors ]): the same parameters as
plain PyTorch, autograd's own saved tensors, and predictions against the allocator."""

import contextlib
import copy
import json
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import edgetrain
from edgetrain.models import build_model
from edgetrain.planner import ParamDecision, Plan, StepRequest
from edgetrain.runtime import PYTORCH_RUNNER, Trainer
from edgetrain.runtime._lean import LeanBackward

_BN = nn.modules.batchnorm._BatchNorm


class _Mixed(nn.Module):
    """Every lean rule: conv1d and conv2d (with and without bias), eval BN, relu as a module,
    a function and a method, relu6, hardtanh, leaky relu, a trainable linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.c3 = nn.Conv1d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn1(self.c1(x)))
        h = F.relu6(self.bn2(self.c2(h)))
        h = F.hardtanh(h, -0.5, 2.0).flatten(2)
        h = F.leaky_relu(self.c3(h), 0.1).relu()
        return self.head(F.relu(h.mean(2)))


def _mixed():
    torch.manual_seed(0)
    m = _Mixed()
    with torch.no_grad():  # non-trivial running statistics
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return m, torch.randn(1, 3, 16, 16)


def _plain_sgd(model, plan, x, y, steps, lr):
    """The oracle: plain PyTorch SGD on the plan's trainable set, BN frozen as the plan says."""
    m = copy.deepcopy(model)
    m.train()
    if plan.freeze_batch_norm:
        for mod in m.modules():
            if isinstance(mod, _BN):
                mod.eval()
    trainable = {p.name for p in plan.params if p.decision is ParamDecision.TRAINABLE}
    params = []
    for n, p in m.named_parameters():
        p.requires_grad_(n in trainable)
        if n in trainable:
            params.append(p)
    opt = torch.optim.SGD(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        opt.step()
    return m


def _trained_and_oracle(model, plan, xb, yb, steps: int):
    """A copy of `model` after `steps` Trainer steps of `plan` (lr 0.1), and the plain
    PyTorch SGD oracle's copy after the same steps."""
    ours = copy.deepcopy(model)
    with Trainer(ours, plan, lr=0.1) as t:
        for _ in range(steps):
            t.step(xb, yb)
    return ours, _plain_sgd(model, plan, xb, yb, steps, 0.1)


def _plan(model, x, policy, batch, device="rpi4", **kw):
    return edgetrain.plan(
        model,
        x,
        device=device,
        batch_size=batch,
        budget_bytes=1 << 33,
        strategy="keep-all",
        policy=policy,
        freeze_batch_norm=True,
        measure=False,
        **kw,
    )


CASES = [
    ("mixed", "bias-only"),
    ("mixed", "last:2"),
    ("mcu-cnn", "bias-only"),
    ("har-cnn1d", "bias-only"),  # dropout: the same random stream, a bit mask saved
]


@pytest.mark.parametrize("name,policy", CASES)
def test_lean_steps_give_plain_pytorch_parameters(name, policy):
    # Prepare
    model, x = _mixed() if name == "mixed" else build_model(name, pretrained=False)
    plan = _plan(model, x, policy, 4, name=name)
    g = torch.Generator().manual_seed(1)
    xb = torch.randn(4, *x.shape[1:], generator=g)
    yb = torch.randint(0, 6, (4,), generator=g)  # every model here has >= 6 classes
    ours = copy.deepcopy(model)
    # Execute (the same seed before each run: dropout draws the same masks)
    torch.manual_seed(2)
    with Trainer(ours, plan, lr=0.1) as t:
        for _ in range(3):
            t.step(xb, yb)
    torch.manual_seed(2)
    oracle = _plain_sgd(model, plan, xb, yb, 3, 0.1)
    # Assert: the plan ran lean, and every parameter is plain PyTorch's, bit for bit
    assert plan.lean_backward
    moved = 0
    for (n, a), b in zip(ours.named_parameters(), oracle.parameters()):
        assert torch.equal(a, b), n
        moved += not torch.equal(a, dict(model.named_parameters())[n])
    assert moved == sum(p.decision is ParamDecision.TRAINABLE for p in plan.params)


def test_frozen_layers_save_only_bit_masks():
    # Prepare: every weight frozen, the biases train (TinyTL-B); autograd's pack hook is the oracle
    model, x = _mixed()
    model.train()
    for m in model.modules():
        if isinstance(m, _BN):
            m.eval()
    for n, p in model.named_parameters():
        p.requires_grad_(n.endswith("bias"))
    state = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    xb = torch.randn(4, *x.shape[1:])
    saved: dict[str, list[torch.Tensor]] = {"plain": [], "lean": []}

    def run(kind, ctx):
        def pack(t):
            if t.untyped_storage().data_ptr() not in state:
                saved[kind].append(t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
            F.cross_entropy(model(xb), torch.zeros(4, dtype=torch.long)).backward()

    # Execute
    run("plain", contextlib.nullcontext())
    run("lean", LeanBackward(model))
    # Assert: plain saves float activations; lean saves packed uint8 masks (1 bit per element)
    # and the head's input and the loss's own tensors
    assert sum(t.dtype == torch.float32 and t.dim() == 4 for t in saved["plain"]) >= 4
    lean_fp = [t for t in saved["lean"] if t.is_floating_point() and t.numel() > 100]
    assert not lean_fp, [tuple(t.shape) for t in lean_fp]
    masks = [t for t in saved["lean"] if t.dtype == torch.uint8]
    # relu (4x8x8x8), relu6 and hardtanh (4x8x8x8), leaky + .relu() (4x16x64), relu (4x16)
    expected = [4 * 8 * 8 * 8 // 8] * 3 + [4 * 16 * 64 // 8] * 2 + [4 * 16 // 8]
    assert sorted(t.numel() for t in masks) == sorted(expected)


def test_dropout_saves_a_bit_mask_and_draws_plain_pytorchs_masks():
    # Prepare: a trainable layer before dropout; autograd's pack hook is the oracle
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.Dropout(0.3), nn.Linear(64, 4))
    x = torch.randn(8, 16)
    params = {t.untyped_storage().data_ptr() for t in model.parameters()}
    runs = {}

    def run(ctx):
        saved = []

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                saved.append(t)
            return t

        model.zero_grad()
        torch.manual_seed(1)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
            out = model(x)
            (out * torch.arange(4.0)).sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()], saved

    # Execute
    runs["plain"] = run(contextlib.nullcontext())
    runs["lean"] = run(LeanBackward(model))
    # Assert: the same output and gradients bit for bit; of the 8 x 64 float32 tensors plain
    # saves the noise and the head's input, lean only the head's input, plus a packed mask of
    # 8 * 64 / 8 bytes
    (po, pg, ps), (lo, lg, ls) = runs["plain"], runs["lean"]
    assert torch.equal(po, lo)
    assert all(torch.equal(a, b) for a, b in zip(pg, lg))

    def wide(saved):
        return sum(t.dtype == torch.float32 and t.numel() == 8 * 64 for t in saved)

    assert (wide(ps), wide(ls)) == (2, 1)
    assert sorted(t.numel() for t in ls if t.dtype == torch.uint8) == [8 * 64 // 8]


POOLS = [
    (nn.MaxPool2d(2), (2, 3, 11, 13)),
    (nn.MaxPool2d(3, stride=2, padding=1), (3, 9, 10)),
    (nn.MaxPool2d((2, 3), stride=(1, 2), dilation=(2, 1)), (2, 3, 11, 13)),
    (nn.MaxPool2d(5, stride=3, padding=2, dilation=2, ceil_mode=True), (2, 3, 11, 13)),
    (nn.MaxPool1d(2), (2, 3, 50)),
    (nn.MaxPool1d(4, stride=1, padding=2, dilation=2, ceil_mode=True), (4, 17)),
]


@pytest.mark.parametrize("pool,shape", POOLS, ids=[repr(p) for p, _ in POOLS])
def test_max_pool_saves_window_offsets_and_keeps_atens_gradients(pool, shape):
    # Prepare: autograd's pack hook is the oracle for what is saved
    torch.manual_seed(0)
    x = torch.randn(*shape)
    g = torch.randn_like(pool(x))
    runs = {}

    def run(ctx):
        xi = x.clone().requires_grad_()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            with ctx:
                out = pool(xi)
        out.backward(g)
        return out.detach(), xi.grad, saved

    # Execute
    runs["plain"] = run(contextlib.nullcontext())
    runs["lean"] = run(LeanBackward(pool))
    # Assert: ATen's output and input gradient bit for bit; plain saves the input and int64
    # indices, lean one byte per output (its offset inside the window)
    (po, pg, ps), (lo, lg, ls) = runs["plain"], runs["lean"]
    assert torch.equal(po, lo) and torch.equal(pg, lg) and lg.is_contiguous()
    assert {t.dtype for t in ps} == {torch.float32, torch.int64}
    assert [(t.dtype, t.numel()) for t in ls] == [(torch.uint8, po.numel())]


@pytest.mark.parametrize(
    "name,policy,batch,device",
    [
        ("har-cnn1d", "bias-only", 32, "rpi4"),  # max-pool offsets, dropout bits
        ("mcu-cnn", "bias-only", 8, "nrf52840"),
        ("kws-dscnn", "bias-only", 8, "rpi4"),
        ("mbv2-block", "bias-only", 8, "rpi4"),
        ("mcu-cnn", "last:2", 4, "rpi4"),
        ("mixed", "bias-only", 8, "rpi4"),
        ("tcn-1d", "bias-only", 8, "rpi4"),  # relu over a non-contiguous slice runs plain
    ],
)
def test_lean_plans_predict_the_allocator(name, policy, batch, device):
    # Prepare
    model, x = _mixed() if name == "mixed" else build_model(name, pretrained=False)
    lean = _plan(model, x, policy, batch, device, name=name)
    plain = Plan.from_dict(
        {**lean.to_dict(), "lean_backward": False, "plain_activations": [], "chunked_modules": []}
    )
    xb = x.expand(batch, *x.shape[1:]).contiguous()
    yb = torch.zeros(batch, dtype=torch.long)
    # Execute
    measured = {
        p.lean_backward: PYTORCH_RUNNER.measured_peak_bytes(
            StepRequest(copy.deepcopy(model), p, xb, yb)
        )
        for p in (lean, plain)
    }
    # Assert: the prediction is the allocator's peak, and lean is never above plain PyTorch
    assert lean.predicted_peak_bytes == pytest.approx(measured[True], rel=0.02)
    assert measured[True] <= measured[False]


@pytest.mark.parametrize("name,policy", [("kws-dscnn", "last:2"), ("mbv2-block", "last:3")])
def test_a_plan_where_lean_saves_nothing_runs_plain_pytorch(name, policy):
    # Prepare: last:K whose frozen prefix is off the gradient path and whose trained suffix
    # saves what its activations would (mbv2-block), or where the peak is the forward pass,
    # which lean's mask transients only raise (kws-dscnn: its pool's input would be a mask)
    model, x = build_model(name, pretrained=False)
    plan = _plan(model, x, policy, 8, name=name)
    lean = Plan.from_dict({**plan.to_dict(), "lean_backward": True, "plain_activations": []})
    xb = x.expand(8, *x.shape[1:]).contiguous()
    yb = torch.zeros(8, dtype=torch.long)
    # Execute: the allocator's peak of the plan as planned, and forced to run lean
    measured = [
        PYTORCH_RUNNER.measured_peak_bytes(StepRequest(copy.deepcopy(model), p, xb, yb))
        for p in (plan, lean)
    ]
    # Assert: the planner chose plain PyTorch, predicted it, and lean would save nothing
    assert not plan.lean_backward
    assert plan.predicted_peak_bytes == pytest.approx(measured[0], rel=0.02)
    assert measured[0] <= measured[1]


def test_trainer_leaves_no_mode_or_hook_behind():
    # Prepare
    model, x = _mixed()
    plan = _plan(model, x, "bias-only", 2, name="mixed")
    pre = dict(torch.nn.modules.module._global_forward_pre_hooks)
    post = dict(torch.nn.modules.module._global_forward_hooks)
    during: list = []
    h = model.head.register_forward_hook(
        lambda *a: during.extend(torch.overrides._get_current_function_mode_stack())
    )
    # Execute
    with Trainer(model, plan) as t:
        t.step(torch.randn(2, 3, 16, 16), torch.zeros(2, dtype=torch.long))
        between = torch.overrides._get_current_function_mode_stack()
    h.remove()
    # Assert: the mode is active during a step only; global hooks are removed
    assert [type(m) for m in during] == [LeanBackward]
    assert between == []
    assert torch.overrides._get_current_function_mode_stack() == []
    assert dict(torch.nn.modules.module._global_forward_pre_hooks) == pre
    assert dict(torch.nn.modules.module._global_forward_hooks) == post


def test_plans_without_lean_fields_load_as_plain_pytorch():
    # Prepare
    model, x = _mixed()
    plan = _plan(model, x, "bias-only", 2, name="mixed")
    d = json.loads(plan.to_json())
    # Execute
    old = {k: v for k, v in d.items() if k not in ("lean_backward", "plain_activations")}
    loaded = Plan.from_dict(old)
    again = Plan.from_json(plan.to_json())
    # Assert
    assert plan.lean_backward and not loaded.lean_backward
    assert loaded.plain_activations == ()
    assert again == plan
    with pytest.raises(edgetrain.errors.PlanFileError, match="lean_backward"):
        Plan.from_dict({**d, "lean_backward": "yes"})


def _simulated_peak(plan: Plan) -> int:
    """The lifetime simulation's peak (the host check keeps it in a note when it replaces the
    prediction by the measured peak)."""
    for note in plan.notes:
        m = re.search(r"simulated ([\d,]+) B", note)
        if m:
            return int(m.group(1).replace(",", ""))
    return plan.predicted_peak_bytes


@pytest.mark.slow
def test_tinytl_on_mbv2_measures_its_lean_peak():
    # Prepare: the setting, mbv2-w0.35, batch 8, 3x128x128, PyTorch executor
    from edgetrain.strategies._full import prepare as full_prepare
    from edgetrain.strategies._tinytl import prepare as tinytl_prepare

    torch.manual_seed(0)
    model, x = build_model("mbv2-w0.35", pretrained=False)
    xb, yb = x.expand(8, *x.shape[1:]).contiguous(), torch.zeros(8, dtype=torch.long)
    kw = dict(device="rpi4", batch_size=8, name="mbv2-w0.35")

    def measure(p):
        return PYTORCH_RUNNER.measured_peak_bytes(
            StepRequest(copy.deepcopy(p.model), p.plan, xb, yb)
        )

    # Execute: full and tinytl with the whole batch, then tinytl under TinyTL's published
    # saving (1/6.5 of full's measured peak)
    full = measure(full_prepare(model, x, budget_bytes=1 << 36, **kw))
    whole = tinytl_prepare(model, x, budget_bytes=1 << 36, **kw)
    budget = full * 10 // 65
    under = tinytl_prepare(model, x, budget_bytes=budget, **kw)
    measured = {"whole": measure(whole), "under": measure(under)}
    # Assert: lean, simulated to within 5 %; the whole batch within TinyTL's saving through
    # its chunked frozen blocks (NOTE [ Sample-chunked frozen segments ]), and the plan
    # made under that budget within it too
    for p, m in ((whole, measured["whole"]), (under, measured["under"])):
        assert p.plan.lean_backward and p.plan.freeze_batch_norm
        assert _simulated_peak(p.plan) == pytest.approx(m, rel=0.05)
    assert whole.plan.accumulation_steps == 1 and whole.plan.chunked_modules
    assert measured["whole"] <= budget
    assert measured["under"] <= budget


def test_tinytl_split_into_micro_batches_gives_the_whole_batch_step():
    # Prepare: tinytl on mcu-cnn, batch 8, with the whole batch and under 3/4 of its peak
    from edgetrain.strategies._tinytl import prepare as tinytl_prepare

    torch.manual_seed(0)
    model, x = build_model("mcu-cnn", pretrained=False)
    kw = dict(device="rpi4", batch_size=8, name="mcu-cnn")
    whole = tinytl_prepare(model, x, budget_bytes=1 << 30, **kw)
    under = tinytl_prepare(model, x, budget_bytes=whole.plan.predicted_peak_bytes * 3 // 4, **kw)
    g = torch.Generator().manual_seed(1)
    xb = torch.randn(8, *x.shape[1:], generator=g)
    yb = torch.randint(0, 10, (8,), generator=g)
    # Execute: one step of each from the same weights (each prepare draws its own lite
    # residuals: both run on the first one's model)
    runs = []
    for p in (whole, under):
        m = copy.deepcopy(whole.model)
        with Trainer(m, p.plan, lr=0.1) as t:
            t.step(xb, yb)
        runs.append(dict(m.named_parameters()))
    # Assert: the budget split the batch, and every parameter took the same step up to the
    # order of the summation
    assert whole.plan.accumulation_steps == 1 and under.plan.accumulation_steps > 1
    for name, a in runs[0].items():
        torch.testing.assert_close(runs[1][name], a, rtol=1e-5, atol=1e-6, msg=name)


def test_recomputed_stages_rerun_lean_and_stay_exact():
    # Prepare: sqrt checkpointing of a bias-only plan; checkpoint re-runs stages in backward
    model, x = build_model("mcu-cnn", pretrained=False)
    plan = edgetrain.plan(
        model, x, device="nrf52840", batch_size=8, budget_bytes=1 << 30, strategy="sqrt",
        policy="bias-only", freeze_batch_norm=True, measure=False, name="mcu-cnn",
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    xb, yb = torch.randn(8, *x.shape[1:], generator=g), torch.randint(0, 10, (8,), generator=g)
    # Execute
    ours, oracle = _trained_and_oracle(model, plan, xb, yb, steps=2)
    measured = PYTORCH_RUNNER.measured_peak_bytes(StepRequest(copy.deepcopy(model), plan, xb, yb))
    # Assert
    assert plan.lean_backward and any(s.decision.value == "recompute" for s in plan.stages)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), oracle.parameters()))
    assert plan.predicted_peak_bytes == pytest.approx(measured, rel=0.01)


class _Branches(nn.Module):
    """An add that hands one gradient to two branches: relu, and BN then relu6."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return F.relu(y) + F.relu6(self.bn2(y))


class _Fork(nn.Module):
    """conv -> BN (in place over the conv's result) -> `_Branches`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.branches = _Branches(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branches(self.bn1(self.c1(x)))


class _Shared(nn.Module):
    """A fork (`_Fork`), a view on the gradient path, and a frozen depthwise conv whose
    samples exceed `CHUNK_BYTES` at 64 channels of 64x64."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fork = _Fork(channels)
        c2 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        bn3 = nn.BatchNorm2d(channels)
        self.tail = nn.Sequential(c2, bn3, nn.ReLU(), nn.Flatten(2), nn.ReLU())
        self.head = nn.Linear(channels, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tail(self.fork(x)).mean(2))


def _shared(channels: int, side: int):
    torch.manual_seed(0)
    m = _Shared(channels)
    with torch.no_grad():
        for bn in m.modules():
            if isinstance(bn, _BN):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
    return m, torch.randn(1, 3, side, side)


@pytest.mark.parametrize("channels,side,exact", [(8, 16, True), (64, 64, False)])
def test_in_place_and_chunked_gradients_match_plain_pytorch_and_the_allocator(
    channels, side, exact, monkeypatch
):
    # Prepare: bias-only (BN biases, conv biases, head); the 64x64x64 case has 1 MiB
    # samples, so its frozen convs and batch norms run one sample at a time
    import edgetrain.runtime._lean as lean_mod
    from edgetrain.cost import CHUNK_BYTES

    model, x = _shared(channels, side)
    batch = 2
    plan = _plan(model, x, "bias-only", batch, name="shared")
    g = torch.Generator().manual_seed(1)
    xb = torch.randn(batch, *x.shape[1:], generator=g)
    yb = torch.randint(0, 10, (batch,), generator=g)
    calls: list[bool] = []
    real_owned = lean_mod.owned
    monkeypatch.setattr(lean_mod, "owned", lambda t: calls.append(real_owned(t)) or calls[-1])
    # Execute
    ours, oracle = _trained_and_oracle(model, plan, xb, yb, steps=2)
    plain = Plan.from_dict(
        {**plan.to_dict(), "lean_backward": False, "plain_activations": [], "chunked_modules": []}
    )
    measured = {
        p.lean_backward: PYTORCH_RUNNER.measured_peak_bytes(
            StepRequest(copy.deepcopy(model), p, xb, yb)
        )
        for p in (plan, plain)
    }
    # Assert: some gradients were written in place and the shared one was not (the add hands
    # it to both branches); parameters equal plain PyTorch's (bit for bit unless chunked:
    # then the bias sums run per chunk); the prediction is the allocator's peak
    assert plan.lean_backward and True in calls and False in calls
    # in place in forward: BN over a frozen conv's result, an activation over a BN's result
    # read by nothing else; not relu(y) (bn2 reads y too), not bn2 (over a BN), not the relu
    # after the flatten (over a view)
    assert set(plan.in_place_activations) == {
        "fork.bn1#bn0",
        "fork.branches#1",
        "tail.1#bn0",
        "tail.2#0",
    }
    assert (channels * side * side * 4 >= CHUNK_BYTES) is not exact
    for (n, a), b in zip(ours.named_parameters(), oracle.parameters()):
        if exact:
            assert torch.equal(a, b), n
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    assert plan.predicted_peak_bytes == pytest.approx(measured[True], rel=0.01)
    assert measured[True] < measured[False]


def test_even_kernel_same_padding_runs_lean_as_captured():
    # Prepare: 'same' padding with an even kernel (asymmetric: ATen pads the right side once
    # more before the convolution, as the capture records), frozen, bias-only
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 4, padding="same"), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 32 * 32, 4),
    )  # fmt: skip
    x = torch.randn(1, 3, 32, 32)
    plan = _plan(model, x, "bias-only", 8, name="even-same")
    g = torch.Generator().manual_seed(1)
    xb, yb = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 4, (8,), generator=g)
    # Execute
    ours, oracle = _trained_and_oracle(model, plan, xb, yb, steps=2)
    measured = PYTORCH_RUNNER.measured_peak_bytes(StepRequest(copy.deepcopy(model), plan, xb, yb))
    # Assert: lean, plain PyTorch's parameters bit for bit, and the allocator's peak
    assert plan.lean_backward
    for (n, a), b in zip(ours.named_parameters(), oracle.parameters()):
        assert torch.equal(a, b), n
    assert plan.predicted_peak_bytes == pytest.approx(measured, rel=0.01)


def test_a_channels_last_model_runs_lean_as_predicted():
    # Prepare: a channels_last model and batch, bias-only (its frozen convs run lean; their
    # results, and so the BN and ReLU after them, are contiguous)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    ).to(memory_format=torch.channels_last)  # fmt: skip
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    plan = _plan(model, x, "bias-only", 8, name="channels-last")
    xb = torch.randn(8, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    yb = torch.zeros(8, dtype=torch.long)
    plain = Plan.from_dict({**plan.to_dict(), "lean_backward": False, "chunked_modules": []})
    # Execute
    measured = {
        p.lean_backward: PYTORCH_RUNNER.measured_peak_bytes(
            StepRequest(copy.deepcopy(model), p, xb, yb)
        )
        for p in (plan, plain)
    }
    # Assert: lean really ran (below plain PyTorch) and the simulation predicted it
    assert plan.lean_backward
    assert measured[True] < measured[False]
    assert plan.predicted_peak_bytes == pytest.approx(measured[True], rel=0.01)
