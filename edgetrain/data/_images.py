"""A folder of images, one sub-folder per class, read with Pillow.

Sorted sub-folder names are the class ids 0, 1, ... (hidden folders skipped); each class folder's
files with an image suffix (`IMAGE_SUFFIXES`, any case; hidden files skipped) are read in sorted
order. Images are converted to `channels` channels (1: Pillow's "L", 3: "RGB"; None: 1 when every
image is greyscale, else 3), resized only when `resize` = (H, W) is given (bilinear), and scaled to
float32 in [0, 1] (pixel / 255; no standardisation). Without `resize` every image must have the
same size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetrain.errors import DatasetCorruptError, DatasetMissingError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def list_images(root: Path, where: str) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    """The class names and the (file, class id) pairs of an image folder."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DatasetCorruptError(
            f"{where} has no class sub-folders: put each class's images in a sub-folder of its "
            f"own (e.g. {root}/cat/1.png, {root}/dog/2.png); sorted sub-folder names become the "
            "class ids 0, 1, ..."
        )
    files: list[tuple[Path, int]] = []
    for cid, name in enumerate(classes):
        found = sorted(
            p
            for p in (root / name).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not found:
            raise DatasetCorruptError(
                f"class folder {name!r} (class {cid}) of {where} holds no images (files ending "
                f"{', '.join(IMAGE_SUFFIXES)}): add images or remove the folder"
            )
        files.extend((p, cid) for p in found)
    return tuple(classes), files


def _decode(path: Path, channels: int | None, resize: tuple[int, int] | None) -> np.ndarray:
    """One image as a uint8 (H, W) array (grey) or (H, W, 3) array (RGB)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            grey = im.mode in _GREY_MODES if channels is None else channels == 1
            if im.mode in ("I", "I;16", "I;16B", "I;16L", "F") and grey:
                a = np.asarray(im, dtype=np.float64)
                top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
                conv = Image.fromarray(np.clip(a / top * 255.0, 0, 255).astype(np.uint8))
            else:
                conv = im.convert("L" if grey else "RGB")
            if resize is not None:
                conv = conv.resize((resize[1], resize[0]), Image.Resampling.BILINEAR)
            return np.asarray(conv, dtype=np.uint8)
    except Exception as e:  # Pillow raises many types for broken files
        raise DatasetCorruptError(
            f"image {str(path)!r} will not decode ({type(e).__name__}: {e}): replace the file or "
            "remove it from the folder"
        ) from None


def read_image_folder(
    root: Path, where: str, channels: int | None, resize: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """x (N, C, H, W) float32 in [0, 1], y (N,) int64 class ids, and the class names."""
    try:
        import PIL  # noqa: F401
    except ImportError as e:
        raise DatasetMissingError(
            f"reading {where} needs Pillow, which cannot be imported ({e}): install it with "
            "`pip install pillow`"
        ) from e
    class_names, files = list_images(root, where)
    arrays: list[np.ndarray] = []
    for path, _cid in files:
        a = _decode(path, channels, resize)
        if arrays and a.shape[:2] != arrays[0].shape[:2]:
            h0, w0 = arrays[0].shape[:2]
            raise DatasetCorruptError(
                f"image {str(path)!r} is {a.shape[0]}x{a.shape[1]} (H x W) but "
                f"{str(files[0][0])!r} is {h0}x{w0}: the images of {where} must share one size; "
                f"pass --resize H,W (resize=(H, W)) to resize every image"
            )
        arrays.append(a)
    rgb = any(a.ndim == 3 for a in arrays)
    x = np.empty((len(arrays), 3 if rgb else 1, *arrays[0].shape[:2]), dtype=np.float32)
    for i, a in enumerate(arrays):
        x[i] = a.transpose(2, 0, 1) if a.ndim == 3 else a[None]  # grey repeats to RGB
    x *= 1.0 / 255.0
    y = np.array([cid for _p, cid in files], dtype=np.int64)
    return x, y, class_names
