"""Named benchmarks: a dataset and a way of cutting it into tasks, or a sequence of datasets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from memaware.data.animal_mnist import load_animal_mnist
from memaware.data.fashion_mnist import load_fashion_mnist
from memaware.data.mnist import load_mnist
from memaware.data.registry import load_dataset
from memaware.data.scenarios import Scenario, permuted_scenario, split_scenario, standardised
from memaware.data.sequence import dataset_sequence
from memaware.errors import ConfigError


def _split(dataset: str) -> Callable[..., Scenario]:
    def make(
        setting: str, data_dir: str | Path | None, download: bool, seed: int, n_tasks: int | None
    ) -> Scenario:
        return split_scenario(
            load_dataset(dataset, data_dir, download), setting, name=f"split-{dataset}"
        )

    return make


#: the number of tasks of permuted-mnist when none is asked for
PERMUTED_MNIST_TASKS = 10
#: the task order of the Split-MNIST demo in the MAS authors' repository (``Demo.ipynb``)
AUTHORS_CLASS_ORDER: tuple[tuple[int, ...], ...] = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 0))
#: the input standardisation of that demo: MNIST's training-set pixel mean and std
AUTHORS_MNIST_MEAN, AUTHORS_MNIST_STD = 0.1307, 0.3081


#: benchmarks that cut a dataset's classes, in order, into equal tasks:
#: benchmark -> (dataset, number of classes, default number of tasks)
_EQUAL_SPLITS: dict[str, tuple[str, int, int]] = {
    "split-cifar10": ("cifar10", 10, 5),
    "split-cifar100": ("cifar100", 100, 10),
}


def equal_class_split(n_classes: int, n_tasks: int, benchmark: str) -> tuple[tuple[int, ...], ...]:
    """Classes 0..n_classes−1 in order, cut into ``n_tasks`` tasks of n_classes / n_tasks each.

    E.g. 10 classes in 5 tasks: {0,1}, {2,3}, …, {8,9}. ConfigError (naming ``benchmark`` and
    the numbers of tasks it allows) unless ``n_tasks`` divides ``n_classes`` into tasks of at
    least two classes, the fewest a task can be asked to tell apart.
    """
    allowed = [t for t in range(1, n_classes // 2 + 1) if n_classes % t == 0]
    if n_tasks not in allowed:
        raise ConfigError(
            f"{benchmark} cannot cut its {n_classes} classes into {n_tasks} equal tasks of two "
            f"or more classes; choose the number of tasks (--n-tasks) among "
            f"{', '.join(map(str, allowed))}"
        )
    size = n_classes // n_tasks
    return tuple(tuple(range(t * size, (t + 1) * size)) for t in range(n_tasks))


def _equal_split(benchmark: str) -> Callable[..., Scenario]:
    dataset, n_classes, default_tasks = _EQUAL_SPLITS[benchmark]

    def make(
        setting: str, data_dir: str | Path | None, download: bool, seed: int, n_tasks: int | None
    ) -> Scenario:
        # The class order is checked before the (large) dataset is read.
        order = equal_class_split(
            n_classes, default_tasks if n_tasks is None else n_tasks, benchmark
        )
        return split_scenario(load_dataset(dataset, data_dir, download), setting, order, benchmark)

    return make


def _split_mnist_authors(
    setting: str, data_dir: str | Path | None, download: bool, seed: int, n_tasks: int | None
) -> Scenario:
    scenario = split_scenario(
        load_dataset("mnist", data_dir, download),
        setting,
        AUTHORS_CLASS_ORDER,
        name="split-mnist-authors",
    )
    return standardised(scenario, AUTHORS_MNIST_MEAN, AUTHORS_MNIST_STD)


def _permuted(
    setting: str, data_dir: str | Path | None, download: bool, seed: int, n_tasks: int | None
) -> Scenario:
    return permuted_scenario(
        load_dataset("mnist", data_dir, download),
        setting,
        PERMUTED_MNIST_TASKS if n_tasks is None else n_tasks,
        seed,
        "permuted-mnist",
    )


def _mnist_fashion_animal(
    setting: str, data_dir: str | Path | None, download: bool, seed: int, n_tasks: int | None
) -> Scenario:
    if data_dir is not None:
        raise ConfigError(
            f"mnist-fashion-animal reads three different datasets, but --data-dir names the "
            f"folder of one dataset (got {data_dir}); drop the option: MNIST and Animal-MNIST "
            "come from their packages and Fashion-MNIST from its system folder or --download"
        )
    datasets = (
        load_mnist(download=download),
        load_fashion_mnist(download=download),
        load_animal_mnist(seed=seed),
    )
    return dataset_sequence(datasets, setting, "mnist-fashion-animal")


BENCHMARKS: dict[str, Callable[..., Scenario]] = {
    "split-mnist": _split("mnist"),
    "split-fashion-mnist": _split("fashion-mnist"),
    # the MAS authors' demo: tasks {1,2},{3,4},{5,6},{7,8},{9,0}, inputs (x − 0.1307) / 0.3081
    "split-mnist-authors": _split_mnist_authors,
    "permuted-mnist": _permuted,
    "mnist-fashion-animal": _mnist_fashion_animal,
    # classes in order: 5 tasks {0,1},…,{8,9}; 10 tasks of 10 (--n-tasks 20: 20 tasks of 5)
    "split-cifar10": _equal_split("split-cifar10"),
    "split-cifar100": _equal_split("split-cifar100"),
}


def check_benchmark(benchmark: str, n_tasks: int | None = None) -> None:
    """Raise :class:`ConfigError` unless ``benchmark`` is one of :data:`BENCHMARKS` and, for
    the CIFAR splits, ``n_tasks`` (None: the default) cuts its classes into equal tasks."""
    if benchmark not in BENCHMARKS:
        raise ConfigError(
            f"unknown benchmark {benchmark!r}; known benchmarks: {', '.join(BENCHMARKS)}"
        )
    if benchmark in _EQUAL_SPLITS and n_tasks is not None:
        equal_class_split(_EQUAL_SPLITS[benchmark][1], n_tasks, benchmark)


def make_scenario(
    benchmark: str,
    setting: str = "task",
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
    n_tasks: int | None = None,
) -> Scenario:
    """The task stream of ``benchmark`` in ``setting`` (``task``, ``domain`` or ``class``).

    ``n_tasks`` is the length of Permuted-MNIST (default 10) and the number of equal tasks of
    Split-CIFAR-10 (default 5) and Split-CIFAR-100 (default 10); None takes the default, and
    the other benchmarks have a fixed length. ``seed`` draws Permuted-MNIST's permutations and
    the train/test split of Animal-MNIST in ``mnist-fashion-animal``, which takes no
    ``data_dir`` (it reads three datasets, and a data folder names one).
    """
    check_benchmark(benchmark, n_tasks)
    return BENCHMARKS[benchmark](setting, data_dir, download, seed, n_tasks)
