"""The ``object-recognition-standin`` benchmark: real grey datasets as small RGB tasks in memory.

No dataset of the MAS paper's object-recognition sequence can be had offline; this benchmark runs
its protocol on the real datasets that ship in packages here (MNIST, Fashion-MNIST, Animal-MNIST,
scikit-learn's digits). Each task of the preset (:mod:`memaware.configs.standin`) takes some
classes of one dataset (relabelled 0..k−1 in the preset's order) and, from each class,
``train_per_class`` training and ``test_per_class`` test images drawn without replacement by
``seed`` (the same seed, the same images). Images go from uint8 grey (N, H, W) to what an
ImageNet network takes:

    x = pixel / 255  →  bilinear resize to R×R (antialiased, ``F.interpolate``)
      →  copied to 3 channels  →  (x − mean_c) / std_c

with R the preset's resolution and (mean, std) the model's :class:`Preprocessing`
(EfficientNet-Lite0: 127/255 and 128/255, i.e. (pixel − 127) / 128). Tasks are held as
:class:`TensorData` (float32), so training slices batches without a ``DataLoader``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from memaware.configs.standin import DATASETS, StandinPreset, StandinTask
from memaware.data.animal_mnist import load_animal_mnist
from memaware.data.datasets import TensorData
from memaware.data.digits import load_digits
from memaware.data.fashion_mnist import load_fashion_mnist
from memaware.data.images import ImageDataset
from memaware.data.mnist import load_mnist
from memaware.data.scenarios import Scenario, _check_setting
from memaware.data.sequence import TaskData, sequence_tasks
from memaware.data.transforms import Preprocessing
from memaware.errors import ConfigError, DataError

__all__ = ["LOADERS", "check_standin_tasks", "rgb_images", "standin_scenario", "subsample"]

#: each dataset of :data:`memaware.configs.standin.DATASETS`, from its package, split by ``seed``
LOADERS: dict[str, Callable[[int], ImageDataset]] = {
    "mnist": lambda seed: load_mnist(),
    "fashion-mnist": lambda seed: load_fashion_mnist(),
    "animal-mnist": lambda seed: load_animal_mnist(seed=seed),
    "digits": lambda seed: load_digits(seed=seed),
}
assert tuple(LOADERS) == DATASETS


def check_standin_tasks(preset: StandinPreset, names: Sequence[str]) -> None:
    """ConfigError unless ``names`` are distinct tasks of ``preset`` (checked before data are read)."""
    unknown = [n for n in names if n not in preset.tasks]
    if unknown:
        raise ConfigError(
            f"unknown stand-in task(s) {', '.join(unknown)}; the stand-in's tasks are "
            f"{', '.join(preset.tasks)}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"a task can be learned once in a sequence, got {', '.join(names)}")


def subsample(
    labels: torch.Tensor, classes: Sequence[int], per_class: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, new labels): ``per_class`` rows of each of ``classes``, labelled by position.

    Rows of class ``classes[i]`` get label ``i``; within a class they are a seeded draw without
    replacement, and the classes' rows are then shuffled together. DataError when a class has
    fewer than ``per_class`` rows.
    """
    picked, relabelled = [], []
    for position, label in enumerate(classes):
        members = torch.nonzero(labels == label).flatten()
        if len(members) < per_class:
            raise DataError(
                f"class {label} has {len(members)} images, fewer than the {per_class} asked for"
            )
        picked.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
        relabelled.append(torch.full((per_class,), position, dtype=torch.int64))
    order = torch.randperm(per_class * len(classes), generator=generator)
    return torch.cat(picked)[order], torch.cat(relabelled)[order]


def rgb_images(images: torch.Tensor, resolution: int, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 grey (N, H, W) → float32 (N, 3, R, R), resized and normalised (see the module doc)."""
    x = images.to(torch.float32).div_(255.0).unsqueeze(1)
    if x.shape[-2:] != (resolution, resolution):
        x = F.interpolate(
            x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True
        )
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x.expand(-1, 3, -1, -1) - mean) / std).contiguous()


def _task_data(
    spec: StandinTask, dataset: ImageDataset, resolution: int, pre: Preprocessing, seed: int
) -> TaskData:
    # One stream per task, from the seed and the task's name, so that a task draws the same
    # images whatever else the run holds.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + sum(map(ord, spec.name)))
    parts = []
    for x, y, per_class in (
        (dataset.train_x, dataset.train_y, spec.train_per_class),
        (dataset.test_x, dataset.test_y, spec.test_per_class),
    ):
        index, labels = subsample(y, spec.classes, per_class, generator)
        parts.append(TensorData(rgb_images(x[index], resolution, pre), labels))
    return TaskData(spec.name, len(spec.classes), parts[0], parts[1])


def standin_scenario(
    preset: StandinPreset,
    names: Sequence[str],
    setting: str,
    preprocessing: Preprocessing,
    seed: int = 0,
) -> Scenario:
    """The tasks ``names`` of ``preset``, in order, as a scenario in ``setting``.

    ``task``: one head per task; ``domain``: one shared head (every task must have as many
    classes); ``class``: one head over all tasks' classes. ``seed`` draws the images (and the
    train/test split of the datasets that ship without one).
    """
    checked = _check_setting(setting)
    check_standin_tasks(preset, names)
    specs = [preset.tasks[n] for n in names]
    datasets = {s.dataset: LOADERS[s.dataset](seed) for s in specs}
    parts = [
        _task_data(s, datasets[s.dataset], preset.resolution, preprocessing, seed) for s in specs
    ]
    return Scenario(
        "object-recognition-standin", checked, sequence_tasks(parts, checked, "stand-in tasks")
    )
