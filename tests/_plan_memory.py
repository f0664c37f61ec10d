"""Measuring a plan as the Trainer runs it: the allocator's peak over real steps (shared by the
runtime and zoo tests)."""

import torch

from edgetrain.measure import MemoryMeter, storage_bytes
from edgetrain.runtime import Trainer


def measure_plan(model, plan, xs, ys, **trainer_kwargs) -> int:
    """Largest allocator peak over the steps (xs[i], ys[i]), baseline = the parameters,
    buffers, optimizer state and batch live when each step starts (NOTE [ The measured
    training step ])."""
    peaks = []
    with Trainer(model, plan, lr=0.01, **trainer_kwargs) as t:
        for xb, yb in zip(xs, ys):
            opt_state = [
                v
                for o in ([t.optimizer] if t.optimizer else t._per_param_opt.values())
                for st in o.state.values()
                for v in st.values()
                if isinstance(v, torch.Tensor)
            ]
            state = list(model.parameters()) + list(model.buffers()) + opt_state
            with MemoryMeter(storage_bytes(state + [xb, yb])) as m:
                t.step(xb, yb)
            peaks.append(m.trace.peak_bytes)
    return max(peaks)
