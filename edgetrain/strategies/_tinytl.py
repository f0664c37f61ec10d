"""`tinytl` — TinyTL (Cai, Gan, Zhu, Han; NeurIPS 2020): "TinyTL: Reduce Memory, Not Parameters
for Efficient On-Device Learning".

Reproduced: every weight of the pretrained backbone is frozen; the biases train (TinyTL-B),
plus lite residual modules (TinyTL-L): a small side branch next to each block of the backbone
(`model.features[i]`) that down-samples the block's input (average pooling by the block's
stride times 2), applies a 3x3 group convolution (group width 8) and ReLU, projects to the
block's output channels with a 1x1 convolution, up-samples (nearest, 2x) and adds the result to
the block's output. The projection starts at zero, so the transformed model computes exactly
what the pretrained one did. The classifier (the new task's head) trains too, as in the paper.
The memory saving comes from what autograd no longer saves: frozen weights need no input
activations for their gradients, and the lite residuals work at a quarter of the resolution.
On the PyTorch executor the plan runs the lean backward (NOTE [ Lean backward ] in
runtime/_lean.py): a convolution with a frozen weight saves nothing, ReLU6 saves a 1-bit mask,
frozen batch norm saves nothing. `memory_saving` reports full fine-tuning's peak over TinyTL's
(the paper: up to 6.5x).
Batch norm statistics are frozen (`freeze_batch_norm=True`, running statistics, as the
planner's own sparse candidates: NOTE [ Batch norm under a sparse update ]); the BN biases
still train. Batch-statistics BN needs its input for its input gradient, so a live BN would
keep every BN input of the backbone. On the bench's mbv2-w0.35 task frozen statistics measured
27.2 % against 25.2 % live (one seed, at 37ab6a2).

Not reproduced: the paper's group normalisation inside the lite residual and its feature
extractor adaptation (searching a sub-network); where a block's output has an odd side
(e.g. 7x7) the lite residual runs at the output resolution (no down-sampling).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from edgetrain.cost import load_device
from edgetrain.errors import InvalidArgumentError
from edgetrain.prepare import trainer_plan as plan
from edgetrain.strategies._common import Prepared, System, SystemName, train_planned

GROUP_WIDTH = 8


class LiteResidual(nn.Module):
    def __init__(self, cin: int, cout: int, pool: int, up: int) -> None:
        super().__init__()
        self.pool, self.up = pool, up
        self.conv = nn.Conv2d(cin, cin, 3, padding=1, groups=max(1, cin // GROUP_WIDTH), bias=False)
        self.act = nn.ReLU()
        self.project = nn.Conv2d(cin, cout, 1, bias=False)
        nn.init.zeros_(self.project.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        z = self.project(self.act(self.conv(x)))
        if self.up > 1:
            b, c, h, w = z.shape
            z = (
                z.reshape(b, c, h, 1, w, 1)
                .expand(b, c, h, self.up, w, self.up)
                .reshape(b, c, h * self.up, w * self.up)
            )
        return z


class WithLiteResidual(nn.Module):
    def __init__(self, block: nn.Module, lite: LiteResidual) -> None:
        super().__init__()
        self.block = block
        self.lite = lite

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.lite(x)


def add_lite_residuals(model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """A copy of `model` with a lite residual beside each block of `model.features`."""
    feats = getattr(model, "features", None)
    if not isinstance(feats, nn.Sequential):
        raise InvalidArgumentError(
            f"tinytl adds lite residuals to the blocks of `model.features` (nn.Sequential); "
            f"{type(model).__name__} has no such attribute"
        )
    shapes: dict[int, tuple] = {}
    hooks = [
        blk.register_forward_hook(lambda m, a, o, i=i: shapes.__setitem__(i, (a[0].shape, o.shape)))
        for i, blk in enumerate(feats)
    ]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    out = copy.deepcopy(model)
    for i in range(len(feats)):
        sin, sout = shapes[i]
        if len(sin) != 4 or len(sout) != 4:
            continue
        stride = sin[2] // sout[2] if sout[2] else 1
        up = 2 if (sout[2] % 2 == 0 and sout[3] % 2 == 0 and sout[2] >= 4) else 1
        pool = max(1, stride) * up
        if sin[2] % pool or sin[3] % pool or sin[2] // pool * up != sout[2]:
            pool, up = max(1, stride), 1
            if sin[2] % pool or sin[2] // pool != sout[2]:
                continue  # shapes that do not down-sample evenly get no lite residual
        out.features[i] = WithLiteResidual(out.features[i], LiteResidual(sin[1], sout[1], pool, up))
    return out


def trainable_names(model: nn.Module) -> list[str]:
    head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1:]
    names = []
    for n, _ in model.named_parameters():
        if n.endswith(".bias") or ".lite." in f".{n}" or any(n.startswith(h + ".") for h in head):
            names.append(n)
    return names


def prepare(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    device="nrf52840",
    budget_bytes: int | None = None,
    batch_size: int = 1,
    name: str = "model",
) -> Prepared:
    dev = load_device(device)
    tl = add_lite_residuals(model, example_input)
    names = trainable_names(tl)
    p = plan(
        tl,
        example_input,
        device=dev,
        budget_bytes=budget_bytes,
        batch_size=batch_size,
        strategy="auto",
        policy=",".join(names),
        allow_paging=False,
        name=name,
        freeze_batch_norm=True,
    )
    n_lite = sum(1 for m in tl.modules() if isinstance(m, LiteResidual))
    return Prepared(
        SystemName.TINYTL,
        tl,
        example_input,
        p,
        dev,
        p.predicted_peak_bytes,
        (f"weights frozen; biases, {n_lite} lite residuals and the head train",),
    )


def memory_saving(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    batch_size: int,
    device="rpi4",
    name: str = "model",
) -> dict[str, float]:
    """Predicted peak of full fine-tuning over TinyTL's (same batch, everything kept)."""
    from edgetrain.strategies._full import prepare as full_prepare

    budget = 1 << 40
    full = full_prepare(
        model, example_input, device=device, budget_bytes=budget, batch_size=batch_size, name=name
    )
    tl = prepare(
        model, example_input, device=device, budget_bytes=budget, batch_size=batch_size, name=name
    )
    return {
        "full_peak_bytes": full.predicted_peak_bytes,
        "tinytl_peak_bytes": tl.predicted_peak_bytes,
        "saving": full.predicted_peak_bytes / tl.predicted_peak_bytes,
    }


SYSTEM = System(SystemName.TINYTL, prepare, train_planned)
