"""The training budget and hardware of a run: optimizer, schedule, model selection, device, precision."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from memaware.errors import ConfigError

Optimizer = Literal["adam", "sgd"]
OPTIMIZERS: tuple[Optimizer, ...] = ("adam", "sgd")
Schedule = Literal["constant", "step", "cosine"]
SCHEDULES: tuple[Schedule, ...] = ("constant", "step", "cosine")
Precision = Literal["none", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("none", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda", "mps")
#: seed of the validation split that ``select_best_epoch`` carves (fixed, as ``memaware sweep``'s)
VALIDATION_SEED = 0


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def resolve_device(name: str) -> torch.device:
    """The ``torch.device`` a device option names; ``auto`` is CUDA, else MPS, else the CPU.

    Raises:
        ConfigError: an unknown name, or an accelerator this machine does not have.
    """
    kind = name.split(":", 1)[0]
    if kind not in DEVICES or (kind in ("auto", "cpu") and ":" in name):
        raise ConfigError(
            f"unknown device {name!r}; choose one of {', '.join(DEVICES)} (cuda:N for one GPU)"
        )
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: this machine has no CUDA device; use cpu or auto")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: this machine has no MPS device; use cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"bad device {name!r}: {exc}") from None


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
    #: see :func:`~memaware.training.loop.training_step`) does not decay either.
    weight_decay: float = 0.0
    #: the learning rate over the epochs of a task (see :meth:`learning_rate`)
    lr_schedule: Schedule = "constant"
    #: ``step``: the rate is multiplied by ``lr_decay_factor`` every ``lr_decay_epochs`` epochs
    lr_decay_epochs: int | None = None
    lr_decay_factor: float = 0.1
    #: the first task's learning rate and epochs, when they differ from the later tasks'
    first_task_lr: float | None = None
    first_task_epochs: int | None = None
    #: hold out ``validation_fraction`` of each task's training data (stratified, seed
    #: ``VALIDATION_SEED``; a task with a validation split of its own uses that), score the
    #: trained tasks on it after every epoch and end each task with the best epoch's state
    #: (see :func:`~memaware.training.loop.train_task`); the methods see only the rest
    select_best_epoch: bool = False
    validation_fraction: float = 0.1
    #: ``auto``, ``cpu``, ``cuda`` (``cuda:N``) or ``mps``: where the model, the in-memory data
    #: and the importance live (see :func:`resolve_device`)
    device: str = "cpu"
    #: mixed precision of the training forward pass: ``bf16`` or ``fp16`` autocast (fp16 with
    #: a gradient scaler; the methods' gradient terms are added after unscaling), ``none``
    amp: Precision = "none"
    #: clip the global gradient norm (task loss, method terms and penalty) to this, or ``None``
    grad_clip: float | None = None
    #: DataLoader worker processes for data not held in memory (image files); 0: in-process
    workers: int = 0

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
        self._check_schedule()
        if not (_is_number(self.validation_fraction) and 0 < self.validation_fraction < 1):
            raise ConfigError(
                f"validation_fraction must be a number in (0, 1), got {self.validation_fraction!r}"
            )
        resolve_device(self.device)
        if self.amp not in PRECISIONS:
            raise ConfigError(f"unknown amp {self.amp!r}; choose one of {', '.join(PRECISIONS)}")
        if self.grad_clip is not None and not (_is_number(self.grad_clip) and self.grad_clip > 0):
            raise ConfigError(f"grad_clip must be a finite number > 0 or None, got {self.grad_clip!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"workers must be an integer >= 0, got {self.workers!r}")

    def _check_schedule(self) -> None:
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(
                f"unknown lr_schedule {self.lr_schedule!r}; choose one of {', '.join(SCHEDULES)}"
            )
        if (self.lr_schedule == "step") != (self.lr_decay_epochs is not None):
            raise ConfigError(
                "lr_decay_epochs is the period of lr_schedule='step' and only of it: give both "
                f"or neither (got lr_schedule={self.lr_schedule!r}, "
                f"lr_decay_epochs={self.lr_decay_epochs!r})"
            )
        if not (_is_number(self.lr_decay_factor) and 0 < self.lr_decay_factor <= 1):
            raise ConfigError(
                f"lr_decay_factor must be a number in (0, 1], got {self.lr_decay_factor!r}"
            )

    def task_epochs(self, index: int) -> int:
        """Epochs of the ``index``-th task of the stream (0-based)."""
        if index == 0 and self.first_task_epochs is not None:
            return self.first_task_epochs
        return self.epochs

    def learning_rate(self, index: int, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (0-based, within the task) of the ``index``-th task.

        With base = ``first_task_lr`` for the first task when given, else ``lr``, and E the
        task's epochs: ``constant`` base; ``step`` base · lr_decay_factor^⌊epoch / lr_decay_epochs⌋
        (the authors' ``exp_lr_scheduler``); ``cosine`` base · ½(1 + cos(π · epoch / E)).
        """
        base = self.first_task_lr if index == 0 and self.first_task_lr is not None else self.lr
        if self.lr_schedule == "step":
            assert self.lr_decay_epochs is not None
            return base * self.lr_decay_factor ** (epoch // self.lr_decay_epochs)
        if self.lr_schedule == "cosine":
            return base * 0.5 * (1 + math.cos(math.pi * epoch / self.task_epochs(index)))
        return base

    def make_optimizer(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The configured optimizer over ``params``, at learning rate ``lr``."""
        if self.optimizer == "sgd":
            return torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
