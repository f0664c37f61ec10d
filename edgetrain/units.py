"""Byte sizes for people: one formatter and one parser, shared by the CLI, reports and plots.

Binary units throughout (1 KiB = 1024 bytes, the embedded convention for RAM and flash);
`parse_size` also takes K/KB/M/MB/G/GB as 1024-based. No torch, so every layer may use it.
"""

from __future__ import annotations

import re

from edgetrain.errors import InvalidArgumentError

__all__ = ["MAX_SIZE_BYTES", "format_bytes", "parse_size"]

MAX_SIZE_BYTES = 1 << 63

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}


def format_bytes(n: "int | float | None", *, exact: bool = False) -> str:
    """`1536` -> `1.5 KiB`; `None` -> `-`; `exact=True` appends the byte count."""
    if n is None:
        return "-"
    if n >= 1024**3:
        text = f"{n / 1024**3:,.2f} GiB"
    elif n >= 1024**2:
        text = f"{n / 1024**2:,.2f} MiB"
    elif n >= 1024:
        text = f"{n / 1024:,.1f} KiB"
    else:
        text = f"{int(n)} B"
    return f"{text} ({int(n):,} B)" if exact and n >= 1024 else text


def parse_size(text: str) -> int:
    """`256KB`, `1.5MiB`, `300000` -> bytes; anything else is an `InvalidArgumentError`."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidArgumentError(
            f"bad size {text!r}: use a number of bytes or a unit, e.g. 256KB, 1.5MB, 2GiB"
        )
    number = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not number < MAX_SIZE_BYTES:  # also catches inf from a number too long for a float
        raise InvalidArgumentError(
            f"size {text!r} is too large: it must be below 8 EiB ({MAX_SIZE_BYTES:,} bytes); "
            "give e.g. 256KB, 1.5MB or 2GiB"
        )
    v = int(number)
    if v <= 0:
        raise InvalidArgumentError(
            f"size must be at least 1 byte, got {text!r}; give e.g. 256KB, 1.5MB or 2GiB"
        )
    return v
