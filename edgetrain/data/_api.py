"""Dataset specs, `LabeledData`, the streaming view and input resizing."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F

from edgetrain.errors import InvalidArgumentError

from . import _digits, _fashion

SPLITS = ("train", "test")
NUM_CLASSES = 10

# Per-dataset (mean, std) of the training split's pixels after scaling to [0, 1] (for digits:
# after upsampling to 28x28), rounded to 4 digits. Images are returned as (pixel - mean) / std.
NORMALIZATION: "MappingProxyType[str, tuple[float, float]]" = MappingProxyType(
    {
        "fashion-mnist": (0.2860, 0.3530),
        "digits": (0.3051, 0.3249),
    }
)

VALID_SPECS = (
    "fashion-mnist",
    "fashion-mnist:0-4",
    "fashion-mnist:5-9",
    "fashion-mnist:3,7,9",
    "digits",
    "digits:0-4",
)


def dataset_names() -> tuple[str, ...]:
    """The base dataset names a spec may start with."""
    return tuple(NORMALIZATION)


def _spec_error(spec: object, why: str) -> InvalidArgumentError:
    shown = repr(spec) if len(repr(spec)) <= 80 else repr(spec)[:77] + "..."
    return InvalidArgumentError(
        f"invalid dataset spec {shown}: {why}. Valid forms: NAME or NAME:CLASSES with NAME one "
        f"of {', '.join(dataset_names())} and CLASSES a comma-separated list of class ids "
        f"0-{NUM_CLASSES - 1} or inclusive ranges, e.g. {', '.join(VALID_SPECS)}"
    )


# ASCII digits only (`\d` would take other scripts' digits), at most 9 of them (Python refuses
# to parse integers of thousands of digits with a ValueError of its own).
_ITEM = re.compile(r"([0-9]{1,9})(?:-([0-9]{1,9}))?")


def parse_spec(spec: str) -> tuple[str, tuple[int, ...]]:
    """``"fashion-mnist:0-4"`` -> ``("fashion-mnist", (0, 1, 2, 3, 4))``."""
    if not isinstance(spec, str):
        raise _spec_error(spec, f"expected a string, got {type(spec).__name__}")
    name, sep, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in NORMALIZATION:
        raise _spec_error(spec, f"unknown dataset {name!r}")
    if not sep:
        return name, tuple(range(NUM_CLASSES))
    classes: set[int] = set()
    for item in rest.split(","):
        m = _ITEM.fullmatch(item.strip())
        if not m:
            shown = item.strip() if len(item.strip()) <= 40 else item.strip()[:37] + "..."
            raise _spec_error(spec, f"cannot read the class list item {shown!r}")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise _spec_error(spec, f"empty range {lo}-{hi}")
        if hi >= NUM_CLASSES:
            raise _spec_error(spec, f"class {hi} is outside 0-{NUM_CLASSES - 1}")
        classes.update(range(lo, hi + 1))
    return name, tuple(sorted(classes))


def format_spec(name: str, classes: Sequence[int]) -> str:
    """Canonical spec: ``format_spec("digits", (0, 1, 2, 7))`` -> ``"digits:0-2,7"``."""
    cs = sorted(set(classes))
    if cs == list(range(NUM_CLASSES)):
        return name
    parts: list[str] = []
    i = 0
    while i < len(cs):
        j = i
        while j + 1 < len(cs) and cs[j + 1] == cs[j] + 1:
            j += 1
        parts.append(str(cs[i]) if i == j else f"{cs[i]}-{cs[j]}")
        i = j + 1
    return f"{name}:{','.join(parts)}"


def _check_int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_split(split: Any) -> str:
    if split not in SPLITS:
        raise InvalidArgumentError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _select(
    labels: torch.Tensor, classes: Sequence[int], limit: int | None, seed: int, what: str
) -> torch.Tensor:
    """Sorted indices of the samples whose label is in `classes`, cut to `limit` if given.

    With a limit, each class's samples are shuffled with a generator seeded by ``16 * seed +
    class`` (so a class's pick does not depend on which other classes are kept), the classes are
    interleaved round-robin (rank 0 of every class, then rank 1, ...), and the first `limit` are
    kept: class counts differ by at most one while every class has samples left. The result is in
    the dataset's original order and nested: a smaller limit selects a subset of a larger one.
    """
    keep = torch.isin(labels, torch.tensor(list(classes), dtype=labels.dtype))
    idx = keep.nonzero().squeeze(1)
    if limit is None:
        return idx
    if limit > len(idx):
        raise InvalidArgumentError(f"limit={limit} exceeds the {len(idx)} samples of {what}")
    sub = labels[idx]
    key = torch.empty(len(idx), dtype=torch.int64)
    stride = max(16, max(classes, default=0) + 1)  # 16 for the built-ins: the same picks as ever
    for c in classes:
        pos = (sub == c).nonzero().squeeze(1)
        gen = torch.Generator().manual_seed(16 * seed + int(c))
        perm = torch.randperm(len(pos), generator=gen)
        key[pos[perm]] = torch.arange(len(pos)) * stride + int(c)
    first = torch.argsort(key)[:limit]
    return idx[first.sort().values]


@dataclass(frozen=True, eq=False, repr=False)
class LabeledData:
    """Samples ``x`` (N, ...) and targets ``y`` (N, ...).

    From `load_dataset` (a built-in set): images ``x`` (N, 1, 28, 28) float32, standardised with
    `NORMALIZATION[name]`, and labels ``y`` (N,) int64 holding the ORIGINAL class ids (0-9) even
    in a class-split view, so one 10-way head serves every view.

    From `load_data`: ``x`` is (N, *input_shape) in the model's input dtype; ``y`` is (N,) int64
    class ids for ``task="classification"``, float32 targets for ``"regression"``, and for
    ``"reconstruction"`` without targets in the source ``y`` IS ``x`` (the same tensor).

    `name` is the base dataset name (for a user's file: the source as given), `classes` the class
    ids this view keeps (empty for regression/reconstruction), `split` "train", "val" or "test",
    `task` the training task, `source` the user's source (None for a built-in set),
    `class_names` the image folder's sub-folder names (else empty), and `spec` (a property) the
    canonical spec that reproduces this view (for a user's source: the source itself).
    """

    x: torch.Tensor
    y: torch.Tensor
    name: str
    classes: tuple[int, ...]
    split: str = "train"
    num_classes: int = NUM_CLASSES
    task: str = "classification"
    source: str | None = None
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.x.ndim < 2 or self.y.ndim < 1 or len(self.x) != len(self.y):
            raise InvalidArgumentError(
                f"LabeledData needs x of shape (N, ...sample) and y of shape (N, ...) with the "
                f"same N, got {tuple(self.x.shape)} and {tuple(self.y.shape)}"
            )

    @property
    def spec(self) -> str:
        return self.source if self.source is not None else format_spec(self.name, self.classes)

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return (
            f"LabeledData(spec={self.spec!r}, split={self.split!r}, n={len(self)}, "
            f"x={tuple(self.x.shape)} {self.x.dtype}, y={self.y.dtype})"
        )

    def class_counts(self) -> dict[int, int]:
        """Samples per kept class, e.g. ``{0: 6000, 1: 6000, ...}`` (empty unless the task is
        classification)."""
        if self.task != "classification":
            return {}
        counts = torch.bincount(self.y, minlength=self.num_classes)
        return {c: int(counts[c]) for c in self.classes}

    def batches(
        self, batch_size: int, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` mini-batches; with `shuffle`, in ``torch.randperm`` order seeded by
        `seed` (the same seed gives the same batches). The last batch may be smaller unless
        `drop_last`."""
        _check_int(batch_size, "batch_size", 1)
        _check_int(seed, "seed", 0)
        n = len(self)
        order = (
            torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else None
        )
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            if order is None:
                yield self.x[i : i + batch_size], self.y[i : i + batch_size]
            else:
                idx = order[i : i + batch_size]
                yield self.x[idx], self.y[idx]

    def subset(
        self, *, classes: Sequence[int] | None = None, limit: int | None = None, seed: int = 0
    ) -> "LabeledData":
        """Keep only `classes` (original ids) and then at most `limit` samples picked by the same
        class-balanced seeded rule as `load_dataset`'s `limit`."""
        keep = tuple(sorted(set(self.classes if classes is None else classes)))
        unknown = [c for c in keep if c not in self.classes]
        if unknown:
            raise InvalidArgumentError(
                f"classes {unknown} are not in {self.spec} (it holds {list(self.classes)})"
            )
        if limit is not None:
            _check_int(limit, "limit", 1)
        _check_int(seed, "seed", 0)
        idx = _select(self.y, keep, limit, seed, f"{format_spec(self.name, keep)} ({self.split})")
        return replace(self, x=self.x[idx], y=self.y[idx], classes=keep)


def load_dataset(
    spec: str,
    *,
    split: str = "train",
    limit: int | None = None,
    root: "str | os.PathLike | None" = None,
    seed: int = 0,
) -> LabeledData:
    """Load a dataset view as tensors.

    `spec`: ``fashion-mnist``, ``digits``, or either followed by ``:CLASSES`` to keep only those
    classes, e.g. ``fashion-mnist:0-4``, ``fashion-mnist:5-9``, ``fashion-mnist:3,7,9``,
    ``digits:0-4``; labels keep their original ids 0-9.
    `split`: ``"train"`` or ``"test"`` (digits: a fixed stratified 80/20 split, see `_digits`).
    `limit`: keep N samples, the first N of a seeded per-class-balanced shuffle (`seed`), returned
    in the dataset's original order; a smaller limit picks a subset of a larger one.
    `root`: directory of the Fashion-MNIST ``.gz`` files (default ``$EDGETRAIN_FASHION_MNIST_DIR``
    or ``/usr/share/datasets/fashion-mnist``).

    Returns fresh tensors (safe to modify); x is (N, 1, 28, 28) float32 equal to
    ``(pixel / 255 - mean) / std`` with ``NORMALIZATION[name]`` (digits: ``pixel / 16``, then
    bilinear upsampling from 8x8).
    Raises `InvalidArgumentError`, `DatasetMissingError`, `DatasetCorruptError`.
    """
    name, classes = parse_spec(spec)
    _check_split(split)
    if limit is not None:
        _check_int(limit, "limit", 1)
    _check_int(seed, "seed", 0)
    what = f"{format_spec(name, classes)} ({split})"
    mean, std = NORMALIZATION[name]
    if name == "fashion-mnist":
        images, labels_u8 = _fashion.load_arrays(split, root)
        labels = torch.from_numpy(labels_u8.astype("int64"))
        idx = _select(labels, classes, limit, seed, what)
        x = torch.from_numpy(images[idx.numpy()]).to(torch.float32).unsqueeze(1)
        x.mul_(1.0 / (255.0 * std)).sub_(mean / std)
        y = labels[idx]
    else:
        if root is not None:
            raise InvalidArgumentError(
                f"root= applies only to fashion-mnist; {name} comes with scikit-learn"
            )
        x01, labels = _digits.load_split(split)
        idx = _select(labels, classes, limit, seed, what)
        x = x01[idx].sub_(mean).div_(std)
        y = labels[idx]
    return LabeledData(x.contiguous(), y.contiguous(), name, classes, split)


class Stream:
    """One sample at a time, ``x`` of shape (1, 1, 28, 28) and ``y`` of shape (1,), in a fixed
    ``torch.randperm`` order seeded by `seed`; one pass over the view.

    `cursor` is the position of the next sample. Record `state_dict()` in a checkpoint and resume
    with ``stream(**state)``: the resumed stream yields exactly the samples the uninterrupted one
    would have yielded from that cursor on.
    """

    def __init__(
        self,
        data: LabeledData,
        *,
        seed: int,
        start: int,
        limit: int | None,
        root: "str | os.PathLike | None",
    ) -> None:
        self.data = data
        self.seed = seed
        self.limit = limit
        self._root = None if root is None else os.fspath(root)
        self.order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        if start > len(data):
            raise InvalidArgumentError(
                f"start={start} is past the end of the stream ({len(data)} samples of "
                f"{data.spec} ({data.split}))"
            )
        self.cursor = start

    @property
    def total(self) -> int:
        """Samples in one pass."""
        return len(self.data)

    @property
    def remaining(self) -> int:
        return len(self.data) - self.cursor

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cursor >= len(self.data):
            raise StopIteration
        i = int(self.order[self.cursor])
        self.cursor += 1
        return self.data.x[i : i + 1].clone(), self.data.y[i : i + 1].clone()

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-able arguments to `stream` that resume at the current cursor."""
        return {
            "spec": self.data.spec,
            "split": self.data.split,
            "seed": self.seed,
            "limit": self.limit,
            "start": self.cursor,
            "root": self._root,
        }


def stream(
    spec: str,
    *,
    split: str = "train",
    seed: int = 0,
    limit: int | None = None,
    start: int = 0,
    root: "str | os.PathLike | None" = None,
) -> Stream:
    """The streaming view for online learning: an iterator of single samples.

    Yields the samples of ``load_dataset(spec, split=split, limit=limit, root=root)`` (so `limit`
    picks the same samples as there, independent of `seed`) in a ``torch.randperm`` order seeded
    by `seed`, beginning at position `start` (0 <= start <= N).
    """
    _check_int(start, "start", 0)
    _check_int(seed, "seed", 0)
    data = load_dataset(spec, split=split, limit=limit, root=root)
    return Stream(data, seed=seed, start=start, limit=limit, root=root)


def _flatten_for(x: torch.Tensor, dims: tuple) -> torch.Tensor:
    """Images to the flat vectors of a model on (F,) inputs: only when F is C*H*W exactly
    (nothing is resampled to fit)."""
    features = dims[-1]
    per_sample = int(x[0].numel()) if x.ndim == 4 else int(x.numel())
    if isinstance(features, bool) or not isinstance(features, int) or features != per_sample:
        raise InvalidArgumentError(
            f"the model takes vectors of {features!r} values; the images have "
            f"{tuple(x.shape[-3:])} = {per_sample} values each: use data of that size or a "
            "model whose input is (C, H, W)"
        )
    return x.reshape(x.shape[0], -1) if x.ndim == 4 else x.reshape(-1)


def resize_for(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Adapt images to a model's input: ``shape`` is (C, H, W), or (N, C, H, W) whose N is
    ignored (so a model's example input shape can be passed); (F,) or (N, F) flattens each
    image to F = C*H*W values for a model on vectors (an MLP).

    Height/width change by bilinear interpolation (``align_corners=False``); a single grey channel
    is repeated to C channels (e.g. (3, 128, 128) for MobileNetV2). Values keep the dataset's
    standardisation. `x` is (N, C, H, W) or (C, H, W) float; the result has the same rank.
    Returns `x` itself when it already has the requested shape.
    """
    if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4) or not x.is_floating_point():
        raise InvalidArgumentError(
            f"resize_for needs a float tensor of shape (N, C, H, W) or (C, H, W), got "
            f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))} "
            f"{getattr(x, 'dtype', '')}".rstrip()
        )
    dims = tuple(shape)
    if len(dims) in (1, 2) and x.ndim in (3, 4):  # a model on flat vectors (an MLP)
        return _flatten_for(x, dims)
    if len(dims) not in (3, 4) or any(
        isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims
    ):
        raise InvalidArgumentError(
            f"shape must be (C, H, W) or (N, C, H, W) of positive integers, got {shape!r}"
        )
    c, h, w = dims[-3:]
    batched = x if x.ndim == 4 else x.unsqueeze(0)
    c_in = batched.shape[1]
    if c_in != c and c_in != 1:
        raise InvalidArgumentError(
            f"cannot adapt {c_in} channels to {c}: only a single grey channel can be repeated"
        )
    out = batched
    if tuple(out.shape[2:]) != (h, w):
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    if c_in != c:
        out = out.repeat(1, c, 1, 1)
    if out is batched:
        return x
    return out if x.ndim == 4 else out.squeeze(0)
