"""Small real-data scenarios and models shared by the integration tests."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from memaware.checkpoint import run as checkpoint_run
from memaware.data.datasets import TensorData
from memaware.data.images import ImageDataset
from memaware.data.scenarios import Scenario, split_scenario
from memaware.models import MultiHeadClassifier, build_model


def small_split_mnist(
    mnist: ImageDataset,
    setting: str = "task",
    n_train: int = 1000,
    n_tasks: int = 3,
    n_test: int = 500,
) -> Scenario:
    """The first ``n_tasks`` Split-MNIST tasks, cut to ``n_train`` training and ``n_test`` test images each."""
    scenario = split_scenario(mnist, setting)
    tasks = tuple(
        dataclasses.replace(
            t,
            train=TensorData(t.train_x[:n_train], t.train_y[:n_train]),
            test=TensorData(t.test_x[:n_test], t.test_y[:n_test]),
        )
        for t in scenario.tasks[:n_tasks]
    )
    return dataclasses.replace(scenario, tasks=tasks)


def small_mlp(scenario: Scenario, hidden: Sequence[int] = (100, 100)) -> MultiHeadClassifier:
    """A headless MLP classifier for the scenario's inputs."""
    return build_model("mlp", scenario.input_shape, hidden=hidden)


class Interrupted(Exception):
    """Raised in place of the process dying."""


def interrupt_checkpoints(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``[limit, count]``: once set, the run dies (:class:`Interrupted`) right after its
    ``limit``-th step checkpoint (0: never); ``count`` counts the step checkpoints taken."""
    state = [0, 0]
    save_step = checkpoint_run.RunCheckpoints.save_step

    def dying(self: checkpoint_run.RunCheckpoints, step: int, best: Any) -> int:
        due = save_step(self, step, best)
        state[1] += 1
        if state[1] == state[0]:
            raise Interrupted
        return due

    monkeypatch.setattr(checkpoint_run.RunCheckpoints, "save_step", dying)
    return state


def kill_after_first_checkpoint(
    proc: subprocess.Popen[Any], folder: Path, within: float, *, group: bool = False
) -> bool:
    """SIGKILL ``proc`` (with ``group``: its whole process group, e.g. torchrun and its ranks)
    at a random moment up to ``within`` seconds after a ``step-*`` checkpoint appears in
    ``folder``; whether it was still running then."""
    deadline = time.monotonic() + 240
    while not any(folder.glob("step-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, within))
    alive = proc.poll() is None
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return alive
