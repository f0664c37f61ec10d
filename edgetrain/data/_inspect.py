"""`inspect_data`: what a data source holds and whether it fits a model, as a `DataReport`.

Sources that cannot be read at all (a missing file, a ragged CSV, an image that will not decode,
a missing .npz key) raise the loader's typed errors; every check against the model and task
(sample shape, dtype, labels, targets, non-finite inputs, no samples) is collected into
`DataReport.problems` instead. A built-in set is reported on its training split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from edgetrain.errors import DatasetCorruptError, InvalidArgumentError

from . import _checks as C
from ._api import load_dataset
from ._load import _check_counts, _read, _Request, _request
from ._sources import Raw, Source, classify


@dataclass(frozen=True)
class DataReport:
    """What a source holds, and whether it fits a model (`inspect_data`).

    `sample_shape` / `dtype`: one input sample as stored (images: (C, H, W) float32 in [0, 1]);
    `classes` the sorted label values and `class_counts` their counts (classification only);
    `target_shape` one target's shape (() for a label; None: no targets); `fits` is True when
    no check found a problem (the shape and dtype checks run only when `input_shape` /
    `input_dtype` are given); `problems` the checks' messages.
    """

    source: str
    kind: str
    n_samples: int
    sample_shape: tuple[int, ...]
    dtype: str
    classes: tuple[int, ...]
    class_counts: tuple[tuple[int, int], ...]
    target_shape: tuple[int, ...] | None
    task: str
    input_shape: tuple[int, ...] | None
    input_dtype: str | None
    fits: bool
    problems: tuple[str, ...]
    class_names: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (class counts as ``{"class": count}``)."""
        return {
            "source": self.source,
            "kind": self.kind,
            "n_samples": self.n_samples,
            "sample_shape": list(self.sample_shape),
            "dtype": self.dtype,
            "classes": list(self.classes),
            "class_counts": {str(c): n for c, n in self.class_counts},
            "class_names": list(self.class_names),
            "target_shape": None if self.target_shape is None else list(self.target_shape),
            "task": self.task,
            "input_shape": None if self.input_shape is None else list(self.input_shape),
            "input_dtype": self.input_dtype,
            "fits": self.fits,
            "problems": list(self.problems),
        }


def _attempt(problems: list[str], check: Callable[..., Any], *args: Any) -> Any:
    """`check(*args)`, or None with its typed error's message added to `problems`."""
    try:
        return check(*args)
    except (InvalidArgumentError, DatasetCorruptError) as e:
        problems.append(str(e))
        return None


def _dtype_name(dt: torch.dtype | None) -> str | None:
    return None if dt is None else str(dt).replace("torch.", "")


def _builtin_report(src: Source, req: _Request) -> DataReport:
    data = load_dataset(src.text, split="train")
    problems: list[str] = []
    if req.input_shape is not None:
        _attempt(problems, lambda: C.fit_images(data.x[:1], req.input_shape, req.resize, src.where))
    if req.dtype is not None and not req.dtype.is_floating_point:
        problems.append(
            f"{src.where} holds images (float) but the model takes {_dtype_name(req.dtype)} inputs"
        )
    top = max(data.classes)
    if req.num_classes is not None and top >= req.num_classes:
        problems.append(
            f"{src.where} has class ids up to {top}, but the model has {req.num_classes} classes"
        )
    if req.task == "regression":
        problems.append(f"{src.where} holds class labels, not regression targets")
    counts = data.class_counts()
    return DataReport(
        src.text,
        "builtin",
        len(data),
        tuple(data.x.shape[1:]),
        str(data.x.dtype).replace("torch.", ""),
        data.classes,
        tuple(counts.items()),
        (),
        req.task,
        req.input_shape,
        _dtype_name(req.dtype),
        not problems,
        tuple(problems),
    )


def _check_inputs(raw: Raw, src: Source, req: _Request, problems: list[str]) -> None:
    """The shape/dtype checks (when asked for) and every sample's values, chunk by chunk."""
    if req.input_shape is not None:
        if raw.image:
            _attempt(
                problems,
                lambda: C.fit_images(torch.from_numpy(raw.x[:1]), req.input_shape, None, src.where),
            )
        else:
            _attempt(
                problems, lambda: C.check_shape(tuple(raw.x.shape[1:]), req.input_shape, src.where)
            )
    if req.dtype is not None:
        _attempt(
            problems,
            lambda: C.check_input_dtype(raw.x.dtype, req.dtype, src.where, src.kind == "csv"),
        )
    want = req.dtype if req.dtype is not None else torch.float32
    if not want.is_floating_point and raw.x.dtype.kind == "f" and src.kind != "csv":
        want = torch.float32  # already reported as a dtype problem; still check the values
    for k in range(0, len(raw.x), C.CHUNK):
        sel = np.arange(k, min(k + C.CHUNK, len(raw.x)))
        if (
            _attempt(
                problems, C.convert_inputs, np.asarray(raw.x[sel]), sel, want, src.where, raw.rows
            )
            is None
        ):
            break


def _targets_report(
    raw: Raw, src: Source, req: _Request, problems: list[str]
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """The classes and their counts (classification), after checking the targets."""
    if raw.y is None:
        return (), ()
    y = np.asarray(raw.y)
    if req.task != "classification":
        if req.task == "regression" or y.ndim > 1:
            _attempt(problems, lambda: C.float_targets(y, src.where, raw.rows))
        return (), ()
    labels = _attempt(problems, C.class_labels, y, src.where, raw.rows, None)
    if labels is None:
        return (), ()
    if req.num_classes is not None:  # reported apart, so the counts still show
        _attempt(problems, C.class_labels, labels, src.where, raw.rows, req.num_classes)
    values, counts = np.unique(labels, return_counts=True)
    return tuple(int(v) for v in values), tuple((int(v), int(n)) for v, n in zip(values, counts))


def inspect_data(
    source: Any,
    *,
    input_shape: Any = None,
    input_dtype: Any = None,
    label: str | int | None = None,
    x_key: str = "x",
    y_key: str = "y",
    resize: Any = None,
    task: str = "classification",
    num_classes: int | None = None,
) -> DataReport:
    """Report what `source` holds (every sample, before any split) and whether it fits a model
    on `input_shape` / `input_dtype` (each check runs only when its argument is given)."""
    req = _request(input_shape, input_dtype, task, label, x_key, y_key, resize, num_classes)
    src = classify(source)
    if src.kind == "builtin":
        return _builtin_report(src, req)
    raw = _read(src, req)
    problems: list[str] = []
    _attempt(problems, lambda: _check_counts(raw, src, req.task))
    if len(raw.x):
        _check_inputs(raw, src, req, problems)
    classes, counts = _targets_report(raw, src, req, problems)
    return DataReport(
        src.text,
        src.kind,
        len(raw.x),
        tuple(raw.x.shape[1:]),
        str(raw.x.dtype),
        classes,
        counts,
        None if raw.y is None else tuple(raw.y.shape[1:]),
        req.task,
        req.input_shape,
        _dtype_name(req.dtype),
        not problems,
        tuple(problems),
        raw.class_names,
    )
