"""Attention in C (NOTE [ Attention in C ] in edgetrain/codegen/_lower.py): a parameter
broadcast over the batch (a learned position table), a mean over tokens, linear layers over
(B, T, D) and fused scaled-dot-product attention, compiled for the host and trained for a few
SGD steps against plain PyTorch autograd + SGD from the same weights; the zoo's tiny ViT
likewise, and on a Cortex-M under QEMU against its plan."""

from __future__ import annotations

import struct
import subprocess

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import edgetrain
from edgetrain.capture import capture
from edgetrain.codegen import SampleSet, TrainingSpec, compile_project, mcu_run
from edgetrain.codegen._lower import check_kernels
from edgetrain.errors import UnsupportedKernelError
from tests._toolchain import assert_trains_within_plan, needs_arm, needs_cc
from tests.test_codegen_views import _host_against_pytorch, _samples


class Attend(nn.Module):
    """Tokens + a position table, SDPA over 2 heads of q, k, v from separate projections, token
    mean, a classifier. Equal head sizes of q and v (`ev` 4) run eager CPU's fused flash
    kernel; others its math path (bmm, softmax, bmm)."""

    def __init__(self, scale: float | None = None, ev: int = 4) -> None:
        super().__init__()
        self.pos = nn.Parameter(0.1 * torch.randn(1, 6, 8))
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2 * ev)
        self.head = nn.Linear(2 * ev, 3)
        self.scale, self.ev = scale, ev

    def extra_repr(self) -> str:
        return f"scale={self.scale}, ev={self.ev}"  # the capture cache keys on repr(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.view(-1, 6, 8) + self.pos
        b = h.shape[0]
        q = self.q(h).view(b, 6, 2, 4).transpose(1, 2)
        k = self.k(h).view(b, 6, 2, 4).transpose(1, 2)
        v = self.v(h).view(b, 6, 2, self.ev).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.head(o.transpose(1, 2).reshape(b, 6, 2 * self.ev).mean(1))


@needs_cc
@pytest.mark.parametrize(
    ("scale", "ev", "fn"),
    [
        (None, 4, "_scaled_dot_product_flash_attention_for_cpu"),
        (0.7, 4, "_scaled_dot_product_flash_attention_for_cpu"),
        (None, 6, "bmm"),  # head sizes differ: eager runs SDPA's math path
        (0.7, 6, "bmm"),
    ],
    ids=["fused", "fused-scale-0.7", "math", "math-scale-0.7"],
)
def test_attention_block_matches_pytorch(tmp_path, scale, ev, fn):
    # Prepare: the same weights for both sides; batch 2 (the position table broadcasts)
    torch.manual_seed(0)
    m = Attend(scale, ev)
    g = capture(m, torch.zeros(1, 48), batch_size=2, cache=False)
    assert any(n.attr("fn") == fn for n in g.nodes)
    # Execute / Assert: losses and every parameter after 4 steps
    _host_against_pytorch(tmp_path, m, _samples(6, 3, (48,)), 4, 2)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"is_causal": True}, "scaled_dot_product.*no mask, no dropout, not causal"),
        ({"dropout_p": 0.5}, "random mask .* has no C kernel"),  # eager runs its math path
    ],
    ids=["causal", "dropout"],
)
def test_attention_the_kernel_does_not_run_is_refused(kw, match):
    # Prepare: SDPA with an option the C kernel does not implement
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x).view(-1, 1, 4, 2)
            return self.b(F.scaled_dot_product_attention(h, h, h, **kw).flatten(1))

    g = capture(M(), torch.zeros(1, 8), batch_size=2, cache=False)
    # Execute / Assert: a typed error naming the node and what the kernel runs
    with pytest.raises(UnsupportedKernelError, match=match):
        check_kernels(g)


@needs_cc
def test_vit_tiny_matches_pytorch_on_the_host(tmp_path):
    # Prepare: the zoo's ViT (patch conv, position table, 2 blocks of nn.MultiheadAttention +
    # MLP, token mean), every parameter trained, batch 2
    from edgetrain.models import build_model

    torch.manual_seed(0)
    m, _ = build_model("vit-tiny")
    with torch.no_grad():
        m.pos.normal_(0.0, 0.1)  # zero-initialised: make its broadcast matter
    s = _samples(4, 10, (3, 32, 32))
    # Execute / Assert
    worst = _host_against_pytorch(tmp_path, m, s, 3, 2)
    print(f"\nvit-tiny host: max parameter difference after 3 steps {worst:.3g}")


@needs_arm
def test_vit_tiny_trains_on_the_nrf52840_within_its_plan(tmp_path):
    # Prepare: planned for the C executor on the nRF52840 profile (the planner's own
    # trainable set); seeded class-dependent 3 x 32 x 32 images (4 classes)
    from edgetrain.models import build_model

    torch.manual_seed(0)
    m, x = build_model("vit-tiny")
    plan = edgetrain.plan(m, x, device="nrf52840", executor="c", batch_size=1, name="vit-tiny")
    g = np.random.default_rng(0)
    y = np.arange(16) % 4
    centres = g.normal(size=(4, 3, 32, 32)).astype(np.float32)
    s = SampleSet((centres[y] + 0.5 * g.normal(size=(16, 3, 32, 32))).astype(np.float32), y)
    spec = TrainingSpec(s, s, steps=24, lr=0.02, log_every=1)
    # Execute: Cortex-M4 under QEMU
    out = compile_project(plan, m, x, "cortex-m4", spec, tmp_path / "c", device="nrf52840")
    res = mcu_run(out)
    # Assert: measured peak SRAM within 5 % of the plan, under the device's; the loss falls
    assert_trains_within_plan("vit-tiny nrf52840", plan, res)


def _tokens(n: int, classes: int, length: int, vocab: int) -> SampleSet:
    """Class-dependent token sequences: each class draws from its own quarter of the
    vocabulary."""
    g = np.random.default_rng(0)
    y = np.arange(n) % classes
    lo = y[:, None] * (vocab // classes)
    ids = lo + g.integers(0, vocab // classes, size=(n, length))
    return SampleSet(ids.astype(np.int32), y)


@needs_cc
@pytest.mark.parametrize("name", ["text-gru", "transformer-tiny"])
def test_token_models_match_pytorch_on_the_host(tmp_path, name):
    # Prepare: the zoo's embedding + GRU classifier and its tiny transformer (embedding,
    # position table, hand-written q k^T / softmax / p v attention) over int64 token ids,
    # every parameter trained (the embedding's rows by scatter-add), batch 2, repeated ids
    from edgetrain.models import build_model

    torch.manual_seed(0)
    m, x = build_model(name)
    if name == "transformer-tiny":
        with torch.no_grad():
            m.pos.normal_(0.0, 0.1)  # zero-initialised: make its broadcast matter
    half = x.shape[1] // 2
    s = _tokens(4, 4, half, 1000)
    s = SampleSet(np.concatenate([s.pixels, s.pixels], 1), s.labels)
    plan = edgetrain.plan(
        m,
        x,
        device="stm32h743",
        strategy="keep-all",
        policy="all",
        batch_size=2,
        budget_bytes=1 << 40,
    )
    spec = TrainingSpec(s, s, steps=3, lr=0.05, log_every=1, dump_params=True)
    # Execute: host C, and plain PyTorch SGD from the same weights
    res = mcu_run(compile_project(plan, m, x, "host", spec, tmp_path / "c"))
    xs, ys = torch.from_numpy(s.pixels.astype(np.int64)), torch.from_numpy(s.labels)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    ref = []
    for step in range(3):
        idx = [(step * 2 + k) % 4 for k in range(2)]
        loss = F.cross_entropy(m(xs[idx]), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        ref.append(loss.item())
    # Assert: losses and every parameter (the table's touched rows moved)
    named = dict(m.named_parameters())
    worst = 0.0
    for pname, values in res.params.items():
        want = named[pname].detach().reshape(-1)
        torch.testing.assert_close(torch.tensor(values), want, rtol=1e-4, atol=1e-5)
        worst = max(worst, float((torch.tensor(values) - want).abs().max()))
    torch.testing.assert_close(torch.tensor(res.losses), torch.tensor(ref), rtol=1e-4, atol=1e-5)
    print(f"\n{name} host: max parameter difference after 3 steps {worst:.3g}")


def test_token_ids_out_of_the_table_and_float_samples_are_refused(tmp_path):
    # Prepare: text-gru planned for C; ids past the 1000-row table, and float samples
    from edgetrain.errors import UnsupportedPlanError
    from edgetrain.models import build_model

    m, x = build_model("text-gru")
    plan = edgetrain.plan(m, x, device="nrf52840", executor="c", batch_size=1, name="text-gru")
    bad = _tokens(4, 4, 40, 1000)
    bad = SampleSet(bad.pixels + 1000, bad.labels)
    floats = SampleSet(bad.pixels.astype(np.float32), bad.labels)
    # Execute / Assert: typed errors naming the numbers
    for s, match in ((bad, "token ids span 1000..1999.*1000 rows"), (floats, "int32 token ids")):
        with pytest.raises(UnsupportedPlanError, match=match):
            compile_project(plan, m, x, "host", TrainingSpec(s, s, 1, 0.1), tmp_path / "c")


@needs_arm
@pytest.mark.parametrize("name", ["text-gru", "transformer-tiny"])
def test_token_models_train_on_the_nrf52840_within_their_plan(tmp_path, name):
    # Prepare: planned for the C executor on the nRF52840 profile (the planner's trainable
    # set); class-dependent token sequences baked into flash as int32 ids
    from edgetrain.models import build_model

    torch.manual_seed(0)
    m, x = build_model(name)
    plan = edgetrain.plan(m, x, device="nrf52840", executor="c", batch_size=1, name=name)
    s = _tokens(16, 4, x.shape[1], 1000)
    spec = TrainingSpec(s, s, steps=40, lr=0.1, log_every=1)
    # Execute: Cortex-M4 under QEMU
    out = compile_project(plan, m, x, "cortex-m4", spec, tmp_path / "c", device="nrf52840")
    assert "typedef int32_t et_sample_t;" in (out / "et_model.h").read_text()
    res = mcu_run(out)
    # Assert: measured peak SRAM within 5 % of the plan, under the device's; the loss falls
    assert_trains_within_plan(f"{name} nrf52840", plan, res)


@needs_cc
def test_the_library_takes_int32_token_ids(tmp_path):
    # Prepare: text-gru in the library layout for the host
    from edgetrain.models import build_model

    torch.manual_seed(0)
    m, x = build_model("text-gru")
    plan = edgetrain.plan(m, x, device="nrf52840", executor="c", batch_size=1, name="text-gru")
    s = _tokens(8, 4, 40, 1000)
    spec = TrainingSpec(s, s, steps=30, lr=0.1)
    # Execute: generate, then build and run its example firmware (streams int32 ids)
    out = compile_project(plan, m, x, "host", spec, tmp_path / "lib", layout="library")
    header = (out / "src" / "edgetrain_model.h").read_text()
    fw = out / "extras" / "firmware"
    subprocess.run(["make", "-s", "-C", str(fw)], check=True, capture_output=True)
    run = subprocess.run([str(fw / "firmware")], capture_output=True, text=True, timeout=120)
    # Assert: the API is typed for ids; the example trains on them
    assert "typedef int32_t et_input_t;" in header
    assert "float et_train_step(const et_input_t *x, const et_target_t *y);" in header
    assert "ET_END" in run.stdout, run.stdout[-1500:]
    losses = [
        struct.unpack("<f", struct.pack("<I", int(v.split()[2], 16)))[0]
        for v in run.stdout.splitlines()
        if v.startswith("LOSS ")
    ]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


class ScalarOperands(nn.Module):
    """Tensor-by-number ops (capture records the number: `sub.Tensor(x, 1.5)`, `mul.Scalar`)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x) - 1.5)
        return self.b(torch.mul(h, 0.5) + 2.0)


@needs_cc
def test_ops_by_a_number_match_pytorch(tmp_path):
    # Prepare / Execute / Assert: losses and parameters after 4 steps
    torch.manual_seed(0)
    _host_against_pytorch(tmp_path, ScalarOperands(), _samples(6, 3), 4, 2)


class StackedLSTM(nn.Module):
    """Two stacked nn.LSTM layers (the second's input gradient flows into the first), the
    output sequence read (mean over time)."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(9, 12, num_layers=2, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out.mean(1))


@needs_cc
def test_stacked_lstm_over_a_batch_matches_pytorch(tmp_path):
    # Prepare: batch 2 (the fused layer's (T, B, I) layout); eager CPU runs oneDNN's layers
    torch.manual_seed(0)
    m = StackedLSTM()
    g = capture(m, torch.zeros(1, 10, 9), batch_size=2, cache=False)
    assert sum(n.attr("fn") == "mkldnn_rnn_layer" for n in g.nodes) == 2
    # Execute / Assert: losses and every parameter after 4 steps
    worst = _host_against_pytorch(tmp_path, m, _samples(6, 3, (10, 9)), 4, 2)
    print(f"\nstacked LSTM host: max parameter difference after 4 steps {worst:.3g}")
