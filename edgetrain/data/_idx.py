"""IDX file parsing (the MNIST / Fashion-MNIST container format) with numpy only.

Layout: a 4-byte big-endian magic number ``0x0000 <dtype> <ndim>`` (2051 = uint8 with 3 dims for
images, 2049 = uint8 with 1 dim for labels), then ``ndim`` big-endian uint32 dimension sizes, then
the row-major payload. Every check raises `DatasetCorruptError` naming the file and the numbers.
"""

from __future__ import annotations

import math

import numpy as np

from edgetrain.errors import DatasetCorruptError

IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dimensions (count, rows, cols)
LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dimension (count)


def parse_idx(raw: bytes, *, name: str, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """Parse an uncompressed IDX payload and check it against the expected magic and shape.

    Returns a read-only uint8 array of `shape` that views `raw` (no copy).
    """
    ndim = len(shape)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetCorruptError(
            f"{name}: truncated IDX header: {len(raw)} bytes, need at least {header}"
        )
    got_magic = int.from_bytes(raw[0:4], "big")
    if got_magic != magic:
        raise DatasetCorruptError(
            f"{name}: bad IDX magic number {got_magic} (0x{got_magic:08x}), expected {magic} "
            f"(0x{magic:08x})"
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims != shape:
        raise DatasetCorruptError(
            f"{name}: IDX dimensions {'x'.join(map(str, dims))} in the header, expected "
            f"{'x'.join(map(str, shape))}"
        )
    want = header + math.prod(shape)
    if len(raw) != want:
        raise DatasetCorruptError(
            f"{name}: {len(raw)} bytes after decompression, but the header "
            f"({'x'.join(map(str, dims))} uint8) implies {want}"
        )
    arr = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
    arr.flags.writeable = False
    return arr


def check_labels(labels: np.ndarray, *, name: str, num_classes: int) -> None:
    """Every label must be a class id in 0..num_classes-1."""
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        i = int(bad[0])
        raise DatasetCorruptError(
            f"{name}: label {int(labels[i])} at index {i} is outside 0..{num_classes - 1} "
            f"({bad.size} such labels)"
        )
