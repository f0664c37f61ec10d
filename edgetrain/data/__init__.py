"""Real datasets for on-device training experiments, as torch tensors.

Specs: ``fashion-mnist`` (Debian package `dataset-fashion-mnist`, verified against pinned SHA-256
hashes) and ``digits`` (scikit-learn's bundled 8x8 digits, upsampled to 28x28), each optionally
restricted to some classes: ``fashion-mnist:0-4``, ``fashion-mnist:5-9``, ``fashion-mnist:3,7,9``,
``digits:0-4``. Class-split views keep the original label ids 0-9, so a 10-way head pretrained on
one view can learn the other view's classes on the device.

    from edgetrain.data import load_dataset, stream, resize_for
    train = load_dataset("fashion-mnist:0-4", split="train", limit=6000)  # x (6000, 1, 28, 28)
    s = stream("fashion-mnist:5-9", seed=0)       # x (1, 1, 28, 28), y (1,) per sample
    ...; checkpoint["data"] = s.state_dict()       # later: stream(**checkpoint["data"]) resumes
    resize_for(train.x[:8], (3, 128, 128))        # (8, 3, 128, 128) for MobileNetV2

Images are float32, scaled to [0, 1] and standardised as ``(x - mean) / std`` with
``NORMALIZATION[name]`` (training-split statistics): fashion-mnist (0.2860, 0.3530), digits
(0.3051, 0.3249).
"""

from ._api import (
    NORMALIZATION,
    LabeledData,
    Stream,
    dataset_names,
    load_dataset,
    parse_spec,
    resize_for,
    stream,
)

__all__ = [
    "NORMALIZATION",
    "LabeledData",
    "Stream",
    "dataset_names",
    "load_dataset",
    "parse_spec",
    "resize_for",
    "stream",
]
