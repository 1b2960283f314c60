"""Continual-learning scenarios: a dataset cut into a stream of tasks, in one of three settings.

* ``task``: task-incremental, one head per task, the task id is known at test time;
* ``domain``: domain-incremental, one shared head with the task's local labels (e.g. 2-way);
* ``class``: class-incremental, one shared head over every class seen in the stream.

Inputs are float32 in [0, 1] (:func:`standardised` shifts and scales them, as the MAS authors'
Split-MNIST does), kept as whole tensors so that training slices batches without per-sample
Python.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch

from memaware.data.datasets import LabelledData, TensorData, for_evaluation, select
from memaware.data.images import ImageDataset
from memaware.data.splits import stratified_split
from memaware.errors import ConfigError

Setting = Literal["task", "domain", "class"]
SETTINGS: tuple[Setting, ...] = ("task", "domain", "class")
SPLIT_CLASS_ORDER: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))


@dataclass(frozen=True)
class Task:
    """One task of a stream: its data, the head it is answered by and that head's label space.

    ``train`` and ``test`` (and ``val``, a validation split of the task's own, e.g. an image
    folder's ``val/``; ``None`` when it has none) are :class:`~memaware.data.datasets.LabelledData`:
    whole tensors in memory (:class:`~memaware.data.datasets.TensorData`) or any labelled
    ``Dataset``, read through :func:`~memaware.data.datasets.batches`.
    """

    index: int
    name: str
    head: int
    n_classes: int
    train: LabelledData
    test: LabelledData
    val: LabelledData | None = None

    @classmethod
    def from_tensors(
        cls,
        index: int,
        name: str,
        head: int,
        n_classes: int,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        test_x: torch.Tensor,
        test_y: torch.Tensor,
    ) -> Task:
        """A task whose training and test data are whole tensors."""
        return cls(
            index, name, head, n_classes, TensorData(train_x, train_y), TensorData(test_x, test_y)
        )

    def _tensors(self, split: str) -> TensorData:
        data = getattr(self, split)
        if not isinstance(data, TensorData):
            raise ConfigError(
                f"task {self.name}'s {split} data are a {type(data).__name__}, not tensors in "
                "memory; read them with memaware.data.datasets.batches"
            )
        return data

    @property
    def train_x(self) -> torch.Tensor:
        """The training inputs, for data held in memory (ConfigError otherwise)."""
        return self._tensors("train").x

    @property
    def train_y(self) -> torch.Tensor:
        """The training labels, for data held in memory (ConfigError otherwise)."""
        return self._tensors("train").y

    @property
    def test_x(self) -> torch.Tensor:
        """The test inputs, for data held in memory (ConfigError otherwise)."""
        return self._tensors("test").x

    @property
    def test_y(self) -> torch.Tensor:
        """The test labels, for data held in memory (ConfigError otherwise)."""
        return self._tensors("test").y

    def to(self, device: torch.device | str) -> Task:
        """The same task with its in-memory data on ``device`` (other datasets are read there)."""

        def moved(data: LabelledData | None) -> LabelledData | None:
            return data.to(device) if isinstance(data, TensorData) else data

        train, test = moved(self.train), moved(self.test)
        assert train is not None and test is not None
        return replace(self, train=train, test=test, val=moved(self.val))


@dataclass(frozen=True)
class Scenario:
    """A named stream of tasks in one setting."""

    name: str
    setting: Setting
    tasks: tuple[Task, ...]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input (without the batch dimension)."""
        train = self.tasks[0].train
        if isinstance(train, TensorData):
            return tuple(train.x.shape[1:])
        return tuple(train[0][0].shape)

    def to(self, device: torch.device | str) -> Scenario:
        """The same stream with its in-memory data on ``device``."""
        return replace(self, tasks=tuple(task.to(device) for task in self.tasks))

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]


def _check_setting(setting: str) -> Setting:
    if setting not in SETTINGS:
        raise ConfigError(f"unknown scenario {setting!r}; choose one of {', '.join(SETTINGS)}")
    return setting


def _pixels(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).div_(255.0)


def split_scenario(
    dataset: ImageDataset,
    setting: str,
    class_order: Sequence[Sequence[int]] = SPLIT_CLASS_ORDER,
    name: str | None = None,
) -> Scenario:
    """Split ``dataset`` into tasks of the classes in ``class_order`` (default {0,1},{2,3},...).

    Labels are the class's position within its task (task/domain) or the class itself (class).
    """
    checked = _check_setting(setting)
    seen = [c for group in class_order for c in group]
    if len(set(seen)) != len(seen) or not all(0 <= c < dataset.n_classes for c in seen):
        raise ConfigError(
            f"class order {class_order} must use distinct classes of 0..{dataset.n_classes - 1}"
        )
    tasks = []
    for index, group in enumerate(class_order):
        classes = torch.tensor(list(group))
        local = torch.full((dataset.n_classes,), -1, dtype=torch.int64)
        local[classes] = torch.arange(len(group))
        train_mask = torch.isin(dataset.train_y, classes)
        test_mask = torch.isin(dataset.test_y, classes)
        train_y, test_y = dataset.train_y[train_mask], dataset.test_y[test_mask]
        if checked != "class":
            train_y, test_y = local[train_y], local[test_y]
        tasks.append(
            Task.from_tensors(
                index=index,
                name="/".join(str(c) for c in group),
                head=index if checked == "task" else 0,
                n_classes=dataset.n_classes if checked == "class" else len(group),
                train_x=_pixels(dataset.train_x[train_mask]),
                train_y=train_y,
                test_x=_pixels(dataset.test_x[test_mask]),
                test_y=test_y,
            )
        )
    return Scenario(name or f"split-{dataset.name}", checked, tuple(tasks))


def permuted_scenario(
    dataset: ImageDataset, setting: str, n_tasks: int = 10, seed: int = 0, name: str | None = None
) -> Scenario:
    """``n_tasks`` copies of ``dataset``, each with its own fixed pixel permutation drawn from ``seed``.

    Task 0 keeps the original pixel order. Class-incremental labels are ``label + 10·t``.
    """
    checked = _check_setting(setting)
    if n_tasks < 1:
        raise ConfigError(f"a permuted scenario needs at least one task, got {n_tasks}")
    generator = torch.Generator().manual_seed(seed)
    n_pixels = dataset.train_x[0].numel()
    train_x = _pixels(dataset.train_x.reshape(len(dataset.train_x), n_pixels))
    test_x = _pixels(dataset.test_x.reshape(len(dataset.test_x), n_pixels))
    tasks = []
    for index in range(n_tasks):
        perm = (
            torch.arange(n_pixels) if index == 0 else torch.randperm(n_pixels, generator=generator)
        )
        offset = index * dataset.n_classes if checked == "class" else 0
        tasks.append(
            Task.from_tensors(
                index=index,
                name=f"perm{index}",
                head=index if checked == "task" else 0,
                n_classes=dataset.n_classes * (n_tasks if checked == "class" else 1),
                train_x=train_x[:, perm].reshape(dataset.train_x.shape).contiguous(),
                train_y=dataset.train_y + offset,
                test_x=test_x[:, perm].reshape(dataset.test_x.shape).contiguous(),
                test_y=dataset.test_y + offset,
            )
        )
    return Scenario(name or f"permuted-{dataset.name}", checked, tuple(tasks))


def standardised(scenario: Scenario, mean: float, std: float) -> Scenario:
    """The same stream with every input x (train and test) replaced by (x − mean) / std.

    torchvision's ``Normalize((mean,), (std,))`` after ``ToTensor``: for MNIST the authors of MAS
    use mean 0.1307 and std 0.3081, the pixel statistics of its training set.
    """
    if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
        raise ConfigError(f"standardising needs a finite mean and std > 0, got {mean}, {std}")
    tasks = tuple(
        replace(
            task,
            train=TensorData((task.train_x - mean) / std, task.train_y),
            test=TensorData((task.test_x - mean) / std, task.test_y),
        )
        for task in scenario.tasks
    )
    return replace(scenario, tasks=tasks)


def validation_split(
    task: Task, fraction: float, generator: torch.Generator
) -> tuple[Task, Task]:
    """(training, validation) views of ``task``.

    The validation view's *test* data are the task's own ``val`` split when it has one, else
    ``fraction`` of its training data, held out stratified by label with ``generator``; the
    training view keeps the task's test data and trains on the rest.
    """
    if task.val is not None:
        return task, replace(task, test=task.val, val=None)
    train, held_out = stratified_split(task.train.labels.cpu(), fraction, generator)
    training = replace(task, train=select(task.train, train))
    return training, replace(training, test=select(for_evaluation(task.train), held_out))


def with_validation(scenario: Scenario, fraction: float = 0.1, seed: int = 0) -> Scenario:
    """The same stream with each task's test set replaced by its validation data.

    That is the task's own ``val`` split, or else ``fraction`` of its training data (stratified
    by label, seeded; see :func:`validation_split`), the rest staying the training set. Tuning
    on this scenario never looks at the real test set.
    """
    return replace(
        scenario,
        name=f"{scenario.name}-validation",
        tasks=tuple(t[1] for t in validation_splits(scenario, fraction, seed)),
    )


def validation_splits(scenario: Scenario, fraction: float, seed: int) -> list[tuple[Task, Task]]:
    """:func:`validation_split` of every task in order, the held-out parts drawn from one ``seed``."""
    if not 0 < fraction < 1:
        raise ConfigError(f"the validation fraction must be in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    return [validation_split(task, fraction, generator) for task in scenario.tasks]
