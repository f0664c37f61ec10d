"""The training stage: execute a Plan on PyTorch through its hooks."""

from edgetrain.runtime._loop import TrainResult, train_loop
from edgetrain.runtime._paging import PagingStore
from edgetrain.runtime._runner import PYTORCH_RUNNER
from edgetrain.runtime._trainer import NonFiniteLossError, Trainer

__all__ = [
    "PYTORCH_RUNNER",
    "NonFiniteLossError",
    "PagingStore",
    "TrainResult",
    "Trainer",
    "train_loop",
]
