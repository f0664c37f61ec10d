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


def int8_kernel_outputs(tmp_path, target: str, main_c: str, timeout_s: float = 300) -> dict:
    """Build `main_c` (the int8 runtime plus a harness whose `OUT name v...` lines it prints,
    then ET_END) for `target` with edgetrain's platform files, run it (host or QEMU), and
    return each OUT line's integers by name. `main_c` finds ET_REAL / ET_HAS_DSP defined."""
    import subprocess

    import numpy as np

    from edgetrain.codegen._microbench import _HEADER
    from edgetrain.codegen._platform import render_platform
    from edgetrain.codegen._run import run_command
    from edgetrain.codegen._targets import get_target

    tgt = get_target(target)
    d = tmp_path / target
    d.mkdir()
    files = render_platform(tgt, 1 << 20, 1 << 20, 1024)
    files["et_model.h"] = _HEADER
    real = "double" if target == "host" else "float"
    dsp = 1 if tgt.has_dsp else 0
    files["main.c"] = (
        f'#include "et_model.h"\n#define ET_REAL {real}\n#define ET_HAS_DSP {dsp}\n' + main_c
    )
    for k, v in files.items():
        (d / k).write_text(v)
    exe = d / "k.elf"
    ld = [f if f != "-Wl,-T,link.ld" else f"-Wl,-T,{d / 'link.ld'}" for f in tgt.ldflags]
    srcs = [str(d / "main.c"), str(d / "et_platform.c")]
    subprocess.run([tgt.cc, *tgt.cflags, "-o", str(exe), *srcs, *ld], check=True)
    out = subprocess.run(
        run_command(tgt, exe), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=timeout_s,
    ).stdout  # fmt: skip
    assert "ET_END" in out, out[-2000:]
    return {
        f[1]: np.array([int(v) for v in f[2:]], dtype=np.int64)
        for f in (ln.split() for ln in out.splitlines())
        if f and f[0] == "OUT"
    }


def assert_trains_within_plan(label: str, plan, res) -> None:
    """An `mcu_run` result: peak SRAM within 5 % of the plan and under the device's, finite
    losses, the mean of the last 5 below the first 5 (the figures printed for `-s`)."""
    import numpy as np

    losses = np.asarray(res.losses)
    print(
        f"\n{label}: planned {plan.predicted_peak_bytes} measured {res.peak_sram_bytes} "
        f"flash {res.flash_bytes} instructions/step {res.instructions_per_step} losses "
        f"{losses[0]:.3f}..{losses[-1]:.3f} mean first 5 {losses[:5].mean():.3f} "
        f"last 5 {losses[-5:].mean():.3f}"
    )
    assert abs(res.peak_sram_bytes - plan.predicted_peak_bytes) <= 0.05 * plan.predicted_peak_bytes
    assert res.peak_sram_bytes <= res.sram_limit_bytes
    assert np.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean()


def full_training_case(model, example, name: str, n: int, classes: int, seed: int = 0):
    """(plan, samples) for the C trainer's speed and numerics tests: full training (policy
    `all`, keep-all, frozen BN) on the nRF52840 profile, and `n` random uint8 images shaped like
    `example` with labels below `classes` (Fashion-MNIST's normalisation)."""
    import numpy as np

    import edgetrain
    from edgetrain.codegen import SampleSet

    plan = edgetrain.plan(
        model, example, device="nrf52840", strategy="keep-all", policy="all",
        freeze_batch_norm=True, name=name,
    )  # fmt: skip
    g = np.random.default_rng(seed)
    images = g.integers(0, 256, (n, *example.shape[1:]), dtype=np.uint8)
    return plan, SampleSet(images, g.integers(0, classes, n), 0.2860, 0.3530)
