"""Losses capture accepts: a name or a callable `loss_fn(output, target)`, and the example
target each one trains against."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F

from edgetrain import validate
from edgetrain.errors import InvalidArgumentError, UnsupportedOpError

LOSSES: dict[str, Callable] = {
    "cross-entropy": F.cross_entropy,
    "mse": F.mse_loss,
    "bce": F.binary_cross_entropy_with_logits,
    "l1": F.l1_loss,
    "smooth-l1": F.smooth_l1_loss,
}


assert tuple(LOSSES) == validate.LOSS_NAMES  # one list of names, torch-free for the CLI


def loss_function(loss) -> Callable:
    """The PyTorch function for a loss name, or the user's callable itself."""
    if callable(loss):
        return loss
    name = validate.loss_name(loss)
    if name.startswith(validate.CUSTOM_LOSS_PREFIX):
        raise InvalidArgumentError(
            f"loss {name!r} is a Python callable recorded by name; pass the function itself "
            "(loss_fn=...) — edgetrain never imports code named in a file"
        )
    return LOSSES[name]


def loss_label(loss) -> str:
    """How a plan records `loss`: its name, or `custom:<module.qualname>` for a callable."""
    if callable(loss):
        for name, fn in LOSSES.items():
            if loss is fn:
                return name
        qual = getattr(loss, "__qualname__", None) or type(loss).__qualname__
        label = f"{getattr(loss, '__module__', None) or '?'}.{qual}"
        label = "".join(c if c.isprintable() else "?" for c in label)[:200]
        return validate.CUSTOM_LOSS_PREFIX + label
    name = validate.loss_name(loss)
    loss_function(name)  # refuses a custom:... string
    return name


def loss_key(loss) -> str:
    """What the captured graph depends on in the loss (for the capture cache)."""
    if isinstance(loss, str):
        return loss.lower()
    try:
        src = inspect.getsource(loss)
    except (OSError, TypeError):
        src = "<no source>"
    return f"{getattr(loss, '__module__', '')}.{getattr(loss, '__qualname__', repr(loss))}:{src}"


def example_target(
    loss,
    output: torch.Tensor,
    num_classes: int | None,
    target_example: torch.Tensor | None,
) -> torch.Tensor:
    """A deterministic target for `output` (batch first): class indices for cross-entropy, a
    tensor of the output's shape (0/1 values) for mse/bce/l1, `target_example` repeated to
    the batch when given (it has batch size 1)."""
    batch = int(output.shape[0])
    if target_example is not None:
        if not isinstance(target_example, torch.Tensor) or target_example.dim() == 0:
            raise InvalidArgumentError(
                "target_example must be a tensor with a leading batch dimension of 1, got "
                f"{type(target_example).__name__}"
            )
        if target_example.shape[0] != 1:
            raise InvalidArgumentError(
                f"target_example must have batch size 1, got shape {tuple(target_example.shape)}"
            )
        return target_example.expand(batch, *target_example.shape[1:]).contiguous()
    if isinstance(loss, str) and loss.strip().lower() == "cross-entropy":
        if output.dim() != 2:
            raise UnsupportedOpError(
                f"model output has shape {tuple(output.shape)}; cross-entropy trains "
                "classifiers whose output is (batch, classes) — add a pooling + linear head, "
                "or choose a loss for this output (loss='mse', 'bce', 'l1' or a callable)"
            )
        classes = num_classes or int(output.shape[1])
        return torch.arange(batch, dtype=torch.long) % classes
    n = output.numel()
    return (torch.arange(n) % 2).to(output.dtype).reshape(output.shape)
