"""Lazy package exports (PEP 562), so light commands never import what they do not use.

`edgetrain`, `edgetrain.codegen`, `edgetrain.strategies` and `edgetrain.federated` resolve
their public names on first use: `import edgetrain.ir` imports no torch, and `edgetrain --help`
imports neither torch nor Flower.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` for `package` that imports `exports[name]` (a module path) when
    `name` is first asked for and caches the value in the package's namespace."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(exports[name]), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
