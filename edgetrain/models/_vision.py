"""Convolutional reference models in plain PyTorch: MCU CNN, MobileNetV2, MCUNet, ResNet-18.

Only conv2d, batch_norm, relu / hardtanh (ReLU6), add (residuals), max_pool2d,
adaptive_avg_pool2d, flatten and linear appear in their exported graphs. Dropout from the
original classifiers is left out on purpose (see `_common`).
"""

from __future__ import annotations

import torch
from torch import nn

from edgetrain.models._common import ConvBNAct, make_divisible


class McuCnn(nn.Module):
    """A tiny CNN for 1x28x28 images that trains inside a microcontroller's SRAM.

    conv 1->8 3x3/2 (14x14) -> conv 8->16 3x3/2 (7x7) -> depthwise 3x3 on 16 -> pointwise 16->32,
    each followed by BatchNorm and ReLU, then global average pooling and linear 32->classes.
    2,354 parameters (9.2 KiB in float32) with 10 classes; at batch 1 no activation exceeds
    8x14x14 floats (6.1 KiB).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            ConvBNAct(in_channels, 8, 3, stride=2),
            ConvBNAct(8, 16, 3, stride=2),
            ConvBNAct(16, 16, 3, stride=1, groups=16),
            ConvBNAct(16, 32, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 / MCUNet block: [1x1 expand] -> kxk depthwise -> 1x1 linear projection.

    The expansion is omitted when `mid == cin` (expand ratio 1). The residual is added when the
    block keeps resolution and width.
    """

    def __init__(self, cin: int, cout: int, *, stride: int, mid: int, kernel: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if mid != cin:
            layers.append(ConvBNAct(cin, mid, 1, act=nn.ReLU6))
        layers.append(ConvBNAct(mid, mid, kernel, stride=stride, groups=mid, act=nn.ReLU6))
        layers.append(ConvBNAct(mid, cout, 1, act=None))
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


# (expand ratio t, output channels c, repeats n, first stride s) -- MobileNetV2, Table 2.
MBV2_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al., 2018) with a width multiplier.

    Channels are `make_divisible(c * width, 8)`; the last 1x1 conv keeps 1280 channels for
    width < 1 (as torchvision and the paper do). The classifier's dropout is left out.
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, last_channel: int = 1280) -> None:
        super().__init__()
        cin = make_divisible(32 * width, 8)
        last = make_divisible(last_channel * max(1.0, width), 8)
        layers: list[nn.Module] = [ConvBNAct(3, cin, 3, stride=2, act=nn.ReLU6)]
        for t, c, n, s in MBV2_SETTING:
            cout = make_divisible(c * width, 8)
            for i in range(n):
                layers.append(
                    InvertedResidual(cin, cout, stride=s if i == 0 else 1, mid=int(round(cin * t)))
                )
                cin = cout
        layers.append(ConvBNAct(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# MCUNet 'mcunet-5fps' (model zoo id 'mcunet-in1', net_name 'mcunet-5fps_imagenet'): the block
# list of its published ProxylessNASNets JSON config, one row per MBInvertedConvLayer:
# (in, out, kernel, stride, expand ratio, mid channels). A residual is used where the config
# has an IdentityLayer shortcut, which is exactly where stride == 1 and in == out.
MCUNET_5FPS_BLOCKS = [
    (16, 8, 3, 1, 1, 16),
    (8, 16, 3, 2, 4, 32),
    (16, 16, 3, 1, 3, 48),
    (16, 24, 7, 2, 3, 48),
    (24, 24, 3, 1, 5, 120),
    (24, 40, 3, 2, 5, 120),
    (40, 40, 7, 1, 4, 160),
    (40, 48, 5, 1, 4, 160),
    (48, 48, 3, 1, 3, 144),
    (48, 48, 3, 1, 4, 192),
    (48, 96, 7, 2, 5, 240),
    (96, 96, 5, 1, 4, 384),
    (96, 96, 5, 1, 4, 384),
    (96, 160, 3, 1, 6, 576),
]


class MCUNet(nn.Module):
    """MCUNet 'mcunet-5fps' (Lin et al., NeurIPS 2020), the backbone of TTE's MCU experiments.

    Followed configuration: the MCUNet model zoo's `mcunet-in1` = `mcunet-5fps_imagenet` JSON
    (ProxylessNASNets): first conv 3->16 3x3/2 + BN + ReLU6, then 14 MobileNetV2-style inverted
    residual blocks with per-block kernel sizes 3/5/7 and expansion ratios 1/3/4/5/6
    (`MCUNET_5FPS_BLOCKS`), no feature-mix layer, global average pooling, linear 160->classes.
    BatchNorm eps 1e-5, momentum 0.1, as in the config. 0.64 M parameters with 1000 classes,
    the published figure.

    Resolution: the published ImageNet resolution of this model is 96x96; we use 128x128, the
    input of TTE's transfer-learning setup (Lin et al., "On-Device Training Under 256KB
    Memory", 2022). The network is fully convolutional up to the pooling, so the weights do not
    depend on it. Simplifications: no pretrained ImageNet weights (random, seeded init) and no
    int8 quantisation (TTE trains a quantised graph; this is its float32 counterpart).
    """

    def __init__(
        self, num_classes: int = 10, blocks: list[tuple[int, int, int, int, int, int]] | None = None
    ) -> None:
        super().__init__()
        blocks = MCUNET_5FPS_BLOCKS if blocks is None else blocks
        layers: list[nn.Module] = [ConvBNAct(3, blocks[0][0], 3, stride=2, act=nn.ReLU6)]
        for cin, cout, k, s, _e, mid in blocks:
            layers.append(InvertedResidual(cin, cout, stride=s, mid=mid, kernel=k))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(blocks[-1][1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN, ReLU between, residual add, ReLU after."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=False)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 (He et al., 2016): BasicBlocks [2, 2, 2, 2], widths 64-128-256-512.

    `cifar=False`: the ImageNet stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool) for 224x224 inputs;
    parameter names follow torchvision's. `cifar=True`: a 3x3/1 stem conv and no max-pool, the
    usual variant for 32x32 inputs.
    """

    def __init__(self, num_classes: int = 10, *, cifar: bool = False) -> None:
        super().__init__()
        if cifar:
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool: nn.Module | None = None if cifar else nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (cout, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
            setattr(
                self,
                f"layer{i}",
                nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)),
            )
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.maxpool is not None:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
