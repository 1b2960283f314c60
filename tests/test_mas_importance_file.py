"""MAS's importance_source: Ω after a task from a saved file (a deployed model's tracker), alone
or merged with the task's own data; checked before training, reachable from the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import small_mlp, small_split_mnist
from memaware.data.images import ImageDataset
from memaware.data.scenarios import Scenario
from memaware.deploy import ImportanceTracker
from memaware.errors import ConfigError
from memaware.importance import Importance, fisher
from memaware.methods import MAS, MASOptions, parse_option
from memaware.models import MultiHeadClassifier
from memaware.training.experiment import ExperimentSpec


@pytest.fixture(scope="module")
def scenario(mnist: ImageDataset) -> Scenario:
    return small_split_mnist(mnist, n_train=300, n_tasks=2, n_test=100)


def first_task_model(scenario: Scenario) -> MultiHeadClassifier:
    torch.manual_seed(0)
    model = small_mlp(scenario, (32,))
    model.add_head(0, 2)
    return model


def tracked_file(model: MultiHeadClassifier, x: torch.Tensor, path: Path) -> Importance:
    with ImportanceTracker(model, path=path) as tracker, torch.inference_mode():
        for part in x.split(37):
            model(part, 0)
    return tracker.importance()


def test_file_alone_and_merged_with_the_training_data(scenario: Scenario, tmp_path: Path) -> None:
    task = scenario.tasks[0]
    model = first_task_model(scenario)
    path = tmp_path / "deployed.safetensors"
    served = tracked_file(model, task.test_x, path)

    from_file = MAS(importance_source="file", importance_file=str(path))
    omega = from_file.importance(model, task, [task])
    assert dict(omega.counts) == dict(served.counts)
    for name in served:
        torch.testing.assert_close(omega[name], served[name])

    merged = MAS(importance_source="train+file", importance_file=str(path))
    omega = merged.importance(model, task, [task])
    train = MAS().importance(model, task, [task])
    assert isinstance(train, Importance) and isinstance(omega, Importance)
    want = train.merge(served)
    assert omega.n_samples == len(task.train) + len(task.test)
    for name in want:
        torch.testing.assert_close(omega[name], want[name])

    # after another task than importance_file_task, Ω comes from the data again
    later = MAS(importance_source="file", importance_file=str(path), importance_file_task=1)
    omega = later.importance(model, task, [task])
    for name in train:
        torch.testing.assert_close(omega[name], train[name])


def test_the_options_are_checked_when_built(scenario: Scenario, tmp_path: Path) -> None:
    model = first_task_model(scenario)
    path = tmp_path / "deployed.safetensors"
    tracked_file(model, scenario.tasks[0].test_x[:50], path)
    with pytest.raises(ConfigError, match="importance_file must be a saved importance file"):
        MASOptions(importance_source="file")
    with pytest.raises(ConfigError, match="none with importance_source=train"):
        MASOptions(importance_file=str(path))
    with pytest.raises(ConfigError, match=r"readable importance file.*does not exist"):
        MASOptions(importance_source="file", importance_file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="kind mas/batch/l2sq/eval"):
        MASOptions(importance_source="train+file", importance_file=str(path), granularity="batch")
    fisher_path = tmp_path / "fisher.safetensors"
    fisher(model, [(scenario.tasks[0].test_x[:20], scenario.tasks[0].test_y[:20])]).save(
        fisher_path
    )
    with pytest.raises(ConfigError, match="MAS importance"):
        MASOptions(importance_source="file", importance_file=str(fisher_path))
    with pytest.raises(ConfigError, match="importance_file_task"):
        MASOptions(importance_file_task=-1)
    MASOptions(importance_source="file", importance_file=str(path), granularity="batch")


def test_a_file_that_does_not_fit_the_model_fails_before_the_task_trains(
    scenario: Scenario, tmp_path: Path
) -> None:
    task = scenario.tasks[0]
    path = tmp_path / "other.safetensors"
    torch.manual_seed(0)
    other = small_mlp(scenario, (16,))  # other hidden size: the shapes differ
    other.add_head(0, 2)
    tracked_file(other, task.test_x[:40], path)
    method = MAS(importance_source="file", importance_file=str(path))
    with pytest.raises(ConfigError, match="shape"):
        method.before_task(first_task_model(scenario), task, [task])


def test_the_cli_reaches_the_options(tmp_path: Path) -> None:
    assert parse_option(f"mas.importance_file={tmp_path}/f.safetensors") == (
        "mas",
        "importance_file",
        f"{tmp_path}/f.safetensors",
    )
    assert parse_option("mas.importance_file=none") == ("mas", "importance_file", None)
    assert parse_option("mas.importance_source=train+file")[2] == "train+file"
    spec = ExperimentSpec(
        method_options={
            "mas": {"importance_source": "file", "importance_file": str(tmp_path / "missing")}
        }
    )
    with pytest.raises(ConfigError, match="does not exist"):  # before any data are read
        spec.check()
