"""Feature extractors shared by all tasks; the heads live in :class:`MultiHeadClassifier`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Sequential):
    """Fully connected ReLU network ``in_features -> hidden[0] -> ... -> hidden[-1]``.

    The reference continual-learning MLP is ``MLP(784, (400, 400))`` (Hsu et al. 2018).
    Inputs of any shape ``(N, ...)`` are flattened to ``(N, in_features)``.
    """

    memaware_own_parameters_only = True  # it applies parameters only through its layers

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (400, 400)) -> None:
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = width


class SmallCNN(nn.Module):
    """Two 3×3 conv blocks with max-pooling and one linear layer: ``(N, C, H, W) -> (N, features)``.

    Inputs ``(N, H, W)`` of single-channel data are taken as ``(N, 1, H, W)`` when
    ``in_channels`` is 1.
    """

    memaware_own_parameters_only = True  # it applies parameters only through its layers

    def __init__(
        self, in_channels: int = 3, image_size: int = 32, width: int = 32, features: int = 256
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(2 * width * (image_size // 4) ** 2, features), nn.ReLU())
        self.out_features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], self.in_channels, *x.shape[-2:])
        return self.fc(self.conv(x))  # type: ignore[no-any-return]
