"""The reduced ResNet-18 of the continual-learning literature, for small (32×32) images.

GEM (Lopez-Paz & Ranzato, 2017) and Mammoth use ResNet-18's BasicBlock layout [2, 2, 2, 2]
with a base width of ``nf = 20`` instead of 64, and a 3×3 stride-1 first convolution without
max-pooling (the ImageNet stem would shrink a 32×32 image to 8×8 at once). Four stages of
widths 20, 40, 80, 160 (strides 1, 2, 2, 2), BatchNorm after every convolution, a global
average pool: ``(N, C, H, W) -> (N, 160)``.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with 3×3 convolutions.

    The shortcut is the identity, or a strided 1×1 convolution with BatchNorm where the block
    changes the width or the resolution.
    """

    memaware_own_parameters_only = True  # it applies parameters only through its layers

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))  # type: ignore[no-any-return]


class ResNet18(nn.Module):
    """Reduced ResNet-18 backbone: ``(N, in_channels, H, W) -> (N, 8·nf)`` (160 features for nf = 20).

    Inputs ``(N, H, W)`` of single-channel data are taken as ``(N, 1, H, W)`` when
    ``in_channels`` is 1.
    """

    memaware_own_parameters_only = True  # it applies parameters only through its layers

    def __init__(self, in_channels: int = 3, nf: int = 20) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, nf, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        self.relu = nn.ReLU()
        stages = []
        width = nf
        for i, stride in enumerate((1, 2, 2, 2)):
            planes = nf * 2**i
            stages.append(
                nn.Sequential(BasicBlock(width, planes, stride), BasicBlock(planes, planes))
            )
            width = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.in_channels, *x.shape[-2:])
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.flatten(self.pool(x))  # type: ignore[no-any-return]
