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

import torch

from memaware.data.images import ImageDataset
from memaware.data.scenarios import Scenario, Task, _check_setting, _pixels
from memaware.errors import ConfigError

__all__ = ["dataset_sequence"]


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
    counts = [ds.n_classes for ds in datasets]
    if checked == "domain" and len(set(counts)) > 1:
        listed = ", ".join(f"{ds.name}: {ds.n_classes}" for ds in datasets)
        raise ConfigError(
            "the domain setting answers every dataset with one shared head, so the datasets "
            f"must have the same number of classes ({listed}); use the task or class setting"
        )
    total = sum(counts)
    tasks = []
    offset = 0
    for index, ds in enumerate(datasets):
        shift = offset if checked == "class" else 0
        tasks.append(
            Task.from_tensors(
                index=index,
                name=ds.name,
                head=index if checked == "task" else 0,
                n_classes=total if checked == "class" else ds.n_classes,
                train_x=_pixels(ds.train_x),
                train_y=ds.train_y + shift,
                test_x=_pixels(ds.test_x),
                test_y=ds.test_y + shift,
            )
        )
        offset += ds.n_classes
    default_name = "sequence-" + "-".join(ds.name for ds in datasets)
    return Scenario(name or default_name, checked, tuple(tasks))
