"""The preparation stage: profile a model on a device, choose what trains, and plan the step.

    from edgetrain.prepare import PlanRequest, plan, profile
    p = profile(model, example, device="nrf52840", batch_size=8, measure=True)
    q = plan(model, example, device="nrf52840", batch_size=8)

`profile` is capture plus the cost model (and one measured step on request); `plan` searches
trainable sets, micro-batches, in-place updates and stage cuts with the planner's solvers
(`edgetrain.planner`) and asks executors with a layout of their own for their memory
(NOTE [ Asking an executor for its memory ]); `score_layers` / `fisher_candidates` rank layers
for a sparse update from a few local samples.
"""

from edgetrain.prepare._planning import executor_memory, plan, trainer_plan
from edgetrain.prepare._profile import Profile, host_kernels, profile, torch_optimizer
from edgetrain.prepare._request import SAFETY_MARGIN, PlanRequest
from edgetrain.prepare._search import to_plan, trainable_policy
from edgetrain.prepare._sparse import fisher_candidates, fisher_information, score_layers

__all__ = [
    "SAFETY_MARGIN",
    "PlanRequest",
    "Profile",
    "executor_memory",
    "fisher_candidates",
    "fisher_information",
    "host_kernels",
    "plan",
    "profile",
    "score_layers",
    "to_plan",
    "torch_optimizer",
    "trainable_policy",
    "trainer_plan",
]
