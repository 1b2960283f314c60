"""A scenario's tasks as one stream of small batches, with sharp or blurred boundaries.

Each task's training samples are shuffled (seeded) and given nominal positions one after
another: task t fills [c_t, c_{t+1}) with c_t = n_0 + … + n_{t−1}, and c_{t+1} is the *true
boundary* between task t and task t+1.

* ``sharp``: the stream is the samples in their nominal order, cut into batches of each task
  separately, so that every batch holds one task and a boundary falls between two batches (a
  task's last batch may be smaller).
* ``blurred``: every nominal position gets its own uniform noise in [−w/2, w/2] and the stream
  is the samples sorted by their noisy positions, cut into equal batches. Around a boundary c the
  share of the next task's samples then rises linearly from 0 at c − w/2 to 1 at c + w/2 (a step
  convolved with a uniform kernel), and every sample still appears exactly once (one pass). The
  window is ``w = blur · min_t n_t``, so for ``blur ≤ 1`` the windows of two boundaries never
  overlap. The true boundary is the batch edge nearest c_{t+1}, the middle of its window.

The stream carries inputs and labels only; which task a sample came from (:attr:`Stream.tasks`)
is for the runner's bookkeeping (evaluation at the true boundaries, the data a boundary-aware
method is given there), never shown to a task-free method.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from memaware.data.datasets import TensorData
from memaware.data.scenarios import Scenario
from memaware.errors import ConfigError

Boundaries = Literal["sharp", "blurred"]
BOUNDARIES: tuple[Boundaries, ...] = ("sharp", "blurred")
#: the window of a blurred boundary, as a share of the smallest task (see the module doc)
DEFAULT_BLUR = 0.3


@dataclass(frozen=True)
class Stream:
    """The training samples of a scenario in stream order, cut into batches.

    ``x``, ``y``: inputs and labels in stream order; ``tasks[k]``, ``rows[k]``: the task sample
    k came from and its row in that task's training data; ``edges``: the sample offsets of the
    batches (batch b is samples ``edges[b]:edges[b+1]``); ``boundaries[t]``: the number of
    batches after which task t ends (its true boundary; the last is the stream's end);
    ``windows[t]``: the sample positions (start, end) over which task t+1 mixes in after task t
    (of width 0 for sharp boundaries; the last task's is the stream's end); ``blur``: the
    window's width as a share of the smallest task (0 for sharp boundaries).
    """

    x: torch.Tensor
    y: torch.Tensor
    tasks: torch.Tensor
    rows: torch.Tensor
    edges: tuple[int, ...]
    boundaries: tuple[int, ...]
    windows: tuple[tuple[float, float], ...]
    kind: Boundaries
    blur: float

    @property
    def n_batches(self) -> int:
        return len(self.edges) - 1

    @property
    def n_samples(self) -> int:
        return len(self.y)

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches ``(x, y)`` in stream order (views, no copy)."""
        for start, end in zip(self.edges[:-1], self.edges[1:], strict=True):
            yield self.x[start:end], self.y[start:end]

    def samples_seen(self, batches: int) -> int:
        """How many samples the first ``batches`` batches hold."""
        return self.edges[batches]

    def seen_rows(self, task: int, batches: int) -> torch.Tensor:
        """The rows of ``task``'s training data among the first ``batches`` batches."""
        end = self.edges[batches]
        mask = self.tasks[:end] == task
        return self.rows[:end][mask]

    def mixing(self, batches: int) -> torch.Tensor:
        """How many samples of each task the first ``batches`` batches hold (one count per task)."""
        n_tasks = len(self.boundaries)
        return torch.bincount(self.tasks[: self.edges[batches]].cpu(), minlength=n_tasks)


def _train_tensors(scenario: Scenario) -> list[TensorData]:
    parts = []
    for task in scenario.tasks:
        if not isinstance(task.train, TensorData):
            raise ConfigError(
                f"a stream needs its tasks' training data in memory; task {task.name}'s are a "
                f"{type(task.train).__name__} (image files), which the stream does not read"
            )
        parts.append(task.train)
    return parts


def make_stream(
    scenario: Scenario,
    batch_size: int,
    boundaries: str = "sharp",
    *,
    blur: float = DEFAULT_BLUR,
    seed: int = 0,
) -> Stream:
    """The scenario's training samples as one stream (see the module doc), seeded by ``seed``.

    ``blur`` (in (0, 1]) is the window of a blurred boundary as a share of the smallest task;
    it is not used for sharp boundaries.
    """
    if boundaries not in BOUNDARIES:
        raise ConfigError(
            f"unknown boundaries {boundaries!r}; choose one of {', '.join(BOUNDARIES)}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"the stream's batch size must be an integer >= 1, got {batch_size!r}")
    if not 0 < blur <= 1:
        raise ConfigError(f"blur must be in (0, 1] (a share of the smallest task), got {blur!r}")
    if not scenario.tasks:
        raise ConfigError("a stream needs at least one task")
    parts = _train_tensors(scenario)
    sizes = [len(part) for part in parts]
    if min(sizes) < batch_size:
        raise ConfigError(
            f"every task needs at least one batch of samples ({batch_size}); the smallest has "
            f"{min(sizes)}"
        )
    generator = torch.Generator().manual_seed(seed)
    tasks = torch.cat([torch.full((n,), t, dtype=torch.int64) for t, n in enumerate(sizes)])
    rows = torch.cat([torch.randperm(n, generator=generator) for n in sizes])
    starts = [sum(sizes[:t]) for t in range(len(sizes) + 1)]
    width = 0.0
    if boundaries == "sharp":
        order = torch.arange(len(tasks))
        edges = [e for t in range(len(sizes)) for e in range(starts[t], starts[t + 1], batch_size)]
        edges.append(starts[-1])
        ends = tuple(edges.index(starts[t + 1]) for t in range(len(sizes)))
    else:
        width = blur * min(sizes)
        noisy = torch.arange(len(tasks), dtype=torch.float64) + 0.5
        noisy += (torch.rand(len(tasks), generator=generator, dtype=torch.float64) - 0.5) * width
        order = torch.sort(noisy, stable=True).indices
        edges = [*range(0, starts[-1], batch_size), starts[-1]]
        n_batches = len(edges) - 1
        ends = (*(round(starts[t + 1] / batch_size) for t in range(len(sizes) - 1)), n_batches)
    windows = tuple(
        (starts[t + 1] - width / 2, starts[t + 1] + width / 2) for t in range(len(sizes))
    )
    tasks, rows = tasks[order], rows[order]
    device = parts[0].x.device
    x = torch.empty((len(tasks), *parts[0].x.shape[1:]), dtype=parts[0].x.dtype, device=device)
    y = torch.empty(len(tasks), dtype=parts[0].y.dtype, device=device)
    for t, part in enumerate(parts):
        where = (tasks == t).nonzero().squeeze(1)
        x[where.to(device)] = part.x[rows[where].to(device)]
        y[where.to(device)] = part.y[rows[where].to(device)]
    kind: Boundaries = "sharp" if boundaries == "sharp" else "blurred"
    return Stream(x, y, tasks, rows, tuple(edges), ends, windows, kind, blur if width else 0.0)
