"""`edgetrain export`: a plan and its model as an ExecuTorch on-device training program.

    >>> from edgetrain.export import export, load_program
    >>> result = export(model, plan, "out/et")          # model.pte, model.ptd, manifest, README
    >>> program = load_program("out/et")                # ExecuTorch's Python runtime
    >>> loss = program.step(x, y)                       # forward-backward + ExecuTorch's SGD

What a plan may ask of ExecuTorch: NOTE [ What ExecuTorch's training export expresses ]
(`_checks.py`); its memory: NOTE [ ExecuTorch's memory for a training step ] (`_program.py`);
how the planner costs it: NOTE [ The ExecuTorch executor's memory, for the planner ]
(`_memory_model.py`).
"""

from edgetrain.lazy import lazy_exports

_EXPORTS = {
    "export": "edgetrain.export._export",
    "ExportResult": "edgetrain.export._export",
    "example_batch": "edgetrain.export._export",
    "manifest_of": "edgetrain.export._export",
    "check_exportable": "edgetrain.export._checks",
    "trainable_names": "edgetrain.export._checks",
    "ExecuTorchProgram": "edgetrain.export._runtime",
    "load_program": "edgetrain.export._runtime",
    "ProgramMemory": "edgetrain.export._program",
    "EXECUTORCH_MEMORY": "edgetrain.export._memory_model",
    "ExportUnsupportedError": "edgetrain.errors",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)


# NOTE [ edgetrain.export is a function and a package ]
#     `edgetrain.export(model, plan, DIR)` is the public function (re-exported lazily by
#     `edgetrain`), and `edgetrain.export` is also this package: once the package is imported,
#     Python binds the name `export` on `edgetrain` to the module. So the module is callable
#     and calls the function, and either binding does the same thing.
def _callable_module() -> None:
    import sys
    import types

    class _Module(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return self.export(*args, **kwargs)

    sys.modules[__name__].__class__ = _Module


_callable_module()
