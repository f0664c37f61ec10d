"""Fashion-MNIST from the Debian package `dataset-fashion-mnist`, verified and memoised.

Where the files are looked for, first match wins: the `root=` argument, the environment variable
``EDGETRAIN_FASHION_MNIST_DIR``, then ``/usr/share/datasets/fashion-mnist``.

Integrity: every load hashes each ``.gz`` file (SHA-256, ~50 ms for all four) and compares it with
the hash pinned below (the files of dataset-fashion-mnist 0.0~git20200523.55506a9-1). A file whose
``.gz`` bytes differ is still accepted when its *decompressed* content matches the pinned content
hash (the same data recompressed, e.g. Zalando's upstream download); anything else raises
`DatasetCorruptError` naming the file, the expected and actual hashes, what looks wrong with it
(gzip stream, IDX magic, dimensions, length, label range) and how to reinstall it.

Decoded arrays are memoised in-process keyed by file name; that is sound because a file is only
ever decoded after its content was verified equal to the pinned content. A cold load of the
training split takes about 0.3 s to decompress, so there is no on-disk cache.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetrain.errors import DatasetCorruptError, DatasetMissingError

from ._idx import IMAGES_MAGIC, LABELS_MAGIC, check_labels, parse_idx

ENV_VAR = "EDGETRAIN_FASHION_MNIST_DIR"
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = "apt-get install dataset-fashion-mnist"
REINSTALL_HINT = "apt-get install --reinstall dataset-fashion-mnist"
NUM_CLASSES = 10
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


@dataclass(frozen=True)
class _Pin:
    gz_sha256: str  # SHA-256 of the .gz file as shipped by dataset-fashion-mnist
    idx_sha256: str  # SHA-256 of the decompressed IDX content (independent of gzip settings)
    magic: int
    shape: tuple[int, ...]


PINS: dict[str, _Pin] = {
    "train-images-idx3-ubyte.gz": _Pin(
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        IMAGES_MAGIC,
        (60000, 28, 28),
    ),
    "train-labels-idx1-ubyte.gz": _Pin(
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        LABELS_MAGIC,
        (60000,),
    ),
    "t10k-images-idx3-ubyte.gz": _Pin(
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        IMAGES_MAGIC,
        (10000, 28, 28),
    ),
    "t10k-labels-idx1-ubyte.gz": _Pin(
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        LABELS_MAGIC,
        (10000,),
    ),
}

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

_MEMO: dict[str, np.ndarray] = {}


def resolve_root(root: "str | os.PathLike | None") -> tuple[Path, str]:
    """The directory to read and a phrase saying where that choice came from."""
    if root is not None:
        return Path(root), "the root= argument"
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env), f"${ENV_VAR}"
    return Path(DEFAULT_DIR), "the default location"


def _missing(path: Path, root: Path, origin: str, what: str) -> DatasetMissingError:
    return DatasetMissingError(
        f"Fashion-MNIST file {path} {what} (directory {root}, from {origin}). Install the "
        f"dataset with `{INSTALL_HINT}`, or set {ENV_VAR} (or pass root=) to a directory "
        f"holding {', '.join(sorted(PINS))}."
    )


def _diagnose(raw: bytes, name: str, pin: _Pin) -> str:
    try:
        arr = parse_idx(raw, name=name, magic=pin.magic, shape=pin.shape)
        if pin.magic == LABELS_MAGIC:
            check_labels(arr, name=name, num_classes=NUM_CLASSES)
    except DatasetCorruptError as e:
        return str(e).removeprefix(f"{name}: ")
    return "the IDX structure looks valid but the content differs"


def _read_verified(path: Path, root: Path, origin: str) -> np.ndarray:
    name = path.name
    pin = PINS[name]
    if not path.is_file():
        raise _missing(
            path, root, origin, "is missing" if not path.exists() else "is not a regular file"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _missing(path, root, origin, f"cannot be read ({e.strerror or e})") from e
    gz_hash = hashlib.sha256(data).hexdigest()
    if gz_hash == pin.gz_sha256 and name in _MEMO:
        return _MEMO[name]

    def corrupt(detail: str) -> DatasetCorruptError:
        return DatasetCorruptError(
            f"Fashion-MNIST file {path} is corrupt: SHA-256 expected {pin.gz_sha256}, got "
            f"{gz_hash}; {detail}. Reinstall it with `{REINSTALL_HINT}`."
        )

    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise corrupt(f"it is not a valid gzip stream ({e})") from None
    if gz_hash != pin.gz_sha256:
        idx_hash = hashlib.sha256(raw).hexdigest()
        if idx_hash != pin.idx_sha256:
            raise corrupt(
                f"its decompressed content hashes to {idx_hash}, expected "
                f"{pin.idx_sha256}; {_diagnose(raw, name, pin)}"
            )
    # Content verified; the structural checks below only guard against wrong pins.
    arr = parse_idx(raw, name=str(path), magic=pin.magic, shape=pin.shape)
    if pin.magic == LABELS_MAGIC:
        check_labels(arr, name=str(path), num_classes=NUM_CLASSES)
    _MEMO[name] = arr
    return arr


def load_arrays(
    split: str, root: "str | os.PathLike | None" = None
) -> tuple[np.ndarray, np.ndarray]:
    """Verified read-only uint8 arrays: images (N, 28, 28) and labels (N,) of `split`."""
    base, origin = resolve_root(root)
    if not base.is_dir():
        first = base / FILES[split][0]
        raise _missing(
            first,
            base,
            origin,
            "was not found because the directory does not exist"
            if not base.exists()
            else "was not found because that path is not a directory",
        )
    images_file, labels_file = FILES[split]
    images = _read_verified(base / images_file, base, origin)
    labels = _read_verified(base / labels_file, base, origin)
    return images, labels
