"""edgetrain: on-device training for microcontrollers, embedded boards and phones.

The two-stage workflow: `capture` / `profile` / `plan` (preparation), then `Trainer` (training).
Names are resolved lazily (PEP 562) so that the torch-free layers (`edgetrain.ir`,
`edgetrain.cost`, `edgetrain.planner`) can be imported without importing torch.
"""

from importlib import import_module

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


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgetrain' has no attribute {name!r}")
