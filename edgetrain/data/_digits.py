"""scikit-learn's bundled handwritten digits (`load_digits`: 1797 images, 8x8, values 0..16).

Images are scaled to [0, 1] (divided by 16) and upsampled to 28x28 with bilinear interpolation
(``align_corners=False``) so every edgetrain dataset has the same (1, 28, 28) geometry and a model
built for Fashion-MNIST runs on digits unchanged.

Train/test split (deterministic, stratified, no RNG): within each class, in the file's order, every
fifth sample (positions 4, 9, 14, ...) is a test sample; the rest are training samples. That gives
1442 training and 355 test images, 35 or 36 test images per class.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from edgetrain.errors import DatasetCorruptError, DatasetMissingError

from ._idx import check_labels

NUM_CLASSES = 10
N_SAMPLES = 1797
TEST_EVERY = 5

_MEMO: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _load_all() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DatasetMissingError(
            f"the digits dataset comes with scikit-learn, which cannot be imported ({e}); "
            f"install it with `pip install scikit-learn`"
        ) from e
    try:
        bunch = load_digits()
    except OSError as e:
        raise DatasetMissingError(
            f"scikit-learn's bundled digits data cannot be read ({e}); reinstall it with "
            f"`pip install --force-reinstall scikit-learn`"
        ) from e
    images = np.asarray(bunch.images)
    labels = np.asarray(bunch.target)
    where = "sklearn.datasets.load_digits()"
    if images.shape != (N_SAMPLES, 8, 8) or labels.shape != (N_SAMPLES,):
        raise DatasetCorruptError(
            f"{where}: images {images.shape} and labels {labels.shape}, expected "
            f"({N_SAMPLES}, 8, 8) and ({N_SAMPLES},); reinstall scikit-learn"
        )
    if images.min() < 0 or images.max() > 16 or not np.all(images == np.round(images)):
        raise DatasetCorruptError(
            f"{where}: pixel values span {images.min()}..{images.max()}, expected integers "
            f"0..16; reinstall scikit-learn"
        )
    if labels.min() < 0:
        raise DatasetCorruptError(f"{where}: negative label {labels.min()}")
    check_labels(labels, name=where, num_classes=NUM_CLASSES)
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    y = torch.from_numpy(labels.astype(np.int64))
    test = np.zeros(N_SAMPLES, dtype=bool)
    for c in range(NUM_CLASSES):
        test[np.flatnonzero(labels == c)[TEST_EVERY - 1 :: TEST_EVERY]] = True
    return x, y, test


def load_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] of shape (N, 1, 28, 28) float32 and int64 labels (N,), memoised.

    The memoised tensors are shared; callers must copy before modifying them in place.
    """
    if split not in _MEMO:
        x, y, test = _load_all()
        mask = torch.from_numpy(test)
        _MEMO["train"] = (x[~mask].contiguous(), y[~mask].contiguous())
        _MEMO["test"] = (x[mask].contiguous(), y[mask].contiguous())
    return _MEMO[split]
