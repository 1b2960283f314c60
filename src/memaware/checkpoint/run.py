"""Checkpoints of one method under one seed as :func:`~memaware.training.loop.run_method` runs it.

:class:`RunCheckpoints` is the loop's hook: it saves the whole state of the run after every task
and, with ``every`` = N > 0, after every N-th optimizer step (counted over the whole stream), and
puts a run back where its newest good checkpoint left it. A checkpoint (folder layout and checks:
:mod:`memaware.checkpoint.store`) holds

* ``model.safetensors``: the model's ``state_dict`` under its own keys, every head created so far;
* ``optimizer.safetensors``: the tensors of the optimizer's ``state_dict`` (moments, steps); the
  rest of it (the parameter groups with their learning rates, which the schedule sets per epoch)
  and the parameter names of each group are in the manifest;
* ``method.safetensors``: the tensors of the method's
  :meth:`~memaware.methods.base.Method.state_dict` (its other values in the manifest);
* ``rng.safetensors``: torch's global generator (and CUDA's), the run's generator (batch order;
  for data read through a ``DataLoader`` it seeded the loader's generator, which shuffles and
  seeds the workers) and, mid-task, the state the current epoch's order was drawn from;
* ``best.safetensors``, mid-task with ``select_best_epoch`` once an epoch was validated: the
  model and optimizer of the best epoch so far;
* ``manifest.json``: the run's config, the method's name and options, the seed, the model
  (backbone, input shape, heads), the position (task, epoch, batch within the epoch, optimizer
  steps), the accuracy rows so far and each task's accuracy right after training it, the
  validation scores, the wall time so far and the fp16 gradient scaler's state.

Nothing else is random in a run (no NumPy or Python ``random``), so a resumed run computes the
same numbers, bit for bit on the CPU, as one that was never interrupted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memaware.checkpoint import store
from memaware.checkpoint.nested import join, split
from memaware.data.datasets import Batches
from memaware.distributed import is_main_process
from memaware.errors import ConfigError
from memaware.methods.base import Method, MethodState
from memaware.models.multihead import MultiHeadClassifier
from memaware.training.config import TrainConfig
from memaware.training.precision import MixedPrecision

#: the best epoch's model state_dict and optimizer state_dict (``select_best_epoch``)
Snapshot = tuple[dict[str, torch.Tensor], dict[str, Any]]


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples as lists), for comparisons with a manifest."""
    return json.loads(json.dumps(value))


def _outputs(head: torch.nn.Module) -> int:
    assert isinstance(head, torch.nn.Linear)
    return head.out_features


@dataclass(frozen=True)
class CheckpointOptions:
    """Where a run keeps its checkpoints (``OUT/checkpoints``), how often, and whether it resumes.

    ``every``: also checkpoint after every ``every``-th optimizer step (0: after every task only).
    ``resume``: go on from the checkpoints found there; without it, finding any is an error.
    """

    root: Path
    every: int = 0
    resume: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 0:
            raise ConfigError(f"--checkpoint-every must be an integer >= 0, got {self.every!r}")

    def check_fresh(self) -> None:
        """:class:`ConfigError` if a run that does not resume finds checkpoints under ``root``."""
        if not self.resume and any(self.root.glob("*/step-*")):
            raise ConfigError(
                f"{self.root} holds checkpoints of an earlier run: resume it (--resume), "
                "write to another output folder, or delete that folder"
            )

    def for_run(
        self,
        config: Mapping[str, Any],
        input_shape: Sequence[int],
        method: Method,
        seed: int,
    ) -> RunCheckpoints:
        """The checkpoints of ``method`` under ``seed``: ``root/<method>-seed<seed>``."""
        return RunCheckpoints(
            self.root / f"{method.name}-seed{seed}",
            config,
            input_shape,
            method,
            seed,
            every=self.every,
            resume=self.resume,
        )


@dataclass(frozen=True)
class Resumed:
    """Where a resumed run goes on: task ``task`` (``finished``: none left), ``in_task`` if that
    task had begun (its heads, ``before_task`` and optimizer are restored, not redone)."""

    task: int
    in_task: bool
    finished: bool
    optimizer: torch.optim.Optimizer | None
    wall_time_s: float
    epochs_done: int


@dataclass
class TaskStart:
    """Where :func:`~memaware.training.loop.train_task` begins: the epoch, the steps the task has
    taken, its validation scores and best epoch so far, and the step of the next checkpoint
    (-1: none within the task)."""

    epoch: int = 0
    step: int = 0
    scores: list[float] = field(default_factory=list)
    best: Snapshot | None = None
    due: int = -1


@dataclass
class _Run:
    """The running objects a checkpoint is taken from and restored into."""

    model: MultiHeadClassifier
    generator: torch.Generator
    config: TrainConfig
    precision: MixedPrecision | None
    values: np.ndarray
    trained: np.ndarray
    scores: list[tuple[float, ...]]


class RunCheckpoints:
    """Saves and restores the run of ``method`` under ``seed`` in ``folder`` (see the module doc)."""

    def __init__(
        self,
        folder: Path,
        config: Mapping[str, Any],
        input_shape: Sequence[int],
        method: Method,
        seed: int,
        *,
        every: int = 0,
        resume: bool = False,
    ) -> None:
        self.folder = folder
        self.config = _plain(dict(config))
        self.input_shape = [int(n) for n in input_shape]
        self.method = method
        self.seed = seed
        self.every = every
        self.resume = resume
        self._run: _Run | None = None
        self._began = 0.0
        self._step = 0  # optimizer steps before the current task
        self._task = 0
        self._optimizer: torch.optim.Optimizer | None = None
        self._passes: Batches | None = None
        self._scores: list[float] = []
        self._epoch = 0
        self._epoch_start = 0  # the task's steps before the current epoch
        self._skip = 0  # batches of the resumed epoch trained before the checkpoint
        self._pending: tuple[dict[str, Any], dict[str, torch.Tensor], Snapshot | None] | None = None

    # --- the loop's hooks -------------------------------------------------------------------

    def start(
        self,
        model: MultiHeadClassifier,
        generator: torch.Generator,
        config: TrainConfig,
        precision: MixedPrecision | None,
        values: np.ndarray,
        trained: np.ndarray,
        scores: list[tuple[float, ...]],
    ) -> Resumed | None:
        """Bind the run's objects; when resuming, restore them from the newest good checkpoint.

        ``values``, ``trained`` and ``scores`` are filled in place. Returns ``None`` for a run
        that starts from scratch. :class:`ConfigError` for checkpoints found without ``resume``,
        and for a checkpoint of another run (config, method, options, seed or model).
        """
        self._run = _Run(model, generator, config, precision, values, trained, scores)
        self._began = time.perf_counter()
        found = store.latest(self.folder)
        if found is None:
            return None
        if not self.resume:
            raise ConfigError(
                f"{self.folder} holds checkpoints of an earlier run: resume it (--resume), "
                "write to another output folder, or delete that folder"
            )
        self._check(found)
        return self._restore(found)

    def begin_task(
        self, index: int, optimizer: torch.optim.Optimizer, passes: Batches
    ) -> TaskStart:
        """Task ``index`` trains with ``optimizer`` on ``passes``: its start, mid-task if resumed."""
        assert self._run is not None, "start() binds the run first"
        self._task, self._optimizer, self._passes = index, optimizer, passes
        pending, self._pending = self._pending, None
        if pending is None:
            self._scores, self._skip = [], 0
            return TaskStart(scores=self._scores, due=self._due(0))
        position, rng, best = pending
        # the batches were just built (which may draw from the run's generator): put it back
        self._run.generator.set_state(rng["generator"])
        passes.resume_pass(rng["pass"], int(position["epoch_step"]))
        self._scores = [float(s) for s in position["task_validation"]]
        self._skip = int(position["epoch_step"])
        step = int(position["task_step"])
        return TaskStart(int(position["epoch"]), step, self._scores, best, self._due(step))

    def begin_epoch(self, epoch: int, step: int) -> None:
        """Epoch ``epoch`` of the task begins after ``step`` of its steps (a resumed one earlier)."""
        self._epoch, self._epoch_start, self._skip = epoch, step - self._skip, 0

    def save_step(self, step: int, best: Snapshot | None) -> int:
        """Checkpoint after the task's ``step``-th step; the step of the next one."""
        self._save(
            task=self._task,
            in_task=True,
            epoch=self._epoch,
            epoch_step=step - self._epoch_start,
            task_step=step,
            best=best,
        )
        return self._due(step)

    def end_task(self, step: int) -> None:
        """The task's training ended after ``step`` steps."""
        self._step += step

    def save_task(self, index: int, optimizer: torch.optim.Optimizer) -> None:
        """Checkpoint after task ``index`` was trained, consolidated and evaluated."""
        self._optimizer = optimizer
        self._save(task=index + 1, in_task=False, epoch=0, epoch_step=0, task_step=0, best=None)

    # --- saving -----------------------------------------------------------------------------

    def _due(self, task_step: int) -> int:
        if self.every == 0:
            return -1
        done = self._step + task_step
        return (done // self.every + 1) * self.every - self._step

    def _save(
        self,
        *,
        task: int,
        in_task: bool,
        epoch: int,
        epoch_step: int,
        task_step: int,
        best: Snapshot | None,
    ) -> None:
        if not is_main_process():  # under torchrun every rank holds the same state: rank 0 saves
            return
        run, optimizer = self._run, self._optimizer
        assert run is not None and optimizer is not None
        names = {id(p): name for name, p in run.model.named_parameters()}
        optimizer_json, optimizer_tensors = split(optimizer.state_dict())
        method_state = self.method.state_dict()
        rng = {"torch": torch.get_rng_state(), "generator": run.generator.get_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            rng |= {f"cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
        if in_task:
            assert self._passes is not None and self._passes.pass_state is not None
            rng["pass"] = self._passes.pass_state
        files = {
            "model.safetensors": run.model.state_dict(),
            "optimizer.safetensors": optimizer_tensors,
            "method.safetensors": method_state.tensors,
            "rng.safetensors": rng,
        }
        best_json = None
        if best is not None:
            best_json, files["best.safetensors"] = split({"model": best[0], "optimizer": best[1]})
        n = len(run.values)
        manifest = {
            "config": self.config,
            "method": {"name": self.method.name, "options": _plain(self.method.options())},
            "seed": self.seed,
            "model": {
                "name": self.config.get("model"),
                "hidden": self.config.get("hidden"),
                "input_shape": self.input_shape,
                "heads": [[int(k), _outputs(h)] for k, h in run.model.heads.items()],
                "training": run.model.training,
            },
            "position": {
                "task": task,
                "in_task": in_task,
                "finished": task == n and not in_task,
                "epoch": epoch,
                "epoch_step": epoch_step,
                "task_step": task_step,
                "global_step": self._step + task_step,
                "epochs_done": sum(run.config.task_epochs(j) for j in range(task)) + epoch,
                "task_validation": list(self._scores) if in_task else [],
            },
            "accuracy": {
                "matrix": [[None if np.isnan(v) else float(v) for v in row] for row in run.values],
                "trained": [None if np.isnan(v) else float(v) for v in run.trained],
                "validation": [list(s) for s in run.scores],
            },
            "wall_time_s": time.perf_counter() - self._began,
            "checkpoint_every": self.every,
            "optimizer": {
                "groups": [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups],
                "state": optimizer_json,
            },
            "method_state": method_state.values,
            "best": best_json,
            "scaler": None
            if run.precision is None or run.precision.scaler is None
            else run.precision.scaler.state_dict(),
        }
        store.write(self.folder, self._step + task_step, files, manifest)

    # --- restoring --------------------------------------------------------------------------

    def _check(self, found: store.Checkpoint) -> None:
        """:class:`ConfigError` unless ``found`` is a checkpoint of this very run."""
        manifest, where = found.manifest, found.path / store.MANIFEST
        method = manifest.get("method", {})
        if method.get("name") != self.method.name:
            raise ConfigError(
                f"{where} is a checkpoint of method {method.get('name')}, not {self.method.name}"
            )
        if method.get("options") != _plain(self.method.options()):
            raise ConfigError(
                f"{where}: {self.method.name} ran with other options ({method.get('options')}); "
                "resume with the same ones"
            )
        if manifest.get("seed") != self.seed:
            raise ConfigError(f"{where} is of seed {manifest.get('seed')}, not {self.seed}")
        if manifest.get("config") != self.config:
            raise ConfigError(
                f"{where} was written by a run of another config; resume with its own"
            )

    def _restore(self, found: store.Checkpoint) -> Resumed:
        run = self._run
        assert run is not None
        manifest = found.manifest
        where = found.path / store.MANIFEST
        try:
            position = manifest["position"]
            accuracy = manifest["accuracy"]
            values = np.array(
                [[np.nan if v is None else v for v in row] for row in accuracy["matrix"]]
            )
            if values.shape != run.values.shape:
                raise ConfigError(
                    f"{where} is of {len(values)} tasks, this run has {len(run.values)}"
                )
            run.values[:] = values
            run.trained[:] = [np.nan if v is None else v for v in accuracy["trained"]]
            run.scores[:] = [tuple(float(s) for s in row) for row in accuracy["validation"]]
            wall_time_s = float(manifest["wall_time_s"])
            self._began -= wall_time_s
            self._step = int(position["global_step"]) - int(position["task_step"])
            if position["finished"]:
                return Resumed(len(run.values), False, True, None, wall_time_s, 0)
            optimizer = self._restore_state(found)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(
                f"{found.path} does not fit this run ({type(exc).__name__}: {exc}); resume from "
                "an older checkpoint or start the run again"
            ) from exc
        return Resumed(
            int(position["task"]),
            bool(position["in_task"]),
            False,
            optimizer,
            wall_time_s,
            int(position["epochs_done"]),
        )

    def _restore_state(self, found: store.Checkpoint) -> torch.optim.Optimizer:
        """Model, method, optimizer, scaler and random states from ``found``; the optimizer."""
        run = self._run
        assert run is not None
        manifest = found.manifest
        for head, n_classes in manifest["model"]["heads"]:
            run.model.add_head(int(head), int(n_classes))
        run.model.load_state_dict(found.tensors("model.safetensors"))
        run.model.train(bool(manifest["model"]["training"]))
        self.method.load_state_dict(
            run.model, MethodState(found.tensors("method.safetensors"), manifest["method_state"])
        )
        params = dict(run.model.named_parameters())
        first, *others = manifest["optimizer"]["groups"]
        optimizer = run.config.make_optimizer([params[name] for name in first])
        for group in others:
            optimizer.add_param_group({"params": [params[name] for name in group]})
        optimizer.load_state_dict(
            join(manifest["optimizer"]["state"], found.tensors("optimizer.safetensors"))
        )
        self._optimizer = optimizer
        if manifest["scaler"] is not None and run.precision is not None and run.precision.scaler:
            run.precision.scaler.load_state_dict(manifest["scaler"])
        rng = found.tensors("rng.safetensors")
        torch.set_rng_state(rng["torch"])
        cuda = [rng[f"cuda/{i}"] for i in range(len(rng)) if f"cuda/{i}" in rng]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        run.generator.set_state(rng["generator"])
        if manifest["position"]["in_task"]:
            best = None
            if manifest["best"] is not None:
                saved = join(manifest["best"], found.tensors("best.safetensors"))
                best = (saved["model"], saved["optimizer"])
            self._pending = (manifest["position"], rng, best)
        return optimizer
