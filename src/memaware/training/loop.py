"""The task loop: train each task with a method's loss term, let it consolidate, evaluate every task.

Data stay on tensors; a batch is an index slice of a seeded permutation, so nothing runs per sample
in Python.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from memaware.data.scenarios import Scenario, Task
from memaware.errors import ConfigError
from memaware.methods.base import Batch, Method
from memaware.metrics import AccuracyMatrix
from memaware.models.multihead import MultiHeadClassifier


@dataclass(frozen=True)
class TrainConfig:
    """The training budget, the same for every method of a comparison (Hsu et al.'s protocol by default)."""

    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    eval_batch_size: int = 2048
    #: a fresh Adam per task; ``False`` keeps one optimizer (and its moment estimates) for the
    #: whole stream, as Hsu et al.'s benchmark code does
    reset_optimizer: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError("epochs and batch sizes must be positive")
        if not self.lr > 0:
            raise ConfigError(f"the learning rate must be > 0, got {self.lr}")


@dataclass(frozen=True)
class MethodResult:
    """What one method achieved on one scenario."""

    accuracy: AccuracyMatrix
    wall_time_s: float


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
    model: MultiHeadClassifier, method: Method, optimizer: torch.optim.Optimizer, batch: Batch
) -> None:
    """One optimizer step on ``batch``: cross-entropy + the method's loss term, its gradient hooks."""
    loss = task_loss(model, batch.x, batch.y, batch.heads)
    extra = method.loss_term(model, batch)
    if extra is not None:
        loss = loss + extra
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    method.after_backward(model)
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


def train_task(
    model: MultiHeadClassifier,
    method: Method,
    tasks: Sequence[Task],
    config: TrainConfig,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer,
    progress: Callable[[], None] | None = None,
) -> None:
    """``config.epochs`` epochs of ``optimizer`` on the tasks' data, loss = cross-entropy + the method's term."""
    x, y, heads = _training_set(tasks)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(y), generator=generator)
        for index in torch.split(order, config.batch_size):
            batch = Batch(x[index], y[index], heads if isinstance(heads, int) else heads[index])
            training_step(model, method, optimizer, batch)
        if progress is not None:
            progress()


def run_method(
    method: Method,
    scenario: Scenario,
    make_model: Callable[[], MultiHeadClassifier],
    config: TrainConfig,
    show_progress: bool = False,
    label: str = "",
) -> MethodResult:
    """Learn the scenario's tasks in order with ``method``; return the accuracy matrix.

    ``R[i, j]`` is measured for j ≤ i; entries j > i are NaN (a future task's head does not exist yet).
    The model is built after seeding with ``config.seed``, so methods compared under one seed start
    from the same weights and see batches in the same order.
    """
    if scenario.setting not in method.scenarios:
        raise ConfigError(
            f"method {method.name} does not support the {scenario.setting}-incremental scenario"
        )
    torch.manual_seed(config.seed)
    model = make_model()
    generator = torch.Generator().manual_seed(config.seed)
    n = len(scenario.tasks)
    values = np.full((n, n), np.nan)
    optimizer: torch.optim.Optimizer | None = None
    start = time.perf_counter()
    with tqdm(
        total=n * config.epochs,
        desc=label or method.name,
        unit="epoch",
        disable=not show_progress,
        leave=False,
    ) as bar:
        for i, task in enumerate(scenario.tasks):
            seen = scenario.tasks[: i + 1]
            for t in method.training_tasks(seen):
                model.add_head(t.head, t.n_classes)
                check_model_fits(model, t)
            method.before_task(model, task, seen)
            if optimizer is None or config.reset_optimizer:
                optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
            include_new_parameters(optimizer, model)
            train_task(
                model,
                method,
                method.training_tasks(seen),
                config,
                generator,
                optimizer,
                lambda: bar.update(1),
            )
            method.after_task(model, task, seen)
            for j, old in enumerate(seen):
                values[i, j] = evaluate(model, old, config.eval_batch_size)
    return MethodResult(AccuracyMatrix(values), time.perf_counter() - start)
