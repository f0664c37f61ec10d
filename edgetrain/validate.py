"""Argument validation, declared once and used by the Python API and the CLI alike.

Each check takes the value and the name the caller knows it by, returns the value normalised,
and raises `InvalidArgumentError` whose message says what was given, the valid range and the
fix. The CLI's argparse `type=` callables (`cli_type`) wrap the same checks, so an argument
error reads the same from `edgetrain plan --batch-size 0` and from `edgetrain.plan(...,
batch_size=0)`. Imports only the standard library, so `--help` and argument errors answer
without importing torch.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from edgetrain.errors import InvalidArgumentError

__all__ = [
    "batch_size",
    "budget_bytes",
    "cli_type",
    "existing_file",
    "fraction",
    "learning_rate",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "steps",
]

T = TypeVar("T")


def positive_int(value: object, what: str = "value") -> int:
    """An integer > 0 (a bool, float or string is refused, never truncated)."""
    return _integer(value, what, 1, "a positive integer")


def non_negative_int(value: object, what: str = "value") -> int:
    """An integer >= 0."""
    return _integer(value, what, 0, "an integer >= 0")


def _integer(value: object, what: str, minimum: int, expected: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise InvalidArgumentError(f"{what} must be {expected}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{what} must be {expected}, got {value!r}")
    return value


def positive_float(value: object, what: str = "value") -> float:
    """A finite number > 0 (NaN and infinity refused)."""
    v = _finite(value, what, "a positive finite number")
    if v <= 0:
        raise InvalidArgumentError(f"{what} must be a positive finite number, got {value!r}")
    return v


def batch_size(value: object) -> int:
    """Samples per optimizer step (`--batch-size`)."""
    return positive_int(value, "batch size (--batch-size)")


def steps(value: object) -> int:
    """Optimizer steps to run (`--steps`)."""
    return positive_int(value, "steps (--steps)")


def learning_rate(value: object) -> float:
    """The optimizer's learning rate (`--lr`), e.g. 0.05."""
    return positive_float(value, "learning rate (--lr)")


def budget_bytes(value: object) -> int:
    """A memory budget in bytes (`--budget`; the CLI also accepts KB/KiB/MB suffixes)."""
    return positive_int(value, "memory budget in bytes (--budget)")


def existing_file(value: object, what: str = "file") -> Path:
    """A path naming a readable regular file."""
    p = Path(str(value))
    if not p.is_file():
        why = "is a directory" if p.is_dir() else "does not exist"
        raise InvalidArgumentError(f"{what} {str(value)!r} {why}; give the path of a file")
    return p


def cli_type(check: Callable[[object], T]) -> Callable[[str], T]:
    """An argparse `type=` callable from a check: its error becomes argparse's usage error."""

    def parse(text: str) -> T:
        try:
            return check(text)
        except InvalidArgumentError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = getattr(check, "__name__", "value")
    return parse


def non_negative_float(value: object, what: str = "value") -> float:
    """A finite number >= 0."""
    v = _finite(value, what, "a finite number >= 0")
    if v < 0:
        raise InvalidArgumentError(f"{what} must be a finite number >= 0, got {value!r}")
    return v


def fraction(value: object, what: str = "value") -> float:
    """A number in [0, 1), e.g. a dropout probability or a momentum."""
    v = _finite(value, what, "a number in [0, 1)")
    if not 0.0 <= v < 1.0:
        raise InvalidArgumentError(f"{what} must be a number in [0, 1), got {value!r}")
    return v


def _finite(value: object, what: str, expected: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{what} must be {expected}, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v):
        raise InvalidArgumentError(f"{what} must be {expected}, got {value!r}")
    return v
