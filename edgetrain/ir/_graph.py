"""The IR: a captured training graph as plain frozen data (no torch).

A `Graph` is one training step's forward, in execution order, with the loss at the end. Each
`Node` names its input and output tensors; each `Tensor` names the storage it lives in (views
share their base's storage). What autograd saves for backward is recorded per node, so memory
and the schedule of frees can be computed without torch.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from edgetrain.errors import InvalidArgumentError


class OpKind(enum.Enum):
    """Operator families the cost model, planner and code generator understand."""

    CONV2D = "conv2d"
    BATCH_NORM = "batch_norm"
    RELU = "relu"
    HARDTANH = "hardtanh"  # ReLU6
    HARDSWISH = "hardswish"
    GELU = "gelu"
    TANH = "tanh"
    ADD = "add"
    MUL = "mul"
    DIV = "div"
    MAX_POOL2D = "max_pool2d"
    AVG_POOL2D = "avg_pool2d"
    ADAPTIVE_AVG_POOL2D = "adaptive_avg_pool2d"
    MEAN = "mean"
    LINEAR = "linear"
    VIEW = "view"  # flatten / view / reshape-as-view / permute / transpose / unsqueeze / expand / select / slice
    COPY = "copy"  # contiguous / clone / reshape that must copy
    MATMUL = "matmul"
    SOFTMAX = "softmax"
    LOG_SOFTMAX = "log_softmax"
    LAYER_NORM = "layer_norm"
    EMBEDDING = "embedding"
    CROSS_ENTROPY = "cross_entropy"
    BUFFER_UPDATE = "buffer_update"  # BN's num_batches_tracked += 1
    # Categories of the primitives other models reach edgetrain as (NOTE [ Capture op set ] in
    # edgetrain/capture/_ops.py); `attrs["fn"]` names the ATen operator inside the category.
    CONV1D = "conv1d"  # convolution over one spatial dimension (nn.Conv1d, dilated TCNs)
    ELEMENTWISE = "elementwise"  # other point-wise ops: sigmoid, sub, exp, where, clamp, ...
    REDUCTION = "reduction"  # sum / amax / var / mean over all dims, ...
    INDEX = "index"  # gather / index / scatter / cat / stack / pad / upsample
    RANDOM = "random"  # bernoulli / rand: dropout masks (no gradient)
    FACTORY = "factory"  # zeros / full / arange / empty: no tensor input, no gradient
    LOSS = "loss"  # mse / l1 / smooth-l1 / bce-with-logits / nll


# Kinds whose outputs never require grad, whatever their inputs (random masks, new tensors).
NON_DIFFERENTIABLE = frozenset({OpKind.BUFFER_UPDATE, OpKind.RANDOM, OpKind.FACTORY})
_FLOAT_DTYPES = frozenset({"float32", "float64", "float16", "bfloat16"})


class TensorRole(enum.Enum):
    INPUT = "input"
    TARGET = "target"
    PARAMETER = "parameter"
    BUFFER = "buffer"
    ACTIVATION = "activation"
    AUX = "aux"  # produced by an op for its own backward (BN's saved mean, pooling indices, ...)
    LOSS = "loss"


_ITEMSIZE = {
    "float32": 4,
    "float64": 8,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}


def itemsize(dtype: str) -> int:
    try:
        return _ITEMSIZE[dtype]
    except KeyError:
        raise InvalidArgumentError(
            f"dtype {dtype!r} has no known size; known: {sorted(_ITEMSIZE)}"
        ) from None


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides (in elements) of `shape`: the index map of a contiguous tensor
    (NOTE [ Views as index maps ] in capture/_rules.py)."""
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= int(d)
    return tuple(reversed(out))


@dataclass(frozen=True, slots=True)
class Tensor:
    """One tensor value of the step. `storage` is shared by views of the same base."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    role: TensorRole
    storage: str
    storage_bytes: int
    producer: str | None = None  # node name; None for graph inputs, params, buffers

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype)


@dataclass(frozen=True, slots=True)
class Param:
    """A parameter tensor of the model (`name` is its fully qualified module path)."""

    name: str
    tensor: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    trainable: bool
    module: str


@dataclass(frozen=True, slots=True)
class Node:
    """One operator of the forward pass.

    `saved` names the tensors autograd keeps for this node's backward (parameters and buffers
    included; the cost model decides what counts). A VIEW node (and a reshape that copied)
    records its index map into its source's contiguous layout as `view_offset`, `view_size`
    and `view_stride` attributes (NOTE [ Views as index maps ], edgetrain/capture/_rules.py);
    an in-place op records `inplace`. `aux_outputs` are tensors the op allocates
    only for its backward (or as an internal copy it saves). FLOPs follow the multiply-accumulate convention (2 per MAC) of
    torch.utils.flop_counter; `vector_ops_*` count element-wise work separately.
    """

    name: str
    op: OpKind
    aten: str
    inputs: tuple[str, ...]
    output: str
    aux_outputs: tuple[str, ...] = ()
    saved: tuple[str, ...] = ()
    module: str = ""
    flops_forward: int = 0
    flops_backward_input: int = 0  # grads w.r.t. activation inputs
    flops_backward_params: int = 0  # grads w.r.t. parameters
    vector_ops_forward: int = 0
    vector_ops_backward: int = 0
    attrs: tuple[tuple[str, Any], ...] = ()

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default


SCHEMA_VERSION = 2  # 2: views record their index map (NOTE [ Views as index maps ])


@dataclass(frozen=True)
class Graph:
    """A captured training step. Build with `edgetrain.capture`; read-only thereafter."""

    model: str
    batch_size: int
    nodes: tuple[Node, ...]
    tensors: tuple[Tensor, ...]
    params: tuple[Param, ...]
    inputs: tuple[str, ...]
    target: str
    loss: str
    schema_version: int = SCHEMA_VERSION
    _index: dict = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {t.name: t for t in self.tensors})

    # -- lookup ------------------------------------------------------------------------------
    def tensor(self, name: str) -> Tensor:
        return self._index[name]

    @cached_property
    def node_index(self) -> dict[str, int]:
        return {n.name: i for i, n in enumerate(self.nodes)}

    @cached_property
    def consumers(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for t in n.inputs:
                out.setdefault(t, []).append(i)
        return {k: tuple(v) for k, v in out.items()}

    @cached_property
    def param_by_tensor(self) -> dict[str, Param]:
        return {p.tensor: p for p in self.params}

    @property
    def params_bytes(self) -> int:
        return sum(p.nbytes for p in self.params)

    @property
    def buffers_bytes(self) -> int:
        seen = {t.storage: t.storage_bytes for t in self.tensors if t.role is TensorRole.BUFFER}
        return sum(seen.values())

    # -- autograd structure ------------------------------------------------------------------
    @cached_property
    def requires_grad(self) -> frozenset[str]:
        """Tensors that require grad when every parameter marked trainable is trained."""
        return self.requires_grad_for(frozenset(p.name for p in self.params if p.trainable))

    def requires_grad_for(self, trainable: "frozenset[str] | set[str]") -> frozenset[str]:
        """Tensors that require grad when exactly the parameters named in `trainable` train."""
        rg = {p.tensor for p in self.params if p.name in trainable}
        for n in self.nodes:
            if n.op in NON_DIFFERENTIABLE or self.tensor(n.output).dtype not in _FLOAT_DTYPES:
                continue  # autograd tracks floating results of differentiable ops only
            if any(t in rg for t in n.inputs):
                rg.add(n.output)
                rg.update(n.attr("results", ()))  # other results of a multi-output op
        return frozenset(rg)

    def saved_storages(self, *, include_state: bool = False) -> dict[str, int]:
        """Distinct storages saved for backward -> bytes (parameters and buffers excluded)."""
        out: dict[str, int] = {}
        rg = self.requires_grad
        for n in self.nodes:
            if n.output not in rg:
                continue  # no grad_fn: autograd records nothing
            for name in n.saved:
                t = self.tensor(name)
                if not include_state and t.role in (TensorRole.PARAMETER, TensorRole.BUFFER):
                    continue
                out[t.storage] = t.storage_bytes
        return out

    @property
    def activation_bytes(self) -> int:
        """Bytes autograd saves for backward: distinct storages, parameters excluded."""
        return sum(self.saved_storages().values())

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        enc = to_plain
        return {
            "schema_version": self.schema_version,
            "model": self.model,
            "batch_size": self.batch_size,
            "inputs": list(self.inputs),
            "target": self.target,
            "loss": self.loss,
            "nodes": [enc(asdict(n)) for n in self.nodes],
            "tensors": [enc(asdict(t)) for t in self.tensors],
            "params": [enc(asdict(p)) for p in self.params],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Graph":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise InvalidArgumentError(
                f"graph schema_version {d.get('schema_version')!r} is not {SCHEMA_VERSION}; "
                "re-capture the model with this edgetrain version"
            )
        nodes = tuple(
            Node(
                **{
                    **n,
                    "op": OpKind(n["op"]),
                    "inputs": tuple(n["inputs"]),
                    "aux_outputs": tuple(n["aux_outputs"]),
                    "saved": tuple(n["saved"]),
                    "attrs": tuple((k, _tuplify(v)) for k, v in n["attrs"]),
                }
            )
            for n in d["nodes"]
        )
        tensors = tuple(
            Tensor(**{**t, "shape": tuple(t["shape"]), "role": TensorRole(t["role"])})
            for t in d["tensors"]
        )
        params = tuple(Param(**{**p, "shape": tuple(p["shape"])}) for p in d["params"])
        return cls(
            d["model"],
            d["batch_size"],
            nodes,
            tensors,
            params,
            tuple(d["inputs"]),
            d["target"],
            d["loss"],
        )

    @classmethod
    def from_json(cls, text: str) -> "Graph":
        return cls.from_dict(json.loads(text))


def to_plain(obj: Any) -> Any:
    """Enums to their values, tuples to lists, recursively: JSON-ready plain data."""
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def _tuplify(v: Any) -> Any:
    return tuple(_tuplify(x) for x in v) if isinstance(v, list) else v
