"""scikit-learn's handwritten digits (UCI optdigits test set): 1,797 8×8 images, split here.

scikit-learn's wheel bundles them as ``sklearn/datasets/data/digits.csv.gz``: one row per image,
64 pixel counts 0..16 (white strokes on black, as MNIST) then the label 0..9. The file is read
directly, without importing scikit-learn (whose import needs scipy). Pixels become uint8 by
round(v · 255 / 16), so that 16 is 255 as MNIST's full stroke. The data have no train/test
split: a stratified one is drawn from ``seed``, as for Animal-MNIST.
"""

from __future__ import annotations

import functools
import gzip
import zlib

import numpy as np
import torch

from memaware.data.images import ImageDataset, validate
from memaware.data.packages import package_file
from memaware.data.splits import stratified_split
from memaware.errors import ConfigError, DataError

__all__ = ["DIGITS_CLASSES", "DIGITS_SIZE", "load_digits"]

DIGITS_CLASSES = tuple(str(digit) for digit in range(10))
#: images in the bundled file
DIGITS_SIZE = 1797
_MAX_COUNT = 16  # each pixel counts the set bits of a 4×4 block of the 32×32 bitmap
_INSTALL = "pip install --no-deps scikit-learn (its wheel bundles the digits; scipy is not needed)"


def load_digits(*, seed: int = 0, test_fraction: float = 1 / 6) -> ImageDataset:
    """The 1,797 digits as a uint8 N×8×8 dataset, split stratified into train and test by ``seed``.

    The default ``test_fraction`` gives 1,498 training and 299 test images.

    Raises:
        ConfigError: ``test_fraction`` is not strictly between 0 and 1.
        DataError: scikit-learn is not installed, or its file is not what is expected.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    return _split_digits(seed, float(test_fraction))


@functools.lru_cache(maxsize=8)
def _split_digits(seed: int, test_fraction: float) -> ImageDataset:
    path = package_file("sklearn", "datasets", "data", "digits.csv.gz")
    if path is None:
        raise DataError(f"scikit-learn's digits not found: install it with `{_INSTALL}`")
    try:
        with gzip.open(path, "rt") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise DataError(f"cannot read {path} ({exc!r}); reinstall it: {_INSTALL}") from exc
    if table.shape != (DIGITS_SIZE, 65):
        raise DataError(
            f"{path}: expected {DIGITS_SIZE} rows of 64 pixels and a label, found a table of "
            f"shape {table.shape}; reinstall it: {_INSTALL}"
        )
    pixels, labels = table[:, :64], table[:, 64]
    if pixels.min() < 0 or pixels.max() > _MAX_COUNT or labels.min() < 0 or labels.max() > 9:
        raise DataError(
            f"{path}: pixels must lie in 0..{_MAX_COUNT} and labels in 0..9; reinstall it: {_INSTALL}"
        )
    images = np.rint(pixels * (255 / _MAX_COUNT)).astype(np.uint8).reshape(-1, 8, 8)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    train, test = stratified_split(y, test_fraction, torch.Generator().manual_seed(seed))
    ds = ImageDataset(
        name="digits",
        train_x=x[train],
        train_y=y[train],
        test_x=x[test],
        test_y=y[test],
        classes=DIGITS_CLASSES,
        source=str(path),
    )
    validate(ds, expected_shape=(8, 8))
    return ds
