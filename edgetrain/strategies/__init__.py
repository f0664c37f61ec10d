"""Every surveyed on-device training system as a strategy on edgetrain's planner and runtime,
and `edgetrain bench`, which runs them all on the same task, models and devices.

    from edgetrain.strategies import get_system
    poet = get_system("poet")
    prepared = poet.prepare(model, example, device="nrf52840", batch_size=4)
    report = poet.train(prepared, x, y, samples=2000)

See NOTE [ One signature for every system ] in `_common.py`; each `_<name>.py` module's
docstring names the paper, what is reproduced and what is not. `CATALOG` (torch-free) says what
each strategy needs; names are resolved lazily (PEP 562) so that reading it imports no torch.
"""

from edgetrain.lazy import lazy_exports

_EXPORTS = {
    "CATALOG": "edgetrain.strategies._catalog",
    "SystemInfo": "edgetrain.strategies._catalog",
    "SystemName": "edgetrain.strategies._catalog",
    "UnknownSystemError": "edgetrain.strategies._catalog",
    "get_system": "edgetrain.strategies._catalog",
    "system_info": "edgetrain.strategies._catalog",
    "system_names": "edgetrain.strategies._catalog",
    "Prepared": "edgetrain.strategies._common",
    "System": "edgetrain.strategies._common",
    "TrainReport": "edgetrain.strategies._common",
    "BenchConfig": "edgetrain.strategies._bench",
    "config_from_args": "edgetrain.strategies._bench",
    "run_bench": "edgetrain.strategies._bench",
    "register": "edgetrain.strategies._cli",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
