"""The datasets a task holds, and the one way batches are drawn from them.

Every dataset of a task is a ``torch.utils.data.Dataset`` of ``(input, label)`` pairs that also
exposes all of its labels as one int64 tensor, ``labels`` (so splits, label shifts and class
counts never load an input). Two kinds exist:

* :class:`TensorData`: inputs and labels held as whole tensors (data that fit in memory, e.g.
  MNIST or CIFAR). :func:`batches` draws its batches as index slices of a seeded permutation,
  with no per-sample Python and no DataLoader.
* anything else (e.g. image files on disk, :class:`Selection` of them): batches come from a
  ``torch.utils.data.DataLoader`` with workers, pinned memory and persistent workers as
  :class:`LoaderOptions` says, shuffled by a seeded generator so that runs repeat.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from memaware.errors import ConfigError

__all__ = [
    "LabelledData",
    "LoaderOptions",
    "Selection",
    "TensorData",
    "WithHead",
    "batches",
    "batches_with_heads",
    "concat",
    "relabelled",
    "select",
]


@runtime_checkable
class LabelledData(Protocol):
    """A map-style dataset of ``(input, label)`` pairs whose labels are known up front."""

    @property
    def labels(self) -> torch.Tensor: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class TensorData(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Inputs ``x`` (N, ...) and labels ``y`` (N,) held as whole tensors (in memory, on any device)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise ConfigError(f"{len(x)} inputs but {len(y)} labels")
        self.x = x
        self.y = y

    @property
    def labels(self) -> torch.Tensor:
        return self.y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    def to(self, device: torch.device | str) -> TensorData:
        """The same data on ``device`` (itself when already there)."""
        if self.x.device == torch.device(device) and self.y.device == torch.device(device):
            return self
        return TensorData(self.x.to(device), self.y.to(device))


class Selection(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Rows ``indices`` of ``base``, answered with ``labels`` (default: the base's own labels)."""

    def __init__(
        self, base: LabelledData, indices: torch.Tensor, labels: torch.Tensor | None = None
    ) -> None:
        self.base = base
        self.indices = indices.to(torch.int64).cpu()
        self._labels = base.labels[self.indices] if labels is None else labels
        if len(self._labels) != len(self.indices):
            raise ConfigError(f"{len(self.indices)} rows but {len(self._labels)} labels")

    @property
    def labels(self) -> torch.Tensor:
        return self._labels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = self.base[int(self.indices[index])]
        return x, self._labels[index]


def select(
    data: LabelledData, indices: torch.Tensor, labels: torch.Tensor | None = None
) -> LabelledData:
    """Rows ``indices`` of ``data`` with ``labels`` (default: their own), of the same kind when in memory."""
    if isinstance(data, TensorData):
        index = indices.to(data.x.device)
        return TensorData(data.x[index], data.y[index] if labels is None else labels)
    return Selection(data, indices, labels)


def relabelled(data: LabelledData, labels: torch.Tensor) -> LabelledData:
    """All rows of ``data``, answered with ``labels``."""
    if isinstance(data, TensorData):
        return TensorData(data.x, labels)
    return Selection(data, torch.arange(len(data)), labels)


class WithHead(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """``(input, label, head)`` triples: ``data`` answered by head ``head`` (joint training)."""

    def __init__(self, data: LabelledData, head: int) -> None:
        self.data = data
        self.head = head

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        x, y = self.data[index]
        return x, y, self.head


def concat(parts: Sequence[LabelledData]) -> LabelledData:
    """The rows of ``parts`` one after another (tensors concatenated when all are in memory)."""
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, TensorData) for p in parts):
        tensors = [p for p in parts if isinstance(p, TensorData)]
        return TensorData(torch.cat([p.x for p in tensors]), torch.cat([p.y for p in tensors]))
    return _Concat(parts)


class _Concat(ConcatDataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, parts: Sequence[LabelledData]) -> None:
        super().__init__(parts)  # type: ignore[arg-type]
        self._labels = torch.cat([p.labels for p in parts])

    @property
    def labels(self) -> torch.Tensor:
        return self._labels


@dataclass(frozen=True)
class LoaderOptions:
    """How a ``DataLoader`` reads data that are not in memory (PyTorch's own options).

    ``workers`` processes decode inputs (0: in the main process); ``pin_memory`` page-locks
    batches for asynchronous copies to an accelerator; ``persistent_workers`` keeps the
    workers alive between epochs.
    """

    workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"workers must be an integer >= 0, got {self.workers!r}")


def batches(
    data: LabelledData,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    loader: LoaderOptions = LoaderOptions(),
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches of ``data`` on ``device`` (default: where the data are).

    :class:`TensorData`: slices of ``torch.randperm(len, generator)`` (shuffled) or of the rows
    in order, indexing the whole tensors. Other datasets: a ``DataLoader`` whose shuffling and
    workers' seeds come from ``generator``, copied to ``device`` without blocking.
    """
    if shuffle and generator is None:
        raise ConfigError("shuffled batches need a seeded generator")
    if isinstance(data, TensorData):
        if device is not None:
            data = data.to(device)
        if shuffle:
            assert generator is not None
            order = torch.randperm(len(data), generator=generator).to(data.x.device)
            for index in torch.split(order, batch_size):
                yield data.x[index], data.y[index]
        else:
            yield from zip(
                torch.split(data.x, batch_size), torch.split(data.y, batch_size), strict=True
            )
        return
    for x, y in _loader(data, batch_size, shuffle, generator, device, loader):
        yield x, y


def _loader(
    data: Dataset[tuple[torch.Tensor, ...]] | LabelledData,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None,
    device: torch.device | str | None,
    loader: LoaderOptions,
) -> Iterator[list[torch.Tensor]]:
    target = torch.device(device) if device is not None else torch.device("cpu")
    seed_source = None
    if generator is not None:
        # A generator of the loader's own, seeded from the caller's: shuffling and the workers'
        # seeds repeat with the run's seed, whatever device the caller's generator lives on.
        seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
        seed_source = torch.Generator().manual_seed(seed)
    for batch in DataLoader(
        data,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=shuffle,
        generator=seed_source,
        num_workers=loader.workers,
        pin_memory=loader.pin_memory and target.type != "cpu",
        persistent_workers=loader.persistent_workers and loader.workers > 0,
    ):
        yield [item.to(target, non_blocking=True) for item in batch]


def batches_with_heads(
    data: Sequence[tuple[LabelledData, int]],
    batch_size: int,
    *,
    generator: torch.Generator,
    device: torch.device | str | None = None,
    loader: LoaderOptions = LoaderOptions(),
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Shuffled ``(x, y, heads)`` batches over several datasets, each answered by its own head."""
    if all(isinstance(d, TensorData) for d, _ in data):
        merged = concat([d for d, _ in data])
        assert isinstance(merged, TensorData)
        if device is not None:
            merged = merged.to(device)
        heads = torch.cat([torch.full((len(d),), h, device=merged.x.device) for d, h in data])
        order = torch.randperm(len(merged), generator=generator).to(merged.x.device)
        for index in torch.split(order, batch_size):
            yield merged.x[index], merged.y[index], heads[index]
        return
    parts = ConcatDataset([WithHead(d, h) for d, h in data])
    for x, y, heads in _loader(parts, batch_size, True, generator, device, loader):
        yield x, y, heads
