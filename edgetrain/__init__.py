"""edgetrain: on-device training for microcontrollers, embedded boards and phones.

The two-stage workflow: `capture` / `profile` / `plan` (preparation), then `Trainer` (training).
Every public error is importable from here (`edgetrain.PlanInfeasibleError`, ...); they all
live in `edgetrain.errors`. Other names are resolved lazily (PEP 562) so that the torch-free
layers (`edgetrain.ir`, `edgetrain.cost`, `edgetrain.planner`) import without torch.
"""

from edgetrain import errors as _errors
from edgetrain.lazy import lazy_exports

_ERRORS = {
    name: "edgetrain.errors"
    for name, value in vars(_errors).items()
    if isinstance(value, type) and issubclass(value, Exception)
}

_EXPORTS = {
    "capture": "edgetrain.capture",
    "profile": "edgetrain.prepare",
    "Profile": "edgetrain.prepare",
    "plan": "edgetrain.prepare",
    "PlanRequest": "edgetrain.prepare",
    "Plan": "edgetrain.planner",
    "Trainer": "edgetrain.runtime",
    "train": "edgetrain.runtime",
    "TrainReport": "edgetrain.runtime",
    "export": "edgetrain.export",
    "Device": "edgetrain.cost",
    "load_device": "edgetrain.cost",
    **_ERRORS,
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
