"""Devices and the training-cost model. Imports no torch."""

from edgetrain.cost._device import (
    DEVICE_TABLE_HEADER,
    Accelerator,
    Compute,
    Device,
    MemoryClass,
    Storage,
    catalog,
    device_names,
    format_device_table,
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
from edgetrain.cost._workspace import (
    KernelLibrary,
    conv_signature,
    is_profiled,
    kernel_signature,
    workspace_bytes,
)

__all__ = [
    "DEVICE_TABLE_HEADER",
    "Accelerator",
    "Compute",
    "Device",
    "KernelLibrary",
    "LayerCost",
    "MemoryBreakdown",
    "MemoryClass",
    "MemorySimulation",
    "Optimizer",
    "Phase",
    "Schedule",
    "StepTraffic",
    "Storage",
    "TimelinePoint",
    "TrainingCost",
    "catalog",
    "conv_signature",
    "is_profiled",
    "kernel_signature",
    "device_names",
    "format_device_table",
    "load_device",
    "schedule_traffic",
    "simulate_step",
    "training_cost",
    "workspace_bytes",
]
