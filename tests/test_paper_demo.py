"""``memaware paper mnist-demo``: the authors' Split-MNIST protocol, checked on a cut-down run."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch

import memaware.methods.mas as mas_method
import memaware.training.experiment as experiment
from helpers import interrupt_checkpoints
from memaware.cli.main import main
from memaware.data.benchmarks import make_scenario
from memaware.data.datasets import TensorData
from memaware.data.images import ImageDataset
from memaware.data.scenarios import Scenario, split_scenario
from memaware.errors import DataError
from memaware.methods import Method
from memaware.paper import mnist_demo
from memaware.training.config import TrainConfig

ORDER = ["1/2", "3/4", "5/6", "7/8", "9/0"]


def test_the_spec_is_the_notebooks_protocol() -> None:
    spec = mnist_demo.demo_spec(range(2))
    spec.check()
    assert spec.benchmark == "split-mnist-authors" and spec.scenario == "task"
    assert spec.model == "mlp" and tuple(spec.hidden) == (256, 256)
    assert tuple(spec.methods) == ("finetune", "mas") and tuple(spec.seeds) == (0, 1)
    assert spec.method_options == {"mas": {"strength": 1.0, "importance_preset": "authors"}}
    assert spec.train == TrainConfig(
        epochs=20,
        batch_size=150,
        lr=1e-3,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=0.0,
        lr_decay_epochs=None,
        reset_optimizer=True,  # each of the notebook's driver calls builds its own optimizer
        first_task_lr=1e-2,
        first_task_epochs=10,
        select_best_epoch=True,
        validation_fraction=0.1,
    )


def test_the_authors_split_mnist(mnist: ImageDataset) -> None:
    scenario = make_scenario("split-mnist-authors")
    assert scenario.task_names == ORDER and scenario.setting == "task"
    plain = split_scenario(mnist, "task", [[1, 2], [3, 4], [5, 6], [7, 8], [9, 0]])
    for task, raw in zip(scenario.tasks, plain.tasks, strict=True):
        assert task.n_classes == 2 and task.head == task.index
        torch.testing.assert_close(task.train_x, (raw.train_x - 0.1307) / 0.3081)
        torch.testing.assert_close(task.test_x, (raw.test_x - 0.1307) / 0.3081)
        assert torch.equal(task.train_y, raw.train_y)
    last = scenario.tasks[-1]  # local labels follow the order in the task: 9 → 0, 0 → 1
    nines = mnist.train_y[torch.isin(mnist.train_y, torch.tensor([0, 9]))] == 9
    assert torch.equal(last.train_y == 0, nines)
    # the notebook's test sets: its accuracies are counts over these sizes (e.g. 1985/1992)
    assert [len(t.test_y) for t in scenario.tasks] == [2167, 1992, 1850, 2002, 1989]


def _small(real: Callable[..., Scenario]) -> Callable[..., Scenario]:
    def make(*args: Any, **kwargs: Any) -> Scenario:
        scenario = real(*args, **kwargs)
        tasks = tuple(
            dataclasses.replace(
                t,
                train=TensorData(t.train_x[:300], t.train_y[:300]),
                test=TensorData(t.test_x[:200], t.test_y[:200]),
            )
            for t in scenario.tasks
        )
        return dataclasses.replace(scenario, tasks=tasks)

    return make


@pytest.fixture
def cut_down_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo on the small scenario, 2 epochs a task (1 for the first)."""
    monkeypatch.setattr(experiment, "make_scenario", _small(experiment.make_scenario))
    short = dataclasses.replace(mnist_demo.TRAIN, epochs=2, first_task_epochs=1)
    monkeypatch.setattr(mnist_demo, "TRAIN", short)


@pytest.mark.usefixtures("cut_down_demo")
def test_a_cut_down_demo_runs_the_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runs: list[tuple[Method, TrainConfig, list[str]]] = []
    real_run = experiment.run_method

    def run_method(method: Method, scenario: Scenario, *args: Any, **kwargs: Any) -> Any:
        runs.append((method, args[1], scenario.task_names))
        return real_run(method, scenario, *args, **kwargs)

    monkeypatch.setattr(experiment, "run_method", run_method)
    omega_calls: list[tuple[dict[str, Any], list[int], set[str]]] = []
    real_mas = mas_method.mas

    def mas(model: Any, data: Iterable[tuple[torch.Tensor, ...]], **kwargs: Any) -> Any:
        batches = list(data)
        result = real_mas(model, batches, **kwargs)
        heads = {name.split(".")[1] for name in result if name.startswith("heads.")}
        omega_calls.append((kwargs, [len(x) for x, *_ in batches], heads))
        return result

    monkeypatch.setattr(mas_method, "mas", mas)

    out = tmp_path / "demo"
    assert main(["paper", "mnist-demo", "--out", str(out), "--seeds", "1", "--no-progress"]) == 0

    assert [(m.name, names) for m, _, names in runs] == [("finetune", ORDER), ("mas", ORDER)]
    for _, config, _ in runs:  # the notebook's optimizer settings reach the training loop
        assert config == dataclasses.replace(mnist_demo.TRAIN, seed=0)  # the cut-down TRAIN
        assert (config.optimizer, config.momentum, config.batch_size) == ("sgd", 0.9, 150)
        assert (config.learning_rate(0, 0), config.learning_rate(1, 1)) == (1e-2, 1e-3)
    # Ω after every task (the last one's is never used but is computed as the method's step)
    assert len(omega_calls) == 5
    for i, (kwargs, sizes, heads) in enumerate(omega_calls):
        assert kwargs["granularity"] == "batch" and kwargs["norm"] == "l2sq"
        assert heads == {str(i)}  # F = the head of the task just learned, only
        assert sizes == [200, 70]  # the 270 training inputs the validation split leaves
    results = json.loads((out / "results.json").read_text())
    assert results["task_names"] == ORDER
    options = results["methods"]["mas"]["options"]
    assert (options["granularity"], options["heads"], options["importance_batch_size"]) == (
        "batch",
        "current",
        200,
    )
    assert options["accumulation"] == "sum" and options["strength"] == 1.0
    assert results["config"]["method_options"]["mas"]["importance_preset"] == "authors"
    assert results["config"]["train"]["optimizer"] == "sgd"
    assert results["notebook"]["average_forgetting"] == pytest.approx(0.000706505694457)
    assert len(results["deviations"]) == 3
    page = (out / "notebook.md").read_text()
    assert "| Task | Notebook final (%) |" in page and "| 9/0 | 99.04 | 99.04 | 0.000 |" in page
    printed = capsys.readouterr().out
    assert "Average" in printed and "notebook.md" in printed


@pytest.mark.usefixtures("cut_down_demo")
def test_an_interrupted_demo_resumes_to_the_same_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = interrupt_checkpoints(monkeypatch)
    argv = ["paper", "mnist-demo", "--seeds", "1", "--no-progress", "--checkpoint-every", "5"]
    reference, out = tmp_path / "reference", tmp_path / "demo"
    assert main([*argv, "--out", str(reference)]) == 0
    total = state[1]
    state[:] = [total - 1, 0]  # mas, before its last step checkpoint
    assert main([*argv, "--out", str(out)]) == 2
    assert "mas (seed 0) failed: Interrupted" in capsys.readouterr().err
    state[:] = [0, 0]
    assert main(["paper", "mnist-demo", "--resume", str(out), "--checkpoint-every", "5"]) == 0
    assert state[1] == 1  # finetune from its checkpoint, mas from its step
    runs = [json.loads((f / "results.json").read_text())["methods"] for f in (out, reference)]
    matrices = [
        {m: (e["accuracy_matrix"], e["trained_accuracy"]) for m, e in r.items()} for r in runs
    ]
    assert matrices[0] == matrices[1]
    assert (out / "notebook.md").is_file()
    assert main(["paper", "mnist-demo", "--resume", str(out), "--seeds", "2"]) == 2
    assert "--seeds = 2 (the run's: 1)" in capsys.readouterr().err


def test_the_comparison_reproduces_the_notebooks_forgetting() -> None:
    final, trained = mnist_demo.NOTEBOOK["final_accuracy"], mnist_demo.NOTEBOOK["trained_accuracy"]
    matrix = [[None] * 5 for _ in range(4)] + [final]
    results = {
        "task_names": ORDER,
        "seeds": [0],
        "methods": {"mas": {"accuracy_matrix": matrix, "trained_accuracy": trained}},
    }
    table = mnist_demo.comparison_table(results)
    average = table.splitlines()[-1]
    assert average == "| Average | 98.86 | 98.93 | 0.071 | 98.86 | 98.93 | 0.071 |"
    assert "| 3/4 | 99.65 | 99.55 | -0.100 |" in table
    with pytest.raises(DataError, match="the demo's tasks"):
        mnist_demo.comparison_table({**results, "task_names": ["0/1", *ORDER[1:]]})


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--seeds", "0"], "--seeds must be at least 1"), (["--out", "/proc/x"], "cannot write")],
)
def test_bad_input_exits_2_before_any_work(
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr(experiment, "make_scenario", forbidden)
    assert main(["paper", "mnist-demo", "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
