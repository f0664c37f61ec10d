"""The searches behind `plan()`: one over PyTorch plans (trainable set, batch-norm mode,
micro-batch, in-place update, stage cut, activation decisions) and one over the plans of an
executor that answers for its own memory (NOTE [ Asking an executor for its memory ])."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from edgetrain import validate
from edgetrain.capture import capture
from edgetrain.cost import (
    Device,
    KernelLibrary,
    Schedule,
    chunk_graph,
    chunkable_segments,
    in_place_activation_sites,
    lean_saves_anything,
    plain_activation_sites,
    simulate_step,
)
from edgetrain.errors import InvalidArgumentError, PlanInfeasibleError
from edgetrain.ir import Graph
from edgetrain.planner import (
    SOLVERS,
    ActivationDecision,
    CandidateUnsupportedError,
    Evaluation,
    Executor,
    ExecutorMemory,
    MemoryRequest,
    Objective,
    ParamDecision,
    ParamPlan,
    Plan,
    Precision,
    Prediction,
    Problem,
    StagePlan,
    Strategy,
    TimelineSample,
    valid_depths,
)
from edgetrain.prepare._profile import host_kernels
from edgetrain.prepare._request import PlanRequest

_BN = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)

Policies = list[tuple[str, "str | frozenset[str]"]]


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
            raise InvalidArgumentError(
                f"bad policy {policy!r}: expected last:K with K an integer"
            ) from None
        if k <= 0:
            raise InvalidArgumentError(f"bad policy {policy!r}: K must be positive")
        modules = list(dict.fromkeys(p.module for p in graph.params))
        keep = set(modules[-k:])
        return frozenset(p.name for p in graph.params if p.module in keep)
    wanted = [w.strip() for w in policy.split(",") if w.strip()]
    chosen = frozenset(n for n in names if any(n == w or n.startswith(w + ".") for w in wanted))
    if not chosen:
        raise InvalidArgumentError(
            f"policy {policy!r} selects no parameter; use all, bias-only, last:K or names such "
            f"as {', '.join(names[:3])}"
        )
    return chosen


@dataclass
class Search:
    """One planning run: the request, its device and budget, and the captures made so far."""

    model: torch.nn.Module
    example_input: torch.Tensor
    request: PlanRequest
    device: Device
    budget_bytes: int
    has_bn: bool
    _graphs: dict[tuple[int, bool], Graph] = field(default_factory=dict)
    # bytes a measured plan needed beyond its simulation, held back from the solvers' budget
    # on a re-plan (NOTE [ Plans are checked against the allocator ])
    held_back_bytes: int = 0

    def __post_init__(self) -> None:
        # Every plan holds the whole input batch (cost: the batch is allocated at the micro-batch
        # times the accumulation steps), so a batch whose inputs alone exceed the budget never
        # fits: refuse it before capturing (and allocating) anything. The CLI refuses it as an
        # argument (`validate.batch_fits`) before it gets here.
        x = self.example_input
        sample = max(1, x.numel() * x.element_size())
        need, budget = self.request.batch_size * sample, self.budget_bytes
        if need > budget:
            most = budget // sample
            raise PlanInfeasibleError(
                f"no plan fits {budget:,} bytes on {self.device.name}: the smallest achievable "
                f"peak is more than the input batch alone, {need:,} bytes ({need / budget:.3g}x "
                f"the budget, {sample:,} bytes per sample); "
                + (
                    f"use a batch size of at most {most:,} or a larger budget"
                    if most
                    else "even one sample does not fit: use a larger budget or device"
                )
            )
        _check_policy_names(self.request.policy, [n for n, _ in self.model.named_parameters()])

    def graph_at(self, batch: int, freeze_bn: bool) -> Graph:
        """The capture at `batch` samples, batch norm frozen (running statistics) or live."""
        if (batch, freeze_bn) not in self._graphs:
            was = [(m, m.training) for m in self.model.modules()]
            if freeze_bn:
                for m in self.model.modules():
                    if isinstance(m, _BN):
                        m.eval()
            try:
                self._graphs[batch, freeze_bn] = capture(
                    self.model,
                    self.example_input,
                    batch_size=batch,
                    name=self.request.name,
                    loss=self.request.loss,
                    target_example=self.request.target_example,
                )
            finally:
                for m, t in was:
                    m.train(t)
        return self._graphs[batch, freeze_bn]

    def trainable(self, graph: Graph, chosen: "str | frozenset[str]") -> frozenset[str]:
        return chosen if isinstance(chosen, frozenset) else trainable_policy(graph, chosen)


def _check_policy_names(policy: str | None, names: list[str]) -> None:
    """A policy that selects no parameter of the model is the caller's error, found before any
    capture (and not reported per executor as if it did not fit). Same rule as
    `trainable_policy`."""
    if policy is None or policy in ("all", "full", "fisher") or policy.startswith("last:"):
        return
    if policy == "bias-only":
        if not any(n.endswith(".bias") for n in names):
            raise InvalidArgumentError(
                "policy 'bias-only' selects no parameter: the model has no biases; use all, "
                "last:K or parameter names"
            )
        return
    wanted = [w.strip() for w in policy.split(",") if w.strip()]
    absent = [w for w in wanted if not any(n == w or n.startswith(w + ".") for n in names)]
    if absent:
        raise InvalidArgumentError(
            f"policy {policy!r}: {', '.join(repr(w) for w in absent[:3])} names no parameter or "
            f"module of the model; use all, bias-only, last:K or names such as "
            f"{', '.join(names[:3])}"
        )


def _divisors(n: int) -> list[int]:
    """The divisors of `n`, largest first (O(sqrt n))."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)}, reverse=True)


@dataclass
class _Best:
    """The cheapest feasible PyTorch candidate so far, and the smallest infeasible peak."""

    found: tuple[Evaluation, Problem, str, bool] | None = None
    smallest: tuple[int, Problem | None] = (1 << 62, None)
    fastest_s: float | None = None  # with a deadline: the quickest step that fits the memory

    def offer(self, ev: Evaluation, prob: Problem, policy: str, freeze: bool) -> None:
        obj = prob.objective
        # Ties (equal work up to float rounding) go to the earlier candidate: the larger
        # micro-batch, no in-place update, the shallower cut.
        if self.found is None or ev.objective(obj) < self.found[0].objective(obj) * (1 - 1e-9):
            self.found = (ev, prob, policy, freeze)

    def refuse(self, prob: Problem, solver) -> None:
        low = lowest_peak(prob)
        if low < self.smallest[0]:
            self.smallest = (low, prob)
        if prob.deadline_s is not None and low <= prob.budget_bytes:
            # NOTE [ A missed deadline is reported as one ]
            #     Memory allows a schedule, so the deadline refused it: solve again without the
            #     deadline, for time, to say how fast a step that fits can be.
            try:
                ev = solver(dataclasses.replace(prob, deadline_s=None, objective=Objective.TIME))
            except PlanInfeasibleError:
                return
            if self.fastest_s is None or ev.latency_s < self.fastest_s:
                self.fastest_s = ev.latency_s


def plan_for_pytorch(search: Search, policies: Policies) -> Plan:
    """The best PyTorch (Trainer) plan: the most faithful trainable set that fits, and for it
    the BN mode, micro-batch, in-place update and activation decisions of least cost."""
    req = search.request
    best = _Best()
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
        modes = _bn_modes(search)
        if sparse and req.freeze_batch_norm is None:
            modes = sorted(modes, reverse=True)
        for freeze in modes:
            for prob in _pytorch_problems(search, chosen, freeze):
                try:
                    best.offer(_solver(req)(prob), prob, pol, freeze)
                except PlanInfeasibleError:
                    best.refuse(prob, _solver(req))
            if best.found is not None:
                break  # the preferred BN mode (live for full training) wins whenever it fits
        if best.found is not None:
            break
    if best.found is None:
        if best.fastest_s is not None:
            raise missed_deadline(search, best.fastest_s, "the PyTorch executor in fp32")
        raise infeasible(search, *best.smallest)
    ev, prob, pol, freeze = best.found
    return to_plan(
        ev,
        prob,
        req,
        budget_bytes=search.budget_bytes,
        freeze_batch_norm=freeze and search.has_bn,
        policy=pol,
    )


def _solver(req: PlanRequest):
    return SOLVERS[req.strategy.value] if req.is_baseline else SOLVERS["dp"]


def _bn_modes(search: Search) -> list[bool]:
    """Batch-norm modes to try. Micro-batching changes batch statistics, so with batch norm it
    needs BN frozen (running statistics, which also slows learning): BN live first. Freezing
    changes the step's mathematics, so only `auto` (or the caller) may choose it."""
    req = search.request
    if req.freeze_batch_norm is not None:
        return [req.freeze_batch_norm]
    if search.has_bn and req.strategy is Strategy.AUTO:  # exact changes no mathematics
        return [False, True]
    return [False]


def _pytorch_problems(search: Search, chosen, freeze: bool):
    """Every (micro-batch, in-place update, stage cut) problem for one trainable set."""
    req = search.request
    batch = req.batch_size
    if req.is_baseline:
        micro_sizes, in_place_opts = [batch], [False]
    else:
        micro_sizes = _divisors(batch) if (not search.has_bn or freeze) else [batch]
        in_place_opts = [False, True]
    for mb in micro_sizes:
        g = search.graph_at(mb, freeze)
        trainable = search.trainable(g, chosen)
        choice = _lean_choice(g, trainable, req.optimizer, batch // mb)
        # NOTE [ Stage granularity ]
        #     Where a stage boundary falls decides what recomputation and paging can do: one
        #     coarse stage (MobileNetV2's whole `features`) can drop every activation inside it
        #     but can only be recomputed or paged whole; per-block stages trade memory for time
        #     block by block. The DP and the baselines' stage MILP see one cut, so the search
        #     tries every valid module depth (`valid_depths`) and keeps the cheapest plan: on
        #     rpi4 at batch 8 and half the keep-all budget, mbv2-w0.35's modelled step goes from
        #     5.56 s (page `features` whole) to 0.13 s (per-block decisions). Baselines keep the
        #     default cut (`chain_stages`) so they stay the published heuristics.
        depths = [None] if req.is_baseline else list(valid_depths(g)) or [None]
        for in_place in in_place_opts:
            if in_place and mb != batch:
                continue  # updating inside backward would change accumulation's maths
            for depth in depths:
                yield Problem(
                    g,
                    search.device,
                    int((search.budget_bytes - search.held_back_bytes) * (1 - req.safety_margin)),
                    optimizer=req.optimizer,
                    objective=req.objective,
                    deadline_s=req.deadline_s,
                    allow_paging=req.allow_paging,
                    trainable=trainable,
                    in_place_update=in_place,
                    accumulation_steps=batch // mb,
                    kernels=choice.kernels,
                    stage_depth=depth,
                    weight_decay=req.weight_decay,
                    lean_backward=choice.lean,
                    plain_activations=choice.plain,
                    in_place_activations=choice.in_place,
                    # each chunk accumulates its own gradient: no update inside backward
                    chunked_segments=() if in_place else choice.chunked,
                )


@dataclass(frozen=True)
class LeanChoice:
    """How a PyTorch plan runs one trainable set's backward (NOTE [ Lean backward ]): lean or
    plain, its plain and in-place activation sites, its chunked segments (NOTE [ Sample-
    chunked frozen segments ]) and the kernel library profiled for them."""

    lean: bool
    plain: frozenset[str]
    in_place: frozenset[str]
    chunked: tuple[tuple[str, int], ...]
    kernels: KernelLibrary


def _lean_choice(g: Graph, trainable: frozenset[str], optimizer, accumulation: int) -> LeanChoice:
    """Lean where `lean_backward_for` says it saves something and, keeping every activation,
    it predicts a lower peak than plain PyTorch (its mask transients can cost more than it
    saves where the peak is the forward pass); then the chunked segments that lower it more."""
    rg = g.requires_grad_for(trainable)
    none: frozenset[str] = frozenset()
    if not lean_backward_for(g, trainable):
        return LeanChoice(False, none, none, (), host_kernels(g, rg, False))
    plain_sites = plain_activation_sites(g, trainable)
    in_place = in_place_activation_sites(g, trainable, plain_sites)
    peaks = {}
    for lean in (True, False):
        kernels = host_kernels(g, rg, lean)
        sched = Schedule(
            trainable=trainable,
            accumulation_steps=accumulation,
            lean_backward=lean,
            plain_activations=plain_sites if lean else none,
            in_place_activations=in_place if lean else none,
        )
        peaks[lean] = (simulate_step(g, optimizer, kernels, sched).peak_bytes, kernels, sched)
    if peaks[True][0] >= peaks[False][0]:
        return LeanChoice(False, none, none, (), peaks[False][1])
    peak, kernels, sched = peaks[True]
    chunked, kernels = _chunk_choice(g, optimizer, sched, peak, kernels)
    return LeanChoice(True, plain_sites, in_place, chunked, kernels)


def _chunk_choice(g: Graph, optimizer, sched: Schedule, peak: int, kernels: KernelLibrary):
    """The chunkable segments (`cost.chunkable_segments`) worth running in chunks: all of
    them, less each whose removal does not raise the simulated peak (each chunked segment
    slows the step), kept only where they lower the peak; and the kernel library with the
    chunks' kernels profiled."""
    candidates = chunkable_segments(g, sched.trainable or frozenset())
    if not candidates:
        return (), kernels
    unrolled, _ = chunk_graph(g, candidates)
    both = host_kernels(unrolled, unrolled.requires_grad_for(sched.trainable), True)
    kernels = dataclasses.replace(
        kernels, measured=tuple(dict.fromkeys(kernels.measured + both.measured))
    )

    def peak_with(chunks) -> int:
        s = dataclasses.replace(sched, chunked_segments=tuple(chunks))
        return simulate_step(g, optimizer, kernels, s).peak_bytes

    chosen = list(candidates)
    best = peak_with(chosen)
    for c in candidates:
        rest = [x for x in chosen if x != c]
        p = peak_with(rest)
        if p <= best:
            chosen, best = rest, p
    return (tuple(chosen), kernels) if best < peak else ((), kernels)


def lean_backward_for(graph: Graph, trainable: frozenset[str]) -> bool:
    """Whether a PyTorch plan runs the lean backward (NOTE [ Lean backward ]): when some
    parameter is frozen and some node on the gradient path saves less under it
    (`cost.lean_saves_anything`). Full training keeps plain PyTorch; so does a `last:K` whose
    frozen prefix has no gradient and whose suffix saves what the lean rules would drop,
    which then steps without the lean mode's per-op dispatch."""
    frozen = any(p.name not in trainable for p in graph.params)
    return frozen and lean_saves_anything(graph, trainable)


def plan_for_executor(search: Search, policies: Policies, memory: ExecutorMemory) -> Plan:
    """The most faithful trainable set whose program, on an executor that keeps its own
    layout, fits the budget.

    NOTE [ Planning for the C executor ]
        The C trainer (`edgetrain.codegen`) keeps every activation in one static arena, frozen
        weights in flash (batch norm folded into them, so BN is frozen), trainable tensors in
        SRAM, and applies SGD to each weight element as its gradient completes (no gradient
        buffers): none of PyTorch's recompute, paging or micro-batching applies, and its memory
        is not PyTorch's. So each candidate keeps every activation and updates in place, and
        its peak is the executor's own prediction (`ProgramMemory.candidate`), which the
        compiled program's measured peak is tested against. Latency and energy keep the
        work-based model of `Problem.evaluate`, at the device's int8 rate for int8 programs.
    """
    req, dev = search.request, search.device
    what = f"the {_executor_name(memory.executor)} executor in {memory.precision.value}"
    allowed = (
        (Strategy.AUTO, Strategy.KEEP_ALL)
        if memory.precision is Precision.INT8
        else (Strategy.AUTO, Strategy.EXACT, Strategy.KEEP_ALL)
    )
    if req.strategy not in allowed:
        why = (
            "changes the arithmetic; strategy {} does not allow it"
            if memory.precision is Precision.INT8
            else "keeps every activation (no recompute or paging); strategy {} does not apply"
        )
        raise InvalidArgumentError(
            f"{what} {why.format(req.strategy.value)}: use {', '.join(s.value for s in allowed)}"
        )
    g = search.graph_at(req.batch_size, True)
    program = memory.for_model(
        MemoryRequest(search.model, search.example_input, g, dev, req.batch_size)
    )
    rate = (
        dev.compute.fp32_flops_per_s / dev.compute.int8_ops_per_s
        if memory.precision is Precision.INT8
        else 1.0
    )
    smallest = fastest = None
    for label, chosen in policies:
        ev, p = _keep_all_candidate(search, g, chosen, label, memory.updates_in_place)
        try:
            answer = program.candidate(p)
        except CandidateUnsupportedError:
            continue
        latency = ev.latency_s * rate
        energy = (
            latency * dev.compute.active_power_w
            if memory.precision is Precision.INT8
            else ev.energy_j
        )
        peak = answer.peak_sram_bytes
        fits = peak <= search.budget_bytes * (1 - req.safety_margin)
        if fits and (req.deadline_s is None or latency <= req.deadline_s):
            return with_executor(
                p, memory.executor, memory.precision, peak, latency, energy, answer.notes
            )
        if fits:  # NOTE [ A missed deadline is reported as one ]
            fastest = latency if fastest is None else min(fastest, latency)
        smallest = peak if smallest is None else min(smallest, peak)
    if fastest is not None:
        raise missed_deadline(search, fastest, what)
    raise PlanInfeasibleError(
        f"no plan fits {search.budget_bytes:,} bytes on {dev.name} with {what}: the smallest "
        f"program "
        f"needs {smallest or 0:,} bytes of SRAM"
        + (f" ({smallest / search.budget_bytes:.2f}x the budget)" if smallest else "")
        + "; allow sparse update (--strategy auto), use a smaller batch size, a larger budget, "
        "or the PyTorch executor (recompute, paging)"
    )


def _executor_name(executor: Executor) -> str:
    return "C" if executor is Executor.C else executor.value


def _keep_all_candidate(
    search: Search, g: Graph, chosen, label: str, in_place: bool
) -> tuple[Evaluation, Plan]:
    """One trainable set as an executor with its own layout runs it (keep every activation;
    update in place where the executor does): its work-based evaluation and the plan; the
    caller replaces the peak with the executor's own."""
    req = search.request
    trainable = search.trainable(g, chosen)
    prob = Problem(
        g,
        search.device,
        1 << 62,
        optimizer=req.optimizer,
        objective=req.objective,
        allow_paging=False,
        trainable=trainable,
        in_place_update=in_place,
        kernels=host_kernels(g, g.requires_grad_for(trainable)),
    )
    ev = SOLVERS["keep-all"](prob)
    return ev, to_plan(
        ev,
        prob,
        req,
        budget_bytes=search.budget_bytes,
        freeze_batch_norm=search.has_bn,
        policy=label,
    )


def lowest_peak(p: Problem) -> int:
    """The least peak any decision gives: everything paged (or recomputed) where allowed."""
    dec = tuple(
        ActivationDecision.PAGE
        if ActivationDecision.PAGE in c
        else (
            ActivationDecision.RECOMPUTE
            if ActivationDecision.RECOMPUTE in c
            else ActivationDecision.KEEP
        )
        for c in p.choices
    )
    return min(p.evaluate(dec).peak_bytes, p.evaluate(_recompute_all(p)).peak_bytes)


def _recompute_all(p: Problem) -> tuple[ActivationDecision, ...]:
    return tuple(
        ActivationDecision.RECOMPUTE
        if ActivationDecision.RECOMPUTE in c
        else ActivationDecision.KEEP
        for c in p.choices
    )


def infeasible(search: Search, low: int, prob: Problem | None) -> PlanInfeasibleError:
    """Nothing fits: the smallest achievable peak, what dominates it, and what to allow."""
    req, budget = search.request, search.budget_bytes
    hints = []
    if prob is not None:
        sim = simulate_step(
            prob.graph, prob.optimizer, prob.kernels, prob.schedule(_recompute_all(prob))
        )
        b = sim.at_peak
        parts = {
            "weights": b.params_bytes,
            "gradients": b.grads_bytes,
            "optimizer state": b.optimizer_bytes,
            "saved activations": b.saved_activation_bytes,
            "input batch": b.batch_bytes,
            "gradients in flight and workspaces": b.other_bytes,
        }
        top = max(parts, key=parts.get)
        hints.append(f"the peak is dominated by {top} ({parts[top]:,} bytes)")
    if search.held_back_bytes:
        low += search.held_back_bytes
        hints.append(
            f"this includes {search.held_back_bytes:,} bytes that a plan measured on this host "
            "beyond its simulation (values the model's Python code holds)"
        )
    if req.strategy is Strategy.EXACT:
        hints.append("allow sparse update (--strategy auto)")
    if not req.allow_paging:
        hints.append("allow paging to storage")
    hints.append("use a smaller batch size or a larger budget")
    if low <= budget:
        hints.insert(0, f"plans keep a {req.safety_margin:.0%} safety margin under the budget")
    return PlanInfeasibleError(
        f"no plan fits {budget:,} bytes on {search.device.name}: the smallest achievable peak "
        f"is {low:,} bytes ({low / budget:.2f}x the budget); " + "; ".join(hints)
    )


def missed_deadline(search: Search, fastest_s: float, what: str) -> PlanInfeasibleError:
    """Memory allows a plan but none is fast enough: the deadline, the fastest step, the fix."""
    req = search.request
    return PlanInfeasibleError(
        f"no plan meets the deadline of {req.deadline_s:.4g} s per step on "
        f"{search.device.name} with {what}: the fastest plan that fits "
        f"{search.budget_bytes:,} bytes takes {fastest_s:.4g} s "
        f"({fastest_s / req.deadline_s:.3g}x the deadline); allow at least --deadline-s "
        f"{fastest_s:.4g}, or use a smaller batch size"
        + (" or sparse update (--strategy auto)" if req.strategy is Strategy.EXACT else "")
    )


def _portable_spec(spec: str) -> str:
    """A model file's spec with its absolute path, so the plan finds it from any directory
    (NOTE [ Plans are data ]); a built-in name, or a file that does not exist, as given."""
    path = validate.model_spec_file(spec)
    try:
        if path is None or not path.is_file():
            return spec
        factory = spec.rpartition(":")[2] if spec.rpartition(":")[0].endswith(".py") else ""
        return f"{path.resolve()}:{factory}" if factory else str(path.resolve())
    except (OSError, ValueError):
        return spec


def _model_sha256(spec: str) -> str | None:
    """The SHA-256 of the model file a spec names, or None (a built-in model, or a name that
    is not a readable file). NOTE [ Plans are data ]."""
    path = validate.model_spec_file(spec)
    try:
        return validate.file_sha256(path) if path is not None and path.is_file() else None
    except (OSError, ValueError):
        return None


def to_plan(
    ev: Evaluation,
    prob: Problem,
    request: PlanRequest,
    *,
    budget_bytes: int,
    freeze_batch_norm: bool,
    policy: str,
) -> Plan:
    """The `Plan` of one evaluated candidate: `prob`'s trainable set, micro-batch and in-place
    choice, `ev`'s activation decisions and prediction, `request`'s name, strategy and batch."""
    g = prob.graph
    trainable = (
        prob.trainable if prob.trainable is not None else frozenset(p.name for p in g.params)
    )
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
    stages = tuple(
        StagePlan(s.name, (s.name,), d) for s, d in zip(prob.stages, ev.decisions) if s.wrappable
    )
    sim = simulate_step(g, prob.optimizer, prob.kernels, prob.schedule(ev.decisions))
    step = max(1, len(sim.timeline) // 200)
    timeline = tuple(
        TimelineSample(f"{t.phase.value}:{t.node}", t.live_bytes) for t in sim.timeline[::step]
    )
    batch = request.batch_size
    return Plan(
        model=_portable_spec(request.name),
        device=prob.device.name,
        strategy=request.strategy,
        objective=prob.objective,
        budget_bytes=budget_bytes,
        batch_size=batch,
        micro_batch_size=batch // prob.accumulation_steps,
        optimizer=prob.optimizer.value,
        in_place_update=prob.in_place_update,
        params=tuple(params),
        stages=stages,
        predicted=Prediction(
            ev.peak_bytes, ev.storage_bytes_written, ev.latency_s, ev.energy_j, timeline
        ),
        deadline_s=request.deadline_s,
        freeze_batch_norm=freeze_batch_norm,
        notes=(f"trainable policy: {policy}",),
        budget_forced=budget_bytes > prob.device.ram_bytes,
        model_sha256=_model_sha256(request.name),
        loss=request.loss_label,
        weight_decay=request.weight_decay,
        schedule=request.schedule,
        input_shape=tuple(g.tensor(g.inputs[0]).shape[1:]),
        input_dtype=g.tensor(g.inputs[0]).dtype,
        lean_backward=prob.lean_backward,
        plain_activations=tuple(sorted(prob.plain_activations)),
        in_place_activations=tuple(sorted(prob.in_place_activations)),
        chunked_modules=prob.chunked_segments,
    )


def with_executor(
    p: Plan,
    executor: Executor,
    precision: Precision,
    peak_bytes: int,
    latency_s: float,
    energy_j: float,
    notes: tuple[str, ...],
) -> Plan:
    """`p` as run by another executor: its peak and modelled step replace the prediction."""
    return dataclasses.replace(
        p,
        executor=executor,
        precision=precision,
        predicted=Prediction(peak_bytes, 0, latency_s, energy_j),
        notes=(*p.notes, *notes),
    )
