"""What eager autograd saves, node by node of the exported program.

NOTE [ Saved tensors from eager autograd ]
    For every operator without a legacy rule, what it saves for backward is read from eager
    PyTorch itself, not from its decomposition (which would save other tensors: eager dropout
    saves a float32 mask, eager GRU saves the storage of each step's hidden-gate product that
    its in-place `sigmoid_` overwrote, ...). At capture, the exported program (still at the
    level the model calls ATen: `aten.gru.input`, `aten.dropout`, ...) is run once on the real
    parameters and the example batch, node by node, with autograd on and the model's modes,
    under `torch.autograd.graph.saved_tensors_hooks`. Each packed tensor is recorded with the
    node running when it was packed and its storage (address, bytes, dtype); each node's
    outputs are recorded with their storage address. Every value stays alive until the run is
    over, so an address names one storage. The IR then attributes each saved storage:
      - the storage of an input, parameter, buffer or an earlier node's output -> that tensor;
      - the storage of the node's own output -> the tensor its lowering produces for it;
      - a storage the kernel allocated for itself (masks, gates, statistics, indices) -> the
        first not yet attributed tensor of the node's lowering with the same bytes and dtype,
        else a fresh auxiliary tensor of the node.
    The saving node in the IR is the lowered primitive that produced the attributed tensor, or
    else the first primitive of the lowering whose output requires grad. The totals are
    therefore eager autograd's exactly; lifetimes follow the lowering.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True, slots=True)
class SavedRecord:
    ptr: int
    nbytes: int
    dtype: str
    numel: int


@dataclass
class EagerSaves:
    """Per exported node: the storages autograd saved while it ran, and its output storages."""

    saved: dict[str, list[SavedRecord]] = field(default_factory=dict)
    outputs: dict[str, list[int | None]] = field(default_factory=dict)
    placeholders: dict[str, int] = field(default_factory=dict)


def _ptr(t: Any) -> int | None:
    if not isinstance(t, torch.Tensor) or t.untyped_storage().nbytes() == 0:
        return None
    return t.untyped_storage().data_ptr()


class _Run(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, rec: EagerSaves) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.rec = rec
        self.current = ""

    def run_node(self, n: torch.fx.Node) -> Any:
        self.current = n.name
        out = super().run_node(n)
        if n.op == "placeholder":
            p = _ptr(out)
            if p is not None:
                self.rec.placeholders[n.name] = p
        elif isinstance(out, (list, tuple)):
            self.rec.outputs[n.name] = [_ptr(o) for o in out]
        else:
            self.rec.outputs[n.name] = [_ptr(out)]
        return out


def eager_saves(ep, inputs: list[Any]) -> EagerSaves:
    """Run `ep`'s graph eagerly on `inputs` (placeholder order) and record what autograd saves."""
    rec = EagerSaves()
    run = _Run(ep.graph_module, rec)
    keep: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.nbytes() > 0:
            keep.append(t)
            rec.saved.setdefault(run.current, []).append(
                SavedRecord(
                    s.data_ptr(),
                    int(s.nbytes()),
                    str(t.dtype).removeprefix("torch."),
                    int(s.nbytes()) // t.element_size(),
                )
            )
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = run.run(*inputs)
    del result
    keep.clear()
    return rec
