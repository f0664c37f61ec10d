"""Atomic writes: a power loss mid-write leaves the previous file intact, never a torn one.

Also a strict reader for tensor files that come from elsewhere (`read_tensor_file`): a file
that is truncated, bit-flipped or hand-edited is refused with a typed error naming the file and
what is wrong, never a parser's traceback.

NOTE [ Atomic replace ]
    `_atomic` writes a temporary `.tmp-*` file beside the target, fsyncs it, renames it over the
    target, then fsyncs the directory: the rename is durable once `_atomic` returns, so a power
    loss afterwards cannot bring the previous file back. A process killed before the rename
    leaves a `.tmp-*` file and the target untouched; `remove_temp_files` clears such leftovers
    (only the directory's one writer may call it: see the checkpoint lock in runtime).
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edgetrain.errors import InvalidArgumentError, WeightsFileError

TEMP_PREFIX = ".tmp-"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit

# safetensors dtype names -> torch dtypes (those torch has)
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def fsync_dir(directory: "str | os.PathLike") -> None:
    """Make renames and unlinks in `directory` durable (a no-op where directories cannot be
    opened, e.g. on Windows, or the file system does not support it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def _atomic(path: Path, write) -> Path:
    """NOTE [ Atomic replace ]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def remove_temp_files(directory: "str | os.PathLike") -> list[Path]:
    """Delete the `.tmp-*` leftovers of writes killed before their rename; returns them."""
    d = Path(directory)
    if not d.is_dir():
        return []
    gone = []
    for p in d.glob(TEMP_PREFIX + "*"):
        try:
            p.unlink()
            gone.append(p)
        except FileNotFoundError:
            pass
    if gone:
        fsync_dir(d)
    return gone


def save_tensors_atomic(
    tensors: dict[str, torch.Tensor],
    path: "str | os.PathLike",
    metadata: dict[str, str] | None = None,
) -> Path:
    data = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    return _atomic(Path(path), lambda tmp: save_file(data, tmp, metadata=metadata))


def load_tensors(path: "str | os.PathLike") -> dict[str, torch.Tensor]:
    return load_file(str(path))


def read_tensor_file(
    path: "str | os.PathLike", *, error: type[Exception] = InvalidArgumentError
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, parsed strictly by this module.

    Every structural fault (short file, header length beyond the file, header not JSON, an
    unknown dtype, a shape or offsets that do not match, gaps, overlaps or trailing bytes) raises
    `error` naming the file and the fault; the contents are NOT authenticated (callers check
    their own checksums)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise error(f"cannot read {p}: {e.strerror or e}") from None

    def bad(why: str) -> Exception:
        return error(f"{p} is not a valid tensor file: {why}")

    if len(raw) < 8:
        raise bad(f"it is {len(raw)} bytes, shorter than the 8-byte header length")
    n = int.from_bytes(raw[:8], "little")
    if n > min(len(raw) - 8, MAX_HEADER_BYTES):
        raise bad(f"header length {n:,} B exceeds the file ({len(raw):,} B) or the 100 MiB limit")
    try:
        header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad(f"header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise bad("__metadata__ is not an object of strings")
    data = memoryview(raw)[8 + n :]
    spans = sorted(
        ((_span(name, entry, bad), name) for name, entry in header.items()),
        key=lambda s: (s[0][0], s[0][1], s[1]),
    )
    end = 0
    tensors = {}
    for (begin, stop, dtype, shape), name in spans:
        if begin != end:
            raise bad(f"tensor {name!r} starts at byte {begin}, expected {end} (gap or overlap)")
        chunk = bytearray(data[begin:stop])
        if len(chunk) != stop - begin:
            raise bad(f"tensor {name!r} ends at byte {stop}, past the data ({len(data)} B)")
        t = torch.frombuffer(chunk, dtype=dtype) if chunk else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(shape)
        end = stop
    if end != len(data):
        raise bad(f"{len(data) - end} trailing bytes after the last tensor")
    return tensors, dict(metadata)


def _span(name, entry, bad) -> tuple[int, int, torch.dtype, tuple[int, ...]]:
    if not isinstance(entry, dict):
        raise bad(f"entry {name!r} is not an object")
    code = entry.get("dtype")
    dtype = _DTYPES.get(code) if isinstance(code, str) else None
    if dtype is None:
        raise bad(f"tensor {name!r} has dtype {code!r}; known: {sorted(_DTYPES)}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise bad(f"tensor {name!r} has shape {shape!r}, not a list of integers >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise bad(f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
    numel = 1
    for d in shape:
        numel *= d
    begin, stop = offsets
    if stop - begin != numel * dtype.itemsize:
        raise bad(
            f"tensor {name!r}: offsets {offsets} span {stop - begin} B but shape {shape} of "
            f"{entry['dtype']} needs {numel * dtype.itemsize} B"
        )
    return begin, stop, dtype, tuple(shape)


def _is_count(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


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


def import_user_function(
    path: Path,
    name: str,
    *,
    what: str,
    module_prefix: str,
    missing: type[Exception],
    broken: type[Exception],
):
    """Import the Python file `path` and return its function `name` (a model factory, a
    dataset maker). A file that raises or exits on import, lacks `name` or defines it as
    something else raises `broken` naming the file and what it does define; a path that is not
    a file raises `missing`. `what` names the function in messages ("factory", "function")."""
    import hashlib
    import importlib.util
    import sys

    try:
        found, is_dir = path.is_file(), path.is_dir()
        if found:
            path = path.resolve()
    except (OSError, ValueError) as e:  # a NUL byte, a name too long for the file system
        raise missing(f"{str(path)[:80]!r} is not a usable file path: {e}") from None
    if not found:
        why = "is a directory, not a Python file" if is_dir else "does not exist"
        raise missing(f"{str(path)!r} {why} (resolved to {path.absolute()})")
    mod_name = module_prefix + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    loader_spec = importlib.util.spec_from_file_location(mod_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise broken(f"cannot import {path} as a Python module")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[mod_name] = module  # lets dataclasses / pickling inside the file resolve it
    try:
        loader_spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # a file that exits on import must not end edgetrain
        sys.modules.pop(mod_name, None)
        raise broken(f"importing {path} failed: {type(e).__name__}: {e}") from e
    function = getattr(module, name, None)
    if function is None:
        defined = sorted(
            k
            for k, v in vars(module).items()
            if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == mod_name
        )
        raise broken(
            f"{path} has no {what} {name!r}; functions defined there: {', '.join(defined) or 'none'}"
        )
    if not callable(function):
        raise broken(f"{path}:{name} is a {type(function).__name__}, not a function")
    return path, function


def load_weights_file(model, path: str) -> None:
    """Load a safetensors file into `model`, refusing anything that is not exactly its
    state (NOTE [ Weights files are untrusted ])."""
    # NOTE [ Weights files are untrusted ]
    #     `--weights` is read with safetensors only, never unpickled: a PyTorch pickle
    #     (`torch.save`, a zip or a raw pickle) is refused by its first bytes, before any parser
    #     sees it. The file must hold exactly the model's state-dict keys, each of its shape
    #     and kind (floating or integer), with finite floating values; anything else is a
    #     `WeightsFileError` saying what differs, never a traceback or a partial load.
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        raise WeightsFileError(
            f"weights file {path!r} is a Python pickle (torch.save), which edgetrain never "
            "loads (unpickling runs code); save the weights with "
            "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
        )
    try:
        tensors = load_tensors(path)
    except Exception as e:  # safetensors' SafetensorError for truncated or foreign files
        raise WeightsFileError(
            f"weights file {path!r} is not a readable safetensors file "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}); "
            "is it truncated? save it again with safetensors.torch.save_file"
        ) from None
    want = model.state_dict()
    missing = [k for k in want if k not in tensors]
    unknown = [k for k in tensors if k not in want]
    if missing or unknown:
        raise WeightsFileError(
            f"weights file {path!r} does not hold this model's state: "
            + "; ".join(
                part
                for part in (
                    f"missing {len(missing)} ({', '.join(missing[:3])})" if missing else "",
                    f"{len(unknown)} unknown ({', '.join(unknown[:3])})" if unknown else "",
                )
                if part
            )
            + "; were they saved from the plan's model?"
        )
    for k, t in tensors.items():
        w = want[k]
        if tuple(t.shape) != tuple(w.shape) or t.is_floating_point() != w.is_floating_point():
            raise WeightsFileError(
                f"weights file {path!r}: tensor {k!r} is {tuple(t.shape)} {t.dtype}, the model's "
                f"is {tuple(w.shape)} {w.dtype}; were they saved from the plan's model?"
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise WeightsFileError(
                f"weights file {path!r}: tensor {k!r} holds NaN or infinite values; "
                "retrain or re-export the weights"
            )
    model.load_state_dict(tensors)
