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


# -- the code generator (edgetrain.codegen)


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


# -- other stages


class NonFiniteLossError(EdgetrainError, FloatingPointError):
    """Training produced non-finite losses too many times in a row."""


class CandidateUnsupportedError(EdgetrainError):
    """This executor cannot train the candidate's trainable set; the planner tries the next."""


class UnknownSystemError(InvalidArgumentError):
    """A strategy name names no surveyed system."""


class ClientDropoutError(EdgetrainError, ConnectionError):
    """A simulated client went offline for this round (the --dropout drill)."""


class ClientFaultError(EdgetrainError, RuntimeError):
    """A client injected a crash on purpose (fleet file `fault = "crash"`)."""


class FleetFileError(InvalidArgumentError):
    """A fleet file (TOML) is missing, unreadable or malformed: names the field, value and fix."""


class DeploymentError(EdgetrainError, RuntimeError):
    """The loopback Flower deployment could not start or did not finish."""


class CheckpointMismatchError(InvalidArgumentError):
    """A checkpoint belongs to another run (other plan, model, data, optimizer or settings):
    names what differs and the fix."""


class FederationFailedError(InvalidArgumentError):
    """The federation did not complete its rounds (the Flower run stopped early)."""


class Int8GraphFileError(InvalidArgumentError):
    """An int8 graph file is not one `save_graph` wrote."""


class QuantizationError(InvalidArgumentError):
    """A value cannot be represented in the int8 scheme (scale, multiplier, accumulator)."""


class AccumulatorOverflowError(QuantizationError):
    """An int32 accumulator of the integer graph overflowed."""


class UnsupportedModuleError(UnsupportedOpError):
    """The model holds a module the int8 converter does not know."""


class NodeScheduleError(EdgetrainError, ValueError):
    """A node-level schedule breaks a rule: a value used before it exists in RAM, memory over
    the budget, storage over capacity, or an impossible residency. Names stage, node, bytes."""


# -- reliability: checkpoints, plans and files from elsewhere


class CheckpointCorruptError(EdgetrainError, ValueError):
    """A checkpoint (or a federation's state file) fails its checksums or its metadata is
    missing or invalid: names the file, the field or tensor, and the fix."""


class CheckpointLockedError(EdgetrainError, RuntimeError):
    """Another live process holds the checkpoint directory's lock (names its PID)."""


class UntrustedPlanError(PlanFileError):
    """A plan names model code to import; it runs only when the user names the model
    (`--model`) or trusts the plan (`--trust-plan`), and the model's hash matches."""


class WeightsFileError(InvalidArgumentError):
    """A weights file is missing, truncated, not safetensors, or does not match the model."""


class OutputPathError(InvalidArgumentError):
    """An output path is a directory where a file is wanted (or the reverse), is not
    writable, or would overwrite a user's files without `--force`."""


class DeviceLimitError(InvalidArgumentError):
    """An argument exceeds what the device can hold (e.g. a budget above its memory): names
    the device, the numbers and the flag that forces it."""


class ClientReplyError(InvalidArgumentError):
    """A federated client's reply fails the server's schema: the client is rejected, with the
    reason in the round's report."""


class PlanPredictionError(UnsupportedPlanError):
    """A C plan's predicted peak is not what the code generator's own layout predicts for the
    plan as given: the plan was edited by hand, or made for another executor or version."""


class BuildFileError(CodegenError, InvalidArgumentError):
    """A compiled project's `edgetrain_build.json` is missing, truncated or malformed: names
    the file and how to regenerate it."""


class ExportUnsupportedError(InvalidArgumentError):
    """A plan asks for something an export format cannot express (ExecuTorch: paging,
    recomputation, micro-batching, batch-statistics batch norm, optimizers other than SGD):
    names the blocking decision and the `edgetrain plan` flags that avoid it."""


class ExportManifestError(InvalidArgumentError):
    """An exported folder's `manifest.json` is malformed, or a program file does not match
    the size and SHA-256 the manifest records: names the file and field, and says to export
    again."""
