"""Atomic writes: a power loss mid-write leaves the previous file intact, never a torn one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _atomic(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_tensors_atomic(
    tensors: dict[str, torch.Tensor],
    path: "str | os.PathLike",
    metadata: dict[str, str] | None = None,
) -> Path:
    data = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    return _atomic(Path(path), lambda tmp: save_file(data, tmp, metadata=metadata))


def load_tensors(path: "str | os.PathLike") -> dict[str, torch.Tensor]:
    return load_file(str(path))


def write_json_atomic(obj, path: "str | os.PathLike") -> Path:
    return write_text_atomic(json.dumps(obj, indent=2), path)


def write_text_atomic(text: str, path: "str | os.PathLike") -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    return _atomic(Path(path), write)


def cache_dir() -> Path:
    root = os.environ.get("EDGETRAIN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgetrain"
    )
    return Path(root)
