"""Small real-data scenarios and models shared by the integration tests."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import socket
import subprocess
import sys
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

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


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


def free_port() -> int:
    """A TCP port free on this machine now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def torchrun_launch(n: int = 2) -> tuple[list[str], dict[str, str]]:
    """The command line starting ``n`` local processes with torchrun, and their environment
    (this checkout's sources, one thread each); a program and its arguments follow it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return [str(TORCHRUN), f"--nproc_per_node={n}", "--master_port", str(free_port())], env


def torchrun(args: list[str], cwd: Path, n: int = 2) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node=n -m memaware ARGS`` in ``cwd``, its output captured."""
    command, env = torchrun_launch(n)
    return subprocess.run(
        [*command, "-m", "memaware", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
