"""Fashion-MNIST, offline first: a folder of IDX files, Debian's system folder, or a download."""

from __future__ import annotations

from pathlib import Path

from memaware.data.idx_folder import (
    IDX_FILES,
    MNIST_SIZES,
    download_idx_dir,
    has_idx_files,
    load_idx_dir,
    load_installed_idx_dir,
)
from memaware.data.images import ImageDataset
from memaware.errors import DataError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MD5",
    "FASHION_MNIST_MIRRORS",
    "FASHION_MNIST_SYSTEM_DIR",
    "load_fashion_mnist",
]

FASHION_MNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
# Installed by Debian's dataset-fashion-mnist (recompressed: its .gz bytes differ from the
# published ones, so the MD5s above do not apply to it; the IDX content is what we check).
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def load_fashion_mnist(
    data_dir: str | Path | None = None,
    *,
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> ImageDataset:
    """Load Fashion-MNIST (60,000 training and 10,000 test images of ten clothing classes).

    Sources, in order: the four IDX files in ``data_dir`` when it is given (no fallback if
    they are missing); Debian's ``dataset-fashion-mnist`` folder
    (:data:`FASHION_MNIST_SYSTEM_DIR`, cached per process); with ``download=True``, the
    canonical files from :data:`FASHION_MNIST_MIRRORS` into ``cache_dir`` (default
    ``~/.cache/memaware/fashion-mnist``). As for :func:`~memaware.data.mnist.load_mnist`, only
    a ``data_dir`` may hold other than the official 60,000/10,000 images.

    Raises:
        DataError: no source has the data, or the data found is corrupt.
    """
    if data_dir is not None:
        return load_idx_dir(
            "fashion-mnist", Path(data_dir).expanduser(), FASHION_MNIST_CLASSES, None
        )
    if has_idx_files(FASHION_MNIST_SYSTEM_DIR):
        return load_installed_idx_dir(
            "fashion-mnist", FASHION_MNIST_SYSTEM_DIR, FASHION_MNIST_CLASSES, MNIST_SIZES
        )
    if download:
        return download_idx_dir(
            "fashion-mnist",
            FASHION_MNIST_MIRRORS,
            FASHION_MNIST_MD5,
            cache_dir,
            FASHION_MNIST_CLASSES,
        )
    raise DataError(
        f"Fashion-MNIST not found: install it with `apt-get install dataset-fashion-mnist` "
        f"(it lands in {FASHION_MNIST_SYSTEM_DIR}), or pass --data-dir with a folder holding "
        f"{', '.join(IDX_FILES)} (plain or .gz), or allow --download"
    )
