"""The runtime against plain PyTorch (same parameters) and the allocator (measured peak)."""

import contextlib
import copy
import re

import pytest
import torch
import torch.nn.functional as F
from _plan_memory import measure_plan

from edgetrain.capture import capture
from edgetrain.cost import Optimizer, load_device
from edgetrain.errors import InvalidArgumentError
from edgetrain.models import build_model
from edgetrain.planner import ActivationDecision, Plan, Strategy
from edgetrain.planner._problem import Problem
from edgetrain.planner._solvers import PlanInfeasibleError
from edgetrain.prepare import SAFETY_MARGIN, PlanRequest, plan, to_plan, trainable_policy
from edgetrain.prepare._profile import host_kernels
from edgetrain.runtime import NonFiniteLossError, Trainer

K, R, P = ActivationDecision.KEEP, ActivationDecision.RECOMPUTE, ActivationDecision.PAGE
BN = torch.nn.BatchNorm2d


def forced_plan(
    model,
    x,
    name,
    batch,
    micro,
    pattern,
    *,
    in_place=False,
    freeze_bn=False,
    optimizer="sgd",
    policy="all",
):
    """A plan with chosen activation decisions: `pattern` cycles over the wrappable stages;
    `policy` chooses what trains (as `edgetrain plan --policy`)."""
    if freeze_bn:
        model.eval()
        model.train()
        for m in model.modules():
            if isinstance(m, BN):
                m.eval()
    g = capture(model, x, batch_size=micro, name=name)
    model.train()
    trainable = trainable_policy(g, policy)
    prob = Problem(
        g,
        load_device("rpi4"),
        1 << 40,
        optimizer=Optimizer.parse(optimizer),
        trainable=trainable,
        in_place_update=in_place,
        accumulation_steps=batch // micro,
        kernels=host_kernels(g, g.requires_grad_for(trainable)),
    )
    dec, k = [], 0
    for stage, allowed in zip(prob.stages, prob.choices):
        d = pattern[k % len(pattern)] if stage.wrappable else K
        k += stage.wrappable
        dec.append(d if d in allowed else K)
    ev = prob.evaluate(tuple(dec))
    strategy = Strategy.EXACT if policy == "all" else Strategy.AUTO
    request = PlanRequest(device="rpi4", batch_size=batch, strategy=strategy, name=name)
    return to_plan(
        ev, prob, request, budget_bytes=ev.peak_bytes, freeze_batch_norm=freeze_bn, policy=policy
    )


def plain_steps(model, xs, ys, lr, freeze_bn, optimizer="sgd"):
    opt = {
        "sgd": lambda: torch.optim.SGD(model.parameters(), lr=lr),
        "momentum": lambda: torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
    }[optimizer]()
    for xb, yb in zip(xs, ys):
        model.train()
        if freeze_bn:
            for m in model.modules():
                if isinstance(m, BN):
                    m.eval()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(xb), yb).backward()
        opt.step()


def batches(x, batch, steps, classes=10):
    g = torch.Generator().manual_seed(1)
    xs = [
        torch.randn(batch, *x.shape[1:], generator=g)
        if x.dtype.is_floating_point
        else torch.randint(0, 1000, (batch, *x.shape[1:]), generator=g)
        for _ in range(steps)
    ]
    ys = [torch.randint(0, classes, (batch,), generator=g) for _ in range(steps)]
    return xs, ys


EXACT_CASES = [
    # model, batch, micro, pattern, in_place, freeze_bn
    ("transformer-tiny", 4, 4, [R], False, False),
    ("transformer-tiny", 4, 2, [P, R, K], False, False),
    ("transformer-tiny", 4, 4, [P], True, False),
    ("mcu-cnn", 4, 4, [R, P], True, False),
    ("mcu-cnn", 4, 1, [P, R], False, True),
    ("mbv2-w0.35", 2, 1, [R, K, P], False, True),
    # the other reference models (slow: EDGETRAIN_SLOW=1 / make test-all)
    pytest.param("mcunet", 2, 1, [R, P, K], False, True, marks=pytest.mark.slow),
    pytest.param("resnet18-cifar", 2, 1, [R, P, K], False, True, marks=pytest.mark.slow),
    pytest.param("resnet18", 2, 2, [P, R], True, False, marks=pytest.mark.slow),
    pytest.param("minilm", 2, 1, [R, P], False, False, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,batch,micro,pattern,in_place,freeze_bn", EXACT_CASES)
def test_exact_plans_give_plain_pytorch_parameters(
    name, batch, micro, pattern, in_place, freeze_bn
):
    # Prepare
    torch.manual_seed(0)
    model, x = build_model(name, pretrained=False, num_classes=10)
    ref = copy.deepcopy(model)
    p = forced_plan(model, x, name, batch, micro, pattern, in_place=in_place, freeze_bn=freeze_bn)
    assert any(s.decision is not K for s in p.stages)
    xs, ys = batches(x, batch, 3)
    # Execute
    with Trainer(model, p, lr=0.05) as t:
        for xb, yb in zip(xs, ys):
            t.step(xb, yb)
    plain_steps(ref, xs, ys, 0.05, freeze_bn)
    # Assert
    for (n, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, msg=n)
    for (n, a), b in zip(model.named_buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, msg=n)


def test_trainer_restores_the_model_on_exit():
    torch.manual_seed(0)
    model, x = build_model("mcu-cnn", pretrained=False)
    p = forced_plan(model, x, "mcu-cnn", 2, 2, [R, P])
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    forwards = {n: m.forward for n, m in model.named_modules()}
    with Trainer(model, p, lr=0.01) as t:
        t.step(*[b[0] for b in batches(x, 2, 1)])
        assert frozen.requires_grad  # the plan trains it
    assert not frozen.requires_grad
    assert all("forward" not in vars(m) for m in model.modules())
    assert {n: m.forward.__func__ for n, m in model.named_modules()} == {
        n: f.__func__ for n, f in forwards.items()
    }


def _measure_plan(model, p, xs, ys):
    return measure_plan(model, p, xs, ys)


MODELS = (
    "mcu-cnn",
    "mbv2-w0.35",
    "mcunet",
    "resnet18",
    "resnet18-cifar",
    "transformer-tiny",
    "minilm",
)
# The default run keeps the small cases (about 30 s on 2 cores); the rest is `slow`
# (EDGETRAIN_SLOW=1, `make test-all`): the large models take 5 s to 2 min per case, mostly
# planning over every micro-batch size.
FAST = {
    ("mcu-cnn", 1),
    ("mcu-cnn", 8),
    ("transformer-tiny", 1),
    ("transformer-tiny", 8),
    ("mbv2-w0.35", 1),
    ("mcunet", 1),
}
MEMORY_CASES = [(m, b, f) for m in MODELS for b in (1, 8) for f in (1.0, 0.5, 0.25)]


@pytest.mark.parametrize(
    "name,batch,frac",
    [c if (c[0], c[1]) in FAST else pytest.param(*c, marks=pytest.mark.slow) for c in MEMORY_CASES],
)
def test_measured_peak_within_budget_and_prediction(name, batch, frac):
    """Acceptance: every reference model x budgets of 100 / 50 / 25 % of the keep-all
    activation memory x batch 1 and 8: measured peak <= budget and <= 1.10 x predicted, or a
    PlanInfeasibleError that states a smallest achievable peak above the budget."""
    # Prepare: budget = keep-all peak minus (1 - frac) of the keep-all activation bytes
    from edgetrain.prepare._profile import profile

    torch.manual_seed(0)
    model, x = build_model(name, pretrained=False, num_classes=10)
    prof = profile(model, x, device="rpi4", batch_size=batch, name=name)
    budget = prof.cost.peak_bytes - int((1 - frac) * prof.cost.activation_bytes)
    try:
        p = plan(
            model,
            x,
            device="rpi4",
            budget_bytes=budget,
            batch_size=batch,
            strategy="exact",
            name=name,
        )
    except PlanInfeasibleError as e:  # allowed, if the error says why with its numbers
        smallest = int(
            re.search(r"smallest achievable peak is ([\d,]+) bytes", str(e))
            .group(1)
            .replace(",", "")
        )
        assert smallest > budget * (1 - SAFETY_MARGIN), str(e)
        print(f"\nMEMORY-ROW {name} {batch} {frac} {budget} infeasible {smallest}")
        return
    xs, ys = batches(x, batch, 2)
    # Execute
    measured = _measure_plan(model, p, xs, ys)
    print(
        f"\nMEMORY-ROW {name} {batch} {frac} {budget} {p.predicted_peak_bytes} {measured} "
        f"{p.micro_batch_size} {''.join(st.decision.value[0] for st in p.stages)}"
    )
    # Assert
    assert measured <= budget
    assert measured <= 1.10 * p.predicted_peak_bytes


# Forced schedules that exercise each mechanism of the lifetime simulation against the
# allocator: paging (the batch is never paged; batch norm's backward transient), checkpoint's
# re-run forward with early stop, BN running statistics frozen during the re-run (no buffer
# copies), micro-batch accumulation.
SCHEDULE_CASES = [
    # model, batch, micro, pattern, freeze_bn
    ("mcu-cnn", 1, 1, [R], False),
    ("mcu-cnn", 8, 8, [R, K], False),
    ("mcu-cnn", 8, 2, [P, K, K, K, K, K], True),
    ("mcu-cnn", 8, 4, [R, P, K], True),
    ("transformer-tiny", 8, 8, [R, P], False),
    ("mbv2-w0.35", 1, 1, [P], False),
    ("mbv2-w0.35", 1, 1, [R], False),
    pytest.param("mcunet", 2, 2, [P, R, K], False, marks=pytest.mark.slow),
]


# Sparse update under recomputation and paging: frozen products save no activation
# (`saved_for_backward`), a frozen checkpointed stage holds nothing.
SPARSE_CASES = [
    # model, batch, pattern, policy
    ("mcu-cnn", 8, [R, P], "last:2"),
    ("mcu-cnn", 8, [P, R], "last:3"),
    ("mcu-cnn", 8, [R], "bias-only"),
    ("transformer-tiny", 4, [R], "bias-only"),
    ("transformer-tiny", 8, [K], "bias-only"),
    # A frozen prefix of a model whose forward holds Python locals (q, k, v, scores, probs in
    # the attention) keeps them past their last use until the module returns; the graph
    # cannot see this (measured 1,455,720 vs 1,390,184 predicted, +4.7 %; +15.6 % before
    # module arguments were held to the call's end). plan() corrects it by running the plan:
    # test_a_plan_whose_forward_holds_python_locals_is_corrected_by_running_it.
    pytest.param(
        "transformer-tiny",
        8,
        [K],
        "last:2",
        marks=pytest.mark.xfail(
            strict=True,
            reason="known gap: Python locals in a frozen forward outlive their "
            "last use; not in the graph",
        ),
    ),
]


@pytest.mark.parametrize("name,batch,pattern,policy", SPARSE_CASES)
def test_sparse_schedules_peak_matches_allocator(name, batch, pattern, policy):
    # Prepare
    torch.manual_seed(0)
    model, x = build_model(name, pretrained=False)
    p = forced_plan(model, x, name, batch, batch, pattern, policy=policy)
    xs, ys = batches(x, batch, 2)
    # Execute
    measured = _measure_plan(model, p, xs, ys)
    # Assert
    assert abs(measured - p.predicted_peak_bytes) <= 0.005 * measured, (
        measured,
        p.predicted_peak_bytes,
    )


def test_a_plan_whose_forward_holds_python_locals_is_corrected_by_running_it():
    # Prepare: the case the simulation misses (xfail above): plan() runs the plan on the
    # host before returning it (NOTE [ Plans are checked against the allocator ])
    torch.manual_seed(0)
    model, x = build_model("transformer-tiny", pretrained=False)
    kw = dict(device="rpi4", batch_size=8, policy="last:2", executor="pytorch", name="tt")
    unchecked = plan(model, x, **kw, measure=False)
    # Execute
    checked = plan(model, x, **kw)
    measured = _measure_plan(model, checked, *batches(x, 8, 2))
    # Assert: the simulation alone under-predicts; the checked plan predicts the allocator
    assert measured > unchecked.predicted_peak_bytes
    assert abs(measured - checked.predicted_peak_bytes) <= 0.005 * measured
    assert any("checked on this host" in n for n in checked.notes)


def test_a_plan_that_measures_over_its_budget_is_replanned_within_it():
    # Prepare: a budget between the simulated and the measured peak of the plan above
    torch.manual_seed(0)
    model, x = build_model("transformer-tiny", pretrained=False)
    kw = dict(device="rpi4", batch_size=8, policy="last:2", executor="pytorch", name="tt")
    sim = plan(model, x, **kw, measure=False).predicted_peak_bytes
    budget = int(sim * 1.08)
    # Execute
    p = plan(model, x, **kw, budget_bytes=budget)
    measured = _measure_plan(model, p, *batches(x, 8, 2))
    # Assert: re-planned (recompute, paging or micro-batches) to a plan that fits for real
    assert measured <= budget
    assert measured <= 1.05 * p.predicted_peak_bytes


@pytest.mark.parametrize("name,batch,micro,pattern,freeze_bn", SCHEDULE_CASES)
def test_forced_schedules_peak_matches_allocator(name, batch, micro, pattern, freeze_bn):
    # Prepare
    torch.manual_seed(0)
    model, x = build_model(name, pretrained=False)
    p = forced_plan(model, x, name, batch, micro, pattern, freeze_bn=freeze_bn)
    assert any(s.decision is not K for s in p.stages)
    xs, ys = batches(x, batch, 2)
    # Execute
    measured = _measure_plan(model, p, xs, ys)
    # Assert: within 0.5 % (a few hundred bytes of small-tensor slack on the smallest model)
    assert abs(measured - p.predicted_peak_bytes) <= 0.005 * measured, (
        measured,
        p.predicted_peak_bytes,
    )


def test_paging_store_writes_what_the_plan_predicts_never_the_batch():
    # Prepare: micro-batches are views of the batch; the first stage (which saves the input)
    # is paged
    torch.manual_seed(0)
    model, x = build_model("mcu-cnn", pretrained=False)
    p = forced_plan(model, x, "mcu-cnn", 8, 2, [P, K, K, K, K, K], freeze_bn=True)
    xs, ys = batches(x, 8, 1)
    # Execute
    with Trainer(model, p, lr=0.01) as t:
        t.step(xs[0], ys[0])
        written, read = t.store.bytes_written, t.store.bytes_read
    # Assert: autograd's saved storages of the paged stage, excluding the batch (oracle)
    paged = model.features[0]
    per_micro: dict[int, int] = {}
    keep = {q.untyped_storage().data_ptr() for q in (*model.parameters(), *model.buffers())}

    def pack(tensor):
        st = tensor.untyped_storage()
        if st.data_ptr() not in keep | {xb.untyped_storage().data_ptr()}:
            per_micro[st.data_ptr()] = st.nbytes()
        return tensor

    xb = xs[0][:2].clone()
    for m in paged.modules():  # as the plan runs it: batch norm frozen
        if isinstance(m, BN):
            m.eval()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        paged(xb)
    expected = 4 * sum(per_micro.values())
    assert written == read == expected
    assert abs(p.predicted.storage_bytes_written - expected) <= 0.01 * expected


def _grads_with_store(model, x, store=None):
    model.zero_grad(set_to_none=True)
    ctx = store.hooks() if store is not None else contextlib.nullcontext()
    with ctx:
        out = model(x)
    out = out[0] if isinstance(out, tuple) else out
    out.square().mean().backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def test_paging_an_eager_gru_gives_autograd_s_gradients():
    # Prepare: eager GRU cells save chunks of a gate buffer they then update in place
    # (NOTE [ A paged storage is written once and read back once ])
    from edgetrain.runtime import PagingStore

    torch.manual_seed(0)
    gru = torch.nn.GRU(9, 16, batch_first=True)
    x = torch.randn(4, 20, 9)
    reference = _grads_with_store(gru, x)
    # Execute
    store = PagingStore()
    try:
        paged = _grads_with_store(gru, x, store)
    finally:
        store.close()
    # Assert: bit for bit what plain autograd computes
    for k in reference:
        assert torch.equal(paged[k], reference[k]), k


def test_paging_reads_a_storage_back_once_for_all_its_saved_views():
    # Prepare: q and k are views of one projection, both saved by their product
    from edgetrain.runtime import PagingStore

    proj = torch.nn.Linear(8, 24)
    x = torch.randn(2, 5, 8)

    def attend():
        q, k = proj(x).chunk(2, dim=-1)
        return (q * k).sum()

    store = PagingStore()
    # Execute
    try:
        with store.hooks():
            loss = attend()
        loss.backward()
    finally:
        store.close()
    # Assert: one storage-sized read per paged storage, not one per view
    assert store.bytes_read == store.bytes_written


def test_non_finite_loss_never_reaches_the_weights():
    torch.manual_seed(0)
    model, x = build_model("mcu-cnn", pretrained=False)
    p = forced_plan(model, x, "mcu-cnn", 2, 2, [K], in_place=True)
    before = [q.detach().clone() for q in model.parameters()]
    bad = torch.full((2, *x.shape[1:]), float("nan"))
    y = torch.zeros(2, dtype=torch.long)
    with Trainer(model, p, lr=0.1, max_nonfinite=2) as t:
        with pytest.warns(RuntimeWarning, match="non-finite"):
            t.step(bad, y)
        for a, b in zip(model.parameters(), before):
            assert torch.equal(a, b)
        with pytest.raises(NonFiniteLossError, match="lower the learning rate"):
            with pytest.warns(RuntimeWarning):
                t.step(bad, y)


def test_plan_json_round_trip():
    torch.manual_seed(0)
    model, x = build_model("mcu-cnn", pretrained=False)
    p = forced_plan(model, x, "mcu-cnn", 4, 2, [R, P], freeze_bn=True)
    assert Plan.from_json(p.to_json()) == p


@pytest.mark.parametrize(
    "policy,frozen_stats", [("last:1", True), ("bias-only", True), (None, False)]
)
def test_sparse_plans_freeze_batch_norm_statistics(policy, frozen_stats):
    # Prepare: mcu-cnn (batch norm throughout), a roomy budget so both BN modes fit
    torch.manual_seed(0)
    model, x = build_model("mcu-cnn", pretrained=False)
    p = plan(model, x, device="rpi4", batch_size=4, strategy="auto", policy=policy)
    stats = {n: b.clone() for n, b in model.named_buffers() if "running" in n}
    xs, ys = batches(x, 4, 2)
    # Execute
    with Trainer(model, p, lr=0.05) as t:
        for xb, yb in zip(xs, ys):
            t.step(xb, yb)
    # Assert: a sparse update keeps the pretrained statistics (NOTE [ Batch norm under a sparse
    # update ]); full training keeps BN live and its running statistics move
    assert p.freeze_batch_norm is frozen_stats
    moved = [n for n, b in model.named_buffers() if n in stats and not torch.equal(b, stats[n])]
    assert (moved == []) is frozen_stats


def test_public_api_plan_then_train_within_budget():
    import edgetrain

    torch.manual_seed(0)
    model, x = build_model("mcu-cnn", pretrained=False)
    p = edgetrain.plan(model, x, device="nrf52840", budget_bytes=200 * 1024, batch_size=4)
    assert isinstance(p, edgetrain.Plan)
    assert p.budget_bytes == 200 * 1024 and p.predicted_peak_bytes <= p.budget_bytes
    assert edgetrain.Plan.from_json(p.to_json()) == p
    xs, ys = batches(x, 4, 2)
    assert _measure_plan(model, p, xs, ys) <= p.budget_bytes
    with pytest.raises(edgetrain.PlanInfeasibleError, match="smallest achievable peak"):
        edgetrain.plan(model, x, device="nrf52840", budget_bytes=4096, batch_size=4)


def test_planner_searches_the_stage_cut_and_keeps_the_cheapest():
    # Prepare: mbv2-w0.35 at half its keep-all peak on rpi4 (NOTE [ Stage granularity ])
    from edgetrain.planner._solvers import SOLVERS
    from edgetrain.planner._stages import valid_depths

    torch.manual_seed(0)
    model, x = build_model("mbv2-w0.35", pretrained=False)
    dev = load_device("rpi4")
    keep = plan(model, x, device=dev, batch_size=2, strategy="exact", budget_bytes=1 << 40)
    budget = keep.predicted_peak_bytes // 2
    # Execute
    p = plan(model, x, device=dev, batch_size=2, strategy="exact", budget_bytes=budget)
    # Assert: the oracle is the DP run at every valid cut for the plan's own micro-batch, BN
    # mode and in-place choice; the plan is the cheapest of them, and the cut matters
    was = [(m, m.training) for m in model.modules()]
    if p.freeze_batch_norm:
        for m in model.modules():
            if isinstance(m, BN):
                m.eval()
    g = capture(model, x, batch_size=p.micro_batch_size, name="mbv2-w0.35")
    for m, t in was:
        m.train(t)
    everything = frozenset(q.name for q in g.params)
    latency = {}
    for depth in valid_depths(g):
        prob = Problem(
            g,
            dev,
            int(budget * (1 - SAFETY_MARGIN)),
            accumulation_steps=p.accumulation_steps,
            in_place_update=p.in_place_update,
            trainable=everything,
            stage_depth=depth,
            kernels=host_kernels(g, g.requires_grad_for(everything)),
        )
        try:
            latency[depth] = SOLVERS["dp"](prob).latency_s
        except PlanInfeasibleError:
            continue
    assert len(latency) >= 2
    assert p.predicted.latency_s == pytest.approx(min(latency.values()), rel=1e-9)
    assert max(latency.values()) > 2 * min(latency.values())


def test_the_trainer_refuses_a_plan_made_for_the_c_executor():
    # Prepare: what `auto` picks when PyTorch does not fit, or `--executor c`
    model, x = build_model("mcu-cnn", pretrained=False)
    p = plan(model, x, device="nrf52840", executor="c", name="mcu-cnn")
    # Execute / Assert: never a silent run outside the prediction
    with pytest.raises(InvalidArgumentError, match=r"c executor.*edgetrain compile"):
        Trainer(model, p)
