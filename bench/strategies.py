"""Benchmark: every surveyed on-device training system on the same transfer task and devices.

    .venv/bin/python bench/strategies.py [--quick] [--out results/bench-strategies]

Same as `edgetrain bench`: Fashion-MNIST new-class transfer (pretrained on classes 0-4, learn
5-9 on the device) with mcu-cnn (and mbv2-w0.35 on 3x128x128 resized images unless --quick), on
nrf52840, rpi4 and snapdragon-865. Writes bench.json, bench.md, accuracy_vs_peak.png,
accuracy_vs_energy.png and energy.png (see edgetrain/strategies/_bench.py for every column).
"""

from __future__ import annotations

import argparse
import sys

from edgetrain.strategies import register


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    register(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
