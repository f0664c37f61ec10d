"""Skip markers for tests that need a C toolchain: the host compiler or the Arm one with QEMU."""

import shutil

import pytest

HAS_ARM = all(
    shutil.which(t) for t in ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
)
needs_arm = pytest.mark.skipif(
    not HAS_ARM,
    reason="Arm toolchain/QEMU absent: apt-get install -y gcc-arm-none-eabi "
    "libnewlib-arm-none-eabi qemu-system-arm (scripts/setup.sh does it)",
)
needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no host C compiler (cc)")
