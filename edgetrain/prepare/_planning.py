"""`edgetrain.plan`: the preparation stage's planner, from a PyTorch model to a `Plan`.

Captures the model at each candidate micro-batch size, and for each trainable set, micro-batch
size and in-place choice solves the activation decisions (keep / recompute / page per stage)
with the chosen solver; the cheapest feasible candidate becomes the plan. Executors with a
memory layout of their own (the C trainer) are asked through `edgetrain.planner.ExecutorMemory`
(NOTE [ Asking an executor for its memory ]); this module imports none of them.
"""

from __future__ import annotations

import copy
import dataclasses
from importlib.metadata import entry_points

import torch

from edgetrain.capture import example_target
from edgetrain.cost import Optimizer, load_device
from edgetrain.errors import EdgetrainError, InvalidArgumentError, PlanInfeasibleError
from edgetrain.ir import Graph
from edgetrain.planner import (
    Executor,
    ExecutorMemory,
    Plan,
    PlanRunner,
    Precision,
    StepRequest,
    Strategy,
)
from edgetrain.prepare._request import SAFETY_MARGIN, PlanRequest
from edgetrain.prepare._search import (
    Search,
    plan_for_executor,
    plan_for_pytorch,
    to_plan,
    trainable_policy,
)

_BN = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)

__all__ = ["SAFETY_MARGIN", "plan", "to_plan", "trainable_policy", "trainer_plan"]


def plan(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    request: PlanRequest | None = None,
    /,
    **options,
) -> Plan:
    """Plan training of `model` on a device within a memory budget (default: its memory).

    Pass a `PlanRequest`, or its fields as keyword arguments (`device`, `budget_bytes`,
    `batch_size`, `strategy`, `policy`, `executor`, ...); both together: the keywords
    override the request's fields.

    NOTE [ Safety margin ]
        Solvers plan to `(1 - safety_margin) * budget` (3 % by default). The lifetime
        simulation matches the allocator to within a few bytes for every plan kind
        (tests/test_runtime.py); the margin covers hosts whose kernels differ from the profiled
        ones and the one known gap (Python locals held by a frozen forward, README), so the
        measured peak stays under the budget the user gave. `Plan.budget_bytes` is the user's
        budget.

    NOTE [ Executors auto tries ]
        In order, the first that fits wins: PyTorch fp32 (recompute, paging, micro-batching,
        sparse and in-place updates), then the C trainer in fp32 (one static arena, frozen
        weights in flash), then the C trainer in int8 with line-buffered frozen layers. Each
        tries its trainable sets from the most faithful; int8 changes the arithmetic, so it
        comes last. A device on which none fits gets one error listing each executor's reason.
    """
    req = request.replace(**options) if request is not None else PlanRequest(**options)
    if req.policy is not None and req.policy.startswith("lora"):
        return _plan_lora(model, example_input, req)
    dev = load_device(req.device)
    search = Search(
        model,
        example_input,
        req,
        dev,
        int(req.budget_bytes if req.budget_bytes is not None else dev.ram_bytes),
        any(isinstance(m, _BN) for m in model.modules()),
    )
    policies = _candidate_policies(search)
    errors: list[tuple[str, PlanInfeasibleError]] = []
    for ex, pr in _executor_attempts(req):
        try:
            if ex is Executor.PYTORCH:
                found = plan_for_pytorch(search, policies)
                return checked_on_host(search, policies, found) if req.measure else found
            return plan_for_executor(search, policies, executor_memory(ex, pr))
        except PlanInfeasibleError as e:
            errors.append((f"{ex.value} {pr.value}", e))
        except EdgetrainError as e:  # e.g. an operator the C trainer has no kernel for
            if req.executor is not None or req.precision is not None:
                raise  # the caller pinned executor or precision: its refusal is the answer
            errors.append((f"{ex.value} {pr.value}", PlanInfeasibleError(f"cannot run: {e}")))
    if len(errors) == 1:
        raise errors[0][1]
    deadline = f" within the {req.deadline_s:g} s deadline" if req.deadline_s else ""
    raise PlanInfeasibleError(
        f"no executor has a plan for {search.budget_bytes:,} bytes on {dev.name}{deadline}: "
        + " | ".join(f"{label}: {e}" for label, e in errors)
    )


def _plan_lora(model: torch.nn.Module, example_input: torch.Tensor, req: PlanRequest) -> Plan:
    """`policy lora:R[:MODULES]`: a copy of `model` with adapters (NOTE [ LoRA adapters ]) is
    planned with the adapters and the task's head (the last linear layer, when not adapted)
    as its trainable set, on the PyTorch executor; the plan records the rank and the adapted
    modules, so the Trainer adds the same adapters to the user's model."""
    from edgetrain.models import LoraSpec, add_lora, lora_targets, parse_lora

    if req.executor not in (None, Executor.PYTORCH) or req.precision not in (None, Precision.FP32):
        raise InvalidArgumentError(
            f"policy {req.policy!r} trains LoRA adapters on the PyTorch executor in fp32; drop "
            "--executor/--precision or use another policy for the C executor"
        )
    spec: LoraSpec = parse_lora(req.policy or "")
    adapted = copy.deepcopy(model)
    targets = lora_targets(adapted, spec)
    add_lora(adapted, LoraSpec(spec.rank, tuple(targets)))
    linears = [n for n, m in adapted.named_modules() if isinstance(m, torch.nn.Linear)]
    head = [linears[-1]] if linears and linears[-1] not in targets else []
    names = [f"{t}.lora_{k}" for t in targets for k in "ab"] + [
        n for n, _ in adapted.named_parameters() if any(n.startswith(h + ".") for h in head)
    ]
    p = plan(
        adapted,
        example_input,
        req.replace(policy=",".join(names), executor=Executor.PYTORCH, precision=Precision.FP32),
    )
    note = f"trainable policy: {req.policy} ({len(targets)} adapters of rank {spec.rank}"
    note += f", head {head[0]})" if head else ")"
    return dataclasses.replace(
        p, lora_rank=spec.rank, lora_modules=tuple(targets), notes=(note, *p.notes[1:])
    )


def trainer_plan(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    request: PlanRequest | None = None,
    /,
    **options,
) -> Plan:
    """`plan(...)` pinned to the PyTorch executor in fp32: a plan `edgetrain.Trainer` runs.
    For callers that train in PyTorch (the strategies, the federated clients), where auto's
    fallback to the C trainer would hand them a plan they cannot execute."""
    return plan(model, example_input, request, executor="pytorch", precision="fp32", **options)


def executor_memory(executor: Executor, precision: Precision) -> ExecutorMemory:
    """The registered memory model of an executor with its own layout (entry-point group
    `edgetrain.executors`, NOTE [ Asking an executor for its memory ])."""
    for ep in entry_points(group="edgetrain.executors"):
        memory = ep.load()
        if memory.executor is executor and memory.precision is precision:
            return memory
    raise InvalidArgumentError(
        f"no {executor.value} {precision.value} executor is registered (entry-point group "
        "edgetrain.executors); reinstall edgetrain with `make setup` or `pip install -e .`"
    )


def plan_runner(executor: Executor) -> PlanRunner:
    """The registered runner of an executor (entry-point group `edgetrain.runners`)."""
    for ep in entry_points(group="edgetrain.runners"):
        runner = ep.load()
        if runner.executor is executor:
            return runner
    raise InvalidArgumentError(
        f"no {executor.value} runner is registered (entry-point group edgetrain.runners); "
        "reinstall edgetrain with `make setup` or `pip install -e .`"
    )


_CHECK_ROUNDS = 3


def checked_on_host(search: Search, policies, found: Plan) -> Plan:
    """`found`, run on this host (NOTE [ Plans are checked against the allocator ]): as it is
    when it measures within its simulation; with the measured peak as its prediction when that
    is more but within the budget; otherwise re-planned with the gap held back."""
    runner = plan_runner(Executor.PYTORCH)
    x, y = _example_batch(search)
    for _ in range(_CHECK_ROUNDS):
        loss_fn = search.request.loss if callable(search.request.loss) else None
        req = StepRequest(copy.deepcopy(search.model), found, x, y, loss_fn=loss_fn)
        measured, simulated = runner.measured_peak_bytes(req), found.predicted_peak_bytes
        if measured <= simulated:
            return found
        if measured <= search.budget_bytes:
            note = (
                f"checked on this host: measured peak {measured:,} B, simulated {simulated:,} B; "
                "the prediction is the measured peak"
            )
            if measured - simulated > 0.01 * simulated:
                note += " (values the model's Python code holds past their use in the graph)"
            return dataclasses.replace(
                found,
                predicted=dataclasses.replace(found.predicted, peak_bytes=measured),
                notes=(*found.notes, note),
            )
        # this plan fitted with the last gap held back, so its own gap is larger: hold it back
        search.held_back_bytes = measured - simulated
        found = plan_for_pytorch(search, policies)
    raise PlanInfeasibleError(
        f"no plan fits {search.budget_bytes:,} bytes on {search.device.name}: after "
        f"{_CHECK_ROUNDS} re-plans the plans still measure above their simulation on this host "
        f"(the last by {measured - simulated:,} bytes, {measured:,} in all); use a larger "
        "budget or a sparser --policy"
    )


def _example_batch(search: Search) -> tuple[torch.Tensor, torch.Tensor]:
    """The example input at the plan's batch size and the target its loss is costed with."""
    req, ex = search.request, search.example_input
    x = ex.expand(req.batch_size, *ex.shape[1:]).contiguous()
    probe = copy.deepcopy(search.model)
    with torch.no_grad(), torch.random.fork_rng():
        out = probe(x)
    return x, example_target(req.loss, out, None, req.target_example)


def _candidate_policies(search: Search) -> list[tuple[str, "str | frozenset[str]"]]:
    """Candidate trainable sets, the most faithful first: (label, policy string or names)."""
    req = search.request
    if (
        req.calibration is not None
        and req.strategy is Strategy.AUTO
        and req.policy in (None, "fisher")
    ):
        from edgetrain.prepare._sparse import fisher_candidates, score_layers

        g0 = search.graph_at(req.batch_size, False)
        scores = score_layers(
            search.model, g0, req.calibration, device=search.device, optimizer=req.optimizer
        )
        n_layers = len(scores)
        policies: list[tuple[str, str | frozenset[str]]] = [
            (
                "all"
                if len(c) == len(g0.params)
                else f"fisher:top-{sum(1 for s in scores if set(s.params) <= c)}/{n_layers}",
                c,
            )
            for c in fisher_candidates(scores)
        ]
        if req.policy is None and policies[0][0] != "all":
            policies.insert(0, ("all", "all"))
        return policies
    policies = [(req.policy or "all", req.policy or "all")]
    if req.strategy is Strategy.AUTO and req.policy is None:
        policies += [(q, q) for q in _sparse_policies(search.graph_at(req.batch_size, False))]
    return policies


def _sparse_policies(graph: Graph) -> list[str]:
    n_mod = len(dict.fromkeys(p.module for p in graph.params))
    ks = sorted({max(1, n_mod * f // 8) for f in (4, 2, 1)} | {1}, reverse=True)
    return [f"last:{k}" for k in ks if k < n_mod] + ["bias-only"]


def _executor_attempts(req: PlanRequest) -> list[tuple[Executor, Precision]]:
    """The (executor, precision) pairs to try, in order (NOTE [ Executors auto tries ])."""
    execu, prec = req.executor, req.precision
    every = [
        (Executor.PYTORCH, Precision.FP32),
        (Executor.C, Precision.FP32),
        (Executor.C, Precision.INT8),
    ]
    if req.strategy is not Strategy.AUTO:  # the others plan what they are asked (fp32 PyTorch)
        every = [
            (
                execu or (Executor.C if prec is Precision.INT8 else Executor.PYTORCH),
                prec or Precision.FP32,
            )
        ]
    if execu is not None and all(e is not execu for e, _ in every):
        every = [(execu, prec or Precision.FP32)]  # pinned beyond auto's tries (executorch)
    out = [
        (e, p) for e, p in every if (execu is None or e is execu) and (prec is None or p is prec)
    ]
    if execu is None and (
        req.optimizer is not Optimizer.SGD or req.weight_decay > 0 or req.schedule != "constant"
    ):
        # the C trainer runs plain SGD only
        out = [(e, p) for e, p in out if e is Executor.PYTORCH] or out
    return out
