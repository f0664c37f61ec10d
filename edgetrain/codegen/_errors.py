"""Typed errors of the code generator (each says what happened, the numbers and the fix)."""

from __future__ import annotations

from edgetrain.errors import EdgetrainError, InvalidArgumentError, UnsupportedOpError


class CodegenError(EdgetrainError):
    """Base class of the code generator's errors."""


class UnsupportedPlanError(CodegenError, InvalidArgumentError):
    """The plan asks for something the C code generator does not execute (yet)."""


class UnsupportedKernelError(CodegenError, UnsupportedOpError):
    """The graph holds an operator (or operator variant) with no C kernel."""


class ToolchainMissingError(CodegenError, FileNotFoundError):
    """A compiler or emulator is not installed; names the exact `apt-get install` line."""


class BuildError(CodegenError, RuntimeError):
    """Compiling or linking failed (for Cortex-M targets: e.g. the program overflows the
    device's SRAM or flash)."""


class McuRunError(CodegenError, RuntimeError):
    """The compiled program failed, timed out, or printed output that cannot be parsed."""
