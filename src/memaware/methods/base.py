"""The small base class every continual-learning method overrides a few hooks of.

Lifecycle for each task t of a stream (Avalanche's vocabulary)::

    before_task(model, task, seen)
    for each step on training_tasks(seen):
        loss = cross-entropy + loss_term(model, batch);  backward
        after_backward(model)              # gradient-side terms: quadratic penalties
        optimizer step;  after_step(model)
    after_task(model, task, seen)          # consolidation: importance, anchors, merging
    (every task seen so far is evaluated with the model as after_task left it)

A method's running state (importance, anchors, copies of old models, running sums) goes into a
checkpoint through :meth:`Method.state_dict` and comes back through :meth:`Method.load_state_dict`
(:class:`MethodState`: tensors plus JSON values); a method without state keeps the base's (none).

A method's settings are its ``Options`` dataclass (:mod:`memaware.methods.options`), read from
``self.opts``; ``Method(Options(...))`` and ``Method(field=value, ...)`` build the same method. The
``seed`` is the run's: a method with random streams of its own (sampled Fisher labels, a warm-up's
batch order, an autoencoder's initial weights) derives them from it, so that runs under different
seeds differ there too and runs under one seed repeat exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from memaware.data.scenarios import SETTINGS, Setting, Task
from memaware.errors import ConfigError
from memaware.methods.options import MethodOptions, build
from memaware.models.multihead import MultiHeadClassifier
from memaware.penalties import QuadraticPenalty


@dataclass(frozen=True)
class Batch:
    """One training batch: inputs, labels and the head answering each sample.

    ``heads`` is an int when the whole batch belongs to one head (always, except for joint
    training over several task-incremental tasks), else a tensor of head ids per sample.
    """

    x: torch.Tensor
    y: torch.Tensor
    heads: torch.Tensor | int


@dataclass
class MethodState:
    """A method's running state for a checkpoint: tensors by name, the rest JSON-able ``values``.

    :meth:`put` stores a mapping of tensors (parameter name -> tensor) under a prefix and records
    its names, in order, in ``values``; :meth:`take` gives it back. Lists of such mappings (one
    per task) are ``put_list``/``take_list``. A missing entry raises ``KeyError``.
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)

    def put(self, prefix: str, tensors: Mapping[str, torch.Tensor]) -> None:
        self.values[prefix] = list(tensors)
        for name, tensor in tensors.items():
            self.tensors[f"{prefix}/{name}"] = tensor

    def take(self, prefix: str, device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """The mapping :meth:`put` stored under ``prefix`` (moved to ``device`` if given)."""
        return {
            name: self.tensors[f"{prefix}/{name}"].to(device or "cpu")
            for name in self.values[prefix]
        }

    def put_list(self, prefix: str, items: Sequence[Mapping[str, torch.Tensor]]) -> None:
        self.values[prefix] = len(items)
        for k, item in enumerate(items):
            self.put(f"{prefix}/{k}", item)

    def take_list(
        self, prefix: str, device: torch.device | None = None
    ) -> list[dict[str, torch.Tensor]]:
        return [self.take(f"{prefix}/{k}", device) for k in range(int(self.values[prefix]))]


def task_seed(seed: int, task: Task) -> int:
    """The seed of a method's random stream for one task: from the run's seed and the task index."""
    return seed * 1_000_003 + task.index


class Method:
    """Plain training on each task in turn (the hooks do nothing); subclasses add regularisation."""

    name: ClassVar[str] = "base"
    #: the scenarios the method is defined for
    scenarios: ClassVar[tuple[Setting, ...]] = SETTINGS
    #: the dataclass of the method's settings (each method has its own)
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    opts: MethodOptions

    def __init__(
        self, options: MethodOptions | None = None, /, *, seed: int = 0, **fields: Any
    ) -> None:
        """``options`` (an instance of :attr:`Options`; default: its defaults) with ``fields`` replaced.

        ``seed`` (an integer >= 0) seeds the method's own random streams. An unknown field raises
        :class:`ConfigError` naming the options the method takes; so does an invalid value.
        """
        if options is not None and type(options) is not self.Options:
            raise TypeError(
                f"{self.name} takes its options as {self.Options.__name__} or as keywords, "
                f"got {options!r}"
            )
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"{self.name}: the seed must be an integer >= 0, got {seed!r}")
        self.opts = build(self.Options, fields, options)
        self.seed = seed

    def before_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        """Called before training ``task``; ``seen`` are the tasks of the stream so far, ``task`` last."""

    def training_tasks(self, seen: Sequence[Task]) -> Sequence[Task]:
        """The tasks whose training data are used now (default: the current one only)."""
        return seen[-1:]

    def loss_term(self, model: MultiHeadClassifier, batch: Batch) -> torch.Tensor | None:
        """A term added to the task loss at every training step (``None`` for no term).

        A mean over the batch's rows, like the cross-entropy it is added to: under torchrun each
        rank computes it on its part of the batch, weighted by the part's share of the rows.
        """
        return None

    def loss_heads(self) -> Sequence[int]:
        """The heads of past tasks that :meth:`loss_term` trains now (LwF's distilled heads).

        Under torchrun DDP reduces their gradients with the task's; the other past heads stay
        out of it and still (default: none).
        """
        return ()

    def after_backward(self, model: MultiHeadClassifier) -> None:
        """Called after ``backward()`` of the step's loss, before the optimizer step.

        A term whose gradient is known in closed form is applied here, straight to ``.grad``
        (the quadratic penalties add 2λΩ(θ − θ*) in two fused passes), instead of through
        autograd as a :meth:`loss_term`: the same update, at about half the cost.
        """

    def after_step(self, model: MultiHeadClassifier) -> None:
        """Called after every optimizer step (parameters updated, gradients still in ``.grad``)."""

    def after_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        """Called once ``task`` is learned, before evaluation."""

    def options(self) -> dict[str, object]:
        """The method's settings (the fields of :attr:`opts`), for the report."""
        return dataclasses.asdict(self.opts)

    def state_dict(self) -> MethodState:
        """Everything the method has learned or accumulated so far, for a checkpoint (base: none).

        Taken between training steps or after a task's evaluation; what is rebuilt from the
        options (a file named there) or only lives within one step need not be in it.
        """
        return MethodState()

    def load_state_dict(self, model: MultiHeadClassifier, state: MethodState) -> None:
        """Take back :meth:`state_dict`'s state, for ``model`` (the run's model, restored to the
        same point: its heads and weights), instead of the hooks that built it."""


class Penalised(Method):
    """A method that anchors the parameters with a :class:`QuadraticPenalty` once a task ends.

    ``penalty`` is ``None`` until then; :meth:`after_backward` adds its gradient to ``.grad``.
    """

    penalty: QuadraticPenalty | None = None

    def after_backward(self, model: MultiHeadClassifier) -> None:
        if self.penalty is not None:
            self.penalty.add_to_grad()

    def state_dict(self) -> MethodState:
        """The base's, and the penalty's λ, Ω and θ* (``penalty/omega``, ``penalty/anchor``)."""
        state = super().state_dict()
        if self.penalty is not None:
            state.values["penalty_strength"] = self.penalty.strength
            state.put("penalty/omega", self.penalty.omegas)
            state.put("penalty/anchor", self.penalty.anchors)
        return state

    def load_state_dict(self, model: MultiHeadClassifier, state: MethodState) -> None:
        super().load_state_dict(model, state)
        self.penalty = None
        if "penalty_strength" in state.values:
            self.penalty = QuadraticPenalty(
                model,
                state.take("penalty/omega"),
                float(state.values["penalty_strength"]),
                anchors=state.take("penalty/anchor"),
            )
