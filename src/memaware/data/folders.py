"""Image folders on disk: one dataset per folder, one task per dataset.

A dataset ``name`` under a data root is laid out as::

    <root>/<name>/train/<class>/<image>
    <root>/<name>/val/<class>/<image>      (optional: carved from train when absent)
    <root>/<name>/test/<class>/<image>

Images are the files ending in ``.jpg``, ``.jpeg`` or ``.png`` (any case), decoded by Pillow
whatever their actual format; hidden files and folders (a leading ``.``) and other files are
ignored. Classes are the class folders of ``train`` sorted by name, and a class's label is its
position in that order; ``val`` and ``test`` may lack classes but not add any.

Every file's header is opened (not decoded) when a folder is loaded, so a file that is not an
image fails before training starts; data truncated past the header fail when decoded, naming
the file. Inputs are decoded on demand in ``__getitem__``, which is what a ``DataLoader``'s
workers parallelise (see :func:`memaware.data.datasets.batches`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from memaware.data.scenarios import Scenario, _check_setting
from memaware.data.sequence import TaskData, sequence_tasks
from memaware.data.splits import stratified_split
from memaware.data.transforms import (
    Preprocessing,
    evaluation_transform,
    open_header,
    read_rgb,
    training_transform,
)
from memaware.errors import ConfigError, DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "FolderDataset",
    "ImageFiles",
    "folder_scenario",
    "load_image_folder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "val", "test")
_LAYOUT = "<root>/<name>/{train,val,test}/<class>/<image>"


class ImageFiles(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Image files with known labels, decoded and transformed one at a time.

    Item ``i`` is ``(x, y)``: ``files[i]`` read as RGB and transformed to a float32 (3, crop,
    crop) tensor by :func:`~memaware.data.transforms.training_transform` when ``augment`` is
    true, else by :func:`~memaware.data.transforms.evaluation_transform`; ``y`` is
    ``labels[i]``, an int64 scalar tensor. ``labels`` and ``classes`` (the class names, indexed
    by label) are known without opening any image.
    """

    def __init__(
        self,
        files: Sequence[Path],
        labels: torch.Tensor,
        classes: Sequence[str],
        preprocessing: Preprocessing,
        *,
        augment: bool = False,
    ) -> None:
        if labels.dim() != 1 or len(labels) != len(files):
            raise ConfigError(f"{len(files)} image files need as many labels, got {len(labels)}")
        self.files = tuple(files)
        self._labels = labels.to(torch.int64).cpu()
        self.classes = tuple(classes)
        self.preprocessing = preprocessing
        self.augment = augment

    @property
    def labels(self) -> torch.Tensor:
        return self._labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = read_rgb(self.files[index])
        transform = training_transform if self.augment else evaluation_transform
        return transform(image, self.preprocessing), self._labels[index]

    def unaugmented(self) -> ImageFiles:
        """The same files and labels through the evaluation transform (for testing and importance)."""
        if not self.augment:
            return self
        return ImageFiles(self.files, self._labels, self.classes, self.preprocessing)

    def subset(self, indices: torch.Tensor, *, augment: bool | None = None) -> ImageFiles:
        """The files at ``indices`` with their labels, augmented as ``augment`` says (default: as is)."""
        rows = indices.tolist()
        return ImageFiles(
            [self.files[i] for i in rows],
            self._labels[indices],
            self.classes,
            self.preprocessing,
            augment=self.augment if augment is None else augment,
        )


@dataclass(frozen=True)
class FolderDataset:
    """One image folder: its class names and its training, validation and test images.

    ``val`` is the folder's own ``val/`` or, when it has none, a stratified seeded part of
    ``train`` (then missing from ``train``); ``val`` and ``test`` never augment.
    """

    name: str
    classes: tuple[str, ...]
    train: ImageFiles
    val: ImageFiles
    test: ImageFiles

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def _visible_entries(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` whose names do not start with a dot, sorted by name."""
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _class_files(split: Path) -> dict[str, list[Path]]:
    """Class name → its image files (sorted by name) for one split folder; DataError when empty."""
    classes: dict[str, list[Path]] = {}
    for entry in _visible_entries(split):
        if not entry.is_dir():
            continue
        class_dir = Path(entry.path)
        files = [
            Path(e.path)
            for e in _visible_entries(class_dir)
            if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()
        ]
        if not files:
            raise DataError(
                f"the class folder {class_dir} holds no {', '.join(IMAGE_EXTENSIONS)} images; "
                "add images to it or remove it"
            )
        classes[entry.name] = files
    if not classes:
        raise DataError(
            f"{split} holds no class folders of images; lay the images out as {_LAYOUT}"
        )
    return classes


def _labelled_files(
    split: Path,
    found: dict[str, list[Path]],
    classes: tuple[str, ...],
    preprocessing: Preprocessing,
    augment: bool,
) -> ImageFiles:
    """The images ``found`` in one split folder, labelled by ``classes``; every header opened once."""
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(
            f"{split / unknown[0]} is a class that {split.parent / 'train'} lacks "
            f"(train's classes: {', '.join(classes)}); every class of val/ and test/ must "
            "also be a class folder of train/"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for path in found.get(name, []):
            open_header(path)
            files.append(path)
            labels.append(label)
    return ImageFiles(
        files, torch.tensor(labels, dtype=torch.int64), classes, preprocessing, augment=augment
    )


def _dataset_folder(root: Path, name: str) -> Path:
    """``root / name`` when it is a folder; DataError listing the folders under ``root`` otherwise."""
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ConfigError(
            f"an image folder's name must be one folder name under the root, got {name!r}"
        )
    if not root.is_dir():
        raise DataError(
            f"the data root {root} is not a folder; pass the folder that holds {_LAYOUT}"
        )
    folder = root / name
    if not folder.is_dir():
        found = [e.name for e in _visible_entries(root) if e.is_dir()]
        listed = ", ".join(found) if found else "none"
        raise DataError(
            f"no image folder {name!r} under {root} (the folders there: {listed}); "
            f"lay each dataset out as {_LAYOUT}"
        )
    return folder


def load_image_folder(
    root: str | os.PathLike[str],
    name: str,
    preprocessing: Preprocessing,
    *,
    augment: bool = False,
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> FolderDataset:
    """The image folder ``root/name``: its classes (train's class folders, sorted) and splits.

    ``train`` augments when ``augment`` is true. Without a ``val/`` folder, the validation split
    takes ``round(n_c · validation_fraction)`` images of each class ``c`` of ``train`` (at least
    one of a class with two or more, see :func:`memaware.data.splits.stratified_split`), drawn
    from ``seed``: the same seed gives the same split.

    Raises:
        ConfigError: ``name`` is not a single folder name; ``validation_fraction`` is not in
            (0, 1).
        DataError: the root or the folder is missing; ``train/`` or ``test/`` is missing; a
            split has no class folders; a class folder has no images; ``val/`` or ``test/`` has
            a class that ``train/`` lacks; a file is not a readable image.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ConfigError(
            f"the validation fraction must lie strictly between 0 and 1, got {validation_fraction}"
        )
    folder = _dataset_folder(Path(root), name)
    for split in ("train", "test"):
        if not (folder / split).is_dir():
            raise DataError(f"{folder} has no {split}/ folder; lay the images out as {_LAYOUT}")
    found = {split: _class_files(folder / split) for split in SPLITS if (folder / split).is_dir()}
    classes = tuple(found["train"])

    def labelled(split: str, augment: bool) -> ImageFiles:
        return _labelled_files(folder / split, found[split], classes, preprocessing, augment)

    train, test = labelled("train", augment), labelled("test", False)
    if "val" in found:
        val = labelled("val", False)
    else:
        generator = torch.Generator().manual_seed(seed)
        kept, held_out = stratified_split(train.labels, validation_fraction, generator)
        # File order inside each split, so that the splits read like the folder.
        val = train.subset(held_out.sort().values, augment=False)
        train = train.subset(kept.sort().values)
    return FolderDataset(name, classes, train, val, test)


def folder_scenario(
    root: str | os.PathLike[str],
    names: Sequence[str],
    setting: str,
    preprocessing: Preprocessing,
    *,
    augment: bool = False,
    seed: int = 0,
    validation_fraction: float = 0.1,
) -> Scenario:
    """A stream of one task per image folder in ``names``, in order, in ``setting``.

    Task ``i`` is folder ``names[i]`` (see :func:`load_image_folder`), named after it, with its
    train, val and test images. ``task``: head ``i``, the folder's own labels; ``domain``: head 0,
    the folder's own labels, which needs every folder to have the same number of classes;
    ``class``: head 0 over all folders' classes, folder ``i``'s labels shifted by the class
    counts of the folders before it. The scenario is named ``folders-<name1>-<name2>-...``.

    Raises:
        ConfigError: unknown ``setting``; no names or a name twice; folders with different
            class counts in the ``domain`` setting.
        DataError: as :func:`load_image_folder`.
    """
    checked = _check_setting(setting)
    if not names:
        raise ConfigError("an image-folder scenario needs at least one folder name")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ConfigError(
            f"each image folder can be one task only, but {repeated[0]!r} is repeated"
        )
    folders = [
        load_image_folder(
            root,
            name,
            preprocessing,
            augment=augment,
            validation_fraction=validation_fraction,
            seed=seed,
        )
        for name in names
    ]
    parts = [TaskData(f.name, f.n_classes, f.train, f.test, f.val) for f in folders]
    tasks = sequence_tasks(parts, checked, "folders")
    return Scenario("folders-" + "-".join(names), checked, tasks)
