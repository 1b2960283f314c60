"""The MNIST → Fashion-MNIST → Animal-MNIST sequence on the real data: sizes, labels, heads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memaware.data.animal_mnist import load_animal_mnist, split_animal_mnist
from memaware.data.benchmarks import make_scenario
from memaware.data.fashion_mnist import FASHION_MNIST_SYSTEM_DIR
from memaware.data.images import ImageDataset
from memaware.data.sequence import dataset_sequence
from memaware.errors import ConfigError

needs_fashion = pytest.mark.skipif(
    not FASHION_MNIST_SYSTEM_DIR.is_dir(),
    reason=f"Fashion-MNIST is not installed in {FASHION_MNIST_SYSTEM_DIR} "
    "(apt-get install dataset-fashion-mnist)",
)

# Animal-MNIST's seeded split with the default test fraction of 1/6.
ANIMAL_SIZES = (8330, 1670)


@pytest.fixture(scope="module")
def animal() -> ImageDataset:
    return load_animal_mnist(seed=0)


def _subset(ds: ImageDataset, n: int, classes: int | None = None) -> ImageDataset:
    """The first ``n`` images of each split, optionally keeping only labels below ``classes``."""
    keep = ds.n_classes if classes is None else classes
    train = ds.train_y[:n] < keep
    test = ds.test_y[:n] < keep
    return ImageDataset(
        name=f"{ds.name}-{keep}",
        train_x=ds.train_x[:n][train],
        train_y=ds.train_y[:n][train],
        test_x=ds.test_x[:n][test],
        test_y=ds.test_y[:n][test],
        classes=ds.classes[:keep],
    )


@needs_fashion
@pytest.mark.parametrize("setting", ["task", "domain", "class"])
def test_benchmark_tasks_heads_and_labels(setting: str) -> None:
    scenario = make_scenario("mnist-fashion-animal", setting, seed=0)
    assert scenario.name == "mnist-fashion-animal" and scenario.setting == setting
    assert scenario.task_names == ["mnist", "fashion-mnist", "animal-mnist"]
    assert scenario.input_shape == (28, 28)
    sizes = [(len(t.train_y), len(t.test_y)) for t in scenario.tasks]
    assert sizes == [(60000, 10000), (60000, 10000), ANIMAL_SIZES]
    heads = [t.head for t in scenario.tasks]
    assert heads == ([0, 1, 2] if setting == "task" else [0, 0, 0])
    assert [t.n_classes for t in scenario.tasks] == [30 if setting == "class" else 10] * 3
    for index, task in enumerate(scenario.tasks):
        assert task.index == index
        offset = 10 * index if setting == "class" else 0
        for y in (task.train_y, task.test_y):
            assert y.dtype == torch.int64
            assert set(torch.unique(y).tolist()) == set(range(offset, offset + 10))
        for x in (task.train_x, task.test_x):
            assert x.dtype == torch.float32 and x.shape[1:] == (28, 28)
            assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_sequence_keeps_each_dataset(mnist: ImageDataset, animal: ImageDataset) -> None:
    before = mnist.train_x[:5].clone()
    scenario = dataset_sequence([mnist, animal], "class")
    assert scenario.name == "sequence-mnist-animal-mnist"
    first, second = scenario.tasks
    assert torch.equal(first.train_x, mnist.train_x.float() / 255)
    assert torch.equal(first.test_y, mnist.test_y)
    assert torch.equal(second.train_x, animal.train_x.float() / 255)
    assert torch.equal(second.train_y, animal.train_y + 10)
    assert torch.equal(second.test_y, animal.test_y + 10)
    # the cached source tensors are left as they were
    assert mnist.train_x.dtype == torch.uint8 and torch.equal(mnist.train_x[:5], before)
    assert int(mnist.train_y.max()) == 9 and int(animal.train_y.max()) == 9


def test_class_offsets_follow_class_counts(mnist: ImageDataset, animal: ImageDataset) -> None:
    five = _subset(mnist, 2000, classes=5)
    scenario = dataset_sequence([five, animal, five], "class")
    assert [t.n_classes for t in scenario.tasks] == [20, 20, 20]
    ranges = [(int(t.train_y.min()), int(t.train_y.max())) for t in scenario.tasks]
    assert ranges == [(0, 4), (5, 14), (15, 19)]
    task = dataset_sequence([five, animal], "task")
    assert [(t.head, t.n_classes) for t in task.tasks] == [(0, 5), (1, 10)]


def test_animal_split_is_seeded(animal: ImageDataset) -> None:
    # An uncached load: the same seed must give the same split, not just the same cached object.
    fresh = split_animal_mnist.__wrapped__(0, 1 / 6)
    assert torch.equal(fresh.train_y, animal.train_y) and torch.equal(fresh.test_x, animal.test_x)
    assert (len(animal.train_y), len(animal.test_y)) == ANIMAL_SIZES
    other = load_animal_mnist(seed=1)
    assert not torch.equal(other.train_y, animal.train_y)
    # stratified: 167 test images of every class, whatever the seed
    for ds in (animal, other):
        assert torch.bincount(ds.test_y).tolist() == [167] * 10


@needs_fashion
def test_benchmark_passes_seed_to_animal_split() -> None:
    scenario = make_scenario("mnist-fashion-animal", "task", seed=1)
    animal = load_animal_mnist(seed=1)
    assert torch.equal(scenario.tasks[2].train_y, animal.train_y)
    assert torch.equal(scenario.tasks[2].test_x, animal.test_x.float() / 255)


def test_benchmark_refuses_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--data-dir names the folder of one dataset"):
        make_scenario("mnist-fashion-animal", "task", data_dir=str(tmp_path))


def test_domain_needs_equal_class_counts(mnist: ImageDataset, animal: ImageDataset) -> None:
    five = _subset(mnist, 2000, classes=5)
    with pytest.raises(
        ConfigError, match=r"same number of classes \(mnist-5: 5, animal-mnist: 10\)"
    ):
        dataset_sequence([five, animal], "domain")


def test_shapes_must_agree(mnist: ImageDataset, animal: ImageDataset) -> None:
    small = _subset(mnist, 500)
    small = ImageDataset(
        name="mnist-14",
        train_x=small.train_x[:, ::2, ::2].contiguous(),
        train_y=small.train_y,
        test_x=small.test_x[:, ::2, ::2].contiguous(),
        test_y=small.test_y,
        classes=small.classes,
    )
    with pytest.raises(ConfigError, match=r"one shape.*animal-mnist \(train\): 28×28.*mnist-14"):
        dataset_sequence([animal, small], "task")


def test_other_bad_input(mnist: ImageDataset) -> None:
    with pytest.raises(ConfigError, match="unknown scenario"):
        dataset_sequence([mnist], "online")
    with pytest.raises(ConfigError, match="at least one dataset"):
        dataset_sequence([], "task")
    small = _subset(mnist, 100)
    floats = ImageDataset(
        name="floats",
        train_x=small.train_x.float(),
        train_y=small.train_y,
        test_x=small.test_x.float(),
        test_y=small.test_y,
        classes=small.classes,
    )
    with pytest.raises(ConfigError, match=r"'floats' has torch\.float32 train images"):
        dataset_sequence([small, floats], "task")
