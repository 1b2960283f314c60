"""Named benchmarks: a dataset and a way of cutting it into tasks, or a sequence of datasets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memaware.configs.standin import load_standin_preset
from memaware.data.animal_mnist import load_animal_mnist
from memaware.data.fashion_mnist import load_fashion_mnist
from memaware.data.folders import folder_scenario
from memaware.data.mnist import load_mnist
from memaware.data.registry import load_dataset
from memaware.data.scenarios import Scenario, permuted_scenario, split_scenario, standardised
from memaware.data.sequence import dataset_sequence
from memaware.data.standin import check_standin_tasks, standin_scenario
from memaware.data.transforms import Preprocessing
from memaware.errors import ConfigError


def _split(dataset: str) -> Callable[..., Scenario]:
    def make(request: DataRequest) -> Scenario:
        return split_scenario(
            load_dataset(dataset, request.data_dir, request.download),
            request.setting,
            name=f"split-{dataset}",
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

    def make(request: DataRequest) -> Scenario:
        # The class order is checked before the (large) dataset is read.
        n_tasks = default_tasks if request.n_tasks is None else request.n_tasks
        order = equal_class_split(n_classes, n_tasks, benchmark)
        data = load_dataset(dataset, request.data_dir, request.download)
        return split_scenario(data, request.setting, order, benchmark)

    return make


def _split_mnist_authors(request: DataRequest) -> Scenario:
    scenario = split_scenario(
        load_dataset("mnist", request.data_dir, request.download),
        request.setting,
        AUTHORS_CLASS_ORDER,
        name="split-mnist-authors",
    )
    return standardised(scenario, AUTHORS_MNIST_MEAN, AUTHORS_MNIST_STD)


def _permuted(request: DataRequest) -> Scenario:
    return permuted_scenario(
        load_dataset("mnist", request.data_dir, request.download),
        request.setting,
        PERMUTED_MNIST_TASKS if request.n_tasks is None else request.n_tasks,
        request.seed,
        "permuted-mnist",
    )


def _mnist_fashion_animal(request: DataRequest) -> Scenario:
    datasets = (
        load_mnist(download=request.download),
        load_fashion_mnist(download=request.download),
        load_animal_mnist(seed=request.seed),
    )
    return dataset_sequence(datasets, request.setting, "mnist-fashion-animal")


def _folders(request: DataRequest) -> Scenario:
    assert request.data_root is not None and request.preprocessing is not None
    return folder_scenario(
        request.data_root,
        request.tasks,
        request.setting,
        request.preprocessing,
        augment=request.augment,
        seed=request.seed,
    )


#: the offline stand-in for the MAS paper's object-recognition sequence
STANDIN = "object-recognition-standin"


def _standin(request: DataRequest) -> Scenario:
    assert request.preprocessing is not None
    preset = load_standin_preset()
    return standin_scenario(
        preset,
        request.tasks or preset.sequence,
        request.setting,
        request.preprocessing,
        seed=request.seed,
    )


BENCHMARKS: dict[str, Callable[[DataRequest], Scenario]] = {
    "split-mnist": _split("mnist"),
    "split-fashion-mnist": _split("fashion-mnist"),
    # the MAS authors' demo: tasks {1,2},{3,4},{5,6},{7,8},{9,0}, inputs (x − 0.1307) / 0.3081
    "split-mnist-authors": _split_mnist_authors,
    "permuted-mnist": _permuted,
    "mnist-fashion-animal": _mnist_fashion_animal,
    # classes in order: 5 tasks {0,1},…,{8,9}; 10 tasks of 10 (--n-tasks 20: 20 tasks of 5)
    "split-cifar10": _equal_split("split-cifar10"),
    "split-cifar100": _equal_split("split-cifar100"),
    # one task per image folder <data_root>/<name>/{train,val,test}/<class>/<image>
    "folders": _folders,
    # the MAS paper's object-recognition protocol offline: tasks of the stand-in preset
    # (memaware.configs.standin), MNIST-family images and digits as small RGB images
    STANDIN: _standin,
}


@dataclass(frozen=True)
class DataRequest:
    """What a run asks of its benchmark's data; every benchmark reads the fields it needs.

    ``data_dir``: the folder of one dataset's files (IDX, CIFAR archives); ``download``: fetch
    them when absent; ``seed``: the benchmark's own randomness (Permuted-MNIST's permutations,
    Animal-MNIST's split, an image folder's carved validation split); ``n_tasks``: the length
    of Permuted-MNIST (default 10) and the number of equal tasks of Split-CIFAR-10 (default 5)
    and Split-CIFAR-100 (default 10), ``None`` taking the default. ``folders`` reads
    ``data_root`` / each of ``tasks``, decoded with the model's ``preprocessing`` and, for
    training, augmented when ``augment``; the stand-in takes ``tasks`` of its preset (default:
    the preset's sequence), normalised by ``preprocessing``.
    """

    setting: str = "task"
    data_dir: str | Path | None = None
    download: bool = False
    seed: int = 0
    n_tasks: int | None = None
    data_root: str | Path | None = None
    tasks: tuple[str, ...] = ()
    preprocessing: Preprocessing | None = None
    augment: bool = False


#: the benchmarks whose length ``n_tasks`` sets
_SIZED = ("permuted-mnist", *_EQUAL_SPLITS)


def check_benchmark(benchmark: str, request: DataRequest = DataRequest()) -> None:
    """Raise :class:`ConfigError` unless ``benchmark`` is one of :data:`BENCHMARKS` and
    ``request`` gives it what it needs and nothing it would ignore."""
    if benchmark not in BENCHMARKS:
        raise ConfigError(
            f"unknown benchmark {benchmark!r}; known benchmarks: {', '.join(BENCHMARKS)}"
        )
    if benchmark in _EQUAL_SPLITS and request.n_tasks is not None:
        equal_class_split(_EQUAL_SPLITS[benchmark][1], request.n_tasks, benchmark)
    if request.n_tasks is not None and benchmark not in _SIZED:
        raise ConfigError(
            f"{benchmark} has a fixed number of tasks; --n-tasks is an option of "
            f"{', '.join(_SIZED)}"
        )
    if benchmark == "folders":
        if request.data_root is None or not request.tasks:
            raise ConfigError(
                "the folders benchmark needs --data-root R and --tasks a,b,c (one task per "
                "folder R/<name>/{train,val,test}/<class>/<image>)"
            )
        if request.data_dir is not None:
            raise ConfigError("the folders benchmark reads --data-root, not --data-dir")
        if request.preprocessing is None:
            raise ConfigError("the folders benchmark needs the model's preprocessing")
        return
    standin = benchmark == STANDIN
    if standin:
        if request.preprocessing is None:
            raise ConfigError("the stand-in benchmark needs the model's preprocessing")
        check_standin_tasks(load_standin_preset(), request.tasks)
    if request.data_root is not None or (request.tasks and not standin):
        raise ConfigError(
            f"--data-root and --tasks name the image folders of the folders benchmark, not of "
            f"{benchmark} (its files are found in --data-dir or its package)"
        )
    if request.augment:
        raise ConfigError(
            f"--augment transforms images read from disk (the folders benchmark), not "
            f"{benchmark}'s tensors"
        )
    if benchmark == "mnist-fashion-animal" and request.data_dir is not None:
        raise ConfigError(
            f"mnist-fashion-animal reads three different datasets, but --data-dir names the "
            f"folder of one dataset (got {request.data_dir}); drop the option: MNIST and "
            "Animal-MNIST come from their packages and Fashion-MNIST from its system folder "
            "or --download"
        )


def make_scenario(benchmark: str, setting: str = "task", **fields: Any) -> Scenario:
    """The task stream of ``benchmark`` in ``setting`` (``task``, ``domain`` or ``class``).

    ``fields`` are those of :class:`DataRequest` (``data_dir``, ``download``, ``seed``,
    ``n_tasks``, ``data_root``, ``tasks``, ``preprocessing``, ``augment``).
    """
    request = DataRequest(setting, **fields)
    check_benchmark(benchmark, request)
    return BENCHMARKS[benchmark](request)
