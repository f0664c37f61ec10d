"""The model zoo: models on-device-training users bring, written the way they write them.

Each entry is a factory returning `(model, example_input)` (example batch size 1, model in train
mode, weights seeded), the loss its task trains with (a name `edgetrain.capture.capture`
accepts) and a note on where the architecture comes from. Nothing here is adapted to edgetrain:
the models use `nn.GRU`, `nn.LSTM`, `nn.MultiheadAttention`, `F.relu6`, `nn.Dropout`,
`nn.Conv1d`, `torch.cat`, `nn.Upsample`, ... as their sources do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgetrain.models._common import SEED


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: `factory()` -> (model, example input with batch size 1)."""

    name: str
    factory: Callable[[], tuple[nn.Module, torch.Tensor]]
    loss: str  # "cross-entropy" | "mse" | "bce" | "l1"
    input_shape: tuple[int, ...]  # with batch size 1
    input_dtype: str
    note: str


def _seeded_input(shape: tuple[int, ...], tokens: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED)
    if tokens:
        return torch.randint(0, tokens, shape, generator=g)
    return torch.randn(*shape, generator=g)


# -- keyword spotting --------------------------------------------------------------------------
class DSCNN(nn.Module):
    """DS-CNN-S of "Hello Edge" (Zhang et al., 2017; ARM ML-KWS-for-MCU): 10x4 stem, four
    depthwise-separable blocks, average pooling over the whole (25, 5) map, 12 keywords."""

    def __init__(self, classes: int = 12, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, (10, 4), stride=(2, 2), padding=(5, 1), bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        blocks = []
        for _ in range(4):
            blocks += [
                nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.Conv2d(width, width, 1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
            ]
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AvgPool2d((25, 5))
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


# -- human activity recognition, 1-D ------------------------------------------------------------
class HARCNN(nn.Module):
    """1-D CNN for UCI-HAR style windows (3 accelerometer axes x 128 samples, 6 activities), as
    in the common Keras/PyTorch HAR tutorials (Conv1d-BN-ReLU-MaxPool twice, dropout, dense)."""

    def __init__(self, channels: int = 3, length: int = 128, classes: int = 6) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(channels, 32, 5, padding=2),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(32, 64, 5, padding=2),
            nn.BatchNorm1d(64),
            nn.ReLU(),
            nn.MaxPool1d(2),
        )
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(64 * (length // 4), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.features(x))
        return self.fc(x.flatten(1))


# -- recurrent sequence classifiers ---------------------------------------------------------------
class GRUClassifier(nn.Module):
    """`nn.GRU` over (time, features) windows, classified from the last hidden state (the
    PyTorch sequence-classification pattern; 50 steps x 9 IMU channels, 6 classes)."""

    def __init__(self, features: int = 9, hidden: int = 32, classes: int = 6) -> None:
        super().__init__()
        self.rnn = nn.GRU(features, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h = self.rnn(x)
        return self.fc(h[-1])


class LSTMClassifier(nn.Module):
    """The same classifier with `nn.LSTM` (the most common on-device sequence model)."""

    def __init__(self, features: int = 9, hidden: int = 32, classes: int = 6) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.rnn(x)
        return self.fc(h[-1])


class TextGRU(nn.Module):
    """Embedding + GRU text classifier (the torchtext tutorial pattern): 40 token ids from a
    1000-word vocabulary, 4 classes."""

    def __init__(self, vocab: int = 1000, dim: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.fc = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(tokens))
        return self.fc(out.mean(1))


# -- attention --------------------------------------------------------------------------------
class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyViT(nn.Module):
    """A tiny ViT (Dosovitskiy et al., 2021) with `nn.MultiheadAttention`: 4x4 patches of a
    3x32x32 image, 2 blocks, width 32, 4 heads, mean-pooled tokens, 10 classes."""

    def __init__(self, dim: int = 32, heads: int = 4, depth: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.pos = nn.Parameter(torch.zeros(1, 64, dim))
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        x = self.ln(self.blocks(x))
        return self.head(x.mean(1))


# -- mobile CNN blocks ------------------------------------------------------------------------
class MBv2Block(nn.Module):
    """MobileNetV2 (Sandler et al., 2018) stem and one inverted residual, with `F.relu6` in
    forward (not `nn.ReLU6`), 3x32x32, 10 classes."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16)
        self.expand, self.bn1 = nn.Conv2d(16, 64, 1, bias=False), nn.BatchNorm2d(64)
        self.dw, self.bn2 = nn.Conv2d(64, 64, 3, 1, 1, groups=64, bias=False), nn.BatchNorm2d(64)
        self.project, self.bn3 = nn.Conv2d(64, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn0(self.stem(x)))
        h = F.relu6(self.bn1(self.expand(x)))
        h = F.relu6(self.bn2(self.dw(h)))
        x = x + self.bn3(self.project(h))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(ch, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class MBv3Block(nn.Module):
    """MobileNetV3 (Howard et al., 2019) stem and one bneck: hardswish, depthwise 3x3,
    squeeze-and-excite with sigmoid gating, 3x32x32, 10 classes."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish()
        )
        self.expand = nn.Sequential(
            nn.Conv2d(16, 64, 1, bias=False), nn.BatchNorm2d(64), nn.Hardswish()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(64, 64, 3, 1, 1, groups=64, bias=False), nn.BatchNorm2d(64), nn.Hardswish()
        )
        self.se = SqueezeExcite(64, 16)
        self.project = nn.Sequential(nn.Conv2d(64, 24, 1, bias=False), nn.BatchNorm2d(24))
        self.fc = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.project(self.se(self.dw(self.expand(self.stem(x)))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# -- MLPs ---------------------------------------------------------------------------------------
class MLPAutoencoder(nn.Module):
    """Dense autoencoder on 128-d vibration features (anomaly detection, MSE reconstruction;
    the DCASE / MLPerf Tiny anomaly-detection pattern, scaled down)."""

    def __init__(self, features: int = 128) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, 16), nn.ReLU()
        )
        self.decoder = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _mlp784() -> nn.Module:
    """Plain MLP on a flat 784 vector (the PyTorch MNIST example's dense variant)."""
    return nn.Sequential(
        nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )


# -- encoder-decoder -----------------------------------------------------------------------------
def _conv_relu(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU())


class TinyUNet(nn.Module):
    """U-Net (Ronneberger et al., 2015), two levels: max-pool down, nearest upsample, skip
    concatenation with `torch.cat`; a 1x32x32 image to a 1x32x32 mask (BCE with logits)."""

    def __init__(self) -> None:
        super().__init__()
        self.enc1, self.enc2 = _conv_relu(1, 8), _conv_relu(8, 16)
        self.pool = nn.MaxPool2d(2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = _conv_relu(24, 8)
        self.out = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        return self.out(self.dec(torch.cat([self.up(e2), e1], dim=1)))


# -- temporal convolution -----------------------------------------------------------------------
class TemporalBlock(nn.Module):
    def __init__(self, cin: int, cout: int, dilation: int, k: int = 3) -> None:
        super().__init__()
        self.pad = (k - 1) * dilation
        self.conv1 = nn.Conv1d(cin, cout, k, padding=self.pad, dilation=dilation)
        self.conv2 = nn.Conv1d(cout, cout, k, padding=self.pad, dilation=dilation)
        self.drop = nn.Dropout(0.1)
        self.down = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(F.relu(self.conv1(x)[:, :, : -self.pad]))  # chomp: causal
        h = self.drop(F.relu(self.conv2(h)[:, :, : -self.pad]))
        return F.relu(h + self.down(x))


class TCN(nn.Module):
    """Temporal convolutional network (Bai, Kolter & Koltun, 2018; locuslab/TCN): causal
    dilated Conv1d blocks (dilations 1, 2, 4) with residuals, 9 channels x 128 steps, 6 classes."""

    def __init__(self, channels: int = 9, width: int = 16, classes: int = 6) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            TemporalBlock(channels, width, 1),
            TemporalBlock(width, width, 2),
            TemporalBlock(width, width, 4),
        )
        self.fc = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(x).mean(2))


def _entry(
    name: str,
    ctor: Callable[[], nn.Module],
    shape: tuple[int, ...],
    loss: str,
    note: str,
    tokens: int = 0,
) -> ZooEntry:
    def factory() -> tuple[nn.Module, torch.Tensor]:
        torch.manual_seed(SEED)
        model = ctor()
        model.train()
        return model, _seeded_input(shape, tokens)

    return ZooEntry(name, factory, loss, shape, "int64" if tokens else "float32", note)


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        _entry("kws-dscnn", DSCNN, (1, 1, 49, 10), "cross-entropy", DSCNN.__doc__ or ""),
        _entry("har-cnn1d", HARCNN, (1, 3, 128), "cross-entropy", HARCNN.__doc__ or ""),
        _entry("gru-seq", GRUClassifier, (1, 50, 9), "cross-entropy", GRUClassifier.__doc__ or ""),
        _entry(
            "lstm-seq", LSTMClassifier, (1, 50, 9), "cross-entropy", LSTMClassifier.__doc__ or ""
        ),
        _entry("vit-tiny", TinyViT, (1, 3, 32, 32), "cross-entropy", TinyViT.__doc__ or ""),
        _entry("mbv2-block", MBv2Block, (1, 3, 32, 32), "cross-entropy", MBv2Block.__doc__ or ""),
        _entry("mlp-autoencoder", MLPAutoencoder, (1, 128), "mse", MLPAutoencoder.__doc__ or ""),
        _entry("mlp-784", _mlp784, (1, 784), "cross-entropy", _mlp784.__doc__ or ""),
        _entry("unet-tiny", TinyUNet, (1, 1, 32, 32), "bce", TinyUNet.__doc__ or ""),
        _entry("mbv3-block", MBv3Block, (1, 3, 32, 32), "cross-entropy", MBv3Block.__doc__ or ""),
        _entry("text-gru", TextGRU, (1, 40), "cross-entropy", TextGRU.__doc__ or "", tokens=1000),
        _entry("tcn-1d", TCN, (1, 9, 128), "cross-entropy", TCN.__doc__ or ""),
    )
}
