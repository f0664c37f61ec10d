"""Benchmark: the int8 integer backward (NOTE [ int8 integer backward ]) against the float64
surrogate it replaces, in the PyTorch simulation, on bench/qas.py's new-class transfer task.

    .venv/bin/python bench/int8_backward.py [--out results/bench] [--steps 500] [--seeds 0,1]

`mcu-cnn` pretrained on Fashion-MNIST classes 0-4 learns classes 5-9: the int8 graph
(calibrated on 256 images of classes 0-4, weight-scale headroom 8 on the trainable layers),
QAS-scaled SGD with a cosine-decayed lr, batch 16, the same samples for every run; `last2`
(features.3.0 and the classifier) and `all` (every conv and the classifier), each at a learning
rate from bench/qas.py's grid, fp32 master copy (TTE's setting) and int8 weight storage (the C
trainer's), with `Int8Backward.INTEGER` and `FLOAT_SURROGATE`. Accuracy: top-1 of the integer
reference `run_int8` on the held-out test images of classes 5-9. Writes int8_backward.json/.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from edgetrain.data import load_dataset
from edgetrain.quant import (
    Int8Backward,
    QuantModel,
    QuantSGD,
    WeightStorage,
    accuracy_int8,
    op_names,
    quantize,
)
from edgetrain.storage import write_json_atomic, write_text_atomic
from edgetrain.tasks import pretrain

SETTINGS = {"last2": (["features.3.0", "classifier"], 2.0), "all": (None, 0.05)}


def train(graph, trainable, batches, lr, test, storage, backward) -> float:
    qm = QuantModel(graph, trainable=trainable, storage=storage, backward=backward)
    opt = QuantSGD(qm, lr=lr, qas=True)
    for i, (xb, yb) in enumerate(batches):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * i / len(batches)))
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(qm(xb), yb).backward()
        opt.step()
    return accuracy_int8(qm.to_graph(), test.x, test.y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/bench")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args()
    model, _, _ = pretrain()
    model.eval()
    calib = load_dataset("fashion-mnist:0-4", split="train", limit=256, seed=1)
    train_set = load_dataset("fashion-mnist:5-9", split="train")
    test = load_dataset("fashion-mnist:5-9", split="test")
    rows = []
    for setting, (layers, lr) in SETTINGS.items():
        names = layers or list(op_names(quantize(model, calib.x[:8])))
        graph = quantize(model, calib.x, name="mcu-cnn", weight_headroom={n: 8.0 for n in names})
        for storage in (WeightStorage.FP32_MASTER, WeightStorage.INT8):
            for backward in (Int8Backward.FLOAT_SURROGATE, Int8Backward.INTEGER):
                accs = []
                for seed in (int(s) for s in args.seeds.split(",")):
                    gen = torch.Generator().manual_seed(seed)
                    idx = torch.randint(0, len(train_set), (args.steps, 16), generator=gen)
                    batches = [(train_set.x[i], train_set.y[i]) for i in idx]
                    accs.append(train(graph, layers, batches, lr, test, storage, backward))
                rows.append(
                    {
                        "setting": setting,
                        "lr": lr,
                        "storage": storage.value,
                        "backward": backward.value,
                        "steps": args.steps,
                        "accuracy_per_seed": accs,
                        "accuracy_mean": statistics.mean(accs),
                    }
                )
                print(rows[-1], flush=True)
    lines = [
        "| setting | lr | weight storage | backward | accuracy classes 5-9 (per seed) | mean |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        per = " / ".join(f"{a:.1%}" for a in r["accuracy_per_seed"])
        lines.append(
            f"| {r['setting']} | {r['lr']} | {r['storage']} | {r['backward']} | {per} | "
            f"{r['accuracy_mean']:.1%} |"
        )
    out = Path(args.out)
    write_json_atomic({"rows": rows}, out / "int8_backward.json")
    write_text_atomic("\n".join(lines) + "\n", out / "int8_backward.md")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
