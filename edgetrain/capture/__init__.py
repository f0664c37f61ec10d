"""Capture a PyTorch model into edgetrain's IR with torch.export."""

from edgetrain.capture._capture import SUPPORTED_OPS, capture

__all__ = ["SUPPORTED_OPS", "capture"]
