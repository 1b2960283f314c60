"""`memaware compare`: methods × seeds on one stream, mean ± std, the registry behind `all`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import memaware.training.experiment as experiment
from helpers import small_split_mnist
from memaware.cli.main import main
from memaware.data.images import ImageDataset
from memaware.errors import ConfigError
from memaware.methods import METHODS, make_method, methods_for
from memaware.training import TrainConfig
from memaware.training.experiment import ExperimentSpec, aggregate, run_experiment


def test_every_method_is_registered_and_declares_its_scenarios() -> None:
    expected = {
        "finetune", "joint", "mas", "l-mas", "ewc", "online-ewc", "si", "l2", "lwf", "ebll",
        "mean-imm", "mode-imm",
    }  # fmt: skip
    task_free = {"task-free-mas", "online-finetune"}  # they learn from `memaware stream`
    assert set(METHODS) == expected | task_free
    for name in expected:
        assert set(METHODS[name].scenarios) <= {"task", "domain", "class"}
        assert name in methods_for("task")
    for name in task_free:
        assert name not in methods_for("domain") and "task" not in METHODS[name].scenarios


def test_unknown_option_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="has no option"):
        make_method("ewc", gamma=0.5)
    with pytest.raises(ConfigError, match="unknown method"):
        make_method("gem")


def test_aggregate_mean_and_sample_std() -> None:
    runs = [
        {"seed": s, "accuracy_matrix": [[a, None], [a - 0.1, 0.9]], "drop": [-0.1, 0.0],
         "trained_accuracy": [a, 0.9],
         "average_accuracy": a, "forgetting": 0.1, "bwt": -0.1, "average_drop": -0.05, "wall_time_s": 1.0}
        for s, a in ((0, 0.8), (1, 0.9), (2, 1.0))
    ]  # fmt: skip
    summary = aggregate(runs)
    assert summary["average_accuracy"] == pytest.approx(0.9)
    assert summary["std"]["average_accuracy"] == pytest.approx(0.1)  # n − 1 in the denominator
    assert summary["accuracy_matrix"][0] == [pytest.approx(0.9), None]
    assert summary["trained_accuracy"] == [pytest.approx(0.9), pytest.approx(0.9)]
    assert len(summary["runs"]) == 3


def test_compare_two_methods_two_seeds(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--methods", "finetune,mas", "--seeds", "2", "--epochs", "1"]
    code = main([*args, "--hidden", "32", "--out", str(out), "--no-progress"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1]
    for name in ("finetune", "mas"):
        entry = results["methods"][name]
        assert [run["seed"] for run in entry["runs"]] == [0, 1]
        mean = sum(run["average_accuracy"] for run in entry["runs"]) / 2
        assert entry["average_accuracy"] == pytest.approx(mean)
        assert entry["std"]["average_accuracy"] >= 0
    assert results["methods"]["mas"]["forgetting"] < results["methods"]["finetune"]["forgetting"]
    for name in ("comparison.png", "curves.png", "accuracy.png", "results.md"):
        assert (out / name).stat().st_size > 0
    assert "±" in (out / "results.md").read_text()


def test_the_run_seed_reaches_every_method(
    monkeypatch: pytest.MonkeyPatch, mnist: ImageDataset
) -> None:
    scenario = small_split_mnist(mnist, "task", n_train=200, n_tasks=2)
    monkeypatch.setattr(experiment, "make_scenario", lambda *args, **kwargs: scenario)
    seen: list[tuple[str, int, int]] = []
    real = experiment.run_method

    def spy(method: Any, stream: Any, make_model: Any, config: TrainConfig, **kwargs: Any) -> Any:
        seen.append((method.name, method.seed, config.seed))
        return real(method, stream, make_model, config, **kwargs)

    monkeypatch.setattr(experiment, "run_method", spy)
    spec = ExperimentSpec(
        methods=("ewc", "lwf"), seeds=(3, 5), train=TrainConfig(epochs=1), hidden=(16,)
    )
    first = run_experiment(spec)
    # the method built for each seed draws its own streams (labels, warm-up order) from it
    assert seen == [("ewc", 3, 3), ("ewc", 5, 5), ("lwf", 3, 3), ("lwf", 5, 5)]
    again = run_experiment(spec)
    for name in ("ewc", "lwf"):
        runs = [
            [
                {k: v for k, v in run.items() if k != "wall_time_s"}
                for run in r["methods"][name]["runs"]
            ]
            for r in (first, again)
        ]
        assert runs[0] == runs[1]  # the same seeds, the same numbers
        assert "seed" not in first["methods"][name]["options"]
