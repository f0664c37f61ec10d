"""`tinyol` — TinyOL (Ren, Anicic, Runkler; IJCNN 2021): "TinyOL: TinyML with Online-Learning on
Microcontrollers".

Reproduced: the backbone is frozen and runs in inference mode; a trainable head (the TinyOL
layer) is held in RAM and learns online from a data stream at batch size 1, one pass, one SGD
update per sample; when a sample of an unseen class arrives, the head grows by one output
neuron (zero-initialised) and learns it from then on. The head starts from the pretrained
classifier's rows for the classes the device already knows (`known_classes`).
The plan (`edgetrain.plan`, batch 1, only the head trainable) predicts the step's memory with the
head at its full size (every class of the model's label space), an upper bound over the stream.

Not reproduced: the paper's on-line standardisation of the backbone's output (running mean and
variance) and its autoencoder / anomaly-detection mode; TinyOL's C implementation (our step runs
in PyTorch and its memory is measured from the allocator).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgetrain.cost import load_device
from edgetrain.errors import InvalidArgumentError
from edgetrain.measure import MemoryMeter
from edgetrain.prepare import trainer_plan as plan
from edgetrain.strategies._common import (
    WARMUP_STEPS,
    Prepared,
    System,
    SystemName,
    TrainReport,
    check_samples,
    metered,
    state_bytes,
)


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise InvalidArgumentError(
            f"tinyol needs a model whose last layer is nn.Linear (the head it grows); "
            f"{type(model).__name__} has none"
        )
    return found[-1]


class GrowingHead(nn.Module):
    """A linear head over a growing set of class labels (the TinyOL layer)."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor, labels: Sequence[int], label_space: int
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.labels: list[int] = list(labels)
        self.label_space = label_space

    def add_class(self, label: int) -> None:
        """Add one output neuron for `label` (zero weights and bias)."""
        with torch.no_grad():
            self.weight = nn.Parameter(
                torch.cat([self.weight, self.weight.new_zeros(1, self.weight.shape[1])])
            )
            self.bias = nn.Parameter(torch.cat([self.bias, self.bias.new_zeros(1)]))
        self.labels.append(int(label))
        self.label_space = max(self.label_space, int(label) + 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, self.weight, self.bias)


class TinyOLModel(nn.Module):
    """Frozen backbone + growing head; `forward` returns logits over the whole label space
    (-inf for classes the head does not know yet), so it predicts label ids directly."""

    def __init__(self, backbone: nn.Module, head: GrowingHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.backbone.eval()
            return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.features(x))
        out = z.new_full((z.shape[0], self.head.label_space), float("-inf"))
        out[:, self.head.labels] = z
        return out


def prepare(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    device="nrf52840",
    budget_bytes: int | None = None,
    batch_size: int = 1,
    name: str = "model",
    known_classes: Sequence[int] | None = None,
) -> Prepared:
    if batch_size != 1:
        raise InvalidArgumentError(
            f"tinyol learns from a stream one sample at a time; batch size must be 1, got "
            f"{batch_size}"
        )
    dev = load_device(device)
    head_name, lin = _last_linear(model)
    n_out = lin.out_features
    known = list(range(n_out)) if known_classes is None else [int(c) for c in known_classes]
    bad = [c for c in known if not 0 <= c < n_out]
    if bad or len(set(known)) != len(known):
        raise InvalidArgumentError(
            f"known_classes {known} must be distinct label ids of the head's {n_out} outputs"
        )
    p = plan(
        model,
        example_input,
        device=dev,
        budget_bytes=budget_bytes,
        batch_size=1,
        strategy="auto",
        policy=head_name,
        allow_paging=False,
        name=name,
    )
    backbone = copy.deepcopy(model)
    parent, _, leaf = head_name.rpartition(".")
    setattr(backbone.get_submodule(parent) if parent else backbone, leaf, nn.Identity())
    for q in backbone.parameters():
        q.requires_grad_(False)
    idx = torch.tensor(known, dtype=torch.long)
    head = GrowingHead(
        lin.weight[idx],
        lin.bias[idx] if lin.bias is not None else lin.weight.new_zeros(len(known)),
        known,
        n_out,
    )
    tol = TinyOLModel(backbone, head)
    return Prepared(
        SystemName.TINYOL,
        tol,
        example_input,
        p,
        dev,
        p.predicted_peak_bytes,
        (f"frozen backbone, head {head_name!r} in RAM, starts with {len(known)} classes",),
    )


def online_step(model: TinyOLModel, x: torch.Tensor, y: torch.Tensor, lr: float) -> float:
    """One TinyOL update from one sample: grow the head if the class is new, then SGD."""
    label = int(y[0])
    head = model.head
    if label not in head.labels:
        head.add_class(label)
    target = torch.tensor([head.labels.index(label)])
    loss = F.cross_entropy(head(model.features(x)), target)
    gw, gb = torch.autograd.grad(loss, (head.weight, head.bias))
    with torch.no_grad():
        head.weight.sub_(lr * gw)
        head.bias.sub_(lr * gb)
    return float(loss.detach())


def train(
    prepared: Prepared,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    samples: int,
    lr: float = 0.05,
    seed: int = 0,
    measure_steps: int = 1,
) -> TrainReport:
    """One pass over a seeded stream of `samples` samples, one update each."""
    model = prepared.model
    if not isinstance(model, TinyOLModel):
        raise InvalidArgumentError("tinyol.train needs the model tinyol.prepare returned")
    n = check_samples(samples, 1, len(x))
    if n > len(x):
        raise InvalidArgumentError(
            f"tinyol makes one pass over the stream: {n} samples requested, {len(x)} available"
        )
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    losses, peak, durations_s = [], 0, []
    grown = []
    for k, i in enumerate(order.tolist()):
        xb, yb = x[i : i + 1].clone(), y[i : i + 1].clone()  # own storage, as a stream sample
        before = len(model.head.labels)
        if metered(k, measure_steps, n):
            with MemoryMeter(state_bytes(model, (), (xb, yb))) as m:
                loss = online_step(model, xb, yb, lr)
            peak = max(peak, m.trace.peak_bytes)
        else:
            t0 = time.perf_counter()
            loss = online_step(model, xb, yb, lr)
            if k >= WARMUP_STEPS:
                durations_s.append(time.perf_counter() - t0)
        if len(model.head.labels) > before:
            grown.append((k, model.head.labels[-1]))
        losses.append(loss)
    return TrainReport.from_timings(
        durations_s,
        steps=n,
        batch_size=1,
        losses=losses,
        measured_peak_bytes=peak,
        notes=(f"class {c} added at sample {k}" for k, c in grown),
    )


SYSTEM = System(SystemName.TINYOL, prepare, train)
