"""Folders of the four standard IDX files (MNIST's layout), read into an :class:`ImageDataset`."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from memaware.data.download import DEFAULT_CACHE_ROOT, download_files
from memaware.data.idx import read_idx
from memaware.data.images import ImageDataset, validate
from memaware.errors import DataError

__all__ = [
    "IDX_FILES",
    "MNIST_SIZES",
    "download_idx_dir",
    "has_idx_files",
    "load_idx_dir",
    "load_installed_idx_dir",
]

#: Stems of the four standard IDX files; each may also be present with a ``.gz`` suffix.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_TRAIN_X, _TRAIN_Y, _TEST_X, _TEST_Y = IDX_FILES
#: The (train, test) sizes MNIST and Fashion-MNIST are published with.
MNIST_SIZES = (60000, 10000)
_IMAGE_SHAPE = (28, 28)


def _locate_idx_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """Find the four IDX files (plain preferred over .gz) and list the stems that are missing."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for stem in IDX_FILES:
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                found[stem] = candidate
                break
        else:
            missing.append(stem)
    return found, missing


def has_idx_files(directory: Path) -> bool:
    """Whether ``directory`` holds all four IDX files (each plain or .gz)."""
    return not _locate_idx_files(directory)[1]


def _idx_images(path: Path) -> torch.Tensor:
    array = read_idx(path)
    if array.dtype != np.uint8 or array.ndim != 3:
        raise DataError(
            f"{path} holds {array.dtype} data of shape {array.shape}; an image file must hold "
            "uint8 data of shape N×H×W; check that the file names are not swapped"
        )
    return torch.from_numpy(array)


def _idx_labels(path: Path) -> torch.Tensor:
    array = read_idx(path)
    if not np.issubdtype(array.dtype, np.integer) or array.ndim != 1:
        raise DataError(
            f"{path} holds {array.dtype} data of shape {array.shape}; a label file must hold "
            "1-D integer data; check that the file names are not swapped"
        )
    return torch.from_numpy(array.astype(np.int64))


def load_idx_dir(
    name: str, directory: Path, classes: tuple[str, ...], sizes: tuple[int, int] | None
) -> ImageDataset:
    """Read the four IDX files of 28×28 images in ``directory``; DataError listing any missing.

    ``sizes`` is the exact (train, test) size to insist on, or None to accept any size.
    """
    files, missing = _locate_idx_files(directory)
    if missing:
        listed = ", ".join(f"{stem}[.gz]" for stem in missing)
        raise DataError(
            f"{directory} lacks {listed} for {name}; the folder must hold the four IDX files "
            f"{', '.join(IDX_FILES)} (each plain or .gz)"
        )
    ds = ImageDataset(
        name=name,
        train_x=_idx_images(files[_TRAIN_X]),
        train_y=_idx_labels(files[_TRAIN_Y]),
        test_x=_idx_images(files[_TEST_X]),
        test_y=_idx_labels(files[_TEST_Y]),
        classes=classes,
        source=str(directory),
    )
    validate(ds, expected_shape=_IMAGE_SHAPE, n_classes=len(classes), expected_sizes=sizes)
    return ds


#: :func:`load_idx_dir`, cached: installed system folders do not change while we run (user
#: folders may, so those are re-read).
load_installed_idx_dir = functools.lru_cache(maxsize=2)(load_idx_dir)


def download_idx_dir(
    name: str,
    mirrors: Sequence[str],
    checksums: Mapping[str, str],
    cache_dir: str | Path | None,
    classes: tuple[str, ...],
) -> ImageDataset:
    """Download the four ``.gz`` IDX files into ``cache_dir`` unless there, then read them.

    ``cache_dir`` defaults to ``~/.cache/memaware/<name>``; the data must have the official
    :data:`MNIST_SIZES`.
    """
    directory = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_ROOT / name
    directory = directory.expanduser()
    # Skip the network when an earlier run (or the user) already filled the cache folder.
    if not has_idx_files(directory):
        download_files(
            [f"{stem}.gz" for stem in IDX_FILES], mirrors, directory, checksums=checksums
        )
    return load_idx_dir(name, directory, classes, MNIST_SIZES)
