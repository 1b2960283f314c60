"""Scenarios built from real MNIST: labels, heads and permutations per setting."""

from __future__ import annotations

import pytest
import torch

from memaware.data.benchmarks import make_scenario
from memaware.data.images import ImageDataset
from memaware.data.scenarios import permuted_scenario, split_scenario
from memaware.errors import ConfigError


def test_split_task_incremental(mnist: ImageDataset) -> None:
    scenario = split_scenario(mnist, "task")
    assert [t.name for t in scenario.tasks] == ["0/1", "2/3", "4/5", "6/7", "8/9"]
    assert [t.head for t in scenario.tasks] == [0, 1, 2, 3, 4]
    second = scenario.tasks[1]
    assert second.n_classes == 2 and set(second.train_y.unique().tolist()) == {0, 1}
    # label 0 of task 1 is digit 2
    digits = mnist.train_y[torch.isin(mnist.train_y, torch.tensor([2, 3]))]
    assert torch.equal(second.train_y, (digits == 3).long())
    assert second.train_x.dtype == torch.float32 and float(second.train_x.max()) <= 1.0
    assert sum(len(t.train_y) for t in scenario.tasks) == 60000
    assert sum(len(t.test_y) for t in scenario.tasks) == 10000


def test_split_domain_and_class(mnist: ImageDataset) -> None:
    domain = split_scenario(mnist, "domain")
    assert {t.head for t in domain.tasks} == {0} and all(t.n_classes == 2 for t in domain.tasks)
    klass = split_scenario(mnist, "class")
    assert all(t.n_classes == 10 for t in klass.tasks)
    assert set(klass.tasks[2].test_y.unique().tolist()) == {4, 5}


def test_permuted_tasks_are_fixed_permutations(mnist: ImageDataset) -> None:
    a = permuted_scenario(mnist, "domain", n_tasks=3, seed=1)
    b = permuted_scenario(mnist, "domain", n_tasks=3, seed=1)
    assert torch.equal(a.tasks[2].train_x, b.tasks[2].train_x)
    assert torch.equal(
        a.tasks[0].train_x.reshape(60000, -1), mnist.train_x.reshape(60000, -1).float() / 255
    )
    # the same pixels, in another order
    first = a.tasks[0].train_x[0].flatten().sort().values
    assert torch.equal(first, a.tasks[1].train_x[0].flatten().sort().values)
    assert not torch.equal(a.tasks[0].train_x[0], a.tasks[1].train_x[0])
    klass = permuted_scenario(mnist, "class", n_tasks=3)
    assert int(klass.tasks[2].train_y.min()) == 20 and klass.tasks[0].n_classes == 30


def test_bad_scenario_and_benchmark() -> None:
    with pytest.raises(ConfigError, match="unknown scenario"):
        make_scenario("split-mnist", "online")
    with pytest.raises(ConfigError, match="unknown benchmark"):
        make_scenario("cifar-1000")
