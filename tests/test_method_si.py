"""Synaptic Intelligence: the path integral by hand, Ω by hand, the penalty, and real Split-MNIST."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import small_mlp, small_split_mnist
from memaware.data.images import ImageDataset
from memaware.data.scenarios import Task
from memaware.errors import ConfigError
from memaware.methods.base import Batch
from memaware.methods.finetune import Finetune
from memaware.methods.si import SI
from memaware.models import MultiHeadClassifier, build_model
from memaware.training import TrainConfig, run_method, training_step

STRENGTH = 0.7
LR = 0.2


def _task(index: int, n: int = 24, seed: int = 0) -> Task:
    generator = torch.Generator().manual_seed(seed + index)
    x = torch.randn(n, 5, generator=generator)
    y = (x[:, index % 5] > 0).long()
    return Task.from_tensors(
        index, f"t{index}", head=index, n_classes=2, train_x=x, train_y=y, test_x=x, test_y=y
    )


def _tiny_model() -> MultiHeadClassifier:
    torch.manual_seed(0)
    return build_model("mlp", (5,), hidden=(4,))


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _train_by_hand(
    model: MultiHeadClassifier, method: SI, task: Task, steps: int = 5
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Plain SGD through the method's hooks; returns the path integral Σ −g·Δθ computed by hand.

    g is the gradient of the cross-entropy alone (autograd on the task loss); Δθ the step plain SGD
    takes on cross-entropy + penalty, −lr·(g + 2cΩ(θ − θ*)), with Ω and θ* read off the method.
    Also returns the wrong integral, with the total gradient g + 2cΩ(θ − θ*) in place of g.
    """
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    omega = method.omega or {}
    anchors = method.penalty.anchors if method.penalty is not None else {}
    reference = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    with_penalty = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for step in range(steps):
        index = torch.arange(step * 4, step * 4 + 8) % len(task.train_y)
        batch = Batch(task.train_x[index], task.train_y[index], task.head)
        params = dict(model.named_parameters())
        task_loss = F.cross_entropy(model(batch.x, task.head), batch.y)
        grads = torch.autograd.grad(task_loss, list(params.values()), allow_unused=True)
        before = _snapshot(model)
        expected_move = {}
        for (name, value), g in zip(before.items(), grads, strict=True):
            g = torch.zeros_like(value) if g is None else g
            penalty_grad = (
                2 * STRENGTH * omega[name] * (value - anchors[name])
                if name in omega
                else torch.zeros_like(value)
            )
            expected_move[name] = -LR * (g + penalty_grad)
            reference[name] += -g * expected_move[name]
            with_penalty[name] += -(g + penalty_grad) * expected_move[name]
        training_step(model, method, optimizer, batch)  # the training loop's step
        for name, value in _snapshot(model).items():
            torch.testing.assert_close(value - before[name], expected_move[name])
    return reference, with_penalty


def test_path_integral_is_sum_of_task_gradient_times_step() -> None:
    model, method, tasks = _tiny_model(), SI(strength=STRENGTH), [_task(0), _task(1)]
    model.add_head(0, 2)
    method.before_task(model, tasks[0], tasks[:1])
    reference, _ = _train_by_hand(model, method, tasks[0])
    for name, w in method.path_integral.items():
        torch.testing.assert_close(w, reference[name], rtol=1e-5, atol=1e-7)
    assert all(float(w.abs().sum()) > 0 for w in method.path_integral.values())


def test_path_integral_excludes_the_penalty_gradient() -> None:
    model, method, tasks = _tiny_model(), SI(strength=STRENGTH), [_task(0), _task(1)]
    model.add_head(0, 2)
    method.before_task(model, tasks[0], tasks[:1])
    _train_by_hand(model, method, tasks[0])
    method.after_task(model, tasks[0], tasks[:1])
    with torch.no_grad():  # move off θ*, so that the penalty pulls from the first step on
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.add_head(1, 2)
    method.before_task(model, tasks[1], tasks[:2])
    old_head = dict(model.named_parameters())["heads.0.weight"].detach().clone()
    assert method.penalty is not None and float(method.penalty().detach()) > 0
    reference, with_penalty = _train_by_hand(model, method, tasks[1])
    path = method.path_integral
    for name, w in path.items():
        torch.testing.assert_close(w, reference[name], rtol=1e-5, atol=1e-8)
    # the total gradient would have credited the parameters quite differently ...
    for name in ("backbone.1.weight", "heads.0.weight"):
        assert float((with_penalty[name] - reference[name]).abs().max()) > 1e-4
    # ... in particular the old head, pulled back by the penalty alone: moved, no task credit
    assert (
        float((dict(model.named_parameters())["heads.0.weight"].detach() - old_head).abs().max())
        > 1e-3
    )
    assert float(path["heads.0.weight"].abs().max()) == 0.0


def test_omega_by_hand_sum_and_anchors() -> None:
    model, method, tasks = _tiny_model(), SI(strength=STRENGTH, damping=0.05), [_task(0), _task(1)]
    model.add_head(0, 2)
    start = _snapshot(model)
    method.before_task(model, tasks[0], tasks[:1])
    _train_by_hand(model, method, tasks[0])
    # Plain SGD without a penalty only makes w grow (lr·g² per step); flip a few entries to
    # see the clamp at work (momentum, Adam or a penalty make some w negative in real runs).
    method.path_integral["backbone.1.weight"].view(-1)[:5] *= -1
    w1 = {n: w.clone() for n, w in method.path_integral.items()}
    method.after_task(model, tasks[0], tasks[:1])
    theta1 = _snapshot(model)
    assert method.omega is not None and set(method.omega) == set(theta1)
    raw = {n: w1[n] / ((theta1[n] - start[n]) ** 2 + 0.05) for n in w1}
    assert bool((raw["backbone.1.weight"] < 0).any())  # the clamp matters here
    for name, value in raw.items():
        torch.testing.assert_close(method.omega[name], value.clamp_min(0))
    assert all(float(w.abs().sum()) == 0 for w in method.path_integral.values())  # w reset
    omega1 = {n: o.clone() for n, o in method.omega.items()}

    model.add_head(1, 2)
    head1_start = _snapshot(model.heads[str(1)])  # a new head's path starts at its creation
    method.before_task(model, tasks[1], tasks[:2])
    assert "heads.1.weight" not in method.omega  # free while task 1 is learned
    _train_by_hand(model, method, tasks[1])
    w2 = {n: w.clone() for n, w in method.path_integral.items()}
    method.after_task(model, tasks[1], tasks[:2])
    theta2 = _snapshot(model)
    previous = {**theta1, **{f"heads.1.{n}": v for n, v in head1_start.items()}}
    for name, w in w2.items():
        new = (w / ((theta2[name] - previous[name]) ** 2 + 0.05)).clamp_min(0)
        torch.testing.assert_close(method.omega[name], omega1.get(name, 0) + new)
    assert method.penalty is not None
    for name, anchor in method.penalty.anchors.items():
        torch.testing.assert_close(anchor, theta2[name])
    assert float(method.omega["heads.1.weight"].sum()) > 0


def test_penalty_value_and_gradient_after_first_task() -> None:
    model, method, task = _tiny_model(), SI(strength=STRENGTH), _task(0)
    model.add_head(0, 2)
    method.before_task(model, task, [task])
    assert method.penalty_value() is None
    _train_by_hand(model, method, task, steps=8)
    method.after_task(model, task, [task])
    assert method.omega is not None and sum(float(o.sum()) for o in method.omega.values()) > 0
    anchors = _snapshot(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    term = method.penalty_value()
    assert term is not None
    params = dict(model.named_parameters())
    expected = sum(
        (STRENGTH * method.omega[n] * (params[n].detach() - anchors[n]) ** 2).sum() for n in params
    )
    assert float(term.detach()) > 0
    torch.testing.assert_close(term.detach(), torch.as_tensor(expected))
    grads = torch.autograd.grad(term, list(params.values()))
    model.zero_grad(set_to_none=True)
    method.after_backward(model)  # the training step's route: straight into .grad
    for (name, param), grad in zip(params.items(), grads, strict=True):
        expected = 2 * STRENGTH * method.omega[name] * (param.detach() - anchors[name])
        torch.testing.assert_close(grad, expected)
        torch.testing.assert_close(param.grad, expected)


def test_options_and_misuse() -> None:
    assert SI(strength=2.0, damping=1e-3).options() == {"strength": 2.0, "damping": 1e-3}
    assert SI.scenarios == ("task", "domain", "class")
    with pytest.raises(ConfigError, match="damping"):
        SI(damping=0.0)
    with pytest.raises(ConfigError, match="strength"):
        SI(strength=-1.0)
    with pytest.raises(ConfigError, match="before_task"):
        SI().after_backward(_tiny_model())
    method = SI()
    method.before_task(model := _tiny_model(), _task(0), [_task(0)])
    with pytest.raises(ConfigError, match="after_backward"):
        method.after_step(model)


def test_si_forgets_less_than_finetune(mnist: ImageDataset) -> None:
    scenario = small_split_mnist(mnist, "task", n_train=3000, n_tasks=5)
    config = TrainConfig(epochs=3, lr=1e-3, seed=0)
    finetune = run_method(Finetune(), scenario, lambda: small_mlp(scenario), config)
    si = run_method(SI(strength=100.0), scenario, lambda: small_mlp(scenario), config)
    assert finetune.accuracy.forgetting() > 0.03
    assert si.accuracy.forgetting() < finetune.accuracy.forgetting() / 3
    assert si.accuracy.average_accuracy() > finetune.accuracy.average_accuracy()


@pytest.mark.parametrize("setting", ["domain", "class"])
def test_single_head_settings_run(mnist: ImageDataset, setting: str) -> None:
    scenario = small_split_mnist(mnist, setting, n_train=300, n_tasks=2)
    method = SI(strength=1.0)
    result = run_method(method, scenario, lambda: small_mlp(scenario), TrainConfig(epochs=1))
    assert result.accuracy.values.shape == (2, 2)
    model = small_mlp(scenario)
    model.add_head(0, scenario.tasks[0].n_classes)
    assert method.omega is not None and set(method.omega) == {
        n for n, _ in model.named_parameters()
    }
