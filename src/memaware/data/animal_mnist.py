"""Animal-MNIST: the arrays of the ``animal-mnist`` package, split here into train and test."""

from __future__ import annotations

import functools

import numpy as np
import torch

from memaware.data.images import ImageDataset, validate
from memaware.data.packages import package_file, unpickle_gz
from memaware.data.splits import stratified_split
from memaware.errors import ConfigError, DataError

__all__ = ["ANIMAL_MNIST_CLASSES", "load_animal_mnist", "split_animal_mnist"]

# The package lists its classes alphabetically and labels 0..9 follow that order (checked by
# looking at the silhouettes: 6 is the giraffes, 9 the striped zebras).
ANIMAL_MNIST_CLASSES = (
    "Bear",
    "Bird",
    "Cat",
    "Cow",
    "Dog",
    "Elephant",
    "Giraffe",
    "Horse",
    "Sheep",
    "Zebra",
)
_ANIMAL_MNIST_SIZE = 10000
_ANIMAL_MNIST_INSTALL = "pip install --no-deps animal-mnist==0.4"


def load_animal_mnist(*, seed: int = 0, test_fraction: float = 1 / 6) -> ImageDataset:
    """Load Animal-MNIST (10,000 28×28 animal silhouettes, 1,000 per class) with a seeded split.

    The ``animal-mnist`` package ships the images and labels with no train/test split, so
    a stratified split is made here from ``seed``: the same seed always gives the same split.
    The default ``test_fraction`` gives 8,330 training and 1,670 test images.

    Raises:
        ConfigError: ``test_fraction`` is not strictly between 0 and 1.
        DataError: the package is not installed or its files are not what is expected.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    return split_animal_mnist(seed, float(test_fraction))


@functools.lru_cache(maxsize=8)
def split_animal_mnist(seed: int, test_fraction: float) -> ImageDataset:
    """The package's arrays split by :func:`stratified_split` (cached per seed and fraction)."""
    folder = ("data", "Animal_MNIST")
    images_path = package_file("animal_mnist", *folder, "animal_data_version_3.gz")
    labels_path = package_file("animal_mnist", *folder, "animal_label_version_3.gz")
    if images_path is None or labels_path is None:
        raise DataError(
            "Animal-MNIST not found: its data files animal_mnist/data/Animal_MNIST/"
            f"animal_{{data,label}}_version_3.gz are missing; install it with "
            f"`{_ANIMAL_MNIST_INSTALL}`"
        )
    images = unpickle_gz(images_path, _ANIMAL_MNIST_INSTALL)
    labels = unpickle_gz(labels_path, _ANIMAL_MNIST_INSTALL)
    # Version 0.4 stores uint8 white-on-black silhouettes in 0..255 (like MNIST) and int64
    # labels sorted by class; anything else is a different release, not something to guess at.
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.shape != (_ANIMAL_MNIST_SIZE, 28, 28)
    ):
        raise DataError(
            f"{images_path}: expected uint8 images of shape ({_ANIMAL_MNIST_SIZE}, 28, 28), "
            f"found {getattr(images, 'dtype', type(images).__name__)} "
            f"{getattr(images, 'shape', '')}; install the supported release: "
            f"`{_ANIMAL_MNIST_INSTALL}`"
        )
    if (
        not isinstance(labels, np.ndarray)
        or not np.issubdtype(labels.dtype, np.integer)
        or labels.shape != (_ANIMAL_MNIST_SIZE,)
    ):
        raise DataError(
            f"{labels_path}: expected {_ANIMAL_MNIST_SIZE} integer labels, found "
            f"{getattr(labels, 'dtype', type(labels).__name__)} {getattr(labels, 'shape', '')}; "
            f"install the supported release: `{_ANIMAL_MNIST_INSTALL}`"
        )
    x = torch.from_numpy(np.ascontiguousarray(images))
    y = torch.from_numpy(labels.astype(np.int64))
    train_idx, test_idx = stratified_split(y, test_fraction, torch.Generator().manual_seed(seed))
    ds = ImageDataset(
        name="animal-mnist",
        train_x=x[train_idx],
        train_y=y[train_idx],
        test_x=x[test_idx],
        test_y=y[test_idx],
        classes=ANIMAL_MNIST_CLASSES,
        source=str(images_path.parent),
    )
    validate(ds, expected_shape=(28, 28))
    return ds
