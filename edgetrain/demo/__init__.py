"""`edgetrain demo`: the survey's two-stage story on the built-in default, outside the pipeline.

`run_demo` pretrains `mcu-cnn` on Fashion-MNIST classes 0-4, profiles and plans on-device
learning of classes 5-9, trains the plan, and (where the Arm toolchain is installed) compiles
the same learning to C and runs it under QEMU (`train_on_mcu`).
"""

from edgetrain.demo._demo import run_demo
from edgetrain.demo._mcu import demo_mcu_stage, train_on_mcu

__all__ = ["demo_mcu_stage", "run_demo", "train_on_mcu"]
