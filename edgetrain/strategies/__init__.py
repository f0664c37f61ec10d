"""Every surveyed on-device training system as a strategy on edgetrain's planner and runtime,
and `edgetrain bench`, which runs them all on the same task, models and devices.

    from edgetrain.strategies import get_system
    poet = get_system("poet")
    prepared = poet.prepare(model, example, device="nrf52840", batch_size=4)
    report = poet.train(prepared, x, y, samples=2000)

See NOTE [ One signature for every system ] in `_common.py`; each `_<name>.py` module's
docstring names the paper, what is reproduced and what is not.
"""

from edgetrain.strategies._common import Prepared, System, SystemName, TrainReport, UnknownSystemError
from edgetrain.strategies._registry import SYSTEMS, get_system, system_names

__all__ = ["SYSTEMS", "Prepared", "System", "SystemName", "TrainReport", "UnknownSystemError",
           "get_system", "system_names"]
