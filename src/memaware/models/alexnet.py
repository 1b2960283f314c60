"""AlexNet (Krizhevsky et al., 2012) in torchvision's layout, the backbone of the MAS paper.

The module and parameter names are torchvision's (``features.0.weight`` … ``classifier.4.bias``),
so that a state_dict saved from ``torchvision.models.alexnet`` loads as it is; its 1000-way
``classifier.6`` is left out, since the task heads replace it, and the backbone returns the
4096 features of the second fully connected layer.
"""

from __future__ import annotations

import torch
from torch import nn

#: Names of the ImageNet classifier in a torchvision AlexNet state_dict, which the heads replace.
IMAGENET_CLASSIFIER = ("classifier.6.weight", "classifier.6.bias")

#: The smallest input side the three 3×3 stride-2 max-pools leave at least one position for.
MIN_SIZE = 63


class AlexNet(nn.Module):
    """``features -> avgpool (6×6) -> flatten -> classifier[:6]``: ``(N, 3, H, W) -> (N, 4096)``."""

    memaware_own_parameters_only = True  # it applies parameters only through its layers

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(6)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(),
        )
        self.out_features = 4096

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))  # type: ignore[no-any-return]


def torchvision_name(key: str) -> str | None:
    """The backbone's name for a key of a torchvision AlexNet state_dict (``None``: the classifier)."""
    return None if key in IMAGENET_CLASSIFIER else key
