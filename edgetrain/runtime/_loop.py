"""The training loop of `edgetrain train`: progress bar, atomic checkpoints, resume.

NOTE [ Checkpoints ]
    A checkpoint is ONE file, `state.safetensors`, written atomically (temp file + fsync +
    rename): model parameters and buffers, optimizer state tensors and the CPU RNG state as
    tensors; step, data cursor and losses in the file's safetensors metadata. One rename is the
    commit point, so a kill or power loss at any instant leaves either the previous checkpoint
    or the new one, never a mix: a device loses at most the steps since the last checkpoint.
    `progress.json` is a human-readable mirror written after the commit; resume never reads it.
    (An earlier design wrote tensors and progress as two files and could be killed between the
    two renames, leaving a pair that resume refused.)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors import safe_open

from edgetrain import validate
from edgetrain.errors import InvalidArgumentError
from edgetrain.measure import MemoryMeter, storage_bytes
from edgetrain.planner import Plan
from edgetrain.runtime._trainer import Trainer
from edgetrain.storage import load_tensors, save_tensors_atomic, write_json_atomic


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    measured_peak_bytes: int
    predicted_peak_bytes: int
    budget_bytes: int
    storage_bytes_written: int
    skipped_steps: int
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    elapsed_s: float = 0.0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "losses": self.losses,
            "measured_peak_bytes": self.measured_peak_bytes,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "budget_bytes": self.budget_bytes,
            "storage_bytes_written": self.storage_bytes_written,
            "skipped_steps": self.skipped_steps,
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
            "elapsed_s": self.elapsed_s,
            **self.extra,
        }


def _opt_tensors(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {}
    opts = [trainer.optimizer] if trainer.optimizer else list(trainer._per_param_opt.values())
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for opt in opts:
        for p, st in opt.state.items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    out[f"optim/{names[id(p)]}/{k}"] = v
    return out


CHECKPOINT_FORMAT = "edgetrain-train-checkpoint/2"


def save_checkpoint(
    directory: Path, trainer: Trainer, step: int, cursor: int, losses: list[float]
) -> None:
    """Commit one checkpoint with a single atomic rename (NOTE [ Checkpoints ])."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{k}": v for k, v in trainer.model.state_dict().items()}
    tensors.update(_opt_tensors(trainer))
    tensors["rng/cpu"] = torch.get_rng_state()
    meta = {
        "format": CHECKPOINT_FORMAT,
        "step": str(step),
        "cursor": str(cursor),
        "losses": json.dumps(losses),
    }
    save_tensors_atomic(tensors, directory / "state.safetensors", metadata=meta)
    write_json_atomic(
        {"step": step, "cursor": cursor, "losses": losses}, directory / "progress.json"
    )


def load_checkpoint(directory: Path, trainer: Trainer) -> tuple[int, int, list[float]]:
    """(step, cursor, losses) of the committed checkpoint in `directory`; (0, 0, []) if none."""
    tpath = directory / "state.safetensors"
    if not tpath.exists():
        return 0, 0, []
    try:
        with safe_open(str(tpath), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own SafetensorError for a torn header
        raise InvalidArgumentError(
            f"checkpoint {tpath} cannot be read ({e}); it was not written by edgetrain's atomic "
            "writer. Delete the folder to start over"
        ) from e
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InvalidArgumentError(
            f"{tpath} is not an edgetrain training checkpoint (format {meta.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT!r}); use another --resume folder or delete it"
        )
    tensors = load_tensors(tpath)
    trainer.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    params = dict(trainer.model.named_parameters())
    opts = {id(p): o for p, o in trainer._per_param_opt.items()}
    for k, v in tensors.items():
        if not k.startswith("optim/"):
            continue
        pname, key = k[6:].rsplit("/", 1)
        p = params[pname]
        opt = trainer.optimizer or opts[id(p)]
        opt.state[p][key] = v.clone()
    torch.set_rng_state(tensors["rng/cpu"])
    return int(meta["step"]), int(meta["cursor"]), list(json.loads(meta["losses"]))


def train_loop(
    model: torch.nn.Module,
    plan: Plan,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    lr: float = 0.01,
    checkpoint_dir: "str | Path | None" = None,
    checkpoint_every: int = 10,
    seed: int = 0,
    show_progress: bool = True,
    measure_steps: int = 2,
) -> TrainResult:
    """Train `steps` optimizer steps on batches drawn in a seeded order from (x, y).

    Seeds torch's global RNG with `seed` (or restores it from the checkpoint when resuming)."""
    steps = validate.steps(steps)
    if len(x) < plan.batch_size:
        raise InvalidArgumentError(f"{len(x)} samples cannot fill one batch of {plan.batch_size}")
    t0 = time.perf_counter()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    ckdir = Path(checkpoint_dir) if checkpoint_dir else None
    measured_peak = 0
    with Trainer(model, plan, lr=lr) as trainer:
        # The global RNG (dropout, random augmentations) starts from `seed` too, so a run is
        # reproducible whatever ran before it in the process; a resume restores the saved state.
        torch.manual_seed(seed)
        start, cursor, losses = load_checkpoint(ckdir, trainer) if ckdir else (0, 0, [])
        console = Console(stderr=True)
        with Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=console,
            disable=not show_progress,
            transient=True,
        ) as bar:
            task = bar.add_task("train", total=steps, completed=start, loss="-")
            for step in range(start, steps):
                idx = torch.tensor([order[(cursor + i) % len(x)] for i in range(plan.batch_size)])
                cursor += plan.batch_size
                xb, yb = x[idx].contiguous(), y[idx].contiguous()
                if step - start < measure_steps:
                    state = (
                        list(model.parameters())
                        + list(model.buffers())
                        + list(_opt_tensors(trainer).values())
                    )
                    with MemoryMeter(storage_bytes(state + [xb, yb])) as meter:
                        loss = trainer.step(xb, yb)
                    measured_peak = max(measured_peak, meter.trace.peak_bytes)
                else:
                    loss = trainer.step(xb, yb)
                losses.append(loss)
                bar.update(task, advance=1, loss=f"{loss:.4f}")
                if ckdir and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                    save_checkpoint(ckdir, trainer, step + 1, cursor, losses)
        written = trainer.storage_bytes_written
        skipped = trainer.skipped_steps
    return TrainResult(
        steps=steps,
        losses=losses,
        measured_peak_bytes=measured_peak,
        predicted_peak_bytes=plan.predicted_peak_bytes,
        budget_bytes=plan.budget_bytes,
        storage_bytes_written=written,
        skipped_steps=skipped,
        elapsed_s=time.perf_counter() - t0,
    )
