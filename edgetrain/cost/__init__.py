"""Devices and the training-cost model. Imports no torch."""

from edgetrain.cost._device import (
    Accelerator,
    Compute,
    Device,
    MemoryClass,
    Storage,
    catalog,
    device_names,
    load_device,
)
from edgetrain.cost._memory import (
    MemoryBreakdown,
    MemorySimulation,
    Optimizer,
    Phase,
    Schedule,
    StepTraffic,
    TimelinePoint,
    schedule_traffic,
    simulate_step,
)
from edgetrain.cost._training import LayerCost, TrainingCost, training_cost
from edgetrain.cost._workspace import KernelLibrary

__all__ = [
    "Accelerator", "Compute", "Device", "KernelLibrary", "LayerCost", "MemoryBreakdown",
    "MemoryClass", "MemorySimulation", "Optimizer", "Phase", "Schedule", "StepTraffic", "Storage",
    "TimelinePoint", "TrainingCost", "catalog", "device_names", "load_device",
    "schedule_traffic", "simulate_step", "training_cost",
]
