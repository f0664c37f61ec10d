"""`edgetrain compile`: C99 training code for microcontrollers, from a Plan and the IR.

    >>> from edgetrain.codegen import render, TrainingSpec, SampleSet
    >>> files = render(plan, graph, weights, "cortex-m4", spec,
    ...                device_sram_bytes=262144, device_flash_bytes=1048576)

`render` is pure (plan, graph, weights, target, data -> {path: C text}); `compile_project`
does capture and file writing around it, in the library layout (the C API a firmware calls) or
the demo layout (a driver over baked samples; NOTE [ Project layouts ]); `mcu_run` builds and
runs a demo project (host binary or QEMU) and parses the result.
"""

from edgetrain.lazy import lazy_exports

_EXPORTS = {
    "render": "edgetrain.codegen._render",
    "SampleSet": "edgetrain.codegen._render",
    "TrainingSpec": "edgetrain.codegen._render",
    "Target": "edgetrain.codegen._targets",
    "TARGETS": "edgetrain.codegen._targets",
    "get_target": "edgetrain.codegen._targets",
    "lower": "edgetrain.codegen._lower",
    "int8_layout": "edgetrain.codegen._int8_layout",
    "int8_memory": "edgetrain.codegen._int8_layout",  # the old name of int8_layout
    "Int8ArenaLayout": "edgetrain.codegen._int8_layout",
    "Int8Kernel": "edgetrain.codegen._int8_layout",
    "int8_trainable_ops": "edgetrain.codegen._int8_layout",
    "render_int8": "edgetrain.codegen._int8_render",
    "Int8Spec": "edgetrain.codegen._int8_render",
    "FORWARD_KERNELS": "edgetrain.codegen._int8_kernels",
    "BACKWARD_KERNELS": "edgetrain.codegen._int8_kernels",
    "target_for_device": "edgetrain.codegen._targets",
    "toolchain_present": "edgetrain.codegen._targets",
    "C_FP32_MEMORY": "edgetrain.codegen._memory_model",
    "C_INT8_MEMORY": "edgetrain.codegen._memory_model",
    "compile_project": "edgetrain.codegen._compile",
    "module_attributes": "edgetrain.codegen._lower",
    "Layout": "edgetrain.codegen._library",
    "samples_of": "edgetrain.codegen._compile",
    "samples_from": "edgetrain.codegen._compile",
    "weights_of": "edgetrain.codegen._compile",
    "normalised": "edgetrain.codegen._compile",
    "compile_int8_project": "edgetrain.codegen._compile",
    "predict_peak_sram_bytes": "edgetrain.codegen._render",
    "mcu_run": "edgetrain.codegen._run",
    "build_project": "edgetrain.codegen._run",
    "McuRunResult": "edgetrain.codegen._run",
    "CodegenError": "edgetrain.errors",
    "UnsupportedPlanError": "edgetrain.errors",
    "UnsupportedKernelError": "edgetrain.errors",
    "ToolchainMissingError": "edgetrain.errors",
    "BuildError": "edgetrain.errors",
    "McuRunError": "edgetrain.errors",
    "PlanPredictionError": "edgetrain.errors",
    "BuildFileError": "edgetrain.errors",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
