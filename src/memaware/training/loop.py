"""The task loop: train each task with a method's loss term, let it consolidate, evaluate every task.

Batches come from :func:`memaware.data.datasets.batches`: data held in memory stay on tensors on
the run's device and a batch is an index slice of a seeded permutation, so nothing runs per sample
in Python; other datasets (image files) go through a seeded ``DataLoader``. The heads of past
tasks that a step's loss does not reach are never stepped (see :func:`training_step`), and the
task just trained is scored before the method's ``after_task`` too, so that drop and forgetting
are measured against the model trained on it (IMM merges there).

With ``checkpoints`` (:class:`~memaware.checkpoint.RunCheckpoints`) the run is checkpointed after
every task and every N steps, and resumed from its newest good checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from memaware.data.datasets import (
    IN_PROCESS,
    Batches,
    LoaderOptions,
    batches,
    concat,
    for_evaluation,
)
from memaware.data.scenarios import Scenario, Task, validation_splits
from memaware.distributed import broadcast_from_main, shard_batches, sum_over_ranks
from memaware.distributed.ddp import StepLoss, distributed_step_loss
from memaware.errors import ConfigError
from memaware.methods.base import Batch, Method
from memaware.metrics import AccuracyMatrix
from memaware.models.multihead import MultiHeadClassifier
from memaware.training.config import VALIDATION_SEED, TrainConfig, resolve_device
from memaware.training.precision import MixedPrecision

if TYPE_CHECKING:
    from memaware.checkpoint.run import RunCheckpoints, TaskStart


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
    x, _ = next(batches(for_evaluation(task.train), 2, device=model.device))
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


def step_loss(method: Method) -> StepLoss:
    """A batch's loss under ``method``: :func:`task_loss` plus ``method.loss_term`` (if any)."""

    def loss(model: MultiHeadClassifier, batch: Batch) -> torch.Tensor:
        value = task_loss(model, batch.x, batch.y, batch.heads)
        extra = method.loss_term(model, batch)
        return value if extra is None else value + extra

    return loss


@torch.no_grad()
def evaluate(
    model: MultiHeadClassifier,
    task: Task,
    batch_size: int = 2048,
    loader: LoaderOptions = IN_PROCESS,
) -> float:
    """Accuracy on the task's test set, answered by the task's head (fraction in [0, 1]).

    Under a process group each rank scores its batches (:func:`~memaware.distributed.shard_batches`)
    and the counts of correct answers are summed over the ranks: the same accuracy on every rank.
    """
    model.eval()
    device = model.device
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for x, y in shard_batches(batches(task.test, batch_size, device=device, loader=loader)):
        correct += (model(x, task.head).argmax(-1) == y).sum()
    return int(sum_over_ranks(correct)) / len(task.test)


def training_step(
    model: MultiHeadClassifier,
    method: Method,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    past_heads: Sequence[torch.nn.Parameter] = (),
    *,
    precision: MixedPrecision | None = None,
    grad_clip: float | None = None,
    loss_fn: StepLoss | None = None,
) -> None:
    """One optimizer step on ``batch``: cross-entropy + the method's loss term, its gradient hooks.

    ``past_heads`` are the parameters of the heads the step does not train. One that the loss does
    not reach (its ``.grad`` is ``None`` after ``backward``) leaves the step with ``.grad = None``
    whatever ``after_backward`` wrote there (a quadratic penalty writes 2λΩ(θ − θ*) = 0), and
    PyTorch's optimizers skip such parameters entirely: no Adam moments, momentum or weight
    decay moves them, so the head stays bit-identical. A past head the loss does reach (LwF's
    distillation trains the old heads) is stepped as usual.

    With ``precision`` the forward pass runs under autocast and, for fp16, the loss is scaled;
    the gradients are unscaled before ``after_backward`` adds the method's gradient terms, and
    ``grad_clip`` then bounds the global norm of the whole gradient. ``loss_fn`` computes the
    loss, by default :func:`step_loss` of ``method`` (under torchrun,
    :mod:`memaware.distributed.ddp`'s, whose ``backward`` all-reduces the gradients before
    ``after_backward`` sees them).
    """
    loss_of = step_loss(method) if loss_fn is None else loss_fn
    with precision.autocast() if precision is not None else contextlib.nullcontext():
        loss = loss_of(model, batch)
    optimizer.zero_grad(set_to_none=True)
    if precision is None:
        loss.backward()  # type: ignore[no-untyped-call]
    else:
        precision.backward(loss)
        precision.unscale(optimizer)
    unreached = [p for p in past_heads if p.grad is None]
    method.after_backward(model)
    for param in unreached:
        param.grad = None
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    if precision is None:
        optimizer.step()
    else:
        precision.step(optimizer)
    method.after_step(model)


def training_batches(
    tasks: Sequence[Task], config: TrainConfig, generator: torch.Generator, device: torch.device
) -> _TrainingBatches:
    """Shuffled training batches over the tasks' training data on ``device``; each pass an epoch.

    Several tasks (joint training) are shuffled together, each sample answered by its task's
    head (one head id for the whole batch when all tasks share one head).
    """
    data = concat([t.train for t in tasks])
    head_ids = {t.head for t in tasks}
    heads = (
        None
        if len(head_ids) == 1
        else torch.cat([torch.full((len(t.train),), t.head) for t in tasks])
    )
    passes = Batches(
        data,
        config.batch_size,
        heads=heads,
        shuffle=True,
        generator=generator,
        device=device,
        loader=_loader_options(config, device),
    )
    return _TrainingBatches(passes, tasks[0].head if heads is None else None)


class _TrainingBatches:
    """:class:`Batch` es of one pass of ``passes`` per ``iter()``; ``head`` for all, or per row."""

    def __init__(self, passes: Batches, head: int | None) -> None:
        self.passes = passes
        self.head = head

    def __iter__(self) -> Iterator[Batch]:
        for fields in self.passes:
            yield Batch(fields[0], fields[1], fields[2] if self.head is None else self.head)


def _loader_options(config: TrainConfig, device: torch.device) -> LoaderOptions:
    return LoaderOptions(workers=config.workers, pin_memory=device.type != "cpu")


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
    return [p for _, p in model.named_parameters_of_heads_besides({t.head for t in tasks})]


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate to ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def _accuracy_in_passing(
    model: MultiHeadClassifier, tasks: Sequence[Task], batch_size: int, loader: LoaderOptions
) -> float:
    """Mean test accuracy of ``tasks``, with the model put back in the mode it was in.

    Training goes on after this evaluation, and ``after_task`` must see the model in the mode it
    would see without it.
    """
    training = model.training
    accuracy = sum(evaluate(model, t, batch_size, loader) for t in tasks) / len(tasks)
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
    precision: MixedPrecision | None = None,
    checkpoints: RunCheckpoints | None = None,
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

    With ``checkpoints`` the task may begin mid-way (resumed), and a checkpoint is saved when
    the step count reaches the next due one: one integer comparison per step.
    """
    device = model.device
    loader = _loader_options(config, device)
    past_heads = past_head_parameters(model, tasks)
    loss_fn = distributed_step_loss(
        model, {t.head for t in tasks}, step_loss(method), method.loss_heads()
    )
    epochs = training_batches(tasks, config, generator, device)
    begun: TaskStart | None = None
    if checkpoints is not None:
        begun = checkpoints.begin_task(index, optimizer, epochs.passes)
    scores: list[float] = [] if begun is None else begun.scores
    best: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
    first_epoch, step, due = (0, 0, -1)
    if begun is not None:
        best, first_epoch, step, due = begun.best, begun.epoch, begun.step, begun.due
    model.train()
    for epoch in range(first_epoch, config.task_epochs(index)):
        set_learning_rate(optimizer, config.learning_rate(index, epoch))
        if checkpoints is not None:
            checkpoints.begin_epoch(epoch, step)
        for batch in epochs:
            training_step(
                model,
                method,
                optimizer,
                batch,
                past_heads,
                precision=precision,
                grad_clip=config.grad_clip,
                loss_fn=loss_fn,
            )
            step += 1
            if step == due and checkpoints is not None:
                due = checkpoints.save_step(step, best)
        if validation:
            scores.append(_accuracy_in_passing(model, validation, config.eval_batch_size, loader))
            if best is None or scores[-1] > max(scores[:-1]):
                best = (
                    {k: v.detach().clone() for k, v in model.state_dict().items()},
                    copy.deepcopy(optimizer.state_dict()),
                )
        if progress is not None:
            progress()
    if checkpoints is not None:
        checkpoints.end_task(step)
    if best is not None:
        model.load_state_dict(best[0])
        optimizer.load_state_dict(best[1])
    broadcast_from_main(model)  # under torchrun: rank 0's BatchNorm statistics on every rank
    return scores


def run_method(
    method: Method,
    scenario: Scenario,
    make_model: Callable[[], MultiHeadClassifier],
    config: TrainConfig,
    show_progress: bool = False,
    label: str = "",
    checkpoints: RunCheckpoints | None = None,
) -> MethodResult:
    """Learn the scenario's tasks in order with ``method``; return the accuracy matrix.

    ``R[i, j]`` is measured for j ≤ i with the model as ``after_task`` of task i leaves it;
    entries j > i are NaN (a future task's head does not exist yet). Before ``after_task``, the
    task just trained is evaluated alone: ``accuracy.trained[i]`` (equal to ``R[i, i]`` unless
    ``after_task`` changes the weights, as IMM's merge does), the reference of drop, BWT and
    forgetting. The model is built after seeding with ``config.seed``, so methods compared under
    one seed start from the same weights and see batches in the same order.

    With ``checkpoints`` the run is checkpointed (after every task, and every N steps) and, when
    they say so, resumed from the newest good checkpoint: a finished run returns its saved
    result without training.
    """
    if scenario.setting not in method.scenarios:
        raise ConfigError(
            f"method {method.name} does not support the {scenario.setting}-incremental scenario"
        )
    device = resolve_device(config.device)
    loader = _loader_options(config, device)
    precision = MixedPrecision(config.amp, device) if config.amp != "none" else None
    torch.manual_seed(config.seed)
    model = make_model().to(device)
    generator = torch.Generator().manual_seed(config.seed)
    scenario = scenario.to(device)
    stream = scenario.tasks
    validation_of: dict[int, Task] = {}  # id of a task's training view -> its validation view
    if config.select_best_epoch:
        views = validation_splits(scenario, config.validation_fraction, seed=VALIDATION_SEED)
        stream = tuple(training for training, _ in views)
        validation_of = {id(training): held for training, held in views}
    n = len(stream)
    values = np.full((n, n), np.nan)
    trained = np.full(n, np.nan)
    scores: list[tuple[float, ...]] = []
    optimizer: torch.optim.Optimizer | None = None
    start = time.perf_counter()
    resumed = None
    if checkpoints is not None:
        resumed = checkpoints.start(model, generator, config, precision, values, trained, scores)
    if resumed is not None:
        if resumed.finished:
            return MethodResult(AccuracyMatrix(values, trained), resumed.wall_time_s, tuple(scores))
        optimizer, start = resumed.optimizer, start - resumed.wall_time_s
    first = resumed.task if resumed is not None else 0
    mid_task = resumed is not None and resumed.in_task
    with tqdm(
        total=sum(config.task_epochs(i) for i in range(n)),
        initial=resumed.epochs_done if resumed is not None else 0,
        desc=label or method.name,
        unit="epoch",
        disable=not show_progress,
        leave=False,
    ) as bar:
        for i in range(first, n):
            task, seen = stream[i], stream[: i + 1]
            training = method.training_tasks(seen)
            if i > first or not mid_task:
                for t in training:
                    model.add_head(t.head, t.n_classes)
                    check_model_fits(model, t)
                method.before_task(model, task, seen)
                if optimizer is None or config.reset_optimizer:
                    optimizer = config.make_optimizer(model.parameters())
                include_new_parameters(optimizer, model)
            assert optimizer is not None
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
                precision=precision,
                checkpoints=checkpoints,
            )
            scores.append(tuple(history))
            trained[i] = _accuracy_in_passing(model, [task], config.eval_batch_size, loader)
            method.after_task(model, task, seen)
            for j, old in enumerate(seen):
                values[i, j] = evaluate(model, old, config.eval_batch_size, loader)
            if checkpoints is not None:
                checkpoints.save_task(i, optimizer)
    return MethodResult(AccuracyMatrix(values, trained), time.perf_counter() - start, tuple(scores))
