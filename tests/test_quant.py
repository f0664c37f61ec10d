"""int8 graph and QAS training against independent oracles: a numpy int64 implementation of the
integer arithmetic, Python's exact integers, the float model's accuracy and plain autograd."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgetrain.errors import InvalidArgumentError, UnsupportedOpError
from edgetrain.models import build_model
from edgetrain.quant import (
    AccumulatorOverflowError,
    Activation,
    ConvKind,
    Int8Backward,
    Int8GraphFileError,
    QAdd,
    QConv2d,
    QLinear,
    QuantizationError,
    QuantModel,
    QuantSGD,
    TensorKind,
    UnsupportedModuleError,
    WeightStorage,
    accuracy_int8,
    check_integer_backward,
    fold_batchnorm,
    load_graph,
    memory_summary,
    quantize,
    quantize_multiplier,
    requantize,
    run_int8,
    save_graph,
    tensor_sizes,
)

# ---------------------------------------------------------------- an independent numpy oracle


def np_requant(acc: np.ndarray, m0: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Requantisation written from the spec with numpy int64 (single rounding, half up)."""
    n = 31 - shift.astype(np.int64)
    return (acc.astype(np.int64) * m0.astype(np.int64) + np.left_shift(np.int64(1), n - 1)) >> n


def np_conv(x, w, b, stride, pad, groups):
    """Direct convolution over kernel offsets with numpy int64 (no im2col, no torch)."""
    n, c, h, wd = x.shape
    o, ig, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, o, ho, wo), dtype=np.int64)
    og = o // groups
    for g in range(groups):
        wg = w[g * og : (g + 1) * og]
        for kh in range(k):
            for kw in range(k):
                win = xp[
                    :,
                    g * ig : (g + 1) * ig,
                    kh : kh + stride * ho : stride,
                    kw : kw + stride * wo : stride,
                ]
                out[:, g * og : (g + 1) * og] += np.einsum("oi,nihw->nohw", wg[:, :, kh, kw], win)
    return out + b[None, :, None, None]


def np_run(graph, q_input: np.ndarray) -> dict[str, np.ndarray]:
    env = {graph.input: q_input.astype(np.int64)}
    for op in graph.ops:
        if isinstance(op, QConv2d):
            zx, zy = graph.tensor(op.input).zero_point, graph.tensor(op.output).zero_point
            acc = np_conv(
                env[op.input] - zx,
                op.weight.numpy().astype(np.int64),
                op.bias.numpy().astype(np.int64),
                op.stride,
                op.padding,
                op.groups,
            )
            assert np.abs(acc).max() < 2**31
            y = (
                np_requant(
                    acc,
                    op.multiplier.numpy()[None, :, None, None],
                    op.shift.numpy()[None, :, None, None],
                )
                + zy
            )
            env[op.output] = np.clip(y, op.act_min, op.act_max)
        elif isinstance(op, QLinear):
            zx, zy = graph.tensor(op.input).zero_point, graph.tensor(op.output).zero_point
            acc = (env[op.input] - zx) @ op.weight.numpy().astype(np.int64).T + op.bias.numpy()
            y = np_requant(acc, op.multiplier.numpy()[None], op.shift.numpy()[None]) + zy
            env[op.output] = np.clip(y, op.act_min, op.act_max)
        elif isinstance(op, QAdd):
            ta, tb, ty = (graph.tensor(t) for t in (op.a, op.b, op.output))
            one = np.ones((), dtype=np.int64)
            a = np_requant(
                (env[op.a] - ta.zero_point) * (1 << op.left_shift),
                one * op.multiplier_a,
                one * op.shift_a,
            )
            b = np_requant(
                (env[op.b] - tb.zero_point) * (1 << op.left_shift),
                one * op.multiplier_b,
                one * op.shift_b,
            )
            y = np_requant(a + b, one * op.multiplier_out, one * op.shift_out) + ty.zero_point
            env[op.output] = np.clip(y, -128, 127)
        else:
            x = env[op.input]
            count = x.shape[2] * x.shape[3]
            s = x.sum(axis=(2, 3))
            # C semantics: (s +/- count/2) / count with truncating division
            env[op.output] = np.trunc(
                (s + np.where(s >= 0, count // 2, -(count // 2))) / count
            ).astype(np.int64)
    return env


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pretrained():
    """mcu-cnn pretrained on 6,000 samples of classes 0-4 (one epoch, cached in the test cache)."""
    from edgetrain.data import load_dataset
    from edgetrain.tasks import pretrain

    model, example, _ = pretrain(samples=6000, epochs=1)
    model.eval()
    cal = load_dataset("fashion-mnist:0-4", split="train", limit=128, seed=3)
    return model, example, quantize(model, cal.x, name="mcu-cnn")


def random_bn_model(name: str, size: int):
    """A reference model at a small resolution with realistic BN statistics (random weights)."""
    torch.manual_seed(0)
    model, _ = build_model(name)
    g = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(8, 3, size, size, generator=g))
    model.eval()
    return model, torch.randn(16, 3, size, size, generator=g)


# ---------------------------------------------------------------- fixed-point arithmetic


def test_requantize_rounds_half_up_and_matches_python_integers():
    # Prepare: multiplier 0.5 is exactly m0 = 2**30, shift 0; random multipliers and accumulators
    m0, shift = quantize_multiplier(0.5)
    g = torch.Generator().manual_seed(0)
    reals = torch.rand(200, generator=g, dtype=torch.float64) * 2.0 ** torch.randint(
        -20, 2, (200,), generator=g
    )
    acc = torch.randint(-(2**31), 2**31, (200,), generator=g)
    # Execute
    halves = requantize(torch.tensor([3, -3, 5, -5, 1, -1]), torch.tensor(m0), torch.tensor(shift))
    pairs = [quantize_multiplier(float(r)) for r in reals]
    got = requantize(acc, torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs]))
    # Assert: 1.5 -> 2, -1.5 -> -1, 2.5 -> 3, -2.5 -> -2, 0.5 -> 1, -0.5 -> 0 (half towards +inf)
    assert (m0, shift) == (2**30, 0)
    assert halves.tolist() == [2, -1, 3, -2, 1, 0]
    for r, (m, s), a, y in zip(reals.tolist(), pairs, acc.tolist(), got.tolist()):
        assert 2**30 <= m < 2**31
        assert abs(m * 2.0 ** (s - 31) - r) <= r * 2.0**-30  # the pair represents r
        n = 31 - s
        assert y == (a * m + (1 << (n - 1))) >> n  # Python's exact integers
        assert abs(y - a * m / 2**n) <= 0.5


def test_requantize_rejects_int32_overflow_and_bad_multipliers():
    # Prepare / Execute / Assert
    with pytest.raises(AccumulatorOverflowError, match="int32"):
        requantize(torch.tensor([2**31]), torch.tensor(2**30), torch.tensor(0))
    for bad in (0.0, -1.0, float("nan"), 2.0**40):
        with pytest.raises(QuantizationError):
            quantize_multiplier(bad)


# ---------------------------------------------------------------- the int8 graph, bit for bit


def test_mcu_cnn_int8_graph_matches_numpy_int64_reference(pretrained):
    # Prepare
    model, example, graph = pretrained
    from edgetrain.data import load_dataset

    x = load_dataset("fashion-mnist:5-9", split="test", limit=16).x
    q_in = graph.quantize_input(x)
    # Execute
    out = run_int8(graph, q_in)
    ref = np_run(graph, q_in.numpy())
    # Assert: every op kind present, the output equal bit for bit
    kinds = {op.kind for op in graph.ops if isinstance(op, QConv2d)}
    assert kinds == {ConvKind.STANDARD, ConvKind.DEPTHWISE, ConvKind.POINTWISE}
    assert out.dtype == torch.int8 and out.shape == (16, 10)
    assert np.array_equal(out.numpy().astype(np.int64), ref[graph.output])


@pytest.mark.parametrize("name,size", [("mbv2-w0.35", 32), ("mcunet", 32)])
def test_mobilenet_blocks_int8_graph_matches_numpy_reference(name, size):
    # Prepare: residual adds, ReLU6, depthwise 3/5/7 kernels
    model, calib = random_bn_model(name, size)
    graph = quantize(model, calib, name=name)
    q_in = graph.quantize_input(calib[:4])
    # Execute
    out = run_int8(graph, q_in)
    ref = np_run(graph, q_in.numpy())
    qm = QuantModel(graph)
    train_fwd = qm(q_in)
    # Assert
    assert any(isinstance(op, QAdd) for op in graph.ops)
    assert any(op.activation is Activation.RELU6 for op in graph.ops if isinstance(op, QConv2d))
    assert np.array_equal(out.numpy().astype(np.int64), ref[graph.output])
    assert torch.equal(train_fwd.detach(), graph.dequantize_output(out))


def test_int8_inference_accuracy_close_to_fp32(pretrained):
    # Prepare
    from edgetrain.data import load_dataset
    from edgetrain.tasks import accuracy

    model, example, graph = pretrained
    test = load_dataset("fashion-mnist:0-4", split="test", limit=400)
    # Execute
    acc32 = accuracy(model, test.x, test.y)
    acc8 = accuracy_int8(graph, test.x, test.y)
    with torch.no_grad():
        agree = (
            (
                run_int8(graph, graph.quantize_input(test.x)).long().argmax(1)
                == model(test.x).argmax(1)
            )
            .float()
            .mean()
            .item()
        )
    # Assert
    assert acc32 > 0.5  # 5 classes: chance is 0.2
    assert abs(acc8 - acc32) <= 0.02, (acc8, acc32)
    assert agree >= 0.95


def test_batchnorm_folding_preserves_the_float_function(pretrained):
    # Prepare
    model, example, _ = pretrained
    x = torch.randn(8, *example.shape[1:], generator=torch.Generator().manual_seed(0))
    # Execute
    folded = fold_batchnorm(model, example)
    # Assert
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("storage", list(WeightStorage))
def test_training_forward_is_the_integer_graph(pretrained, storage):
    # Prepare: a few SGD steps move the weights off the converted values
    _, _, graph = pretrained
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 28, 28, generator=g), torch.randint(5, 10, (8,), generator=g)
    qm = QuantModel(graph, storage=storage)
    opt = QuantSGD(qm, lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(qm(x), y).backward()
        opt.step()
    # Execute
    trained = qm.to_graph()
    logits = qm(x).detach()
    ref = np_run(trained, trained.quantize_input(x).numpy())[trained.output]
    # Assert: the weights changed and the training forward equals the numpy integer reference
    assert any(
        not torch.equal(a.weight, b.weight)
        for a, b in zip(trained.weighted_ops, graph.weighted_ops)
    )
    out = trained.tensor(trained.output)
    assert np.array_equal(
        np.round(logits.numpy() / out.scale + out.zero_point).astype(np.int64), ref
    )
    if storage is WeightStorage.INT8:
        for p in qm.parameters():
            assert torch.equal(p, p.round())
            assert float(p.detach().abs().max()) <= 2**31
        for w in qm.weights.values():
            assert float(w.detach().abs().max()) <= 127


# ---------------------------------------------------------------- QAS against autograd


def test_qas_gradients_follow_the_inverse_square_scale_of_autograd(pretrained):
    # Prepare: the classifier is the only trainable layer; the oracle is plain autograd on the
    # float linear layer with the dequantised weights, input features and (STE) logits.
    _, _, graph = pretrained
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 1, 28, 28, generator=g), torch.randint(0, 10, (6,), generator=g)
    qm = QuantModel(graph, trainable=["classifier"], backward=Int8Backward.FLOAT_SURROGATE)
    cls = graph.weighted_ops[-1]
    sx = graph.tensor(cls.input).scale
    zx = graph.tensor(cls.input).zero_point
    sw = cls.weight_scale
    out_t = graph.tensor(graph.output)
    # Execute: QuantModel's raw gradients and its QAS-scaled update
    logits_q = qm(x)
    F.cross_entropy(logits_q, y).backward()
    gw_q = qm.weights["classifier"].grad.clone()
    gb_q = qm.biases["classifier"].grad.clone()
    # the integer input of the classifier (pool output) from the integer reference
    env = np_run(graph, graph.quantize_input(x).numpy())
    feats = torch.tensor(env[cls.input], dtype=torch.float64)
    q_logits = torch.tensor(env[graph.output], dtype=torch.float64)
    acc = env[cls.input] - zx
    pre = (
        np_requant(
            acc @ cls.weight.numpy().astype(np.int64).T + cls.bias.numpy(),
            cls.multiplier.numpy()[None],
            cls.shift.numpy()[None],
        )
        + out_t.zero_point
    )
    inside = torch.tensor((pre >= -128) & (pre <= 127))  # saturated logits pass no gradient
    w_real = (cls.weight.double() * sw.view(-1, 1)).requires_grad_()
    b_real = (cls.bias.double() * sx * sw).requires_grad_()
    lin = F.linear(sx * (feats - zx), w_real, b_real) * inside
    used = lin + ((q_logits - out_t.zero_point) * out_t.scale - lin).detach()
    F.cross_entropy(used, y).backward()
    before = qm.weights["classifier"].detach().clone(), qm.biases["classifier"].detach().clone()
    lr = 0.1
    QuantSGD(qm, lr=lr, qas=True).step()
    dw = (qm.weights["classifier"].detach() - before[0]) * sw.view(-1, 1)
    db = (qm.biases["classifier"].detach() - before[1]) * sx * sw
    # Assert: G_Wq = s_W G_W, G_bq = s_x s_W G_b, and the QAS update in real
    # units is exactly float SGD's: -lr * G_W, -lr * G_b
    assert int(inside.sum()) > 0
    torch.testing.assert_close(gw_q, sw.view(-1, 1) * w_real.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gb_q, sx * sw * b_real.grad, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(dw, -lr * w_real.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(db, -lr * b_real.grad, rtol=1e-9, atol=1e-12)


def _np_round_half_away(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def test_integer_backward_is_int8_gradients_with_exact_integer_sums(pretrained):
    # Prepare: the last two layers train (the 1x1 conv features.3.0 through the pool, and the
    # classifier); the oracle is the float surrogate's own accumulator gradients (autograd
    # hooks on a FLOAT_SURROGATE model) quantised and summed with numpy int64, written from
    # NOTE [ int8 integer backward ]
    _, _, graph = pretrained
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 1, 28, 28, generator=g), torch.randint(0, 10, (6,), generator=g)
    layers = ["features.3.0", "classifier"]
    qi = QuantModel(graph, trainable=layers)
    qf = QuantModel(graph, trainable=layers, backward=Int8Backward.FLOAT_SURROGATE)
    cls = graph.weighted_ops[-1]
    zx = graph.tensor(cls.input).zero_point
    env = np_run(graph, graph.quantize_input(x).numpy())
    feats = env[cls.input] - zx
    # Execute: both models' raw gradients, and the float one's dacc at the classifier
    F.cross_entropy(qi(x), y).backward()
    logits = qf(x)
    logits.retain_grad()
    F.cross_entropy(logits, y).backward()
    out_t = graph.tensor(graph.output)
    pre = (
        np_requant(
            feats @ cls.weight.numpy().astype(np.int64).T + cls.bias.numpy(),
            cls.multiplier.numpy()[None],
            cls.shift.numpy()[None],
        )
        + out_t.zero_point
    )
    m = cls.multiplier.numpy() * 2.0 ** (cls.shift.numpy().astype(np.float64) - 31)
    dy = logits.grad.numpy() * out_t.scale  # d loss / d q_logits
    dacc = dy * (m[None] * ((pre >= -128) & (pre <= 127)))
    s_g = np.abs(dacc).max() / 127
    dq = np.clip(_np_round_half_away(dacc / s_g), -127, 127).astype(np.int64)
    want_gw = s_g * (dq.T @ feats).astype(np.float64)
    want_gb = s_g * dq.sum(0).astype(np.float64)
    gw_i = qi.weights["classifier"].grad.numpy()
    gb_i = qi.biases["classifier"].grad.numpy()
    gw_f = qf.weights["classifier"].grad.numpy()
    # Assert: bit for bit the numpy oracle; within half a gradient step per product of the
    # float surrogate; the conv before the pool trains too, and its gradient points the same
    # way as the float surrogate's
    assert s_g > 0 and np.abs(dq).max() == 127
    np.testing.assert_array_equal(gw_i, want_gw)
    np.testing.assert_array_equal(gb_i, want_gb)
    bound = s_g / 2 * np.abs(feats).sum(0)[None, :] * (1 + 1e-9)
    assert (np.abs(gw_i - gw_f) <= bound).all()
    a = qi.weights["features__3__0"].grad.flatten()
    b = qf.weights["features__3__0"].grad.flatten()
    assert float(a.norm()) > 0
    assert float(torch.dot(a, b) / (a.norm() * b.norm())) > 0.9


def test_integer_backward_refuses_sums_that_could_overflow_int32(pretrained):
    # Prepare: mcu-cnn's first conv has 14 x 14 output positions: 127 * 255 * 196 * B
    # overflows int32 from B = 339 on
    _, _, graph = pretrained
    # Execute / Assert
    check_integer_backward(graph, 338)
    with pytest.raises(AccumulatorOverflowError, match="features.0.0.*lower the batch size"):
        check_integer_backward(graph, 339)
    with pytest.raises(InvalidArgumentError, match="Int8Backward"):
        QuantModel(graph, backward="integer")


def test_sparse_update_trains_only_the_chosen_layers(pretrained):
    # Prepare
    _, _, graph = pretrained
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 1, 28, 28, generator=g), torch.randint(5, 10, (4,), generator=g)
    qm = QuantModel(graph, trainable=["features.3.0", "classifier"])
    before = {k: v.detach().clone() for k, v in qm.weights.items()}
    # Execute
    opt = QuantSGD(qm, lr=0.5)
    F.cross_entropy(qm(x), y).backward()
    opt.step()
    # Assert
    changed = {k for k, v in qm.weights.items() if not torch.equal(v, before[k])}
    assert changed == {"features__3__0", "classifier"}
    assert qm.weights["features__0__0"].grad is None


def test_short_training_run_qas_loss_decreases_and_beats_no_qas(pretrained):
    # Prepare: learn the new classes 5-9 from the 0-4 model, same samples and lr for both
    from edgetrain.data import load_dataset

    _, _, graph = pretrained
    train = load_dataset("fashion-mnist:5-9", split="train", limit=960, seed=0)
    batches = list(train.batches(16, seed=0))

    def run(qas: bool) -> list[float]:
        qm = QuantModel(graph)
        opt = QuantSGD(qm, lr=0.05, qas=qas)
        losses = []
        for xb, yb in batches:
            opt.zero_grad()
            loss = F.cross_entropy(qm(xb), yb)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    # Execute
    qas, plain = run(True), run(False)
    # Assert
    first, last = np.mean(qas[:10]), np.mean(qas[-10:])
    assert last < 0.6 * first, (first, last)
    assert np.mean(plain[-10:]) > last + 0.5, (np.mean(plain[-10:]), last)


# ---------------------------------------------------------------- sizes, files, errors


def test_int8_tensor_sizes_are_real_sizes(pretrained):
    # Prepare
    model, example, graph = pretrained
    conv_params = sum(
        m.weight.numel()
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    )
    # Execute
    sizes = tensor_sizes(graph, batch_size=2, trainable=["classifier"])
    mem = memory_summary(sizes)
    # Assert
    assert mem.weight_bytes == conv_params  # 1 byte per weight
    assert mem.bias_bytes == 4 * sum(op.weight.shape[0] for op in graph.weighted_ops)
    first = next(s for s in sizes if s.name == "features.0.0" and s.kind is TensorKind.ACTIVATION)
    assert first.nbytes == 2 * 8 * 14 * 14 and first.dtype == "int8"
    assert mem.largest_activation_bytes == first.nbytes
    assert mem.master_bytes == mem.gradient_bytes == 4 * (10 * 32 + 10)
    assert {s.module for s in sizes if s.kind is TensorKind.WEIGHT} == {
        "features.0.0",
        "features.1.0",
        "features.2.0",
        "features.3.0",
        "classifier",
    }


def test_save_and_load_graph_round_trip(pretrained, tmp_path):
    # Prepare
    _, _, graph = pretrained
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    # Execute
    path = save_graph(graph, tmp_path / "g.safetensors")
    back = load_graph(path)
    # Assert
    assert torch.equal(
        run_int8(back, back.quantize_input(x)), run_int8(graph, graph.quantize_input(x))
    )
    assert [type(o) for o in back.ops] == [type(o) for o in graph.ops]
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(Int8GraphFileError):
        load_graph(tmp_path / "bad.safetensors")


def test_bad_inputs_get_typed_errors(pretrained):
    # Prepare
    _, _, graph = pretrained
    resnet, ex = build_model("resnet18-cifar")
    # Execute / Assert
    with pytest.raises(UnsupportedModuleError, match="features") as e:
        quantize(resnet.eval(), ex)
    assert isinstance(e.value, UnsupportedOpError)
    with pytest.raises(InvalidArgumentError, match="features.0.0"):
        QuantModel(graph, trainable=["nope"])
    with pytest.raises(InvalidArgumentError, match="int8"):
        run_int8(graph, torch.zeros(1, 1, 28, 28))
    with pytest.raises(InvalidArgumentError, match="resize"):
        graph.quantize_input(torch.zeros(1, 3, 32, 32))
    with pytest.raises(InvalidArgumentError, match="lr"):
        QuantSGD(QuantModel(graph), lr=0)
    with pytest.raises(InvalidArgumentError, match="no trainable"):
        QuantSGD(QuantModel(graph, trainable=[]), lr=0.1)
    with pytest.raises(InvalidArgumentError):
        quantize(resnet, torch.zeros(3, 32))


def test_weight_headroom_widens_the_scale_and_is_validated(pretrained):
    # Prepare
    model, example, graph = pretrained
    from edgetrain.data import load_dataset

    cal = load_dataset("fashion-mnist:0-4", split="train", limit=128, seed=3)
    # Execute
    wide = quantize(model, cal.x, name="mcu-cnn", weight_headroom={"classifier": 4.0})
    # Assert: only the classifier's scales grow 4x; its weights use a quarter of the range
    a, b = graph.weighted_ops[-1], wide.weighted_ops[-1]
    torch.testing.assert_close(b.weight_scale, 4 * a.weight_scale)
    assert int(b.weight.abs().max()) == 32  # round(127 / 4)
    assert torch.equal(wide.weighted_ops[0].weight, graph.weighted_ops[0].weight)
    with pytest.raises(InvalidArgumentError, match="not in the model"):
        quantize(model, cal.x, weight_headroom={"nope": 2.0})
    with pytest.raises(InvalidArgumentError, match=">= 1"):
        quantize(model, cal.x, weight_headroom={"classifier": 0.5})


def test_an_all_zero_channel_takes_the_layers_median_scale():
    # Prepare: a new class's classifier row set to zero
    model, calib = random_bn_model("mbv2-w0.35", 32)
    with torch.no_grad():
        model.classifier.weight[3] = 0
    # Execute
    graph = quantize(model, calib)
    cls = graph.weighted_ops[-1]
    others = torch.cat([cls.weight_scale[:3], cls.weight_scale[4:]])
    # Assert
    assert int(cls.weight[3].abs().max()) == 0
    assert float(cls.weight_scale[3]) == float(others.median())
