"""Reference models in plain PyTorch and the model registry.

    >>> from edgetrain.models import build_model, model_names
    >>> model, example = build_model("mcu-cnn")          # train mode, example batch size 1
    >>> model, example = build_model("my_net.py:make")   # make() -> (model, example_input)

Built-in models (input with batch 1; default classes):
    mcu-cnn           (1, 1, 28, 28)   10   tiny CNN for microcontrollers, 2.4 k params
    mbv2-w0.35        (1, 3, 128, 128) 10   MobileNetV2 width 0.35
    mcunet            (1, 3, 128, 128) 10   MCUNet 'mcunet-5fps' (mcunet-in1) blocks
    resnet18          (1, 3, 224, 224) 10   ImageNet ResNet-18
    resnet18-cifar    (1, 3, 32, 32)   10   ResNet-18, 3x3 stem, no max-pool
    transformer-tiny  (1, 32) int64    10   2-layer encoder, d_model 64
    minilm            (1, 128) int64   2    pretrained MiniLM-L6 (all-MiniLM-L6-v2) + head

Every model uses only the operators the capture and cost stages support (no dropout, fused
attention, in-place ops or concatenation).

The model zoo (`ZOO`: name -> `ZooEntry`, factory, loss and source note) holds the models
on-device-training users bring, written as they write them (GRU, LSTM, MultiheadAttention,
Conv1d, dropout, F.relu6, concatenation, ...).
"""

from edgetrain.models._lora import LoraSpec, add_lora, lora_targets, merge_lora, parse_lora
from edgetrain.models._registry import (
    ModelInfo,
    build_model,
    model_info,
    model_loss,
    model_names,
)
from edgetrain.models._zoo import ZOO, ZooEntry

__all__ = [
    "ZOO",
    "LoraSpec",
    "ModelInfo",
    "ZooEntry",
    "add_lora",
    "build_model",
    "lora_targets",
    "merge_lora",
    "parse_lora",
    "model_info",
    "model_loss",
    "model_names",
]
