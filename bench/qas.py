"""Benchmark: int8 training with and without QAS against fp32, on the new-class transfer task.

    .venv/bin/python bench/qas.py [--out results/bench] [--settings last2,all] [--quick]

`mcu-cnn` pretrained on Fashion-MNIST classes 0-4 (the demo's cached pretraining) learns classes
5-9 for the same number of steps, with the same samples, learning rate (cosine-decayed plain
SGD, batch 16) and trainable layers, as:
- fp32: the BN-folded float32 model (the exact parameters the int8 graph has: conv weights
  and biases, classifier), plain `torch.optim.SGD`;
- int8 + QAS: the int8 graph (`edgetrain.quant`), QAS-scaled SGD, fp32 master copy of the
  trainable layers (TTE's setting);
- int8 + QAS, int8 storage: no master copy, weights re-rounded after every step;
- int8 without QAS: the same graph and master copy, unscaled gradients (at the same lr, and
  at fp32's best lr times 100 ... 10,000, since unscaled int8 gradients are s^2 times smaller).
Two settings: `last2` (sparse update of the last conv and the classifier, as TTE trains a few
layers) and `all` (every conv and the classifier), each over its own lr grid (DEFAULT_LRS),
two sample-order seeds.
The int8 graph is calibrated on 256 training images of classes 0-4 (the preparation stage
sees only the pretraining data); its trainable layers get a weight-scale headroom (default 8)
so the new classes' weights can grow before they saturate at +-127 (a sweep is reported).
Accuracy is top-1 on the held-out test images of classes 5-9, the int8 models run by the integer
reference `run_int8`. Writes qas.json and qas.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgetrain.data import load_dataset
from edgetrain.quant import (
    AccumulatorOverflowError,
    QuantModel,
    QuantSGD,
    WeightStorage,
    accuracy_int8,
    fold_batchnorm,
    op_names,
    quantize,
)
from edgetrain.storage import write_json_atomic, write_text_atomic
from edgetrain.tasks import accuracy, pretrain

SETTINGS = {"last2": ["features.3.0", "classifier"], "all": None}
# Learning-rate grids chosen to bracket fp32's best lr in each setting (training every layer
# diverges above 0.1; the sparse update of the last two layers tolerates far larger ones).
DEFAULT_LRS = {"last2": [0.5, 1.0, 2.0, 5.0, 10.0], "all": [0.01, 0.02, 0.05, 0.1]}


def cosine(lr: float, i: int, steps: int) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * i / steps))


def train_fp32(model, example, trainable, batches, lr, test):
    net = fold_batchnorm(model, example, "mcu-cnn")
    params = [
        p
        for name, ps in net.layer_params().items()
        if trainable is None or name in trainable
        for p in ps
    ]
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=lr)
    net.train()
    for i, (xb, yb) in enumerate(batches):
        for g in opt.param_groups:
            g["lr"] = cosine(lr, i, len(batches))
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(xb), yb).backward()
        opt.step()
    return accuracy(net, test.x, test.y), None


def train_int8(graph, trainable, batches, lr, test, *, qas, storage):
    qm = QuantModel(graph, trainable=trainable, storage=storage)
    opt = QuantSGD(qm, lr=lr, qas=qas)
    try:
        for i, (xb, yb) in enumerate(batches):
            for g in opt.param_groups:
                g["lr"] = cosine(lr, i, len(batches))
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(qm(xb), yb).backward()
            opt.step()
    except AccumulatorOverflowError as e:
        return None, f"int32 accumulator overflow at step {i}: {str(e).split(';')[0]}"
    return accuracy_int8(qm.to_graph(), test.x, test.y), None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument(
        "--lrs", default=None, help="comma-separated lrs for every setting (default: DEFAULT_LRS)"
    )
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--headroom", type=float, default=8.0)
    ap.add_argument(
        "--noqas-multipliers",
        default="100,300,1000,3000,10000",
        help="no-QAS runs at fp32's best lr times these factors",
    )
    ap.add_argument("--settings", default="last2,all")
    ap.add_argument("--name", default=None, help="output file stem (default qas, qas_quick)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="200 steps, lr 0.05, one seed, last2 only, 1,000 test images",
    )
    args = ap.parse_args()
    if args.quick:
        args.steps, args.lrs, args.seeds, args.settings = 200, args.lrs or "0.5", "0", "last2"
        args.noqas_multipliers = "10000"
    settings = args.settings.split(",")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; choose from {', '.join(SETTINGS)}")
    lrs_of = {
        s: ([float(v) for v in args.lrs.split(",")] if args.lrs else DEFAULT_LRS[s])
        for s in settings
    }
    mults = [float(v) for v in args.noqas_multipliers.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    torch.set_num_threads(1)
    t0 = time.perf_counter()

    model, example, info = pretrain()
    model.eval()
    calib = load_dataset("fashion-mnist:0-4", split="train", limit=256, seed=1)
    old_test = load_dataset("fashion-mnist:0-4", split="test")
    train = load_dataset("fashion-mnist:5-9", split="train")
    test = load_dataset("fashion-mnist:5-9", split="test", limit=1000 if args.quick else None)

    def graph_for(setting: str, headroom: float):
        names = SETTINGS[setting] or list(op_names(quantize(model, calib.x[:8])))
        return quantize(
            model, calib.x, name="mcu-cnn", weight_headroom={n: headroom for n in names}
        )

    def batches_for(seed: int):
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, len(train), (args.steps, args.batch_size), generator=gen)
        return [(train.x[i], train.y[i]) for i in idx]

    plain = quantize(model, calib.x, name="mcu-cnn")
    before = {
        "fp32_classes_0_4": accuracy(model, old_test.x, old_test.y),
        "int8_classes_0_4": accuracy_int8(plain, old_test.x, old_test.y),
        "fp32_classes_5_9": accuracy(model, test.x, test.y),
        "int8_classes_5_9": accuracy_int8(plain, test.x, test.y),
    }
    graphs = {s: graph_for(s, args.headroom) for s in settings}
    for s, g in graphs.items():
        before[f"int8_headroom_{s}_classes_0_4"] = accuracy_int8(g, old_test.x, old_test.y)

    methods = [
        ("fp32", None),
        ("int8+QAS", (True, WeightStorage.FP32_MASTER)),
        ("int8 no QAS", (False, WeightStorage.FP32_MASTER)),
    ]
    jobs = [
        (s, lr, seed, m) for s in settings for lr in lrs_of[s] for seed in seeds for m in methods
    ]
    rows: list[dict] = []
    cache = {seed: batches_for(seed) for seed in seeds}

    def run(setting, lr, seed, method, spec, graph=None, headroom=None):
        t = time.perf_counter()
        if spec is None:
            acc, note = train_fp32(model, example, SETTINGS[setting], cache[seed], lr, test)
        else:
            acc, note = train_int8(
                graph or graphs[setting],
                SETTINGS[setting],
                cache[seed],
                lr,
                test,
                qas=spec[0],
                storage=spec[1],
            )
        rows.append(
            {
                "setting": setting,
                "method": method,
                "lr": lr,
                "seed": seed,
                "headroom": args.headroom if headroom is None else headroom,
                "accuracy": acc,
                "note": note,
                "seconds": time.perf_counter() - t,
            }
        )

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bar:
        task = bar.add_task("grid", total=len(jobs))
        for s, lr, seed, (m, spec) in jobs:
            bar.update(task, description=f"{s} lr {lr} seed {seed} {m}")
            run(s, lr, seed, m, spec)
            bar.advance(task)

        def mean_acc(setting, method, lr):
            v = [
                r["accuracy"]
                for r in rows
                if r["setting"] == setting
                and r["method"] == method
                and r["lr"] == lr
                and r["accuracy"] is not None
                and r["headroom"] == args.headroom
            ]
            return statistics.fmean(v) if v else float("nan")

        best = {s: max(lrs_of[s], key=lambda lr: mean_acc(s, "fp32", lr)) for s in settings}
        extra = []
        for s in settings:
            lr = best[s]
            for seed in seeds:
                extra.append(
                    (s, lr, seed, "int8+QAS, int8 storage", (True, WeightStorage.INT8), None, None)
                )
                for mult in mults:
                    extra.append(
                        (
                            s,
                            lr * mult,
                            seed,
                            "int8 no QAS",
                            (False, WeightStorage.FP32_MASTER),
                            None,
                            None,
                        )
                    )
            if s == "last2" and not args.quick:
                for h in (1.0, 2.0, 4.0):
                    extra.append(
                        (
                            s,
                            lr,
                            seeds[0],
                            "int8+QAS",
                            (True, WeightStorage.FP32_MASTER),
                            graph_for(s, h),
                            h,
                        )
                    )
        task2 = bar.add_task("extras", total=len(extra))
        for s, lr, seed, m, spec, g, h in extra:
            bar.update(
                task2,
                description=f"{s} lr {lr:g} seed {seed} {m}" + (f" headroom {h:g}" if h else ""),
            )
            run(s, lr, seed, m, spec, g, h)
            bar.advance(task2)

    def best_of(setting, method):
        lrs_m = sorted(
            {
                r["lr"]
                for r in rows
                if r["setting"] == setting
                and r["method"] == method
                and r["headroom"] == args.headroom
            }
        )
        scored = [(mean_acc(setting, method, v), v) for v in lrs_m]
        scored = [(a, v) for a, v in scored if not math.isnan(a)]
        return max(scored) if scored else (float("nan"), None)

    summary = {}
    for s in settings:
        lr = best[s]
        f32, qas, noq = (mean_acc(s, m, lr) for m in ("fp32", "int8+QAS", "int8 no QAS"))
        summary[s] = {
            "lr": lr,
            "fp32": f32,
            "int8_qas": qas,
            "int8_no_qas": noq,
            "int8_qas_int8_storage": mean_acc(s, "int8+QAS, int8 storage", lr),
            "qas_minus_fp32_points": 100 * (qas - f32),
            "qas_within_1_point_of_fp32": abs(qas - f32) <= 0.01,
            "no_qas_minus_qas_points": 100 * (noq - qas),
            "best_over_lrs": {
                m: {"accuracy": a, "lr": v}
                for m in ("fp32", "int8+QAS", "int8 no QAS")
                for a, v in [best_of(s, m)]
            },
            "no_qas_lr_sweep": {f"{m:g}": mean_acc(s, "int8 no QAS", lr * m) for m in mults},
        }
    result = {
        "task": "mcu-cnn pretrained on fashion-mnist:0-4, learns fashion-mnist:5-9",
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lrs": lrs_of,
        "seeds": seeds,
        "schedule": "cosine",
        "headroom": args.headroom,
        "quick": args.quick,
        "test_images": len(test),
        "pretrain": info,
        "before": before,
        "summary": summary,
        "rows": rows,
        "torch": torch.__version__,
        "elapsed_s": time.perf_counter() - t0,
        "argv": " ".join(sys.argv[1:]),
    }
    out = Path(args.out)
    name = args.name or ("qas_quick" if args.quick else "qas")
    write_json_atomic(result, out / f"{name}.json")
    write_text_atomic(render(result), out / f"{name}.md")
    print(render(result))


def _pct(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def render(r: dict) -> str:
    seeds = r["seeds"]
    lines = [
        f"Held-out accuracy (%) on Fashion-MNIST classes 5-9 after {r['steps']} SGD steps of "
        f"batch {r['batch_size']} (cosine lr), mean over sample-order seeds {seeds}; "
        f"{r['test_images']:,} test images. Before on-device learning: fp32 "
        f"{_pct(r['before']['fp32_classes_5_9'])} %, int8 "
        f"{_pct(r['before']['int8_classes_5_9'])} % on 5-9; on 0-4 fp32 "
        f"{_pct(r['before']['fp32_classes_0_4'])} %, int8 "
        f"{_pct(r['before']['int8_classes_0_4'])} %.",
        "",
    ]
    for s, summ in r["summary"].items():
        trained = "features.3.0 + classifier" if s == "last2" else "every conv and the classifier"
        lines += [
            f"**{s}** (trains {trained}; int8 weight headroom {r['headroom']:g}):",
            "",
            "| lr | fp32 | int8 + QAS | int8 no QAS | QAS − fp32 (points) |",
            "|---|---|---|---|---|",
        ]
        for lr in r["lrs"][s]:
            acc = {}
            for m in ("fp32", "int8+QAS", "int8 no QAS"):
                v = [
                    x["accuracy"]
                    for x in r["rows"]
                    if x["setting"] == s
                    and x["method"] == m
                    and x["lr"] == lr
                    and x["headroom"] == r["headroom"]
                ]
                ok = [a for a in v if a is not None]
                acc[m] = statistics.fmean(ok) if ok and len(ok) == len(v) else None
            d = (
                "—"
                if acc["fp32"] is None or acc["int8+QAS"] is None
                else f"{100 * (acc['int8+QAS'] - acc['fp32']):+.1f}"
            )
            lines.append(
                f"| {lr:g} | {_pct(acc['fp32'])} | {_pct(acc['int8+QAS'])} | "
                f"{_pct(acc['int8 no QAS'])} | {d} |"
            )
        lines.append("")
        lr = summ["lr"]
        lines.append(
            f"At lr {lr:g} (fp32's best): fp32 {_pct(summ['fp32'])} %, int8 + QAS "
            f"{_pct(summ['int8_qas'])} % ({summ['qas_minus_fp32_points']:+.1f} points), "
            f"int8 without QAS {_pct(summ['int8_no_qas'])} %; int8 + QAS with int8 "
            f"storage (no master copy, re-rounded every step) "
            f"{_pct(summ['int8_qas_int8_storage'])} %."
        )
        sweep = []
        for m, a in summ["no_qas_lr_sweep"].items():
            notes = {
                x["note"]
                for x in r["rows"]
                if x["setting"] == s
                and x["note"]
                and x["method"] == "int8 no QAS"
                and abs(x["lr"] - lr * float(m)) < 1e-9 * lr * float(m)
            }
            sweep.append(
                f"lr {lr * float(m):g}: {_pct(a)}" + (" (int32 overflow)" if notes else "")
            )
        lines.append(
            "int8 without QAS at larger learning rates (unscaled integer gradients are "
            "s^2 times smaller): " + ", ".join(sweep) + "."
        )
        b = summ["best_over_lrs"]
        lines.append(
            "Best over the learning rates tried: "
            + ", ".join(
                f"{m} {_pct(v['accuracy'])} % (lr {v['lr']:g})"
                for m, v in b.items()
                if v["lr"] is not None
            )
            + "."
        )
        hr = [
            x
            for x in r["rows"]
            if x["setting"] == s and x["method"] == "int8+QAS" and x["headroom"] != r["headroom"]
        ]
        if hr:
            lines.append(
                "Weight headroom sweep (int8 + QAS, seed "
                f"{seeds[0]}): "
                + ", ".join(f"{x['headroom']:g}: {_pct(x['accuracy'])} %" for x in hr)
                + "."
            )
        lines.append("")
    lines.append(
        f"Reproduce: `.venv/bin/python bench/qas.py {r['argv']}` "
        f"({r['elapsed_s'] / 60:.1f} min on 2 shared cores, one thread)."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
