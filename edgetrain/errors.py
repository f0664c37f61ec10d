"""Typed errors shared by every stage of edgetrain.

Every error says what happened, the numbers involved, and how to fix it. This module imports
nothing but the standard library so that `ir`, `cost` and `plan` can raise these errors without
importing torch.
"""

from __future__ import annotations


class EdgetrainError(Exception):
    """Base class of every error edgetrain raises on purpose."""


class InvalidArgumentError(EdgetrainError, ValueError):
    """An argument is out of its valid range (e.g. batch size <= 0)."""


class UnknownModelError(EdgetrainError, KeyError):
    """A model spec names no built-in model and is not `path/to/file.py:factory`."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""


class UnknownDeviceError(EdgetrainError, KeyError):
    """A device name is neither in the catalog nor a readable device file."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DeviceFileError(EdgetrainError, ValueError):
    """A device file (TOML) is malformed: names the field, the value, the unit and range."""


class UnsupportedOpError(EdgetrainError, NotImplementedError):
    """The captured graph holds an operator edgetrain cannot cost or run."""


class DatasetMissingError(EdgetrainError, FileNotFoundError):
    """A dataset's files are not installed; names the package that provides them."""


class DatasetCorruptError(EdgetrainError, ValueError):
    """A dataset's files exist but fail their integrity checks."""


class ModelLoadError(EdgetrainError, RuntimeError):
    """A model factory or pretrained weights could not be loaded."""


class PlanInfeasibleError(EdgetrainError, ValueError):
    """No schedule fits: says the smallest achievable peak, what dominates it, and what to allow."""


class PlanFileError(InvalidArgumentError):
    """A plan file is missing, unreadable or not a valid edgetrain plan."""
