"""Compilation targets: toolchain, flags, emulator and capability flags (FPU, DSP).

A target is data. The renderer reads only its capability flags and its name; the builder reads
the compiler, flags and emulator.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edgetrain.errors import InvalidArgumentError


class TargetKind(enum.Enum):
    HOST = "host"
    CORTEX_M = "cortex-m"


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    kind: TargetKind
    cc: str
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...]
    has_fpu: bool
    has_dsp: bool
    qemu_machine: str | None = None
    # RAM / flash windows of the emulated board; the linker script puts the device's sizes
    # inside them (LENGTH = the device's SRAM / flash), so an overflow fails at link time.
    board_flash_origin: int = 0
    board_flash_bytes: int = 0
    board_ram_origin: int = 0
    board_ram_bytes: int = 0
    # Frequency of the MPS2 FPGA-IO free-running COUNTER (25 MHz on AN386/AN500 in QEMU).
    counter_hz: int = 0
    apt_packages: tuple[str, ...] = ()


# -O3 on the MCU: the kernels' fixed-trip tap loops and register tiles are fully unrolled and
# their shape constants propagated (mcu-cnn full training 4.42 -> 3.59 instructions per MAC,
# 4-10 KB more flash); -ffp-contract=fast fuses multiply-adds into VFMA.
_ARM_COMMON = (
    "-std=c99",
    "-O3",
    "-mthumb",
    "-ffunction-sections",
    "-fdata-sections",
    "-ffp-contract=fast",
    "-Wall",
    "-Wno-unused-function",
)
_ARM_LD = (
    "--specs=nano.specs",
    "--specs=rdimon.specs",
    "-nostartfiles",
    "-Wl,--gc-sections",
    "-Wl,-T,link.ld",
    "-lm",
)
_ARM_APT = ("gcc-arm-none-eabi", "libnewlib-arm-none-eabi", "qemu-system-arm")

TARGETS: dict[str, Target] = {
    "host": Target(
        "host",
        TargetKind.HOST,
        "cc",
        ("-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Wno-unused-function"),
        ("-lm",),
        has_fpu=True,
        has_dsp=False,
        apt_packages=("gcc",),
    ),
    "cortex-m4": Target(
        "cortex-m4",
        TargetKind.CORTEX_M,
        "arm-none-eabi-gcc",
        ("-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", *_ARM_COMMON),
        _ARM_LD,
        has_fpu=True,
        has_dsp=True,
        qemu_machine="mps2-an386",
        board_flash_origin=0x0000_0000,
        board_flash_bytes=4 << 20,
        board_ram_origin=0x2000_0000,
        board_ram_bytes=4 << 20,
        counter_hz=25_000_000,
        apt_packages=_ARM_APT,
    ),
    "cortex-m7": Target(
        "cortex-m7",
        TargetKind.CORTEX_M,
        "arm-none-eabi-gcc",
        ("-mcpu=cortex-m7", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard", *_ARM_COMMON),
        _ARM_LD,
        has_fpu=True,
        has_dsp=True,
        qemu_machine="mps2-an500",
        board_flash_origin=0x0000_0000,
        board_flash_bytes=4 << 20,
        board_ram_origin=0x2000_0000,
        board_ram_bytes=4 << 20,
        counter_hz=25_000_000,
        apt_packages=_ARM_APT,
    ),
}


def get_target(name: "str | Target") -> Target:
    if isinstance(name, Target):
        return name
    try:
        return TARGETS[name]
    except KeyError:
        raise InvalidArgumentError(
            f"unknown target {name!r}; choose one of {', '.join(TARGETS)}"
        ) from None


def toolchain_present(target: str = "cortex-m4") -> bool:
    """Whether the tools that build and run `target` are installed: `cc` for the host; the Arm
    GNU toolchain (gcc, size) and `qemu-system-arm` for a Cortex-M target."""
    import shutil

    if target == "host":
        return shutil.which("cc") is not None
    return all(
        shutil.which(t) for t in ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm")
    )


def target_for_device(device: str) -> str | None:
    """The emulated target for a catalog device: its CPU string names Cortex-M4 or -M7
    (nrf52840 -> cortex-m4, stm32f746 / stm32h743 -> cortex-m7); None when no emulated target
    matches (Cortex-M0+, Xtensa, boards and phones)."""
    from edgetrain.cost import load_device

    cpu = load_device(device).compute.cpu
    for t in ("cortex-m4", "cortex-m7"):
        if t in cpu.lower().replace(" ", "-"):
            return t
    return None
