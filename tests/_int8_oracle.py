"""Shared oracle check for the int8 C trainer's tests (not a test module)."""

import torch


def assert_int8_params_equal_simulation(res, qm, qg) -> None:
    """Every int8 weight and int32 bias the C run dumped equals the PyTorch int8 simulation's
    (`qm`, a trained `edgetrain.quant.QuantModel`), and training changed some of them (from
    `qg`, the graph both started from)."""
    want = qm.integer_weights()
    init = {op.name: op for op in qg.weighted_ops}
    changed = 0
    for name, (w, b) in res.params.items():
        assert torch.equal(torch.tensor(w, dtype=torch.int8), want[name][0].reshape(-1)), name
        assert torch.equal(torch.tensor(b, dtype=torch.int32), want[name][1].reshape(-1)), name
        changed += int((want[name][0] != init[name].weight).sum())
        changed += int((want[name][1] != init[name].bias).sum())
    assert changed > 0
