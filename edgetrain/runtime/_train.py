"""`edgetrain.train`: the training stage over the user's own data, in any form.

    report = edgetrain.train(model, plan, (x, y), steps=200, lr=0.05)
    report = edgetrain.train(model, plan, DataLoader(ds, batch_size=1), epochs=3)
    report.losses, report.metric_before, report.metric_after, report.measured_peak_bytes

Data may be tensors `(x, y)` (or anything with `.x` and `.y`: `edgetrain.data`'s
`LabeledData`), a map-style `torch.utils.data.Dataset` of `(x, y)` samples, or any iterable of
`(x, y)` batches of any size (a `DataLoader`, a generator over a sensor): samples are regrouped
into the plan's batch size as they arrive (`Trainer.feed`), so nothing needs the whole set in
memory. Tensors train through `train_loop` (seeded order, verified checkpoints and resume);
streams train in arrival order and cannot be checkpointed (there is no position to resume at).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from edgetrain import validate
from edgetrain.errors import InvalidArgumentError
from edgetrain.measure import MemoryMeter, storage_bytes
from edgetrain.planner import Plan
from edgetrain.runtime._loop import TrainResult, train_loop
from edgetrain.runtime._trainer import Trainer, check_batch


def train(
    model: torch.nn.Module,
    plan: Plan,
    data,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    lr: float = 0.01,
    loss_fn=None,
    optimizer=None,
    eval_data=None,
    checkpoint_dir=None,
    checkpoint_every: int = 10,
    resume_anyway: bool = False,
    seed: int = 0,
    show_progress: bool = True,
) -> TrainResult:
    """Train `model` under `plan` on `data` for `steps` optimizer steps or `epochs` passes.

    The loss is the plan's (`loss_fn` overrides it); the optimizer is the plan's, with its
    weight decay and learning-rate schedule (`optimizer`, a function of the parameters, replaces
    it: `Trainer`). With `eval_data` (same forms as `data`, never trained on) the report holds
    the task's metric before and after: accuracy for cross-entropy, else the mean loss.
    `checkpoint_dir` resumes and checkpoints (tensor data only: NOTE [ Checkpoints ])."""
    if (steps is None) == (epochs is None):
        raise InvalidArgumentError("give exactly one of steps= or epochs=")
    epochs = None if epochs is None else validate.positive_int(epochs, "epochs")
    before = evaluate(model, plan, eval_data, loss_fn) if eval_data is not None else None
    tensors = _as_tensors(data)
    if tensors is not None:
        x, y = tensors
        n_steps = steps if steps is not None else max(1, epochs * len(x) // plan.batch_size)
        result = train_loop(
            model,
            plan,
            x,
            y,
            steps=n_steps,
            lr=lr,
            checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every,
            seed=seed,
            show_progress=show_progress,
            resume_anyway=resume_anyway,
            loss_fn=loss_fn,
            optimizer=optimizer,
        )
    else:
        if checkpoint_dir is not None:
            raise InvalidArgumentError(
                "a stream of batches has no position to resume at, so it cannot be "
                "checkpointed: pass the data as tensors (x, y) or an edgetrain.data source"
            )
        result = _train_stream(
            model, plan, data, steps, epochs, lr, loss_fn, optimizer, show_progress
        )
    if eval_data is not None:
        result.metric_name, result.metric_before = before
        result.metric_after = evaluate(model, plan, eval_data, loss_fn)[1]
    return result


def _as_tensors(data) -> tuple[torch.Tensor, torch.Tensor] | None:
    if (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        return data
    x, y = getattr(data, "x", None), getattr(data, "y", None)
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        return x, y
    return None


def _batches(data, batch_size: int, seed: int = 0) -> Iterable:
    """One pass over `data` as (x, y) batches: a map-style Dataset through a seeded
    DataLoader, an iterable as it comes."""
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        g = torch.Generator().manual_seed(seed)
        return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, generator=g)
    if not isinstance(data, Iterable):
        raise InvalidArgumentError(
            f"data must be tensors (x, y), a Dataset of (x, y) samples or an iterable of (x, y) "
            f"batches, got {type(data).__name__}"
        )
    return data


def _train_stream(model, plan, data, steps, epochs, lr, loss_fn, optimizer, show_progress):
    t0 = time.perf_counter()
    losses: list[float] = []
    peak = 0
    b = plan.batch_size
    buf: list[tuple[torch.Tensor, torch.Tensor]] = []
    with contextlib.ExitStack() as stack:
        t = stack.enter_context(
            Trainer(model, plan, lr=lr, loss_fn=loss_fn, optimizer=optimizer, total_steps=steps)
        )
        bar = stack.enter_context(_progress(show_progress))
        task = bar.add_task("train", total=steps, loss="-")
        for epoch in range(epochs or 1 << 62):
            fed = 0
            for xb, yb in _batches(data, b, seed=epoch):
                xb, yb = _as_batch(xb), _as_batch(yb)
                check_batch(plan, xb)
                fed += 1
                buf.extend(zip(xb, yb))
                while len(buf) >= b and (steps is None or len(losses) < steps):
                    chunk, buf = buf[:b], buf[b:]
                    x = torch.stack([c[0] for c in chunk])
                    y = torch.stack([c[1] for c in chunk])
                    loss, peak = _step_metered(t, model, x, y, peak, metered=len(losses) < 2)
                    losses.append(loss)
                    bar.update(task, advance=1, loss=f"{loss:.4f}")
                if steps is not None and len(losses) >= steps:
                    break
            if fed == 0:
                raise InvalidArgumentError(
                    "the data gave no batch: is it empty, or an iterator already used up?"
                )
            if steps is not None and len(losses) >= steps:
                break
        written, skipped = t.storage_bytes_written, t.skipped_steps
    return TrainResult(
        steps=len(losses),
        losses=losses,
        measured_peak_bytes=peak,
        predicted_peak_bytes=plan.predicted_peak_bytes,
        budget_bytes=plan.budget_bytes,
        storage_bytes_written=written,
        skipped_steps=skipped,
        elapsed_s=time.perf_counter() - t0,
    )


def _step_metered(t: Trainer, model, x, y, peak: int, *, metered: bool) -> tuple[float, int]:
    """One step; metered (NOTE [ The measured training step ]) for the first ones."""
    if not metered:
        return t.step(x, y), peak
    state = [*model.parameters(), *model.buffers(), *t.optimizer_state()]
    with MemoryMeter(storage_bytes([*state, x, y])) as m:
        loss = t.step(x, y)
    return loss, max(peak, m.trace.peak_bytes)


def _as_batch(v) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        v = torch.as_tensor(v)
    return v if v.dim() > 0 else v.reshape(1)


def _progress(show: bool) -> Progress:
    return Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        console=Console(stderr=True),
        disable=not show,
        transient=True,
    )


@torch.no_grad()
def evaluate(model: torch.nn.Module, plan: Plan, data, loss_fn=None) -> tuple[str, float]:
    """The task's metric on `data` (the forms `train` takes): ("accuracy", fraction correct)
    for a cross-entropy plan, else ("loss", the mean loss). The model is evaluated in eval
    mode and put back in its mode."""
    from edgetrain.capture import loss_function

    fn = loss_fn or loss_function(plan.loss)
    tensors = _as_tensors(data)
    batches = (
        [(tensors[0][i : i + 256], tensors[1][i : i + 256]) for i in range(0, len(tensors[0]), 256)]
        if tensors is not None
        else _batches(data, plan.batch_size)
    )
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        total = n = correct = 0.0
        for xb, yb in batches:
            xb, yb = _as_batch(xb), _as_batch(yb)
            check_batch(plan, xb)
            out = model(xb)
            total += float(fn(out, yb)) * len(xb)
            if plan.loss == "cross-entropy":
                correct += float((out.argmax(1) == yb).sum())
            n += len(xb)
    finally:
        for m, mode in modes:
            m.training = mode
    if n == 0:
        raise InvalidArgumentError("the evaluation data is empty")
    return ("accuracy", correct / n) if plan.loss == "cross-entropy" else ("loss", total / n)
