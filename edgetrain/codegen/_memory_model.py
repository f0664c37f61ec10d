"""The C executor's memory, as preparation asks for it (NOTE [ Asking an executor for its
memory ], edgetrain/planner/_executor.py): `C_FP32_MEMORY` and `C_INT8_MEMORY`, registered in
the `edgetrain.executors` entry-point group (pyproject.toml).

NOTE [ The C trainer's memory, for the planner ]
    The C trainer keeps every activation in one static arena, frozen weights in flash (batch
    norm folded into them, so BN is frozen), trainable tensors in SRAM, and applies SGD to each
    weight element as its gradient completes (no gradient buffers): none of PyTorch's
    recompute, paging or micro-batching applies. So a candidate's peak is the code generator's
    own prediction from shapes, the very number the build file records as
    `codegen_predicted_peak_sram_bytes` and `mcu_run` measures the compiled program against:
    - fp32: `predict_peak_sram_bytes` (the plan lowered with zero weights: arena + trainable
      tensors + labels + runtime reserve; the arena holds the gathered views and the shared
      weights' gradient sums too: NOTE [ Views in C ], NOTE [ Shared weights in C ]). Every
      operator must have a C kernel (`UnsupportedKernelError` otherwise, before any
      candidate), and flash must hold every fp32 weight.
    - int8: the int8 QAS trainer trains whole conv/linear layers of the quantised graph (BN
      folded into them), so a candidate trains the layers owning a parameter it names
      (`int8_trainable_ops`); it has no bias-only mode, and a candidate that names no layer
      trains nothing (both `CandidateUnsupportedError`). Its SRAM is `int8_layout(...,
      line_buffer=True)`: the C trainer's own layout, with the frozen layers at the input
      streamed row by row (MCUNetV2's line buffering) on top of the in-place depthwise /
      pointwise kernels TTE uses too. Memory depends on shapes only, so the graph is quantised
      with the example input (`edgetrain compile` re-quantises with real data). Flash must hold
      the int8 weights, int32 biases and requantisation constants (12 bytes per channel).
      The target is the device's emulated core (`target_for_device`), else the host's layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetrain.errors import PlanInfeasibleError
from edgetrain.planner import (
    CandidateMemory,
    CandidateUnsupportedError,
    Executor,
    MemoryRequest,
    Plan,
    Precision,
)

__all__ = ["C_FP32_MEMORY", "C_INT8_MEMORY", "CFp32Memory", "CInt8Memory"]

_BIAS_ONLY_NOTE = "trainable policy: bias-only"


@dataclass(frozen=True)
class _Fp32Program:
    graph: object  # edgetrain.ir.Graph at the plan's batch size, batch norm frozen

    def candidate(self, plan: Plan) -> CandidateMemory:
        from edgetrain.codegen._render import predict_peak_sram_bytes

        return CandidateMemory(predict_peak_sram_bytes(plan, self.graph))


@dataclass(frozen=True)
class CFp32Memory:
    """The fp32 C trainer's memory (NOTE [ The C trainer's memory, for the planner ])."""

    executor: Executor = Executor.C
    precision: Precision = Precision.FP32
    updates_in_place: bool = True

    def for_model(self, request: MemoryRequest) -> _Fp32Program:
        from edgetrain.codegen._lower import check_kernels, module_attributes

        # UnsupportedKernelError: an operator with no C kernel, or a module attribute its
        # kernel needs and the model lacks (what compile_project would refuse)
        check_kernels(request.graph, module_attributes(request.model))
        dev = request.device
        flash = sum(q.nbytes for q in request.graph.params)  # every weight's initial value
        if flash > dev.flash_bytes:
            raise PlanInfeasibleError(
                f"the fp32 C program's weights ({flash:,} bytes) exceed {dev.name}'s flash "
                f"({dev.flash_bytes:,} bytes); int8 weights take a quarter (precision int8)"
            )
        return _Fp32Program(request.graph)


@dataclass(frozen=True)
class _Int8Program:
    graph: object  # edgetrain.quant.QuantGraph, quantised with the example input
    batch_size: int
    target: str

    def candidate(self, plan: Plan) -> CandidateMemory:
        from edgetrain.codegen._int8_layout import int8_layout, int8_trainable_ops

        if plan.notes and plan.notes[0] == _BIAS_ONLY_NOTE:
            raise CandidateUnsupportedError("the int8 C trainer has no bias-only mode")
        ops = int8_trainable_ops(plan, self.graph)
        if not ops:
            raise CandidateUnsupportedError(
                "the plan trains no conv/linear layer of the int8 graph"
            )
        peak = int8_layout(
            self.graph, ops, batch_size=self.batch_size, target=self.target, line_buffer=True
        ).predicted_peak_sram_bytes
        return CandidateMemory(peak, (f"int8 layers: {', '.join(ops)}",))


@dataclass(frozen=True)
class CInt8Memory:
    """The int8 (QAS) C trainer's memory (NOTE [ The C trainer's memory, for the planner ])."""

    executor: Executor = Executor.C
    precision: Precision = Precision.INT8
    updates_in_place: bool = True

    def for_model(self, request: MemoryRequest) -> _Int8Program:
        from edgetrain.codegen._targets import target_for_device
        from edgetrain.quant import quantize

        model, dev = request.model, request.device
        was = model.training
        model.eval()
        try:
            qg = quantize(model, request.example_input, name=request.graph.model)
        finally:
            model.train(was)
        flash = sum(op.weight.numel() + 12 * op.bias.numel() for op in qg.weighted_ops)
        if flash > dev.flash_bytes:
            raise PlanInfeasibleError(
                f"the int8 program's weights ({flash:,} bytes) exceed {dev.name}'s flash "
                f"({dev.flash_bytes:,} bytes); use a smaller model"
            )
        return _Int8Program(qg, request.batch_size, target_for_device(dev.name) or "host")


C_FP32_MEMORY = CFp32Memory()
C_INT8_MEMORY = CInt8Memory()
