"""Views that move data, copies, in-place ops and shared weights in C (NOTE [ Views as index
maps ], NOTE [ Views in C ], NOTE [ In-place ops in C ], NOTE [ Shared weights in C ]): each
view kind compiled for the host and trained for a few SGD steps against plain PyTorch autograd
+ SGD from the same weights; the zoo's GRU classifier likewise, and on the Cortex-M4 under
QEMU against its plan."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import edgetrain
from edgetrain.capture import capture
from edgetrain.codegen import SampleSet, TrainingSpec, compile_project, mcu_run
from edgetrain.codegen._lower import check_kernels, view_map
from edgetrain.errors import UnsupportedKernelError
from edgetrain.ir import Graph
from tests._toolchain import assert_trains_within_plan, needs_arm, needs_cc

LR, STEPS, BATCH = 0.05, 4, 2


class Transposed(nn.Module):
    """transpose, permute, and a view of a non-contiguous view (composed maps)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 24), nn.Linear(48, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x)).view(-1, 4, 6)
        t = h.transpose(1, 2)  # (B, 6, 4)
        p = h.permute(2, 0, 1).permute(1, 2, 0)  # back to (B, 4, 6) through two gathers
        return self.b(torch.cat([(t.transpose(1, 2) * h).flatten(1), (p - h * h).flatten(1)], 1))


class Selected(nn.Module):
    """select, slice with a step (a reshape of it copies in PyTorch), narrow, expand."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 24), nn.Linear(24 + 6 + 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x)).view(-1, 4, 6)
        s = h.select(1, 1).unsqueeze(1).expand(-1, 4, -1)  # stride 0: gradients sum
        q = h[:, ::2, 1::2].reshape(x.shape[0], -1)  # (B, 6)
        n = h.narrow(2, 2, 2).flatten(1)  # (B, 8)
        return self.b(torch.cat([(s * h).flatten(1), q, n], 1))


class Split(nn.Module):
    """The getitems of chunk, unbind and split, and stack."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 24), nn.Linear(12 + 6 + 12 + 12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sigmoid(self.a(x)).view(-1, 4, 6)
        c0, c1 = h.chunk(2, dim=2)  # (B, 4, 3)
        u0, u1, u2, u3 = h.unbind(1)  # (B, 6)
        s0, s1 = h.split([1, 3], dim=1)  # (B, 1, 6), (B, 3, 6)
        st = torch.stack([u0, u3], 1).flatten(1)  # (B, 12)
        sp = (s0.expand(-1, 3, -1) - s1).flatten(1)[:, :12]
        return self.b(torch.cat([(c0 * c1).flatten(1), u0 * u2 + u1, st, sp], 1))


def _samples(n: int, classes: int, shape=(8,)) -> SampleSet:
    g = np.random.default_rng(0)
    return SampleSet(g.normal(size=(n, *shape)).astype(np.float32), g.integers(0, classes, n))


def _reference(m: nn.Module, s: SampleSet, steps: int, batch: int) -> list[float]:
    """Plain PyTorch: SGD over every parameter, batches as the C driver cycles them."""
    xs, ys = torch.from_numpy(s.pixels), torch.from_numpy(s.labels)
    opt = torch.optim.SGD(m.parameters(), lr=LR)
    out = []
    for step in range(steps):
        idx = [(step * batch + k) % len(ys) for k in range(batch)]
        value = nn.functional.cross_entropy(m(xs[idx]), ys[idx])
        opt.zero_grad()
        value.backward()
        opt.step()
        out.append(value.item())
    return out


def _host_against_pytorch(tmp_path, m: nn.Module, s: SampleSet, steps: int, batch: int):
    """Every parameter trained for `steps` host C steps and by PyTorch from the same weights;
    returns the largest parameter difference."""
    x = torch.zeros(1, *s.pixels.shape[1:])
    plan = edgetrain.plan(
        m,
        x,
        device="stm32h743",
        strategy="keep-all",
        policy="all",
        batch_size=batch,
        budget_bytes=1 << 40,
    )
    spec = TrainingSpec(s, s, steps=steps, lr=LR, log_every=1, dump_params=True)
    res = mcu_run(compile_project(plan, m, x, "host", spec, tmp_path / "c"))
    ref = _reference(m, s, steps, batch)
    named = dict(m.named_parameters())
    assert set(res.params) == set(named)
    for name, values in res.params.items():
        torch.testing.assert_close(
            torch.tensor(values), named[name].detach().reshape(-1), rtol=1e-4, atol=1e-5
        )
    torch.testing.assert_close(torch.tensor(res.losses), torch.tensor(ref), rtol=1e-4, atol=1e-5)
    return max(
        float((torch.tensor(v) - named[k].detach().reshape(-1)).abs().max())
        for k, v in res.params.items()
    )


@needs_cc
@pytest.mark.parametrize("model", [Transposed, Selected, Split], ids=lambda c: c.__name__)
def test_views_that_move_data_match_pytorch(tmp_path, model):
    # Prepare: the same weights for both sides; the graph gathers (no view is an alias only)
    torch.manual_seed(0)
    m = model()
    g = capture(m, torch.zeros(1, 8), batch_size=BATCH, cache=False)
    assert any(
        n.op.value == "view" and view_map(n) is not None and view_map(n)[2] not in ((), (1,))
        for n in g.nodes
    )
    # Execute / Assert: losses and parameters after STEPS steps
    _host_against_pytorch(tmp_path, m, _samples(6, 3), STEPS, BATCH)


def test_view_maps_are_pytorchs_strides_over_the_source_in_order():
    # Prepare: a transpose, a select of it (a view of a non-contiguous view), a select and a
    # slice with step of a (B, 4, 6) activation
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 24), nn.Linear(4 + 6 + 9, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x).view(-1, 4, 6)
            t = h.transpose(1, 2)[:, 0]
            return self.b(torch.cat([t, h[:, 2], h[:, 1:, ::2].reshape(-1, 9)], 1))

    # Execute
    g = capture(M(), torch.zeros(1, 8), batch_size=2, cache=False)
    got = {
        (n.aten, g.tensor(n.inputs[0]).shape): (
            n.attr("view_offset"),
            n.attr("view_size"),
            n.attr("view_stride"),
        )
        for n in g.nodes
        if n.attr("view_size") is not None and n.aten != "aten.view.default"
    }
    # Assert: the strides PyTorch gives the same views of a contiguous tensor of the source's
    # shape (the source's logical layout, whatever its own strides)
    expected = {
        ("aten.transpose.int", (2, 4, 6)): torch.empty(2, 4, 6).transpose(1, 2),
        ("aten.select.int", (2, 6, 4)): torch.empty(2, 6, 4)[:, 0],
        ("aten.select.int", (2, 4, 6)): torch.empty(2, 4, 6)[:, 2],
        ("aten.slice.Tensor", (2, 4, 6)): torch.empty(2, 4, 6)[:, 1:],
        ("aten.slice.Tensor", (2, 3, 6)): torch.empty(2, 3, 6)[:, :, ::2],
    }
    for key, view in expected.items():
        assert got[key] == (view.storage_offset(), tuple(view.shape), view.stride()), key


def _inplace_graph(stale: bool) -> Graph:
    """A captured linear -> tanh -> sigmoid -> linear whose sigmoid is rewritten as eager
    decompositions write it (in place over tanh's output); with `stale`, the last linear then
    reads tanh's output by its old name."""
    m = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Sigmoid(), nn.Linear(8, 3))
    g = capture(m, torch.zeros(1, 8), batch_size=2, cache=False)
    by = {n.aten: n for n in g.nodes}
    th, sg, lin = by["aten.tanh.default"], by["aten.sigmoid.default"], g.nodes[-2]
    tensors = {t.name: t for t in g.tensors}
    store = tensors[th.output].storage
    tensors[sg.output] = dataclasses.replace(tensors[sg.output], storage=store)
    attrs = (("fn", "sigmoid_"), ("inplace", True))
    nodes = []
    for n in g.nodes:
        if n is sg:
            n = dataclasses.replace(n, aten="aten.sigmoid_.default", attrs=attrs)
        if n is lin and stale:
            n = dataclasses.replace(n, inputs=(th.output, *n.inputs[1:]))
        nodes.append(n)
    return dataclasses.replace(g, nodes=tuple(nodes), tensors=tuple(tensors.values()))


def test_a_read_after_an_in_place_write_is_refused_and_a_fresh_one_lowers():
    # Prepare / Execute / Assert: the value read is the written one in eager mode only
    check_kernels(_inplace_graph(stale=False))
    with pytest.raises(UnsupportedKernelError, match="after the in-place sigmoid_"):
        check_kernels(_inplace_graph(stale=True))


@needs_cc
@pytest.mark.parametrize("name", ["gru-seq", "lstm-seq"])
def test_recurrent_classifier_matches_pytorch_on_the_host(tmp_path, name):
    # Prepare: the zoo's nn.GRU(9, 32) over 50 x 9 windows, every parameter trained (the
    # recurrent weights are read at each of the 50 steps: their gradients sum). nn.LSTM
    # reaches the graph as oneDNN's fused layer on this host, which has no C kernel
    from edgetrain.models import build_model

    torch.manual_seed(0)
    m, _ = build_model(name)
    s = _samples(3, 6, (50, 9))
    # Execute / Assert
    worst = _host_against_pytorch(tmp_path, m, s, 3, 1)
    print(f"\n{name} host: max parameter difference after 3 steps {worst:.3g}")


@needs_arm
@pytest.mark.parametrize("name", ["gru-seq", "lstm-seq"])
def test_recurrent_classifier_trains_on_the_nrf52840_within_its_plan(tmp_path, name):
    # Prepare: planned for the C executor on the nRF52840 profile; seeded class-dependent
    # windows (6 classes)
    from edgetrain.models import build_model

    torch.manual_seed(0)
    m, x = build_model(name)
    plan = edgetrain.plan(m, x, device="nrf52840", executor="c", batch_size=1, name=name)
    g = np.random.default_rng(0)
    y = np.arange(24) % 6
    centres = g.normal(size=(6, 50, 9)).astype(np.float32)
    s = SampleSet((centres[y] + 0.5 * g.normal(size=(24, 50, 9))).astype(np.float32), y)
    spec = TrainingSpec(s, s, steps=40, lr=0.05, log_every=1)
    # Execute: Cortex-M4 under QEMU
    out = compile_project(plan, m, x, "cortex-m4", spec, tmp_path / "c", device="nrf52840")
    res = mcu_run(out)
    # Assert: measured peak SRAM within 5 % of the plan, under the device's; the loss falls
    assert_trains_within_plan(f"{name} nrf52840", plan, res)
