"""Checks of a data source against a model's input and task, and the seeded train/val split.

Error classes: a source whose contents are invalid whatever the model (NaN/inf inputs, negative
labels or token ids, no samples) raises `DatasetCorruptError`; data that does not fit THIS model
or task (sample shape, dtype, a label past the model's classes, fractional class labels) and bad
arguments raise `InvalidArgumentError`. Messages name the source, the sample (and CSV row), the
numbers and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgetrain.errors import DatasetCorruptError, InvalidArgumentError

from ._api import resize_for

TASKS = ("classification", "regression", "reconstruction")
SPLITS = ("train", "val", "test")
CHUNK = 65536  # samples converted and checked at a time (bounds the extra memory)


# -- arguments


def _ints(value: object, what: str, length: int | None, form: str) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
        try:
            value = tuple(int(p) for p in parts)
        except ValueError:
            value = None
    if isinstance(value, torch.Size):
        value = tuple(value)
    ok = isinstance(value, (tuple, list)) and len(value) > 0
    ok = ok and all(not isinstance(d, bool) and isinstance(d, int) and d > 0 for d in value)
    if not ok or (length is not None and len(value) != length):
        raise InvalidArgumentError(f"{what} must be {form}, got {value!r}")
    return tuple(value)


def shape_arg(value: object) -> tuple[int, ...]:
    """One sample's shape, e.g. (3, 128), (1, 49, 10), (784,) (no batch dimension)."""
    return _ints(value, "input_shape", None, "one sample's shape: positive integers, e.g. (784,)")


def resize_arg(value: object) -> tuple[int, int] | None:
    """An explicit image size (H, W), or None (no resizing)."""
    if value is None:
        return None
    h, w = _ints(value, "resize", 2, "(H, W): two positive integers, e.g. (49, 10) or '49,10'")
    return h, w


def dtype_arg(value: object) -> torch.dtype:
    """The model's input dtype: a torch dtype or its name ("float32", "int64", ...)."""
    dt = getattr(torch, value, None) if isinstance(value, str) else value
    if not isinstance(dt, torch.dtype) or dt == torch.bool or dt.is_complex:
        raise InvalidArgumentError(
            f"input_dtype must be a real torch dtype such as 'float32' or 'int64' (token ids), "
            f"got {value!r}"
        )
    return dt


def choice_arg(value: object, what: str, valid: Sequence[str]) -> str:
    if value not in valid:
        raise InvalidArgumentError(f"{what} must be one of {', '.join(valid)}, got {value!r}")
    return str(value)


def val_split_arg(value: object) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (0.0 <= float(value) < 1.0):  # type: ignore[arg-type]
        raise InvalidArgumentError(
            f"val_split must be a fraction in [0, 1), e.g. 0.1, got {value!r}"
        )
    return float(value)  # type: ignore[arg-type]


# -- shapes


def reshape_ok(sample: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether samples of shape `sample` may be reshaped to `target` without reordering their
    values: the same shape, the same shape but for size-1 axes, or a flattening / unflattening
    (one of the two is 1-D) of the same number of values."""
    if sample == target:
        return True
    if math.prod(sample) != math.prod(target):
        return False
    if len(sample) <= 1 or len(target) <= 1:
        return True
    return [d for d in sample if d != 1] == [d for d in target if d != 1]


def check_shape(sample: tuple[int, ...], target: tuple[int, ...], where: str) -> None:
    if reshape_ok(sample, target):
        return
    n, m = math.prod(sample), math.prod(target)
    if n != m:
        raise InvalidArgumentError(
            f"the samples of {where} have shape {sample} ({n} values each) but the model takes "
            f"{target} ({m} values): give data of shape {target}, or a model whose input is "
            f"{sample}"
        )
    raise InvalidArgumentError(
        f"the samples of {where} have shape {sample} and the model takes {target}: both hold "
        f"{n} values, but reshaping one to the other would reorder them; store the samples as "
        f"{target} (or flat, {n} values each)"
    )


def fit_images(
    x: torch.Tensor, target: tuple[int, ...], resize: tuple[int, int] | None, where: str
) -> torch.Tensor:
    """Images (N, C, H, W) to (N, *target): resized to `resize` (bilinear) only when given, a
    grey channel repeated to the model's C, then reshaped by `reshape_ok`'s rules. A size that
    differs without `resize` is refused (never resampled silently)."""
    if resize is not None and tuple(x.shape[2:]) != resize:
        x = F.interpolate(x, size=resize, mode="bilinear", align_corners=False)
    if len(target) == 3 and x.shape[1] != target[0]:
        if x.shape[1] != 1:
            raise InvalidArgumentError(
                f"the images of {where} have {x.shape[1]} channels but the model takes "
                f"{target[0]}: images give 1 (grey) or 3 (RGB) channels, and only a grey channel "
                "is repeated to fit; use a model on 1 or 3 channels"
            )
        if tuple(x.shape[2:]) == target[1:]:
            x = resize_for(x, target)  # repeats the grey channel
    sample = tuple(x.shape[1:])
    if not reshape_ok(sample, target):
        hw = f"{target[-2]},{target[-1]}" if len(target) >= 2 else "H,W"
        got = "" if resize is None else f" (after resize={resize})"
        raise InvalidArgumentError(
            f"the images of {where} are {sample}{got} but the model takes {target}: edgetrain "
            f"never resamples images silently; pass --resize {hw} (resize=({hw.replace(',', ', ')}))"
            f" to resize them (bilinear), or use a model whose input is {sample}"
        )
    return x.reshape(len(x), *target)


# -- values


def sample_name(i: int, rows: Sequence[int] | None) -> str:
    return f"sample {i} (row {rows[i]})" if rows is not None else f"sample {i}"


def check_input_dtype(dtype: np.dtype, want: torch.dtype, where: str, text: bool) -> None:
    """Float inputs for a float model (integers are converted); integer inputs (token ids) for an
    integer model — a text (CSV) source may hold them as whole numbers."""
    if want.is_floating_point or dtype.kind in "biu" or text:
        return
    raise InvalidArgumentError(
        f"the inputs of {where} are {dtype} but the model takes {str(want).replace('torch.', '')}"
        " (integer token ids): store the ids as integers (e.g. x.astype('int64')), or use a "
        "model on float inputs"
    )


def convert_inputs(
    part: np.ndarray,
    index: np.ndarray,
    want: torch.dtype,
    where: str,
    rows: Sequence[int] | None,
) -> torch.Tensor:
    """One chunk of samples (file indices `index`) as a tensor of `want`, checked: float inputs
    finite; integer inputs whole numbers >= 0 that fit `want`."""
    flat = part.reshape(len(part), -1)
    if flat.dtype.kind == "f" and flat.size:
        bad = ~np.isfinite(flat)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise DatasetCorruptError(
                f"{sample_name(int(index[i]), rows)} of {where} holds {flat[i, j]} at input value "
                f"{j} of {flat.shape[1]}: inputs must be finite numbers; fix or remove the sample"
            )
    if want.is_floating_point:
        return torch.from_numpy(np.ascontiguousarray(part)).to(want)
    if flat.dtype.kind == "f" and flat.size:
        frac = flat != np.round(flat)
        if frac.any():
            i, j = np.argwhere(frac)[0]
            raise InvalidArgumentError(
                f"{sample_name(int(index[i]), rows)} of {where} holds {flat[i, j]} at input value "
                f"{j}: the model takes integer token ids; give whole numbers"
            )
    if flat.size:
        lo, hi = flat.min(), flat.max()
        info = torch.iinfo(want)
        if lo < 0 or hi > info.max:
            i, j = np.argwhere((flat < 0) | (flat > info.max))[0]
            raise DatasetCorruptError(
                f"{sample_name(int(index[i]), rows)} of {where} holds token id {flat[i, j]} at "
                f"input value {j}: token ids must be integers from 0 to {info.max}"
            )
    return torch.from_numpy(np.ascontiguousarray(part).astype(np.int64)).to(want)


def class_labels(
    y: np.ndarray, where: str, rows: Sequence[int] | None, num_classes: int | None
) -> np.ndarray:
    """Labels (N,) or (N, 1) as int64 class ids >= 0 (and < `num_classes` when given)."""
    if y.ndim > 2 or (y.ndim == 2 and y.shape[1] != 1):
        raise InvalidArgumentError(
            f"the targets of {where} have shape {tuple(y.shape[1:])} per sample: classification "
            "needs one integer class id per sample; for vector targets use task='regression'"
        )
    y = np.asarray(y).reshape(-1)
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
        if len(bad):
            i = int(bad[0])
            raise InvalidArgumentError(
                f"the label of {sample_name(i, rows)} of {where} is {y[i]}: classification needs "
                "integer class ids (0 .. K-1); for real-valued targets use task='regression'"
            )
    labels = y.astype(np.int64)
    negative = np.flatnonzero(labels < 0)
    if len(negative):
        i = int(negative[0])
        raise DatasetCorruptError(
            f"the label of {sample_name(i, rows)} of {where} is {labels[i]}: class labels must "
            "be integers >= 0 (0 .. K-1); relabel the data"
        )
    if num_classes is not None:
        over = np.flatnonzero(labels >= num_classes)
        if len(over):
            i = int(over[0])
            raise InvalidArgumentError(
                f"the label of {sample_name(i, rows)} of {where} is {labels[i]}, but the model "
                f"has {num_classes} classes (0-{num_classes - 1}): relabel the data or build "
                f"the model with at least {int(labels.max()) + 1} classes"
            )
    return labels


def float_targets(y: np.ndarray, where: str, rows: Sequence[int] | None) -> torch.Tensor:
    """Regression / reconstruction targets as float32, finite."""
    flat = np.asarray(y).reshape(len(y), -1)
    if flat.dtype.kind == "f" and flat.size:
        bad = ~np.isfinite(flat)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise DatasetCorruptError(
                f"the target of {sample_name(int(i), rows)} of {where} holds {flat[i, j]} at "
                f"value {j}: targets must be finite numbers; fix or remove the sample"
            )
    return torch.from_numpy(np.ascontiguousarray(y).astype(np.float32))


# -- splits


def split_indices(
    n: int, labels: np.ndarray | None, split: str, val_split: float, seed: int
) -> np.ndarray:
    """The sorted sample indices of `split` ("test" is "val": one held-out part).

    Rule: the samples of each class (for regression/reconstruction: all samples, as one group)
    are permuted with ``torch.randperm`` seeded by `seed` (a fresh generator per class, so a
    class's split does not depend on the others); the first ``floor(val_split * n_c + 0.5)`` of
    each are "val", the rest "train". The same source, `val_split` and `seed` give the same split.
    """
    groups = (
        [np.arange(n)]
        if labels is None
        else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    )
    held = np.zeros(n, dtype=bool)
    for g in groups:
        perm = torch.randperm(len(g), generator=torch.Generator().manual_seed(seed)).numpy()
        held[g[perm[: int(math.floor(val_split * len(g) + 0.5))]]] = True
    return np.flatnonzero(held if split in ("val", "test") else ~held)
