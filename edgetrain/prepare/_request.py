"""`PlanRequest`: everything `plan()` is asked, as one frozen, validated record."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any

from edgetrain import validate
from edgetrain.capture import loss_label
from edgetrain.cost import Device, Optimizer
from edgetrain.errors import InvalidArgumentError
from edgetrain.planner import Executor, Objective, Precision, Strategy

SAFETY_MARGIN = 0.03

_HINTS = {
    Strategy: "exact, auto, keep-all, sqrt or greedy",
    Objective: "time or energy",
    Executor: "pytorch (Trainer) or c (edgetrain compile)",
    Precision: "fp32 or int8",
}


def _enum(kind: type[enum.Enum], value: Any, what: str) -> Any:
    if value is None or isinstance(value, kind):
        return value
    try:
        return kind(str(value).lower())
    except ValueError:
        raise InvalidArgumentError(f"unknown {what} {value!r}; choose {_HINTS[kind]}") from None


@dataclass(frozen=True)
class PlanRequest:
    """What to plan. Strings are accepted for the enum fields and parsed once, here.

    `strategy`: `exact` (changes no mathematics), `auto` (may also train a sparse subset and
    fall back to the C executor), or a baseline solver (`keep-all`, `sqrt`, `greedy`) at the
    full batch. `policy`: what trains — `all`, `bias-only`, `last:K`, parameter names, or
    `fisher` (layers ranked on `calibration`, a few local samples `(x, y)`). `executor` /
    `precision`: pinned, or None to let `auto` choose (NOTE [ Executors auto tries ]).
    `budget_bytes` None means the device's memory. `safety_margin`: NOTE [ Safety margin ].
    `loss`: a name (`cross-entropy`, `mse`, `bce`, `l1`, `smooth-l1`) or a callable
    `loss_fn(output, target)`, captured and costed with the model and recorded in the plan;
    `target_example` (batch size 1) when the default target does not suit the loss.
    `measure`: run a PyTorch plan on this host before returning it (NOTE [ Plans are checked
    against the allocator ]); False trusts the simulation alone. `weight_decay` (L2 for sgd,
    momentum and adam; decoupled for adamw) and the learning-rate `schedule`
    (`validate.lr_schedule`) are recorded in the plan for the Trainer.
    """

    device: "str | Device" = "nrf52840"
    budget_bytes: int | None = None
    batch_size: int = 1
    objective: Objective = Objective.TIME
    strategy: Strategy = Strategy.AUTO
    optimizer: Optimizer = Optimizer.SGD
    deadline_s: float | None = None
    allow_paging: bool = True
    policy: str | None = None
    name: str = "model"
    freeze_batch_norm: bool | None = None
    safety_margin: float = SAFETY_MARGIN
    calibration: Any = field(default=None, compare=False, repr=False)
    executor: Executor | None = None
    precision: Precision | None = None
    loss: Any = "cross-entropy"
    target_example: Any = field(default=None, compare=False, repr=False)
    measure: bool = True
    weight_decay: float = 0.0
    schedule: str = "constant"

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        put("batch_size", validate.batch_size(self.batch_size))
        if self.budget_bytes is not None:
            put("budget_bytes", validate.budget_bytes(self.budget_bytes))
        if self.deadline_s is not None:
            put("deadline_s", validate.positive_float(self.deadline_s, "deadline (--deadline-s)"))
        if self.policy is not None:
            put("policy", validate.policy(self.policy))
        if not 0 <= self.safety_margin < 1:
            raise InvalidArgumentError(
                f"safety margin must be in [0, 1), got {self.safety_margin!r} (default 0.03)"
            )
        put("strategy", _enum(Strategy, self.strategy, "strategy"))
        put("objective", _enum(Objective, self.objective, "objective"))
        put("executor", _enum(Executor, self.executor, "executor"))
        put("precision", _enum(Precision, self.precision, "precision"))
        put("optimizer", Optimizer.parse(self.optimizer))
        if not callable(self.loss):
            put("loss", validate.loss_name(self.loss))
        put("weight_decay", validate.weight_decay(self.weight_decay))
        put("schedule", validate.lr_schedule(self.schedule))
        loss_label(self.loss)  # a `custom:...` string is refused: pass the callable
        self._check_combination()

    @property
    def loss_label(self) -> str:
        """The loss as the plan records it (`capture.loss_label`)."""
        return loss_label(self.loss)

    def _check_combination(self) -> None:
        opt, execu, prec, strat = self.optimizer, self.executor, self.precision, self.strategy
        if execu is Executor.C and self.schedule != "constant":
            raise InvalidArgumentError(
                f"the C executor trains at a constant learning rate, not schedule "
                f"{self.schedule!r}; use --executor pytorch or --schedule constant"
            )
        if execu is Executor.C and self.weight_decay > 0:
            raise InvalidArgumentError(
                f"the C executor trains with plain SGD, without weight decay (asked "
                f"{self.weight_decay:g}); use --executor pytorch or --weight-decay 0"
            )
        if execu is Executor.C and opt is not Optimizer.SGD:
            raise InvalidArgumentError(
                f"the C executor trains with plain SGD, not {opt.value}; use --optimizer sgd"
            )
        if execu is Executor.C and self.loss_label.startswith("custom:"):
            raise InvalidArgumentError(
                f"the C executor has kernels for the named losses only, not {self.loss_label!r}; "
                "use --loss cross-entropy|mse|l1|smooth-l1|bce, or --executor pytorch"
            )
        if prec is Precision.INT8 and self.loss_label != "cross-entropy":
            raise InvalidArgumentError(
                f"int8 QAS training in C trains classifiers with softmax cross-entropy, not loss "
                f"{self.loss_label!r}; use --precision fp32 or --executor pytorch"
            )
        if prec is Precision.INT8 and execu is Executor.PYTORCH:
            raise InvalidArgumentError(
                "int8 training runs on the C executor (edgetrain compile --precision int8); use "
                "--executor c, or fp32 for the PyTorch Trainer"
            )
        if prec is Precision.INT8 and opt is not Optimizer.SGD:
            raise InvalidArgumentError(
                f"int8 QAS training uses plain SGD, not {opt.value}; use --optimizer sgd"
            )
        if strat is Strategy.EXACT and self.policy not in (None, "all", "full"):
            raise InvalidArgumentError(
                f"strategy exact trains every parameter; policy {self.policy!r} needs "
                "--strategy auto"
            )
        if self.policy == "fisher" and self.calibration is None:
            raise InvalidArgumentError(
                "policy fisher scores layers on local samples: pass calibration=(x, y) "
                "(CLI: --calibration DATA, e.g. fashion-mnist:5-9)"
            )
        if self.policy == "fisher" and strat is not Strategy.AUTO:
            raise InvalidArgumentError(
                f"policy fisher chooses a sparse trainable set; it needs --strategy auto, not "
                f"{strat.value}"
            )

    @property
    def is_baseline(self) -> bool:
        """A published heuristic (keep-all, sqrt, greedy): its own solver at the full batch."""
        return self.strategy in (Strategy.KEEP_ALL, Strategy.SQRT, Strategy.GREEDY)

    def replace(self, **changes: Any) -> PlanRequest:
        return dataclasses.replace(self, **changes)
