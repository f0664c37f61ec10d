"""Sparse-update selection: which layers to train under a memory budget, scored on local samples.

TinyTrain (Kwon et al., ICML 2024, §3.2) ranks layers by the Fisher information of their
parameters per unit of the memory training them costs, measured on a few samples of the
device's own data. We follow it at layer granularity:

    fisher(l)  = (1/N) sum_n sum_{p in l} || d loss_n / d p ||^2     (empirical Fisher trace,
                                                                      one sample at a time)
    bytes(l)   = [peak(train only l) - peak(train nothing)]            (exact lifetime simulation
                                                                      of one step, keep-all)
                 + gradient bytes(l) + optimizer-state bytes(l)
    score(l)   = fisher(l) / bytes(l)

`bytes(l)` is not just the parameter size: training an early layer keeps the activations of
every later layer for backward, and the simulation charges exactly that as a rise of the peak.
A late layer often does not move the peak at all on its own (the frozen step peaks elsewhere);
its gradient and optimizer state are still charged, since they add up once several layers
train. Candidate trainable sets are
prefixes of the ranking (the k best layers); `edgetrain.plan(strategy="auto", calibration=...)`
tries them from the largest down and keeps the first whose plan fits, so the trained set carries
as much gradient information as the budget allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgetrain.cost import Optimizer
from edgetrain.errors import InvalidArgumentError
from edgetrain.ir import Graph


@dataclass(frozen=True, slots=True)
class LayerScore:
    """One module's claim to be trained: Fisher information per byte of peak memory."""

    module: str
    params: tuple[str, ...]
    fisher: float
    memory_bytes: int
    fisher_per_byte: float


def _check_calibration(model: torch.nn.Module, calibration) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        x, y = calibration
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            "calibration must be a pair (x, y) of a few local samples and their labels, e.g. "
            "16 samples of the device's data"
        ) from None
    if (
        not isinstance(x, torch.Tensor)
        or not isinstance(y, torch.Tensor)
        or x.shape[0] != y.shape[0]
    ):
        raise InvalidArgumentError(
            f"calibration x and y must be tensors with the same number of samples, got "
            f"{getattr(x, 'shape', type(x))} and {getattr(y, 'shape', type(y))}"
        )
    if x.shape[0] == 0:
        raise InvalidArgumentError("calibration holds 0 samples; pass at least 1 (8-32 is typical)")
    return x, y


def fisher_information(
    model: torch.nn.Module, calibration, *, loss_fn=F.cross_entropy
) -> dict[str, float]:
    """Empirical Fisher trace per parameter tensor: mean over samples of its squared gradient norm.

    Runs one sample at a time (the Fisher of a batch mean would under-count), in the model's
    current mode; the model's parameters, gradients and buffers are left as they were.
    """
    x, y = _check_calibration(model, calibration)
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    grads = {n: p.grad for n, p in params.items()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fisher = {n: 0.0 for n in params}
    try:
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        for i in range(x.shape[0]):
            loss = loss_fn(model(x[i : i + 1]), y[i : i + 1])
            gs = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for n, g in zip(params, gs):
                if g is not None:
                    fisher[n] += float(g.detach().pow(2).sum())
    finally:
        model.load_state_dict(state)  # BN running statistics moved during the forward passes
        for n, p in params.items():
            p.requires_grad_(flags[n])
            p.grad = grads[n]
    return {n: v / x.shape[0] for n, v in fisher.items()}


def score_layers(
    model: torch.nn.Module,
    graph: Graph,
    calibration,
    *,
    device,
    optimizer: Optimizer = Optimizer.SGD,
    loss_fn=F.cross_entropy,
) -> tuple[LayerScore, ...]:
    """Layers (modules owning parameters) ranked by Fisher information per byte, best first."""
    from edgetrain.planner import ActivationDecision, Problem
    from edgetrain.prepare._profile import host_kernels

    fisher = fisher_information(model, calibration, loss_fn=loss_fn)
    sizes = {p.name: p.nbytes for p in graph.params}
    by_module: dict[str, list[str]] = {}
    for p in graph.params:
        by_module.setdefault(p.module, []).append(p.name)

    def peak(trainable: frozenset[str]) -> int:
        prob = Problem(
            graph,
            device,
            1 << 62,
            optimizer=optimizer,
            trainable=trainable,
            kernels=host_kernels(graph, graph.requires_grad_for(trainable)),
        )
        return prob.evaluate(tuple(ActivationDecision.KEEP for _ in prob.stages)).peak_bytes

    frozen_peak = peak(frozenset())
    scores = []
    for module, names in by_module.items():
        f = sum(fisher.get(n, 0.0) for n in names)
        own = sum(sizes[n] for n in names)
        own += optimizer.state_bytes(own, len(names))
        mem = max(1, peak(frozenset(names)) - frozen_peak + own)
        scores.append(LayerScore(module, tuple(names), f, mem, f / mem))
    return tuple(sorted(scores, key=lambda s: (-s.fisher_per_byte, s.module)))


def fisher_candidates(scores: tuple[LayerScore, ...]) -> list[frozenset[str]]:
    """Trainable sets to try, largest first: the k best-scored layers for k = n, 3n/4, n/2, ...,
    2, 1 (k = n, every layer, is full training)."""
    n = len(scores)
    ks = sorted(
        {n, 3 * n // 4, n // 2, 3 * n // 8, n // 4, n // 8, n // 16, 2, 1} - {0}, reverse=True
    )
    return [frozenset(p for s in scores[:k] for p in s.params) for k in ks if k <= n]
