"""The preparation stage's request record and its executor interface.

Oracles: the executors' own memory models (`edgetrain.codegen`), called directly, and the
registered entry points of the installed package.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

import edgetrain
from edgetrain.errors import InvalidArgumentError
from edgetrain.models import build_model
from edgetrain.planner import Executor, ExecutorMemory, MemoryRequest, Precision
from edgetrain.prepare import PlanRequest, executor_memory


def test_executors_with_their_own_memory_are_registered_entry_points():
    # Execute
    loaded = {ep.name: ep.load() for ep in entry_points(group="edgetrain.executors")}
    # Assert: each satisfies the protocol and is what `executor_memory` finds
    assert {"c-fp32", "c-int8"} <= set(loaded)
    for memory in loaded.values():
        assert isinstance(memory, ExecutorMemory)
        assert executor_memory(memory.executor, memory.precision) is memory


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"batch_size": 0}, "batch size"),
        ({"batch_size": True}, "batch size"),
        ({"budget_bytes": -5}, "memory budget"),
        ({"deadline_s": float("nan")}, "deadline"),
        ({"strategy": "fastest"}, "unknown strategy"),
        ({"executor": "tpu"}, "unknown executor"),
        ({"precision": "int8", "executor": "pytorch"}, "C executor"),
        ({"executor": "c", "optimizer": "adam"}, "plain SGD"),
        ({"strategy": "exact", "policy": "last:2"}, "strategy auto"),
        ({"policy": "fisher"}, "calibration"),
    ],
)
def test_plan_request_refuses_bad_fields_with_one_typed_error(fields, words):
    with pytest.raises(InvalidArgumentError, match=words):
        PlanRequest(**fields)


def test_plan_request_parses_strings_once_and_keywords_override_it():
    # Prepare
    req = PlanRequest(device="rpi4", batch_size=4, strategy="exact", executor="pytorch")
    model, x = build_model("mcu-cnn")
    # Execute
    p = edgetrain.plan(model, x, req, batch_size=2)
    # Assert
    assert req.strategy.value == "exact" and req.executor is Executor.PYTORCH
    assert p.batch_size == 2 and p.device == "rpi4" and p.executor is Executor.PYTORCH


def test_a_c_plan_carries_the_executors_own_peak():
    # Prepare: a budget only the C trainer meets (its arena, frozen weights in flash)
    model, x = build_model("mcu-cnn")
    # Execute
    p = edgetrain.plan(
        model,
        x,
        device="nrf52840",
        batch_size=1,
        budget_bytes=30_000,
        executor="c",
        precision="fp32",
    )
    # Assert: the oracle is the C executor's memory model asked directly
    from edgetrain.capture import capture
    from edgetrain.cost import load_device

    model.eval()
    g = capture(model, x, batch_size=1, name="model")
    memory = executor_memory(Executor.C, Precision.FP32)
    program = memory.for_model(MemoryRequest(model, x, g, load_device("nrf52840"), 1))
    assert p.predicted_peak_bytes == program.candidate(p).peak_sram_bytes <= 30_000


def test_profiling_kernels_leaves_the_callers_random_stream_alone(tmp_path, monkeypatch):
    # Prepare: an empty kernel cache, so every convolution is run on random operands
    import torch

    import edgetrain.prepare._profile as profile_mod
    from edgetrain.capture import capture
    from edgetrain.prepare import host_kernels

    monkeypatch.setenv("EDGETRAIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(profile_mod, "_KERNEL_TABLE", {})
    model, x = build_model("mcu-cnn", pretrained=False)
    graph = capture(model, x, batch_size=3)
    torch.manual_seed(5)
    expected = torch.rand(4)
    # Execute: profile (cold), then draw
    torch.manual_seed(5)
    kernels = host_kernels(graph)
    drawn = torch.rand(4)
    # Assert: convolutions were profiled, and the draw is what it would have been without
    assert kernels.measured
    assert torch.equal(drawn, expected)
