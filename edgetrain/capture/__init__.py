"""Capture a PyTorch model and its loss into edgetrain's IR with torch.export."""

from edgetrain.capture._capture import SUPPORTED_CATEGORIES, SUPPORTED_OPS, capture
from edgetrain.capture._losses import LOSSES, example_target, loss_function, loss_label

__all__ = [
    "LOSSES",
    "SUPPORTED_CATEGORIES",
    "SUPPORTED_OPS",
    "capture",
    "example_target",
    "loss_function",
    "loss_label",
]
