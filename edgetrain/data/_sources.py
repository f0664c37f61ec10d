"""The user's data sources: what a source string names, and reading it into arrays.

Forms (chosen by the form of the source, in this order):
- a built-in spec: ``fashion-mnist[:classes]``, ``digits[:classes]`` (see `parse_spec`);
- ``path/x.npy,path/y.npy``: a pair of .npy files (inputs, targets), memory-mapped;
- ``path/file.py:make_dataset``: a function of no arguments returning a
  ``torch.utils.data.Dataset`` of ``(x, y)`` samples (anything with ``__len__`` and
  ``__getitem__``) or any other iterable of ``(x, y)`` batches (e.g. a ``DataLoader``);
- ``path/data.npz``: arrays named `x_key` / `y_key`;
- ``path/x.npy``: inputs only (a reconstruction task's target is the input), memory-mapped;
- ``path/table.csv``: see `_csv`;
- ``path/folder``: one sub-folder per class holding images (sorted sub-folder names are the
  class ids 0, 1, ...; files with an image suffix in `IMAGE_SUFFIXES`, hidden files skipped).

Every reader returns a `Raw` record; unreadable or malformed files raise `DatasetCorruptError`
naming the file, missing ones `DatasetMissingError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgetrain.errors import DatasetCorruptError, DatasetMissingError, InvalidArgumentError
from edgetrain.storage import import_user_function

from ._api import NORMALIZATION
from ._csv import read_csv
from ._images import read_image_folder

FORMS = (
    "a built-in spec (fashion-mnist[:classes], digits[:classes]), DATA.npz, X.npy, X.npy,Y.npy, "
    "TABLE.csv, an image folder (one sub-folder per class), or FILE.py:make_dataset"
)


@dataclass(frozen=True)
class Source:
    """What a source string names: `kind` one of builtin, npz, npy, csv, images, python."""

    kind: str
    text: str
    paths: tuple[Path, ...] = ()
    function: str = ""

    @property
    def where(self) -> str:
        """How errors name the source."""
        if self.kind == "builtin":
            return f"dataset {self.text!r}"
        if self.kind == "images":
            return f"image folder {self.text!r}"
        if self.kind == "python":
            return f"data function '{self.paths[0]}:{self.function}'"
        if self.kind == "npy" and len(self.paths) == 2:
            return f"data files {str(self.paths[0])!r}, {str(self.paths[1])!r}"
        return f"data file {self.text!r}"


@dataclass(frozen=True, eq=False)
class Raw:
    """A source read into memory (or memory-mapped): `x` (N, ...), `y` (N, ...) or None,
    `rows` the CSV line of each sample (else None), `image` whether x holds (N, C, H, W) images
    scaled to [0, 1] (or standardised, for a built-in set)."""

    x: np.ndarray
    y: np.ndarray | None
    class_names: tuple[str, ...] = ()
    rows: tuple[int, ...] | None = None
    image: bool = False


def _missing(path: Path, what: str, source: str) -> DatasetMissingError:
    return DatasetMissingError(
        f"{what} {str(path)!r} does not exist (from source {source!r}, resolved to "
        f"{path.absolute()}): check the path; valid sources are {FORMS}"
    )


def classify(source: object) -> Source:
    """The kind of source `source` names (see the module doc); checks that its files exist."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source.strip():
        raise InvalidArgumentError(f"data source must be a non-empty string, got {source!r}")
    text = source.strip()
    if text.partition(":")[0].strip() in NORMALIZATION:
        return Source("builtin", text)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 2 and all(p.lower().endswith(".npy") for p in parts):
        paths = tuple(Path(p).expanduser() for p in parts)
        for p, what in zip(paths, ("input file", "target file")):
            if not p.is_file():
                raise _missing(p, what, text)
        return Source("npy", text, paths)
    path_s, sep, function = text.rpartition(":")
    if (sep and path_s.endswith(".py")) or text.endswith(".py"):
        if not sep or not path_s.endswith(".py"):
            raise InvalidArgumentError(
                f"data source {text!r} names a Python file but no function; write it as "
                f"'{text}:make_dataset' (make_dataset() returns a Dataset of (x, y) samples or "
                "an iterable of (x, y) batches)"
            )
        if not function.isidentifier():
            raise InvalidArgumentError(
                f"function name {function!r} in {text!r} is not a Python identifier; write the "
                "source as 'path/to/file.py:make_dataset'"
            )
        return Source("python", text, (Path(path_s).expanduser(),), function)
    path = Path(text).expanduser()
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except (OSError, ValueError) as e:
        raise InvalidArgumentError(f"data source {text[:80]!r} is not a usable path: {e}") from None
    if is_dir:
        return Source("images", text, (path,))
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy", ".csv"):
        raise InvalidArgumentError(
            f"data source {text!r} is not a known form ({'file suffix ' + repr(suffix) if suffix else 'no file suffix'}): "
            f"give {FORMS}"
        )
    if not is_file:
        raise _missing(path, "data file", text)
    return Source(suffix[1:], text, (path,))


def _check_not_empty(path: Path, where: str) -> None:
    if path.stat().st_size == 0:
        raise DatasetCorruptError(f"{where} is empty (0 bytes): it holds no samples")


def read_npz(src: Source, x_key: str, y_key: str, need_y: bool) -> Raw:
    path = src.paths[0]
    _check_not_empty(path, src.where)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy and zipfile raise many types for a damaged file
        raise DatasetCorruptError(
            f"{src.where} cannot be read as .npz ({type(e).__name__}: {e}): write it with "
            "numpy.savez(path, x=inputs, y=targets)"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DatasetCorruptError(
            f"{src.where} is a single .npy array, not an .npz archive: rename it to .npy or "
            "write numpy.savez(path, x=inputs, y=targets)"
        )
    with archive:
        names = tuple(archive.files)
        wanted = (x_key, y_key) if need_y else (x_key,)
        for key in wanted:
            if key not in names:
                flag = "--x-key" if key == x_key else "--y-key"
                raise DatasetCorruptError(
                    f"{src.where} has no array {key!r} (it holds: {', '.join(names) or 'nothing'})"
                    f": name the arrays with {flag} (x_key=/y_key=) or save them as x and y"
                )
        try:
            x = archive[x_key]
            y = archive[y_key] if y_key in names else None
        except Exception as e:  # a truncated member, an unsupported compression, ...
            raise DatasetCorruptError(
                f"{src.where}: an array cannot be read ({type(e).__name__}: {e}): the file is "
                "truncated or holds Python objects; save plain numeric arrays"
            ) from None
    return Raw(_array(x, src.where, x_key), None if y is None else _array(y, src.where, y_key))


def _array(a: np.ndarray, where: str, name: str) -> np.ndarray:
    if a.ndim == 0:
        raise DatasetCorruptError(
            f"array {name!r} of {where} is a single value, not samples: store one sample per "
            "row of the first axis"
        )
    if a.dtype.kind not in "biuf":
        raise DatasetCorruptError(
            f"array {name!r} of {where} has dtype {a.dtype}, not numbers: store numeric arrays"
        )
    return a


def _load_npy(path: Path, where: str, name: str) -> np.ndarray:
    _check_not_empty(path, where)
    try:
        try:
            a = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError:  # e.g. an empty array cannot be mapped: read it
            a = np.load(path, allow_pickle=False)
    except Exception as e:  # a damaged header raises ValueError, TokenError, ...
        raise DatasetCorruptError(
            f"{where}: {str(path)!r} cannot be read as .npy ({type(e).__name__}: {e}): write it "
            "with numpy.save"
        ) from None
    return _array(a, where, name)


def read_npy(src: Source, need_y: bool) -> Raw:
    x = _load_npy(src.paths[0], src.where, src.paths[0].name)
    if len(src.paths) == 1:
        if need_y:
            raise DatasetCorruptError(
                f"{src.where} holds inputs only, and the task needs targets: give the pair "
                f"'{src.text},Y.npy' (or use task='reconstruction')"
            )
        return Raw(x, None)
    return Raw(x, _load_npy(src.paths[1], src.where, src.paths[1].name))


def read_table(src: Source, label: str | int | None, need_label: bool) -> Raw:
    path = src.paths[0]
    _check_not_empty(path, src.where)
    table = read_csv(str(path), where=src.where, label=label, need_label=need_label)
    return Raw(table.x, table.y, rows=table.rows)


def read_images(src: Source, channels: int | None, resize: tuple[int, int] | None) -> Raw:
    x, y, names = read_image_folder(src.paths[0], src.where, channels, resize)
    return Raw(x, y, class_names=names, image=True)


def _import_function(src: Source) -> Any:
    """The user's function, imported as `edgetrain.models` imports a model factory."""
    return import_user_function(
        src.paths[0],
        src.function,
        what="function",
        module_prefix="edgetrain_user_data_",
        missing=DatasetMissingError,
        broken=DatasetCorruptError,
    )[1]


def _numpy(value: Any, what: str) -> np.ndarray:
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise DatasetCorruptError(f"{what} is not a tensor or array of numbers ({e})") from None
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    if t.is_complex():
        raise DatasetCorruptError(f"{what} holds complex numbers: give real numbers")
    return t.detach().cpu().numpy()


def _pairs(result: Any, where: str) -> tuple[Iterable[Any], bool]:
    """The items of the function's result and whether they are batches."""
    if hasattr(result, "__len__") and hasattr(result, "__getitem__"):
        try:
            n = len(result)
        except TypeError as e:
            raise DatasetCorruptError(f"{where} returned a dataset without a length: {e}") from e
        return (result[i] for i in range(n)), False
    if isinstance(result, Iterable) and not isinstance(result, (str, bytes, torch.Tensor)):
        return result, True
    raise DatasetCorruptError(
        f"{where} returned an object of type {type(result).__name__}: return a torch.utils.data.Dataset of "
        "(x, y) samples or an iterable of (x, y) batches"
    )


def read_python(src: Source) -> Raw:
    """Call the user's function and gather its samples (every sample is held in memory)."""
    function = _import_function(src)
    try:
        items, batched = _pairs(function(), src.where + "()")
        xs: list[np.ndarray] = []
        ys: list[np.ndarray | None] = []
        for i, item in enumerate(items):
            what = f"{'batch' if batched else 'sample'} {i} of {src.where}()"
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise DatasetCorruptError(
                    f"{what} is of type {type(item).__name__}, not an (x, y) pair: yield (input, "
                    "target) pairs (target None for reconstruction)"
                )
            x = _numpy(item[0], f"x of {what}")
            y = None if item[1] is None else _numpy(item[1], f"y of {what}")
            if batched and (x.ndim == 0 or (y is not None and (y.ndim == 0 or len(y) != len(x)))):
                raise DatasetCorruptError(
                    f"{what} is not a batch: x {x.shape}, y {None if y is None else y.shape} need "
                    "the same first (batch) dimension; a function returning single samples "
                    "must return a Dataset (with __len__ and __getitem__)"
                )
            if xs and (
                x.shape[batched:] != xs[0].shape[batched:] or (y is None) != (ys[0] is None)
            ):
                raise DatasetCorruptError(
                    f"{what} has x of shape {x.shape[batched:]} per sample, the first had "
                    f"{xs[0].shape[batched:]} (or it lacks a target the first had): every sample "
                    "needs the same shape"
                )
            if (
                xs
                and y is not None
                and ys[0] is not None
                and y.shape[batched:] != ys[0].shape[batched:]
            ):
                raise DatasetCorruptError(
                    f"{what} has a target of shape {y.shape[batched:]}, the first had "
                    f"{ys[0].shape[batched:]}: every target needs the same shape"
                )
            xs.append(x)
            ys.append(y)
    except (Exception, SystemExit) as e:
        if isinstance(e, (DatasetCorruptError, InvalidArgumentError)):
            raise
        raise DatasetCorruptError(f"{src.where} raised {type(e).__name__}: {e}") from e
    if not xs:
        return Raw(np.zeros((0, 0), dtype=np.float32), None)
    join = np.concatenate if batched else np.stack
    y_all = None if ys[0] is None else join([y for y in ys if y is not None])
    return Raw(
        _array(join(xs), src.where, "x"), None if y_all is None else _array(y_all, src.where, "y")
    )
