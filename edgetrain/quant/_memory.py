"""Real sizes of the int8 graph's tensors, for the planner, and the graph's file format.

NOTE [ int8 tensor sizes ]
Per conv/linear op (named by the float model's conv module path, e.g. "features.1.0", which is
the `module` of the IR's conv2d node; BN and the activation are fused into it):
- WEIGHT: int8, 1 byte per element;  BIAS: int32, 4 bytes per output channel;
- REQUANT: the per-channel multiplier and shift, int32 each (TFLite's layout), 8 bytes per
  output channel.
Per activation tensor (the output of a fused conv, an add, the pool, the logits, and the input):
ACTIVATION: int8, 1 byte per element times the batch size.
Training (trainable layers only):
- MASTER: with `WeightStorage.FP32_MASTER` the float copy of weights and biases, 4 bytes per
  element (fp32 on the device; the PyTorch simulation keeps float64);
- GRADIENT: the weight and bias gradients, `grad_bytes_per_element` (4: fp32) per element.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from edgetrain import validate
from edgetrain.errors import Int8GraphFileError, InvalidArgumentError
from edgetrain.storage import load_tensors, save_tensors_atomic

from ._graph import (
    Activation,
    ConvKind,
    QAdd,
    QConv2d,
    QGlobalAvgPool,
    QLinear,
    QTensor,
    QuantGraph,
)
from ._train import WeightStorage


class TensorKind(enum.Enum):
    WEIGHT = "weight"
    BIAS = "bias"
    REQUANT = "requant"
    ACTIVATION = "activation"
    MASTER = "master"
    GRADIENT = "gradient"


@dataclass(frozen=True)
class Int8TensorSize:
    name: str
    module: str
    kind: TensorKind
    dtype: str
    shape: tuple[int, ...]
    nbytes: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kind"] = self.kind.value
        d["shape"] = list(self.shape)
        return d


@dataclass(frozen=True)
class Int8Memory:
    """Totals of `tensor_sizes` by kind; `largest_activation_bytes` is the biggest single one."""

    weight_bytes: int
    bias_bytes: int
    requant_bytes: int
    activation_bytes: int
    largest_activation_bytes: int
    master_bytes: int
    gradient_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def tensor_sizes(
    graph: QuantGraph,
    *,
    batch_size: int = 1,
    trainable: Sequence[str] | None = (),
    storage: WeightStorage = WeightStorage.FP32_MASTER,
    grad_bytes_per_element: int = 4,
) -> tuple[Int8TensorSize, ...]:
    """Every tensor of the int8 graph at its real size (NOTE [ int8 tensor sizes ]).

    `trainable`: op names that train (None: all; the default `()`: inference only).
    """
    batch_size = validate.batch_size(batch_size)
    names = [op.name for op in graph.weighted_ops]
    train = set(names if trainable is None else trainable)
    unknown = sorted(train - set(names))
    if unknown:
        raise InvalidArgumentError(
            f"trainable layers {unknown} are not in the int8 graph; its layers: {', '.join(names)}"
        )
    out = [
        Int8TensorSize(
            t.name,
            t.name,
            TensorKind.ACTIVATION,
            "int8",
            (batch_size, *t.shape),
            batch_size * t.bytes_per_sample,
        )
        for t in graph.tensors
    ]
    for op in graph.weighted_ops:
        w, cout = op.weight, op.weight.shape[0]
        out.append(
            Int8TensorSize(
                f"{op.name}.weight", op.name, TensorKind.WEIGHT, "int8", tuple(w.shape), w.numel()
            )
        )
        out.append(
            Int8TensorSize(f"{op.name}.bias", op.name, TensorKind.BIAS, "int32", (cout,), 4 * cout)
        )
        out.append(
            Int8TensorSize(
                f"{op.name}.requant", op.name, TensorKind.REQUANT, "int32", (2, cout), 8 * cout
            )
        )
        if op.name in train:
            n = w.numel() + cout
            if storage is WeightStorage.FP32_MASTER:
                out.append(
                    Int8TensorSize(
                        f"{op.name}.master", op.name, TensorKind.MASTER, "float32", (n,), 4 * n
                    )
                )
            out.append(
                Int8TensorSize(
                    f"{op.name}.grad",
                    op.name,
                    TensorKind.GRADIENT,
                    f"{8 * grad_bytes_per_element}-bit",
                    (n,),
                    grad_bytes_per_element * n,
                )
            )
    return tuple(out)


def memory_summary(sizes: Sequence[Int8TensorSize]) -> Int8Memory:
    def total(kind: TensorKind) -> int:
        return sum(s.nbytes for s in sizes if s.kind is kind)

    acts = [s.nbytes for s in sizes if s.kind is TensorKind.ACTIVATION]
    return Int8Memory(
        total(TensorKind.WEIGHT),
        total(TensorKind.BIAS),
        total(TensorKind.REQUANT),
        total(TensorKind.ACTIVATION),
        max(acts, default=0),
        total(TensorKind.MASTER),
        total(TensorKind.GRADIENT),
    )


# ---------------------------------------------------------------- file format

FORMAT_VERSION = 1


def _op_meta(op) -> dict:
    meta = {"type": type(op).__name__}
    for f in op.__dataclass_fields__:
        v = getattr(op, f)
        if isinstance(v, torch.Tensor):
            continue
        meta[f] = v.value if isinstance(v, enum.Enum) else v
    return meta


def save_graph(graph: QuantGraph, path: "str | Path") -> Path:
    """Write the int8 graph atomically as safetensors: the integer tensors (`<op>.weight` int8,
    `<op>.bias` int32, `<op>.multiplier` / `<op>.shift` int32, `<op>.weight_scale` float64) and
    the structure as JSON in the metadata key "edgetrain.quant"."""
    tensors: dict[str, torch.Tensor] = {}
    for op in graph.weighted_ops:
        for f in ("weight", "bias", "multiplier", "shift", "weight_scale"):
            tensors[f"{op.name}.{f}"] = getattr(op, f)
    meta = {
        "version": FORMAT_VERSION,
        "model": graph.model,
        "input": graph.input,
        "output": graph.output,
        "tensors": [asdict(t) for t in graph.tensors],
        "ops": [_op_meta(op) for op in graph.ops],
    }
    return save_tensors_atomic(tensors, path, metadata={"edgetrain.quant": json.dumps(meta)})


def load_graph(path: "str | Path") -> QuantGraph:
    """Read a graph `save_graph` wrote; anything else raises `Int8GraphFileError`."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("edgetrain.quant")
        tensors = load_tensors(path)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise Int8GraphFileError(f"cannot read int8 graph file {path}: {e}") from e
    if raw is None:
        raise Int8GraphFileError(
            f"{path} has no 'edgetrain.quant' metadata: not an int8 graph written by save_graph"
        )
    meta = json.loads(raw)
    if meta.get("version") != FORMAT_VERSION:
        raise Int8GraphFileError(
            f"{path}: format version {meta.get('version')!r}, this edgetrain reads "
            f"{FORMAT_VERSION}; re-export the graph with save_graph"
        )
    ops = []
    for m in meta["ops"]:
        kind = m.pop("type")
        if kind in ("QConv2d", "QLinear"):
            for f in ("weight", "bias", "multiplier", "shift", "weight_scale"):
                m[f] = tensors[f"{m['name']}.{f}"]
            if kind == "QConv2d":
                m["kind"] = ConvKind(m["kind"])
                m["activation"] = Activation(m["activation"])
                ops.append(QConv2d(**m))
            else:
                ops.append(QLinear(**m))
        elif kind == "QAdd":
            ops.append(QAdd(**m))
        elif kind == "QGlobalAvgPool":
            ops.append(QGlobalAvgPool(**m))
        else:
            raise Int8GraphFileError(f"{path}: unknown op type {kind!r}")
    qt = tuple(
        QTensor(t["name"], tuple(t["shape"]), t["scale"], t["zero_point"]) for t in meta["tensors"]
    )
    return QuantGraph(meta["model"], meta["input"], meta["output"], qt, tuple(ops))
