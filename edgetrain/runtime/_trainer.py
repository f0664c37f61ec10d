"""The training stage: execute a Plan on a PyTorch model through PyTorch's own extension points.

    requires_grad / post-accumulate-grad masks   sparse, bias-only and partial-channel updates
    non-reentrant torch.utils.checkpoint          recomputation of a stage
    saved_tensors_hooks + a file-backed store     paging a stage's saved tensors to storage
    post-accumulate-grad hooks                    in-place updates during backward
    gradient accumulation                         micro-batching
    a TorchFunctionMode of lean autograd.Functions  lean backward (NOTE [ Lean backward ])

Every hook has a removable handle; `Trainer` is a context manager and restores the model (its
forwards, `requires_grad` flags and hooks) on exit.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
from torch.utils.checkpoint import checkpoint

from edgetrain import validate
from edgetrain.errors import InvalidArgumentError, NonFiniteLossError
from edgetrain.models import LoraSpec, add_lora, merge_lora
from edgetrain.planner import ActivationDecision, Executor, ParamDecision, Plan, Precision
from edgetrain.runtime._chunked import chunked_forward
from edgetrain.runtime._lean import LeanBackward
from edgetrain.runtime._paging import PagingStore

_BN = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


class Trainer:
    """`with Trainer(model, plan, lr=0.01) as t: loss = t.step(x, y)`."""

    def __init__(
        self,
        model: torch.nn.Module,
        plan: Plan,
        *,
        lr: float = 0.01,
        loss_fn=None,
        max_nonfinite: int = 3,
        paging_dir: str | None = None,
        optimizer=None,
        total_steps: int | None = None,
    ) -> None:
        lr = validate.learning_rate(lr)
        if plan.executor is not Executor.PYTORCH and plan.precision is not Precision.INT8:
            raise InvalidArgumentError(
                f"this plan was made for the {plan.executor.value} executor (edgetrain "
                f"compile): its predicted peak ({plan.predicted_peak_bytes:,} B) is the C "
                "program's, not PyTorch's, so running it here would break its memory promise. "
                "Run it with `edgetrain compile --plan PLAN.json --target ...`, or plan for "
                f"PyTorch: edgetrain plan --model {plan.model} --device {plan.device} "
                f"--batch-size {plan.batch_size} --executor pytorch"
            )
        if plan.precision is Precision.INT8:
            raise InvalidArgumentError(
                f"this plan trains {plan.model} in int8 on the C trainer (precision int8, "
                f"{plan.predicted_peak_bytes:,} B predicted); the PyTorch Trainer runs fp32. "
                "Run it with `edgetrain compile --plan PLAN.json --target ...`, or plan for "
                "PyTorch with --executor pytorch --precision fp32"
            )
        self.model, self.plan, self.lr = model, plan, lr
        self.loss_fn = _plan_loss(plan) if loss_fn is None else loss_fn
        self._loss_checked = False  # an explicit loss_fn is checked on the first batch
        self._explicit_loss = loss_fn is not None
        self._user_optimizer = _check_user_optimizer(plan, optimizer)
        self.schedule = validate.parse_lr_schedule(plan.schedule)
        if self.schedule.kind == "cosine" and total_steps is None:
            raise InvalidArgumentError(
                f"plan schedule {plan.schedule!r} decays over the run: pass total_steps= (the "
                "number of optimizer steps the run will take)"
            )
        self.total_steps = total_steps
        self.steps_done = 0  # optimizer steps taken (the schedule's clock)
        self._buffer: list[tuple[torch.Tensor, torch.Tensor]] = []  # `feed`'s samples
        self.max_nonfinite = max_nonfinite
        self.nonfinite_in_a_row = 0
        self.skipped_steps = 0
        self.paging_dir = paging_dir
        self._handles: list = []
        self._restore: list = []
        self.store: PagingStore | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._per_param_opt: dict[torch.nn.Parameter, torch.optim.Optimizer] = {}
        self._entered = False

    # -- set-up and tear-down ----------------------------------------------------------------
    def __enter__(self) -> "Trainer":
        self._add_adapters()
        named = dict(self.model.named_parameters())
        modules = dict(self.model.named_modules())
        unknown = [p.name for p in self.plan.params if p.name not in named]
        if unknown:
            raise InvalidArgumentError(
                f"the plan names parameters the model does not have: {unknown[:5]}; was the plan "
                f"made for model {self.plan.model!r}?"
            )
        # 1. what trains
        trainable: list[torch.nn.Parameter] = []
        for pp in self.plan.params:
            p = named[pp.name]
            self._restore.append(functools.partial(p.requires_grad_, p.requires_grad))
            train = pp.decision in (ParamDecision.TRAINABLE, ParamDecision.CHANNELS)
            p.requires_grad_(train)
            if train:
                trainable.append(p)
            if pp.decision is ParamDecision.CHANNELS:
                k = max(1, int(round(pp.channel_ratio * p.shape[0])))
                self._handles.append(
                    p.register_post_accumulate_grad_hook(functools.partial(_mask_rows, k=k))
                )
        # 2. training mode (restored on exit); frozen batch norm (exact micro-batching needs
        #    batch statistics out of the step)
        modes = [(m, m.training) for m in self.model.modules()]
        self._restore.append(functools.partial(_restore_modes, modes))
        self.model.train()
        if self.plan.freeze_batch_norm:
            for m in self.model.modules():
                if isinstance(m, _BN):
                    self._restore.append(functools.partial(m.train, m.training))
                    m.eval()
        # 3. activation decisions per stage
        for stage in self.plan.stages:
            if stage.decision is ActivationDecision.KEEP:
                continue
            for path in stage.modules:
                if path not in modules:
                    raise InvalidArgumentError(
                        f"plan stage {stage.name!r} names module {path!r}, which the model lacks"
                    )
                mod = modules[path]
                original = mod.forward
                if stage.decision is ActivationDecision.RECOMPUTE:
                    bns = tuple(m for m in mod.modules() if isinstance(m, _BN))
                    lean = functools.partial(self._lean_rerun, path)
                    mod.forward = functools.partial(_checkpointed, original, bns, lean)
                else:
                    if self.store is None:
                        self.store = PagingStore(self.paging_dir)
                        self.store.keep_resident((*self.model.parameters(), *self.model.buffers()))
                    mod.forward = functools.partial(_paged, original, self.store)
                self._restore.append(functools.partial(_restore_forward, mod, original))
        self._chunk_segments(modules)
        # 4. the optimizer: one step per batch, or per parameter inside backward
        if self.plan.in_place_update:
            for p in trainable:
                opt = _make_optimizer(self.plan.optimizer, [p], self.lr, self.plan.weight_decay)
                self._per_param_opt[p] = opt
                self._handles.append(p.register_post_accumulate_grad_hook(self._apply_in_place))
        elif self._user_optimizer is not None:
            self.optimizer = self._user_optimizer(trainable)
            if not isinstance(self.optimizer, torch.optim.Optimizer):
                raise InvalidArgumentError(
                    "optimizer= must be a function of the trainable parameters returning a "
                    f"torch.optim.Optimizer, got {type(self.optimizer).__name__}"
                )
        else:
            self.optimizer = _make_optimizer(
                self.plan.optimizer, trainable, self.lr, self.plan.weight_decay
            )
        self._entered = True
        return self

    _lean: LeanBackward | None = None  # the step's lean mode while a step runs

    def _chunk_segments(self, modules: dict) -> None:
        """Swap in the chunked forward of the plan's chunked modules (NOTE [ Sample-chunked
        frozen segments ] in cost/_chunk.py), restored on exit."""
        wrapped = [
            p
            for st in self.plan.stages
            if st.decision is not ActivationDecision.KEEP
            for p in st.modules
        ]
        token = torch.empty(0, requires_grad=True)  # makes each chunk's entry require grad
        for path, chunk in self.plan.chunked_modules:
            clash = [w for w in wrapped if f"{path}.".startswith(f"{w}.") or w.startswith(path)]
            if path not in modules or clash:
                raise InvalidArgumentError(
                    f"the plan runs module {path!r} in chunks, but the model lacks it or a "
                    f"recomputed or paged stage covers it ({clash}); re-plan"
                )
            mod = modules[path]
            original = mod.forward
            mod.forward = functools.partial(
                chunked_forward, original, path, chunk, token, self._lean_mode
            )
            self._restore.append(functools.partial(_restore_forward, mod, original))

    def _lean_mode(self) -> LeanBackward | None:
        return self._lean

    def _lean_rerun(self, path: str):
        """Checkpoint's re-run of stage `path` inside backward runs lean as its forward did."""
        return self._lean.rerun(path) if self._lean is not None else contextlib.nullcontext()

    def _add_adapters(self) -> None:
        """A LoRA plan's adapters (NOTE [ LoRA adapters ]) on a model that lacks them; merged
        into the weights on exit, so the model leaves the Trainer as a plain trained model."""
        if not self.plan.lora_rank:
            return
        modules = dict(self.model.named_modules())
        missing = [p for p in self.plan.lora_modules if p not in modules]
        if missing:
            raise InvalidArgumentError(
                f"the plan adapts modules the model lacks: {missing[:3]}; was the plan made for "
                f"model {self.plan.model!r}?"
            )
        todo = [p for p in self.plan.lora_modules if not hasattr(modules[p], "lora_a")]
        if not todo:
            return  # the caller's model carries the adapters (and keeps them)
        handles = add_lora(self.model, LoraSpec(self.plan.lora_rank, tuple(todo)))
        self._restore.insert(0, functools.partial(merge_lora, self.model, handles))

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for fn in reversed(self._restore):
            fn()
        self._restore.clear()
        if self.store is not None:
            self.store.close()
        self._entered = False

    # -- hooks -------------------------------------------------------------------------------
    def _apply_in_place(self, p: torch.nn.Parameter) -> None:
        if self._skip_update:
            p.grad = None
            return
        self._per_param_opt[p].step()
        p.grad = None  # the gradient buffer dies at once

    # -- one optimizer step ------------------------------------------------------------------
    _skip_update = False

    def optimizer_state(self) -> list[torch.Tensor]:
        """The optimizer's state tensors (momentum, Adam moments), per-parameter ones included."""
        opts = [self.optimizer] if self.optimizer is not None else self._per_param_opt.values()
        return [
            v
            for o in opts
            for st in o.state.values()
            for v in st.values()
            if isinstance(v, torch.Tensor)
        ]

    @property
    def storage_bytes_written(self) -> int:
        return self.store.bytes_written if self.store else 0

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimizer step over one batch of the plan's batch size; returns the mean loss."""
        if not self._entered:
            raise InvalidArgumentError("Trainer.step() outside `with Trainer(...) as t:`")
        check_batch(self.plan, x)
        if x.shape[0] != self.plan.batch_size or y.shape[0] != x.shape[0]:
            raise InvalidArgumentError(
                f"batch of {x.shape[0]} samples (targets {y.shape[0]}); the plan trains batches "
                f"of {self.plan.batch_size}: re-plan with --batch-size {x.shape[0]}"
            )
        if not self.model.training:  # e.g. evaluated between steps; `train()` walks every module
            self.model.train()
            if self.plan.freeze_batch_norm:
                for m in self.model.modules():
                    if isinstance(m, _BN):
                        m.eval()
        self._apply_schedule()
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        # In-place updates apply inside backward, so a non-finite loss must be caught before
        # backward runs: check each micro-batch's loss first.
        self._skip_update = False
        if self.store is not None:
            self.store.begin_step((x, y))
        if self.plan.lean_backward:
            self._lean = LeanBackward(
                self.model, self.plan.plain_activations, self.plan.in_place_activations
            )
        try:
            with self._lean if self._lean is not None else contextlib.nullcontext():
                total, finite = self._micro_batches(x, y)
        finally:
            self._lean = None
        return self._finish(total, finite)

    def _micro_batches(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, bool]:
        """Forward and backward of each micro-batch; (summed loss, whether all were finite)."""
        mb, n = self.plan.micro_batch_size, x.shape[0]
        total = 0.0
        for i in range(0, n, mb):
            if self.store is not None:
                self.store.reset()
            loss = self._loss(self.model(x[i : i + mb]), y[i : i + mb])
            if mb < n:  # accumulate the batch mean over micro-batches
                loss = loss * (min(mb, n - i) / n)
            if not torch.isfinite(loss):
                self._skip_update = True
                del loss
                return total, False
            total += float(loss.detach())
            loss.backward()
            del loss
        return total, True

    def _finish(self, total: float, finite: bool) -> float:
        if not finite:
            if self.optimizer is not None:
                self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.nonfinite_in_a_row += 1
            warnings.warn(
                f"non-finite loss: step skipped, weights unchanged "
                f"({self.nonfinite_in_a_row} in a row)",
                RuntimeWarning,
                stacklevel=2,
            )
            if self.nonfinite_in_a_row >= self.max_nonfinite:
                raise NonFiniteLossError(
                    f"{self.nonfinite_in_a_row} non-finite losses in a row; lower the learning "
                    f"rate (now {self.lr}) or check the data for NaN/inf"
                )
            return float("nan")
        self.nonfinite_in_a_row = 0
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.steps_done += 1
        return total

    def feed(self, x: torch.Tensor, y: torch.Tensor) -> float | None:
        """A stream's samples as they arrive (one, or a few, at a time): buffered until they
        fill one batch of the plan's size, then one optimizer step; returns its loss, or None
        while the batch is still filling. Samples beyond a full batch start the next one."""
        check_batch(self.plan, x)
        if y.shape[0] != x.shape[0]:
            raise InvalidArgumentError(
                f"{x.shape[0]} samples but {y.shape[0]} targets: give one target per sample"
            )
        self._buffer.extend(zip(x, y))
        loss = None
        b = self.plan.batch_size
        while len(self._buffer) >= b:
            chunk, self._buffer = self._buffer[:b], self._buffer[b:]
            loss = self.step(torch.stack([c[0] for c in chunk]), torch.stack([c[1] for c in chunk]))
        return loss

    def _apply_schedule(self) -> None:
        f = self.schedule.factor(self.steps_done, self.total_steps or 0)
        opts = [self.optimizer] if self.optimizer is not None else self._per_param_opt.values()
        for o in opts:
            for g in o.param_groups:
                g["lr"] = g.setdefault("initial_lr", g["lr"]) * f

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._loss_checked:
            return self.loss_fn(out, y)
        what = "loss_fn" if self._explicit_loss else f"the plan's loss {self.plan.loss!r}"
        try:
            loss = self.loss_fn(out, y)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise InvalidArgumentError(
                f"{what} cannot compare the model's output {tuple(out.shape)} {out.dtype} with "
                f"targets {tuple(y.shape)} {y.dtype}: {first}; give targets the loss accepts "
                "or a loss_fn for this output"
            ) from None
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise InvalidArgumentError(
                f"{what} must return one differentiable number (a scalar tensor), got {got}; "
                "reduce it with .mean()"
            )
        self._loss_checked = True
        return loss


# NOTE [ Where data meets the plan ]
#     A plan records one sample's shape and dtype (`Plan.input_shape`, `input_dtype`, from
#     the example input it was captured with) and the loss it costed. Memory was predicted
#     for exactly that sample: a larger image, a longer sequence or float64 data would break
#     the promise silently, so every consumer that feeds data to a plan (the Trainer's step,
#     `train_loop`, `edgetrain train`) refuses a batch whose samples differ, before any work.
#     Plans older than schema 3 record no input and are not checked.
def check_batch(plan: Plan, x: torch.Tensor) -> None:
    """`InvalidArgumentError` unless `x` is a batch of the samples `plan` was made for."""
    if plan.input_shape is None:
        return
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(f"a batch must be a tensor, got {type(x).__name__}")
    sample, dtype = tuple(x.shape[1:]), str(x.dtype).removeprefix("torch.")
    if sample != plan.input_shape or dtype != plan.input_dtype:
        raise InvalidArgumentError(
            f"the batch's samples are {sample} {dtype}; plan for {plan.model!r} was made for "
            f"samples {plan.input_shape} {plan.input_dtype} (its memory was predicted for "
            "them): reshape or convert the data, or re-plan with an example of this shape"
        )


def _plan_loss(plan: Plan):
    from edgetrain.capture import loss_function

    if plan.loss.startswith("custom:"):
        raise InvalidArgumentError(
            f"plan for {plan.model!r} was made with a Python loss ({plan.loss}); pass it: "
            "Trainer(model, plan, loss_fn=...)"
        )
    return loss_function(plan.loss)


def _restore_modes(modes) -> None:
    for m, training in modes:
        m.training = training


def _mask_rows(p: torch.Tensor, k: int) -> None:
    if p.grad is not None:
        p.grad[k:].zero_()


def _checkpointed(forward, batch_norms, lean_rerun, *args, **kwargs):
    # No RNG state is stashed: a plan never recomputes a stage that draws random numbers
    # (NOTE [ Random ops are not recomputed ]), and the 5 KB CPU generator state per stage
    # would matter on an MCU budget.
    return checkpoint(
        forward,
        *args,
        use_reentrant=False,
        preserve_rng_state=False,
        context_fn=functools.partial(_recompute_contexts, batch_norms, lean_rerun),
        **kwargs,
    )


def _recompute_contexts(batch_norms, lean_rerun):
    return contextlib.nullcontext(), _Rerun(batch_norms, lean_rerun)


class _Rerun:
    """What checkpoint's re-run of a stage runs under: BN statistics frozen, and the step's
    lean mode (NOTE [ Lean backward ]) when the plan has one. Entered at the re-run only."""

    def __init__(self, batch_norms, lean_rerun) -> None:
        self.stats = _RunningStatsFrozen(batch_norms)
        self.lean_rerun = lean_rerun
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self.stats)
        self._stack.enter_context(self.lean_rerun())

    def __exit__(self, *exc) -> None:
        assert self._stack is not None
        self._stack.__exit__(*exc)
        self._stack = None


class _RunningStatsFrozen:
    """Checkpoint's re-run of a stage must not update BN running statistics a second time.

    While the re-run runs, each BN's momentum is 0 (running = 0 * batch + 1 * running, exact
    for finite statistics) and `num_batches_tracked` is put back afterwards; nothing is copied,
    so recomputation costs no memory for it (cloning the buffers would hold a copy of every
    BN buffer through backward, which the cost model does not and should not count).
    """

    def __init__(self, batch_norms) -> None:
        self.batch_norms = tuple(m for m in batch_norms if m.training and m.track_running_stats)
        self._saved: list = []

    def __enter__(self) -> None:
        for m in self.batch_norms:
            tracked = None if m.num_batches_tracked is None else int(m.num_batches_tracked)
            self._saved.append((m, m.momentum, tracked))
            m.momentum = 0.0

    def __exit__(self, *exc) -> None:
        for m, momentum, tracked in self._saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.fill_(tracked)
        self._saved.clear()


def _paged(forward, store: PagingStore, *args, **kwargs):
    with store.hooks():
        return forward(*args, **kwargs)


def _restore_forward(mod: torch.nn.Module, original) -> None:
    if mod.forward is not original:
        # instance attribute set by us: removing it restores the class's forward
        try:
            del mod.forward
        except AttributeError:
            mod.forward = original


def _make_optimizer(
    name: str, params, lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    if not params:
        raise InvalidArgumentError("the plan trains no parameter; choose a trainable set")
    wd = {"weight_decay": weight_decay}
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, **wd)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, **wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, **wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, **wd)
    raise InvalidArgumentError(f"unknown optimizer {name!r}; choose sgd, momentum, adam or adamw")


def _check_user_optimizer(plan: Plan, optimizer):
    """A user's optimizer: a function of the trainable parameters returning a
    `torch.optim.Optimizer`. Its state is the user's: the plan costed `plan.optimizer`'s, and
    the measured peak of the first steps (`train_loop`, `edgetrain.train`) shows the truth."""
    if optimizer is None:
        return None
    if isinstance(optimizer, torch.optim.Optimizer):
        raise InvalidArgumentError(
            "pass optimizer= as a function of the parameters, e.g. "
            "`optimizer=lambda params: torch.optim.RMSprop(params, lr=1e-3)`: the Trainer "
            "decides which parameters train (the plan's trainable set)"
        )
    if not callable(optimizer):
        raise InvalidArgumentError(
            f"optimizer= must be a function of the parameters, got {type(optimizer).__name__}"
        )
    if plan.in_place_update:
        raise InvalidArgumentError(
            "this plan updates each parameter inside backward (in-place update, so no gradient "
            "outlives its layer): one optimizer over all parameters cannot run that way. "
            "Re-plan without in-place updates (a budget that allows holding the gradients) "
            "or use the plan's own optimizer"
        )
    return optimizer
