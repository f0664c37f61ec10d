"""Reading an exported folder back: its manifest is untrusted input.

NOTE [ An exported folder is untrusted input ]
    A folder may come from another machine or be edited by hand, so `read_manifest` checks
    every field the runtime reads (the format, the method's name, the program files' sizes and
    SHA-256, the inputs' shapes, the optimizer's options) and `verify_files` hashes the files
    against the manifest before ExecuTorch parses them: a bad field or a changed byte is an
    `ExportManifestError` naming the file and field, never a bare runtime error at the first
    step.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from edgetrain.errors import ExportManifestError, OutputPathError

PROGRAM_FILES = ("model.pte", "model.ptd")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FIX = "run `edgetrain export` again"


def _bad(path: Path, where: str, what: str) -> ExportManifestError:
    return ExportManifestError(f"{str(path)!r}: {where} {what}; {_FIX}")


def _number(path: Path, d: dict, key: str, *, positive: bool = False) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _bad(path, f"optimizer.{key}", f"is {v!r}, not a finite number")
    if v < 0 or (positive and v == 0):
        raise _bad(path, f"optimizer.{key}", f"is {v!r}; it must be {'>' if positive else '>='} 0")
    return float(v)


def _files(path: Path, m: dict) -> None:
    files = m.get("files")
    if not isinstance(files, dict):
        raise _bad(path, "files", "is missing")
    for name in PROGRAM_FILES:
        f = files.get(name)
        ok = isinstance(f, dict) and isinstance(f.get("sha256"), str)
        size = f.get("bytes") if isinstance(f, dict) else None
        if not ok or not _HEX64.fullmatch(f["sha256"]):
            raise _bad(path, f"files[{name!r}].sha256", "is not a 64-digit hex SHA-256")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _bad(path, f"files[{name!r}].bytes", f"is {size!r}, not a byte count")


def _inputs(path: Path, m: dict) -> None:
    inputs = m.get("inputs")
    if not isinstance(inputs, list) or len(inputs) < 2:
        raise _bad(path, "inputs", "must list the batch and its targets")
    for i, spec in enumerate(inputs[:2]):
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if not isinstance(shape, list) or not all(
            type(s) is int and 0 < s <= 1 << 31 for s in shape
        ):
            raise _bad(path, f"inputs[{i}].shape", f"is {shape!r}, not a list of positive sizes")


def _optimizer(path: Path, m: dict) -> None:
    opt = m.get("optimizer")
    if not isinstance(opt, dict):
        raise _bad(path, "optimizer", "is missing")
    _number(path, opt, "lr", positive=True)
    for key in ("momentum", "dampening", "weight_decay"):
        _number(path, opt, key)
    if type(opt.get("nesterov")) is not bool:
        raise _bad(path, "optimizer.nesterov", f"is {opt.get('nesterov')!r}, not true or false")


def parse_manifest(m: Any, path: Path) -> dict:
    """`m` (a manifest's JSON value read from `path`) if every field the runtime reads is
    well formed (NOTE [ An exported folder is untrusted input ])."""
    if not isinstance(m, dict):
        raise _bad(path, "the file", f"holds {type(m).__name__}, not a JSON object")
    if m.get("format") != "executorch":
        raise _bad(path, "format", f"is {m.get('format')!r}, not 'executorch'")
    if not isinstance(m.get("method"), str) or not m["method"]:
        raise _bad(path, "method", "is not a method name")
    _files(path, m)
    _inputs(path, m)
    _optimizer(path, m)
    return m


def read_manifest(out_dir: "str | os.PathLike[str]") -> dict:
    """The manifest an export wrote in `out_dir`, checked (`parse_manifest`)."""
    path = Path(out_dir) / "manifest.json"
    try:
        text = path.read_text()
    except OSError as e:
        raise OutputPathError(
            f"{str(path)!r} is not an export manifest ({e}); run `edgetrain export` first"
        ) from None
    try:
        m = json.loads(text)
    except ValueError as e:
        raise _bad(path, "the file", f"is not JSON ({e})") from None
    return parse_manifest(m, path)


def verify_files(out_dir: "str | os.PathLike[str]", manifest: dict) -> None:
    """Each program file exists and has the size and SHA-256 `manifest` records."""
    out = Path(out_dir)
    for name in PROGRAM_FILES:
        f, rec = out / name, manifest["files"][name]
        if not f.is_file():
            raise OutputPathError(f"{str(f)!r} is missing; {_FIX}")
        data = f.read_bytes()
        if len(data) != rec["bytes"] or hashlib.sha256(data).hexdigest() != rec["sha256"]:
            raise ExportManifestError(
                f"{str(f)!r} has {len(data):,} bytes and SHA-256 "
                f"{hashlib.sha256(data).hexdigest()[:16]}…, but the manifest records "
                f"{rec['bytes']:,} bytes and {rec['sha256'][:16]}…: the file was changed or "
                f"truncated; {_FIX}"
            )
