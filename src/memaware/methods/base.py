"""The small base class every continual-learning method overrides a few hooks of.

Lifecycle for each task t of a stream (Avalanche's vocabulary):
``before_task`` → training on ``training_tasks(...)`` with ``loss_term`` added to the task loss →
``after_task`` (consolidation: importance, anchors, merging).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from memaware.data.scenarios import SETTINGS, Setting, Task
from memaware.models.multihead import MultiHeadClassifier


class Method:
    """Plain training on each task in turn (the hooks do nothing); subclasses add regularisation."""

    name: ClassVar[str] = "base"
    #: the scenarios the method is defined for
    scenarios: ClassVar[tuple[Setting, ...]] = SETTINGS

    def before_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        """Called before training ``task``; ``seen`` are the tasks of the stream so far, ``task`` last."""

    def training_tasks(self, seen: Sequence[Task]) -> Sequence[Task]:
        """The tasks whose training data are used now (default: the current one only)."""
        return seen[-1:]

    def loss_term(self, model: MultiHeadClassifier) -> torch.Tensor | None:
        """A term added to the task loss at every training step (``None`` for no term)."""
        return None

    def after_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        """Called once ``task`` is learned, before evaluation."""

    def options(self) -> dict[str, object]:
        """The method's settings, for the report."""
        return {}
