"""The registry of strategies: each surveyed system's name, paper, needs and module. No torch.

The CLI reads its `--strategy` choices and what each one needs (calibration inputs, a deadline)
from here without importing any strategy; `get_system` imports the one asked for.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING

from edgetrain.errors import UnknownSystemError

if TYPE_CHECKING:
    from edgetrain.strategies._common import System


class SystemName(enum.Enum):
    """The surveyed on-device training systems edgetrain runs as strategies."""

    FULL = "full"
    AUTO = "auto"
    POET = "poet"
    TINYOL = "tinyol"
    TINYTL = "tinytl"
    MELON = "melon"
    SAGE = "sage"
    TTE = "tte"
    MANDHELING = "mandheling"
    MINILEARN = "minilearn"


@dataclass(frozen=True)
class SystemInfo:
    """What a caller needs to know about a strategy before importing it."""

    name: SystemName
    paper: str
    module: str  # holds `SYSTEM`, the `System` with its prepare and train stages
    needs_calibration: bool = False  # quantises or analyses real inputs before planning
    takes_deadline: bool = False  # plans to a step deadline (`deadline_s`)


def _info(name: SystemName, paper: str, **needs: bool) -> SystemInfo:
    return SystemInfo(name, paper, f"edgetrain.strategies._{name.value}", **needs)


CATALOG: dict[SystemName, SystemInfo] = {
    i.name: i
    for i in (
        _info(SystemName.FULL, "plain fine-tuning (reference)"),
        _info(SystemName.AUTO, "edgetrain joint planner"),
        _info(SystemName.POET, "Patil et al., POET, ICML 2022", takes_deadline=True),
        _info(SystemName.TINYOL, "Ren, Anicic, Runkler, TinyOL, IJCNN 2021"),
        _info(SystemName.TINYTL, "Cai, Gan, Zhu, Han, TinyTL, NeurIPS 2020"),
        _info(SystemName.MELON, "Wang et al., Melon, MobiSys 2022"),
        _info(SystemName.SAGE, "Gim, Ko, Sage, MobiSys 2022"),
        _info(
            SystemName.TTE, "Lin et al., Tiny Training Engine, NeurIPS 2022", needs_calibration=True
        ),
        _info(SystemName.MANDHELING, "Xu et al., Mandheling, MobiCom 2022", needs_calibration=True),
        _info(
            SystemName.MINILEARN,
            "Profentzas, Almgren, Landsiedel, MiniLearn, EWSN 2022",
            needs_calibration=True,
        ),
    )
}


def system_names() -> tuple[str, ...]:
    return tuple(n.value for n in CATALOG)


def system_info(name: "str | SystemName") -> SystemInfo:
    """The catalog entry of `name` (e.g. "poet"); `UnknownSystemError` lists the valid names."""
    try:
        key = name if isinstance(name, SystemName) else SystemName(str(name).lower())
        return CATALOG[key]
    except (ValueError, KeyError):
        raise UnknownSystemError(
            f"unknown strategy {name!r}; choose one of {', '.join(system_names())}"
        ) from None


def get_system(name: "str | SystemName") -> System:
    """The strategy called `name`, imported on demand."""
    return import_module(system_info(name).module).SYSTEM
