"""Stages: the chain a captured graph is cut into for activation decisions.

A stage is a module (a layer or a residual block) whose forward runs once, as one contiguous
run of nodes; the runtime wraps exactly that module (checkpoint or paging hooks), so a stage
decision always maps onto something PyTorch can execute. Nodes of the top-level forward that
belong to no module (a functional `flatten`, the loss) form fixed stages that always keep.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgetrain.ir import Graph, TensorRole


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    start: int  # first node index
    stop: int  # one past the last node index
    wrappable: bool  # a module the runtime can wrap


def _key(module: str, depth: int) -> str:
    return ".".join(module.split(".")[:depth]) if module else ""


def _group(graph: Graph, depth: int) -> list[Stage] | None:
    stages: list[Stage] = []
    seen: set[str] = set()
    for i, n in enumerate(graph.nodes):
        k = _key(n.module, depth)
        if stages and stages[-1].name == k:
            s = stages[-1]
            stages[-1] = Stage(k, s.start, i + 1, s.wrappable)
            continue
        if k and k in seen:
            return None  # a module whose forward runs twice, or interleaves with another
        seen.add(k)
        stages.append(Stage(k, i, i + 1, bool(k)))
    # Wrapping a module also wraps its sub-modules: only leaves of the stage tree are wrappable
    # (a block's own `add` node, whose sub-modules are stages themselves, stays fixed).
    names = [s.name for s in stages]
    return [
        Stage(
            s.name,
            s.start,
            s.stop,
            s.wrappable and not any(o.startswith(s.name + ".") for o in names),
        )
        for s in stages
    ]


STAGE_DEPTHS = (1, 2, 3)


def stages_at(graph: Graph, depth: int, max_stages: int = 64) -> tuple[Stage, ...] | None:
    """The graph cut at module depth `depth`, or None where that cut is not a valid chain
    (a module whose nodes are not contiguous, or more than `max_stages` wrappable stages)."""
    st = _group(graph, depth)
    if st is None or sum(s.wrappable for s in st) > max_stages:
        return None
    return tuple(st)


def valid_depths(graph: Graph, max_stages: int = 64) -> tuple[int, ...]:
    """Module depths at which the graph cuts into a valid chain with at least one wrappable
    stage, distinct cuts only (a shallow model may cut the same way at depths 2 and 3)."""
    out, seen = [], set()
    for d in STAGE_DEPTHS:
        st = stages_at(graph, d, max_stages)
        if st is None or not any(s.wrappable for s in st):
            continue
        key = tuple((s.start, s.stop, s.wrappable) for s in st)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return tuple(out)


def chain_stages(graph: Graph, max_stages: int = 64) -> tuple[Stage, ...]:
    """Cut the graph at the module depth (1 to 3) where recomputation can drop the most.

    A stage can only drop the tensors it both produces and saves (its input is saved by the
    checkpoint anyway), so one-operator stages drop nothing; blocks drop the most. Among the
    valid depths (every stage contiguous, at most `max_stages` wrappable stages) we take the
    one with the most droppable bytes, then the one with more stages.
    """
    rg = graph.requires_grad
    best: list[Stage] = [Stage("", 0, len(graph.nodes), False)]
    best_key = (-1, 0)
    for depth in STAGE_DEPTHS:
        st = stages_at(graph, depth, max_stages)
        if st is None:
            continue
        droppable = sum(stage_saved_bytes(graph, s, rg) for s in st if s.wrappable)
        key = (droppable, sum(s.wrappable for s in st))
        if key > best_key:
            best, best_key = st, key
    return tuple(best)


def stage_saved_bytes(graph: Graph, stage: Stage, requires_grad: frozenset[str]) -> int:
    """Bytes of activation storages produced inside `stage` and saved by its own nodes."""
    produced = set()
    for n in graph.nodes[stage.start : stage.stop]:
        for name in (n.output, *n.aux_outputs):
            produced.add(graph.tensor(name).storage)
    out: dict[str, int] = {}
    for n in graph.nodes[stage.start : stage.stop]:
        if n.output not in requires_grad:
            continue
        for name in n.saved:
            t = graph.tensor(name)
            if t.storage in produced and t.role not in (TensorRole.PARAMETER, TensorRole.BUFFER):
                out[t.storage] = t.storage_bytes
    return sum(out.values())
