"""The files `edgetrain compile` reads and writes besides the plan: the weights it starts from
and the directory it writes the project into. Each is checked before any work starts.

NOTE [ compile's output directory ]
    `compile -o DIR` writes `main.c`, `Makefile`, ... into DIR, names a user may well have
    there already. It writes into DIR only when DIR
    - does not exist (it is created), or is empty;
    - holds the marker `.edgetrain-output`, which compile writes before any project file, so
      a directory it created or used (even one interrupted mid-write) is recognised;
    - or holds `edgetrain_build.json` and nothing but the files compile and mcu-run write (a
      project an edgetrain from before the marker compiled);
    - or the caller says so (`--force`, `force=True`).
    Anything else is `OutputPathError` naming what is there. The marker lists the files the
    last compile wrote; a re-compile removes those it no longer writes (a Cortex-M project's
    `link.ld` when re-compiled for the host), never anything else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgetrain.errors import OutputPathError, WeightsFileError

MARKER = ".edgetrain-output"
# what compile writes (any target) and what mcu-run's build leaves next to it
_GENERATED = frozenset(
    {
        "main.c",
        "et_model.c",
        "et_model.h",
        "et_data.c",
        "et_platform.c",
        "Makefile",
        "link.ld",
        "edgetrain_build.json",
        "et_train",
        "et_train.elf",
        "et_train.map",
        # the library layout (NOTE [ Project layouts ]) and its example firmware's build
        "src/edgetrain_model.h",
        "src/edgetrain_model.c",
        "CMakeLists.txt",
        "library.properties",
        "examples/StreamTrain/StreamTrain.ino",
        "extras/firmware/main.c",
        "extras/firmware/samples.c",
        "extras/firmware/et_model.h",
        "extras/firmware/et_platform.c",
        "extras/firmware/link.ld",
        "extras/firmware/Makefile",
        "extras/firmware/firmware",
        "extras/firmware/firmware.elf",
    }
)
_GENERATED_DIRS = frozenset({"src", "examples", "extras"})


# -- the output directory ----------------------------------------------------------------------
def check_output_dir(path: "str | os.PathLike", *, force: bool = False) -> Path:
    """Raise `OutputPathError` unless compile may write its project into `path` (NOTE
    [ compile's output directory ]); creates nothing."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputPathError(
            f"output {str(out)!r} is a file, not a directory; give a directory for the C "
            "project (-o DIR): a new one, an empty one or one compile wrote before"
        )
    if out.is_dir():
        _check_own(out, force)
        if not os.access(out, os.W_OK | os.X_OK):
            raise OutputPathError(f"output directory {str(out)!r} is not writable; choose another")
        return out
    parent = next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        why = "is not a directory" if not parent.is_dir() else "is not writable"
        raise OutputPathError(
            f"cannot create output directory {str(out)!r}: {str(parent)!r} {why}; choose "
            "another -o DIR"
        )
    return out


def _check_own(out: Path, force: bool) -> None:
    try:
        names = sorted(p.name for p in out.iterdir())
    except OSError as e:
        raise OutputPathError(f"cannot list output directory {str(out)!r}: {e.strerror}") from None
    if force or not names or MARKER in names:
        return
    earlier = "edgetrain_build.json" in names and all(
        n in _GENERATED or n in _GENERATED_DIRS or n.startswith(".tmp-") for n in names
    )
    if earlier:
        return
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    raise OutputPathError(
        f"output directory {str(out)!r} is not empty ({shown}) and edgetrain compile did not "
        f"create it (no {MARKER}); compile would overwrite files such as main.c and Makefile "
        "there. Choose a new or empty directory, or pass --force to write into it anyway"
    )


def write_project(out_dir: "str | os.PathLike", files: dict[str, str], *, force: bool) -> Path:
    """Write `files` into `out_dir` (checked as `check_output_dir`): the marker first, then
    each file atomically; files an earlier compile wrote there and this one does not are
    removed."""
    from edgetrain.storage import write_text_atomic

    out = check_output_dir(out_dir, force=force)
    try:
        out.mkdir(parents=True, exist_ok=True)
        marker = out / MARKER
        before = _marked_files(marker)
        write_text_atomic(
            json.dumps({"written_by": "edgetrain compile", "files": sorted(files)}, indent=1),
            marker,
        )
        for name, text in files.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(text, out / name)
        for name in before - set(files):
            stale = out / name
            if name in _GENERATED and stale.is_file():
                stale.unlink()
    except OSError as e:
        raise OutputPathError(
            f"cannot write the C project into {str(out)!r}: {e.strerror or e}; choose another "
            "-o DIR"
        ) from None
    return out


def _marked_files(marker: Path) -> set[str]:
    try:
        listed = json.loads(marker.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    return {n for n in listed if isinstance(n, str)} if isinstance(listed, list) else set()


# -- the weights -------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsHeader:
    """What a safetensors file declares, read without loading a tensor: name -> (dtype, shape)."""

    path: Path
    tensors: dict[str, tuple[str, tuple[int, ...]]]


_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def check_weights_file(path: "str | os.PathLike") -> WeightsHeader:
    """A readable safetensors file, its header consistent with its size (a truncated file, a
    pickle or a `torch.save` zip fail here: `WeightsFileError`). Nothing is unpickled."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        why = "is a directory" if p.is_dir() else "does not exist"
        raise WeightsFileError(
            f"weights file {str(p)!r} {why}; give a .safetensors file (e.g. one `edgetrain "
            "train` checkpointed, or safetensors.torch.save_file(model.state_dict(), PATH))"
        )
    try:
        with safe_open(str(p), "pt") as f:
            tensors = {
                k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()
            }
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsFileError(
            f"weights file {str(p)!r} is not a complete safetensors file ({e}); it may be "
            "truncated, or a pickle / torch.save file, which edgetrain never loads. Save the "
            "weights with safetensors.torch.save_file(model.state_dict(), PATH)"
        ) from None
    return WeightsHeader(p, tensors)


def load_weights(model, header: WeightsHeader) -> None:
    """Load the checked file into `model`: every tensor of its state_dict present with its
    shape, floating point where the model's is, finite; nothing extra (`WeightsFileError`)."""
    from safetensors import SafetensorError

    from edgetrain.storage import load_tensors

    want = {k: (v.dtype.is_floating_point, tuple(v.shape)) for k, v in model.state_dict().items()}
    have = header.tensors
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    shapes = [
        f"{k} {list(have[k][1])} (model {list(want[k][1])})"
        for k in sorted(set(want) & set(have))
        if have[k][1] != want[k][1]
    ]
    kinds = [
        f"{k} {have[k][0]}"
        for k in sorted(set(want) & set(have))
        if want[k][0] and have[k][0] not in _FLOAT_DTYPES
    ]
    if missing or extra or shapes or kinds:
        parts = [
            f"{what}: {', '.join(v[:4])}{' ...' if len(v) > 4 else ''}"
            for what, v in (
                (f"{len(missing)} missing", missing),
                (f"{len(extra)} not in the model", extra),
                ("other shapes", shapes),
                ("not floating point", kinds),
            )
            if v
        ]
        raise WeightsFileError(
            f"weights file {str(header.path)!r} does not match the plan's model ("
            + "; ".join(parts)
            + "); give the weights of this model (its state_dict)"
        )
    try:
        tensors = load_tensors(header.path)
    except (SafetensorError, OSError) as e:  # the file changed since the check
        raise WeightsFileError(f"cannot read weights file {str(header.path)!r}: {e}") from None
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:
        raise WeightsFileError(
            f"weights file {str(header.path)!r} holds NaN or infinity in {', '.join(bad[:4])}; "
            "train or load finite weights"
        )
    model.load_state_dict(tensors)
