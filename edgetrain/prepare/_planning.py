"""`edgetrain.plan`: the preparation stage's planner, from a PyTorch model to a `Plan`.

Captures the model at each candidate micro-batch size, and for each trainable set, micro-batch
size and in-place choice solves the activation decisions (keep / recompute / page per stage)
with the chosen solver; the cheapest feasible candidate becomes the plan.
"""

from __future__ import annotations

import torch

from edgetrain.prepare._profile import host_kernels
from edgetrain.capture import capture
from edgetrain.cost import Optimizer, load_device, simulate_step
from edgetrain.errors import EdgetrainError, InvalidArgumentError
from edgetrain.ir import Graph
from edgetrain.planner import (
    ActivationDecision,
    Executor,
    Objective,
    ParamDecision,
    ParamPlan,
    Plan,
    Precision,
    Prediction,
    StagePlan,
    Strategy,
    TimelineSample,
)
from edgetrain.planner import Evaluation, Problem
from edgetrain.planner import valid_depths
from edgetrain.planner import SOLVERS, PlanInfeasibleError

_BN = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def trainable_policy(graph: Graph, policy: str) -> frozenset[str]:
    """Parameter names a sparse-update policy trains: `all`, `bias-only`, `last:k` (the last k
    modules that own parameters), or a comma-separated list of parameter names / prefixes."""
    names = [p.name for p in graph.params]
    if policy in ("all", "full"):
        return frozenset(names)
    if policy == "bias-only":
        return frozenset(n for n in names if n.endswith(".bias"))
    if policy.startswith("last:"):
        try:
            k = int(policy[5:])
        except ValueError:
            raise InvalidArgumentError(f"bad policy {policy!r}: expected last:K with K an integer") from None
        if k <= 0:
            raise InvalidArgumentError(f"bad policy {policy!r}: K must be positive")
        modules = list(dict.fromkeys(p.module for p in graph.params))
        keep = set(modules[-k:])
        return frozenset(p.name for p in graph.params if p.module in keep)
    wanted = [w.strip() for w in policy.split(",") if w.strip()]
    chosen = frozenset(n for n in names if any(n == w or n.startswith(w + ".") for w in wanted))
    if not chosen:
        raise InvalidArgumentError(
            f"policy {policy!r} selects no parameter; use all, bias-only, last:K or names such as "
            f"{', '.join(names[:3])}")
    return chosen


def _sparse_policies(graph: Graph) -> list[str]:
    n_mod = len(dict.fromkeys(p.module for p in graph.params))
    ks = sorted({max(1, n_mod * f // 8) for f in (4, 2, 1)} | {1}, reverse=True)
    return [f"last:{k}" for k in ks if k < n_mod] + ["bias-only"]


def _divisors(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


SAFETY_MARGIN = 0.03


def plan(model: torch.nn.Module, example_input: torch.Tensor, *, device="nrf52840",
         budget_bytes: int | None = None, batch_size: int = 1, objective: str = "time",
         strategy: str = "auto", optimizer: str = "sgd", deadline_s: float | None = None,
         allow_paging: bool = True, policy: str | None = None, name: str = "model",
         freeze_batch_norm: bool | None = None, safety_margin: float = SAFETY_MARGIN,
         calibration: "tuple[torch.Tensor, torch.Tensor] | None" = None,
         executor: str | None = None, precision: str | None = None) -> Plan:
    """Plan training of `model` on `device` within `budget_bytes` (default: the device's memory).

    NOTE [ Safety margin ]
        Solvers plan to `(1 - safety_margin) * budget` (3 % by default). The lifetime
        simulation matches the allocator to within a few bytes for every plan kind
        (tests/test_runtime.py); the margin covers hosts whose kernels differ from the profiled
        ones and the one known gap (Python locals held by a frozen forward, README), so the
        measured peak stays under the budget the user gave. `Plan.budget_bytes` is the user's budget.

    `strategy`: `exact` (changes no mathematics), `auto` (may also train a sparse subset),
    or a baseline solver (`keep-all`, `sqrt`, `greedy`) at the full batch.

    `policy`: what trains — `all`, `bias-only`, `last:K`, parameter names, or `fisher` (layers
    ranked by Fisher information per byte on `calibration`, a few local samples `(x, y)`; see
    `edgetrain.prepare._sparse`). With `strategy="auto"` and no policy, `calibration` switches the
    sparse candidates from `last:K` to the Fisher ranking.

    `executor`: `pytorch` (the `Trainer`; predictions from the lifetime simulation of PyTorch's
    allocator) or `c` (`edgetrain compile`: the prediction is the compiled program's SRAM, see
    NOTE [ Planning for the C executor ]). `precision`: `fp32` or `int8` (the C executor's
    int8 QAS trainer, NOTE [ Planning int8 for the C executor ]). Left as None, `strategy="auto"`
    chooses them too (NOTE [ Executors auto tries ]); other strategies plan fp32 on PyTorch.

    NOTE [ Executors auto tries ]
        In order, the first that fits wins: PyTorch fp32 (recompute, paging, micro-batching,
        sparse and in-place updates), then the C trainer in fp32 (one static arena, frozen
        weights in flash), then the C trainer in int8 with line-buffered frozen layers. Each
        tries its trainable sets from the most faithful; int8 changes the arithmetic, so it
        comes last. A device on which none fits gets one error listing each executor's reason.
    """
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise InvalidArgumentError(f"batch size must be a positive integer, got {batch_size!r}")
    try:
        strat = Strategy(strategy)
    except ValueError:
        raise InvalidArgumentError(
            f"unknown strategy {strategy!r}; choose one of {', '.join(s.value for s in Strategy)}"
        ) from None
    try:
        obj = Objective(objective)
    except ValueError:
        raise InvalidArgumentError(f"unknown objective {objective!r}; choose time or energy") from None
    opt = Optimizer.parse(optimizer)
    try:
        execu = None if executor is None else Executor(executor)
    except ValueError:
        raise InvalidArgumentError(
            f"unknown executor {executor!r}; choose pytorch (Trainer) or c (edgetrain compile)"
        ) from None
    try:
        prec = None if precision is None else Precision(precision)
    except ValueError:
        raise InvalidArgumentError(f"unknown precision {precision!r}; choose fp32 or int8") from None
    if execu is Executor.C and opt is not Optimizer.SGD:
        raise InvalidArgumentError(
            f"the C executor trains with plain SGD, not {opt.value}; use --optimizer sgd")
    if prec is Precision.INT8 and execu is Executor.PYTORCH:
        raise InvalidArgumentError(
            "int8 training runs on the C executor (edgetrain compile --precision int8); use "
            "--executor c, or fp32 for the PyTorch Trainer")
    if prec is Precision.INT8 and opt is not Optimizer.SGD:
        raise InvalidArgumentError(
            f"int8 QAS training uses plain SGD, not {opt.value}; use --optimizer sgd")
    attempts = _executor_attempts(strat, execu, prec, opt)
    dev = load_device(device)
    budget = int(budget_bytes if budget_bytes is not None else dev.ram_bytes)
    if budget <= 0:
        raise InvalidArgumentError(f"memory budget must be positive, got {budget} bytes")
    has_bn = any(isinstance(m, _BN) for m in model.modules())
    baseline = strat in (Strategy.KEEP_ALL, Strategy.SQRT, Strategy.GREEDY)
    if strat is Strategy.EXACT and policy not in (None, "all", "full"):
        raise InvalidArgumentError(
            f"strategy exact trains every parameter; policy {policy!r} needs --strategy auto")
    solver = SOLVERS[strat.value] if baseline else SOLVERS["dp"]
    # Micro-batching changes batch statistics, so with batch norm it needs BN frozen (running
    # statistics, which also slows learning): try BN live at the full batch first.
    if freeze_batch_norm is not None:
        bn_modes = [freeze_batch_norm]
    elif has_bn and not baseline:
        bn_modes = [False, True]
    else:
        bn_modes = [False]

    graphs: dict[tuple[int, bool], Graph] = {}

    def graph_at(b: int, freeze: bool) -> Graph:
        if (b, freeze) not in graphs:
            was = [(m, m.training) for m in model.modules()]
            if freeze:
                for m in model.modules():
                    if isinstance(m, _BN):
                        m.eval()
            try:
                graphs[b, freeze] = capture(model, example_input, batch_size=b, name=name)
            finally:
                for m, t in was:
                    m.train(t)
        return graphs[b, freeze]

    if policy == "fisher" and calibration is None:
        raise InvalidArgumentError(
            "policy fisher scores layers on local samples: pass calibration=(x, y) "
            "(CLI: --calibration DATA, e.g. fashion-mnist:5-9)")
    if policy == "fisher" and strat is not Strategy.AUTO:
        raise InvalidArgumentError(
            f"policy fisher chooses a sparse trainable set; it needs --strategy auto, not {strat.value}")
    # Candidate trainable sets, the most faithful first: (label, policy string or parameter set).
    policies: list[tuple[str, str | frozenset[str]]] = []
    if calibration is not None and strat is Strategy.AUTO and policy in (None, "fisher"):
        from edgetrain.prepare._sparse import fisher_candidates, score_layers

        g0 = graph_at(batch_size, False)
        scores = score_layers(model, g0, calibration, device=dev, optimizer=opt)
        n_layers = len(scores)
        policies = [("all" if len(c) == len(g0.params) else
                     f"fisher:top-{sum(1 for s in scores if set(s.params) <= c)}/{n_layers}", c)
                    for c in fisher_candidates(scores)]
        if policy is None and policies[0][0] != "all":
            policies.insert(0, ("all", "all"))
    else:
        policies = [(policy or "all", policy or "all")]
        if strat is Strategy.AUTO and policy is None:
            policies += [(q, q) for q in _sparse_policies(graph_at(batch_size, False))]
    errors: list[tuple[str, PlanInfeasibleError]] = []
    for ex, pr in attempts:
        try:
            if ex is Executor.PYTORCH:
                return _plan_for_pytorch(
                    policies, graph_at, dev, budget, batch_size, opt, obj, strat, name,
                    deadline_s, has_bn, safety_margin, bn_modes, freeze_batch_norm, baseline,
                    solver, allow_paging)
            if pr is Precision.INT8:
                return _plan_for_c_int8(policies, graph_at, model, example_input, dev, budget,
                                        batch_size, opt, obj, strat, name, deadline_s, has_bn,
                                        safety_margin)
            return _plan_for_c(policies, graph_at, dev, budget, batch_size, opt, obj, strat,
                               name, deadline_s, has_bn, safety_margin)
        except PlanInfeasibleError as e:
            errors.append((f"{ex.value} {pr.value}", e))
        except EdgetrainError as e:  # e.g. an operator the C trainer has no kernel for
            if execu is not None or prec is not None:
                raise  # the caller pinned executor or precision: its refusal is the answer
            errors.append((f"{ex.value} {pr.value}", PlanInfeasibleError(f"cannot run: {e}")))
    if len(errors) == 1:
        raise errors[0][1]
    raise PlanInfeasibleError(
        f"no executor fits {budget:,} bytes on {dev.name}: "
        + " | ".join(f"{label}: {e}" for label, e in errors))


def trainer_plan(model: torch.nn.Module, example_input: torch.Tensor, **kwargs) -> Plan:
    """`plan(...)` pinned to the PyTorch executor in fp32: a plan `edgetrain.Trainer` runs.
    For callers that train in PyTorch (the strategies, the federated clients), where auto's
    fallback to the C trainer would hand them a plan they cannot execute."""
    return plan(model, example_input, executor="pytorch", precision="fp32", **kwargs)


def _executor_attempts(strat: Strategy, execu: "Executor | None", prec: "Precision | None",
                       opt: Optimizer) -> list[tuple[Executor, Precision]]:
    """The (executor, precision) pairs to try, in order (NOTE [ Executors auto tries ])."""
    auto = strat is Strategy.AUTO
    every = [(Executor.PYTORCH, Precision.FP32), (Executor.C, Precision.FP32),
             (Executor.C, Precision.INT8)]
    if not auto:  # the other strategies plan what they are asked, fp32 on PyTorch by default
        every = [(execu or (Executor.C if prec is Precision.INT8 else Executor.PYTORCH),
                  prec or Precision.FP32)]
    out = [(e, p) for e, p in every if (execu is None or e is execu) and (prec is None or p is prec)]
    if execu is None and opt is not Optimizer.SGD:  # the C trainer runs plain SGD only
        out = [(e, p) for e, p in out if e is Executor.PYTORCH] or out
    return out


def _plan_for_pytorch(policies, graph_at, dev, budget: int, batch_size: int, opt: Optimizer,
                      obj: Objective, strat: Strategy, name: str, deadline_s, has_bn: bool,
                      safety_margin: float, bn_modes, freeze_batch_norm, baseline: bool, solver,
                      allow_paging: bool) -> Plan:
    """The best PyTorch (Trainer) plan: the most faithful trainable set that fits, and for it
    the BN mode, micro-batch, in-place update and activation decisions of least cost."""
    best: tuple[Evaluation, Problem, str, int, bool, bool] | None = None
    smallest: tuple[int, Problem | None] = (1 << 62, None)
    for pol, chosen in policies:  # the most faithful trainable set that fits wins
        # NOTE [ Batch norm under a sparse update ]
        #     With most of the network frozen, batch norm in training mode still normalises by
        #     each batch's statistics and overwrites the pretrained running statistics, so the
        #     frozen layers' features drift under what trains. TinyTL and TTE keep BN
        #     statistics frozen when they update a subset; so do we for every sparse candidate
        #     (BN live is still tried when frozen does not fit). Measured with the bench's
        #     data and seeds: mcu-cnn (pretrained on classes 0-4, 800 samples of 5-9, lr 0.05,
        #     nRF52840) `last:1` 41.4 -> 45.1 % at batch 8 and 8.4 -> 48.6 % at batch 1;
        #     TinyTL's biases + lite residuals on mbv2-w0.35 (rpi4, 400 samples, BN forced
        #     frozen) 25.2 -> 27.2 %
        #     (tests/test_runtime.py::test_sparse_plans_freeze_batch_norm_statistics).
        sparse = pol not in ("all", "full")
        modes = (sorted(bn_modes, reverse=True) if sparse and freeze_batch_norm is None
                 else bn_modes)
        for freeze in modes:
            if baseline:
                micro_sizes, in_place_opts = [batch_size], [False]
            else:
                micro_sizes = _divisors(batch_size) if (not has_bn or freeze) else [batch_size]
                in_place_opts = [False, True]
            for mb in micro_sizes:
                g = graph_at(mb, freeze)
                trainable = chosen if isinstance(chosen, frozenset) else trainable_policy(g, chosen)
                kernels = host_kernels(g, g.requires_grad_for(trainable))
                # NOTE [ Stage granularity ]
                #     Where a stage boundary falls decides what recomputation and paging can
                #     do: one coarse stage (MobileNetV2's whole `features`) can drop every
                #     activation inside it but can only be recomputed or paged whole; per-block
                #     stages trade memory for time block by block. The DP and the baselines'
                #     stage MILP see one cut, so the search tries every valid module depth
                #     (`valid_depths`) and keeps the cheapest plan: on rpi4 at batch 8 and half
                #     the keep-all budget, mbv2-w0.35's modelled step goes from 5.56 s (page
                #     `features` whole) to 0.13 s (per-block decisions). Baselines keep the
                #     default cut (`chain_stages`) so they stay the published heuristics.
                depths = [None] if baseline else list(valid_depths(g)) or [None]
                for in_place in in_place_opts:
                    if in_place and mb != batch_size:
                        continue  # updating inside backward would change accumulation's maths
                    for depth in depths:
                        prob = Problem(g, dev, int(budget * (1 - safety_margin)), optimizer=opt,
                                       objective=obj, deadline_s=deadline_s,
                                       allow_paging=allow_paging, trainable=trainable,
                                       in_place_update=in_place,
                                       accumulation_steps=batch_size // mb, kernels=kernels,
                                       stage_depth=depth)
                        try:
                            ev = solver(prob)
                        except PlanInfeasibleError:
                            low = _lowest_peak(prob)
                            if low < smallest[0]:
                                smallest = (low, prob)
                            continue
                        # Ties (equal work up to float rounding) go to the earlier candidate:
                        # the larger micro-batch, no in-place update, the shallower cut.
                        if best is None or ev.objective(obj) < best[0].objective(obj) * (1 - 1e-9):
                            best = (ev, prob, pol, mb, in_place, freeze)
            if best is not None:
                break  # the preferred BN mode (live for full training) wins whenever it fits
        if best is not None:
            break
    if best is None:
        raise _infeasible(budget, smallest, strat, allow_paging, dev)
    ev, prob, pol, mb, in_place, freeze = best
    return to_plan(ev, prob, name, dev.name, strat, obj, budget, batch_size, mb, opt, in_place,
                    deadline_s, freeze and has_bn, pol)


def _plan_for_c(policies, graph_at, dev, budget: int, batch: int, opt: Optimizer, obj: Objective,
                strat: Strategy, name: str, deadline_s, has_bn: bool, margin: float) -> Plan:
    """The most faithful trainable set whose compiled C program fits the budget.

    NOTE [ Planning for the C executor ]
        The C trainer (`edgetrain.codegen`) keeps every activation in one static arena, frozen
        weights in flash (batch norm folded into them, so BN is frozen), trainable tensors in
        SRAM, and applies SGD to each weight element as its gradient completes (no gradient
        buffers): none of PyTorch's recompute, paging or micro-batching applies, and its memory
        is not PyTorch's. So each candidate's peak is the code generator's own prediction from
        the lowered program (`predict_peak_sram_bytes`: arena + trainable tensors + labels +
        runtime reserve), which the compiled program's measured peak is tested against.
        Latency and energy keep the work-based model of `Problem.evaluate`.
    """
    import dataclasses

    from edgetrain.codegen import predict_peak_sram_bytes

    if strat not in (Strategy.AUTO, Strategy.EXACT, Strategy.KEEP_ALL):
        raise InvalidArgumentError(
            f"the C executor keeps every activation (no recompute or paging); strategy "
            f"{strat.value} does not apply: use auto, exact or keep-all")
    g = graph_at(batch, True)
    smallest = None
    for label, chosen in policies:
        ev, p = _c_candidate(g, chosen, label, dev, opt, obj, strat, name, budget, batch,
                             deadline_s, has_bn)
        peak = predict_peak_sram_bytes(p, g)
        flash = sum(q.nbytes for q in g.params)  # every weight's initial value is in flash
        if flash > dev.flash_bytes:
            raise PlanInfeasibleError(
                f"the fp32 C program's weights ({flash:,} bytes) exceed {dev.name}'s flash "
                f"({dev.flash_bytes:,} bytes); int8 weights take a quarter (precision int8)")
        if peak <= budget * (1 - margin) and (deadline_s is None or ev.latency_s <= deadline_s):
            return dataclasses.replace(
                p, executor=Executor.C,
                predicted=dataclasses.replace(p.predicted, peak_bytes=peak, timeline=()))
        smallest = peak if smallest is None else min(smallest, peak)
    raise PlanInfeasibleError(
        f"no plan fits {budget:,} bytes on {dev.name} with the C executor: the smallest compiled "
        f"peak is {smallest:,} bytes ({smallest / budget:.2f}x the budget); allow sparse update "
        "(--strategy auto), use a smaller batch size, a larger budget, or the PyTorch executor "
        "(recompute, paging)")


def _c_candidate(g: Graph, chosen, label: str, dev, opt: Optimizer, obj: Objective,
                 strat: Strategy, name: str, budget: int, batch: int, deadline_s, has_bn: bool
                 ) -> tuple[Evaluation, Plan]:
    """One trainable set as the C trainer runs it (keep every activation, update in place):
    its work-based evaluation and the plan; the caller replaces the peak with the C
    program's own."""
    trainable = chosen if isinstance(chosen, frozenset) else trainable_policy(g, chosen)
    prob = Problem(g, dev, 1 << 62, optimizer=opt, objective=obj, allow_paging=False,
                   trainable=trainable, in_place_update=True,
                   kernels=host_kernels(g, g.requires_grad_for(trainable)))
    ev = SOLVERS["keep-all"](prob)
    return ev, to_plan(ev, prob, name, dev.name, strat, obj, budget, batch, batch, opt, True,
                        deadline_s, has_bn, label)


def _plan_for_c_int8(policies, graph_at, model: torch.nn.Module, example_input: torch.Tensor,
                     dev, budget: int, batch: int, opt: Optimizer, obj: Objective,
                     strat: Strategy, name: str, deadline_s, has_bn: bool, margin: float) -> Plan:
    """The most faithful trainable set whose int8 C program fits the budget.

    NOTE [ Planning int8 for the C executor ]
        The int8 QAS trainer (`edgetrain compile --precision int8`) trains whole conv/linear
        layers of the quantised graph (BN folded into them), so a candidate trains the layers
        owning a parameter it names (`codegen.int8_trainable_ops`); bias-only candidates are
        skipped (the int8 trainer has no bias-only mode). Its SRAM is
        `codegen.int8_memory(..., line_buffer=True)`: the C trainer's own layout, with the
        frozen layers at the input streamed row by row (MCUNetV2's line buffering) on top of
        the in-place depthwise / pointwise kernels TTE uses too. Memory depends on shapes only,
        so the graph is quantised with the example input; `edgetrain compile` re-quantises with
        real data. Flash must hold the int8 weights, int32 biases and requantisation constants.
        Latency and energy are the fp32 work at the device's int8 rate.
    """
    import dataclasses

    from edgetrain.codegen import int8_trainable_ops
    from edgetrain.codegen import int8_memory
    from edgetrain.demo import target_for_device
    from edgetrain.quant import quantize

    if strat not in (Strategy.AUTO, Strategy.KEEP_ALL):
        raise InvalidArgumentError(
            f"int8 training changes the arithmetic; strategy {strat.value} does not allow it: "
            "use auto (or keep-all for a fixed trainable set)")
    was = model.training
    model.eval()
    try:
        qg = quantize(model, example_input, name=name)
    finally:
        model.train(was)
    flash = sum(op.weight.numel() + 12 * op.bias.numel() for op in qg.weighted_ops)
    if flash > dev.flash_bytes:
        raise PlanInfeasibleError(
            f"the int8 program's weights ({flash:,} bytes) exceed {dev.name}'s flash "
            f"({dev.flash_bytes:,} bytes); use a smaller model")
    target = target_for_device(dev.name) or "host"
    rate = dev.compute.fp32_flops_per_s / dev.compute.int8_ops_per_s
    g = graph_at(batch, True)
    smallest = None
    for label, chosen in policies:
        if label == "bias-only":
            continue
        ev, p = _c_candidate(g, chosen, label, dev, opt, obj, strat, name, budget, batch,
                             deadline_s, has_bn)
        ops = int8_trainable_ops(p, qg)
        if not ops:
            continue
        peak = int8_memory(qg, ops, batch_size=batch, target=target,
                           line_buffer=True).predicted_peak_sram_bytes
        latency = ev.latency_s * rate
        if peak <= budget * (1 - margin) and (deadline_s is None or latency <= deadline_s):
            return dataclasses.replace(
                p, executor=Executor.C, precision=Precision.INT8,
                predicted=Prediction(peak, 0, latency, latency * dev.compute.active_power_w),
                notes=(*p.notes, f"int8 layers: {', '.join(ops)}"))
        smallest = peak if smallest is None else min(smallest, peak)
    raise PlanInfeasibleError(
        f"no int8 plan fits {budget:,} bytes on {dev.name}: the smallest int8 program needs "
        f"{smallest or 0:,} bytes of SRAM; use a smaller batch size or a larger budget")


def _lowest_peak(p: Problem) -> int:
    dec = tuple(ActivationDecision.PAGE if ActivationDecision.PAGE in c else (
        ActivationDecision.RECOMPUTE if ActivationDecision.RECOMPUTE in c else
        ActivationDecision.KEEP) for c in p.choices)
    return min(p.evaluate(dec).peak_bytes,
               p.evaluate(tuple(ActivationDecision.RECOMPUTE if ActivationDecision.RECOMPUTE in c
                                else ActivationDecision.KEEP for c in p.choices)).peak_bytes)


def _infeasible(budget: int, smallest, strat: Strategy, allow_paging: bool, dev) -> PlanInfeasibleError:
    low, prob = smallest
    hints = []
    if prob is not None:
        sim = simulate_step(prob.graph, prob.optimizer, prob.kernels, prob.schedule(
            tuple(ActivationDecision.RECOMPUTE if ActivationDecision.RECOMPUTE in c else
                  ActivationDecision.KEEP for c in prob.choices)))
        b = sim.at_peak
        parts = {"weights": b.params_bytes, "gradients": b.grads_bytes,
                 "optimizer state": b.optimizer_bytes, "saved activations": b.saved_activation_bytes,
                 "input batch": b.batch_bytes, "gradients in flight and workspaces": b.other_bytes}
        top = max(parts, key=parts.get)
        hints.append(f"the peak is dominated by {top} ({parts[top]:,} bytes)")
    if strat is Strategy.EXACT:
        hints.append("allow sparse update (--strategy auto)")
    if not allow_paging:
        hints.append("allow paging to storage")
    hints.append("use a smaller batch size or a larger budget")
    return PlanInfeasibleError(
        f"no plan fits {budget:,} bytes on {dev.name}: the smallest achievable peak is "
        f"{low:,} bytes ({low / budget:.2f}x the budget); " + "; ".join(hints))


def to_plan(ev: Evaluation, prob: Problem, model: str, device: str, strat: Strategy,
             obj: Objective, budget: int, batch: int, mb: int, opt: Optimizer, in_place: bool,
             deadline_s, freeze_bn: bool, policy: str) -> Plan:
    g = prob.graph
    trainable = prob.trainable if prob.trainable is not None else frozenset(p.name for p in g.params)
    bias_owners = {p.module for p in g.params if p.name in trainable and p.name.endswith(".bias")}
    params = []
    for p in g.params:
        if p.name in trainable:
            d = ParamDecision.TRAINABLE
        elif p.module in bias_owners and p.name.endswith(".weight"):
            d = ParamDecision.BIAS_ONLY
        else:
            d = ParamDecision.FROZEN
        params.append(ParamPlan(p.name, d))
    stages = tuple(StagePlan(s.name, (s.name,), d) for s, d in zip(prob.stages, ev.decisions)
                   if s.wrappable)
    sim = simulate_step(g, prob.optimizer, prob.kernels, prob.schedule(ev.decisions))
    step = max(1, len(sim.timeline) // 200)
    timeline = tuple(TimelineSample(f"{t.phase.value}:{t.node}", t.live_bytes)
                     for t in sim.timeline[::step])
    return Plan(model=model, device=device, strategy=strat, objective=obj, budget_bytes=budget,
                batch_size=batch, micro_batch_size=mb, optimizer=opt.value,
                in_place_update=in_place, params=tuple(params), stages=stages,
                predicted=Prediction(ev.peak_bytes, ev.storage_bytes_written, ev.latency_s,
                                     ev.energy_j, timeline),
                deadline_s=deadline_s, freeze_batch_norm=freeze_bn,
                notes=(f"trainable policy: {policy}",))
