"""The fleet file: which device kinds take part in a federation, and how many of each.

    [[device]]
    kind = "nrf52840"      # a catalog name (`edgetrain devices`) or path/to/board.toml
    count = 6
    batch_size = 8         # optional, default 8: the local batch the device's plan trains
    fault = "nan"          # optional fault injection for robustness drills:
                           #   nan | scale:F | crash | slow:S (replies S seconds late)

Every field is checked; a bad file raises `FleetFileError` naming the table, the field, the
value and the fix.
"""

from __future__ import annotations

import enum
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edgetrain.errors import FleetFileError

DEFAULT_BATCH_SIZE = 8
MAX_CLIENTS = 1000
_FIELDS = ("kind", "count", "batch_size", "fault")


class FaultKind(enum.Enum):
    """A fault a client injects on purpose (robustness drills): its upload, or its whole reply."""

    NONE = "none"
    NAN = "nan"  # every uploaded value is NaN
    SCALE = "scale"  # the update (new - global) is multiplied by `fault_scale`
    CRASH = "crash"  # the client raises before replying
    SLOW = "slow"  # the client replies `fault_delay_s` seconds late (a straggler)


@dataclass(frozen=True, slots=True)
class DeviceGroup:
    """One `[[device]]` table: `count` clients of one device kind."""

    kind: str
    count: int
    batch_size: int = DEFAULT_BATCH_SIZE
    fault: FaultKind = FaultKind.NONE
    fault_scale: float = 1.0
    fault_delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ClientSpec:
    """One client of the federation: its id (the Flower partition id), name and device."""

    client_id: int
    name: str
    kind: str
    batch_size: int
    fault: FaultKind = FaultKind.NONE
    fault_scale: float = 1.0
    fault_delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Fleet:
    groups: tuple[DeviceGroup, ...]

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(g.kind for g in self.groups))

    def clients(self) -> tuple[ClientSpec, ...]:
        """The clients in file order; names are `KIND-i` (i counts within the kind)."""
        out: list[ClientSpec] = []
        seen: dict[str, int] = {}
        for g in self.groups:
            for _ in range(g.count):
                i = seen.get(g.kind, 0)
                seen[g.kind] = i + 1
                out.append(
                    ClientSpec(
                        len(out),
                        f"{g.kind}-{i}",
                        g.kind,
                        g.batch_size,
                        g.fault,
                        g.fault_scale,
                        g.fault_delay_s,
                    )
                )
        return tuple(out)

    def to_dict(self) -> dict:
        return {
            "device": [
                {
                    "kind": g.kind,
                    "count": g.count,
                    "batch_size": g.batch_size,
                    "fault": _fault_text(g),
                }
                for g in self.groups
            ]
        }


def _fault_text(g: DeviceGroup) -> str:
    if g.fault is FaultKind.SCALE:
        return f"scale:{g.fault_scale:g}"
    if g.fault is FaultKind.SLOW:
        return f"slow:{g.fault_delay_s:g}"
    return g.fault.value


def _err(where: str, field: str, value, why: str, fix: str) -> FleetFileError:
    return FleetFileError(f"{where}: field {field!r} = {value!r} {why}; {fix}")


def _parse_fault(where: str, value) -> tuple[FaultKind, float, float]:
    fix = (
        "use one of none, nan, crash, scale:F with F a finite number (e.g. scale:1e6) or "
        "slow:S with S seconds >= 0 (e.g. slow:30)"
    )
    if not isinstance(value, str):
        raise _err(where, "fault", value, "is not a string", fix)
    text = value.strip().lower()
    if text.startswith("scale:"):
        try:
            f = float(text[6:])
        except ValueError:
            raise _err(where, "fault", value, "has no number after scale:", fix) from None
        if f != f or f in (float("inf"), float("-inf")):
            raise _err(where, "fault", value, "is not finite", fix)
        return FaultKind.SCALE, f, 0.0
    if text.startswith("slow:"):
        try:
            d = float(text[5:])
        except ValueError:
            raise _err(where, "fault", value, "has no number after slow:", fix) from None
        if not (0 <= d < float("inf")):
            raise _err(where, "fault", value, "is not a delay in seconds >= 0", fix)
        return FaultKind.SLOW, 1.0, d
    try:
        kind = FaultKind(text)
    except ValueError:
        raise _err(where, "fault", value, "is not a known fault", fix) from None
    if kind in (FaultKind.SCALE, FaultKind.SLOW):
        raise _err(where, "fault", value, "needs a number", fix)
    return kind, 1.0, 0.0


def parse_fleet(data: dict, source: str = "fleet") -> Fleet:
    """Validate the parsed TOML of a fleet file (see the module docstring)."""
    from edgetrain.cost import load_device
    from edgetrain.errors import DeviceFileError, UnknownDeviceError

    unknown_top = [k for k in data if k != "device"]
    if unknown_top:
        raise FleetFileError(
            f"{source}: unknown top-level key(s) {unknown_top}; a fleet file holds "
            "only [[device]] tables with kind and count"
        )
    tables = data.get("device")
    if not isinstance(tables, list) or not tables:
        raise FleetFileError(
            f"{source}: no [[device]] table; add one per device kind, e.g.\n"
            '[[device]]\nkind = "nrf52840"\ncount = 6'
        )
    groups: list[DeviceGroup] = []
    total = 0
    for i, t in enumerate(tables):
        where = f"{source}: device table #{i + 1}"
        if not isinstance(t, dict):
            raise FleetFileError(
                f"{where} is not a table; write it as [[device]] with kind and count"
            )
        extra = [k for k in t if k not in _FIELDS]
        if extra:
            raise FleetFileError(
                f"{where}: unknown field(s) {extra}; allowed: {', '.join(_FIELDS)}"
            )
        if "kind" not in t:
            raise FleetFileError(
                f"{where}: field 'kind' is missing; give a catalog name "
                "(`edgetrain devices`) or a device file path/to/board.toml"
            )
        kind = t["kind"]
        if not isinstance(kind, str) or not kind.strip():
            raise _err(
                where,
                "kind",
                kind,
                "is not a device name",
                "give a catalog name (`edgetrain devices`) or path/to/board.toml",
            )
        try:
            load_device(kind)
        except (UnknownDeviceError, DeviceFileError) as e:
            raise _err(where, "kind", kind, "is not a usable device", str(e)) from None
        if "count" not in t:
            raise FleetFileError(
                f"{where}: field 'count' is missing; give the number of "
                f"{kind} clients, an integer from 1 to {MAX_CLIENTS}"
            )
        count = t["count"]
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_CLIENTS:
            raise _err(
                where,
                "count",
                count,
                "is out of range",
                f"use an integer number of clients from 1 to {MAX_CLIENTS}",
            )
        batch = t.get("batch_size", DEFAULT_BATCH_SIZE)
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 4096:
            raise _err(
                where,
                "batch_size",
                batch,
                "is out of range",
                "use an integer local batch size from 1 to 4096 (samples per step)",
            )
        fault, scale, delay = _parse_fault(where, t.get("fault", "none"))
        groups.append(DeviceGroup(kind, count, batch, fault, scale, delay))
        total += count
    if total > MAX_CLIENTS:
        raise FleetFileError(
            f"{source}: {total} clients in all, more than {MAX_CLIENTS}; lower the counts"
        )
    return Fleet(tuple(groups))


def load_fleet(path: "str | os.PathLike") -> Fleet:
    """Read and validate a fleet TOML file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise FleetFileError(
            f"cannot read fleet file {str(p)!r}: {e.strerror}; pass --fleet with "
            "a TOML file of [[device]] tables (see examples/fleet.toml)"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise FleetFileError(
            f"fleet file {str(p)!r} is not valid TOML: {e}; fix the syntax "
            "(see examples/fleet.toml)"
        ) from None
    return parse_fleet(data, str(p))
