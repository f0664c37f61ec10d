"""int8 quantised training with quantisation-aware scaling (QAS), bit-exact in PyTorch.

    from edgetrain.quant import quantize, run_int8, QuantModel, QuantSGD
    graph = quantize(model, calibration_images, name="mcu-cnn")   # BN folded, int8 graph
    q_logits = run_int8(graph, graph.quantize_input(x))            # integer reference
    qm = QuantModel(graph, trainable=["features.3.0", "classifier"])   # sparse update
    opt = QuantSGD(qm, lr=0.05, qas=True)                          # TTE's QAS
    loss = F.cross_entropy(qm(x), y); loss.backward(); opt.step()
    trained = qm.to_graph()

The integer arithmetic (rounding, multipliers, requantisation, add, pooling) is specified in
NOTE [ int8 arithmetic, bit for bit ] (`_graph.py`), training in NOTE [ Training the int8
graph ] and NOTE [ int8 integer backward ] (`_train.py`) and tensor sizes in NOTE [ int8 tensor
sizes ] (`_memory.py`).
"""

from ._graph import (
    AccumulatorOverflowError,
    Activation,
    ConvKind,
    FoldedBlock,
    FoldedConv,
    FoldedNet,
    QAdd,
    QConv2d,
    QGlobalAvgPool,
    QLinear,
    QTensor,
    QuantGraph,
    QuantizationError,
    UnsupportedModuleError,
    accuracy_int8,
    fold_batchnorm,
    multiplier_value,
    op_names,
    quantize,
    quantize_multiplier,
    requantize,
    round_half_away,
    run_int8,
    with_weights,
)
from ._memory import (
    Int8GraphFileError,
    Int8Memory,
    Int8TensorSize,
    TensorKind,
    load_graph,
    memory_summary,
    save_graph,
    tensor_sizes,
)
from ._train import Int8Backward, QuantModel, QuantSGD, WeightStorage, check_integer_backward

__all__ = [
    "AccumulatorOverflowError",
    "Activation",
    "ConvKind",
    "FoldedBlock",
    "FoldedConv",
    "FoldedNet",
    "Int8Backward",
    "Int8GraphFileError",
    "Int8Memory",
    "Int8TensorSize",
    "QAdd",
    "QConv2d",
    "QGlobalAvgPool",
    "QLinear",
    "QTensor",
    "QuantGraph",
    "QuantModel",
    "QuantSGD",
    "QuantizationError",
    "TensorKind",
    "UnsupportedModuleError",
    "WeightStorage",
    "accuracy_int8",
    "check_integer_backward",
    "fold_batchnorm",
    "load_graph",
    "memory_summary",
    "multiplier_value",
    "op_names",
    "quantize",
    "quantize_multiplier",
    "requantize",
    "round_half_away",
    "run_int8",
    "save_graph",
    "tensor_sizes",
    "with_weights",
]
