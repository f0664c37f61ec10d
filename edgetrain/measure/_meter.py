"""The memory meter: ground truth for the whole project.

NOTE [ What "measured memory" means ]
    Measured memory is read from the CPU tensor allocator's own allocation and free events, as
    recorded by `torch.profiler` with `profile_memory=True`. Each event carries the signed size of
    one allocation (+) or free (-). Inside a metered region we replay the events in time order;
    the running sum is the number of bytes the region has allocated and not yet freed, and the
    region's peak is the largest running sum. Bytes that were already live when the region began
    (parameters, buffers, optimizer state, the input batch) are not seen by the profiler, so the
    caller states them as `baseline_bytes`, computed from the real tensors' storages
    (`untyped_storage().nbytes()`, each storage counted once) — never from an estimate.

    The CPU allocator reports a free only for blocks it saw allocated while profiling was on
    (c10's ProfiledCPUMemoryReporter keeps a size table); a tensor allocated before the region and
    freed inside it is therefore invisible. The training-step meter below is arranged so that no
    pre-existing storage is freed inside the region (gradients are set to None before it starts).

Private PyTorch APIs this module relies on (pinned for torch==2.13.0, checked by
tests/test_meter.py):
    - `profile.profiler.kineto_results.experimental_event_tree()`
    - `torch._C._profiler._EventType.Allocation`
    - allocation nodes' `extra_fields.alloc_size` and `extra_fields.device`
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile


@dataclass(frozen=True, slots=True)
class MemoryTrace:
    """What the allocator reported during a metered region.

    `deltas_bytes` are the signed allocation sizes in time order (CPU only); `peak_bytes` adds the
    caller's `baseline_bytes` to the largest running sum of the deltas.
    """

    baseline_bytes: int
    peak_delta_bytes: int
    end_delta_bytes: int
    n_events: int
    deltas_bytes: tuple[int, ...] = field(repr=False)

    @property
    def peak_bytes(self) -> int:
        return self.baseline_bytes + self.peak_delta_bytes

    @property
    def end_bytes(self) -> int:
        return self.baseline_bytes + self.end_delta_bytes

    def timeline_bytes(self) -> list[int]:
        """Live bytes after each event (baseline included)."""
        out, run = [], self.baseline_bytes
        for d in self.deltas_bytes:
            run += d
            out.append(run)
        return out


@contextlib.contextmanager
def stderr_silenced() -> Iterator[None]:
    """Silence file descriptor 2 (C++ logging) for the duration; Python's stderr is flushed."""
    import os
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (e.g. captured): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def walk_events(nodes: Iterable) -> Iterator:
    for n in nodes:
        yield n
        yield from walk_events(n.children)


def _allocation_deltas(prof: profile) -> list[int]:
    events = []
    for node in walk_events(prof.profiler.kineto_results.experimental_event_tree()):
        if node.tag != _EventType.Allocation:
            continue
        f = node.extra_fields
        if f.device.type != "cpu":
            continue
        events.append((node.start_time_ns, f.alloc_size))
    events.sort(key=lambda e: e[0])  # stable: ties keep recording order
    return [size for _, size in events]


class MemoryMeter:
    """Context manager: `with MemoryMeter(baseline_bytes=b) as m: ...; m.trace.peak_bytes`."""

    def __init__(self, baseline_bytes: int = 0) -> None:
        self.baseline_bytes = int(baseline_bytes)
        self._prof: profile | None = None
        self.trace: MemoryTrace | None = None

    def __enter__(self) -> "MemoryMeter":
        # The CPU allocator logs a warning for every free of a block born before profiling; those
        # frees are by design outside our region (see NOTE above), so the noise is dropped.
        self._prof = profile(
            activities=[ProfilerActivity.CPU],
            profile_memory=True,
            record_shapes=False,
            with_stack=False,
        )
        with stderr_silenced():  # kineto prints a line at every start and stop
            self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        assert self._prof is not None
        with stderr_silenced():
            self._prof.__exit__(*exc)
        deltas = _allocation_deltas(self._prof)
        run = peak = 0
        for d in deltas:
            run += d
            peak = max(peak, run)
        self.trace = MemoryTrace(self.baseline_bytes, peak, run, len(deltas), tuple(deltas))
        self._prof = None


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (each storage counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            continue
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def _optimizer_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    out = []
    for state in opt.state.values():
        out.extend(v for v in state.values() if isinstance(v, torch.Tensor))
    return out


@dataclass(frozen=True, slots=True)
class MeasuredStep:
    """One measured training step (see NOTE [ The measured training step ])."""

    peak_bytes: int
    activation_bytes: int
    baseline_bytes: int
    state_bytes: int  # parameters + buffers + optimizer state
    batch_bytes: int
    loss: float
    trace: MemoryTrace = field(repr=False)


@contextlib.contextmanager
def _quiet_profiler_warnings() -> Iterator[None]:
    logger = logging.getLogger("torch")
    old = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def saved_activation_bytes(model: torch.nn.Module, fn) -> tuple[int, object]:
    """Run `fn()` under `saved_tensors_hooks` and return (bytes, fn's result).

    Bytes = distinct storages autograd saved for backward, model parameters and buffers excluded.
    Only storage identity and size are recorded, never the tensors themselves, so lifetimes are
    not extended.
    """
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}
    exclude |= {b.untyped_storage().data_ptr() for b in model.buffers()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        ptr = s.data_ptr()
        if ptr not in exclude and s.nbytes() > 0:
            seen[ptr] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return sum(seen.values()), result


def measure_training_step(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn=torch.nn.functional.cross_entropy,
    *,
    warmup_steps: int = 1,
) -> MeasuredStep:
    """Measure the peak and the saved-activation bytes of one real training step.

    NOTE [ The measured training step ]
        A step is: forward, loss, backward, `optimizer.step()`; gradients are None when it
        begins (`zero_grad(set_to_none=True)` just before) and still live when it ends.
        `warmup_steps` real steps run first so that lazily created state (momentum / Adam
        buffers) exists, as it does on a device in steady state. The metered region starts
        with the parameters, buffers, optimizer state and the batch (x, y) live: their distinct
        storages form the baseline. The cost model's `peak_bytes` predicts exactly this number.
    """
    model.train()
    for _ in range(warmup_steps):
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    # Saved activations: one separate step, so the hooks do not perturb the metered one.
    act_bytes, _ = saved_activation_bytes(model, lambda: loss_fn(model(x), y))
    # Measured peak. Parameters are restored afterwards? No: a real step changes them, which is
    # what a device does; callers that need the weights unchanged pass a copy of the model.
    state = list(model.parameters()) + list(model.buffers()) + _optimizer_tensors(optimizer)
    state_bytes = storage_bytes(state)
    batch_bytes = storage_bytes([x, y])
    baseline = storage_bytes(state + [x, y])
    optimizer.zero_grad(set_to_none=True)
    with _quiet_profiler_warnings(), MemoryMeter(baseline) as meter:
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        del loss
    optimizer.zero_grad(set_to_none=True)
    assert meter.trace is not None
    return MeasuredStep(
        meter.trace.peak_bytes,
        act_bytes,
        baseline,
        state_bytes,
        batch_bytes,
        loss_value,
        meter.trace,
    )
