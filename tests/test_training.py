"""The task loop on real MNIST: MAS forgets less than finetuning; same seed, same numbers; past
heads stay still; optimizers, schedules and best-epoch selection."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from helpers import small_mlp, small_split_mnist
from memaware.cli import main as cli
from memaware.data.images import ImageDataset
from memaware.data.scenarios import Task
from memaware.errors import ConfigError
from memaware.methods import MAS, Finetune, make_method
from memaware.methods.base import Batch
from memaware.models import MultiHeadClassifier, build_model
from memaware.training import TrainConfig, loop, run_method, train_task, training_step
from memaware.training.experiment import ExperimentSpec
from memaware.training.loop import check_model_fits, past_head_parameters


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


# --- past heads stay still, under any optimizer ------------------------------------------------


class _HeadRecorder(MAS):
    """MAS that keeps a copy of every head after each task."""

    def __init__(self) -> None:
        super().__init__(strength=1.0)
        self.heads_after: list[dict[str, torch.Tensor]] = []

    def after_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        super().after_task(model, task, seen)
        self.heads_after.append({k: v.clone() for k, v in model.heads.state_dict().items()})


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(epochs=1, seed=0),  # one Adam kept across tasks
        TrainConfig(epochs=1, seed=0, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-3),
    ],
    ids=["adam", "sgd-momentum-weight-decay"],
)
def test_past_heads_stay_bit_identical(mnist: ImageDataset, config: TrainConfig) -> None:
    # MAS's penalty writes a zero gradient into the past heads; neither Adam's moments nor
    # momentum or weight decay may move them.
    scenario = small_split_mnist(mnist, n_train=300, n_tasks=3)
    method = _HeadRecorder()
    run_method(method, scenario, lambda: small_mlp(scenario), config)
    after = method.heads_after
    for key in ("0.weight", "0.bias"):
        assert torch.equal(after[1][key], after[0][key])
        assert torch.equal(after[2][key], after[0][key])
    assert torch.equal(after[2]["1.weight"], after[1]["1.weight"])


def test_a_shared_head_keeps_training(mnist: ImageDataset) -> None:
    scenario = small_split_mnist(mnist, "domain", n_train=300, n_tasks=2)
    method = _HeadRecorder()
    run_method(method, scenario, lambda: small_mlp(scenario), TrainConfig(epochs=1))
    assert not torch.equal(method.heads_after[1]["0.weight"], method.heads_after[0]["0.weight"])


def test_a_past_head_the_loss_reaches_is_trained(mnist: ImageDataset) -> None:
    # LwF distils the old heads' outputs: the loss reaches them, so they move.
    scenario = small_split_mnist(mnist, n_train=300, n_tasks=2)
    torch.manual_seed(0)
    model = small_mlp(scenario)
    for task in scenario.tasks:
        model.add_head(task.head, task.n_classes)
    lwf = make_method("lwf")
    lwf.before_task(model, scenario.tasks[1], scenario.tasks)
    before = model.heads["0"].weight.detach().clone()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    task = scenario.tasks[1]
    past = past_head_parameters(model, [task])
    assert {id(p) for p in past} == {id(p) for p in model.heads["0"].parameters()}
    training_step(model, lwf, optimizer, Batch(task.train_x[:64], task.train_y[:64], 1), past)
    assert not torch.equal(model.heads["0"].weight, before)


# --- optimizers, schedules, model selection ------------------------------------------------------


def test_sgd_trains(mnist: ImageDataset) -> None:
    # the authors' Split-MNIST setting: lr 0.01, momentum 0.9, batches of 150
    scenario = small_split_mnist(mnist, n_train=3000, n_tasks=2)
    config = TrainConfig(epochs=2, optimizer="sgd", lr=0.01, momentum=0.9, batch_size=150)
    result = run_method(make_method("finetune"), scenario, lambda: small_mlp(scenario), config)
    assert (result.accuracy.learned() > 0.85).all()  # chance is 0.5


def test_default_optimizer_is_adam_at_lr() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    adam = TrainConfig().make_optimizer(params)
    assert type(adam) is torch.optim.Adam and adam.defaults["lr"] == 1e-3
    assert adam.defaults["weight_decay"] == 0
    sgd = TrainConfig(optimizer="sgd", lr=0.5, momentum=0.9, weight_decay=0.1).make_optimizer(
        params
    )
    assert type(sgd) is torch.optim.SGD
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"]) == (
        0.5,
        0.9,
        0.1,
    )


def test_learning_rate_schedule() -> None:
    config = TrainConfig(
        lr=1e-3, lr_schedule="step", lr_decay_epochs=2, first_task_lr=1e-2, first_task_epochs=3
    )
    assert [config.learning_rate(0, e) for e in range(3)] == pytest.approx([1e-2, 1e-2, 1e-3])
    assert [config.learning_rate(1, e) for e in range(5)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-4, 1e-5]
    )
    assert (config.task_epochs(0), config.task_epochs(1), config.task_epochs(4)) == (3, 4, 4)
    assert TrainConfig(lr=0.1).learning_rate(3, 100) == 0.1


def _one_task_setup(
    mnist: ImageDataset, config: TrainConfig, n_train: int = 300
) -> tuple[MultiHeadClassifier, Task, torch.optim.Optimizer]:
    task = small_split_mnist(mnist, n_train=n_train, n_tasks=1).tasks[0]
    torch.manual_seed(0)
    model = build_model("mlp", tuple(task.train_x.shape[1:]), hidden=(20,))
    model.add_head(task.head, task.n_classes)
    return model, task, config.make_optimizer(model.parameters())


def test_step_decay_changes_the_learning_rate_at_the_right_epoch(mnist: ImageDataset) -> None:
    config = TrainConfig(
        epochs=5, lr=0.1, lr_schedule="step", lr_decay_epochs=2, lr_decay_factor=0.5, optimizer="sgd"
    )
    model, task, optimizer = _one_task_setup(mnist, config)
    seen: list[float] = []  # the rate each epoch ran at, read when the epoch ends
    train_task(
        model,
        make_method("finetune"),
        [task],
        config,
        torch.Generator().manual_seed(0),
        optimizer,
        lambda: seen.append(optimizer.param_groups[0]["lr"]),
        index=1,
    )
    assert seen == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_first_task_overrides_in_the_loop(mnist: ImageDataset) -> None:
    scenario = small_split_mnist(mnist, n_train=200, n_tasks=2)
    config = TrainConfig(epochs=2, first_task_epochs=3, first_task_lr=0.05, lr=0.01)
    epochs: list[int] = []
    result = run_method(_EpochCounter(epochs), scenario, lambda: small_mlp(scenario), config)
    assert epochs == [3, 2] and result.validation_accuracy == ((), ())


class _EpochCounter(Finetune):
    """Finetuning that counts the epochs of each task from its steps."""

    def __init__(self, epochs: list[int]) -> None:
        self.epochs, self.steps = epochs, 0

    def after_step(self, model: MultiHeadClassifier) -> None:
        self.steps += 1

    def after_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        self.epochs.append(self.steps // -(-len(task.train_y) // 128))
        self.steps = 0


def _snapshots(
    model: MultiHeadClassifier, optimizer: torch.optim.Optimizer, into: list[Any]
) -> Callable[[], None]:
    def take() -> None:
        into.append(
            (
                {k: v.clone() for k, v in model.state_dict().items()},
                copy.deepcopy(optimizer.state_dict()["state"]),
            )
        )

    return take


def test_best_epoch_is_restored_with_its_optimizer_state(
    mnist: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scripted validation scores: the best epoch is the second (index 1), the first of two equals.
    scripted = iter([0.5, 0.9, 0.7, 0.9])
    monkeypatch.setattr(loop, "_accuracy_in_passing", lambda *_: next(scripted))
    config = TrainConfig(epochs=4, optimizer="sgd", lr=0.05, momentum=0.9)
    model, task, optimizer = _one_task_setup(mnist, config)
    taken: list[Any] = []
    scores = train_task(
        model,
        make_method("finetune"),
        [task],
        config,
        torch.Generator().manual_seed(0),
        optimizer,
        _snapshots(model, optimizer, taken),
        validation=[task],
    )
    assert scores == [0.5, 0.9, 0.7, 0.9]
    best_state, best_moments = taken[1]
    for name, value in model.state_dict().items():
        assert torch.equal(value, best_state[name])
    last_state = taken[-1][0]
    assert any(not torch.equal(v, last_state[n]) for n, v in model.state_dict().items())
    for key, state in optimizer.state_dict()["state"].items():
        assert torch.equal(state["momentum_buffer"], best_moments[key]["momentum_buffer"])


def test_best_epoch_selection_on_a_held_out_split(mnist: ImageDataset) -> None:
    scenario = small_split_mnist(mnist, n_train=500, n_tasks=2)
    config = TrainConfig(epochs=3, select_best_epoch=True, validation_fraction=0.2)
    sizes: list[int] = []
    result = run_method(_TrainingSizes(sizes), scenario, lambda: small_mlp(scenario), config)
    assert sizes == [400, 400]  # the methods see the training data minus the validation split
    assert [len(s) for s in result.validation_accuracy] == [3, 3]
    assert all(0.5 < v <= 1.0 for s in result.validation_accuracy for v in s)
    # the test sets are untouched: the matrix is measured on them, as without selection
    assert result.accuracy.values.shape == (2, 2) and (result.accuracy.learned() > 0.8).all()


class _TrainingSizes(Finetune):
    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes

    def before_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        self.sizes.append(len(task.train_y))
        assert len(task.test_y) == 500


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"lr": float("nan")}, "learning rate lr"),
        ({"lr": float("inf")}, "learning rate lr"),
        ({"lr": 0.0}, "learning rate lr"),
        ({"first_task_lr": -1.0}, "first_task_lr"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"batch_size": True}, "batch_size"),
        ({"first_task_epochs": 0}, "first_task_epochs"),
        ({"lr_schedule": "step", "lr_decay_epochs": 0}, "lr_decay_epochs"),
        ({"lr_decay_epochs": 3}, "lr_decay_epochs is the period of lr_schedule='step'"),
        ({"lr_schedule": "step"}, "give both or neither"),
        ({"lr_schedule": "linear"}, "unknown lr_schedule 'linear'"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
        ({"amp": "fp8"}, "unknown amp 'fp8'"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"grad_clip": float("nan")}, "grad_clip"),
        ({"workers": -1}, "workers"),
        ({"lr_decay_factor": 0.0}, "lr_decay_factor"),
        ({"lr_decay_factor": 2.0}, "lr_decay_factor"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"optimizer": "sgd", "momentum": 1.0}, "momentum"),
        ({"momentum": 0.9}, "momentum is an option of the sgd optimizer"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"weight_decay": float("nan")}, "weight_decay"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"validation_fraction": 0.0}, "validation_fraction"),
    ],
)
def test_config_rejects_bad_values(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**fields)


def test_cli_flags_reach_the_training_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[TrainConfig] = []

    def stop(spec: ExperimentSpec, *args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.append(spec.train)
        raise ConfigError("stopped before training")

    monkeypatch.setattr(cli, "run_experiment", stop)
    flags = "--optimizer sgd --momentum 0.9 --weight-decay 1e-5 --lr 0.001 --lr-decay-epochs 7"
    flags += " --first-task-lr 0.01 --first-task-epochs 10 --epochs 20 --batch-size 150"
    flags += " --select-best-epoch --validation 0.2 --no-progress --grad-clip 5 --amp bf16"
    flags += " --workers 2 --device auto"
    assert cli.main(["run", *flags.split(), "--out", str(tmp_path)]) == 2
    assert seen == [
        TrainConfig(
            epochs=20,
            batch_size=150,
            lr=0.001,
            optimizer="sgd",
            momentum=0.9,
            weight_decay=1e-5,
            lr_schedule="step",
            lr_decay_epochs=7,
            first_task_lr=0.01,
            first_task_epochs=10,
            select_best_epoch=True,
            validation_fraction=0.2,
            grad_clip=5.0,
            amp="bf16",
            workers=2,
            device="auto",
        )
    ]


@pytest.mark.parametrize(
    ("flags", "match"),
    [
        ("--momentum 0.9", "momentum is an option of the sgd optimizer"),
        ("--lr nan", "learning rate lr"),
        ("--validation 1.5", "validation_fraction"),
    ],
)
def test_cli_rejects_bad_training_flags_before_training(
    flags: str, match: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["compare", *flags.split(), "--out", str(tmp_path), "--no-progress"]) == 2
    assert match in capsys.readouterr().err
