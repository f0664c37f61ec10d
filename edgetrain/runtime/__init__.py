"""The training stage: execute a Plan on PyTorch through its hooks."""

from edgetrain.runtime._loop import TrainResult, train_loop
from edgetrain.runtime._paging import PagingStore
from edgetrain.runtime._runner import PYTORCH_RUNNER
from edgetrain.runtime._train import evaluate, train
from edgetrain.runtime._trainer import NonFiniteLossError, Trainer

TrainReport = TrainResult

__all__ = [
    "PYTORCH_RUNNER",
    "NonFiniteLossError",
    "PagingStore",
    "TrainReport",
    "TrainResult",
    "Trainer",
    "evaluate",
    "train",
    "train_loop",
]
