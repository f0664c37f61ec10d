"""The model with its loss as one ExecuTorch training program, and that program's memory.

NOTE [ ExecuTorch's memory for a training step ]
    What an ExecuTorch training program holds while it runs, read from the program itself
    (`ProgramMemory.of`):
    - planned buffers (`ExecutionPlan.non_const_buffer_sizes`, the arenas its memory planner
      laid out): the input batch and targets, every intermediate of the joint forward-backward
      graph at its planned offset (lifetimes reuse space), the outputs (loss, model output, one
      gradient per trainable tensor) and the trainable tensors themselves (mutable weights are
      planned; their initial values are copied in from `model.ptd` at load);
    - constants: the frozen parameters and buffers (batch norm's running statistics), in
      `model.ptd`, not planned;
    - optimizer state: ExecuTorch's SGD allocates one momentum buffer per trainable tensor on
      its first step (none for plain SGD); outside the program, so added here by its rule.
    The total is what edgetrain's prediction for the plan is compared with (the manifest's
    `memory`). The runtime's own bookkeeping (method tables, kernel registry, the loaded
    `.pte`) is not counted, as the cost model does not count PyTorch's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PREFIX", "LossModel", "ProgramMemory", "export_program", "tensor_specs"]

METHOD = "forward"


PREFIX = "model."
"""What the program's tensor names add to the model's (`LossModel` holds the model as `model`)."""


class LossModel(torch.nn.Module):
    """`model` and its loss as one module: `forward(x, y) -> (loss, output.detach())`, the
    loss first, as ExecuTorch's joint export wants it. The program names each tensor
    `model.<name>` (`PREFIX`); the manifest and `ExecuTorchProgram` give the model's names."""

    def __init__(self, model: torch.nn.Module, loss_fn) -> None:
        super().__init__()
        self.model = model
        self._loss_fn = loss_fn

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        out = self.model(x)
        return self._loss_fn(out, y), out.detach()


def export_program(model: torch.nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor):
    """The ExecuTorch program (`ExecutorchProgramManager`) training `model` on batches shaped
    like `(x, y)`, and the names of the tensors whose gradients it returns, in output order:
    parameters that require grad get gradients, the others are constants; trainable tensors
    and constants are external (written to `model.ptd`)."""
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge
    from torch.export.experimental import _export_forward_backward

    ep = torch.export.export(LossModel(model, loss_fn), (x, y), strict=False)
    ep = _unfused(ep)
    ep = _export_forward_backward(ep, joint_loss_index=0)
    _drop_aliases(ep)
    grads = tuple(
        o.target.removeprefix(PREFIX)
        for o in ep.graph_signature.output_specs
        if o.kind.name == "GRADIENT_TO_PARAMETER"
    )
    # the joint graph holds ops outside the edge dialect's checked set (their gradients)
    edge = to_edge(ep, compile_config=EdgeCompileConfig(_check_ir_validity=False))
    manager = edge.to_executorch(
        ExecutorchBackendConfig(external_constants=True, external_mutable_weights=True)
    )
    return manager, grads


# NOTE [ Fused kernels are exported as their mathematics ]
#     A fused operator whose backward has no ExecuTorch kernel (attention: PyTorch picks
#     `_scaled_dot_product_flash_attention_for_cpu`, whose backward has no out variant) is
#     decomposed into its reference mathematics before the joint export (PyTorch's own
#     decomposition table: matmuls and a softmax), so its backward is made of portable
#     kernels. The result equals the fused kernel's to fp32 rounding (tests/test_export.py
#     trains a transformer encoder both ways).
def _fused_ops() -> dict:
    from torch._decomp import core_aten_decompositions, decomposition_table

    aten = torch.ops.aten
    core = core_aten_decompositions()
    return {
        aten.scaled_dot_product_attention.default: core[aten.scaled_dot_product_attention.default],
        aten._scaled_dot_product_flash_attention_for_cpu.default: decomposition_table[
            aten._scaled_dot_product_flash_attention_for_cpu.default
        ],
    }


def _unfused(ep):
    """`ep` with its fused operators decomposed (NOTE above); `ep` itself when it has none."""
    table = _fused_ops()
    if not any(n.op == "call_function" and n.target in table for n in ep.graph.nodes):
        return ep
    return ep.run_decompositions(table)


# NOTE [ Aliases in the joint graph ]
#     The joint forward-backward graph refers to the tensors backward saves through
#     `aten.alias` nodes (a ReLU's output is aliased twice before `threshold_backward` reads
#     it). An alias is a view in PyTorch, but the edge dialect turns it into `alias_copy`, which
#     ExecuTorch runs as a real copy with its own planned buffer: mcu-cnn at batch 8 held each
#     ReLU output twice more, 150 KB of its 550 KB plan. Nothing in a training graph writes to
#     these tensors in place (functionalised), so an alias that is not itself a program output
#     is the tensor it aliases: `_drop_aliases` rewires its users to that tensor before lowering.


def _drop_aliases(ep) -> int:
    """Remove `aten.alias` nodes that are not outputs (NOTE above); returns how many."""
    graph = ep.graph_module.graph
    dropped = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.alias.default:
            continue
        if any(u.op == "output" for u in node.users):
            continue
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)
        dropped += 1
    if dropped:
        ep.graph_module.recompile()
    return dropped


_ELEMENT_BYTES = {"BYTE": 1, "CHAR": 1, "BOOL": 1, "SHORT": 2, "HALF": 2, "BFLOAT16": 2}
_ELEMENT_BYTES |= {"INT": 4, "FLOAT": 4, "UINT32": 4, "LONG": 8, "DOUBLE": 8, "UINT64": 8}


def _nbytes(t) -> int:
    n = _ELEMENT_BYTES[t.scalar_type.name]
    for s in t.sizes:
        n *= int(s)
    return n


@dataclass(frozen=True)
class ProgramMemory:
    """ExecuTorch's memory for one step (NOTE [ ExecuTorch's memory for a training step ])."""

    planned_buffer_bytes: tuple[int, ...]
    constant_bytes: int
    trainable_bytes: int  # inside the planned buffers
    optimizer_state_bytes: int

    @property
    def planned_bytes(self) -> int:
        return sum(self.planned_buffer_bytes)

    @property
    def total_bytes(self) -> int:
        return self.planned_bytes + self.constant_bytes + self.optimizer_state_bytes

    @classmethod
    def of(cls, program, *, momentum: bool) -> "ProgramMemory":
        """Read from the serialised program (`ExecutorchProgramManager.executorch_program`)."""
        from executorch.exir.schema import Tensor, TensorDataLocation

        plan = next(p for p in program.execution_plan if p.name == METHOD)
        constants: dict[object, int] = {}
        trainable: dict[object, int] = {}
        for i, v in enumerate(plan.values):
            t = v.val
            if not isinstance(t, Tensor):
                continue
            info = t.extra_tensor_info
            external = info is not None and info.location is TensorDataLocation.EXTERNAL
            key = info.fully_qualified_name if external else ("buffer", t.data_buffer_idx, i)
            if t.allocation_info is not None and external:  # a mutable (trainable) weight
                trainable[key] = _nbytes(t)
            elif t.allocation_info is None and (external or t.data_buffer_idx > 0):
                constants[key] = _nbytes(t)
        train = sum(trainable.values())
        return cls(
            tuple(int(s) for s in plan.non_const_buffer_sizes),
            sum(constants.values()),
            train,
            train if momentum else 0,
        )


def tensor_specs(program) -> dict[str, list[dict]]:
    """The method's inputs and outputs as the program declares them: shape and dtype each."""
    from executorch.exir.schema import Tensor

    plan = next(p for p in program.execution_plan if p.name == METHOD)

    def spec(i: int) -> dict:
        t = plan.values[i].val
        if not isinstance(t, Tensor):
            return {"kind": type(t).__name__}
        return {"shape": [int(s) for s in t.sizes], "dtype": t.scalar_type.name.lower()}

    return {"inputs": [spec(i) for i in plan.inputs], "outputs": [spec(i) for i in plan.outputs]}
