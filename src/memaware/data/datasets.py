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

:class:`Batches` is the one way batches are drawn from either kind.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, RandomSampler, Sampler

from memaware.errors import ConfigError

__all__ = [
    "IN_PROCESS",
    "Batches",
    "LabelledData",
    "LoaderOptions",
    "Selection",
    "TensorData",
    "batches",
    "concat",
    "for_evaluation",
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


def for_evaluation(data: LabelledData) -> LabelledData:
    """``data`` as evaluation and importance must see it: without training augmentation.

    A dataset that augments its training inputs offers ``unaugmented()``; a :class:`Selection`
    of one selects the same rows of its unaugmented base.
    """
    if isinstance(data, Selection):
        return Selection(for_evaluation(data.base), data.indices, data.labels)
    unaugmented = getattr(data, "unaugmented", None)
    return unaugmented() if callable(unaugmented) else data


def relabelled(data: LabelledData, labels: torch.Tensor) -> LabelledData:
    """All rows of ``data``, answered with ``labels``."""
    if isinstance(data, TensorData):
        return TensorData(data.x, labels)
    return Selection(data, torch.arange(len(data)), labels)


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


#: in-process loading, PyTorch's defaults otherwise
IN_PROCESS = LoaderOptions()


class Batches:
    """Re-iterable batches of tensors on ``device``: each ``iter()`` is one pass (one epoch).

    ``parts`` are datasets of equal length whose items are concatenated field-wise: one
    labelled dataset gives ``(x, y)``; ``(data, heads)`` with a ``heads`` tensor gives
    ``(x, y, heads)``. When every part is in memory (:class:`TensorData`, or a tensor of
    heads), a pass is ``torch.randperm(N, generator)`` (shuffled) or the rows in order, split
    into index slices; otherwise a ``DataLoader`` built once (so that persistent workers live
    across epochs) whose shuffling and workers' seeds derive from ``generator``.

    A shuffled pass records the state of the generator its order is drawn from as it begins
    (:attr:`pass_state`: ``generator`` in memory, the loader's own otherwise); :meth:`resume_pass`
    makes the next pass draw from such a state and begin some batches in, which is how a
    checkpointed run repeats the rest of an interrupted epoch exactly (the batches skipped are
    never loaded).
    """

    def __init__(
        self,
        data: LabelledData,
        batch_size: int,
        *,
        heads: torch.Tensor | None = None,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        loader: LoaderOptions = IN_PROCESS,
    ) -> None:
        if shuffle and generator is None:
            raise ConfigError("shuffled batches need a seeded generator")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self._tensors: tuple[torch.Tensor, ...] | None = None
        self._loader: DataLoader[Any] | None = None
        self._pass_state: torch.Tensor | None = None
        self._resume: tuple[torch.Tensor, int] | None = None
        if isinstance(data, TensorData):
            moved = data.to(device) if device is not None else data
            self._tensors = (moved.x, moved.y)
            if heads is not None:
                self._tensors += (heads.to(moved.x.device),)
            return
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        source: Dataset[Any] = data if heads is None else _WithHeads(data, heads)  # type: ignore[assignment]
        seed_source = None
        if generator is not None:
            # The loader's own generator, seeded from the caller's: shuffling and the workers'
            # seeds repeat with the run's seed, whatever device the caller's generator is on.
            seed = int(torch.randint(2**62, (), generator=generator, device=generator.device))
            seed_source = torch.Generator().manual_seed(seed)
        sampler = None
        if shuffle:
            assert seed_source is not None
            sampler = _PassSampler(
                RandomSampler(range(len(data)), generator=seed_source), seed_source, self
            )
        self._loader = DataLoader(
            source,
            batch_size=batch_size,
            sampler=sampler,
            generator=seed_source,
            num_workers=loader.workers,
            pin_memory=loader.pin_memory and self.device.type != "cpu",
            persistent_workers=loader.persistent_workers and loader.workers > 0,
        )

    @property
    def pass_state(self) -> torch.Tensor | None:
        """The shuffling generator's state as the current (or last) shuffled pass began (``None``
        before the first one)."""
        return self._pass_state

    def resume_pass(self, state: torch.Tensor, skip: int) -> None:
        """Let the next pass draw its order from generator state ``state`` (a :attr:`pass_state`)
        and begin after its first ``skip`` batches."""
        if not self.shuffle:
            raise ConfigError("only a shuffled pass can be resumed")
        self._resume = (state, skip)

    def _begin_pass(self, generator: torch.Generator) -> int:
        """At a shuffled pass's start: restore or record the generator's state; the batches to skip."""
        skip = 0
        if self._resume is not None:
            (state, skip), self._resume = self._resume, None
            generator.set_state(state)
        self._pass_state = generator.get_state()
        return skip

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if self._tensors is not None:
            first = self._tensors[0]
            if self.shuffle:
                assert self.generator is not None
                skip = self._begin_pass(self.generator)
                order = torch.randperm(len(first), generator=self.generator).to(first.device)
                for index in torch.split(order, self.batch_size)[skip:]:
                    yield tuple(t[index] for t in self._tensors)
            else:
                yield from zip(*(torch.split(t, self.batch_size) for t in self._tensors), strict=True)
            return
        assert self._loader is not None
        for batch in self._loader:
            yield tuple(item.to(self.device, non_blocking=True) for item in batch)


class _PassSampler(Sampler[int]):
    """``sampler``'s indices, each pass begun through :meth:`Batches._begin_pass` (which may skip
    the indices of the batches an interrupted pass already trained on)."""

    def __init__(self, sampler: RandomSampler, generator: torch.Generator, owner: Batches) -> None:
        self.sampler = sampler
        self.generator = generator
        self.owner = owner

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        # Runs when the loader asks for the pass's first index, after its iterator drew the
        # workers' base seed: the pass's order is drawn from the recorded (or restored) state.
        skip = self.owner._begin_pass(self.generator) * self.owner.batch_size
        yield from itertools.islice(iter(self.sampler), skip, None)


class _WithHeads(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """``(input, label, head)`` triples of ``data`` with one head id per row."""

    def __init__(self, data: LabelledData, heads: torch.Tensor) -> None:
        self.data = data
        self.heads = heads.cpu()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = self.data[index]
        return x, y, self.heads[index]


def batches(
    data: LabelledData,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    loader: LoaderOptions = IN_PROCESS,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass of ``(x, y)`` batches of ``data`` on ``device`` (see :class:`Batches`)."""
    passes = Batches(
        data, batch_size, shuffle=shuffle, generator=generator, device=device, loader=loader
    )
    yield from ((fields[0], fields[1]) for fields in passes)
