"""The training loop of `edgetrain train`: progress bar, verified checkpoints, resume.

Checkpoints, their crash consistency and how a resume trusts them: NOTE [ Checkpoints ] in
`_checkpoint.py`; the loss history's log: NOTE [ Loss log ]; the directory's lock: NOTE
[ Checkpoint lock ].
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from edgetrain import validate
from edgetrain.errors import CheckpointMismatchError, InvalidArgumentError
from edgetrain.measure import MemoryMeter, storage_bytes
from edgetrain.planner import Plan
from edgetrain.runtime._checkpoint import (
    LOSS_HISTORY_KEPT,
    CheckpointDir,
    Resumed,
    opt_tensors,
    run_fingerprint,
)
from edgetrain.runtime._trainer import Trainer, check_batch


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
    # the task's metric on held-out data (`edgetrain.train(eval_data=...)`): accuracy for
    # cross-entropy, else the mean loss
    metric_name: str | None = None
    metric_before: float | None = None
    metric_after: float | None = None
    elapsed_s: float = 0.0
    extra: dict = field(default_factory=dict)
    # losses[i] is the loss of step losses_from_step + i + 1: a long run keeps (and a resumed
    # one reads back) only its last LOSS_HISTORY_KEPT losses (NOTE [ Loss log ])
    losses_from_step: int = 0

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "losses": self.losses,
            "losses_from_step": self.losses_from_step,
            "measured_peak_bytes": self.measured_peak_bytes,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "budget_bytes": self.budget_bytes,
            "storage_bytes_written": self.storage_bytes_written,
            "skipped_steps": self.skipped_steps,
            "accuracy_before": self.accuracy_before,
            "accuracy_after": self.accuracy_after,
            "metric": self.metric_name,
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "elapsed_s": self.elapsed_s,
            **self.extra,
        }


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
    data_spec: str | None = None,
    resume_anyway: bool = False,
    loss_fn=None,
    optimizer=None,
) -> TrainResult:
    """Train `steps` optimizer steps on batches drawn in a seeded order from (x, y).

    Seeds torch's global RNG with `seed` (or restores it from the checkpoint when resuming).
    With `checkpoint_dir`, resumes from the checkpoint there (verified: NOTE [ Checkpoints ])
    and commits one every `checkpoint_every` steps; `data_spec` names the data in the run's
    fingerprint (the CLI's --data) and `resume_anyway` accepts a checkpoint written with
    another lr, data, seed or edgetrain version (never another plan, model or optimizer).
    The loss is the plan's (`loss_fn` overrides it, as in `Trainer`); the data's samples must
    be those the plan was made for (NOTE [ Where data meets the plan ])."""
    steps = validate.steps(steps)
    checkpoint_every = validate.positive_int(checkpoint_every, "checkpoint interval")
    check_batch(plan, x)
    if len(x) < plan.batch_size:
        raise InvalidArgumentError(f"{len(x)} samples cannot fill one batch of {plan.batch_size}")
    t0 = time.perf_counter()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    with contextlib.ExitStack() as stack:
        ck = None
        if checkpoint_dir:
            fp = run_fingerprint(model, plan, x, y, lr=lr, seed=seed, data_spec=data_spec)
            ck = stack.enter_context(CheckpointDir(checkpoint_dir, fp, resume_anyway=resume_anyway))
        trainer = stack.enter_context(
            Trainer(model, plan, lr=lr, loss_fn=loss_fn, optimizer=optimizer, total_steps=steps)
        )
        # The global RNG (dropout, random augmentations) starts from `seed` too, so a run is
        # reproducible whatever ran before it in the process; a resume restores the saved state.
        torch.manual_seed(seed)
        resumed = ck.resume(trainer) if ck else Resumed(0, 0, deque(maxlen=LOSS_HISTORY_KEPT))
        trainer.steps_done = resumed.step  # the learning-rate schedule's clock
        if resumed.step > steps:
            raise CheckpointMismatchError(
                f"checkpoint {ck.state_path} is at step {resumed.step}, past --steps {steps}: "
                f"that run is done. Pass --steps above {resumed.step} to train further"
            )
        run = _Run(trainer, ck, order, x, y, measure_steps, checkpoint_every)
        run.steps(resumed, steps, show_progress)
        written, skipped = trainer.storage_bytes_written, trainer.skipped_steps
    end = max(steps, resumed.step)
    return TrainResult(
        steps=steps,
        losses=list(resumed.losses),
        measured_peak_bytes=run.measured_peak,
        predicted_peak_bytes=plan.predicted_peak_bytes,
        budget_bytes=plan.budget_bytes,
        storage_bytes_written=written,
        skipped_steps=skipped,
        elapsed_s=time.perf_counter() - t0,
        losses_from_step=end - len(resumed.losses),
    )


@dataclass
class _Run:
    trainer: Trainer
    ck: CheckpointDir | None
    order: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    measure_steps: int
    checkpoint_every: int
    measured_peak: int = 0

    def steps(self, resumed: Resumed, steps: int, show_progress: bool) -> None:
        """Steps resumed.step+1 .. steps; appends each loss to resumed.losses."""
        start, cursor, batch = resumed.step, resumed.cursor, self.trainer.plan.batch_size
        with Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not show_progress,
            transient=True,
        ) as bar:
            task = bar.add_task("train", total=steps, completed=start, loss="-")
            n = len(self.x)
            for step in range(start, steps):
                idx = torch.tensor([self.order[(cursor + i) % n] for i in range(batch)])
                cursor += batch
                xb, yb = self.x[idx].contiguous(), self.y[idx].contiguous()
                loss = self._step(xb, yb, measure=step - start < self.measure_steps)
                resumed.losses.append(loss)
                bar.update(task, advance=1, loss=f"{loss:.4f}")
                if self.ck is not None:
                    self.ck.record(step + 1, loss)
                    if (step + 1) % self.checkpoint_every == 0 or step + 1 == steps:
                        self.ck.commit(self.trainer, step + 1, cursor)

    def _step(self, xb: torch.Tensor, yb: torch.Tensor, *, measure: bool) -> float:
        if not measure:
            return self.trainer.step(xb, yb)
        model = self.trainer.model
        state = (
            list(model.parameters())
            + list(model.buffers())
            + list(opt_tensors(self.trainer).values())
        )
        with MemoryMeter(storage_bytes(state + [xb, yb])) as meter:
            loss = self.trainer.step(xb, yb)
        self.measured_peak = max(self.measured_peak, meter.trace.peak_bytes)
        return loss
