"""Training-cost model: memory, FLOPs, latency and energy of one training step on a device.

Latency and energy follow POET's cost model (Patil et al., ICML 2022, §4): the time of an
operator is its arithmetic work over the device's throughput, and energy is the device's active
power times that time. We count multiply-accumulates as two FLOPs (torch.utils.flop_counter's
convention) and add element-wise work (`vector_ops_*`) at the same rate, as a Cortex-M or
Cortex-A core executes both on the same pipeline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgetrain.cost._memory import MemoryBreakdown, MemorySimulation, Optimizer, simulate_step
from edgetrain.cost._workspace import KernelLibrary
from edgetrain.ir import Graph, OpKind, TensorRole


@dataclass(frozen=True, slots=True)
class LayerCost:
    """One operator's share of the step. `activation_bytes` counts the storages it is the first
    to save for backward (so the layers' values add up to the step's `activation_bytes`)."""

    name: str
    op: str
    module: str
    output_shape: tuple[int, ...]
    params_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    flops: int
    flops_backward: int


@dataclass(frozen=True, slots=True)
class TrainingCost:
    """What one training step of a model costs on a device (plain full training)."""

    model: str
    device: str
    batch_size: int
    optimizer: str
    params_bytes: int
    trainable_params_bytes: int
    buffers_bytes: int
    grads_bytes: int
    optimizer_bytes: int
    activation_bytes: int
    batch_bytes: int
    peak_bytes: int
    memory_budget_bytes: int
    flops_forward: int
    flops_backward: int
    vector_ops: int
    latency_s: float
    energy_j: float
    fits: bool
    peak_phase: str
    peak_node: str
    at_peak: MemoryBreakdown
    layers: tuple[LayerCost, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [
            {**asdict(layer), "output_shape": list(layer.output_shape)} for layer in self.layers
        ]
        return d


def _trainable_inputs(graph: Graph, names) -> list[str]:
    return [t for t in dict.fromkeys(names) if t in graph.param_by_tensor]


def training_cost(
    graph: Graph,
    device,
    *,
    optimizer: "Optimizer | str" = Optimizer.SGD,
    kernels: KernelLibrary | None = None,
) -> TrainingCost:
    """Cost of one step of plain training of `graph` (all trainable params, everything kept).

    `device` is an `edgetrain.cost.Device` (catalog entry or user file).
    """
    opt = Optimizer.parse(optimizer)
    kernels = kernels if kernels is not None else KernelLibrary()
    sim: MemorySimulation = simulate_step(graph, opt, kernels)
    rg = graph.requires_grad
    trainable = [p for p in graph.params if p.trainable]
    trainable_bytes = sum(p.nbytes for p in trainable)
    opt_bytes = opt.state_bytes(trainable_bytes, len(trainable))

    saved_by_first: dict[str, int] = {}
    counted: set[str] = set()
    layers: list[LayerCost] = []
    fwd = bwd = vec = 0
    for n in graph.nodes:
        if n.op is OpKind.BUFFER_UPDATE:
            continue
        grad_fn = n.output in rg
        act = 0
        if grad_fn:
            for name in n.saved:
                t = graph.tensor(name)
                if t.role in (TensorRole.PARAMETER, TensorRole.BUFFER) or t.storage in counted:
                    continue
                counted.add(t.storage)
                act += t.storage_bytes
        saved_by_first[n.name] = act
        pnames = _trainable_inputs(graph, n.inputs)
        p_bytes = sum(graph.param_by_tensor[p].nbytes for p in pnames)
        g_bytes = sum(
            graph.param_by_tensor[p].nbytes for p in pnames if graph.param_by_tensor[p].trainable
        )
        n_tensors = sum(1 for p in pnames if graph.param_by_tensor[p].trainable)
        b_flops = 0
        if grad_fn:
            if any(i in rg and i not in graph.param_by_tensor for i in n.inputs):
                b_flops += n.flops_backward_input
            if g_bytes:
                b_flops += n.flops_backward_params
        fwd += n.flops_forward
        bwd += b_flops
        vec += n.vector_ops_forward + (n.vector_ops_backward if grad_fn else 0)
        layers.append(
            LayerCost(
                name=n.name,
                op=n.op.value,
                module=n.module,
                output_shape=graph.tensor(n.output).shape,
                params_bytes=p_bytes,
                grads_bytes=g_bytes,
                optimizer_bytes=opt.state_bytes(g_bytes, n_tensors),
                activation_bytes=act,
                flops=n.flops_forward,
                flops_backward=b_flops,
            )
        )

    flops_per_s = device.compute.fp32_flops_per_s
    latency = (fwd + bwd + vec) / flops_per_s
    energy = latency * device.compute.active_power_w
    batch_bytes = sum(graph.tensor(t).storage_bytes for t in (*graph.inputs, graph.target))
    return TrainingCost(
        model=graph.model,
        device=device.name,
        batch_size=graph.batch_size,
        optimizer=opt.value,
        params_bytes=graph.params_bytes,
        trainable_params_bytes=trainable_bytes,
        buffers_bytes=graph.buffers_bytes,
        grads_bytes=trainable_bytes,
        optimizer_bytes=opt_bytes,
        activation_bytes=graph.activation_bytes,
        batch_bytes=batch_bytes,
        peak_bytes=sim.peak_bytes,
        memory_budget_bytes=device.ram_bytes,
        flops_forward=fwd,
        flops_backward=bwd,
        vector_ops=vec,
        latency_s=latency,
        energy_j=energy,
        fits=sim.peak_bytes <= device.ram_bytes,
        peak_phase=sim.peak_phase.value,
        peak_node=sim.peak_node,
        at_peak=sim.at_peak,
        layers=tuple(layers),
    )
