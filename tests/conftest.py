"""Shared fixtures: real MNIST from the installed package, loaded once per session."""

from __future__ import annotations

import pytest
import torch

from memaware.data.sources import ImageDataset, load_mnist


@pytest.fixture(scope="session")
def mnist() -> ImageDataset:
    return load_mnist()


@pytest.fixture(scope="session")
def mnist_inputs(mnist: ImageDataset) -> torch.Tensor:
    """512 real MNIST training images as float32 rows in [0, 1]."""
    return mnist.train_x[:512].reshape(512, -1).float() / 255.0
