"""`edgetrain.export`: a plan and its model as an ExecuTorch training program on disk.

NOTE [ The export folder ]
    `export(model, plan, DIR)` writes, each file atomically (a temporary file renamed into
    place):
    - `model.pte`: the joint forward-backward program (method `forward(x, y)` returning the
      loss, the model's output, then one gradient per trainable tensor and the trainable
      tensors themselves; ExecuTorch's `TrainingModule` slices them);
    - `model.ptd`: every weight (frozen ones as constants, trainable ones as the initial values
      of the mutable weights), ExecuTorch's named-data file, loaded beside the program;
    - `manifest.json`: inputs, outputs, the trainable tensors, the optimizer to build, the
      plan's prediction and ExecuTorch's own memory plan with the difference
      (NOTE [ ExecuTorch's memory for a training step ]);
    - `README.md`: loading and training it from C++.
    A folder holding other files is refused unless `force`, as compile does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgetrain.capture import example_target, loss_function
from edgetrain.errors import DeviceLimitError, ExportUnsupportedError, OutputPathError
from edgetrain.export._checks import MOMENTUM, check_exportable, trainable_names
from edgetrain.export._manifest import read_manifest
from edgetrain.export._program import METHOD, PREFIX, ProgramMemory, export_program, tensor_specs
from edgetrain.export._readme import readme
from edgetrain.planner import Plan
from edgetrain.storage import TEMP_PREFIX, fsync_dir, write_json_atomic, write_text_atomic

__all__ = ["FILES", "ExportResult", "export", "example_batch"]

FILES = ("model.pte", "model.ptd", "manifest.json", "README.md")
_DATA_NAME = "model"  # model.ptd
_BN = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


@dataclass(frozen=True)
class ExportResult:
    """What `export` wrote: the folder, its files and the manifest."""

    out_dir: Path
    manifest: dict[str, Any]

    @property
    def program_path(self) -> Path:
        return self.out_dir / "model.pte"

    @property
    def data_path(self) -> Path:
        return self.out_dir / "model.ptd"

    @property
    def memory(self) -> dict[str, Any]:
        return self.manifest["memory"]


def export(
    model: torch.nn.Module,
    plan: Plan,
    out_dir: "str | os.PathLike[str]",
    *,
    lr: float = 0.05,
    loss_fn=None,
    example_input: torch.Tensor | None = None,
    target_example: torch.Tensor | None = None,
    force: bool = False,
) -> ExportResult:
    """Export `model` trained as `plan` says to ExecuTorch in `out_dir`
    (NOTE [ The export folder ]): the plan's trainable set gets gradients, everything else is a
    constant; batch norm uses its running statistics; the batch is the plan's batch size.
    `lr` is recorded for the optimizer the manifest describes (the plan holds none);
    `loss_fn`: the callable of a `custom:` loss. `example_input` (batch 1) is needed only for
    plans that record no input shape (before schema 3). The model is left as it was.

    Raises `ExportUnsupportedError` for plans ExecuTorch cannot express (NOTE [ What
    ExecuTorch's training export expresses ]), `PlanFileError` for a plan of another model,
    `OutputPathError` for a folder it may not write; `DeviceLimitError` when ExecuTorch's own
    memory plan exceeds the plan's budget (unless the plan was made with `--force-budget`)."""
    from edgetrain import validate

    lr = validate.learning_rate(lr)
    check_exportable(
        plan,
        has_batch_norm=any(isinstance(m, _BN) for m in model.modules()),
        custom_loss=loss_fn is not None,
    )
    plan.check_matches_model(model)
    out = _output_dir(out_dir, force)
    fn = loss_fn if loss_fn is not None else loss_function(plan.loss)
    with _as_planned(model, plan):
        x, y = example_batch(model, plan, example_input, target_example)
        manager, grads = export_program(model, fn, x, y)
    missing = sorted(set(trainable_names(plan)) - set(grads))
    if missing:
        raise ExportUnsupportedError(
            f"the exported program computes no gradient for {len(missing)} tensor(s) the plan "
            f"trains ({', '.join(missing[:3])}): the loss does not depend on them; re-plan "
            "with a --policy that leaves them frozen"
        )
    _check_kernels(manager.executorch_program, plan)
    memory = ProgramMemory.of(manager.executorch_program, momentum=plan.optimizer == "momentum")
    if memory.total_bytes > plan.budget_bytes and not plan.budget_forced:
        raise DeviceLimitError(
            f"ExecuTorch's own memory plan for this program needs {memory.total_bytes:,} bytes "
            f"(buffers, weights and optimizer state), over the plan's budget of "
            f"{plan.budget_bytes:,} bytes on {plan.device} (edgetrain predicted "
            f"{plan.predicted_peak_bytes:,}; see docs/results.md, Export to ExecuTorch, for why "
            "they differ); re-plan with a smaller --budget, --batch-size or a --policy that "
            "trains less, or --force-budget at plan time to export anyway"
        )
    out.mkdir(parents=True, exist_ok=True)
    _write_bytes(out / "model.pte", manager.buffer)
    _write_data(manager, out)
    manifest = _manifest(model, plan, lr, (manager, grads), memory, out)
    write_json_atomic(manifest, out / "manifest.json")
    write_text_atomic(readme(manifest), out / "README.md")
    return ExportResult(out, manifest)


@contextlib.contextmanager
def _as_planned(model: torch.nn.Module, plan: Plan):
    """The model as the plan trains it, restored afterwards: only the plan's trainable tensors
    require grad; training mode, batch norm in eval mode (its running statistics)."""
    trainable = set(trainable_names(plan))
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for name, p in model.named_parameters():
            p.requires_grad_(name in trainable)
        model.train()
        for m in model.modules():
            if isinstance(m, _BN):
                m.eval()
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def example_batch(
    model: torch.nn.Module,
    plan: Plan,
    example_input: torch.Tensor | None = None,
    target_example: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of the plan's size and sample (zeros) and a target its loss accepts: what the
    program is traced with (its values do not matter, its shapes and dtypes are the program's)."""
    if plan.input_shape is not None:
        dtype = getattr(torch, plan.input_dtype or "float32")
        x = torch.zeros((plan.batch_size, *plan.input_shape), dtype=dtype)
    elif example_input is not None:
        x = example_input.expand(plan.batch_size, *example_input.shape[1:]).contiguous()
    else:
        raise ExportUnsupportedError(
            "the plan records no input shape (made before plan schema 3); pass "
            "example_input= (batch 1), or re-plan with this edgetrain"
        )
    with torch.no_grad(), torch.random.fork_rng():
        out = model(x)
    loss = plan.loss if not plan.loss.startswith("custom:") else None
    return x, example_target(loss, out, None, target_example)


def _check_kernels(program, plan: Plan) -> None:
    """`ExportUnsupportedError` unless ExecuTorch's kernel library (as its runtime registers
    it) has a kernel for every operator of the program: a missing backward kernel would
    otherwise fail only on the device, at the first step (error 0x14, operator missing)."""
    from executorch.extension.pybindings.portable_lib import _get_operator_names

    have = set(_get_operator_names())
    ops = {
        f"{o.name}.{o.overload}" if o.overload else o.name
        for p in program.execution_plan
        for o in p.operators
    }
    missing = sorted(ops - have)
    if missing:
        raise ExportUnsupportedError(
            f"ExecuTorch's kernel library has no kernel for {len(missing)} operator(s) of the "
            f"training program: {', '.join(missing)}; the layers they differentiate cannot "
            "be trained through. Re-plan with a --policy whose trainable layers all come after "
            "them (e.g. --policy last:1), or use a model without that layer"
        )


def _output_dir(path: "str | os.PathLike[str]", force: bool) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"output {str(out)!r} is a file; give a folder (-o DIR)")
    if out.is_dir() and not force:
        others = sorted(p.name for p in out.iterdir() if p.name not in FILES)
        if others:
            raise OutputPathError(
                f"output folder {str(out)!r} holds files export did not write "
                f"({', '.join(others[:5])}); choose a new or empty folder, or pass --force"
            )
    return out


def _write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_data(manager, out: Path) -> None:
    """`model.ptd`: ExecuTorch writes its named-data file as `<key>.ptd` into a folder; it is
    written into a temporary folder beside `out` and renamed into place."""
    data = manager._tensor_data  # {file key: named data}; one key: the default external file
    if len(data) != 1:
        raise ExportUnsupportedError(
            f"ExecuTorch produced {len(data)} external data files ({', '.join(data)}), not one"
        )
    data[_DATA_NAME] = data.pop(next(iter(data)))
    with tempfile.TemporaryDirectory(dir=out, prefix=TEMP_PREFIX) as tmp:
        manager.write_tensor_data_to_file(tmp)
        os.replace(Path(tmp) / f"{_DATA_NAME}.ptd", out / "model.ptd")
    fsync_dir(out)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manifest(model, plan: Plan, lr: float, program, memory: ProgramMemory, out: Path) -> dict:
    import executorch

    manager, trainable = program  # the gradients' tensors, in the program's output order
    params = dict(model.named_parameters())
    specs = tensor_specs(manager.executorch_program)
    names = ["x", "y"]
    outs = ["loss", "output", *(f"grad:{n}" for n in trainable), *(f"param:{n}" for n in trainable)]
    predicted = plan.predicted_peak_bytes
    return {
        "format": "executorch",
        "executorch_version": getattr(executorch, "__version__", "unknown"),
        "torch_version": torch.__version__.split("+")[0],
        "method": METHOD,
        "files": {
            name: {"bytes": (out / name).stat().st_size, "sha256": _sha256(out / name)}
            for name in ("model.pte", "model.ptd")
        },
        "plan": {
            "model": plan.model,
            "device": plan.device,
            "executor": plan.executor.value,
            "batch_size": plan.batch_size,
            "loss": plan.loss,
            "budget_bytes": plan.budget_bytes,
            "predicted_peak_bytes": predicted,
        },
        "inputs": [{"name": n, **s} for n, s in zip(names, specs["inputs"])],
        "outputs": [{"name": n, **s} for n, s in zip(outs, specs["outputs"])],
        "trainable": [
            {
                "name": n,
                "program_name": PREFIX + n,  # as the runtime's named_parameters() names it
                "shape": list(params[n].shape),
                "dtype": str(params[n].dtype).removeprefix("torch."),
                "bytes": params[n].numel() * params[n].element_size(),
            }
            for n in trainable
        ],
        "frozen_tensors": len(params) - len(trainable),
        "optimizer": {
            "name": "sgd",
            "lr": lr,
            "momentum": MOMENTUM if plan.optimizer == "momentum" else 0.0,
            "dampening": 0.0,
            "weight_decay": plan.weight_decay,
            "nesterov": False,
        },
        "memory": _memory_record(memory, predicted),
    }


def _memory_record(memory: ProgramMemory, predicted: int) -> dict:
    diff = memory.total_bytes - predicted
    return {
        "predicted_peak_bytes": predicted,
        "executorch": {
            "planned_buffer_bytes": list(memory.planned_buffer_bytes),
            "planned_bytes": memory.planned_bytes,
            "trainable_bytes_in_planned": memory.trainable_bytes,
            "constant_bytes": memory.constant_bytes,
            "optimizer_state_bytes": memory.optimizer_state_bytes,
            "total_bytes": memory.total_bytes,
        },
        "difference_bytes": diff,
        "difference_ratio": round(diff / predicted, 4) if predicted else None,
    }


def manifest_of(out_dir: "str | os.PathLike[str]") -> dict:
    """The manifest an export wrote, checked (`OutputPathError` when the folder holds none,
    `ExportManifestError` when it is malformed: NOTE [ An exported folder is untrusted input ])."""
    return read_manifest(out_dir)
