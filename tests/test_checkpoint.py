"""Checkpoints and resuming on real MNIST: a run killed at a random moment and resumed gives the
same numbers, bit for bit, as one never interrupted; every method's state survives a round trip;
damaged, truncated or foreign checkpoints are clear errors and the one before is used."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers import (
    Interrupted,
    interrupt_checkpoints,
    kill_after_first_checkpoint,
    small_mlp,
    small_split_mnist,
)
from memaware.checkpoint import (
    CheckpointOptions,
    CheckpointWarning,
    latest,
    load_checkpoint_model,
    open_checkpoint,
    store,
)
from memaware.checkpoint.nested import join, split
from memaware.cli.main import main
from memaware.data.datasets import Batches, Selection, TensorData
from memaware.data.images import ImageDataset
from memaware.data.scenarios import Scenario
from memaware.errors import ConfigError
from memaware.files import atomic_directory
from memaware.methods import make_method
from memaware.methods.base import MethodState
from memaware.training import TrainConfig, run_method
from memaware.training.experiment import ExperimentSpec
from memaware.training.loop import MethodResult

#: every method of the task loop that keeps state of its own, and the two that keep none
METHODS = [
    "mas", "l-mas", "ewc", "online-ewc", "si", "l2", "lwf", "ebll", "mean-imm", "mode-imm",
    "joint", "finetune",
]  # fmt: skip
CONFIG = json.loads(json.dumps(ExperimentSpec(hidden=(16,)).to_json()))  # as results.json has it


@pytest.fixture(scope="module")
def scenario(mnist: ImageDataset) -> Scenario:
    return small_split_mnist(mnist, n_train=200, n_tasks=3, n_test=200)


@pytest.fixture
def interrupt_after(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Set ``[k]``: the run dies (:class:`Interrupted`) right after its k-th step checkpoint."""
    return interrupt_checkpoints(monkeypatch)


def _run(
    name: str,
    scenario: Scenario,
    config: TrainConfig,
    checkpoints: CheckpointOptions | None = None,
    hidden: int = 16,
) -> MethodResult:
    method = make_method(name, seed=config.seed)
    hook = None
    if checkpoints is not None:
        hook = checkpoints.for_run(CONFIG, scenario.input_shape, method, config.seed)
    model = lambda: small_mlp(scenario, (hidden,))  # noqa: E731
    return run_method(method, scenario, model, config, checkpoints=hook)


def _same(a: MethodResult, b: MethodResult) -> None:
    np.testing.assert_array_equal(a.accuracy.values, b.accuracy.values)
    np.testing.assert_array_equal(a.accuracy.trained, b.accuracy.trained)
    assert a.validation_accuracy == b.validation_accuracy


# --- resuming in-process: every method, bit for bit ------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_a_resumed_run_is_bit_identical(
    name: str, scenario: Scenario, tmp_path: Path, interrupt_after: list[int]
) -> None:
    config = TrainConfig(epochs=2, batch_size=32, seed=1)  # 7 steps an epoch, 42 in all
    reference = _run(name, scenario, config)
    interrupt_after[0] = 3  # mid-epoch of the second task (steps 10, 20, 30: every 10)
    with pytest.raises(Interrupted):
        _run(name, scenario, config, CheckpointOptions(tmp_path, every=10))
    folder = tmp_path / f"{name}-seed1"
    kept = sorted(p.name for p in folder.iterdir())
    assert len(kept) == 2 and kept[-1] == "step-000000030"  # the newest two (joint: more steps)
    resumed = _run(name, scenario, config, CheckpointOptions(tmp_path, every=10, resume=True))
    _same(reference, resumed)
    again = _run(name, scenario, config, CheckpointOptions(tmp_path, every=10, resume=True))
    _same(reference, again)  # a finished run: its result, from its last checkpoint
    assert again.wall_time_s > 0


def test_a_run_interrupted_twice(
    scenario: Scenario, tmp_path: Path, interrupt_after: list[int]
) -> None:
    config = TrainConfig(epochs=2, batch_size=32)
    reference = _run("si", scenario, config)
    for stop in (2, 4):  # steps 12 (task 1, epoch 0) and then 24 (task 2, epoch 1), every 6
        interrupt_after[0] = stop
        with pytest.raises(Interrupted):
            _run("si", scenario, config, CheckpointOptions(tmp_path, every=6, resume=True))
    _same(
        reference, _run("si", scenario, config, CheckpointOptions(tmp_path, every=6, resume=True))
    )


@pytest.mark.parametrize("name", ["mas", "si", "lwf"])
@pytest.mark.parametrize("stop", [1, 2, 5])
def test_resuming_with_best_epoch_selection(
    name: str, stop: int, scenario: Scenario, tmp_path: Path, interrupt_after: list[int]
) -> None:
    config = TrainConfig(
        epochs=3, batch_size=32, select_best_epoch=True, optimizer="sgd", momentum=0.9
    )
    reference = _run(name, scenario, config)
    interrupt_after[0] = stop
    with pytest.raises(Interrupted):
        _run(name, scenario, config, CheckpointOptions(tmp_path, every=8))
    _same(
        reference, _run(name, scenario, config, CheckpointOptions(tmp_path, every=8, resume=True))
    )


def _on_disk(scenario: Scenario) -> Scenario:
    """The scenario with training sets that are not tensors: batches come from a DataLoader."""
    tasks = []
    for task in scenario.tasks:
        assert isinstance(task.train, TensorData)
        tasks.append(
            dataclasses.replace(task, train=Selection(task.train, torch.arange(len(task.train))))
        )
    return dataclasses.replace(scenario, tasks=tuple(tasks))


def test_resuming_batches_from_a_dataloader(
    scenario: Scenario, tmp_path: Path, interrupt_after: list[int]
) -> None:
    on_disk = _on_disk(scenario)
    config = TrainConfig(epochs=2, batch_size=32)
    reference = _run("ewc", on_disk, config)
    interrupt_after[0] = 2
    with pytest.raises(Interrupted):
        _run("ewc", on_disk, config, CheckpointOptions(tmp_path, every=9))
    _same(
        reference, _run("ewc", on_disk, config, CheckpointOptions(tmp_path, every=9, resume=True))
    )


@pytest.mark.parametrize("in_memory", [True, False])
def test_a_resumed_pass_skips_what_was_trained(scenario: Scenario, in_memory: bool) -> None:
    data = scenario.tasks[0].train
    if not in_memory:
        assert isinstance(data, TensorData)
        data = Selection(data, torch.arange(len(data)))

    def passes() -> Batches:
        return Batches(data, 32, shuffle=True, generator=torch.Generator().manual_seed(5))

    batches = passes()
    assert batches.pass_state is None
    list(batches)  # a first epoch
    second = [y for _, y in batches]
    state = batches.pass_state  # as the second epoch began
    assert state is not None
    resumed = passes()
    resumed.resume_pass(state, 3)
    tail = [y for _, y in resumed]
    assert len(tail) == len(second) - 3
    assert all(torch.equal(a, b) for a, b in zip(second[3:], tail, strict=True))
    third = [y for _, y in batches]
    assert all(torch.equal(a, b) for a, b in zip(third, [y for _, y in resumed], strict=True))


# --- method state round trip ------------------------------------------------------------------


@pytest.mark.parametrize("name", METHODS)
def test_method_state_survives_a_round_trip(name: str, scenario: Scenario, tmp_path: Path) -> None:
    config = TrainConfig(epochs=1, batch_size=64)
    method = make_method(name, seed=2)
    model = small_mlp(scenario, (16,))
    run_method(method, scenario, lambda: model, config)
    saved = method.state_dict()
    store.write(tmp_path, 7, {"method.safetensors": saved.tensors}, {"method_state": saved.values})
    found = open_checkpoint(tmp_path / "step-000000007")
    fresh = make_method(name, seed=2)
    fresh.load_state_dict(
        model, MethodState(found.tensors("method.safetensors"), found.manifest["method_state"])
    )
    loaded = fresh.state_dict()
    assert json.loads(json.dumps(loaded.values)) == found.manifest["method_state"]
    assert loaded.tensors.keys() == saved.tensors.keys()
    for key, tensor in saved.tensors.items():
        assert torch.equal(loaded.tensors[key].cpu(), tensor.cpu()), key
    if name not in ("joint", "finetune"):
        assert saved.tensors, f"{name} keeps state, but saved none"


def test_optimizer_state_splits_into_json_and_tensors() -> None:
    param = torch.nn.Parameter(torch.randn(3))
    optimizer = torch.optim.Adam([param], betas=(0.8, 0.9))
    param.grad = torch.ones(3)
    optimizer.step()
    skeleton, tensors = split(optimizer.state_dict())
    json.dumps(skeleton, allow_nan=False)
    back = join(json.loads(json.dumps(skeleton)), tensors)
    assert back["param_groups"][0]["betas"] == (0.8, 0.9)
    assert torch.equal(back["state"][0]["exp_avg"], optimizer.state[param]["exp_avg"])
    with pytest.raises(ConfigError, match="type object"):
        split({"x": object()})


# --- layout, damage, fallback -----------------------------------------------------------------


@pytest.fixture
def checkpointed(scenario: Scenario, tmp_path: Path) -> Path:
    """A finished MAS run's checkpoint folder (every 10 steps, the last two kept)."""
    _run(
        "mas", scenario, TrainConfig(epochs=1, batch_size=32), CheckpointOptions(tmp_path, every=10)
    )
    return tmp_path / "mas-seed0"


def test_layout_and_manifest(checkpointed: Path) -> None:
    names = sorted(p.name for p in checkpointed.iterdir())
    assert names == ["step-000000020", "step-000000021"]  # 21 steps; the task ends are kept too
    manifest = json.loads((checkpointed / names[-1] / "manifest.json").read_text())
    assert manifest["format"] == "memaware-checkpoint" and manifest["format_version"] == 1
    assert manifest["config"] == CONFIG and manifest["method"]["name"] == "mas"
    assert manifest["seed"] == 0 and manifest["position"]["finished"]
    assert set(manifest["files"]) == {
        "model.safetensors", "optimizer.safetensors", "method.safetensors", "rng.safetensors"
    }  # fmt: skip
    for name, entry in manifest["files"].items():
        assert (
            len(entry["sha256"]) == 64
            and (checkpointed / names[-1] / name).stat().st_size == entry["bytes"]
        )
    assert len(manifest["accuracy"]["matrix"]) == 3
    assert not [p for p in checkpointed.rglob(".*")]  # no temporary folders left


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        data = bytearray((path / "optimizer.safetensors").read_bytes())
        data[-1] ^= 0xFF
        (path / "optimizer.safetensors").write_bytes(bytes(data))
    elif how == "missing":
        (path / "rng.safetensors").unlink()
    elif how == "manifest":
        (path / "manifest.json").write_text('{"format": "memaware-checkp')
    elif how == "version":
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["memaware_version"] = "0.0.1"
        (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated", "model.safetensors is damaged"),
        ("flipped", "optimizer.safetensors is damaged"),
        ("missing", "rng.safetensors is missing"),
        ("manifest", "manifest.json is damaged"),
        ("version", "written by memaware 0.0.1"),
    ],
)
def test_a_damaged_checkpoint_is_an_error_and_the_one_before_is_used(
    checkpointed: Path, how: str, message: str
) -> None:
    newest = checkpointed / "step-000000021"
    _damage(newest, how)
    with pytest.raises(ConfigError, match=message):
        open_checkpoint(newest)
    with pytest.warns(CheckpointWarning, match="skipped a damaged checkpoint"):
        found = latest(checkpointed)
    assert found is not None and found.path.name == "step-000000020"
    _damage(checkpointed / "step-000000020", how)
    with pytest.raises(ConfigError, match="no usable checkpoint"):
        latest(checkpointed)


def test_resume_falls_back_to_the_checkpoint_before_a_damaged_one(
    scenario: Scenario, tmp_path: Path, interrupt_after: list[int]
) -> None:
    config = TrainConfig(epochs=2, batch_size=32)
    reference = _run("ewc", scenario, config)
    interrupt_after[0] = 3
    with pytest.raises(Interrupted):
        _run("ewc", scenario, config, CheckpointOptions(tmp_path, every=10))
    _damage(tmp_path / "ewc-seed0" / "step-000000030", "flipped")
    with pytest.warns(CheckpointWarning):
        resumed = _run("ewc", scenario, config, CheckpointOptions(tmp_path, every=10, resume=True))
    _same(reference, resumed)


def test_a_checkpoint_of_another_run_is_refused(checkpointed: Path, scenario: Scenario) -> None:
    root = checkpointed.parent
    (root / "ewc-seed0").mkdir()
    for step in checkpointed.iterdir():
        (root / "ewc-seed0" / step.name).mkdir()
        for file in step.iterdir():
            (root / "ewc-seed0" / step.name / file.name).write_bytes(file.read_bytes())
    config = TrainConfig(epochs=1, batch_size=32)
    with pytest.raises(ConfigError, match="checkpoint of method mas, not ewc"):
        _run("ewc", scenario, config, CheckpointOptions(root, resume=True))
    method = make_method("mas", strength=3.0)
    hook = CheckpointOptions(root, resume=True).for_run(CONFIG, scenario.input_shape, method, 0)
    with pytest.raises(ConfigError, match="other options"):
        run_method(method, scenario, lambda: small_mlp(scenario, (16,)), config, checkpoints=hook)
    method = make_method("mas")
    hook = CheckpointOptions(root, resume=True).for_run({}, scenario.input_shape, method, 0)
    with pytest.raises(ConfigError, match="another config"):
        run_method(method, scenario, lambda: small_mlp(scenario, (16,)), config, checkpoints=hook)
    with pytest.raises(ConfigError, match="earlier run"):
        CheckpointOptions(root).check_fresh()
    with pytest.raises(ConfigError, match="earlier run"):
        _run("mas", scenario, config, CheckpointOptions(root))


def test_a_checkpoint_of_another_model_is_refused(
    scenario: Scenario, tmp_path: Path, interrupt_after: list[int]
) -> None:
    config = TrainConfig(epochs=1, batch_size=32)
    interrupt_after[0] = 1
    with pytest.raises(Interrupted):
        _run("si", scenario, config, CheckpointOptions(tmp_path, every=10))
    with pytest.raises(ConfigError, match="does not fit this run") as error:
        _run("si", scenario, config, CheckpointOptions(tmp_path, resume=True), hidden=8)
    assert "size mismatch for backbone.1.weight" in str(error.value)


def test_load_checkpoint_model(checkpointed: Path, scenario: Scenario) -> None:
    model, manifest = load_checkpoint_model(checkpointed)
    assert manifest["position"]["global_step"] == 21 and model.head_ids == [0, 1, 2]
    same, _ = load_checkpoint_model(checkpointed / "step-000000021")
    older, _ = load_checkpoint_model(checkpointed / "step-000000020")
    assert not model.training
    x = scenario.tasks[0].test.x[:5] if isinstance(scenario.tasks[0].test, TensorData) else None
    assert x is not None
    assert torch.equal(model(x, 2), same(x, 2)) and not torch.equal(model(x, 2), older(x, 2))
    state = torch.get_rng_state()
    load_checkpoint_model(checkpointed)
    assert torch.equal(state, torch.get_rng_state())
    with pytest.raises(ConfigError, match="neither a checkpoint"):
        load_checkpoint_model(checkpointed.parent)


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "step-000000001"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a").write_text("half")
        raise RuntimeError
    assert (target / "a").read_text() == "old" and os.listdir(tmp_path) == [target.name]
    with atomic_directory(target) as tmp:
        (tmp / "b").write_text("new")
    assert os.listdir(target) == ["b"] and os.listdir(tmp_path) == [target.name]


# --- the command line: SIGKILL at a random moment, then --resume ------------------------------


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "memaware.cli.main", *args]


RUN = ["run", "--epochs", "2", "--hidden", "16", "--no-progress", "--checkpoint-every", "30"]


def _matrices(out: Path) -> dict[str, Any]:
    results = json.loads((out / "results.json").read_text())
    return {
        name: (entry["accuracy_matrix"], entry["trained_accuracy"])
        for name, entry in results["methods"].items()
    }


@pytest.mark.parametrize("method", ["mas", "ewc"])
def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(
    tmp_path: Path, method: str
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(
        _command(*RUN, "--methods", method, "--out", str(reference)),
        env=env, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    proc = subprocess.Popen(
        _command(*RUN, "--methods", method, "--out", str(killed)),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    alive = kill_after_first_checkpoint(proc, killed / "checkpoints" / f"{method}-seed0", 0.5)
    assert alive, "the run ended before it could be killed: give it more work"
    assert not (killed / "results.json").exists()
    resumed = subprocess.run(
        _command("run", "--resume", str(killed), "--no-progress"),
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert _matrices(killed) == _matrices(reference)
    results = json.loads((killed / "results.json").read_text())
    assert results["config"] == json.loads((reference / "results.json").read_text())["config"]


@pytest.mark.usefixtures("small_cli")
def test_resume_checks_the_options_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--epochs",
                "1",
                "--hidden",
                "16",
                "--methods",
                "mas",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    first = _matrices(out)
    assert main(["run", "--resume", str(out), "--epochs", "1", "--no-progress"]) == 0  # same: fine
    assert _matrices(out) == first
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--epochs", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "train.epochs = 3 (the run's: 1)" in err and "Omit them" in err
    assert main(["run", "--resume", str(out), "--out", str(tmp_path / "else")]) == 2
    assert "a resumed run writes into OUT" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "nothing")]) == 2
    assert "holds no usable checkpoint" in capsys.readouterr().err
    assert (
        main(["run", "--epochs", "1", "--hidden", "16", "--methods", "mas", "--out", str(out)]) == 2
    )
    assert "holds checkpoints of an earlier run" in capsys.readouterr().err
    assert main(["run", "--checkpoint-every", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "--checkpoint-every must be an integer >= 0" in capsys.readouterr().err


def test_commands_that_cannot_resume_refuse_it(capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["stream"], ["paper", "selective"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--resume", "somewhere"])
        assert exit_info.value.code == 2
        assert "unrecognized arguments: --resume" in capsys.readouterr().err


@pytest.fixture
def small_cli(monkeypatch: pytest.MonkeyPatch, mnist: ImageDataset) -> None:
    """Runs of the command train on two small real Split-MNIST tasks."""
    import memaware.training.experiment as experiment

    scenario = small_split_mnist(mnist, "task", n_train=200, n_tasks=2)
    monkeypatch.setattr(experiment, "make_scenario", lambda *args, **kwargs: scenario)
