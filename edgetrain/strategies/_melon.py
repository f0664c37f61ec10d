"""`melon` — Melon (Wang, Cai, Gao, Xu, Liu, Liu; MobiSys 2022): "Melon: Breaking the Memory
Wall for Resource-Efficient On-Device Machine Learning".

Reproduced: the step's memory is cut by recomputation plus micro-batching (`edgetrain.plan(
strategy="auto", policy="all", allow_paging=False)` chooses per-stage recompute and the micro-batch size,
with batch norm frozen whenever micro-batching needs it), and tensors live in a memory pool laid
out with their lifetimes known in advance: one step of the plan is profiled (the allocator's
events, paired into blocks) and the pool is laid out largest-first at the lowest offset free
over each block's lifetime (`_arena.lifetime_aware_layout`). The pool's fragmentation is
counted in the peak: predicted peak = bytes live before the step (weights, buffers, optimizer
state, batch) + the pool's size. If that exceeds the budget, the planning budget is lowered by
the overshoot and the plan re-made. `replan(prepared, budget_bytes)` adapts to a new budget the
same way.

Not reproduced: Melon's memory-aware selection among recompute candidates by its own cost
heuristic (our planner's exact DP over stages does the choosing) and its on-phone runtime; the
pool here is a layout over the profiled trace (its size is what a static arena would need),
while PyTorch's own allocator runs the step (the measured peak is that allocator's).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch

from edgetrain import validate
from edgetrain.cost import load_device
from edgetrain.errors import InvalidArgumentError, PlanInfeasibleError
from edgetrain.prepare import trainer_plan as plan
from edgetrain.runtime import Trainer
from edgetrain.strategies._arena import first_fit_layout, lifetime_aware_layout, record_blocks
from edgetrain.strategies._common import (
    Prepared,
    System,
    SystemName,
    state_bytes,
    train_planned,
    trainer_optimizers,
)

MAX_REPLANS = 5


def profile_pool(model: torch.nn.Module, example_input: torch.Tensor, the_plan) -> dict[str, int]:
    """Profile one step of `the_plan` on a copy of `model` (after one warm-up step) and lay its
    blocks out in a lifetime-aware pool; bytes of the pool and of what lives outside it."""
    m = copy.deepcopy(model)
    b = the_plan.batch_size
    x = example_input.expand(b, *example_input.shape[1:]).clone()
    y = torch.zeros(b, dtype=torch.long)
    with Trainer(m, the_plan, lr=1e-3) as t:
        t.step(x, y)
        outside = state_bytes(m, trainer_optimizers(t), (x, y))
        blocks = record_blocks(lambda: t.step(x, y))
    pool = lifetime_aware_layout(blocks)
    naive = first_fit_layout(blocks)
    return {
        "outside_bytes": outside,
        "pool_bytes": pool.arena_bytes,
        "max_live_bytes": pool.max_live_bytes,
        "fragmentation_bytes": pool.fragmentation_bytes,
        "first_fit_pool_bytes": naive.arena_bytes,
        "blocks": len(blocks),
    }


def prepare(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    *,
    device="nrf52840",
    budget_bytes: int | None = None,
    batch_size: int = 1,
    name: str = "model",
) -> Prepared:
    dev = load_device(device)
    budget = validate.budget_bytes(budget_bytes if budget_bytes is not None else dev.ram_bytes)
    target = budget
    for _ in range(MAX_REPLANS):
        p = plan(
            model,
            example_input,
            device=dev,
            budget_bytes=target,
            batch_size=batch_size,
            # every parameter trains; batch norm may freeze so that micro-batching is allowed
            # (`exact` keeps it live and so never micro-batches a model with batch norm)
            strategy="auto",
            policy="all",
            allow_paging=False,
            name=name,
        )
        pool = profile_pool(model, example_input, p)
        peak = pool["outside_bytes"] + pool["pool_bytes"]
        if peak <= budget:
            p = replace(p, budget_bytes=budget)
            return Prepared(
                SystemName.MELON,
                model,
                example_input,
                p,
                dev,
                peak,
                (
                    f"pool {pool['pool_bytes']:,} B (fragmentation "
                    f"{pool['fragmentation_bytes']:,} B; time-ordered first fit would "
                    f"need {pool['first_fit_pool_bytes']:,} B); "
                    f"{p.accumulation_steps} x {p.micro_batch_size} micro-batches",
                ),
                tuple(sorted(pool.items())),
            )
        target -= max(peak - budget, budget // 100)
        if target <= 0:
            break
    raise PlanInfeasibleError(
        f"melon: no plan whose memory pool fits {budget:,} bytes on {dev.name}: the last plan "
        f"needs {peak:,} bytes (pool {pool['pool_bytes']:,} + {pool['outside_bytes']:,} outside "
        f"it); use a smaller batch size or a larger budget"
    )


def replan(prepared: Prepared, budget_bytes: int) -> Prepared:
    """Adapt to a new memory budget (Melon re-plans when the budget changes)."""
    if prepared.system is not SystemName.MELON:
        raise InvalidArgumentError(f"melon.replan needs a melon plan, got {prepared.system.value}")
    return prepare(
        prepared.model,
        prepared.example_input,
        device=prepared.device,
        budget_bytes=budget_bytes,
        batch_size=prepared.batch_size,
        name=prepared.plan.model,
    )


def pool_stats(prepared: Prepared) -> dict[str, int]:
    return dict(prepared.state)


SYSTEM = System(SystemName.MELON, prepare, train_planned)
