"""`edgetrain.profile`: capture + cost model (+ optional measurement) for one model and device."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from edgetrain import validate
from edgetrain.capture import capture, example_target, loss_function, loss_label
from edgetrain.cost import (
    Device,
    KernelLibrary,
    Optimizer,
    TrainingCost,
    load_device,
    training_cost,
)
from edgetrain.ir import Graph
from edgetrain.measure import MeasuredStep, measure_training_step


def torch_optimizer(opt: Optimizer, params, lr: float = 0.01) -> torch.optim.Optimizer:
    """The PyTorch optimizer the cost model's `Optimizer` stands for."""
    if opt is Optimizer.SGD:
        return torch.optim.SGD(params, lr=lr)
    if opt is Optimizer.MOMENTUM:
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if opt is Optimizer.ADAMW:
        return torch.optim.AdamW(params, lr=lr)
    return torch.optim.Adam(params, lr=lr)


@dataclass(frozen=True)
class Profile:
    """A training-cost profile, with the measurement of one real step when requested."""

    cost: TrainingCost
    graph: Graph
    device: Device
    measured: MeasuredStep | None = None
    kernels: KernelLibrary = KernelLibrary()
    loss: str = "cross-entropy"  # as a plan records it (`capture.loss_label`)

    # NOTE [ Profile fields are its JSON keys ]: every key `to_dict` writes (and `edgetrain
    # profile --json` prints) is an attribute: `p.peak_bytes`, `p.measured_peak_bytes`, ...
    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("cost", "graph", "device", "measured", "kernels"):
            raise AttributeError(name)
        d = self.to_dict()
        if name in d:
            return d[name]
        raise AttributeError(
            f"Profile has no field {name!r}; its fields: {', '.join(sorted(d))} (and cost, "
            "graph, device, measured, kernels)"
        )

    def to_dict(self) -> dict:
        c = self.cost
        d = {
            "model": c.model,
            "device": c.device,
            "batch_size": c.batch_size,
            "optimizer": c.optimizer,
            "loss": self.loss,
            "input_shape": list(self.graph.tensor(self.graph.inputs[0]).shape[1:]),
            "input_dtype": self.graph.tensor(self.graph.inputs[0]).dtype,
            "params_bytes": c.params_bytes,
            "buffers_bytes": c.buffers_bytes,
            "grads_bytes": c.grads_bytes,
            "optimizer_bytes": c.optimizer_bytes,
            "activation_bytes": c.activation_bytes,
            "batch_bytes": c.batch_bytes,
            "peak_bytes": c.peak_bytes,
            "memory_budget_bytes": c.memory_budget_bytes,
            "flops_forward": c.flops_forward,
            "flops_backward": c.flops_backward,
            "vector_ops": c.vector_ops,
            "latency_s": c.latency_s,
            "energy_j": c.energy_j,
            "fits": c.fits,
            "peak_phase": c.peak_phase,
            "peak_node": c.peak_node,
            "layers": [
                {
                    "name": ly.name,
                    "op": ly.op,
                    "module": ly.module,
                    "output_shape": list(ly.output_shape),
                    "params_bytes": ly.params_bytes,
                    "grads_bytes": ly.grads_bytes,
                    "optimizer_bytes": ly.optimizer_bytes,
                    "activation_bytes": ly.activation_bytes,
                    "flops": ly.flops,
                    "flops_backward": ly.flops_backward,
                }
                for ly in c.layers
            ],
        }
        m = self.measured
        d["measured_activation_bytes"] = None if m is None else m.activation_bytes
        d["measured_peak_bytes"] = None if m is None else m.peak_bytes
        return d


def profile(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    *,
    device="nrf52840",
    batch_size: int = 1,
    optimizer: "Optimizer | str" = "sgd",
    measure: bool = False,
    name: str = "model",
    loss="cross-entropy",
    target_example: torch.Tensor | None = None,
) -> Profile:
    """Profile plain full training of `model` on `device` (catalog name, file or Device).

    `loss`: a name (`cross-entropy`, `mse`, `bce`, `l1`, `smooth-l1`) or a callable
    `loss_fn(output, target)`, captured and costed with the model; `target_example` (batch 1)
    when the default target does not suit it (`capture.capture`). With `measure=True` one
    real step with that loss runs in PyTorch on a copy of the model and the allocator's peak
    and autograd's saved bytes are added (the model itself is not changed).
    """
    batch_size = validate.batch_size(batch_size)
    opt = Optimizer.parse(optimizer)
    dev = load_device(device)
    label = loss_label(loss)
    graph = capture(
        model,
        example_input,
        batch_size=batch_size,
        name=name,
        loss=loss,
        target_example=target_example,
    )
    kernels = host_kernels(graph)
    cost = training_cost(graph, dev, optimizer=opt, kernels=kernels)
    measured = None
    if measure:
        measured = measure_step(model, example_input, batch_size, opt, loss, target_example)
    return Profile(cost, graph, dev, measured, kernels, label)


def measure_step(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    batch_size: int,
    optimizer: "Optimizer | str" = "sgd",
    loss="cross-entropy",
    target_example: torch.Tensor | None = None,
) -> MeasuredStep:
    """Measure one real step of plain training with `loss` on a copy of `model` (allocator
    events); the target is the one capture costs (`capture.example_target`)."""
    opt = Optimizer.parse(optimizer)
    m = copy.deepcopy(model)
    x = example_input.expand(batch_size, *example_input.shape[1:]).contiguous()
    with torch.no_grad():
        out = m(x)
    y = example_target(loss, out, None, target_example)
    del out
    params = [p for p in m.parameters() if p.requires_grad]
    return measure_training_step(m, x, y, torch_optimizer(opt, params), loss_fn=loss_function(loss))


_KERNEL_TABLE: dict[tuple[str, int], tuple[int, int]] = {}


def _measure_conv(graph: Graph, node, input_grad: bool) -> tuple[int, int]:
    """Forward and backward transients of one convolution (1-D or 2-D), read from the
    allocator."""
    from edgetrain.ir import OpKind
    from edgetrain.measure import MemoryMeter

    x_t, w_t = graph.tensor(node.inputs[0]), graph.tensor(node.inputs[1])
    cls = torch.nn.Conv1d if node.op is OpKind.CONV1D else torch.nn.Conv2d
    conv = cls(
        x_t.shape[1],
        w_t.shape[0],
        tuple(w_t.shape[2:]),
        stride=tuple(node.attr("stride")),
        padding=tuple(node.attr("padding")),
        dilation=tuple(node.attr("dilation")),
        groups=node.attr("groups"),
        bias=node.attr("bias"),
    )
    x = torch.randn(*x_t.shape, requires_grad=input_grad)
    with MemoryMeter() as m:
        out = conv(x)
    fwd = max(0, m.trace.peak_delta_bytes - out.untyped_storage().nbytes())
    g = torch.ones_like(out)
    grads = x.numel() * 4 * input_grad + sum(p.numel() * 4 for p in conv.parameters())
    with MemoryMeter() as m:
        out.backward(g)
    bwd = max(0, m.trace.peak_delta_bytes - grads)
    return fwd, bwd


def _measure_frozen_conv(graph: Graph, node, input_grad: bool) -> tuple[int, int]:
    """Transients of a convolution whose weight is frozen, run as the lean backward runs it
    (NOTE [ Lean backward ]): the forward without autograd, the backward as ATen's
    `convolution_backward` with the weight's gradient masked out and the input given by its
    sizes, both on one batch chunk (`edgetrain.cost.conv_chunk`, NOTE [ Lean saved tensors ]);
    where the batch is chunked, the chunk's result lives beside the whole one until copied,
    and the input gradient's slot for the chunk stands in for its input."""
    from edgetrain.cost import conv_chunk
    from edgetrain.measure import MemoryMeter

    x_t, w_t = graph.tensor(node.inputs[0]), graph.tensor(node.inputs[1])
    w = torch.randn(*w_t.shape)
    nd = w.dim() - 2
    batched = len(x_t.shape) == nd + 2
    chunk = conv_chunk(graph, node)
    chunked = batched and chunk < x_t.shape[0]
    x = torch.randn(*((chunk, *x_t.shape[1:]) if chunked else x_t.shape))
    b = torch.randn(w_t.shape[0]) if node.attr("bias") else None
    conf = [list(node.attr(k)) for k in ("stride", "padding", "dilation")]
    with torch.no_grad(), MemoryMeter() as m:
        out = torch.convolution(x, w, b, *conf, False, [0] * nd, node.attr("groups"))
    made = 0 if chunked else out.untyped_storage().nbytes()
    fwd = max(0, m.trace.peak_delta_bytes - made)
    g = torch.ones_like(out)
    mask = [input_grad, False, b is not None]
    # chunked, the input gradient's chunk slot (allocated already) stands in for the input
    stand_in = torch.empty(x.shape) if chunked and input_grad else g.new_empty(1).expand(x.shape)
    with MemoryMeter() as m:
        r = torch.ops.aten.convolution_backward(
            g,
            stand_in,
            w,
            None if b is None else [w.shape[0]],
            *conf,
            False,
            [0] * nd,
            node.attr("groups"),
            mask,
        )
    made = 0 if chunked else sum(t.untyped_storage().nbytes() for t in r if t is not None)
    return fwd, max(0, m.trace.peak_delta_bytes - made)


def _measure_fused(graph: Graph, node, input_grad: bool) -> tuple[int, int]:
    """Forward and backward transients of one fused kernel (NOTE [ Kernel workspaces on
    PyTorch CPU (torch 2.13) ]): the ATen operator run alone on tensors of the node's shapes,
    every floating input but the first requiring grad (the first as `input_grad` says)."""
    from edgetrain.measure import MemoryMeter

    op = getattr(torch.ops.aten, node.attr("fn")).default
    ins = []
    for i, name in enumerate(node.inputs):
        t = graph.tensor(name)
        v = torch.randn(*t.shape, dtype=getattr(torch, t.dtype)) * 0.1
        ins.append(v.requires_grad_(v.is_floating_point() and (i > 0 or input_grad)))
    scalars = [list(a) if isinstance(a, tuple) else a for a in node.attr("scalars")]
    with MemoryMeter() as m:
        outs = op(*ins, *scalars)
    outs = [o for o in outs if isinstance(o, torch.Tensor)]
    made = sum(
        o.untyped_storage().nbytes()
        for o in {o.untyped_storage().data_ptr(): o for o in outs}.values()
    )
    fwd = max(0, m.trace.peak_delta_bytes - made)
    diff = [o for o in outs if o.requires_grad]
    grads = [torch.ones_like(o) for o in diff]
    want = sum(v.untyped_storage().nbytes() for v in ins if v.requires_grad)
    with MemoryMeter() as m:
        torch.autograd.backward(diff, grads)
    bwd = max(0, m.trace.peak_delta_bytes - want)
    return fwd, bwd


def host_kernels(
    graph: Graph | None = None,
    requires_grad: frozenset[str] | None = None,
    lean_backward: bool = False,
) -> KernelLibrary:
    """The kernel library plain PyTorch uses on this host, profiled for `graph`'s convolutions
    and fused layers (`edgetrain.cost.is_profiled`).

    Each distinct kernel is run once (forward and backward, with an input gradient where
    `requires_grad` — default: full training — asks for one) under the allocator meter;
    with `lean_backward` a convolution whose weight is frozen is run as the lean backward runs
    it (`kernel_signature(..., weight_grad=False)`). Results are kept per process and in the
    cache directory, keyed by torch version and thread count.
    """
    import json

    from edgetrain.cost import is_profiled, kernel_signature
    from edgetrain.ir import OpKind
    from edgetrain.storage import cache_dir, write_text_atomic

    threads = torch.get_num_threads()
    measured = []
    if graph is not None:
        path = cache_dir() / "kernels" / f"torch-{torch.__version__}-threads-{threads}.json"
        if not _KERNEL_TABLE and path.exists():  # measured on this host before
            try:
                for sig, f, b in json.loads(path.read_text()):
                    _KERNEL_TABLE[sig, threads] = (f, b)
            except (ValueError, TypeError):
                pass
        new = False
        rg = graph.requires_grad if requires_grad is None else requires_grad
        for n in graph.nodes:
            if not is_profiled(n):
                continue
            ig = n.inputs[0] in rg
            conv = n.op in (OpKind.CONV2D, OpKind.CONV1D)
            wg = not (lean_backward and conv and n.inputs[1] not in rg)
            sig = kernel_signature(graph, n, ig, wg)
            key = (sig, threads)
            if key not in _KERNEL_TABLE:
                measure = _measure_conv if conv else _measure_fused
                # random operands from a forked generator: whether a kernel was cached must
                # not change the caller's random stream (model inits, data order)
                with torch.random.fork_rng(devices=[]):
                    _KERNEL_TABLE[key] = (measure if wg else _measure_frozen_conv)(graph, n, ig)
                new = True
            measured.append((sig, *_KERNEL_TABLE[key]))
        if new:
            write_text_atomic(
                json.dumps([[k[0], *v] for k, v in _KERNEL_TABLE.items() if k[1] == threads]), path
            )
    return KernelLibrary(pytorch_cpu_threads=threads, measured=tuple(dict.fromkeys(measured)))
