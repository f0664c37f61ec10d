"""Plain-data IR of a training step. Imports no torch."""

from edgetrain.ir._graph import (
    SCHEMA_VERSION,
    Graph,
    Node,
    OpKind,
    Param,
    Tensor,
    TensorRole,
    contiguous_strides,
    itemsize,
    to_plain,
)

__all__ = [
    "SCHEMA_VERSION",
    "Graph",
    "Node",
    "OpKind",
    "Param",
    "Tensor",
    "TensorRole",
    "contiguous_strides",
    "itemsize",
    "to_plain",
]
