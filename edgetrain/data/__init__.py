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

The user's own data: `load_data` loads any source for a model whose ONE sample has shape
`input_shape` (no batch dimension), and `inspect_data` reports what a source holds:

    from edgetrain.data import inspect_data, load_data
    train = load_data("runs/kws.npz", input_shape=(1, 49, 10))            # x (N, 1, 49, 10)
    val = load_data("runs/kws.npz", input_shape=(1, 49, 10), split="val")  # the held-out 10 %
    load_data("fashion-mnist:5-9", input_shape=(1, 49, 10), resize=(49, 10))
    inspect_data("table.csv", input_shape=(32,)).to_dict()

Sources, chosen by their form: a built-in spec (as above); ``DATA.npz`` (arrays `x_key`, `y_key`,
default ``x`` and ``y``); ``X.npy,Y.npy`` (memory-mapped; ``X.npy`` alone for reconstruction);
``TABLE.csv`` (header optional; label column `label` by name or index, default a column named
``label``, else the last); a folder with one sub-folder of images per class (sorted names are the
class ids; Pillow; converted to the model's channels; resized only with `resize`); and
``FILE.py:make_dataset`` (a function of no arguments returning a Dataset of ``(x, y)`` samples or
an iterable of ``(x, y)`` batches). Samples are reshaped to `input_shape` only when no value
moves (same shape but for size-1 axes, or a flattening of the same number of values); images
are never resampled to another height/width unless `resize` = (H, W) is given. Tasks:
"classification" (int64 labels >= 0), "regression" (float targets), "reconstruction" (the
target is the input unless the source has targets of the input's shape).

Splits of a user's source: per class, a `seed`-ed permutation holds out ``val_split`` of the
samples as "val" ("test" is the same part); built-in sets keep their own train/test ("val" is
their test split). Streaming: .npy inputs are memory-mapped and converted chunk by chunk, only
the requested split is copied into memory; other sources are read whole.
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
from ._inspect import DataReport, inspect_data
from ._load import load_data

__all__ = [
    "NORMALIZATION",
    "DataReport",
    "LabeledData",
    "Stream",
    "dataset_names",
    "inspect_data",
    "load_data",
    "load_dataset",
    "parse_spec",
    "resize_for",
    "stream",
]
