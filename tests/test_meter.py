"""The memory meter against allocations of known size (it is the ground truth of the project)."""

import torch

from edgetrain.measure import MemoryMeter, measure_training_step, saved_activation_bytes


def test_private_profiler_apis_are_pinned():
    # Prepare / Execute
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.empty(10)
    tree = prof.profiler.kineto_results.experimental_event_tree()
    # Assert: the names the meter relies on exist in this torch
    assert torch.__version__.startswith("2.13.0")
    assert hasattr(_EventType, "Allocation")
    assert isinstance(tree, list)


def test_meter_reads_known_allocations():
    # Prepare / Execute
    with MemoryMeter(baseline_bytes=100) as m:
        a = torch.empty(1000, dtype=torch.uint8)
        b = torch.empty(4000, dtype=torch.uint8)
        del a
        c = torch.empty(500, dtype=torch.uint8)
        del b, c
    # Assert: peak = 1000 + 4000 live at once, everything freed at the end
    assert m.trace.peak_delta_bytes == 5000
    assert m.trace.peak_bytes == 5100
    assert m.trace.end_delta_bytes == 0
    assert m.trace.n_events == 6


def test_meter_sees_peak_that_is_freed_before_exit():
    with MemoryMeter() as m:
        big = torch.zeros(1 << 20, dtype=torch.uint8)  # 1 MiB, freed immediately
        del big
        small = torch.ones(256, dtype=torch.float32)  # 1 KiB kept
    assert m.trace.peak_delta_bytes == 1 << 20
    assert m.trace.end_delta_bytes == 1024
    del small


def test_meter_counts_live_tensors_only_once_per_storage():
    with MemoryMeter() as m:
        base = torch.empty(256, dtype=torch.float32)
        views = [base[i:] for i in range(10)]  # views allocate nothing
    assert m.trace.peak_delta_bytes == 1024
    del views, base


def test_saved_activation_bytes_matches_grad_fn_saved_tensors():
    # Prepare: Linear -> ReLU -> Linear; autograd saves x, relu's output, log-softmax, target
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(100, 200), torch.nn.ReLU(), torch.nn.Linear(200, 10))
    x, y = torch.randn(8, 100), torch.randint(0, 10, (8,))
    # Execute
    nbytes, loss = saved_activation_bytes(net, lambda: torch.nn.functional.cross_entropy(net(x), y))
    # Assert: x, relu's output, log-softmax, target and nll's total_weight (derivatives.yaml)
    expected = x.numel() * 4 + 8 * 200 * 4 + 8 * 10 * 4 + 8 * 8 + 4
    assert nbytes == expected
    assert loss.requires_grad


def test_measured_step_peak_at_least_state_plus_saved():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))
    r = measure_training_step(net, x, y, opt)
    params = sum(p.numel() * 4 for p in net.parameters())
    # params + grads are both live after backward; saved activations are live at the start of it
    assert r.peak_bytes >= 2 * params + x.numel() * 4
    assert r.state_bytes == params
    assert r.batch_bytes == x.numel() * 4 + y.numel() * 8
