"""`load_data`: any source (built-in spec, npz, npy, csv, image folder, Python function) as a
`LabeledData` that fits a model's input; `inspect_data`: what a source holds and whether it fits.

Splits: a built-in set keeps its own train/test split ("val" is its test split). A user's source
is split by `_checks.split_indices`: per class, a seeded permutation holds out
``floor(val_split * n_c + 0.5)`` samples as "val"; "test" returns the same held-out samples (a
user's source has no separate test part: give a separate test file and load its "train" part with
``val_split=0`` for one). `limit` then keeps N samples of the split (per class balanced for
classification, as `load_dataset` does; a seeded pick for other tasks), in file order.

Streaming: .npy files are memory-mapped (``np.load(mmap_mode="r")``): the input checks and the
conversion to tensors run CHUNK samples at a time, and only the requested split (and limit) is
copied into memory; targets/labels are read whole. .npz archives, CSV tables, image folders and
Python datasets are read whole into memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from edgetrain.errors import DatasetCorruptError, InvalidArgumentError

from . import _checks as C
from ._api import LabeledData, _check_int, _select, load_dataset
from ._sources import (
    Raw,
    Source,
    classify,
    read_images,
    read_npy,
    read_npz,
    read_python,
    read_table,
)


@dataclass(frozen=True)
class _Request:
    input_shape: tuple[int, ...] | None
    dtype: torch.dtype | None
    task: str
    label: str | int | None
    x_key: str
    y_key: str
    resize: tuple[int, int] | None
    num_classes: int | None


def _request(
    input_shape: Any,
    input_dtype: Any,
    task: Any,
    label: Any,
    x_key: Any,
    y_key: Any,
    resize: Any,
    num_classes: Any,
) -> _Request:
    for what, key in (("x_key", x_key), ("y_key", y_key)):
        if not isinstance(key, str) or not key:
            raise InvalidArgumentError(f"{what} must be an array name such as 'x', got {key!r}")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (str, int))):
        raise InvalidArgumentError(f"label must be a column name or index, got {label!r}")
    if num_classes is not None:
        _check_int(num_classes, "num_classes", 1)
    return _Request(
        None if input_shape is None else C.shape_arg(input_shape),
        None if input_dtype is None else C.dtype_arg(input_dtype),
        C.choice_arg(task, "task", C.TASKS),
        label,
        x_key,
        y_key,
        C.resize_arg(resize),
        num_classes,
    )


def _read(src: Source, req: _Request) -> Raw:
    if req.resize is not None and src.kind not in ("images", "builtin"):
        raise InvalidArgumentError(
            f"resize={req.resize} applies to images only; {src.where} is a {src.kind} source: "
            "drop --resize"
        )
    need_y = req.task != "reconstruction"
    if src.kind == "npz":
        return read_npz(src, req.x_key, req.y_key, need_y)
    if src.kind == "npy":
        return read_npy(src, need_y)
    if src.kind == "csv":
        return read_table(src, req.label, need_y)
    if src.kind == "images":
        shape = req.input_shape
        channels = (
            shape[0] if shape is not None and len(shape) == 3 and shape[0] in (1, 3) else None
        )
        return read_images(src, channels, req.resize)
    return read_python(src)


def _check_counts(raw: Raw, src: Source, task: str) -> None:
    n = len(raw.x)
    if n == 0:
        raise DatasetCorruptError(f"{src.where} holds no samples: add at least one sample")
    if raw.y is None and task != "reconstruction":
        raise DatasetCorruptError(
            f"{src.where} holds inputs but no targets, and task={task!r} needs them: add targets "
            "(or use task='reconstruction')"
        )
    if raw.y is not None and len(raw.y) != n:
        raise DatasetCorruptError(
            f"{src.where} holds {n} inputs but {len(raw.y)} targets: give one target per sample"
        )


def _fit_inputs(raw: Raw, src: Source, req: _Request) -> np.ndarray:
    """The inputs, shaped (N, *input_shape) for images (after the checks of `fit_images`);
    other sources' shape is checked and reshaped later, chunk by chunk."""
    assert req.input_shape is not None and req.dtype is not None
    if raw.image:
        if not req.dtype.is_floating_point:
            raise InvalidArgumentError(
                f"{src.where} holds images (float) but the model takes "
                f"{str(req.dtype).replace('torch.', '')} inputs: use a model on float inputs"
            )
        return C.fit_images(torch.from_numpy(raw.x), req.input_shape, None, src.where).numpy()
    C.check_shape(tuple(raw.x.shape[1:]), req.input_shape, src.where)
    C.check_input_dtype(raw.x.dtype, req.dtype, src.where, text=src.kind == "csv")
    return raw.x


def _limit(
    idx: np.ndarray, labels: np.ndarray | None, limit: int, seed: int, what: str
) -> np.ndarray:
    if labels is not None:
        sub = torch.from_numpy(labels[idx])
        keep = _select(sub, sorted(set(sub.tolist())), limit, seed, what)
        return idx[keep.numpy()]
    if limit > len(idx):
        raise InvalidArgumentError(f"limit={limit} exceeds the {len(idx)} samples of {what}")
    pick = torch.randperm(len(idx), generator=torch.Generator().manual_seed(seed))[:limit]
    return idx[np.sort(pick.numpy())]


def _gather(x: np.ndarray, idx: np.ndarray, req: _Request, where: str, rows: Any) -> torch.Tensor:
    """x[idx] as (len(idx), *input_shape) tensor of the model's dtype, CHUNK samples at a time
    (a memory-mapped x is read only where selected)."""
    assert req.input_shape is not None and req.dtype is not None
    out = torch.empty((len(idx), *req.input_shape), dtype=req.dtype)
    for k in range(0, len(idx), C.CHUNK):
        sel = idx[k : k + C.CHUNK]
        part = np.asarray(x[sel])
        out[k : k + len(sel)] = C.convert_inputs(part, sel, req.dtype, where, rows).reshape(
            len(sel), *req.input_shape
        )
    return out


def _targets(raw: Raw, x: torch.Tensor, idx: np.ndarray, req: _Request, where: str) -> torch.Tensor:
    """Regression / reconstruction targets of the selected samples."""
    y = raw.y
    assert req.input_shape is not None
    if req.task == "reconstruction":
        if y is None or (y.ndim == 1 and math.prod(req.input_shape) != 1):
            return x  # no target (or class labels beside the inputs): the input is the target
        if not C.reshape_ok(tuple(y.shape[1:]), req.input_shape):
            raise InvalidArgumentError(
                f"the reconstruction targets of {where} have shape {tuple(y.shape[1:])} per "
                f"sample but the model's input is {req.input_shape}: give targets of the input's "
                "shape, or none (the input is then the target)"
            )
        rows = None if raw.rows is None else [raw.rows[int(i)] for i in idx]
        return C.float_targets(np.asarray(y[idx]), where, rows).reshape(len(idx), *req.input_shape)
    assert y is not None
    rows = None if raw.rows is None else [raw.rows[int(i)] for i in idx]
    return C.float_targets(np.asarray(y[idx]), where, rows)


def _load_builtin(
    src: Source, req: _Request, split: str, limit: int | None, seed: int
) -> LabeledData:
    assert req.input_shape is not None and req.dtype is not None
    if req.task == "regression":
        raise InvalidArgumentError(
            f"{src.where} holds class labels, not regression targets: use task='classification'"
            " or 'reconstruction'"
        )
    if not req.dtype.is_floating_point:
        raise InvalidArgumentError(
            f"{src.where} holds images (float) but the model takes "
            f"{str(req.dtype).replace('torch.', '')} inputs: use a model on float inputs"
        )
    data = load_dataset(
        src.text, split="train" if split == "train" else "test", limit=limit, seed=seed
    )
    if (
        req.num_classes is not None
        and req.task == "classification"
        and max(data.classes) >= req.num_classes
    ):
        raise InvalidArgumentError(
            f"{src.where} has class ids up to {max(data.classes)}, but the model has "
            f"{req.num_classes} classes (0-{req.num_classes - 1}): build the model with at least "
            f"{max(data.classes) + 1} classes (labels keep their original ids 0-9)"
        )
    x = C.fit_images(data.x, req.input_shape, req.resize, src.where).to(req.dtype).contiguous()
    y = x if req.task == "reconstruction" else data.y
    return replace(data, x=x, y=y, split=split, task=req.task)


def load_data(
    source: Any,
    *,
    input_shape: Any,
    input_dtype: Any = "float32",
    split: str = "train",
    val_split: float = 0.1,
    seed: int = 0,
    limit: int | None = None,
    label: str | int | None = None,
    x_key: str = "x",
    y_key: str = "y",
    resize: Any = None,
    task: str = "classification",
    num_classes: int | None = None,
) -> LabeledData:
    """Load `source` (see `edgetrain.data`'s module doc for the forms) for a model whose ONE
    sample has shape `input_shape` (no batch dimension) and dtype `input_dtype`.

    Returns `LabeledData` with x (N, *input_shape) of `input_dtype` and y: int64 class ids
    (classification), float32 targets (regression), or the targets / x itself
    (reconstruction). `split` is "train", "val" or "test" (see the module doc for the rule);
    `limit` keeps N samples of it; `label` picks a CSV's label column; `x_key` / `y_key` name an
    .npz's arrays; `resize` = (H, W) resizes images (never done without it); `num_classes`, when
    given, bounds the class labels. Raises `InvalidArgumentError` (bad argument, data that does
    not fit the model), `DatasetMissingError` (no such file), `DatasetCorruptError` (malformed
    or invalid data); every message names the source, the sample or row, and the numbers.
    """
    req = _request(input_shape, input_dtype, task, label, x_key, y_key, resize, num_classes)
    if req.input_shape is None:
        raise InvalidArgumentError("input_shape is required: one sample's shape, e.g. (784,)")
    split = C.choice_arg(split, "split", C.SPLITS)
    val = C.val_split_arg(val_split)
    _check_int(seed, "seed", 0)
    if limit is not None:
        _check_int(limit, "limit", 1)
    src = classify(source)
    if src.kind == "builtin":
        return _load_builtin(src, req, split, limit, seed)
    raw = _read(src, req)
    _check_counts(raw, src, req.task)
    x_src = _fit_inputs(raw, src, req)
    labels = None
    if req.task == "classification":
        assert raw.y is not None
        labels = C.class_labels(np.asarray(raw.y), src.where, raw.rows, req.num_classes)
    idx = C.split_indices(len(raw.x), labels, split, val, seed)
    what = f"{src.where} ({split}: {len(idx)} of {len(raw.x)} samples with val_split={val})"
    if len(idx) == 0:
        raise DatasetCorruptError(
            f"split {split!r} of {what} holds no samples: "
            + ("set val_split > 0 (e.g. 0.1)" if val == 0 else "raise val_split or add samples")
        )
    if limit is not None:
        idx = _limit(idx, labels, limit, seed, what)
    x = _gather(x_src, idx, req, src.where, raw.rows)
    if labels is not None:
        y = torch.from_numpy(labels[idx])
        present = tuple(int(c) for c in np.unique(labels))
        n_cls = req.num_classes or max(len(raw.class_names), present[-1] + 1)
        return LabeledData(
            x, y, src.text, present, split, n_cls, req.task, src.text, raw.class_names
        )
    y = _targets(raw, x, idx, req, src.where)
    return LabeledData(x, y, src.text, (), split, 0, req.task, src.text, raw.class_names)
