"""The fleet file: which device kinds take part in a federation, and how many of each.

    [[device]]
    kind = "nrf52840"      # a catalog name (`edgetrain devices`) or path/to/board.toml
    count = 6
    batch_size = 8         # optional, default 8: the local batch the device's plan trains
    fault = "nan"          # optional fault injection for robustness drills:
                           #   nan | scale:F | crash | slow:S (replies S seconds late)
                           #   inflate:N (claims N examples) | forge (crafted replies)
                           #   parts combine with "+", e.g. "scale:9+inflate:1e9+forge"

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
MAX_CLAIMED_EXAMPLES = 2**53  # `inflate:N`: any count a float64 holds exactly


class FaultKind(enum.Enum):
    """A fault a client injects on purpose (robustness drills): its upload, or its whole reply."""

    NONE = "none"
    NAN = "nan"  # every uploaded value is NaN
    # the parameters' update (new - global) is multiplied by `fault_scale`; batch-norm running
    # statistics are sent as trained (an attacker that passes the server's schema)
    SCALE = "scale"
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
    fault_claim_examples: int = 0  # `inflate:N`: the client claims N examples (0: honest)
    fault_forge: bool = False  # `forge`: the client crafts malformed replies (see _client)


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
    fault_claim_examples: int = 0
    fault_forge: bool = False


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
                        g.fault_claim_examples,
                        g.fault_forge,
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
    parts = []
    if g.fault is FaultKind.SCALE:
        parts.append(f"scale:{g.fault_scale:g}")
    elif g.fault is FaultKind.SLOW:
        parts.append(f"slow:{g.fault_delay_s:g}")
    elif g.fault is not FaultKind.NONE:
        parts.append(g.fault.value)
    if g.fault_claim_examples:
        parts.append(f"inflate:{g.fault_claim_examples}")
    if g.fault_forge:
        parts.append("forge")
    return "+".join(parts) or "none"


def _err(where: str, field: str, value, why: str, fix: str) -> FleetFileError:
    return FleetFileError(f"{where}: field {field!r} = {value!r} {why}; {fix}")


_FAULT_FIX = (
    "use none, or parts joined by '+': one of nan, crash, scale:F (F a finite number, e.g. "
    "scale:1e6) or slow:S (S seconds >= 0, e.g. slow:30); inflate:N (claims N examples, "
    f"1 <= N <= {MAX_CLAIMED_EXAMPLES}, e.g. inflate:1e9); forge (crafted replies)"
)


def _number(where: str, value, text: str, prefix: str) -> float:
    try:
        x = float(text[len(prefix) :])
    except ValueError:
        raise _err(where, "fault", value, f"has no number after {prefix}", _FAULT_FIX) from None
    if x != x or x in (float("inf"), float("-inf")):
        raise _err(where, "fault", value, "is not finite", _FAULT_FIX)
    return x


def _parse_fault_part(where: str, value, text: str, out: dict) -> None:
    """One '+'-separated part of a fault into `out` (kind, scale, delay, claim, forge)."""
    if text.startswith("inflate:"):
        n = _number(where, value, text, "inflate:")
        if not (n == int(n) and 1 <= n <= MAX_CLAIMED_EXAMPLES):
            raise _err(where, "fault", value, "claims no whole number of examples", _FAULT_FIX)
        key, val = "claim", int(n)
    elif text == "forge":
        key, val = "forge", True
    elif text.startswith("scale:"):
        key, val = "kind", (FaultKind.SCALE, _number(where, value, text, "scale:"), 0.0)
    elif text.startswith("slow:"):
        d = _number(where, value, text, "slow:")
        if d < 0:
            raise _err(where, "fault", value, "is not a delay in seconds >= 0", _FAULT_FIX)
        key, val = "kind", (FaultKind.SLOW, 1.0, d)
    else:
        try:
            kind = FaultKind(text)
        except ValueError:
            raise _err(where, "fault", value, "is not a known fault", _FAULT_FIX) from None
        if kind in (FaultKind.SCALE, FaultKind.SLOW):
            raise _err(where, "fault", value, "needs a number", _FAULT_FIX)
        key, val = "kind", (kind, 1.0, 0.0)
    if key in out:
        raise _err(where, "fault", value, f"names more than one {key} fault", _FAULT_FIX)
    out[key] = val


def _parse_fault(where: str, value) -> tuple[FaultKind, float, float, int, bool]:
    """(kind, scale, delay_s, claimed examples, forge) of a `fault` field."""
    if not isinstance(value, str):
        raise _err(where, "fault", value, "is not a string", _FAULT_FIX)
    text = value.strip().lower()
    if text in ("", "none"):
        return FaultKind.NONE, 1.0, 0.0, 0, False
    out: dict = {}
    for part in text.split("+"):
        _parse_fault_part(where, value, part.strip(), out)
    kind, scale, delay = out.get("kind", (FaultKind.NONE, 1.0, 0.0))
    return kind, scale, delay, out.get("claim", 0), out.get("forge", False)


def parse_fleet(data: dict, source: str = "fleet") -> Fleet:
    """Validate the parsed TOML of a fleet file (see the module docstring)."""
    from edgetrain.cost import load_device
    from edgetrain.errors import DeviceFileError, UnknownDeviceError

    if not isinstance(data, dict):
        raise FleetFileError(
            f"{source}: a fleet is a table of [[device]] tables, not {type(data).__name__}; "
            "see examples/fleet.toml"
        )
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
        except (OSError, RuntimeError, ValueError) as e:  # e.g. a name too long for a path
            raise _err(
                where,
                "kind",
                kind,
                f"is not a usable device ({type(e).__name__}: {str(e)[:120]})",
                "give a catalog name (`edgetrain devices`) or path/to/board.toml",
            ) from None
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
        fault, scale, delay, claim, forge = _parse_fault(where, t.get("fault", "none"))
        groups.append(DeviceGroup(kind, count, batch, fault, scale, delay, claim, forge))
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
    except UnicodeDecodeError as e:
        raise FleetFileError(
            f"fleet file {str(p)!r} is not UTF-8 text (byte {e.start}); a fleet file is TOML "
            "(see examples/fleet.toml)"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise FleetFileError(
            f"fleet file {str(p)!r} is not valid TOML: {e}; fix the syntax "
            "(see examples/fleet.toml)"
        ) from None
    return parse_fleet(data, str(p))
