"""The federation server's checkpoint: the state after each round, written so that a power loss
at any instant leaves a loadable checkpoint, also on a FAT file system (an SD card).

NOTE [ federation checkpoint: write order and recovery (FAT-safe) ]
FAT has no journal and no atomic rename over an existing file: after a power loss a file being
replaced may be gone, truncated or half-written. So no file a valid state names is ever
replaced or rewritten. Round r is committed in this order, each file written to a temporary
name, fsynced, renamed to a name that does not exist (unlinked first: no valid state names it),
and the folder fsynced:
  1. `global-rNNNN.safetensors` (and `momentum-rNNNN.safetensors` with server momentum);
  2. `state-rNNNN.json`: the round's state with the SHA-256 of each tensor file and of its own
     body: this file is the commit point;
  3. `state.json`: a small pointer to the newest state (a hint for people and tools, replaced
     in place; the loader never needs it);
  4. then, and only then, generations older than the previous one are deleted (the previous
     generation stays until the next commit).
Loading takes the newest `state-r*.json` whose checksum, whose tensor files' checksums and
whose fields are valid, and falls back to the one before when the newest is torn (logged;
kept in `Checkpoint.skipped`). No valid state at all is a `CheckpointCorruptError` naming
each file's problem and the fix; it is never a traceback. Temporary files are removed on save
and load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetrain.errors import CheckpointCorruptError, CheckpointMismatchError

log = logging.getLogger("edgetrain.federated")

FORMAT = "edgetrain-federation-state/2"
POINTER = "state.json"
KEEP_GENERATIONS = 2
_GEN = re.compile(r"^(global|momentum|state)-r(\d{4,})\.(safetensors|json)$")


def checkpoint_dir(out_dir: "str | os.PathLike") -> Path:
    return Path(out_dir) / "checkpoint"


@dataclass(frozen=True)
class Checkpoint:
    """A verified state: the round it completed, the global weights, the server's momentum
    buffers (empty without server momentum), the JSON state, and the newer state files that
    were skipped as corrupt (with the reason)."""

    round: int
    weights: dict[str, np.ndarray]
    momentum: dict[str, np.ndarray]
    state: dict
    path: Path
    skipped: tuple[str, ...] = ()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(state: dict) -> bytes:
    return json.dumps(state, sort_keys=True).encode()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder; the checksums still hold
        pass
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes) -> None:
    """`data` to `path`, a name no valid state names: temporary file, fsync, rename to the
    (absent) name, fsync the folder."""
    path.unlink(missing_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    _fsync_dir(path.parent)


def _clean_tmp(ck: Path) -> None:
    for p in ck.glob(".tmp-*"):
        p.unlink(missing_ok=True)


def _tensor_bytes(tensors: dict[str, np.ndarray], meta: dict[str, str]) -> bytes:
    from safetensors.numpy import save

    return save({k: np.require(v, requirements="C") for k, v in tensors.items()}, metadata=meta)


def save_checkpoint(
    config,
    out_dir: "str | os.PathLike",
    rnd: int,
    weights: dict[str, np.ndarray],
    state: dict,
    momentum: dict[str, np.ndarray] | None = None,
) -> Path:
    """Commit round `rnd` (see the NOTE above); returns the state file's path."""
    ck = checkpoint_dir(out_dir)
    ck.mkdir(parents=True, exist_ok=True)
    _clean_tmp(ck)
    meta = {"round": str(rnd), "fingerprint": config.fingerprint()}
    state = dict(state, format=FORMAT, round=rnd, fingerprint=config.fingerprint())
    for key, tensors in (("weights", weights), ("momentum", momentum or {})):
        state.pop(key, None)
        state.pop(f"{key}_sha256", None)
        if not tensors:
            continue
        name = f"{'global' if key == 'weights' else key}-r{rnd:04d}.safetensors"
        data = _tensor_bytes(tensors, meta)
        _write_new(ck / name, data)
        state[key], state[f"{key}_sha256"] = name, _sha(data)
    state = json.loads(_canonical(state))  # exactly what a load will read back
    body = _canonical(state)
    doc = {"format": FORMAT, "sha256": _sha(body), "state": state}
    sname = f"state-r{rnd:04d}.json"
    _write_new(ck / sname, json.dumps(doc, indent=1, sort_keys=True).encode())  # the commit
    pointer = {"format": FORMAT, "latest": sname, "round": rnd, "sha256": doc["sha256"]}
    tmp = ck / f".tmp-{POINTER}"
    tmp.write_text(json.dumps(pointer))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, ck / POINTER)  # not atomic on FAT: harmless, the loader never needs it
    _prune(ck, rnd)
    return ck / sname


def _prune(ck: Path, rnd: int) -> None:
    """Delete generations older than the KEEP_GENERATIONS newest up to `rnd`, and any newer
    than `rnd` (left by a run that did not commit them)."""
    for p in ck.iterdir():
        m = _GEN.match(p.name)
        if m and not rnd - KEEP_GENERATIONS < int(m.group(2)) <= rnd:
            p.unlink(missing_ok=True)


def _bad(path: Path, why: str) -> CheckpointCorruptError:
    return CheckpointCorruptError(f"{path.name}: {why}")


def _read_tensors(ck: Path, state: dict, key: str, prefix: str, rnd: int) -> dict:
    name, digest = state.get(key), state.get(f"{key}_sha256")
    if name is None:
        return {}
    if name != f"{prefix}-r{rnd:04d}.safetensors" or not isinstance(digest, str):
        raise _bad(ck / name if isinstance(name, str) else ck, f"{key} entry is not valid")
    try:
        data = (ck / name).read_bytes()
    except OSError as e:
        raise _bad(ck / name, f"cannot be read ({e.strerror})") from None
    if _sha(data) != digest:
        raise _bad(ck / name, "SHA-256 differs from the one its state recorded (torn write?)")
    from safetensors.numpy import load

    try:
        return dict(load(data))
    except Exception as e:
        raise _bad(ck / name, f"is not a safetensors file ({e})") from None


def _check_fields(path: Path, state: dict, rnd: int) -> None:
    history = state.get("history")
    if not isinstance(history, list) or len(history) != rnd:
        raise _bad(path, f"history does not hold one record per round (round {rnd})")
    for i, rec in enumerate(history):
        if not isinstance(rec, dict) or rec.get("round") != i + 1:
            raise _bad(path, f"history record #{i + 1} is not round {i + 1}'s")
    acc = state.get("initial_accuracy")
    if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 <= acc <= 1:
        raise _bad(path, f"initial_accuracy = {acc!r} is not in [0, 1]")
    resumed = state.get("resumed_at", [])
    if not isinstance(resumed, list) or not all(
        isinstance(r, int) and not isinstance(r, bool) for r in resumed
    ):
        raise _bad(path, f"resumed_at = {resumed!r} is not a list of rounds")
    if not isinstance(state.get("fingerprint"), str):
        raise _bad(path, "has no fingerprint")


def _verify(ck: Path, path: Path, rnd: int) -> Checkpoint:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:  # ValueError: JSON and UTF-8 decoding errors
        raise _bad(path, f"is not readable JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad(path, f"is not a {FORMAT} file")
    state = doc.get("state")
    if not isinstance(state, dict) or _sha(_canonical(state)) != doc.get("sha256"):
        raise _bad(path, "its SHA-256 does not match its content (torn or edited)")
    if state.get("round") != rnd:
        raise _bad(path, f"round = {state.get('round')!r}, its name says {rnd}")
    _check_fields(path, state, rnd)
    weights = _read_tensors(ck, state, "weights", "global", rnd)
    if not weights:
        raise _bad(path, "names no weights file")
    momentum = _read_tensors(ck, state, "momentum", "momentum", rnd)
    return Checkpoint(rnd, weights, momentum, state, path)


def read_checkpoint(out_dir: "str | os.PathLike") -> Checkpoint | None:
    """The newest valid state in `out_dir`'s checkpoint folder, or None when there is none
    (see the NOTE above for the fall-back and the errors)."""
    ck = checkpoint_dir(out_dir)
    if not ck.exists():
        return None
    if not ck.is_dir():
        raise CheckpointCorruptError(f"{ck} is not a folder; move it away or use another --out")
    _clean_tmp(ck)
    states = sorted(
        ((int(m.group(2)), p) for p in ck.iterdir() if (m := _GEN.match(p.name))),
        reverse=True,
    )
    problems: list[str] = []
    for rnd, path in states:
        if not path.name.startswith("state-"):
            continue
        try:
            cp = _verify(ck, path, rnd)
        except CheckpointCorruptError as e:
            log.warning("federation checkpoint: skipping %s", e)
            problems.append(str(e))
            continue
        return Checkpoint(cp.round, cp.weights, cp.momentum, cp.state, path, tuple(problems))
    fix = f"delete {ck} to start the federation over, or use another --out folder"
    if problems:
        raise CheckpointCorruptError(
            f"no valid federation state in {ck}: {'; '.join(problems)}; {fix}"
        )
    pointer = ck / POINTER
    if pointer.exists():
        try:
            doc = json.loads(pointer.read_bytes())
        except (OSError, ValueError) as e:
            raise CheckpointCorruptError(
                f"{pointer} is not valid JSON ({e}) and no state-r*.json is beside it; {fix}"
            ) from None
        if isinstance(doc, dict) and doc.get("format") == FORMAT:
            raise CheckpointCorruptError(
                f"{pointer} names {doc.get('latest')!r}, which is not in {ck}; {fix}"
            )
        raise CheckpointMismatchError(
            f"{ck} holds a checkpoint of an earlier edgetrain (one state.json, clients "
            f"weighted by their self-reported example counts) that this version does not "
            f"resume; {fix}"
        )
    return None


def load_checkpoint(config, out_dir: "str | os.PathLike") -> Checkpoint | None:
    """The newest valid state, checked to belong to this federation (`config`'s fingerprint);
    None when there is none."""
    cp = read_checkpoint(out_dir)
    if cp is not None and cp.state.get("fingerprint") != config.fingerprint():
        ck = checkpoint_dir(out_dir)
        raise CheckpointMismatchError(
            f"{ck} holds a federation with other settings (fingerprint "
            f"{cp.state.get('fingerprint')}, this run {config.fingerprint()}); use another "
            f"--out folder or delete {ck}"
        )
    return cp
