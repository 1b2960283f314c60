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
        setting: str, data_dir: str | Path | None, download: bool, seed: int, n_tasks: int
    ) -> Scenario:
        return split_scenario(
            load_dataset(dataset, data_dir, download), setting, name=f"split-{dataset}"
        )

    return make


#: the task order of the Split-MNIST demo in the MAS authors' repository (``Demo.ipynb``)
AUTHORS_CLASS_ORDER: tuple[tuple[int, ...], ...] = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 0))
#: the input standardisation of that demo: MNIST's training-set pixel mean and std
AUTHORS_MNIST_MEAN, AUTHORS_MNIST_STD = 0.1307, 0.3081


def _split_mnist_authors(
    setting: str, data_dir: str | Path | None, download: bool, seed: int, n_tasks: int
) -> Scenario:
    scenario = split_scenario(
        load_dataset("mnist", data_dir, download),
        setting,
        AUTHORS_CLASS_ORDER,
        name="split-mnist-authors",
    )
    return standardised(scenario, AUTHORS_MNIST_MEAN, AUTHORS_MNIST_STD)


def _permuted(
    setting: str, data_dir: str | Path | None, download: bool, seed: int, n_tasks: int
) -> Scenario:
    return permuted_scenario(
        load_dataset("mnist", data_dir, download), setting, n_tasks, seed, "permuted-mnist"
    )


def _mnist_fashion_animal(
    setting: str, data_dir: str | Path | None, download: bool, seed: int, n_tasks: int
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
}


def check_benchmark(benchmark: str) -> None:
    """Raise :class:`ConfigError` unless ``benchmark`` is one of :data:`BENCHMARKS`."""
    if benchmark not in BENCHMARKS:
        raise ConfigError(
            f"unknown benchmark {benchmark!r}; known benchmarks: {', '.join(BENCHMARKS)}"
        )


def make_scenario(
    benchmark: str,
    setting: str = "task",
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
    n_tasks: int = 10,
) -> Scenario:
    """The task stream of ``benchmark`` in ``setting`` (``task``, ``domain`` or ``class``).

    ``seed`` and ``n_tasks`` matter for Permuted-MNIST (its permutations and length); ``seed``
    also draws the train/test split of Animal-MNIST in ``mnist-fashion-animal``, which takes no
    ``data_dir`` (it reads three datasets, and a data folder names one).
    """
    check_benchmark(benchmark)
    return BENCHMARKS[benchmark](setting, data_dir, download, seed, n_tasks)
