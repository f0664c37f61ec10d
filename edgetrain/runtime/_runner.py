"""The PyTorch executor as a `PlanRunner`: run a plan for real and read its peak from the
allocator (NOTE [ Plans are checked against the allocator ])."""

from __future__ import annotations

import torch

from edgetrain.measure import MemoryMeter, storage_bytes
from edgetrain.planner import Executor, StepRequest
from edgetrain.runtime._trainer import Trainer


class _PyTorchRunner:
    executor = Executor.PYTORCH

    def measured_peak_bytes(self, request: StepRequest) -> int:
        """Largest peak over `request.steps` steps; the baseline is what is live when a step
        starts: parameters, buffers, optimizer state and the batch (NOTE [ The measured
        training step ]). The caller's random state is left as it was."""
        model, x, y = request.model, request.x, request.y
        assert isinstance(model, torch.nn.Module)
        assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
        peak = 0
        with (
            torch.random.fork_rng(),
            Trainer(
                model, request.plan, lr=1e-3, loss_fn=request.loss_fn, total_steps=request.steps
            ) as t,
        ):
            for _ in range(request.steps):
                state = [*model.parameters(), *model.buffers(), *t.optimizer_state()]
                with MemoryMeter(storage_bytes([*state, x, y])) as m:
                    t.step(x, y)
                assert m.trace is not None
                peak = max(peak, m.trace.peak_bytes)
        return peak


PYTORCH_RUNNER = _PyTorchRunner()
