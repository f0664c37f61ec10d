"""The registry of strategies: one `System` per surveyed on-device training system."""

from __future__ import annotations

from edgetrain.strategies import (_auto, _full, _mandheling, _melon, _minilearn, _poet, _sage,
                                  _tinyol, _tinytl, _tte)
from edgetrain.strategies._common import System, SystemName, UnknownSystemError

_ALL: list[System] = [_full.SYSTEM, _auto.SYSTEM, _poet.SYSTEM, _tinyol.SYSTEM, _tinytl.SYSTEM,
                      _melon.SYSTEM, _sage.SYSTEM, _tte.SYSTEM, _mandheling.SYSTEM,
                      _minilearn.SYSTEM]

SYSTEMS: dict[SystemName, System] = {s.name: s for s in _ALL}


def system_names() -> tuple[str, ...]:
    return tuple(n.value for n in SYSTEMS)


def get_system(name: "str | SystemName") -> System:
    """The strategy called `name` (e.g. "poet"); `UnknownSystemError` lists the valid names."""
    try:
        key = name if isinstance(name, SystemName) else SystemName(str(name).lower())
        return SYSTEMS[key]
    except (ValueError, KeyError):
        raise UnknownSystemError(
            f"unknown strategy {name!r}; choose one of {', '.join(system_names())}") from None
