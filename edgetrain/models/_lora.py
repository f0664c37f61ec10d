"""Low-rank adapters (LoRA; Hu et al., ICLR 2022) on linear and 1x1-convolution layers.

NOTE [ LoRA adapters ]
    An adapted layer keeps its own parameters and names (`q.weight`, `q.bias`, frozen) and
    gains two: `q.lora_a` (rank x in) and `q.lora_b` (out x rank, zero at the start, so the
    adapted model computes what the base did). A forward hook (a removable handle) adds the
    low-rank path to the layer's output:
        linear:  y + F.linear(F.linear(x, A), B)
        1x1 conv: y + conv(conv(x, A[..., None, None], stride), B[..., None, None])
    so capture (torch.export traces module hooks) sees the adapter as ordinary operators and
    the cost model costs it: the frozen base saves nothing for itself (a frozen product keeps
    no operand; NOTE [ Lean saved tensors ]), the adapter saves its input (for A's gradient)
    and its rank-r intermediate (for B's). `merge_lora` folds B @ A into the weight and
    removes the adapters: the model a plan trained is exported and saved as a plain model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgetrain.errors import InvalidArgumentError

__all__ = ["LoraSpec", "add_lora", "lora_targets", "merge_lora", "parse_lora"]


@dataclass(frozen=True, slots=True)
class LoraSpec:
    """`lora:R[:MODULES]`: the rank and the module-name fragments to adapt (empty: every
    linear and 1x1 convolution but the last linear layer, the task's head)."""

    rank: int
    modules: tuple[str, ...] = ()


def parse_lora(policy: str) -> LoraSpec:
    """`lora:R` or `lora:R:name,name` -> LoraSpec; `InvalidArgumentError` naming the form."""
    form = "lora:R or lora:R:MODULES (R a positive rank, MODULES comma-separated module names)"
    parts = policy.strip().split(":", 2)
    if len(parts) < 2 or parts[0] != "lora" or not parts[1].strip().isdigit():
        raise InvalidArgumentError(f"bad policy {policy!r}: expected {form}, e.g. lora:8")
    rank = int(parts[1])
    if not 1 <= rank <= 4096:
        raise InvalidArgumentError(f"bad policy {policy!r}: rank {rank} must be in 1..4096")
    mods: tuple[str, ...] = ()
    if len(parts) == 3:
        mods = tuple(m.strip() for m in parts[2].split(","))
        if not parts[2].strip() or any(not m or " " in m or not m.isprintable() for m in mods):
            raise InvalidArgumentError(f"bad policy {policy!r}: an empty or malformed module name")
    return LoraSpec(rank, mods)


def _adaptable(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return (
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and m.groups == 1
        and m.padding in ((0, 0), "valid")
        and m.dilation == (1, 1)
    )


def lora_targets(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Module paths `spec` adapts; `InvalidArgumentError` when none (naming some candidates)."""
    cands = [n for n, m in model.named_modules() if _adaptable(m)]
    if spec.modules:
        chosen = [n for n in cands if any(f == n or n.endswith("." + f) for f in spec.modules)]
    else:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
        chosen = [n for n in cands if n != head]
    if not chosen:
        raise InvalidArgumentError(
            f"policy lora:{spec.rank}{':' + ','.join(spec.modules) if spec.modules else ''} "
            "adapts no module: LoRA goes on nn.Linear and 1x1 nn.Conv2d layers; candidates: "
            f"{', '.join(cands[:6]) or 'none'}"
        )
    return chosen


def _lora_hook(module: nn.Module, args, output):
    x = args[0]
    a, b = module.lora_a, module.lora_b
    if isinstance(module, nn.Linear):
        return output + F.linear(F.linear(x, a), b)
    h = F.conv2d(x, a[:, :, None, None], stride=module.stride)
    return output + F.conv2d(h, b[:, :, None, None])


def add_lora(model: nn.Module, spec: LoraSpec, *, seed: int = 0) -> list:
    """Adapt `model` in place (NOTE [ LoRA adapters ]); returns the hooks' removable handles.
    A is Kaiming-uniform from `seed`, B is zero."""
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    handles = []
    for path in lora_targets(model, spec):
        m = modules[path]
        if hasattr(m, "lora_a"):
            raise InvalidArgumentError(f"module {path!r} already has a LoRA adapter")
        n_in = m.in_features if isinstance(m, nn.Linear) else m.in_channels
        n_out = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        w = m.weight
        bound = 1.0 / math.sqrt(n_in)
        a = (torch.rand(spec.rank, n_in, generator=gen) * 2 - 1) * bound
        m.register_parameter("lora_a", nn.Parameter(a.to(w.dtype)))
        m.register_parameter("lora_b", nn.Parameter(torch.zeros(n_out, spec.rank, dtype=w.dtype)))
        handles.append(m.register_forward_hook(_lora_hook))
    return handles


def merge_lora(model: nn.Module, handles=None) -> int:
    """Fold each adapter into its layer's weight (W += B @ A) and remove it; returns how many.
    `handles`: the hooks `add_lora` returned (found on the modules when None)."""
    merged = 0
    for m in model.modules():
        if not hasattr(m, "lora_a"):
            continue
        with torch.no_grad():
            delta = m.lora_b @ m.lora_a
            m.weight += delta.view_as(m.weight) if m.weight.dim() == 4 else delta
        del m.lora_a, m.lora_b
        for k, hook in list(m._forward_hooks.items()):
            if hook is _lora_hook:
                del m._forward_hooks[k]
        merged += 1
    for h in handles or ():
        h.remove()
    return merged
