"""Argument validation, declared once and used by the Python API and the CLI alike.

Each check takes the value and the name the caller knows it by, returns the value normalised,
and raises `InvalidArgumentError` whose message says what was given, the valid range and the
fix. The CLI's argparse `type=` callables (`cli_type`) wrap the same checks, so an argument
error reads the same from `edgetrain plan --batch-size 0` and from `edgetrain.plan(...,
batch_size=0)`. Imports only the standard library, so `--help` and argument errors answer
without importing torch.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from edgetrain.errors import DeviceLimitError, InvalidArgumentError, OutputPathError

__all__ = [
    "batch_fits",
    "batch_size",
    "budget_bytes",
    "add_data_arguments",
    "budget_within_device",
    "cli_type",
    "existing_file",
    "file_sha256",
    "fraction",
    "learning_rate",
    "LRSchedule",
    "loss_for_plan",
    "lr_schedule",
    "parse_lr_schedule",
    "loss_name",
    "model_spec_file",
    "non_negative_float",
    "non_negative_int",
    "output_dir",
    "output_file",
    "policy",
    "positive_float",
    "positive_int",
    "steps",
    "weight_decay",
]

T = TypeVar("T")


def positive_int(value: object, what: str = "value") -> int:
    """An integer > 0 (a bool, float or string is refused, never truncated)."""
    return _integer(value, what, 1, "a positive integer")


def non_negative_int(value: object, what: str = "value") -> int:
    """An integer >= 0."""
    return _integer(value, what, 0, "an integer >= 0")


def _integer(value: object, what: str, minimum: int, expected: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise InvalidArgumentError(f"{what} must be {expected}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{what} must be {expected}, got {value!r}")
    return value


def positive_float(value: object, what: str = "value") -> float:
    """A finite number > 0 (NaN and infinity refused)."""
    v = _finite(value, what, "a positive finite number")
    if v <= 0:
        raise InvalidArgumentError(f"{what} must be a positive finite number, got {value!r}")
    return v


def batch_size(value: object) -> int:
    """Samples per optimizer step (`--batch-size`)."""
    return positive_int(value, "batch size (--batch-size)")


def steps(value: object) -> int:
    """Optimizer steps to run (`--steps`)."""
    return positive_int(value, "steps (--steps)")


def learning_rate(value: object) -> float:
    """The optimizer's learning rate (`--lr`), e.g. 0.05."""
    return positive_float(value, "learning rate (--lr)")


def budget_bytes(value: object) -> int:
    """A memory budget in bytes (`--budget`; the CLI also accepts KB/KiB/MB suffixes)."""
    return positive_int(value, "memory budget in bytes (--budget)")


def existing_file(
    value: object, what: str = "file", error: type[InvalidArgumentError] = InvalidArgumentError
) -> Path:
    """A path naming a readable regular file (`error` is the class raised when it is not)."""
    p = Path(str(value)).expanduser()
    if not str(value):
        raise error(f"{what} is empty; give the path of a file")
    if not p.is_file():
        why = "is a directory" if p.is_dir() else "does not exist"
        raise error(f"{what} {str(value)!r} {why}; give the path of a file")
    if not os.access(p, os.R_OK):
        raise error(f"{what} {str(value)!r} is not readable; check its permissions")
    return p


# NOTE [ Output paths are checked before work starts ]
#     Every command that writes checks its output paths when its arguments are parsed, before
#     any model is built or planned: a file wanted where a directory is (or the reverse), a
#     parent that is a file, or a folder this user may not write is an `OutputPathError` then,
#     not a traceback after minutes of work. Folders that do not exist yet are created later
#     (the first existing ancestor must be a writable directory).


def _writable_ancestor(p: Path, value: object, what: str) -> None:
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(
                    f"{what} {str(value)!r} cannot be created: {str(parent)!r} is a file, not a "
                    "directory; choose another path"
                )
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputPathError(
                    f"{what} {str(value)!r} cannot be written: directory {str(parent)!r} is not "
                    "writable; choose a folder you can write to"
                )
            return


def output_file(value: object, what: str = "output file") -> Path:
    """A path a file may be written to: not a directory, its folder writable (or creatable)."""
    if not str(value):
        raise OutputPathError(f"{what} is empty; give the path of a file to write")
    p = Path(str(value)).expanduser()
    if p.is_dir():
        raise OutputPathError(
            f"{what} {str(value)!r} is a directory; give a file name, e.g. {str(p / 'out')!r}"
        )
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputPathError(f"{what} {str(value)!r} is not writable; check its permissions")
    _writable_ancestor(p, value, what)
    return p


def output_dir(value: object, what: str = "output folder") -> Path:
    """A folder that exists and is writable, or that can be created."""
    if not str(value):
        raise OutputPathError(f"{what} is empty; give the path of a folder")
    p = Path(str(value)).expanduser()
    if p.exists():
        if not p.is_dir():
            raise OutputPathError(
                f"{what} {str(value)!r} is a file, not a folder; give a folder path"
            )
        if not os.access(p, os.W_OK | os.X_OK):
            raise OutputPathError(f"{what} {str(value)!r} is not writable; check its permissions")
        return p
    _writable_ancestor(p, value, what)
    return p


def add_data_arguments(parser: argparse.ArgumentParser, *, held_out: str | None = None) -> None:
    """The flags that say how a data source is read (`edgetrain.data.load_data`), shared by
    `train`, `compile` and `data inspect`; `held_out` (its help text) adds `--val-split`."""
    parser.add_argument("--label", default=None, help="CSV label column (name or index)")
    parser.add_argument("--x-key", default="x", help="array of the inputs in an .npz (default x)")
    parser.add_argument("--y-key", default="y", help="array of the targets in an .npz (default y)")
    parser.add_argument(
        "--resize", default=None, metavar="H,W", help="resize images to H,W (never unless asked)"
    )
    if held_out is not None:
        parser.add_argument(
            "--val-split",
            type=cli_type(lambda v: fraction(v, "held-out fraction (--val-split)")),
            default=0.1,
            help=held_out,
        )


def cli_type(check: Callable[[object], T]) -> Callable[[str], T]:
    """An argparse `type=` callable from a check: its error becomes argparse's usage error,
    prefixed with the error's class name (the CLI prints it as `error: TypeName: ...`)."""

    def parse(text: str) -> T:
        try:
            return check(text)
        except InvalidArgumentError as e:
            raise argparse.ArgumentTypeError(f"{type(e).__name__}: {e}") from None

    parse.__name__ = getattr(check, "__name__", "value")
    return parse


def non_negative_float(value: object, what: str = "value") -> float:
    """A finite number >= 0."""
    v = _finite(value, what, "a finite number >= 0")
    if v < 0:
        raise InvalidArgumentError(f"{what} must be a finite number >= 0, got {value!r}")
    return v


def fraction(value: object, what: str = "value") -> float:
    """A number in [0, 1), e.g. a dropout probability or a momentum."""
    v = _finite(value, what, "a number in [0, 1)")
    if not 0.0 <= v < 1.0:
        raise InvalidArgumentError(f"{what} must be a number in [0, 1), got {value!r}")
    return v


def _finite(value: object, what: str, expected: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{what} must be {expected}, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v):
        raise InvalidArgumentError(f"{what} must be {expected}, got {value!r}")
    return v


LOSS_NAMES = ("cross-entropy", "mse", "bce", "l1", "smooth-l1")
"""Losses edgetrain knows by name (`--loss`); a Python callable `loss_fn(output, target)` is
recorded in a plan as `custom:<its qualified name>`."""
CUSTOM_LOSS_PREFIX = "custom:"


def loss_name(value: object) -> str:
    """A loss as a plan records it: one of `LOSS_NAMES` (any case), or `custom:NAME` for a
    Python callable (NAME printable, at most 200 characters)."""
    forms = f"choose one of {', '.join(LOSS_NAMES)} (or pass a callable loss_fn from Python)"
    if not isinstance(value, str):
        raise InvalidArgumentError(f"loss (--loss) must be a string, got {value!r}; {forms}")
    text = value.strip().lower()
    if text in LOSS_NAMES:
        return text
    custom = value.strip()
    if custom.startswith(CUSTOM_LOSS_PREFIX):
        rest = custom[len(CUSTOM_LOSS_PREFIX) :]
        if rest and len(rest) <= 200 and rest.isprintable():
            return custom
    raise InvalidArgumentError(f"unknown loss {value[:80]!r}; {forms}")


@dataclass(frozen=True)
class LRSchedule:
    """A learning-rate schedule: `warmup_steps` of linear warm-up, then `kind` (constant,
    cosine to 0 over the run, or step: times `gamma` every `every` steps)."""

    kind: str = "constant"
    warmup_steps: int = 0
    every: int = 0
    gamma: float = 1.0

    def factor(self, step: int, total_steps: int) -> float:
        """The multiplier of the base learning rate at optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        t = step - self.warmup_steps
        if self.kind == "cosine":
            span = max(1, total_steps - self.warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(t, span) / span))
        if self.kind == "step":
            return self.gamma ** (t // self.every)
        return 1.0


_SCHEDULE_FORMS = (
    "constant, cosine, step:EVERY:GAMMA (e.g. step:100:0.5), each optionally after a linear "
    "warm-up: warmup:N+cosine, warmup:N (then constant)"
)


def lr_schedule(value: object) -> str:
    """A learning-rate schedule (`--schedule`) in its normal form (`parse_lr_schedule`)."""
    s = parse_lr_schedule(value)
    base = {"constant": "constant", "cosine": "cosine"}.get(s.kind) or f"step:{s.every}:{s.gamma:g}"
    return f"warmup:{s.warmup_steps}+{base}" if s.warmup_steps else base


def parse_lr_schedule(value: object) -> LRSchedule:
    what = "learning-rate schedule (--schedule)"
    if not isinstance(value, str) or not value.strip() or len(value) > 100:
        raise InvalidArgumentError(f"{what} must be a string: {_SCHEDULE_FORMS}; got {value!r}")
    text = value.strip().lower()
    warmup = 0
    head, plus, rest = text.partition("+")
    if head.startswith("warmup:"):
        warmup = _integer(head.removeprefix("warmup:"), f"{what} warm-up steps", 1, "an integer")
        text = rest if plus else "constant"
    elif plus:
        raise InvalidArgumentError(f"bad {what} {value!r}: only a warm-up may come first")
    if text in ("constant", "cosine"):
        return LRSchedule(text, warmup)
    m = re.fullmatch(r"step:([0-9]{1,9}):([0-9.eE+-]{1,20})", text)
    if m is None:
        raise InvalidArgumentError(f"unknown {what} {value!r}; use {_SCHEDULE_FORMS}")
    every = _integer(m.group(1), f"{what} step interval", 1, "an integer")
    try:
        gamma = float(m.group(2))
    except ValueError:
        gamma = float("nan")
    if not (0 < gamma <= 1):
        raise InvalidArgumentError(
            f"bad {what} {value!r}: GAMMA must be in (0, 1] (the factor applied every "
            f"{every} steps), got {m.group(2)}"
        )
    return LRSchedule("step", warmup, every, gamma)


def weight_decay(value: object) -> float:
    """L2 / decoupled weight decay (`--weight-decay`): a finite number in [0, 1)."""
    v = _finite(value, "weight decay (--weight-decay)", "a number in [0, 1), e.g. 0.01")
    if not 0 <= v < 1:
        raise InvalidArgumentError(
            f"weight decay (--weight-decay) must be in [0, 1), got {value!r}; e.g. 0.01"
        )
    return v


def loss_for_plan(given: str | None, recorded: str) -> str:
    """`--loss` where a plan is executed (train, compile): the plan's own loss, which the
    argument may only confirm — the plan's memory was predicted for it."""
    if given is None:
        return recorded
    given = loss_name(given)
    if given != recorded:
        raise InvalidArgumentError(
            f"--loss {given} but the plan was made for loss {recorded} (its memory and cost "
            f"were predicted with it); re-plan with `edgetrain plan ... --loss {given}`"
        )
    return given


LOSS_HELP = (
    f"the training loss: {', '.join(LOSS_NAMES)} (default: the built-in model's own — mse for "
    "mlp-autoencoder, bce for unet-tiny — else cross-entropy); costed with the model"
)


_POLICY_WORDS = ("all", "full", "bias-only", "fisher")
_LAST = re.compile(r"last:(.*)", re.DOTALL)
_LORA = re.compile(r"lora:([1-9][0-9]{0,3})(:[^\s:]+)?")


def policy(value: object) -> str:
    """What trains (`--policy`): all, bias-only, fisher, last:K (K a positive integer), or a
    comma-separated list of parameter names or module prefixes. Checks the form only; whether
    the names exist is known once the model is captured."""
    what = "policy (--policy)"
    forms = "use all, bias-only, fisher, last:K with K a positive integer, or parameter names"
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{what} must be a string, got {value!r}; {forms}")
    text = value.strip()
    if text in _POLICY_WORDS:
        return text
    if text.startswith("lora"):
        if not _LORA.fullmatch(text) or int(text.split(":")[1]) > 4096:
            raise InvalidArgumentError(
                f"bad {what} {value!r}: expected lora:R or lora:R:MODULES (R a rank in "
                "1..4096, MODULES comma-separated module names), e.g. lora:8:query,key,value"
            )
        return text
    m = _LAST.fullmatch(text)
    if m:
        k = m.group(1).strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,9}", k):
            raise InvalidArgumentError(
                f"bad {what} {value!r}: expected last:K with K a positive integer (the last K "
                "modules that own parameters train), e.g. last:2"
            )
        if int(k) <= 0:
            raise InvalidArgumentError(
                f"bad {what} {value!r}: K must be positive (K = {int(k)}); last:K trains the "
                "last K modules that own parameters, e.g. last:1"
            )
        return f"last:{int(k)}"
    names = [w.strip() for w in text.split(",")]
    if not text or any(not w for w in names):
        raise InvalidArgumentError(f"bad {what} {value!r}: an empty name; {forms}")
    if any(not w.isprintable() or " " in w for w in names):
        raise InvalidArgumentError(
            f"bad {what} {value!r}: parameter names hold no spaces or control characters; {forms}"
        )
    return ",".join(names)


def budget_within_device(
    budget: int, *, device: str, ram_bytes: int, force: bool, flag: str = "--force-budget"
) -> int:
    """A budget no larger than the device's memory, unless the caller forces it (`flag`):
    `DeviceLimitError` names the device, both numbers and the flag."""
    budget = budget_bytes(budget)
    if budget > ram_bytes and not force:
        raise DeviceLimitError(
            f"memory budget {budget:,} bytes is more than {device}'s memory ({ram_bytes:,} "
            f"bytes, {budget / ram_bytes:.3g}x); use a budget <= {ram_bytes:,} bytes (or leave "
            f"it out: the default is the device's memory), or pass {flag} to plan for more "
            "memory than the device has"
        )
    return budget


def batch_fits(
    batch: int, *, sample_bytes: int, limit_bytes: int, device: str, limit: str = "budget"
) -> int:
    """A batch whose input samples alone fit in `limit_bytes`; a larger batch can never fit
    (every plan holds the whole input batch) and is a `DeviceLimitError` naming the largest
    batch that could."""
    batch = batch_size(batch)
    need = batch * max(1, int(sample_bytes))
    if need > limit_bytes:
        most = limit_bytes // max(1, int(sample_bytes))
        raise DeviceLimitError(
            f"batch size {batch:,}: its input samples alone take {need:,} bytes "
            f"({sample_bytes:,} bytes each), more than the {limit} of {limit_bytes:,} bytes on "
            f"{device}; no plan can fit it. Use --batch-size {max(1, most):,} or less"
            + ("" if most >= 1 else " (even one sample does not fit: use a larger device)")
        )
    return batch


def model_spec_file(spec: str) -> Path | None:
    """The Python file a model spec names (`path/to/file.py:factory`), or None for a built-in
    model name (which imports no code of the user's). Mirrors `edgetrain.models.build_model`."""
    path, sep, _factory = spec.rpartition(":")
    if sep and path.endswith(".py"):
        return Path(path).expanduser()
    if spec.endswith(".py"):
        return Path(spec).expanduser()
    return None


def file_sha256(path: "str | os.PathLike[str]") -> str:
    """The SHA-256 of a file's bytes, as 64 lowercase hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
