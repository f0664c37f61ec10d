"""`edgetrain bench`: every strategy on the same transfer task, models and devices.

Task: Fashion-MNIST new-class transfer. The model is pretrained "in the cloud" on classes 0-4
(mcu-cnn: the demo's cached pretraining, `edgetrain.tasks.pretrain`; mbv2-w0.35: the same recipe
on images resized to its 3x128x128 input with `edgetrain.data.resize_for`, cached alike), then
every strategy learns classes 5-9 on the device from the same seeded samples, starting from the
same pretrained weights, within the device's memory (the plan's budget is the device's RAM).

Columns (one row per strategy x model x device):
    fits              the system's predicted peak is within the device's memory
    predicted_peak    the system's prediction (Melon's includes its pool's fragmentation)
    measured_peak     the PyTorch allocator's peak of a metered step (edgetrain.measure)
    storage_written   bytes paged to storage per optimizer step (planned)
    host_step_s       measured mean wall time of a step on this host
    device_step_s     modelled time of a step on the device (the plan's cost model)
    energy_j          modelled energy of a step on the device (the training stage)
    prep. energy      modelled energy of preparation run on the device before training
                      (auto's selection pilots; 0 for the others, whose preparation is offline)
    accuracy          held-out accuracy on classes 5-9 before and after the sample budget
    samples_per_s     measured on this host
A run whose plan is identical on two devices (same stages, micro-batch, trainable set) is
trained once and its measured columns reused; the modelled columns are per device.

`auto_pareto` in the JSON says, per model and device, whether `auto` is dominated by another
strategy that fits (higher or equal accuracy with lower or equal peak / energy per sample, one
strictly). Energy is compared per sample, not per step: every strategy learns from the same
sample budget, and a batch-1 step (TinyOL) is not comparable with a batch-8 one. The energy
front is the training stage's (the issue's column, energy per step); a second flag,
`on_front_accuracy_vs_energy_with_preparation`, adds each row's on-device preparation energy
spread over the samples.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgetrain import validate
from edgetrain.errors import InvalidArgumentError, PlanInfeasibleError
from edgetrain.runtime import NonFiniteLossError
from edgetrain.storage import (
    cache_dir,
    load_tensors,
    save_tensors_atomic,
    write_json_atomic,
    write_text_atomic,
)
from edgetrain.strategies._catalog import SystemName, get_system
from edgetrain.tasks import accuracy
from edgetrain.units import format_bytes

NEW_CLASSES = "fashion-mnist:5-9"
OLD_CLASSES = (0, 1, 2, 3, 4)
BENCH_DEVICES = ("nrf52840", "rpi4", "snapdragon-865")  # one MCU, one board, one phone
CALIBRATION_SAMPLES = 256  # int8 strategies quantise with pretraining-data images


@dataclass(frozen=True)
class ModelTask:
    model: str
    batch_size: int
    samples: int  # on-device sample budget per strategy
    test_limit: int | None
    pretrain_samples: int | None
    pretrain_epochs: int


@dataclass(frozen=True)
class BenchConfig:
    tasks: tuple[ModelTask, ...]
    devices: tuple[str, ...] = BENCH_DEVICES
    systems: tuple[SystemName, ...] = tuple(SystemName)
    lr: float = 0.05
    seed: int = 0
    sage_budget_drop: float = 0.6  # Sage's budget falls to this share of its first plan midway

    @classmethod
    def quick(cls) -> "BenchConfig":
        return cls(tasks=(ModelTask("mcu-cnn", 8, 800, 1000, 6000, 1),))

    @classmethod
    def full(cls) -> "BenchConfig":
        return cls(
            tasks=(
                ModelTask("mcu-cnn", 8, 4000, None, None, 2),
                ModelTask("mbv2-w0.35", 8, 400, 500, 3000, 1),
            )
        )


@dataclass(frozen=True)
class BenchRow:
    system: str
    model: str
    device: str
    fits: bool
    budget_bytes: int
    predicted_peak_bytes: int | None
    measured_peak_bytes: int | None
    storage_bytes_written_per_step: int | None
    host_step_s: float | None
    device_step_s: float | None
    energy_per_step_j: float | None
    accuracy_before: float | None
    accuracy_after: float | None
    samples: int
    samples_per_s: float | None
    batch_size: int
    micro_batch_size: int | None
    trainable_tensors: int | None
    notes: tuple[str, ...] = field(default=())
    preparation_energy_j: float = 0.0  # on the device before training (auto's pilots)

    @property
    def energy_per_sample_j(self) -> float | None:
        """Modelled energy per training sample of the training stage: what the sample budget
        costs, comparable across strategies whose steps hold different batch sizes (TinyOL's 1
        against a batch of 8)."""
        if self.energy_per_step_j is None:
            return None
        return self.energy_per_step_j / self.batch_size

    @property
    def energy_per_sample_with_preparation_j(self) -> float | None:
        """`energy_per_sample_j` plus the preparation run on the device (auto's pilots) spread
        over the sample budget."""
        e = self.energy_per_sample_j
        if e is None:
            return None
        return e + (self.preparation_energy_j / self.samples if self.samples else 0.0)


def _pretrained(task: ModelTask, seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model pretrained on classes 0-4, cached by configuration (atomic writes)."""
    from edgetrain.data import load_dataset, resize_for
    from edgetrain.models import build_model

    if task.model == "mcu-cnn":
        from edgetrain.tasks import pretrain

        model, example, _ = pretrain(
            "mcu-cnn", samples=task.pretrain_samples, epochs=task.pretrain_epochs, seed=seed
        )
        return model, example
    torch.manual_seed(seed)
    model, example = build_model(task.model)
    key = (
        f"{task.model}-fashion-mnist_0-4-resized-n{task.pretrain_samples or 'all'}"
        f"-e{task.pretrain_epochs}-s{seed}"
    )
    path = cache_dir() / "pretrained" / f"{key}.safetensors"
    if path.exists():
        model.load_state_dict(load_tensors(path))
        return model, example
    train = load_dataset("fashion-mnist:0-4", split="train", limit=task.pretrain_samples)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(task.pretrain_epochs):
        perm = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), 32):
            idx = perm[i : i + 32]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(resize_for(train.x[idx], example.shape)), train.y[idx]).backward()
            opt.step()
    save_tensors_atomic(model.state_dict(), path)
    return model, example


def _data(task: ModelTask, example: torch.Tensor, seed: int):
    from edgetrain.data import load_dataset, resize_for

    train = load_dataset(NEW_CLASSES, split="train", limit=task.samples, seed=seed)
    test = load_dataset(NEW_CLASSES, split="test", limit=task.test_limit, seed=seed)
    calib = load_dataset("fashion-mnist:0-4", split="train", limit=CALIBRATION_SAMPLES, seed=seed)
    return (
        resize_for(train.x, example.shape),
        train.y,
        resize_for(test.x, example.shape),
        test.y,
        resize_for(calib.x, example.shape),
    )


def _plan_key(prepared) -> str:
    d = prepared.plan.to_dict()
    for k in ("device", "budget_bytes", "predicted", "deadline_s", "notes", "objective"):
        d.pop(k, None)
    return json.dumps(d, sort_keys=True)


def _prepare_kwargs(system: SystemName, task: ModelTask, data, cfg: BenchConfig, cache: dict):
    """What each strategy's preparation stage takes beyond the common arguments."""
    x, y, _, _, calib = data
    if system is SystemName.TINYOL:
        return {"known_classes": OLD_CLASSES}
    if system in (SystemName.TTE, SystemName.MANDHELING, SystemName.MINILEARN):
        return {"calibration": calib, "analysis": (x, y)}
    if system is SystemName.AUTO:  # NOTE [ Task-adaptive selection ] (strategies/_auto.py)
        return {
            "analysis": (x, y),
            "lr": cfg.lr,
            "seed": cfg.seed,
            "samples": task.samples,
            "pilot_cache": cache.setdefault("auto-pilots", {}),
        }
    return {}


def _run_one(
    system: SystemName,
    task: ModelTask,
    device: str,
    base: torch.nn.Module,
    example: torch.Tensor,
    data,
    cfg: BenchConfig,
    cache: dict,
) -> BenchRow:
    sysm = get_system(system)
    # Every run starts from the same global RNG state, so a strategy's random initialisation
    # (TinyTL's lite residuals) does not depend on which strategies ran before it.
    torch.manual_seed(cfg.seed)
    model = copy.deepcopy(base)
    batch = 1 if system is SystemName.TINYOL else task.batch_size
    common = {"system": system.value, "model": task.model, "device": device}
    try:
        prepared = sysm.prepare(
            model,
            example,
            device=device,
            batch_size=batch,
            name=task.model,
            **_prepare_kwargs(system, task, data, cfg, cache),
        )
    except PlanInfeasibleError as e:
        from edgetrain.cost import load_device

        return BenchRow(
            **common,
            fits=False,
            budget_bytes=load_device(device).ram_bytes,
            predicted_peak_bytes=None,
            measured_peak_bytes=None,
            storage_bytes_written_per_step=None,
            host_step_s=None,
            device_step_s=None,
            energy_per_step_j=None,
            accuracy_before=None,
            accuracy_after=None,
            samples=0,
            samples_per_s=None,
            batch_size=batch,
            micro_batch_size=None,
            trainable_tensors=None,
            notes=(f"does not fit: {e}",),
        )
    before, after, rep, err = _train_cached(system, task, sysm, prepared, data, cfg, cache)
    p = prepared.plan
    planned = {
        "budget_bytes": p.budget_bytes,
        "predicted_peak_bytes": prepared.predicted_peak_bytes,
        "storage_bytes_written_per_step": p.predicted.storage_bytes_written,
        "device_step_s": p.predicted.latency_s,
        "energy_per_step_j": p.predicted.energy_j,
        "accuracy_before": before,
        "batch_size": p.batch_size,  # auto chooses its own (up to the task's)
        "micro_batch_size": p.micro_batch_size,
        "trainable_tensors": len(p.trainable()),
    }
    if rep is None:
        return BenchRow(
            **common,
            **planned,
            fits=prepared.fits and not err.startswith("does not fit"),
            measured_peak_bytes=None,
            host_step_s=None,
            accuracy_after=None,
            samples=0,
            samples_per_s=None,
            notes=(*prepared.notes, f"training failed, {err}"),
        )
    steps = max(1, rep.steps)
    return BenchRow(
        **common,
        **planned,
        fits=prepared.fits,
        measured_peak_bytes=rep.measured_peak_bytes,
        host_step_s=_finite(rep.host_step_s),
        accuracy_after=after,
        samples=rep.samples,
        samples_per_s=_finite(rep.samples_per_s),
        notes=(
            *prepared.notes,
            *rep.notes,
            f"storage written on host: {rep.storage_bytes_written // steps:,} B/step",
        ),
        preparation_energy_j=dict(prepared.state).get("preparation_energy_j", 0.0),
    )


def _train_cached(system: SystemName, task: ModelTask, sysm, prepared, data, cfg, cache):
    """(accuracy before, after, report, error) of training `prepared`; a plan already trained
    for this model (same decisions on another device) is not trained again."""
    x, y, tx, ty, _ = data
    p = prepared.plan
    train_kwargs = {}
    key = (system, task.model, _plan_key(prepared))
    if system is SystemName.SAGE:
        drop = int(cfg.sage_budget_drop * prepared.predicted_peak_bytes)
        half = max(1, task.samples // p.batch_size // 2)
        train_kwargs["budget_schedule"] = lambda s, b=p.budget_bytes: b if s < half else drop
        key += (prepared.predicted_peak_bytes,)
    if key not in cache:
        before = accuracy(prepared.model, tx, ty)
        try:
            rep = sysm.train(
                prepared, x, y, samples=task.samples, lr=cfg.lr, seed=cfg.seed, **train_kwargs
            )
            cache[key] = (before, accuracy(prepared.model, tx, ty), rep, None)
        except PlanInfeasibleError as e:  # Sage's re-plan after the drop may not fit
            cache[key] = (before, None, None, f"does not fit after the budget drop: {e}")
        except NonFiniteLossError as e:  # recorded, not hidden: the run diverged
            cache[key] = (before, None, None, f"diverged: {e}")
    return cache[key]


def _qas_ablation(
    task: ModelTask, base, example, data, cfg: BenchConfig, rows: list[BenchRow]
) -> dict:
    """TTE's int8 training with and without QAS, same layers, samples and learning rate, next
    to fp32 fine-tuning (the `full` row that ran on the host with the same samples)."""
    from edgetrain.strategies import _tte

    x, y, tx, ty, calib = data
    out: dict = {"model": task.model, "samples": task.samples, "lr": cfg.lr}
    budget = 1 << 40  # the same layers on every device: the ablation is about the arithmetic
    for qas in (True, False):
        prepared = _tte.prepare(
            copy.deepcopy(base),
            example,
            device=cfg.devices[0],
            budget_bytes=budget,
            batch_size=task.batch_size,
            name=task.model,
            calibration=calib,
            analysis=(x, y),
            qas=qas,
        )
        _tte.train(prepared, x, y, samples=task.samples, lr=cfg.lr, seed=cfg.seed)
        out["qas_accuracy" if qas else "no_qas_accuracy"] = accuracy(prepared.model, tx, ty)
        out["layers"] = prepared.plan.notes[0]
    full = [
        r.accuracy_after
        for r in rows
        if r.system == "full" and r.model == task.model and r.accuracy_after is not None
    ]
    out["fp32_full_accuracy"] = full[0] if full else None
    return out


def _finite(v: float) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def dominated(row: BenchRow, others: list[BenchRow], cost: str) -> bool:
    """Whether another fitting row has >= accuracy at <= cost, one of them strictly better."""
    a, c = row.accuracy_after, getattr(row, cost)
    if a is None or c is None:
        return True
    for o in others:
        oa, oc = o.accuracy_after, getattr(o, cost)
        if o is row or not o.fits or oa is None or oc is None:
            continue
        if oa >= a and oc <= c and (oa > a or oc < c):
            return True
    return False


def pareto_front(rows: list[BenchRow], cost: str) -> list[BenchRow]:
    ok = [
        r for r in rows if r.fits and r.accuracy_after is not None and getattr(r, cost) is not None
    ]
    return sorted([r for r in ok if not dominated(r, ok, cost)], key=lambda r: getattr(r, cost))


def auto_pareto(rows: list[BenchRow]) -> list[dict]:
    out = []
    for m in dict.fromkeys(r.model for r in rows):
        for d in dict.fromkeys(r.device for r in rows):
            grp = [r for r in rows if r.model == m and r.device == d]
            auto = [r for r in grp if r.system == "auto"]
            if not auto:
                continue
            a = auto[0]
            out.append(
                {
                    "model": m,
                    "device": d,
                    "auto_fits": a.fits,
                    "on_front_accuracy_vs_peak": a.fits
                    and not dominated(a, grp, "predicted_peak_bytes"),
                    "on_front_accuracy_vs_energy": a.fits
                    and not dominated(a, grp, "energy_per_sample_j"),
                    "on_front_accuracy_vs_energy_with_preparation": a.fits
                    and not dominated(a, grp, "energy_per_sample_with_preparation_j"),
                }
            )
    return out


def _fmt(v, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "-" if v is None else format(v * scale, spec) + unit


def markdown_table(rows: list[BenchRow]) -> str:
    head = (
        "| strategy | model | device | batch | fits | predicted peak | measured peak | storage/step | "
        "host step | device step | energy/step | energy/sample | prep. energy | acc. before | acc. after | "
        "samples/s |"
    )
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        lines.append(
            f"| {r.system} | {r.model} | {r.device} | {r.batch_size} | {'yes' if r.fits else 'no'} | "
            f"{format_bytes(r.predicted_peak_bytes)} | {format_bytes(r.measured_peak_bytes)} | "
            f"{format_bytes(r.storage_bytes_written_per_step)} | {_fmt(r.host_step_s, '.2f', 1e3, ' ms')} | "
            f"{_fmt(r.device_step_s, '.3g', 1e3, ' ms')} | {_fmt(r.energy_per_step_j, '.3g', 1e3, ' mJ')} | "
            f"{_fmt(r.energy_per_sample_j, '.3g', 1e3, ' mJ')} | "
            f"{_fmt(r.preparation_energy_j if r.preparation_energy_j else None, '.3g', 1, ' J')} | "
            f"{_fmt(r.accuracy_before, '.1f', 100, ' %')} | {_fmt(r.accuracy_after, '.1f', 100, ' %')} | "
            f"{_fmt(r.samples_per_s, ',.0f')} |"
        )
    return "\n".join(lines) + "\n"


def _plots(rows: list[BenchRow], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from edgetrain.plot import save_figure_atomic

    paths = []
    models = list(dict.fromkeys(r.model for r in rows))
    devices = list(dict.fromkeys(r.device for r in rows))
    for cost, label, fname in (
        ("predicted_peak_bytes", "peak memory (KiB, predicted)", "accuracy_vs_peak"),
        ("energy_per_sample_j", "energy per sample (mJ, modelled)", "accuracy_vs_energy"),
    ):
        scale = 1 / 1024 if cost == "predicted_peak_bytes" else 1e3
        fig, axes = plt.subplots(
            len(models),
            len(devices),
            squeeze=False,
            figsize=(4.5 * len(devices), 3.6 * len(models)),
        )
        for i, m in enumerate(models):
            for j, d in enumerate(devices):
                ax = axes[i][j]
                grp = [
                    r
                    for r in rows
                    if r.model == m
                    and r.device == d
                    and r.accuracy_after is not None
                    and getattr(r, cost) is not None
                ]
                for r in grp:
                    ax.scatter(
                        getattr(r, cost) * scale,
                        100 * r.accuracy_after,
                        marker="o" if r.fits else "x",
                        s=36,
                    )
                    ax.annotate(
                        r.system,
                        (getattr(r, cost) * scale, 100 * r.accuracy_after),
                        fontsize=7,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
                front = pareto_front(grp, cost)
                if front:  # hollow red rings joined by a staircase
                    ax.plot(
                        [getattr(r, cost) * scale for r in front],
                        [100 * r.accuracy_after for r in front],
                        "-o",
                        color="tab:red",
                        mfc="none",
                        ms=11,
                        lw=1,
                        drawstyle="steps-post",
                        label="Pareto front",
                    )
                    ax.legend(fontsize=7, loc="best")
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.set_title(f"{m} on {d}", fontsize=9)
                ax.set_xlabel(label, fontsize=8)
                ax.set_ylabel("accuracy on classes 5-9 (%)", fontsize=8)
        fig.tight_layout()
        paths.append(save_figure_atomic(fig, out / f"{fname}.png"))
    fig, axes = plt.subplots(len(models), 1, squeeze=False, figsize=(9, 3.4 * len(models)))
    for i, m in enumerate(models):
        ax = axes[i][0]
        systems = list(dict.fromkeys(r.system for r in rows if r.model == m))
        width = 0.8 / max(1, len(devices))
        for j, d in enumerate(devices):
            vals = []
            for s in systems:
                r = next(
                    (r for r in rows if r.model == m and r.device == d and r.system == s), None
                )
                vals.append(1e3 * r.energy_per_sample_j if r and r.energy_per_sample_j else 0.0)
            ax.bar([k + j * width for k in range(len(systems))], vals, width, label=d)
        ax.set_xticks(
            [k + width * (len(devices) - 1) / 2 for k in range(len(systems))], systems, fontsize=8
        )
        ax.set_yscale("log")
        ax.set_ylabel("energy per sample (mJ, modelled)", fontsize=8)
        ax.set_title(m, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(save_figure_atomic(fig, out / "energy.png"))
    return paths


def run_bench(
    cfg: BenchConfig,
    out_dir: "str | Path",
    *,
    show_progress: bool = True,
    console: Console | None = None,
) -> dict:
    """Run the bench, write `bench.json`, `bench.md` and the plots into `out_dir`."""
    if not cfg.tasks or not cfg.devices or not cfg.systems:
        raise InvalidArgumentError("the bench needs at least one model, device and strategy")
    from edgetrain.cost import load_device

    for d in cfg.devices:
        load_device(d)  # unknown devices fail before any work
    out = Path(out_dir)
    t0 = time.perf_counter()
    rows: list[BenchRow] = []
    ablations: list[dict] = []
    console = console or Console(stderr=True)
    total = len(cfg.tasks) * len(cfg.devices) * len(cfg.systems)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
        transient=True,
    ) as bar:
        job = bar.add_task("bench", total=total)
        for task in cfg.tasks:
            bar.update(job, description=f"pretraining {task.model} on classes 0-4")
            base, example = _pretrained(task, cfg.seed)
            data = _data(task, example, cfg.seed)
            cache: dict = {}
            for device in cfg.devices:
                for system in cfg.systems:
                    bar.update(job, description=f"{system.value} / {task.model} / {device}")
                    rows.append(_run_one(system, task, device, base, example, data, cfg, cache))
                    bar.advance(job)
            if SystemName.TTE in cfg.systems:
                bar.update(job, description=f"QAS ablation / {task.model}")
                ablations.append(_qas_ablation(task, base, example, data, cfg, rows))
    result = {
        "task": f"pretrained on fashion-mnist:0-4, learn {NEW_CLASSES} on the device",
        "config": {
            "tasks": [asdict(t) for t in cfg.tasks],
            "devices": list(cfg.devices),
            "systems": [s.value for s in cfg.systems],
            "lr": cfg.lr,
            "seed": cfg.seed,
            "sage_budget_drop": cfg.sage_budget_drop,
        },
        "host": {"torch": torch.__version__, "threads": torch.get_num_threads()},
        "rows": [
            {
                **asdict(r),
                "energy_per_sample_j": r.energy_per_sample_j,
                "energy_per_sample_with_preparation_j": r.energy_per_sample_with_preparation_j,
            }
            for r in rows
        ],
        "auto_pareto": auto_pareto(rows),
        "qas_ablation": ablations,
        "elapsed_s": time.perf_counter() - t0,
    }
    write_json_atomic(result, out / "bench.json")
    write_text_atomic(markdown_table(rows), out / "bench.md")
    result["plots"] = [str(p) for p in _plots(rows, out)]
    return result


def config_from_args(
    quick: bool,
    systems: "list[str] | None" = None,
    devices: "list[str] | None" = None,
    models: "list[str] | None" = None,
    samples: int | None = None,
) -> BenchConfig:
    cfg = BenchConfig.quick() if quick else BenchConfig.full()
    if systems:
        cfg = replace(cfg, systems=tuple(get_system(s).name for s in systems))
    if devices:
        cfg = replace(cfg, devices=tuple(devices))
    if models:
        known = {t.model: t for t in (*BenchConfig.full().tasks, *cfg.tasks)}
        bad = [m for m in models if m not in known]
        if bad:
            raise InvalidArgumentError(
                f"the bench runs models {', '.join(sorted(known))}; {bad} is not one of them"
            )
        cfg = replace(
            cfg, tasks=tuple(next((t for t in cfg.tasks if t.model == m), known[m]) for m in models)
        )
    if samples is not None:
        samples = validate.positive_int(samples, "samples per strategy (--samples)")
        cfg = replace(cfg, tasks=tuple(replace(t, samples=samples) for t in cfg.tasks))
    return cfg
