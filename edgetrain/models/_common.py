"""Shared building blocks of the reference models: deterministic initialisation, conv-BN-act.

Every reference model is restricted to a small set of ATen operators (see `tests/test_models.py`,
`ALLOWED_OPS`) so that the capture and cost stages can handle it: no dropout, no in-place
activations, no fused attention, no concatenation or splitting.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

SEED = 0
"""Seed of every built-in model's initialisation and example input."""


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round `v` to the nearest multiple of `divisor`, never going down by more than 10 %.

    The rounding rule of the MobileNet family (TensorFlow's reference implementation).
    """
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def seeded(build: Callable[[], nn.Module], seed: int = SEED) -> nn.Module:
    """Run `build()` under a private, fixed RNG state; the caller's global RNG is untouched.

    Module constructors draw their default initialisation from the global generator, so the
    construction itself and any re-initialisation happen inside `fork_rng` after seeding.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def example_image(shape: tuple[int, ...], seed: int = SEED) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


def init_cnn(model: nn.Module, *, linear_std: float | None = 0.01) -> None:
    """torchvision-style initialisation of a convolutional network.

    Convolutions: Kaiming-normal (fan-out, ReLU gain), zero bias. BatchNorm: weight 1, bias 0.
    Linear: normal(0, `linear_std`) with zero bias, or PyTorch's default when `linear_std` is None.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def init_bert(model: nn.Module, std: float = 0.02) -> None:
    """BERT's initialisation: normal(0, std) for linear and embedding weights, LayerNorm 1/0."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ConvBNAct(nn.Sequential):
    """Conv2d (no bias, 'same' padding for odd kernels) -> BatchNorm2d -> optional activation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                cin, cout, kernel, stride, padding=(kernel - 1) // 2, groups=groups, bias=False
            ),
            nn.BatchNorm2d(cout),
        ]
        if act is not None:
            layers.append(act(inplace=False))
        super().__init__(*layers)


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def attention_scale(head_dim: int) -> float:
    """1/sqrt(head_dim) as a Python float, so the graph holds a multiply by a scalar."""
    return 1.0 / math.sqrt(head_dim)
