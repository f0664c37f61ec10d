"""Pictures of where training memory goes (matplotlib, written atomically)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from edgetrain.cost import simulate_step  # noqa: E402


def _kb(x: float) -> float:
    return x / 1024


def save_figure_atomic(fig, path: "str | os.PathLike") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=path.suffix, prefix=".tmp-")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=130, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        plt.close(fig)
    return path


def plot_profile(prof, path: "str | os.PathLike") -> Path:
    """Two panels: memory by component per layer, and live memory over the step."""
    c = prof.cost
    layers = [ly for ly in c.layers if ly.params_bytes or ly.activation_bytes]
    names = [ly.module or ly.name for ly in layers]
    comps = [
        ("weights", [ly.params_bytes for ly in layers], "#4C72B0"),
        ("gradients", [ly.grads_bytes for ly in layers], "#DD8452"),
        ("optimizer state", [ly.optimizer_bytes for ly in layers], "#937860"),
        ("saved activations", [ly.activation_bytes for ly in layers], "#55A868"),
    ]
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(max(8, 0.22 * len(layers) + 3), 8), gridspec_kw={"height_ratios": [3, 2]}
    )
    bottom = [0.0] * len(layers)
    x = range(len(layers))
    for label, vals, color in comps:
        if not any(vals):
            continue
        ax1.bar(x, [_kb(v) for v in vals], bottom=bottom, label=label, color=color, width=0.8)
        bottom = [b + _kb(v) for b, v in zip(bottom, vals)]
    ax1.set_xticks(list(x))
    ax1.set_xticklabels(names, rotation=90, fontsize=7)
    ax1.set_ylabel("KiB")
    ax1.set_title(
        f"{c.model} on {c.device}: training memory by layer (batch {c.batch_size}, {c.optimizer})"
    )
    ax1.legend(loc="upper right", fontsize=8)

    sim = simulate_step(prof.graph, c.optimizer, prof.kernels)
    live = [_kb(p.live_bytes) for p in sim.timeline]
    n_fwd = sum(1 for p in sim.timeline if p.phase.value == "forward")
    ax2.plot(live, color="#333333", lw=1.2, label="predicted live memory")
    ax2.axvspan(0, n_fwd, color="#4C72B0", alpha=0.08, label="forward")
    ax2.axhline(
        _kb(c.memory_budget_bytes),
        color="#C44E52",
        ls="--",
        label=f"{c.device} memory ({_kb(c.memory_budget_bytes):,.0f} KiB)",
    )
    if prof.measured is not None:
        ax2.axhline(
            _kb(prof.measured.peak_bytes),
            color="#8172B3",
            ls=":",
            label=f"measured peak ({_kb(prof.measured.peak_bytes):,.0f} KiB)",
        )
    ax2.set_xlabel("event of the training step (forward, backward, optimizer)")
    ax2.set_ylabel("KiB live")
    top = max(max(live), _kb(c.peak_bytes))
    ax2.set_ylim(0, top * 1.25 if c.memory_budget_bytes > 4 * c.peak_bytes else None)
    ax2.set_title(
        f"peak {_kb(c.peak_bytes):,.1f} KiB at {c.peak_phase} of {c.peak_node} — "
        f"{'fits' if c.fits else 'does NOT fit'}"
    )
    ax2.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return save_figure_atomic(fig, path)
