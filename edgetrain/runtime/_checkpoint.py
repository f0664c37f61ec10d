"""Checkpoints of `edgetrain train`: what a checkpoint directory holds and how it is trusted.

NOTE [ Checkpoints ]
    A checkpoint directory holds
        state.safetensors   model parameters and buffers, optimizer state, the CPU RNG state;
                            its metadata: format, step, cursor, batch size, the run fingerprint,
                            a sha256 per tensor and a sha256 of the metadata itself
        losses.log          the loss history, append-only and rotated (NOTE [ Loss log ])
        progress.json       a small human-readable summary (step, last loss, fingerprint)
        lock                the PID of the one process writing here (NOTE [ Checkpoint lock ])
    Crash consistency: a save (1) appends the steps' losses to the log and fsyncs it, (2)
    replaces state.safetensors atomically (temp file, fsync, rename, fsync of the directory):
    THIS RENAME IS THE COMMIT POINT, (3) replaces progress.json atomically. A kill or power loss
    at any instant leaves the previous commit or the new one, never a mix; the log may run ahead
    of the commit (resume trims it) and progress.json may lag one save behind it (resume never
    reads it). A device loses at most the steps since the last commit. Leftover `.tmp-*` files
    of a killed write are removed at start and on exit, under the lock.
    Trust: resume verifies the metadata's checksum and every tensor's checksum, validates each
    metadata field (types, ranges, cursor = step x batch size) and each tensor's name, shape
    and dtype against the live model and optimizer BEFORE changing anything, and compares the
    run fingerprint: a checkpoint of another plan, model or optimizer is refused
    (`CheckpointMismatchError`); another lr, data, order seed or edgetrain version is refused
    unless `resume_anyway` (the state still fits the run; only the continuation differs). A
    corrupt file is `CheckpointCorruptError` naming the file and the field or tensor.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections import deque
from dataclasses import dataclass
from importlib import metadata as _pkg_metadata
from pathlib import Path

import torch

from edgetrain.errors import CheckpointCorruptError, CheckpointMismatchError, OutputPathError
from edgetrain.planner import Plan
from edgetrain.runtime._lock import CheckpointLock
from edgetrain.runtime._losslog import LossLog, LossRecord
from edgetrain.runtime._trainer import Trainer
from edgetrain.storage import (
    read_tensor_file,
    remove_temp_files,
    save_tensors_atomic,
    write_json_atomic,
)

CHECKPOINT_FORMAT = "edgetrain-train-checkpoint/3"
_OLDER_FORMATS = ("edgetrain-train-checkpoint/1", "edgetrain-train-checkpoint/2")
STATE_NAME = "state.safetensors"
PROGRESS_NAME = "progress.json"
LOSS_HISTORY_KEPT = 1 << 17  # losses a run keeps in memory (and returns); the log keeps more
_MAX_STEP = (1 << 63) - 1


def _edgetrain_version() -> str:
    try:
        return _pkg_metadata.version("edgetrain")
    except _pkg_metadata.PackageNotFoundError:
        return "unknown"


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def tensor_sha256(t: torch.Tensor, name: str = "") -> str:
    """sha256 over the name, dtype, shape and bytes of a tensor."""
    h = hashlib.sha256(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel():
        h.update(flat.view(torch.uint8).numpy().data)
    return h.hexdigest()


# -- the run fingerprint -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunFingerprint:
    """What makes a checkpoint belong to a run (NOTE [ Checkpoints ])."""

    plan_sha256: str
    model_sha256: str  # parameter and buffer names, shapes and dtypes
    optimizer: str
    lr: float
    lr_schedule: str
    data_spec: str
    data_sha256: str
    order_seed: int
    edgetrain_version: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# fields whose change makes the checkpoint's state meaningless for this run
UNSAFE_FIELDS = ("plan_sha256", "model_sha256", "optimizer")
# ... and those a run may change mid-way (`resume_anyway`): the state still fits
SAFE_FIELDS = ("lr", "lr_schedule", "data_spec", "data_sha256", "order_seed", "edgetrain_version")
_LABELS = {
    "plan_sha256": "plan",
    "model_sha256": "model (parameter names, shapes, dtypes)",
    "optimizer": "optimizer",
    "lr": "learning rate (--lr)",
    "lr_schedule": "learning-rate schedule",
    "data_spec": "data (--data)",
    "data_sha256": "training data contents",
    "order_seed": "data order seed",
    "edgetrain_version": "edgetrain version",
}


def model_sha256(model: torch.nn.Module) -> str:
    spec = [[k, list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()]
    return hashlib.sha256(_canonical(spec)).hexdigest()


def data_sha256(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(tensor_sha256(t).encode())
    return h.hexdigest()


def run_fingerprint(
    model: torch.nn.Module,
    plan: Plan,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    seed: int,
    data_spec: str | None = None,
) -> RunFingerprint:
    return RunFingerprint(
        plan_sha256=hashlib.sha256(_canonical(plan.to_dict())).hexdigest(),
        model_sha256=model_sha256(model),
        optimizer=plan.optimizer + (" (in-place update)" if plan.in_place_update else ""),
        lr=float(lr),
        lr_schedule=plan.schedule,
        data_spec=data_spec or "",
        data_sha256=data_sha256(x, y),
        order_seed=int(seed),
        edgetrain_version=_edgetrain_version(),
    )


def _show(field: str, value) -> str:
    if field.endswith("sha256") and isinstance(value, str):
        return value[:12]
    return repr(value)


def check_fingerprint(
    path: Path, recorded: dict, current: RunFingerprint, *, resume_anyway: bool
) -> None:
    """Refuse a checkpoint of another run (NOTE [ Checkpoints ]); warn on an allowed change."""
    now = current.to_dict()
    differs = [f for f in now if recorded.get(f) != now[f]]
    if not differs:
        return
    what = "; ".join(
        f"{_LABELS[f]}: checkpoint {_show(f, recorded.get(f))}, now {_show(f, now[f])}"
        for f in differs
    )
    unsafe = [f for f in differs if f in UNSAFE_FIELDS]
    if unsafe:
        raise CheckpointMismatchError(
            f"checkpoint {path} belongs to another run ({what}). Its state does not fit this "
            f"run's {', '.join(_LABELS[f] for f in unsafe)}: resume with the plan and model it "
            f"was trained with, or use another --resume folder (or delete {path.parent} to "
            "start over); --resume-anyway cannot override this"
        )
    if not resume_anyway:
        raise CheckpointMismatchError(
            f"checkpoint {path} was written by a run with other settings ({what}). Resume with "
            "the recorded settings, or pass --resume-anyway (Python: resume_anyway=True) to "
            "continue this checkpoint with the new ones (safe: the state still fits the plan and model)"
        )
    warnings.warn(
        f"resuming {path} with changed settings ({what}) because of --resume-anyway",
        RuntimeWarning,
        stacklevel=3,
    )


# -- the state file ----------------------------------------------------------------------------


def opt_tensors(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {}
    opts = [trainer.optimizer] if trainer.optimizer else list(trainer._per_param_opt.values())
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for opt in opts:
        for p, st in opt.state.items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    out[f"optim/{names[id(p)]}/{k}"] = v
    return out


def _meta_sha256(meta: dict[str, str]) -> str:
    return hashlib.sha256(
        _canonical({k: v for k, v in meta.items() if k != "meta_sha256"})
    ).hexdigest()


def save_state(
    path: Path,
    trainer: Trainer,
    *,
    step: int,
    cursor: int,
    fingerprint: RunFingerprint,
) -> None:
    """Write state.safetensors atomically: the commit point (NOTE [ Checkpoints ])."""
    tensors = {f"model/{k}": v for k, v in trainer.model.state_dict().items()}
    tensors.update(opt_tensors(trainer))
    tensors["rng/cpu"] = torch.get_rng_state()
    meta = {
        "format": CHECKPOINT_FORMAT,
        "step": str(step),
        "cursor": str(cursor),
        "batch_size": str(trainer.plan.batch_size),
        "fingerprint": _canonical(fingerprint.to_dict()).decode(),
        "tensor_sha256": _canonical({k: tensor_sha256(v, k) for k, v in tensors.items()}).decode(),
    }
    meta["meta_sha256"] = _meta_sha256(meta)
    save_tensors_atomic(tensors, path, metadata=meta)


@dataclass(frozen=True, slots=True)
class _State:
    step: int
    cursor: int
    fingerprint: dict
    tensors: dict[str, torch.Tensor]


def _corrupt(path: Path, what: str) -> CheckpointCorruptError:
    return CheckpointCorruptError(
        f"checkpoint {path} is corrupt: {what}. It cannot be trusted: restore the folder from "
        f"a backup, or delete {path.parent} to start over"
    )


def _count(path: Path, meta: dict, field: str) -> int:
    v = meta.get(field)
    if v is None:
        raise _corrupt(path, f"metadata field {field!r} is missing")
    if not (isinstance(v, str) and v.isascii() and v.isdigit() and v == str(int(v))):
        raise _corrupt(path, f"metadata field {field!r} is {v!r}, not an integer >= 0")
    if int(v) > _MAX_STEP:
        raise _corrupt(path, f"metadata field {field!r} is {v}, beyond 2**63")
    return int(v)


def _json_field(path: Path, meta: dict, field: str) -> dict:
    v = meta.get(field)
    if v is None:
        raise _corrupt(path, f"metadata field {field!r} is missing")
    try:
        obj = json.loads(v)
    except ValueError as e:
        raise _corrupt(path, f"metadata field {field!r} is not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise _corrupt(path, f"metadata field {field!r} is not a JSON object")
    return obj


def read_state(path: Path) -> _State:
    """The checkpoint at `path`, its metadata validated and every checksum verified."""
    tensors, meta = read_tensor_file(path, error=CheckpointCorruptError)
    fmt = meta.get("format")
    if fmt != CHECKPOINT_FORMAT:
        if fmt in _OLDER_FORMATS:
            raise CheckpointMismatchError(
                f"checkpoint {path} has the older format {fmt!r}, which records no run "
                f"fingerprint or checksums, so it cannot be verified; delete {path.parent} (or "
                "use another --resume folder) to start a new run"
            )
        if fmt is None and ("rng/cpu" in tensors or any(k.startswith("model/") for k in tensors)):
            raise _corrupt(path, "metadata field 'format' is missing")
        raise CheckpointMismatchError(
            f"{path} is not an edgetrain training checkpoint (format {fmt!r}, expected "
            f"{CHECKPOINT_FORMAT!r}); use another --resume folder or delete it"
        )
    step, cursor = _count(path, meta, "step"), _count(path, meta, "cursor")
    batch = _count(path, meta, "batch_size")
    if cursor != step * batch:
        raise _corrupt(
            path,
            f"metadata step {step} and cursor {cursor} disagree: {step} steps of batch "
            f"{batch} read {step * batch} samples",
        )
    fingerprint = _json_field(path, meta, "fingerprint")
    sums = _json_field(path, meta, "tensor_sha256")
    if meta.get("meta_sha256") != _meta_sha256(meta):
        raise _corrupt(path, "the metadata's sha256 does not match (it was changed after saving)")
    if set(sums) != set(tensors):
        missing = sorted(set(sums) - set(tensors))
        extra = sorted(set(tensors) - set(sums))
        raise _corrupt(path, f"tensors missing {missing[:5]}, unexpected {extra[:5]}")
    for name, t in tensors.items():
        if sums[name] != tensor_sha256(t, name):
            raise _corrupt(path, f"tensor {name!r} fails its sha256 (its bytes changed)")
    return _State(step, cursor, fingerprint, tensors)


def _check_shapes(path: Path, state: _State, trainer: Trainer) -> None:
    """Every tensor fits the live model / optimizer / RNG before anything is changed."""
    live = trainer.model.state_dict()
    saved = {k[6:]: v for k, v in state.tensors.items() if k.startswith("model/")}
    if set(saved) != set(live):
        raise _corrupt(
            path,
            f"model tensors missing {sorted(set(live) - set(saved))[:5]}, unexpected "
            f"{sorted(set(saved) - set(live))[:5]}",
        )
    for k, v in saved.items():
        if v.shape != live[k].shape or v.dtype != live[k].dtype:
            raise _corrupt(
                path,
                f"tensor 'model/{k}' is {v.dtype} {tuple(v.shape)}, the model's is "
                f"{live[k].dtype} {tuple(live[k].shape)}",
            )
    optimized = _optimizers(trainer)
    for k, v in state.tensors.items():
        if k.startswith("optim/"):
            pname, _, key = k[6:].rpartition("/")
            p = optimized.get(pname, (None, None))[0]
            if p is None or not key or v.shape not in (p.shape, torch.Size([])):
                raise _corrupt(path, f"tensor {k!r} matches no trained parameter's state")
        elif k != "rng/cpu" and not k.startswith("model/"):
            raise _corrupt(path, f"unexpected tensor {k!r}")
    rng = state.tensors.get("rng/cpu")
    ref = torch.get_rng_state()
    if rng is None or rng.dtype != ref.dtype or rng.shape != ref.shape:
        raise _corrupt(path, "the RNG state 'rng/cpu' is missing or has the wrong size")


def _optimizers(trainer: Trainer) -> dict[str, tuple[torch.nn.Parameter, torch.optim.Optimizer]]:
    named = dict(trainer.model.named_parameters())
    out = {}
    for name, p in named.items():
        if trainer.optimizer is not None:
            if any(p is q for g in trainer.optimizer.param_groups for q in g["params"]):
                out[name] = (p, trainer.optimizer)
        elif p in trainer._per_param_opt:
            out[name] = (p, trainer._per_param_opt[p])
    return out


def apply_state(path: Path, state: _State, trainer: Trainer) -> None:
    _check_shapes(path, state, trainer)
    trainer.model.load_state_dict(
        {k[6:]: v for k, v in state.tensors.items() if k.startswith("model/")}
    )
    optimized = _optimizers(trainer)
    for k, v in state.tensors.items():
        if k.startswith("optim/"):
            pname, _, key = k[6:].rpartition("/")
            p, opt = optimized[pname]
            opt.state[p][key] = v.clone()
    try:
        torch.set_rng_state(state.tensors["rng/cpu"])
    except RuntimeError as e:
        raise _corrupt(path, f"the RNG state 'rng/cpu' is invalid ({e})") from None


# -- the directory -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resumed:
    step: int
    cursor: int
    losses: deque  # the retained losses, ending at `step`


class CheckpointDir:
    """`with CheckpointDir(dir, fingerprint) as ck:` holds the lock, cleans leftovers, resumes
    (`ck.resume(trainer)`) and commits (`ck.record(...)`, `ck.commit(...)`); NOTE [ Checkpoints ]."""

    def __init__(
        self,
        directory: "str | Path",
        fingerprint: RunFingerprint,
        *,
        resume_anyway: bool = False,
        log: LossLog | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.resume_anyway = resume_anyway
        self.log = log or LossLog(self.directory)
        self.lock = CheckpointLock(self.directory)
        self._pending: list[LossRecord] = []

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_NAME

    def __enter__(self) -> "CheckpointDir":
        if self.directory.exists() and not self.directory.is_dir():
            raise OutputPathError(
                f"--resume {self.directory} is a file, not a checkpoint folder; name a folder"
            )
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputPathError(
                f"checkpoint folder {self.directory} cannot be created "
                f"({e.strerror or e}): name a writable folder for --resume"
            ) from None
        self.lock.acquire()
        try:
            remove_temp_files(self.directory)
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            remove_temp_files(self.directory)
        finally:
            self.lock.release()

    def resume(self, trainer: Trainer) -> Resumed:
        """Load the committed checkpoint into `trainer` (step 0 and an empty log if none)."""
        if not self.state_path.exists():
            self.log.clear()  # a log without a commit holds only uncommitted steps
            return Resumed(0, 0, deque(maxlen=LOSS_HISTORY_KEPT))
        state = read_state(self.state_path)
        check_fingerprint(
            self.state_path, state.fingerprint, self.fingerprint, resume_anyway=self.resume_anyway
        )
        if state.cursor != state.step * trainer.plan.batch_size:
            raise _corrupt(self.state_path, "its cursor does not fit this plan's batch size")
        records = self.log.read(state.step)
        apply_state(self.state_path, state, trainer)
        losses = deque((r.loss for r in records), maxlen=LOSS_HISTORY_KEPT)
        return Resumed(state.step, state.cursor, losses)

    def record(self, step: int, loss: float) -> None:
        """The loss of optimizer step `step` (1-based), logged at the next commit."""
        self._pending.append(LossRecord(step, loss))

    def commit(self, trainer: Trainer, step: int, cursor: int) -> None:
        """Log, then state (the commit point), then progress: NOTE [ Checkpoints ]."""
        self.log.append(self._pending)
        last = self._pending[-1].loss if self._pending else None
        self._pending = []
        save_state(self.state_path, trainer, step=step, cursor=cursor, fingerprint=self.fingerprint)
        write_json_atomic(
            {
                "step": step,
                "cursor": cursor,
                "loss": last,
                "losses_log": self.log.current.name,
                "fingerprint": self.fingerprint.to_dict(),
            },
            self.directory / PROGRESS_NAME,
        )
