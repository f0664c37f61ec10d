"""What ExecuTorch's training export can express, checked on the plan before any work.

NOTE [ What ExecuTorch's training export expresses ]
    `torch.export.experimental._export_forward_backward` turns the model with its loss into one
    joint forward-backward graph; ExecuTorch lowers it to one method whose outputs are the loss,
    the model's output and one gradient per trainable tensor, with every intermediate placed
    by its own memory planner (`to_executorch`). ExecuTorch's SGD (`get_sgd_optimizer`:
    learning rate, momentum, weight decay) then updates the trainable tensors in place, after
    the method returns. So a plan is exportable when it asks for no more than that:
    - every stage keeps its activations (the method has no recompute or paging: the joint
      graph is one static program, its memory plan one arena);
    - one micro-batch per batch (the method trains one static batch; accumulating micro-batches
      would need gradient buffers outside the program);
    - batch norm frozen to its running statistics: in training mode batch norm updates its
      running statistics as a side effect, which the joint graph cannot return
      (`--freeze-batch-norm`; sparse plans freeze it already);
    - whole tensors train (no partial-channel masks: ExecuTorch's SGD updates every element);
    - SGD, with or without momentum (0.9, as the Trainer runs it) and L2 weight decay, at a
      constant learning rate: ExecuTorch's training runtime provides no other optimizer, and
      its Python binding no learning-rate schedule;
    - a loss the exporter can trace (a built-in name, or the callable passed as `loss_fn`).
    Whether updates happen inside backward (`in_place_update`) changes when, not what, SGD
    computes, so such plans export too; ExecuTorch updates after the method returns, which the
    ExecuTorch executor's memory model costs (`_memory_model.py`). Anything else is refused with
    `ExportUnsupportedError` naming the decision and the `edgetrain plan` flags that avoid it;
    nothing is silently rewritten.
"""

from __future__ import annotations

from edgetrain.errors import ExportUnsupportedError
from edgetrain.planner import ActivationDecision, Executor, ParamDecision, Plan, Precision

__all__ = ["check_exportable", "trainable_names", "MOMENTUM"]

MOMENTUM = 0.9
"""The momentum of the plan's `momentum` optimizer (the Trainer's `torch.optim.SGD`)."""


def _replan(plan: Plan, *extra: str) -> str:
    flags = " ".join(
        (
            f"edgetrain plan --model {plan.model} --device {plan.device}",
            f"--batch-size {plan.batch_size}",
            *extra,
            "--executor executorch -o plan.json",
        )
    )
    return f"re-plan for ExecuTorch: `{flags}`"


def check_exportable(plan: Plan, *, has_batch_norm: bool, custom_loss: bool = False) -> None:
    """`ExportUnsupportedError` unless ExecuTorch's training export expresses `plan`
    (NOTE [ What ExecuTorch's training export expresses ]); `has_batch_norm`: the model has a
    batch-norm layer; `custom_loss`: the caller passes the plan's `custom:` loss as a callable."""
    if plan.executor is Executor.C or plan.precision is Precision.INT8:
        raise ExportUnsupportedError(
            f"the plan was made for the C executor in {plan.precision.value} (edgetrain "
            "compile): its frozen weights live in flash and its prediction is the C arena's; "
            + _replan(plan)
        )
    held = [s for s in plan.stages if s.decision is not ActivationDecision.KEEP]
    if held:
        kinds = sorted({s.decision.value for s in held})
        raise ExportUnsupportedError(
            f"the plan decides {' and '.join(kinds)} for {len(held)} stage(s) (first: "
            f"{held[0].name!r} -> {held[0].decision.value}); an ExecuTorch program keeps every "
            "activation in its one memory plan, with no recomputation or paging; "
            + _replan(plan)
            + " (for the PyTorch Trainer: --strategy keep-all --no-paging keeps every stage)"
        )
    if plan.micro_batch_size != plan.batch_size:
        raise ExportUnsupportedError(
            f"the plan accumulates {plan.accumulation_steps} micro-batches of "
            f"{plan.micro_batch_size} into each batch of {plan.batch_size}; an ExecuTorch "
            "training method runs one static batch; "
            + _replan(plan)
            + f" (or --batch-size {plan.micro_batch_size} to train micro-batches as batches)"
        )
    if has_batch_norm and not plan.freeze_batch_norm:
        raise ExportUnsupportedError(
            "the plan trains batch norm with batch statistics (freeze_batch_norm false): the "
            "running-statistics update is a side effect the joint forward-backward graph cannot "
            "express; " + _replan(plan, "--freeze-batch-norm")
        )
    _check_params(plan)
    _check_optimizer(plan)
    if plan.loss.startswith("custom:") and not custom_loss:
        raise ExportUnsupportedError(
            f"the plan was made with a Python loss ({plan.loss}); pass it as loss_fn= so the "
            "exporter can trace it into the program"
        )


def _check_params(plan: Plan) -> None:
    channels = [p.name for p in plan.params if p.decision is ParamDecision.CHANNELS]
    if channels:
        raise ExportUnsupportedError(
            f"the plan trains only some output channels of {len(channels)} tensor(s) (first: "
            f"{channels[0]!r}, decision channels); ExecuTorch's SGD updates whole tensors; "
            + _replan(plan, "--policy last:K")
        )
    if not trainable_names(plan):
        raise ExportUnsupportedError(
            "the plan trains no parameter, so the program would have no gradient; "
            + _replan(plan, "--policy all")
        )


def _check_optimizer(plan: Plan) -> None:
    if plan.optimizer not in ("sgd", "momentum"):
        raise ExportUnsupportedError(
            f"the plan's optimizer is {plan.optimizer}; ExecuTorch's training runtime provides "
            "SGD only (momentum as its option); "
            + _replan(plan, "--optimizer sgd")
            + " (or --optimizer momentum)"
        )
    if plan.schedule != "constant":
        raise ExportUnsupportedError(
            f"the plan's learning-rate schedule is {plan.schedule!r}; ExecuTorch's SGD runs at "
            "a constant learning rate here; " + _replan(plan, "--schedule constant")
        )


def trainable_names(plan: Plan) -> tuple[str, ...]:
    """The tensors that receive gradients: `trainable` ones (a `bias_only` weight is frozen
    while its bias, listed on its own, trains), in the plan's order."""
    return tuple(p.name for p in plan.params if p.decision is ParamDecision.TRAINABLE)
