"""Dataset-sequence scenarios: whole datasets learned one after another, one task each.

Where a split or permuted scenario cuts *one* dataset into tasks, a dataset sequence chains
*several* (e.g. MNIST → Fashion-MNIST → Animal-MNIST): task ``i`` is dataset ``i`` with all of
its classes, its training and test sets unchanged, and is named after the dataset. The shift
between tasks is a change of domain (digits, clothes, animals), not of classes of one domain.

The three settings read as follows:

* ``task``: one head per dataset; head ``i`` answers dataset ``i`` in its own labels, so its
  ``n_classes`` is that dataset's class count;
* ``domain``: one shared head answers every dataset in its own labels (label 3 is "3", "Dress"
  or "Cow" depending on the task), which needs every dataset to have the same number of classes;
* ``class``: one shared head over the classes of all datasets; dataset ``i``'s labels are
  shifted by the class counts of the datasets before it (0–9, 10–19, 20–29 for three 10-class
  datasets) and every task's ``n_classes`` is the total.

Inputs are float32 in [0, 1] with the datasets' own image shape (N×28×28 for the bundled
datasets), like the other scenarios; all datasets must share that shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from memaware.data.datasets import LabelledData, TensorData, relabelled
from memaware.data.images import ImageDataset
from memaware.data.scenarios import Scenario, Setting, Task, _check_setting, _pixels
from memaware.errors import ConfigError

__all__ = ["TaskData", "dataset_sequence", "sequence_tasks"]


def _check_images(datasets: Sequence[ImageDataset]) -> None:
    """All images uint8 and of one shape; ConfigError naming the datasets otherwise."""
    for ds in datasets:
        for split, x in (("train", ds.train_x), ("test", ds.test_x)):
            # Conversion to float must copy: the loaders share cached tensors between callers.
            if x.dtype != torch.uint8:
                raise ConfigError(
                    f"dataset {ds.name!r} has {x.dtype} {split} images; a dataset sequence "
                    "takes uint8 images as the loaders return them"
                )
    shapes = [
        (f"{ds.name} ({split})", tuple(x.shape[1:]))
        for ds in datasets
        for split, x in (("train", ds.train_x), ("test", ds.test_x))
    ]
    if len({shape for _, shape in shapes}) > 1:
        listed = ", ".join(f"{where}: {'×'.join(map(str, s))}" for where, s in shapes)
        raise ConfigError(
            f"the datasets of a sequence must have images of one shape, but they differ ({listed})"
        )


@dataclass(frozen=True)
class TaskData:
    """One dataset of a sequence: its name, class count and splits, in its own labels."""

    name: str
    n_classes: int
    train: LabelledData
    test: LabelledData
    val: LabelledData | None = None


def sequence_tasks(parts: Sequence[TaskData], setting: Setting, what: str) -> tuple[Task, ...]:
    """One task per dataset of ``parts``, in order, labelled and headed as ``setting`` says.

    ``task``: head ``i``, the dataset's own labels; ``domain``: head 0, the dataset's own labels
    (ConfigError unless all datasets have the same class count; ``what`` names them in the
    message, e.g. "datasets" or "folders"); ``class``: head 0 over all classes, dataset ``i``'s
    labels shifted by the class counts of the datasets before it.
    """
    counts = [part.n_classes for part in parts]
    if setting == "domain" and len(set(counts)) > 1:
        listed = ", ".join(f"{part.name}: {part.n_classes}" for part in parts)
        raise ConfigError(
            f"the domain setting answers every one of the {what} with one shared head, so they "
            f"must have the same number of classes ({listed}); use the task or class setting"
        )

    def shifted(data: LabelledData, shift: int) -> LabelledData:
        return relabelled(data, data.labels + shift) if shift else data

    tasks = []
    offset = 0
    for index, part in enumerate(parts):
        shift = offset if setting == "class" else 0
        tasks.append(
            Task(
                index=index,
                name=part.name,
                head=index if setting == "task" else 0,
                n_classes=sum(counts) if setting == "class" else part.n_classes,
                train=shifted(part.train, shift),
                test=shifted(part.test, shift),
                val=None if part.val is None else shifted(part.val, shift),
            )
        )
        offset += part.n_classes
    return tuple(tasks)


def dataset_sequence(
    datasets: Sequence[ImageDataset], setting: str, name: str | None = None
) -> Scenario:
    """A stream of one task per dataset in ``datasets``, in order, in ``setting``.

    Task ``i`` holds all of dataset ``i`` (its own train/test split), is named after it and, in
    the ``task`` setting, is answered by head ``i``. See the module docstring for the labels and
    heads of each setting. The default scenario name is ``sequence-<name1>-<name2>-...``.

    Raises:
        ConfigError: unknown ``setting``; no datasets; images of different shapes (or not
            uint8); datasets with different class counts in the ``domain`` setting.
    """
    checked = _check_setting(setting)
    if not datasets:
        raise ConfigError("a dataset sequence needs at least one dataset")
    _check_images(datasets)
    parts = [
        TaskData(
            ds.name,
            ds.n_classes,
            TensorData(_pixels(ds.train_x), ds.train_y),
            TensorData(_pixels(ds.test_x), ds.test_y),
        )
        for ds in datasets
    ]
    default_name = "sequence-" + "-".join(ds.name for ds in datasets)
    return Scenario(name or default_name, checked, sequence_tasks(parts, checked, "datasets"))
