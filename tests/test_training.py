"""The task loop on real MNIST: MAS forgets less than finetuning; same seed, same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import small_mlp, small_split_mnist
from memaware.data.scenarios import Task
from memaware.data.sources import ImageDataset
from memaware.errors import ConfigError
from memaware.methods import make_method
from memaware.models import MultiHeadClassifier, build_model
from memaware.training import TrainConfig, run_method
from memaware.training.loop import check_model_fits


def test_mas_forgets_less_than_finetune(mnist: ImageDataset) -> None:
    # Five real Split-MNIST tasks, 3000 training images each: enough for finetuning to forget.
    scenario = small_split_mnist(mnist, n_train=3000, n_tasks=5)
    config = TrainConfig(epochs=3, lr=1e-3, seed=0)
    finetune = run_method(make_method("finetune"), scenario, lambda: small_mlp(scenario), config)
    mas = run_method(
        make_method("mas", strength=1.0), scenario, lambda: small_mlp(scenario), config
    )
    assert finetune.accuracy.forgetting() > 0.03
    assert mas.accuracy.forgetting() < finetune.accuracy.forgetting() / 3
    assert mas.accuracy.average_accuracy() > finetune.accuracy.average_accuracy()
    values = mas.accuracy.values
    assert np.isnan(values[0, 1]) and not np.isnan(values[4, 0])


def test_same_seed_same_numbers(mnist: ImageDataset) -> None:
    scenario = small_split_mnist(mnist, n_train=300, n_tasks=2)
    config = TrainConfig(epochs=1, seed=3)
    runs = [
        run_method(make_method("mas"), scenario, lambda: small_mlp(scenario), config)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0].accuracy.values, runs[1].accuracy.values)


def test_joint_trains_on_all_seen_tasks(mnist: ImageDataset) -> None:
    scenario = small_split_mnist(mnist, n_train=500)
    config = TrainConfig(epochs=2, seed=0)
    joint = run_method(make_method("joint"), scenario, lambda: small_mlp(scenario), config)
    assert joint.accuracy.average_accuracy() > 0.95
    assert joint.accuracy.forgetting() < 0.02


def test_domain_and_class_settings_run(mnist: ImageDataset) -> None:
    for setting in ("domain", "class"):
        scenario = small_split_mnist(mnist, setting, n_train=300, n_tasks=2)
        result = run_method(
            make_method("finetune"),
            scenario,
            lambda s=scenario: small_mlp(s),
            TrainConfig(epochs=1),
        )
        assert result.accuracy.values.shape == (2, 2)


class _WrongOutput(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), -1)[:, :7]


def test_model_that_does_not_fit_the_data(mnist: ImageDataset) -> None:
    task: Task = small_split_mnist(mnist, n_tasks=1).tasks[0]
    wrong_width = MultiHeadClassifier(_WrongOutput(), feature_dim=7)
    wrong_width.add_head(0, 3)
    with pytest.raises(ConfigError, match="has 2 classes"):
        check_model_fits(wrong_width, task)
    wrong_input = build_model("mlp", (10,), hidden=(4,))
    wrong_input.add_head(0, 2)
    with pytest.raises(ConfigError, match="cannot take inputs of shape"):
        check_model_fits(wrong_input, task)


def test_another_seed_gives_other_numbers(mnist: ImageDataset) -> None:
    scenario = small_split_mnist(mnist, n_train=300, n_tasks=2)
    a, b = (
        run_method(
            make_method("finetune"),
            scenario,
            lambda: small_mlp(scenario),
            TrainConfig(epochs=1, seed=s),
        )
        for s in (3, 4)
    )
    assert not np.array_equal(np.nan_to_num(a.accuracy.values), np.nan_to_num(b.accuracy.values))
