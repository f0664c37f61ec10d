"""Training an exported program with ExecuTorch's Python runtime (the same C++ kernels and
SGD a phone app links), for checks on the host."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from edgetrain import validate
from edgetrain.errors import ExportManifestError, InvalidArgumentError
from edgetrain.export._export import manifest_of
from edgetrain.export._manifest import verify_files
from edgetrain.export._program import METHOD, PREFIX

__all__ = ["ExecuTorchProgram", "load_program"]

_ET_DTYPES = {  # torch dtype -> ExecuTorch's scalar type name, as the manifest records it
    torch.float32: "float",
    torch.float64: "double",
    torch.float16: "half",
    torch.bfloat16: "bfloat16",
    torch.int64: "long",
    torch.int32: "int",
    torch.int16: "short",
    torch.int8: "char",
    torch.uint8: "byte",
    torch.bool: "bool",
}


class ExecuTorchProgram:
    """An exported folder loaded into ExecuTorch's runtime: `step(x, y)` runs the method and
    ExecuTorch's SGD with the manifest's options; `named_parameters()` reads the weights the
    runtime holds."""

    def __init__(self, out_dir: "str | os.PathLike[str]", *, lr: float | None = None) -> None:
        from executorch.extension.pybindings.portable_lib import _load_for_executorch
        from executorch.extension.training import TrainingModule

        out = Path(out_dir)
        self.manifest = manifest_of(out)
        verify_files(out, self.manifest)
        pte, ptd = out / "model.pte", out / "model.ptd"
        try:  # ExecuTorch parses lazily: asking for the methods parses the program now
            program = _load_for_executorch(str(pte), str(ptd))
            methods = set(program.method_names())
        except RuntimeError as e:  # files as recorded, but not a program this runtime runs
            raise ExportManifestError(
                f"ExecuTorch {self.manifest.get('executorch_version', '?')!s} could not load "
                f"{str(pte)!r}: {str(e)[:300]}; export again with this ExecuTorch"
            ) from None
        if METHOD not in methods:
            raise ExportManifestError(
                f"{str(pte)!r} has the methods {sorted(methods)}, not {METHOD!r}: not a "
                "program `edgetrain export` wrote; export again"
            )
        self.module = TrainingModule(program)
        opt = self.manifest["optimizer"]
        self.lr = opt["lr"] if lr is None else validate.learning_rate(lr)
        self._opt_args = (opt["momentum"], opt["dampening"], opt["weight_decay"], opt["nesterov"])
        self._optimizer = None
        x = self.manifest["inputs"][0]
        self.batch_shape = tuple(x["shape"])

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One forward-backward and one SGD step; returns the loss."""
        from executorch.extension.training import get_sgd_optimizer

        self._check_inputs(x, y)
        loss = self.module.forward_backward(METHOD, (x, y))[0]
        if self._optimizer is None:  # the runtime names its parameters after the first run
            self._optimizer = get_sgd_optimizer(
                self.module.named_parameters(), self.lr, *self._opt_args
            )
        self._optimizer.step(self.module.named_gradients())
        return float(loss.detach())

    def _check_inputs(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x and y as the program declares them (the manifest's `inputs`): ExecuTorch would
        otherwise fail inside the method with a bare error."""
        for name, t, spec in zip(("batch", "targets"), (x, y), self.manifest["inputs"]):
            if not isinstance(t, torch.Tensor):
                raise InvalidArgumentError(f"the {name} is {type(t).__name__}, not a tensor")
            want = tuple(spec["shape"])
            if tuple(t.shape) != want:
                raise InvalidArgumentError(
                    f"the {name} has shape {tuple(t.shape)}; the program was exported for {want}"
                )
            dtype = _ET_DTYPES.get(t.dtype)
            if "dtype" in spec and dtype != spec["dtype"]:
                raise InvalidArgumentError(
                    f"the {name} is {str(t.dtype).removeprefix('torch.')}; the program takes "
                    f"{spec['dtype']} (ExecuTorch's name): convert it with .to(...)"
                )

    def named_parameters(self) -> dict[str, torch.Tensor]:
        """The trainable tensors as the runtime holds them (after the first step)."""
        return {
            k.removeprefix(PREFIX): v.detach().clone()
            for k, v in self.module.named_parameters().items()
        }


def load_program(out_dir: "str | os.PathLike[str]", *, lr: float | None = None):
    """The exported folder `out_dir`, loaded for training (`ExecuTorchProgram`)."""
    return ExecuTorchProgram(out_dir, lr=lr)
