"""The task loop: train each task with a method's loss term, let it consolidate, evaluate every task.

Data stay on tensors; a batch is an index slice of a seeded permutation, so nothing runs per sample
in Python. The heads of past tasks that a step's loss does not reach are never stepped (see
:func:`training_step`), and the task just trained is scored before the method's ``after_task``
too, so that drop and forgetting are measured against the model trained on it (IMM merges there).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from memaware.data.scenarios import Scenario, Task, with_validation
from memaware.errors import ConfigError
from memaware.methods.base import Batch, Method
from memaware.metrics import AccuracyMatrix
from memaware.models.multihead import MultiHeadClassifier

Optimizer = Literal["adam", "sgd"]
OPTIMIZERS: tuple[Optimizer, ...] = ("adam", "sgd")
#: seed of the validation split that ``select_best_epoch`` carves (fixed, as ``memaware sweep``'s)
VALIDATION_SEED = 0


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class TrainConfig:
    """The training budget, the same for every method of a comparison (Hsu et al.'s protocol by default).

    The defaults (Adam, lr 10⁻³, 4 epochs of batches of 128, no schedule, no model selection)
    are Hsu et al.'s; the options after ``reset_optimizer`` give the MAS authors' protocol, e.g.
    ``TrainConfig(optimizer="sgd", momentum=0.9, lr=1e-3, epochs=20, first_task_lr=1e-2,
    first_task_epochs=10, batch_size=150, select_best_epoch=True)`` for their Split-MNIST demo.
    """

    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    eval_batch_size: int = 2048
    #: a fresh optimizer per task; ``False`` keeps one optimizer (and its moment estimates) for
    #: the whole stream, as Hsu et al.'s benchmark code does
    reset_optimizer: bool = False
    #: ``"adam"`` (``torch.optim.Adam``, default betas) or ``"sgd"`` (``torch.optim.SGD``)
    optimizer: Optimizer = "adam"
    #: SGD's momentum μ (buffer b ← μ·b + g, started at the first g; the authors use 0.9)
    momentum: float = 0.0
    #: L2 weight decay, PyTorch's: wd·θ is added to each stepped parameter's gradient (for Adam
    #: too, before the moments; not AdamW). A parameter that is not stepped (a past task's head,
    #: see :func:`training_step`) does not decay either.
    weight_decay: float = 0.0
    #: step decay: in epoch e of a task (e = 0, 1, ... counted within the task) the learning rate
    #: is lr · lr_decay_factor^⌊e / lr_decay_epochs⌋, as the authors' ``exp_lr_scheduler``
    lr_decay_epochs: int | None = None
    lr_decay_factor: float = 0.1
    #: the first task's learning rate and epochs, when they differ from the later tasks'
    first_task_lr: float | None = None
    first_task_epochs: int | None = None
    #: hold out ``validation_fraction`` of each task's training data (stratified, seed
    #: ``VALIDATION_SEED``), score the trained tasks on it after every epoch and end each task
    #: with the best epoch's state (see :func:`train_task`); the methods see only the rest
    select_best_epoch: bool = False
    validation_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if not _is_count(getattr(self, name)):
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("lr_decay_epochs", "first_task_epochs"):
            value = getattr(self, name)
            if value is not None and not _is_count(value):
                raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
        for name in ("lr", "first_task_lr"):
            value = getattr(self, name)
            if (value is not None or name == "lr") and not (_is_number(value) and value > 0):
                raise ConfigError(
                    f"the learning rate {name} must be a finite number > 0, got {value!r}"
                )
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        if not (_is_number(self.momentum) and 0 <= self.momentum < 1):
            raise ConfigError(f"momentum must be a number in [0, 1), got {self.momentum!r}")
        if self.momentum > 0 and self.optimizer != "sgd":
            raise ConfigError(
                f"momentum is an option of the sgd optimizer, not of {self.optimizer} "
                f"(Adam's moments use its default betas)"
            )
        if not (_is_number(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(
                f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}"
            )
        if not (_is_number(self.lr_decay_factor) and 0 < self.lr_decay_factor <= 1):
            raise ConfigError(
                f"lr_decay_factor must be a number in (0, 1], got {self.lr_decay_factor!r}"
            )
        if not (_is_number(self.validation_fraction) and 0 < self.validation_fraction < 1):
            raise ConfigError(
                f"validation_fraction must be a number in (0, 1), got {self.validation_fraction!r}"
            )

    def task_epochs(self, index: int) -> int:
        """Epochs of the ``index``-th task of the stream (0-based)."""
        if index == 0 and self.first_task_epochs is not None:
            return self.first_task_epochs
        return self.epochs

    def learning_rate(self, index: int, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (0-based, within the task) of the ``index``-th task.

        base · lr_decay_factor^⌊epoch / lr_decay_epochs⌋, base = ``first_task_lr`` for the first
        task when given, else ``lr``.
        """
        base = self.first_task_lr if index == 0 and self.first_task_lr is not None else self.lr
        if self.lr_decay_epochs is None:
            return base
        return base * self.lr_decay_factor ** (epoch // self.lr_decay_epochs)

    def make_optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The configured optimizer over ``params``, at learning rate ``lr``."""
        if self.optimizer == "sgd":
            return torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class MethodResult:
    """What one method achieved on one scenario.

    ``accuracy.trained`` holds each task's accuracy right after training it, before the method's
    ``after_task``. ``validation_accuracy[i]`` lists, with ``select_best_epoch``, the mean
    validation accuracy of the trained tasks after each epoch of task i (empty tuples without).
    """

    accuracy: AccuracyMatrix
    wall_time_s: float
    validation_accuracy: tuple[tuple[float, ...], ...] = ()


def check_model_fits(model: MultiHeadClassifier, task: Task) -> None:
    """Raise :class:`ConfigError` if ``model`` cannot take the task's inputs or has the wrong output size."""
    x = task.train_x[:2]
    try:
        with torch.no_grad():
            out = model(x, task.head)
    except RuntimeError as exc:
        raise ConfigError(
            f"the model cannot take inputs of shape {tuple(x.shape[1:])} of task {task.name}: {exc}"
        ) from exc
    if out.shape != (len(x), task.n_classes):
        raise ConfigError(
            f"the model outputs shape {tuple(out.shape[1:])} for task {task.name}, "
            f"which has {task.n_classes} classes"
        )


def task_loss(
    model: MultiHeadClassifier, x: torch.Tensor, y: torch.Tensor, heads: torch.Tensor | int
) -> torch.Tensor:
    """Mean cross-entropy, each sample scored by its own task's head."""
    if isinstance(heads, int):
        return F.cross_entropy(model(x, heads), y)
    features = model.backbone(x)
    total = torch.zeros((), device=x.device)
    for head in torch.unique(heads).tolist():
        mask = heads == head
        total = total + F.cross_entropy(
            model.heads[str(head)](features[mask]), y[mask], reduction="sum"
        )
    return total / len(x)


@torch.no_grad()
def evaluate(model: MultiHeadClassifier, task: Task, batch_size: int = 2048) -> float:
    """Accuracy on the task's test set, answered by the task's head (fraction in [0, 1])."""
    model.eval()
    correct = 0
    for x, y in zip(
        torch.split(task.test_x, batch_size), torch.split(task.test_y, batch_size), strict=True
    ):
        correct += int((model(x, task.head).argmax(-1) == y).sum())
    return correct / len(task.test_y)


def training_step(
    model: MultiHeadClassifier,
    method: Method,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    past_heads: Sequence[torch.nn.Parameter] = (),
) -> None:
    """One optimizer step on ``batch``: cross-entropy + the method's loss term, its gradient hooks.

    ``past_heads`` are the parameters of the heads the step does not train. One that the loss does
    not reach (its ``.grad`` is ``None`` after ``backward``) leaves the step with ``.grad = None``
    whatever ``after_backward`` wrote there (a quadratic penalty writes 2λΩ(θ − θ*) = 0), and
    PyTorch's optimizers skip such parameters entirely: no Adam moments, momentum or weight
    decay moves them, so the head stays bit-identical. A past head the loss does reach (LwF's
    distillation trains the old heads) is stepped as usual.
    """
    loss = task_loss(model, batch.x, batch.y, batch.heads)
    extra = method.loss_term(model, batch)
    if extra is not None:
        loss = loss + extra
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    unreached = [p for p in past_heads if p.grad is None]
    method.after_backward(model)
    for param in unreached:
        param.grad = None
    optimizer.step()
    method.after_step(model)


def _training_set(tasks: Sequence[Task]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | int]:
    if len(tasks) == 1:
        return tasks[0].train_x, tasks[0].train_y, tasks[0].head
    heads = torch.cat([torch.full((len(t.train_y),), t.head) for t in tasks])
    x, y = torch.cat([t.train_x for t in tasks]), torch.cat([t.train_y for t in tasks])
    if bool((heads == heads[0]).all()):
        return x, y, int(heads[0])
    return x, y, heads


def include_new_parameters(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    """Add the model's parameters that the optimizer does not hold yet (a new head) as a new group."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    new = [p for p in model.parameters() if id(p) not in held]
    if new:
        optimizer.add_param_group({"params": new})


def past_head_parameters(
    model: MultiHeadClassifier, tasks: Sequence[Task]
) -> list[torch.nn.Parameter]:
    """The parameters of the model's heads that training on ``tasks`` does not train."""
    trained = {str(t.head) for t in tasks}
    return [p for key, head in model.heads.items() if key not in trained for p in head.parameters()]


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate to ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def _accuracy_in_passing(
    model: MultiHeadClassifier, tasks: Sequence[Task], batch_size: int
) -> float:
    """Mean test accuracy of ``tasks``, with the model put back in the mode it was in.

    Training goes on after this evaluation, and ``after_task`` must see the model in the mode it
    would see without it.
    """
    training = model.training
    accuracy = sum(evaluate(model, t, batch_size) for t in tasks) / len(tasks)
    model.train(training)
    return accuracy


def train_task(
    model: MultiHeadClassifier,
    method: Method,
    tasks: Sequence[Task],
    config: TrainConfig,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer,
    progress: Callable[[], None] | None = None,
    *,
    index: int = 0,
    validation: Sequence[Task] = (),
) -> list[float]:
    """Train on the tasks' data, loss = cross-entropy + the method's term; return validation scores.

    ``index`` is the position of the current task in the stream: it runs
    ``config.task_epochs(index)`` epochs, epoch e at ``config.learning_rate(index, e)``. The
    heads not among ``tasks``' are held still (see :func:`training_step`).

    With ``validation`` (one task per task of ``tasks``, whose *test* set is its validation
    split), the mean accuracy over them is measured after every epoch and returned, and the task
    ends with the state after the best epoch (the first of equals): the model's parameters and
    buffers and the optimizer's state are put back as they were then, as if training had stopped
    there (the optimizer's too, so that a kept optimizer goes on with the moments of the weights
    it goes on from). The method's own running state (e.g. SI's path integral, summed over every
    step) is not rewound.
    """
    x, y, heads = _training_set(tasks)
    past_heads = past_head_parameters(model, tasks)
    scores: list[float] = []
    best: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
    model.train()
    for epoch in range(config.task_epochs(index)):
        set_learning_rate(optimizer, config.learning_rate(index, epoch))
        order = torch.randperm(len(y), generator=generator)
        for batch_index in torch.split(order, config.batch_size):
            batch = Batch(
                x[batch_index],
                y[batch_index],
                heads if isinstance(heads, int) else heads[batch_index],
            )
            training_step(model, method, optimizer, batch, past_heads)
        if validation:
            scores.append(_accuracy_in_passing(model, validation, config.eval_batch_size))
            if best is None or scores[-1] > max(scores[:-1]):
                best = (
                    {k: v.detach().clone() for k, v in model.state_dict().items()},
                    copy.deepcopy(optimizer.state_dict()),
                )
        if progress is not None:
            progress()
    if best is not None:
        model.load_state_dict(best[0])
        optimizer.load_state_dict(best[1])
    return scores


def _split_validation(
    scenario: Scenario, fraction: float
) -> tuple[tuple[Task, ...], tuple[Task, ...]]:
    """(training, validation) views of every task: ``fraction`` of its training data held out.

    The training view keeps the task's test set; the validation view's test set is the held-out
    part. The split is :func:`~memaware.data.scenarios.with_validation`'s (stratified, seed
    ``VALIDATION_SEED``), the one ``memaware sweep`` tunes on.
    """
    held = with_validation(scenario, fraction, seed=VALIDATION_SEED).tasks
    training = tuple(
        replace(v, test_x=t.test_x, test_y=t.test_y)
        for v, t in zip(held, scenario.tasks, strict=True)
    )
    return training, held


def run_method(
    method: Method,
    scenario: Scenario,
    make_model: Callable[[], MultiHeadClassifier],
    config: TrainConfig,
    show_progress: bool = False,
    label: str = "",
) -> MethodResult:
    """Learn the scenario's tasks in order with ``method``; return the accuracy matrix.

    ``R[i, j]`` is measured for j ≤ i with the model as ``after_task`` of task i leaves it;
    entries j > i are NaN (a future task's head does not exist yet). Before ``after_task``, the
    task just trained is evaluated alone: ``accuracy.trained[i]`` (equal to ``R[i, i]`` unless
    ``after_task`` changes the weights, as IMM's merge does), the reference of drop, BWT and
    forgetting. The model is built after seeding with ``config.seed``, so methods compared under
    one seed start from the same weights and see batches in the same order.
    """
    if scenario.setting not in method.scenarios:
        raise ConfigError(
            f"method {method.name} does not support the {scenario.setting}-incremental scenario"
        )
    torch.manual_seed(config.seed)
    model = make_model()
    generator = torch.Generator().manual_seed(config.seed)
    stream = scenario.tasks
    validation_of: dict[int, Task] = {}  # id of a task's training view -> its validation view
    if config.select_best_epoch:
        stream, held_out = _split_validation(scenario, config.validation_fraction)
        validation_of = {id(t): v for t, v in zip(stream, held_out, strict=True)}
    n = len(stream)
    values = np.full((n, n), np.nan)
    trained = np.full(n, np.nan)
    scores: list[tuple[float, ...]] = []
    optimizer: torch.optim.Optimizer | None = None
    start = time.perf_counter()
    with tqdm(
        total=sum(config.task_epochs(i) for i in range(n)),
        desc=label or method.name,
        unit="epoch",
        disable=not show_progress,
        leave=False,
    ) as bar:
        for i, task in enumerate(stream):
            seen = stream[: i + 1]
            training = method.training_tasks(seen)
            for t in training:
                model.add_head(t.head, t.n_classes)
                check_model_fits(model, t)
            method.before_task(model, task, seen)
            if optimizer is None or config.reset_optimizer:
                optimizer = config.make_optimizer(model.parameters())
            include_new_parameters(optimizer, model)
            history = train_task(
                model,
                method,
                training,
                config,
                generator,
                optimizer,
                lambda: bar.update(1),
                index=i,
                validation=[validation_of[id(t)] for t in training] if validation_of else [],
            )
            scores.append(tuple(history))
            trained[i] = _accuracy_in_passing(model, [task], config.eval_batch_size)
            method.after_task(model, task, seen)
            for j, old in enumerate(seen):
                values[i, j] = evaluate(model, old, config.eval_batch_size)
    return MethodResult(AccuracyMatrix(values, trained), time.perf_counter() - start, tuple(scores))
