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
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgetrain import validate
from edgetrain.cost import Device, Optimizer, device_names, load_device
from edgetrain.errors import (
    DeviceFileError,
    InvalidArgumentError,
    PlanFileError,
    UnknownDeviceError,
    UntrustedPlanError,
)
from edgetrain.ir import to_plain
from edgetrain.validate import file_sha256, model_spec_file

PLAN_SCHEMA_VERSION = 3
"""2: `budget_forced` and `model_sha256` (NOTE [ Plans are data ]); version 1 files still load,
as plans whose budget was not forced and whose model file has no recorded hash."""


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
    EXECUTORCH = "executorch"  # edgetrain export: ExecuTorch's joint forward-backward program


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
    budget_forced: bool = False  # the budget exceeds the device's memory on purpose
    model_sha256: str | None = None  # SHA-256 of the model file (None: a built-in model)
    loss: str = "cross-entropy"  # `validate.LOSS_NAMES`, or `custom:NAME` (pass the callable)
    weight_decay: float = 0.0  # L2 (sgd, momentum, adam) or decoupled (adamw)
    schedule: str = "constant"  # the learning-rate schedule (`validate.lr_schedule`)
    # one sample of the example input (no batch dimension) and its dtype; None in plans made
    # before schema 3, which fix no input (NOTE [ Where data meets the plan ])
    input_shape: tuple[int, ...] | None = None
    input_dtype: str | None = None
    # the PyTorch executor saves only what the trained gradients need (NOTE [ Lean backward ]
    # in runtime/_lean.py); plans without the field ran, and still run, plain PyTorch
    lean_backward: bool = False
    # activation sites (`module#k`) that keep plain PyTorch's saved tensor under lean backward
    # because another node saves that tensor anyway (NOTE [ Lean saved tensors ])
    plain_activations: tuple[str, ...] = ()
    in_place_activations: tuple[str, ...] = ()  # NOTE [ Lean in-place activations ]
    # LoRA adapters (NOTE [ LoRA adapters ] in models/_lora.py): rank and the adapted module
    # paths; the Trainer adds them to a model that lacks them and merges them on exit
    lora_rank: int = 0
    lora_modules: tuple[str, ...] = ()
    # (module path, samples per chunk) of the frozen segments that run a few samples at a time
    # under lean backward (NOTE [ Sample-chunked frozen segments ] in cost/_chunk.py)
    chunked_modules: tuple[tuple[str, int], ...] = ()

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
        for module, chunk in self.chunked_modules:
            bad = chunk < 1 or self.micro_batch_size % chunk or self.in_place_update
            if bad or not self.lean_backward:
                raise InvalidArgumentError(
                    f"chunked module {module!r} runs {chunk} samples at a time: that needs "
                    f"lean backward, a chunk dividing the micro-batch of "
                    f"{self.micro_batch_size} and no in-place update (each chunk accumulates "
                    "its own gradient); re-plan"
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
        """The plan as its file holds it; `predicted_peak_bytes` repeats `predicted.peak_bytes`
        at the top, as `edgetrain plan --json` prints it."""
        return {**to_plain(asdict(self)), "predicted_peak_bytes": self.predicted.peak_bytes}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def check_matches_model(self, model: Any) -> None:
        """`PlanFileError` unless the plan lists exactly `model`'s parameters
        (`check_plan_matches_model`)."""
        check_plan_matches_model(self, model)

    def model_to_build(
        self,
        model: str | None = None,
        *,
        trust_plan: bool = False,
        plan_path: "str | os.PathLike[str] | None" = None,
    ) -> str:
        """The model spec a consumer may build for this plan (`trusted_model_spec`)."""
        return trusted_model_spec(self, model, trust_plan=trust_plan, plan_path=plan_path)

    @classmethod
    def from_dict(cls, d: Any, *, device: "str | os.PathLike[str] | Device | None" = None) -> Plan:
        """Validate `d` (a plan as `to_dict` writes it) and build the Plan; `PlanFileError`
        names the field, the value and the fix (NOTE [ Plans are data ]).

        `device`: the device the plan was made for, needed when it is not in the catalog (a
        board's TOML file); otherwise the plan's device is looked up in the catalog."""
        plan = _PlanReader(d).plan()
        _check_consistency(plan, _plan_device(plan, device))
        return plan

    @classmethod
    def load(
        cls,
        path: "str | os.PathLike[str]",
        *,
        device: "str | os.PathLike[str] | Device | None" = None,
    ) -> Plan:
        """The plan in a JSON file (`edgetrain plan -o FILE`); `PlanFileError` says why not."""
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            why = e.strerror or str(e)
            raise PlanFileError(
                f"cannot read plan file {str(path)!r}: {why}; make one with "
                "`edgetrain plan ... -o plan.json`"
            ) from None
        if len(raw) > MAX_PLAN_FILE_BYTES:
            raise PlanFileError(
                f"plan file {str(path)!r} holds {len(raw):,} bytes, more than any plan "
                f"({MAX_PLAN_FILE_BYTES:,}); is it a plan? make one with `edgetrain plan -o`"
            )
        try:
            return cls.from_json(raw.decode("utf-8"), device=device)
        except UnicodeDecodeError as e:
            raise PlanFileError(
                f"plan file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start}); "
                "make one with `edgetrain plan ... -o plan.json`"
            ) from None
        except InvalidArgumentError as e:
            raise type(e)(f"plan file {str(path)!r}: {e}") from None

    @classmethod
    def from_json(
        cls, text: str, *, device: "str | os.PathLike[str] | Device | None" = None
    ) -> Plan:
        try:
            d = json.loads(text, parse_constant=_reject_constant)
        except RecursionError:
            raise PlanFileError("not a valid edgetrain plan: JSON nested too deeply") from None
        except ValueError as e:  # JSONDecodeError, or NaN / Infinity (`_reject_constant`)
            raise PlanFileError(f"not a valid edgetrain plan: {e}") from None
        return cls.from_dict(d, device=device)


MAX_PLAN_FILE_BYTES = 64 << 20


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a plan may hold (JSON has no {name})")


# NOTE [ Plans are data ]
#     A plan file may come from elsewhere (another machine, a colleague, a hand edit), so it is
#     untrusted input. `Plan.from_dict` / `from_json` / `load` (which `edgetrain train`,
#     `edgetrain compile` and the federation use) accept only what `to_dict` writes: a JSON
#     object with exactly the known fields, each of its type (a bool is not an integer, 2.0 is
#     not a batch size, NaN is not a ratio) and in its range, and consistent across fields —
#     the micro-batch divides the batch, the prediction fits the budget, the budget fits the
#     device's memory unless `budget_forced` says it was meant, the device is known, and what
#     the executor cannot do (the C trainer micro-batches nothing, pages nothing, runs SGD
#     only) is not asked of it. Every refusal is a `PlanFileError` naming the field.
#     Loading never imports anything: the `model` field is only a string until a consumer asks
#     `trusted_model_spec`, which allows a model file only when the user names it (`--model`)
#     or trusts the plan (`--trust-plan`), and then only when the file's SHA-256 is the one
#     the plan recorded when it was made. Whether the plan's parameters are the model's is
#     `check_plan_matches_model`, once the model is built.

_FIX = "re-run `edgetrain plan ... -o plan.json` rather than editing the file"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DTYPE = re.compile(r"(float|bfloat|int|uint|bool|complex)[0-9]{0,3}")
_DEVICE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_HINTS = {
    Strategy: "exact, auto, keep-all, sqrt or greedy",
    Objective: "time or energy",
    Executor: "pytorch, c or executorch",
    Precision: "fp32 or int8",
    ParamDecision: "frozen, trainable, bias_only or channels",
    ActivationDecision: "keep, recompute or page",
}


def _show(v: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    kinds.update({list: "an array", dict: "an object", type(None): "null"})
    text = repr(v)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({kinds.get(type(v), type(v).__name__)})"


class _PlanReader:
    """Reads one plan dict field by field; the first problem is a `PlanFileError`."""

    _TOP = (
        "model device strategy objective budget_bytes batch_size micro_batch_size optimizer "
        "in_place_update params stages predicted deadline_s freeze_batch_norm executor "
        "precision schema_version notes budget_forced model_sha256 loss input_shape input_dtype "
        "predicted_peak_bytes weight_decay schedule lean_backward plain_activations lora_rank "
        "lora_modules in_place_activations chunked_modules"
    ).split()
    # fields a version-1 file may leave out (they had defaults then)
    _V1_OPTIONAL = frozenset(
        "deadline_s freeze_batch_norm executor precision notes budget_forced model_sha256 "
        "loss input_shape input_dtype predicted_peak_bytes weight_decay schedule "
        "lean_backward plain_activations lora_rank lora_modules in_place_activations "
        "chunked_modules".split()
    )
    _V2_OPTIONAL = frozenset(
        "deadline_s loss input_shape input_dtype predicted_peak_bytes weight_decay schedule "
        "lean_backward plain_activations lora_rank lora_modules in_place_activations "
        "chunked_modules".split()
    )

    _LATER = frozenset(  # optional in version 3 too: added without a version bump
        "deadline_s predicted_peak_bytes lean_backward plain_activations lora_rank "
        "lora_modules in_place_activations chunked_modules".split()
    )

    def __init__(self, d: Any) -> None:
        if not isinstance(d, Mapping):
            raise PlanFileError(
                f"not a valid edgetrain plan: the file holds {_show(d)}, not a JSON object of "
                f"plan fields; {_FIX}"
            )
        self.d = d

    def bad(self, field: str, v: Any, need: str) -> PlanFileError:
        return PlanFileError(f"field '{field}' = {_show(v)}: {need}; {_FIX}")

    def obj(self, v: Any, where: str, keys: Iterable[str], optional=frozenset()) -> Mapping:
        keys = tuple(keys)
        if not isinstance(v, Mapping):
            raise self.bad(where, v, f"must be an object with fields {', '.join(keys)}")
        unknown = [k for k in v if k not in keys]
        if unknown:
            raise PlanFileError(
                f"unknown field '{where + '.' if where else ''}{unknown[0]}' in the plan; "
                f"allowed: {', '.join(keys)}; {_FIX}"
            )
        missing = [k for k in keys if k not in v and k not in optional]
        if missing:
            raise PlanFileError(
                f"missing field '{where + '.' if where else ''}{missing[0]}' in the plan; {_FIX}"
            )
        return v

    def int_(self, v: Any, where: str, lo: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise self.bad(where, v, f"must be an integer >= {lo}")
        return v

    def num(self, v: Any, where: str, *, positive: bool = False, hi: float | None = None) -> float:
        ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        if ok and (v <= 0 if positive else v < 0):
            ok = False
        if ok and hi is not None and v > hi:
            ok = False
        if not ok:
            rng = ("> 0" if positive else ">= 0") + (f" and <= {hi:g}" if hi is not None else "")
            raise self.bad(where, v, f"must be a finite number {rng}")
        return float(v)

    def str_(self, v: Any, where: str, *, empty: bool = False, limit: int = 4096) -> str:
        if not isinstance(v, str) or (not empty and not v) or len(v) > limit or "\0" in v:
            raise self.bad(where, v, f"must be a{'' if empty else ' non-empty'} string")
        return v

    def bool_(self, v: Any, where: str) -> bool:
        if not isinstance(v, bool):
            raise self.bad(where, v, "must be true or false")
        return v

    def enum_(self, kind: type[enum.Enum], v: Any, where: str) -> Any:
        if isinstance(v, str):
            for member in kind:
                if member.value == v:
                    return member
        raise self.bad(where, v, f"must be one of {_HINTS[kind]}")

    def array(self, v: Any, where: str) -> list:
        if not isinstance(v, list):
            raise self.bad(where, v, "must be an array")
        return v

    def plan(self) -> Plan:
        d = self.d
        version = d.get("schema_version")
        if isinstance(version, bool) or version not in (1, 2, PLAN_SCHEMA_VERSION):
            raise PlanFileError(
                f"plan schema_version {version!r} is not {PLAN_SCHEMA_VERSION} (or 1, 2); re-run "
                "`edgetrain plan` with this version of edgetrain"
            )
        optional = {1: self._V1_OPTIONAL, 2: self._V2_OPTIONAL}.get(version, set(self._LATER))
        self.obj(d, "", self._TOP, optional)
        opt = d["optimizer"]
        if not isinstance(opt, str) or opt not in {o.value for o in Optimizer}:
            raise self.bad(
                "optimizer", opt, f"must be one of {', '.join(o.value for o in Optimizer)}"
            )
        sha = d.get("model_sha256")
        if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
            raise self.bad("model_sha256", sha, "must be null or 64 lowercase hex digits")
        device = self.str_(d["device"], "device", limit=64)
        if not _DEVICE_NAME.fullmatch(device):
            raise self.bad("device", device, "must be a device name (`edgetrain devices`)")
        top = d.get("predicted_peak_bytes")
        inner = d["predicted"].get("peak_bytes") if isinstance(d["predicted"], Mapping) else None
        if "predicted_peak_bytes" in d and (type(top) is not int or top != inner):
            raise self.bad(
                "predicted_peak_bytes", top, f"must repeat predicted.peak_bytes ({inner!r})"
            )
        try:
            return self._build(d, device, sha, opt)
        except PlanFileError:
            raise
        except InvalidArgumentError as e:  # Plan.__post_init__: micro-batch, int8 executor
            raise PlanFileError(f"{e}; {_FIX}") from None

    def _build(self, d: Mapping, device: str, sha: str | None, opt: str) -> Plan:
        deadline = d.get("deadline_s")
        notes = self.array(d.get("notes", []), "notes")
        return Plan(
            model=self.str_(d["model"], "model"),
            device=device,
            strategy=self.enum_(Strategy, d["strategy"], "strategy"),
            objective=self.enum_(Objective, d["objective"], "objective"),
            budget_bytes=self.int_(d["budget_bytes"], "budget_bytes", 1),
            batch_size=self.int_(d["batch_size"], "batch_size", 1),
            micro_batch_size=self.int_(d["micro_batch_size"], "micro_batch_size", 1),
            optimizer=opt,
            in_place_update=self.bool_(d["in_place_update"], "in_place_update"),
            params=self.params(d["params"]),
            stages=self.stages(d["stages"]),
            predicted=self.prediction(d["predicted"]),
            deadline_s=None
            if deadline is None
            else self.num(deadline, "deadline_s", positive=True),
            freeze_batch_norm=self.bool_(d.get("freeze_batch_norm", False), "freeze_batch_norm"),
            executor=self.enum_(Executor, d.get("executor", "pytorch"), "executor"),
            precision=self.enum_(Precision, d.get("precision", "fp32"), "precision"),
            schema_version=PLAN_SCHEMA_VERSION,
            notes=tuple(self.str_(n, f"notes[{i}]", empty=True) for i, n in enumerate(notes)),
            budget_forced=self.bool_(d.get("budget_forced", False), "budget_forced"),
            model_sha256=sha,
            loss=self.loss(d.get("loss", "cross-entropy")),
            weight_decay=self.weight_decay(d.get("weight_decay", 0.0)),
            schedule=self.schedule(d.get("schedule", "constant")),
            lean_backward=self.bool_(d.get("lean_backward", False), "lean_backward"),
            plain_activations=self.sites(d.get("plain_activations", []), "plain_activations"),
            in_place_activations=self.sites(
                d.get("in_place_activations", []), "in_place_activations"
            ),
            chunked_modules=self.chunks(d.get("chunked_modules", [])),
            **self.lora(d.get("lora_rank", 0), d.get("lora_modules", [])),
            **self.input_spec(d.get("input_shape"), d.get("input_dtype")),
        )

    def lora(self, rank: Any, modules: Any) -> dict[str, Any]:
        """Rank 0 with no modules (no adapters), or 1..4096 (`models.parse_lora`'s range) with
        the adapted modules named: a file's rank must not make the Trainer allocate blindly."""
        r = self.int_(rank, "lora_rank", 0)
        if r > 4096:
            raise self.bad("lora_rank", rank, "must be in 0..4096")
        names = self.sites(modules, "lora_modules")
        if bool(r) != bool(names):
            raise self.bad(
                "lora_modules",
                list(names),
                f"must name the adapted modules iff lora_rank > 0 ({r})",
            )
        return {"lora_rank": r, "lora_modules": names}

    def chunks(self, v: Any) -> tuple[tuple[str, int], ...]:
        """[[module path, samples per chunk], ...] (the plan checks the chunks divide the
        micro-batch)."""
        out = []
        for i, item in enumerate(self.array(v, "chunked_modules")):
            where = f"chunked_modules[{i}]"
            if not isinstance(item, list) or len(item) != 2:
                raise self.bad(where, item, "must be a [module path, samples per chunk] pair")
            out.append((self.str_(item[0], where, limit=1024), self.int_(item[1], where, 1)))
        return tuple(out)

    def sites(self, v: Any, where: str) -> tuple[str, ...]:
        items = self.array(v, where)
        return tuple(
            self.str_(s, f"{where}[{i}]", empty=True, limit=1024) for i, s in enumerate(items)
        )

    def weight_decay(self, v: Any) -> float:
        ok = not isinstance(v, bool) and isinstance(v, (int, float))
        if not (ok and math.isfinite(v) and 0 <= v < 1):
            raise self.bad("weight_decay", v, "must be a number in [0, 1)")
        return float(v)

    def schedule(self, v: Any) -> str:
        try:
            if isinstance(v, str) and validate.lr_schedule(v) == v:  # as written, no coercion
                return v
        except InvalidArgumentError:
            pass
        raise self.bad("schedule", v, "must be constant, cosine, step:N:G or warmup:N+...")

    def loss(self, v: Any) -> str:
        try:
            if validate.loss_name(v) == v:  # exactly as written: nothing is coerced
                return v
        except InvalidArgumentError:
            pass
        raise self.bad("loss", v, f"must be one of {', '.join(validate.LOSS_NAMES)} or custom:NAME")

    def input_spec(self, shape: Any, dtype: Any) -> dict[str, Any]:
        if shape is None and dtype is None:
            return {"input_shape": None, "input_dtype": None}
        dims = self.array(shape, "input_shape")
        if len(dims) > 8:
            raise self.bad("input_shape", shape, "must have at most 8 dimensions")
        dims_ = tuple(self.int_(n, f"input_shape[{i}]", 1) for i, n in enumerate(dims))
        if not (isinstance(dtype, str) and _DTYPE.fullmatch(dtype)):
            raise self.bad("input_dtype", dtype, "must be a tensor dtype such as float32 or int64")
        return {"input_shape": dims_, "input_dtype": dtype}

    def params(self, v: Any) -> tuple[ParamPlan, ...]:
        items = self.array(v, "params")
        if not items:
            raise self.bad("params", v, "must list every parameter of the model (it is empty)")
        out, seen = [], set()
        for i, item in enumerate(items):
            where = f"params[{i}]"
            q = self.obj(item, where, ("name", "decision", "channel_ratio"))
            name = self.str_(q["name"], f"{where}.name", limit=1024)
            if name in seen:
                raise self.bad(f"{where}.name", name, "must be unique (listed twice)")
            seen.add(name)
            decision = self.enum_(ParamDecision, q["decision"], f"{where}.decision")
            ratio = self.num(q["channel_ratio"], f"{where}.channel_ratio", positive=True, hi=1.0)
            if decision is not ParamDecision.CHANNELS and ratio != 1.0:
                raise self.bad(
                    f"{where}.channel_ratio",
                    q["channel_ratio"],
                    "must be 1.0 unless decision is channels",
                )
            out.append(ParamPlan(name, decision, ratio))
        return tuple(out)

    def stages(self, v: Any) -> tuple[StagePlan, ...]:
        out = []
        for i, item in enumerate(self.array(v, "stages")):
            where = f"stages[{i}]"
            q = self.obj(item, where, ("name", "modules", "decision"))
            mods = self.array(q["modules"], f"{where}.modules")
            out.append(
                StagePlan(
                    self.str_(q["name"], f"{where}.name", empty=True, limit=1024),
                    tuple(
                        self.str_(m, f"{where}.modules[{j}]", empty=True, limit=1024)
                        for j, m in enumerate(mods)
                    ),
                    self.enum_(ActivationDecision, q["decision"], f"{where}.decision"),
                )
            )
        return tuple(out)

    def prediction(self, v: Any) -> Prediction:
        keys = ("peak_bytes", "storage_bytes_written", "latency_s", "energy_j", "timeline")
        q = self.obj(v, "predicted", keys)
        timeline = []
        for i, t in enumerate(self.array(q["timeline"], "predicted.timeline")):
            where = f"predicted.timeline[{i}]"
            t = self.obj(t, where, ("event", "live_bytes"))
            timeline.append(
                TimelineSample(
                    self.str_(t["event"], f"{where}.event", empty=True),
                    self.int_(t["live_bytes"], f"{where}.live_bytes", 0),
                )
            )
        return Prediction(
            self.int_(q["peak_bytes"], "predicted.peak_bytes", 0),
            self.int_(q["storage_bytes_written"], "predicted.storage_bytes_written", 0),
            self.num(q["latency_s"], "predicted.latency_s"),
            self.num(q["energy_j"], "predicted.energy_j"),
            tuple(timeline),
        )


def _plan_device(plan: Plan, device: "str | os.PathLike[str] | Device | None") -> Device:
    """The device the plan names: the caller's (a board file), or the catalog's."""
    if device is not None:
        try:
            dev = load_device(device)
        except (UnknownDeviceError, DeviceFileError) as e:
            raise PlanFileError(f"the plan's device: {e}") from None
        if dev.name != plan.device:
            raise PlanFileError(
                f"the plan was made for device {plan.device!r}, not {dev.name!r}; plan for "
                f"{dev.name} with `edgetrain plan --device ...`"
            )
        return dev
    if plan.device not in device_names():
        raise PlanFileError(
            f"field 'device' = {plan.device!r}: not a catalog device ({', '.join(device_names())})"
            "; for your own board pass its TOML file (`--device path/to/board.toml`), or "
            f"{_FIX}"
        )
    return load_device(plan.device)


def _check_consistency(plan: Plan, dev: Device) -> None:
    """Cross-field rules (NOTE [ Plans are data ]); `Plan.__post_init__` has checked the
    micro-batch and the int8 executor already."""
    peak, budget = plan.predicted.peak_bytes, plan.budget_bytes
    if peak > budget:
        raise PlanFileError(
            f"field 'predicted.peak_bytes' = {peak:,} is more than field 'budget_bytes' = "
            f"{budget:,}: the plan does not fit its own budget; {_FIX}"
        )
    if budget > dev.ram_bytes and not plan.budget_forced:
        raise PlanFileError(
            f"field 'budget_bytes' = {budget:,} is more than {dev.name}'s memory "
            f"({dev.ram_bytes:,} bytes) and the plan does not say it was forced "
            f"(budget_forced false); {_FIX} (with --force-budget to mean it)"
        )
    if plan.executor is Executor.C:
        what = []
        if plan.micro_batch_size != plan.batch_size:
            what.append(f"micro-batches ({plan.batch_size} in {plan.micro_batch_size}s)")
        if plan.optimizer != Optimizer.SGD.value:
            what.append(f"optimizer {plan.optimizer}")
        if plan.weight_decay:
            what.append(f"weight decay {plan.weight_decay:g}")
        if plan.schedule != "constant":
            what.append(f"learning-rate schedule {plan.schedule}")
        if not plan.in_place_update:
            what.append("updates after backward")
        held = [s.name for s in plan.stages if s.decision is not ActivationDecision.KEEP]
        if held:
            what.append(f"recompute or paging (stage {held[0]!r})")
        if what:
            raise PlanFileError(
                "the C executor keeps every activation and applies plain SGD in place, one "
                f"batch at a time; this plan asks for {', '.join(what)}; {_FIX}"
            )
    if plan.executor is Executor.EXECUTORCH:
        _check_executorch(plan)
    if plan.in_place_update and plan.micro_batch_size != plan.batch_size:
        raise PlanFileError(
            f"the plan updates in place during backward but accumulates "
            f"{plan.accumulation_steps} micro-batches (batch {plan.batch_size}, micro-batch "
            f"{plan.micro_batch_size}): in-place updates need one micro-batch per batch; {_FIX}"
        )
    if plan.deadline_s is not None and plan.predicted.latency_s > plan.deadline_s * (1 + 1e-9):
        raise PlanFileError(
            f"the plan predicts a step of {plan.predicted.latency_s:.4g} s, longer than its "
            f"deadline of {plan.deadline_s:.4g} s; {_FIX}"
        )


def _check_executorch(plan: Plan) -> None:
    """An ExecuTorch plan asks only what its program expresses (NOTE [ What ExecuTorch's
    training export expresses ], edgetrain/export/_checks.py)."""
    what = []
    if plan.micro_batch_size != plan.batch_size:
        what.append(f"micro-batches ({plan.batch_size} in {plan.micro_batch_size}s)")
    if plan.optimizer not in (Optimizer.SGD.value, Optimizer.MOMENTUM.value):
        what.append(f"optimizer {plan.optimizer}")
    held = [s.name for s in plan.stages if s.decision is not ActivationDecision.KEEP]
    if held:
        what.append(f"recompute or paging (stage {held[0]!r})")
    if what:
        raise PlanFileError(
            "the ExecuTorch executor keeps every activation and runs SGD (with momentum) over "
            f"whole batches; this plan asks for {', '.join(what)}; {_FIX}"
        )


def check_plan_matches_model(plan: Plan, model: Any) -> None:
    """`PlanFileError` unless `plan.params` names exactly the parameters of `model` (a
    `torch.nn.Module`, or anything with `named_parameters()`): a plan made for another model,
    or with a truncated or edited parameter list, is refused before it trains or compiles."""
    have = [name for name, _ in model.named_parameters()]
    listed = [p.name for p in plan.params]
    have_set, listed_set = set(have), set(listed)
    missing = [n for n in have if n not in listed_set]
    unknown = [n for n in listed if n not in have_set]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the model's parameters are missing ({_few(missing)})")
        if unknown:
            parts.append(f"{len(unknown)} are not the model's ({_few(unknown)})")
        raise PlanFileError(
            f"the plan lists {len(listed)} parameters and model {plan.model!r} has {len(have)}: "
            + "; ".join(parts)
            + f"; the plan was made for another model or edited: {_FIX}"
        )


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f", ... {len(names) - 3} more" if len(names) > 3 else "")


def trusted_model_spec(
    plan: Plan,
    model: str | None = None,
    *,
    trust_plan: bool = False,
    plan_path: "str | os.PathLike[str] | None" = None,
) -> str:
    """The model spec a consumer may build for `plan`, without running code the user did not
    choose (NOTE [ Plans are data ]).

    A built-in model name is always allowed. A model file (`path/to/file.py:factory`) is
    allowed when the user names it (`model`, the CLI's `--model`) or trusts the plan
    (`trust_plan`, `--trust-plan`), and only when the file's SHA-256 is the plan's
    `model_sha256`. Raises `UntrustedPlanError` (a model file nobody vouched for, or one whose
    hash differs) or `PlanFileError` (the named model is not the plan's).

    Plans record a model file by its absolute path; when that path is gone (the plan and the
    model were copied elsewhere together) the file of the same name beside `plan_path` is
    used, if its SHA-256 is the plan's."""
    plan_file = model_spec_file(plan.model)
    if model is None:
        if plan_file is None:
            return plan.model
        if not plan_file.is_file() and plan_path is not None:
            beside = Path(plan_path).expanduser().resolve().parent / plan_file.name
            if beside.is_file():
                factory = plan.model.rpartition(":")[2] if ":" in plan.model else ""
                spec = f"{beside}:{factory}" if factory else str(beside)
                if trust_plan:
                    _check_model_hash(plan, beside, spec)
                    return spec
                plan_file = beside
        if not trust_plan:
            raise UntrustedPlanError(
                f"the plan's model {plan.model!r} is Python code, and a plan file may come from "
                "anywhere: edgetrain imports it only when you name the model yourself "
                f"(`--model {plan.model}`, after reading the file) or trust the plan "
                "(`--trust-plan`)"
            )
        _check_model_hash(plan, plan_file, plan.model)
        return plan.model
    user_file = model_spec_file(model)
    if (plan_file is None) != (user_file is None) or (
        plan_file is None and model.strip() != plan.model.strip()
    ):
        raise PlanFileError(
            f"the plan was made for model {plan.model!r}, not {model!r}; plan this model with "
            f"`edgetrain plan --model {model} ... -o plan.json`"
        )
    if plan_file is not None and user_file is not None:
        if model.rpartition(":")[2] != plan.model.rpartition(":")[2]:
            raise PlanFileError(
                f"the plan was made for factory {plan.model!r}, not {model!r}; name the same "
                "factory, or re-plan this one"
            )
        _check_model_hash(plan, user_file, model)
    return model


def _check_model_hash(plan: Plan, path: Path, spec: str) -> None:
    if plan.model_sha256 is None:
        raise UntrustedPlanError(
            f"the plan records no SHA-256 of its model file {plan.model!r} (made by an older "
            "edgetrain, or edited), so nothing shows the file is the one it was planned for; "
            f"re-plan with `edgetrain plan --model {spec} ... -o plan.json`"
        )
    try:
        digest = file_sha256(path)
    except (OSError, ValueError) as e:  # missing, a directory, a NUL byte in the name
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise PlanFileError(
            f"cannot read model file {str(path)!r} (from {spec!r}): {why}"
        ) from None
    if digest != plan.model_sha256:
        raise UntrustedPlanError(
            f"model file {str(path)!r} has SHA-256 {digest[:16]}..., not the "
            f"{plan.model_sha256[:16]}... the plan was made for: the file changed since "
            f"planning (or is another file); re-plan with `edgetrain plan --model {spec} ... "
            "-o plan.json`"
        )
