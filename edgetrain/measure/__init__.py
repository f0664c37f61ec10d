"""Measured memory: peak bytes from the CPU allocator's own events (see NOTE in _meter)."""

from edgetrain.measure._meter import (
    MeasuredStep,
    MemoryMeter,
    MemoryTrace,
    measure_training_step,
    saved_activation_bytes,
    stderr_silenced,
    storage_bytes,
    walk_events,
)

__all__ = [
    "MeasuredStep",
    "MemoryMeter",
    "MemoryTrace",
    "measure_training_step",
    "saved_activation_bytes",
    "stderr_silenced",
    "storage_bytes",
    "walk_events",
]
