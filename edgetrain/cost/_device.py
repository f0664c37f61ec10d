"""Device catalog: what a training device offers (memory, paging storage, compute, power).

A device is *data*: one TOML file per device, the same schema for the packaged catalog
(`edgetrain/cost/devices/<name>.toml`) and for a user's own board (`--device path/to/board.toml`).
Every numeric field carries its unit in its name (`ram_bytes`, `read_bandwidth_bytes_per_s`,
`active_power_w`, ...). Loading validates every field and raises `DeviceFileError` naming the
file, the dotted field, the value given, the unit and the allowed range.

Schema (all fields required unless marked optional)::

    name = "nrf52840"                # lowercase catalog name: letters, digits, '.', '_', '-'
    display_name = "..."             # human-readable board / SoC name
    memory_class = "mcu"             # mcu | embedded | phone  (low / middle / high constraint)
    source = "..."                   # datasheets / papers the numbers come from (non-empty)
    [memory]
    ram_bytes = 262144               # memory available to training (SRAM on MCUs; RAM an app
                                     # can realistically use on boards and phones)
    flash_bytes = 1048576            # program / weights storage (MCU flash; board/phone storage)
    [storage]                        # storage used for paging (SD card, eMMC, UFS, ...)
    kind = "sd-card-spi"
    capacity_bytes = ...
    read_bandwidth_bytes_per_s = ...
    write_bandwidth_bytes_per_s = ...
    transfer_latency_s = ...         # fixed cost of one transfer (command / syscall overhead)
    read_energy_j_per_byte = ...
    write_energy_j_per_byte = ...
    write_endurance_cycles = ...     # program/erase cycles per cell
    [compute]                        # the CPU that runs training
    cpu = "..."                      # optional description
    clock_hz = ...
    fp32_flops_per_s = ...           # sustained fp32 rate a training runtime reaches
    int8_ops_per_s = ...             # sustained int8 rate (1 MAC = 2 ops)
    active_power_w = ...             # power while computing
    idle_power_w = ...               # power while on but idle (<= active_power_w)
    op_overhead_s = ...              # optional (default 0): fixed cost of running one operator
                                     # once, forward or backward (dispatch, loop set-up)
    [accelerator]                    # optional: GPU / DSP / NPU; vendor peak rates
    name = "..."
    fp32_flops_per_s = ...           # 0 where it has no fp32 path
    int8_ops_per_s = ...             # 0 where it has no fast int8 path
    active_power_w = ...

This module imports only the standard library (no torch): it is part of the torch-free
`edgetrain.cost` layer.
"""

from __future__ import annotations

import difflib
import enum
import math
import os
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from edgetrain.errors import DeviceFileError, UnknownDeviceError

__all__ = [
    "Accelerator",
    "Compute",
    "DEVICE_TABLE_HEADER",
    "Device",
    "MemoryClass",
    "Storage",
    "catalog",
    "device_names",
    "format_device_table",
    "load_device",
]


class MemoryClass(enum.Enum):
    """How constrained a device is (survey terminology: low / middle / high constraint)."""

    MCU = "mcu"  # microcontrollers: KB-to-MB of SRAM, no OS
    EMBEDDED = "embedded"  # single-board computers / modules: hundreds of MB to GB, Linux
    PHONE = "phone"  # smartphones: GB of RAM shared with the OS and other apps


_CLASS_ORDER = {MemoryClass.MCU: 0, MemoryClass.EMBEDDED: 1, MemoryClass.PHONE: 2}


@dataclass(frozen=True, slots=True)
class Storage:
    """Storage used to page tensors out of RAM (SD card, eMMC, UFS, ...)."""

    kind: str
    capacity_bytes: int
    read_bandwidth_bytes_per_s: float
    write_bandwidth_bytes_per_s: float
    transfer_latency_s: float
    read_energy_j_per_byte: float
    write_energy_j_per_byte: float
    write_endurance_cycles: int


@dataclass(frozen=True, slots=True)
class Compute:
    """The CPU that runs training: sustained rates and power."""

    clock_hz: float
    fp32_flops_per_s: float
    int8_ops_per_s: float
    active_power_w: float
    idle_power_w: float
    cpu: str = ""
    op_overhead_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Accelerator:
    """An optional GPU / DSP / NPU next to the CPU (vendor peak rates)."""

    name: str
    fp32_flops_per_s: float
    int8_ops_per_s: float
    active_power_w: float


@dataclass(frozen=True, slots=True)
class Device:
    """One training device. Build it with `load_device` or `Device.from_dict` (both validate)."""

    name: str
    display_name: str
    memory_class: MemoryClass
    source: str
    ram_bytes: int
    flash_bytes: int
    storage: Storage
    compute: Compute
    accelerator: Accelerator | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict in the TOML file's layout (inverse of `from_dict`)."""
        d: dict[str, Any] = {
            "name": self.name,
            "display_name": self.display_name,
            "memory_class": self.memory_class.value,
            "source": self.source,
            "memory": {"ram_bytes": self.ram_bytes, "flash_bytes": self.flash_bytes},
            "storage": {f: getattr(self.storage, f) for f in _STORAGE_FIELDS},
            # an absent optional `cpu` is "" here; written back it must stay absent
            "compute": {
                f: getattr(self.compute, f)
                for f in _COMPUTE_FIELDS
                if f != "cpu" or self.compute.cpu
            },
        }
        if self.accelerator is not None:
            d["accelerator"] = {f: getattr(self.accelerator, f) for f in _ACCEL_FIELDS}
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str = "<dict>") -> Device:
        """Validate `data` (the TOML layout, as `to_dict` writes it) and build a Device.

        Raises `DeviceFileError` naming `origin`, the field, the value, its unit and range.
        """
        return _build_device(data, origin)


# -- schema --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Spec:
    """How one field is checked: type, unit and range."""

    kind: str  # "int", "num", "str", "name", "class"
    unit: str = ""
    lo: float | None = None
    lo_open: bool = False  # True: value must be > lo (else >= lo)
    hi: float | None = None
    required: bool = True
    default: Any = None
    hint: str = ""  # appended when the value is below `lo` (unit slips)

    def describe(self) -> str:
        if self.kind == "str":
            return "a non-empty string"
        if self.kind == "name":
            return (
                "a lowercase name of letters, digits, '.', '_' or '-' "
                "(at most 64 characters, starting with a letter or digit)"
            )
        if self.kind == "class":
            return "one of " + ", ".join(repr(c.value) for c in MemoryClass)
        what = "an integer number" if self.kind == "int" else "a number"
        what += f" in {self.unit}" if self.unit else ""
        bounds = []
        if self.lo is not None:
            bounds.append(f"{'>' if self.lo_open else '≥'} {_fmt(self.lo)}")
        if self.hi is not None:
            bounds.append(f"≤ {_fmt(self.hi)}")
        return what + (", " + " and ".join(bounds) if bounds else "")


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if float(x).is_integer() and abs(x) < 1e5:
        return str(int(x))
    mant, exp = f"{x:.3e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


_MB_HINT = "a value this small usually means MB/s or KB/s were given; give bytes/s"
_BYTES_HINT = "a value this small usually means KB, MB or GB were given; give bytes"
_RATE_HINT = "a value this small usually means MFLOP/s or GFLOP/s were given; give FLOP/s"
_OPS_HINT = "a value this small usually means MOP/s or GOP/s were given; give ops/s"
_HZ_HINT = "a value this small usually means MHz or GHz were given; give Hz"

_TOP: dict[str, _Spec] = {
    "name": _Spec("name"),
    "display_name": _Spec("str"),
    "memory_class": _Spec("class"),
    "source": _Spec("str"),
}
_TABLES = ("memory", "storage", "compute", "accelerator")

_MEMORY: dict[str, _Spec] = {
    "ram_bytes": _Spec("int", "bytes", 1024, False, 1e13, hint=_BYTES_HINT),
    "flash_bytes": _Spec("int", "bytes", 0, False, 1e15),
}
_STORAGE: dict[str, _Spec] = {
    "kind": _Spec("str"),
    "capacity_bytes": _Spec("int", "bytes", 1024, False, 1e15, hint=_BYTES_HINT),
    "read_bandwidth_bytes_per_s": _Spec("num", "bytes/s", 1e3, False, 1e12, hint=_MB_HINT),
    "write_bandwidth_bytes_per_s": _Spec("num", "bytes/s", 1e3, False, 1e12, hint=_MB_HINT),
    "transfer_latency_s": _Spec("num", "seconds", 0, False, 1.0),
    "read_energy_j_per_byte": _Spec("num", "J/byte", 0, False, 1e-4),
    "write_energy_j_per_byte": _Spec("num", "J/byte", 0, False, 1e-4),
    "write_endurance_cycles": _Spec("int", "program/erase cycles", 1, False, 1e9),
}
_COMPUTE: dict[str, _Spec] = {
    "cpu": _Spec("str", required=False, default=""),
    "clock_hz": _Spec("num", "Hz", 1e5, False, 1e11, hint=_HZ_HINT),
    "fp32_flops_per_s": _Spec("num", "FLOP/s", 1e3, False, 1e16, hint=_RATE_HINT),
    "int8_ops_per_s": _Spec("num", "ops/s", 1e3, False, 1e17, hint=_OPS_HINT),
    "active_power_w": _Spec("num", "W", 0, True, 1e4),
    "idle_power_w": _Spec("num", "W", 0, False, 1e4),
    "op_overhead_s": _Spec("num", "seconds", 0, False, 1.0, required=False, default=0.0),
}
_ACCEL: dict[str, _Spec] = {
    "name": _Spec("str"),
    "fp32_flops_per_s": _Spec("num", "FLOP/s", 0, False, 1e17),
    "int8_ops_per_s": _Spec("num", "ops/s", 0, False, 1e18),
    "active_power_w": _Spec("num", "W", 0, True, 1e4),
}
_TABLE_SPECS = {"memory": _MEMORY, "storage": _STORAGE, "compute": _COMPUTE, "accelerator": _ACCEL}
_STORAGE_FIELDS = tuple(_STORAGE)
_COMPUTE_FIELDS = (
    "clock_hz",
    "fp32_flops_per_s",
    "int8_ops_per_s",
    "active_power_w",
    "idle_power_w",
    "cpu",
    "op_overhead_s",
)
_ACCEL_FIELDS = tuple(_ACCEL)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _show(v: Any) -> str:
    """The value as given, with its TOML-ish type, for error messages."""
    kinds = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }
    kind = next((k for t, k in kinds.items() if type(v) is t), type(v).__name__)
    text = repr(v)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kind})"


class _Checker:
    """Collects every problem in one device description, then raises them together."""

    def __init__(self, origin: str):
        self.origin = origin
        self.problems: list[str] = []

    def bad(self, msg: str) -> None:
        self.problems.append(msg)

    def value(self, path: str, v: Any, spec: _Spec) -> Any:
        """Check one field; returns the normalised value or None after recording a problem."""
        need = f"must be {spec.describe()}"
        if spec.kind in ("str", "name", "class"):
            if not isinstance(v, str):
                self.bad(f"field '{path}' = {_show(v)}: {need}")
                return None
            if spec.kind == "str" and not v.strip():
                self.bad(f"field '{path}' = {_show(v)} is empty: {need}")
                return None
            if spec.kind == "name" and not _NAME_RE.match(v):
                self.bad(f"field '{path}' = {_show(v)}: {need}")
                return None
            if spec.kind == "class":
                try:
                    return MemoryClass(v)
                except ValueError:
                    self.bad(
                        f"field '{path}' = {_show(v)}: unknown memory class; {need} "
                        "(mcu: microcontroller, embedded: Linux board/module, "
                        "phone: smartphone)"
                    )
                    return None
            return v
        # numbers: bool is an int subclass in Python but never a number here
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.bad(f"field '{path}' = {_show(v)}: {need}")
            return None
        if isinstance(v, float) and not math.isfinite(v):
            self.bad(f"field '{path}' = {_show(v)}: {need}")
            return None
        given = v
        if spec.kind == "int":
            if isinstance(v, float):
                if not v.is_integer():
                    self.bad(f"field '{path}' = {_show(v)} is not a whole number: {need}")
                    return None
                v = int(v)
        else:
            v = float(v)
        low = spec.lo is not None and (v <= spec.lo if spec.lo_open else v < spec.lo)
        high = spec.hi is not None and v > spec.hi
        if low or high:
            hint = f" ({spec.hint})" if low and spec.hint and v > 0 else ""
            self.bad(f"field '{path}' = {_show(given)} is out of range: {need}{hint}")
            return None
        return v

    def table(self, prefix: str, data: Any, specs: dict[str, _Spec]) -> dict[str, Any] | None:
        """Check every field of a table: missing, unknown (typos) and each value."""
        where = f"[{prefix}]" if prefix else "the top level"
        if not isinstance(data, Mapping):
            self.bad(
                f"field '{prefix}' = {_show(data)}: must be a table ([{prefix}] section) "
                f"with fields {', '.join(specs)}"
            )
            return None
        out: dict[str, Any] = {}
        allowed = list(specs) if prefix else list(specs) + list(_TABLES)
        for key in data:
            if key in specs or (not prefix and key in _TABLES):
                continue
            path = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            guess = f" (did you mean '{close[0]}'?)" if close else ""
            self.bad(
                f"unknown field '{path}' = {_show(data[key])}{guess}; allowed fields in "
                f"{where}: {', '.join(allowed)}"
            )
        for key, spec in specs.items():
            path = f"{prefix}.{key}" if prefix else key
            if key not in data:
                if spec.required:
                    self.bad(f"missing required field '{path}' ({spec.describe()})")
                out[key] = spec.default
                continue
            out[key] = self.value(path, data[key], spec)
        return out

    def raise_if_bad(self) -> None:
        if not self.problems:
            return
        if len(self.problems) == 1:
            raise DeviceFileError(f"{self.origin}: {self.problems[0]}")
        lines = "\n".join(f"  - {p}" for p in self.problems)
        raise DeviceFileError(f"{self.origin}: {len(self.problems)} problems:\n{lines}")


def _build_device(data: Mapping[str, Any], origin: str) -> Device:
    c = _Checker(origin)
    if not isinstance(data, Mapping):
        raise DeviceFileError(f"{origin}: a device must be a table of fields, got {_show(data)}")
    top = c.table("", data, _TOP)
    assert top is not None
    tables: dict[str, dict[str, Any] | None] = {}
    for t in _TABLES:
        if t not in data:
            if t != "accelerator":
                c.bad(f"missing required table '[{t}]' with fields {', '.join(_TABLE_SPECS[t])}")
            tables[t] = None
            continue
        tables[t] = c.table(t, data[t], _TABLE_SPECS[t])
    comp = tables["compute"]
    if (
        comp
        and comp.get("active_power_w") is not None
        and comp.get("idle_power_w") is not None
        and comp["idle_power_w"] > comp["active_power_w"]
    ):
        c.bad(
            f"field 'compute.idle_power_w' = {_show(comp['idle_power_w'])} exceeds "
            f"'compute.active_power_w' = {_show(comp['active_power_w'])}: idle power in W "
            "must be ≤ active power"
        )
    acc = tables["accelerator"]
    if acc and acc.get("fp32_flops_per_s") == 0 and acc.get("int8_ops_per_s") == 0:
        c.bad(
            "fields 'accelerator.fp32_flops_per_s' = 0 and 'accelerator.int8_ops_per_s' = 0: "
            "an accelerator needs at least one rate > 0 (FLOP/s or ops/s); "
            "remove the [accelerator] table if there is none"
        )
    c.raise_if_bad()
    mem, st = tables["memory"], tables["storage"]
    assert mem is not None and st is not None and comp is not None
    return Device(
        name=top["name"],
        display_name=top["display_name"],
        memory_class=top["memory_class"],
        source=top["source"],
        ram_bytes=mem["ram_bytes"],
        flash_bytes=mem["flash_bytes"],
        storage=Storage(**st),
        compute=Compute(**comp),
        accelerator=Accelerator(**acc) if acc is not None else None,
    )


def _parse_toml(text: str, origin: str) -> Device:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise DeviceFileError(f"{origin}: invalid TOML: {e}") from e
    return _build_device(data, origin)


def _load_file(path: Path) -> Device:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DeviceFileError(f"{path}: cannot read device file: {e.strerror or e}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DeviceFileError(f"{path}: device file is not UTF-8 text ({e})") from e
    return _parse_toml(text, str(path))


# -- catalog -------------------------------------------------------------------------------


def _catalog_dir():
    return resources.files("edgetrain.cost").joinpath("devices")


@lru_cache(maxsize=1)
def _catalog() -> tuple[Device, ...]:
    devices = []
    for entry in _catalog_dir().iterdir():
        if not entry.name.endswith(".toml"):
            continue
        origin = str(entry)
        dev = _parse_toml(entry.read_text(encoding="utf-8"), origin)
        stem = entry.name[: -len(".toml")]
        if dev.name != stem:
            raise DeviceFileError(
                f"{origin}: field 'name' = {_show(dev.name)} must equal the "
                f"file name {stem!r} for a catalog device"
            )
        devices.append(dev)
    devices.sort(key=lambda d: (_CLASS_ORDER[d.memory_class], d.ram_bytes, d.name))
    return tuple(devices)


def catalog() -> list[Device]:
    """Every packaged device, sorted by memory class (mcu, embedded, phone) then RAM."""
    return list(_catalog())


def device_names() -> list[str]:
    """Names of the packaged devices, in `catalog()` order."""
    return [d.name for d in _catalog()]


def _unknown(spec: str, why: str) -> UnknownDeviceError:
    names = device_names()
    close = difflib.get_close_matches(spec.strip().lower(), names, n=1, cutoff=0.6)
    guess = f" Did you mean '{close[0]}'?" if close else ""
    return UnknownDeviceError(
        f"{why}.{guess} Catalog devices: {', '.join(names)} (list them with `edgetrain devices`). "
        "For your own board, pass the path to a TOML device file, e.g. "
        "`--device path/to/board.toml` (start from a copy of a catalog file such as "
        f"{_catalog_dir().joinpath('nrf52840.toml')})."
    )


def load_device(spec: str | os.PathLike[str] | Device) -> Device:
    """Resolve a device: a `Device` passes through; a catalog name loads the packaged file;
    a path ending in `.toml` (or any existing file) loads and validates that file.

    Raises `UnknownDeviceError` (listing every catalog name) when `spec` is none of these and
    `DeviceFileError` when the file is malformed.
    """
    if isinstance(spec, Device):
        return spec
    if isinstance(spec, os.PathLike):
        path = Path(spec)
        if not path.is_file():
            raise _unknown(str(path), f"device file '{path}' does not exist")
        return _load_file(path)
    if not isinstance(spec, str):
        raise _unknown(
            repr(spec),
            f"a device is a catalog name, a path to a .toml file or a Device, not {_show(spec)}",
        )
    by_name = {d.name: d for d in _catalog()}
    key = spec.strip().lower()
    for k in (key, key.replace("_", "-")):
        if k in by_name:
            return by_name[k]
    path = Path(spec).expanduser()
    if path.is_file():
        return _load_file(path)
    if spec.strip().lower().endswith(".toml"):
        raise _unknown(spec, f"device file '{spec}' does not exist")
    raise _unknown(spec, f"unknown device {spec!r}")


# -- display -------------------------------------------------------------------------------

DEVICE_TABLE_HEADER: tuple[str, ...] = (
    "name",
    "class",
    "RAM",
    "flash",
    "paging storage",
    "fp32 GFLOP/s",
    "int8 GOP/s",
    "power W",
    "accelerator",
)


def _size(n: float) -> str:
    """Memory sizes in binary units (RAM, flash)."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{_g(n / scale)} {unit}"
    return f"{int(n)} B"


def _dsize(n: float) -> str:
    """Storage capacities in decimal units, as cards and drives are sold."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{_g(n / scale)} {unit}"
    return f"{int(n)} B"


def _g(x: float) -> str:
    """3 significant digits without exponents (1,600 not 1.6e+03; 0.000167 stays)."""
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _rate(x: float) -> str:
    return _g(x / 1e9)


def format_device_table(devices: Iterable[Device] | None = None) -> list[tuple[str, ...]]:
    """Rows of strings (one per device, columns as `DEVICE_TABLE_HEADER`) for a CLI table.

    `devices` defaults to the whole catalog.
    """
    rows = []
    for d in catalog() if devices is None else devices:
        st, cp, acc = d.storage, d.compute, d.accelerator
        accel = "-"
        if acc is not None:
            parts = []
            if acc.fp32_flops_per_s:
                parts.append(f"{_rate(acc.fp32_flops_per_s)} GFLOP/s fp32")
            if acc.int8_ops_per_s:
                parts.append(f"{_rate(acc.int8_ops_per_s)} GOP/s int8")
            accel = f"{acc.name}: {', '.join(parts)}, {_g(acc.active_power_w)} W"
        rows.append(
            (
                d.name,
                d.memory_class.value,
                _size(d.ram_bytes),
                _size(d.flash_bytes),
                f"{st.kind} {_dsize(st.capacity_bytes)}, "
                f"r {_g(st.read_bandwidth_bytes_per_s / 1e6)} / w "
                f"{_g(st.write_bandwidth_bytes_per_s / 1e6)} MB/s",
                _rate(cp.fp32_flops_per_s),
                _rate(cp.int8_ops_per_s),
                _g(cp.active_power_w),
                accel,
            )
        )
    return rows
