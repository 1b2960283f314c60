"""CIFAR-10 and CIFAR-100 from their official python-pickle archives.

The archives (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz`` from
https://www.cs.toronto.edu/~kriz/cifar.html) unpack into one folder each:

* ``cifar-10-batches-py/``: ``data_batch_1`` … ``data_batch_5`` (10,000 training images each),
  ``test_batch`` (10,000) and ``batches.meta`` (``label_names``);
* ``cifar-100-python/``: ``train`` (50,000), ``test`` (10,000) and ``meta``
  (``fine_label_names``; the 20 coarse superclasses are not used).

Every batch is a pickled dict whose ``data`` is a uint8 N×3072 array, each row the 1024 red,
then green, then blue pixels of a 32×32 image in row-major order, and whose ``labels``
(CIFAR-10) or ``fine_labels`` (CIFAR-100) is a list of N class indices. The files are unpickled
by :func:`~memaware.data.safe_pickle.load_data_pickle`, which refuses any global but numpy's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from memaware.data.archives import extract_tar
from memaware.data.download import DEFAULT_CACHE_ROOT, UrlOpener, download_files
from memaware.data.images import ImageDataset, validate
from memaware.data.safe_pickle import load_data_pickle
from memaware.errors import DataError

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "CIFAR_URL",
    "CifarLayout",
    "download_cifar",
    "load_cifar",
    "load_cifar10",
    "load_cifar100",
]

#: Where both archives are published.
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
#: One image: 3 colour channels (red, green, blue) of 32×32 pixels, channels first.
IMAGE_SHAPE = (3, 32, 32)
_ROW = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """How one CIFAR dataset is packed: its archive, its folder, its files and their keys."""

    name: str
    title: str
    archive: str
    #: MD5 of the published archive, checked when it is downloaded.
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    names_key: str
    labels_key: str
    n_classes: int

    @property
    def files(self) -> tuple[str, ...]:
        """Every file the unpacked folder must hold."""
        return (*self.train_files, self.test_file, self.meta_file)


CIFAR10 = CifarLayout(
    name="cifar10",
    title="CIFAR-10",
    archive="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    names_key="label_names",
    labels_key="labels",
    n_classes=10,
)
CIFAR100 = CifarLayout(
    name="cifar100",
    title="CIFAR-100",
    archive="cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    folder="cifar-100-python",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    names_key="fine_label_names",
    labels_key="fine_labels",
    n_classes=100,
)


def _entry(record: Any, key: str, path: Path, what: str) -> Any:
    """``record[key]`` of an unpickled dict, whose keys are bytes (Python 2 str) or str."""
    if not isinstance(record, Mapping):
        raise DataError(
            f"{path} holds a {type(record).__name__}, not the dict of {what}; get a fresh copy"
        )
    for candidate in (key.encode("ascii"), key):
        if candidate in record:
            return record[candidate]
    keys = ", ".join(sorted(k.decode("latin1") if isinstance(k, bytes) else str(k) for k in record))
    raise DataError(
        f"{path} has no {key!r} entry (its keys: {keys}); it is not {what}; get a fresh copy"
    )


def _read_batch(
    path: Path, layout: CifarLayout
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """The images (N×3×32×32 uint8) and labels (N int64) of one batch file, checked."""
    what = f"a {layout.title} batch"
    record = load_data_pickle(path, what)
    data = _entry(record, "data", path, what)
    labels = _entry(record, layout.labels_key, path, what)
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == _ROW
    ):
        raise DataError(
            f"{path}: images are {getattr(data, 'dtype', type(data).__name__)} of shape "
            f"{getattr(data, 'shape', '?')}; expected uint8 of shape N×{_ROW} (3 channels of "
            f"32×32 pixels per row); the file may be corrupt or hold another dataset"
        )
    try:
        y = np.asarray(labels)
    except (ValueError, TypeError):  # ragged or unconvertible: reported like any other misfit
        y = np.asarray(labels, dtype=object)
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(data),):
        raise DataError(
            f"{path}: {layout.labels_key!r} holds {y.dtype} of shape {y.shape}; expected "
            f"{len(data)} integer labels, one per image; the file may be corrupt"
        )
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= layout.n_classes):
        raise DataError(
            f"{path}: labels range over [{int(y.min())}, {int(y.max())}] but {layout.title} "
            f"labels lie in [0, {layout.n_classes}); the file may be corrupt or from another "
            "dataset"
        )
    # Channel-major rows: reshaping to (3, 32, 32) gives channels, then rows, then columns.
    return data.reshape(-1, *IMAGE_SHAPE), y.astype(np.int64)


def _read_names(path: Path, layout: CifarLayout) -> tuple[str, ...]:
    what = f"the {layout.title} metadata"
    names = _entry(load_data_pickle(path, what), layout.names_key, path, what)
    if (
        not isinstance(names, list | tuple)
        or len(names) != layout.n_classes
        or not all(isinstance(n, bytes | str) for n in names)
    ):
        raise DataError(
            f"{path}: {layout.names_key!r} should list {layout.n_classes} class names, found "
            f"{type(names).__name__} of length {len(names) if hasattr(names, '__len__') else '?'}"
            "; the file may be corrupt or from another dataset"
        )
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names)


def _locate(root: Path, layout: CifarLayout) -> Path | None:
    """The unpacked folder: ``root`` itself if it holds any of the files, else ``root/folder``."""
    if any((root / name).is_file() for name in layout.files):
        return root
    folder = root / layout.folder
    return folder if folder.is_dir() else None


def _read_folder(folder: Path, layout: CifarLayout) -> ImageDataset:
    missing = [name for name in layout.files if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"{folder} lacks {', '.join(missing)} for {layout.title}; the folder must hold "
            f"{', '.join(layout.files)}, as {layout.archive} unpacks them"
        )
    train = [_read_batch(folder / name, layout) for name in layout.train_files]
    test_x, test_y = _read_batch(folder / layout.test_file, layout)
    ds = ImageDataset(
        name=layout.name,
        train_x=torch.from_numpy(np.concatenate([x for x, _ in train])),
        train_y=torch.from_numpy(np.concatenate([y for _, y in train])),
        test_x=torch.from_numpy(test_x),
        test_y=torch.from_numpy(test_y),
        classes=_read_names(folder / layout.meta_file, layout),
        source=str(folder),
    )
    validate(ds, expected_shape=IMAGE_SHAPE, n_classes=layout.n_classes)
    return ds


def download_cifar(
    layout: CifarLayout, root: str | Path, *, opener: UrlOpener | None = None
) -> Path:
    """Fetch ``layout``'s archive from :data:`CIFAR_URL` into ``root`` and unpack it there.

    The archive is MD5-checked and written atomically by
    :func:`~memaware.data.download.download_files` (an archive already in ``root`` is used as
    it is, without the network) and unpacked by :func:`~memaware.data.archives.extract_tar`;
    it stays in ``root``. Returns the unpacked folder, ``root / layout.folder``.

    Raises:
        DataError: the download fails or is refused, or the archive does not unpack into
            ``layout.folder``.
    """
    root = Path(root).expanduser()
    archive = download_files(
        [layout.archive], [CIFAR_URL], root, checksums={layout.archive: layout.md5}, opener=opener
    )[layout.archive]
    unpacked = extract_tar(archive, root)
    if root / layout.folder not in unpacked:
        raise DataError(
            f"{archive} unpacked into {', '.join(p.name for p in unpacked) or 'nothing'}, not "
            f"{layout.folder}/; it is not the {layout.title} python archive: delete it and "
            "download it again"
        )
    return root / layout.folder


def load_cifar(
    layout: CifarLayout, data_dir: str | Path | None = None, *, download: bool = False
) -> ImageDataset:
    """Load the CIFAR dataset ``layout`` describes from ``data_dir`` (see :func:`load_cifar10`)."""
    root = Path(data_dir) if data_dir is not None else DEFAULT_CACHE_ROOT / layout.name
    root = root.expanduser()
    folder = _locate(root, layout)
    # An archive put there by hand is unpacked without the network, as a downloaded one is.
    if folder is None and (download or (root / layout.archive).is_file()):
        folder = download_cifar(layout, root)
    if folder is None:
        raise DataError(
            f"{layout.title} not found in {root}: it holds neither {layout.folder}/ nor its "
            f"files ({', '.join(layout.files)}); put {layout.archive} (from "
            f"{CIFAR_URL}{layout.archive}) or its unpacked folder there, or pass --data-dir "
            "with the folder that holds it, or allow --download"
        )
    return _read_folder(folder, layout)


def load_cifar10(data_dir: str | Path | None = None, *, download: bool = False) -> ImageDataset:
    """Load CIFAR-10: 50,000 training and 10,000 test 32×32 colour images of ten classes.

    Images are uint8 N×3×32×32 (channels red, green, blue); classes are the archive's
    ``label_names`` (``airplane`` … ``truck``). ``data_dir`` holds the unpacked
    ``cifar-10-batches-py/`` or is that folder itself (default ``~/.cache/memaware/cifar10``).
    When neither is there, ``cifar-10-python.tar.gz`` in ``data_dir`` is unpacked; with
    ``download=True`` it is first downloaded into ``data_dir`` (MD5-checked). A folder may
    hold fewer images than the official set (e.g. for quick runs) but must have every class
    in both splits.

    Raises:
        DataError: the data is not found, a file is missing or corrupt, or the download fails.
    """
    return load_cifar(CIFAR10, data_dir, download=download)


def load_cifar100(data_dir: str | Path | None = None, *, download: bool = False) -> ImageDataset:
    """Load CIFAR-100: 50,000 training and 10,000 test 32×32 colour images of 100 classes.

    As :func:`load_cifar10`, with the folder ``cifar-100-python/`` (files ``train``, ``test``,
    ``meta``), the archive ``cifar-100-python.tar.gz``, the 100 ``fine_labels`` and their
    ``fine_label_names`` (default folder ``~/.cache/memaware/cifar100``).

    Raises:
        DataError: the data is not found, a file is missing or corrupt, or the download fails.
    """
    return load_cifar(CIFAR100, data_dir, download=download)
