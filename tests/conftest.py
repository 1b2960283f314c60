"""Shared fixtures: real MNIST from the installed package (loaded once), one intra-op thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from memaware.data.images import ImageDataset
from memaware.data.mnist import load_mnist


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    """The suite's models are small: one intra-op thread is faster, and far faster on a loaded
    2-core machine, where a second thread mostly spins."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mnist() -> ImageDataset:
    return load_mnist()


@pytest.fixture(scope="session")
def mnist_inputs(mnist: ImageDataset) -> torch.Tensor:
    """512 real MNIST training images as float32 rows in [0, 1]."""
    return mnist.train_x[:512].reshape(512, -1).float() / 255.0
