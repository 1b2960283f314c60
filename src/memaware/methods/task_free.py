"""What methods for a stream without task boundaries share: their hooks, a loss-plateau detector
and a hard buffer (Aljundi, Kelchtermans, Tuytelaars, *Task-Free Continual Learning*, CVPR 2019).

A task-free method is shown one incoming batch at a time and never a task: the stream runner
(:func:`memaware.training.stream.run_stream_method`) calls, for each incoming batch,

    train = method.stream_batch(model, incoming)   # what the passes train on (incoming + replay)
    for each of the stream's passes:
        training_step(model, method, optimizer, train)   # loss_term / after_backward as usual
    method.after_stream_batch(model, incoming)     # True when the method consolidated now

and never ``before_task`` or ``after_task`` (they refuse to run, so that the task loop of
``memaware run`` cannot hand a task-free method boundaries either). Every batch's ``heads`` is
the one shared head, 0: a task-free method works on a shared output (domain- or
class-incremental), as the paper's.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F

from memaware.data.scenarios import Setting, Task
from memaware.errors import ConfigError
from memaware.methods.base import Batch, Penalised
from memaware.models.multihead import MultiHeadClassifier


class TaskFree(Penalised):
    """A method for a stream without boundaries; subclasses override the two stream hooks."""

    #: a shared output: a task-free stream has no task id to pick a head with
    scenarios: ClassVar[tuple[Setting, ...]] = ("domain", "class")
    #: the loss the method watched on the last incoming batch (for the report), if it watches one
    watched: float | None = None

    def stream_batch(self, model: MultiHeadClassifier, incoming: Batch) -> Batch:
        """The batch the passes on ``incoming`` train on (default: ``incoming`` itself)."""
        return incoming

    def after_stream_batch(self, model: MultiHeadClassifier, incoming: Batch) -> bool:
        """Called after the passes on ``incoming``; True when the method consolidated now."""
        return False

    def before_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        raise ConfigError(
            f"{self.name} learns from a stream without task boundaries: run it with "
            "`memaware stream` (memaware.training.stream), not in the task loop"
        )

    def after_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        self.before_task(model, task, seen)


class LossPlateau:
    """The paper's trigger: a window of the last ``length`` losses, its mean μ and variance σ².

    Each loss joins the window (the oldest leaves once it holds ``length``). With the window
    full, when the detector is *armed* and μ < ``mean_threshold`` and σ² < ``variance_threshold``,
    the loss has reached a plateau: :meth:`observe` returns True, the plateau's (μ_p, σ²_p) are
    kept and the detector disarms. It re-arms at the next *peak*: a window with μ > μ_p + σ_p.
    It starts armed, so the first plateau counts. σ² is the window's population variance.
    """

    def __init__(self, length: int, mean_threshold: float, variance_threshold: float) -> None:
        if length < 2:
            raise ConfigError(f"a loss window needs at least 2 losses, got {length}")
        self.length = length
        self.mean_threshold = mean_threshold
        self.variance_threshold = variance_threshold
        self.window: deque[float] = deque(maxlen=length)
        self.armed = True
        self.plateau: tuple[float, float] | None = None

    def statistics(self) -> tuple[float, float]:
        """(μ, σ²) of the window now."""
        mean = math.fsum(self.window) / len(self.window)
        return mean, math.fsum((v - mean) ** 2 for v in self.window) / len(self.window)

    def observe(self, loss: float) -> bool:
        """Add ``loss``; True when the window has just reached a plateau (time to consolidate)."""
        if not math.isfinite(loss):
            raise ConfigError(f"the watched loss is not finite ({loss}): training diverged")
        self.window.append(loss)
        if len(self.window) < self.length:
            return False
        mean, variance = self.statistics()
        if not self.armed and self.plateau is not None:
            last_mean, last_variance = self.plateau
            if mean > last_mean + math.sqrt(last_variance):
                self.armed = True
        if self.armed and mean < self.mean_threshold and variance < self.variance_threshold:
            self.armed = False
            self.plateau = (mean, variance)
            return True
        return False


class HardBuffer:
    """The ``size`` samples of highest loss among the last incoming batch and the buffer itself.

    :meth:`refresh` scores the union of both with the current model (per-sample cross-entropy,
    eval mode, the one shared head) and keeps the ``size`` highest losses (ties: the earlier
    sample, buffer first); ``loss`` holds the kept samples' losses from that scoring.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ConfigError(f"a hard buffer holds at least one sample, got {size}")
        self.size = size
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.y is None else len(self.y)

    def joined(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The buffer's samples followed by ``(x, y)``."""
        if self.x is None or self.y is None:
            return x, y
        return torch.cat([self.x, x]), torch.cat([self.y, y])

    @torch.no_grad()
    def losses(self, model: MultiHeadClassifier, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample cross-entropy of ``(x, y)`` under ``model`` in eval mode (mode restored)."""
        training = model.training
        model.eval()
        try:
            return F.cross_entropy(model(x, 0), y, reduction="none")
        finally:
            model.train(training)

    def refresh(self, model: MultiHeadClassifier, x: torch.Tensor, y: torch.Tensor) -> None:
        """Keep the ``size`` samples of highest loss among the buffer and ``(x, y)``."""
        pool_x, pool_y = self.joined(x, y)
        losses = self.losses(model, pool_x, pool_y)
        keep = torch.sort(losses, descending=True, stable=True).indices[: self.size]
        self.x, self.y, self.loss = pool_x[keep], pool_y[keep], losses[keep]
