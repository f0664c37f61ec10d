"""The Plan: what the training stage executes. Frozen, JSON-serialisable, schema-versioned.

The planner produces a `Plan`; the runtime (PyTorch hooks) and the code generator (C) only
execute it. A plan says, for every parameter tensor, whether and how it is trained; for every
stage of the graph, what happens to the tensors it saves for backward; how a batch is split into
micro-batches; which optimizer runs and whether updates are applied in place during backward;
and what the planner predicts this costs.
"""

from __future__ import annotations

import enum
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetrain.errors import InvalidArgumentError, PlanFileError
from edgetrain.ir import to_plain

PLAN_SCHEMA_VERSION = 1


class ParamDecision(enum.Enum):
    FROZEN = "frozen"
    TRAINABLE = "trainable"
    BIAS_ONLY = "bias_only"  # for a weight tensor: frozen, while its module's bias trains
    CHANNELS = "channels"  # only the first k output channels train (`channel_ratio`)


class ActivationDecision(enum.Enum):
    KEEP = "keep"  # saved tensors stay in RAM until backward
    RECOMPUTE = "recompute"  # only the stage input is kept; forward re-runs in backward
    PAGE = "page"  # saved tensors are written to storage and read back in backward


class Strategy(enum.Enum):
    EXACT = "exact"
    AUTO = "auto"
    KEEP_ALL = "keep-all"
    SQRT = "sqrt"
    GREEDY = "greedy"


class Objective(enum.Enum):
    TIME = "time"
    ENERGY = "energy"


class Executor(enum.Enum):
    """What runs the plan, and so whose memory the prediction describes."""

    PYTORCH = "pytorch"  # edgetrain.Trainer: the tensor-lifetime simulation of PyTorch's allocator
    C = "c"  # edgetrain compile: static arena, frozen weights in flash, BN folded, in-place SGD


class Precision(enum.Enum):
    """The arithmetic of the training step."""

    FP32 = "fp32"  # float32 throughout
    INT8 = (
        "int8"  # edgetrain.quant's integer graph with QAS (C executor: `compile --precision int8`)
    )


@dataclass(frozen=True, slots=True)
class ParamPlan:
    name: str
    decision: ParamDecision
    channel_ratio: float = 1.0


@dataclass(frozen=True, slots=True)
class StagePlan:
    """One stage of the chain (a top-level module or block) and its activation decision."""

    name: str
    modules: tuple[str, ...]
    decision: ActivationDecision


@dataclass(frozen=True, slots=True)
class TimelineSample:
    event: str
    live_bytes: int


@dataclass(frozen=True, slots=True)
class Prediction:
    peak_bytes: int
    storage_bytes_written: int
    latency_s: float
    energy_j: float
    timeline: tuple[TimelineSample, ...] = ()


@dataclass(frozen=True)
class Plan:
    model: str
    device: str
    strategy: Strategy
    objective: Objective
    budget_bytes: int
    batch_size: int
    micro_batch_size: int
    optimizer: str
    in_place_update: bool
    params: tuple[ParamPlan, ...]
    stages: tuple[StagePlan, ...]
    predicted: Prediction
    deadline_s: float | None = None
    freeze_batch_norm: bool = False
    executor: Executor = Executor.PYTORCH
    precision: Precision = Precision.FP32
    schema_version: int = PLAN_SCHEMA_VERSION
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.batch_size <= 0 or self.micro_batch_size <= 0:
            raise InvalidArgumentError(
                f"batch size {self.batch_size} and micro-batch size {self.micro_batch_size} "
                "must be positive"
            )
        if self.batch_size % self.micro_batch_size:
            raise InvalidArgumentError(
                f"micro-batch size {self.micro_batch_size} must divide the batch size "
                f"{self.batch_size}; pick a divisor"
            )
        if self.precision is Precision.INT8 and self.executor is not Executor.C:
            raise InvalidArgumentError(
                "an int8 plan runs on the C executor (edgetrain compile --precision int8), not "
                f"{self.executor.value}; plan with executor c"
            )

    @property
    def accumulation_steps(self) -> int:
        return self.batch_size // self.micro_batch_size

    @property
    def predicted_peak_bytes(self) -> int:
        return self.predicted.peak_bytes

    def trainable(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.decision is not ParamDecision.FROZEN)

    def to_dict(self) -> dict[str, Any]:
        return to_plain(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        if d.get("schema_version") != PLAN_SCHEMA_VERSION:
            raise InvalidArgumentError(
                f"plan schema_version {d.get('schema_version')!r} is not {PLAN_SCHEMA_VERSION}; "
                "re-run `edgetrain plan` with this version"
            )
        pred = d["predicted"]
        return cls(
            model=d["model"],
            device=d["device"],
            strategy=Strategy(d["strategy"]),
            objective=Objective(d["objective"]),
            budget_bytes=d["budget_bytes"],
            batch_size=d["batch_size"],
            micro_batch_size=d["micro_batch_size"],
            optimizer=d["optimizer"],
            in_place_update=d["in_place_update"],
            params=tuple(
                ParamPlan(p["name"], ParamDecision(p["decision"]), p["channel_ratio"])
                for p in d["params"]
            ),
            stages=tuple(
                StagePlan(s["name"], tuple(s["modules"]), ActivationDecision(s["decision"]))
                for s in d["stages"]
            ),
            predicted=Prediction(
                pred["peak_bytes"],
                pred["storage_bytes_written"],
                pred["latency_s"],
                pred["energy_j"],
                tuple(TimelineSample(**t) for t in pred["timeline"]),
            ),
            deadline_s=d.get("deadline_s"),
            freeze_batch_norm=d.get("freeze_batch_norm", False),
            executor=Executor(d.get("executor", Executor.PYTORCH.value)),
            precision=Precision(d.get("precision", Precision.FP32.value)),
            notes=tuple(d.get("notes", ())),
        )

    @classmethod
    def load(cls, path: "str | os.PathLike[str]") -> "Plan":
        """The plan in a JSON file (`edgetrain plan -o FILE`); `PlanFileError` says why not."""
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise PlanFileError(
                f"cannot read plan file {str(path)!r}: {why}; make one with "
                "`edgetrain plan ... -o plan.json`"
            ) from None
        try:
            return cls.from_json(text)
        except InvalidArgumentError as e:
            raise PlanFileError(f"plan file {str(path)!r}: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            return cls.from_dict(json.loads(text))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, InvalidArgumentError):
                raise
            raise InvalidArgumentError(f"not a valid edgetrain plan: {e}") from e
