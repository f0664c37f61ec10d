"""edgetrain: on-device training for microcontrollers, embedded boards and phones.

The two-stage workflow: `capture` / `profile` / `plan` (preparation), then `Trainer` (training).
Names are resolved lazily (PEP 562) so that the torch-free layers (`edgetrain.ir`,
`edgetrain.cost`, `edgetrain.planner`) can be imported without importing torch.
"""

from edgetrain.lazy import lazy_exports

_EXPORTS = {
    "capture": "edgetrain.capture",
    "profile": "edgetrain.prepare",
    "Profile": "edgetrain.prepare",
    "plan": "edgetrain.prepare",
    "Plan": "edgetrain.planner",
    "PlanInfeasibleError": "edgetrain.errors",
    "Trainer": "edgetrain.runtime",
    "Device": "edgetrain.cost",
    "load_device": "edgetrain.cost",
    "EdgetrainError": "edgetrain.errors",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
