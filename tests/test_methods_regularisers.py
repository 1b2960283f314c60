"""EWC, online EWC, L2 and l-MAS: their importance, anchors and penalty gradients against the
formulas, computed independently; and less forgetting than finetuning on real Split-MNIST."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from helpers import small_split_mnist
from memaware.data.images import ImageDataset
from memaware.data.scenarios import Scenario, Task
from memaware.errors import ConfigError
from memaware.importance import batches, fisher, local_mas
from memaware.methods.base import Method
from memaware.methods.ewc import EWC
from memaware.methods.finetune import Finetune
from memaware.methods.l2 import L2
from memaware.methods.lmas import LocalMAS
from memaware.methods.online_ewc import OnlineEWC
from memaware.methods.regulariser import QuadraticRegulariser
from memaware.models import MultiHeadClassifier, build_model
from memaware.models.multihead import heads_output
from memaware.training import MethodResult, TrainConfig, run_method

Tensors = dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def tasks(mnist: ImageDataset) -> tuple[Task, ...]:
    return small_split_mnist(mnist, n_train=300).tasks


def _model(hidden: tuple[int, ...] = (32,)) -> MultiHeadClassifier:
    torch.manual_seed(0)
    return build_model("mlp", (28, 28), hidden=hidden)


def _params(model: torch.nn.Module) -> Tensors:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator))


def _term_and_grads(method: Method, model: MultiHeadClassifier) -> tuple[float, Tensors]:
    """The method's penalty value and the gradient its training-step hook adds to every parameter
    (zeros where it adds none), checked against autograd of the value."""
    assert isinstance(method, EWC | QuadraticRegulariser)
    term = method.penalty_value()
    assert term is not None
    named = list(model.named_parameters())
    autograd = torch.autograd.grad(term, [p for _, p in named], allow_unused=True)
    model.zero_grad(set_to_none=True)
    method.after_backward(model)  # what the training loop does after backward()
    grads = {name: torch.zeros_like(p) if p.grad is None else p.grad.clone() for name, p in named}
    model.zero_grad(set_to_none=True)
    for (name, _), g in zip(named, autograd, strict=True):
        _close(grads[name], torch.zeros_like(grads[name]) if g is None else g)
    return float(term.detach()), grads


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max()) + 1e-12
    torch.testing.assert_close(
        actual.double(), expected.double(), rtol=1e-4, atol=1e-5 * scale, check_dtype=False
    )


def _quadratic_grad(
    model: MultiHeadClassifier, strength: float, omega: Tensors, anchor: Tensors
) -> Tensors:
    """2λΩ(θ − θ*) for the parameters with an Ω, 0 for the others."""
    return {
        name: 2 * strength * omega[name] * (p.detach() - anchor[name])
        if name in omega
        else torch.zeros_like(p)
        for name, p in model.named_parameters()
    }


METHODS: dict[str, Callable[[], Method]] = {
    "ewc": lambda: EWC(strength=10.0),
    "online-ewc": lambda: OnlineEWC(strength=10.0, gamma=0.7),
    "l2": lambda: L2(strength=0.1),
    "l-mas": lambda: LocalMAS(strength=0.1),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_penalty_is_zero_at_the_anchor_and_grows_once_parameters_move(
    name: str, tasks: tuple[Task, ...]
) -> None:
    method = METHODS[name]()
    model = _model()
    model.add_head(0, 2)
    assert method.penalty_value() is None  # nothing to protect yet
    method.after_task(model, tasks[0], tasks[:1])
    at_anchor, _ = _term_and_grads(method, model)
    assert abs(at_anchor) < 1e-6
    _perturb(model, seed=1)
    moved, grads = _term_and_grads(method, model)
    assert moved > 1e-4, f"{name}: the penalty stays {moved} after the parameters moved"
    assert all(float(g.abs().sum()) > 0 for n, g in grads.items() if n.startswith("backbone"))
    assert method.name == name and set(method.scenarios) == {"task", "domain", "class"}
    assert "strength" in method.options()


def test_ewc_gradient_is_the_sum_over_tasks(tasks: tuple[Task, ...]) -> None:
    strength = 10.0
    method = EWC(strength=strength)
    model = _model()
    snapshots = []
    for t, task in enumerate(tasks[:2]):
        model.add_head(task.head, task.n_classes)
        _perturb(model, seed=10 + t)
        snapshots.append(_params(model))
        method.after_task(model, task, tasks[: t + 1])
    model.add_head(2, 2)  # a head added later has no Fisher: no penalty
    _perturb(model, seed=20)

    # The stored per-task state: F_t on the backbone and the task's own head, θ*_t = θ then.
    assert len(method.fishers) == len(method.anchors) == 2
    for t, (f, anchor) in enumerate(zip(method.fishers, method.anchors, strict=True)):
        assert {n for n in f if n.startswith("heads")} == {f"heads.{t}.weight", f"heads.{t}.bias"}
        assert all(float(v.sum()) > 0 for v in f.values())
        for n, theta in anchor.items():
            torch.testing.assert_close(theta, snapshots[t][n])

    value, grads = _term_and_grads(method, model)
    params = dict(model.named_parameters())
    expected_value = 0.0
    expected = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    for f, anchor in zip(method.fishers, method.anchors, strict=True):
        for n, f_n in f.items():
            delta = params[n].detach().double() - anchor[n].double()
            expected[n] += 2 * strength * f_n.double() * delta
            expected_value += strength * float((f_n.double() * delta.square()).sum())
    assert value == pytest.approx(expected_value, rel=1e-4)
    for n in params:
        _close(grads[n], expected[n])
    assert float(grads["heads.2.weight"].abs().sum()) == 0.0
    assert float(grads["heads.0.weight"].abs().sum()) > 0


def test_ewc_fisher_is_the_exact_fisher_of_the_task_head(tasks: tuple[Task, ...]) -> None:
    model = _model()
    model.add_head(0, 2)
    model.add_head(1, 2)
    task = tasks[1]
    empirical = EWC(labels="empirical")
    empirical.after_task(model, task, tasks[:2])
    reference = fisher(
        model, [(task.train_x, task.train_y)], labels="empirical", outputs=heads_output([1])
    )
    assert set(empirical.fishers[0]) == set(reference)
    for n in reference:
        torch.testing.assert_close(empirical.fishers[0][n], reference[n], rtol=1e-5, atol=1e-9)

    # Labels drawn from the model: the same seed gives the same Fisher, another seed another one.
    same, again, other = EWC(seed=3), EWC(seed=3), EWC(seed=4)
    for method in (same, again, other):
        method.after_task(model, task, tasks[:2])
    w = "backbone.1.weight"
    assert torch.equal(same.fishers[0][w], again.fishers[0][w])
    assert not torch.equal(same.fishers[0][w], other.fishers[0][w])
    assert not torch.equal(same.fishers[0][w], empirical.fishers[0][w])


def test_ewc_max_samples_limits_the_fisher_data(tasks: tuple[Task, ...]) -> None:
    model = _model()
    model.add_head(0, 2)
    method = EWC(labels="empirical", max_samples=50, importance_batch_size=32)
    method.after_task(model, tasks[0], tasks[:1])
    task = tasks[0]
    reference = fisher(
        model,
        [(task.train_x[:50], task.train_y[:50])],
        labels="empirical",
        outputs=heads_output([0]),
    )
    for n in reference:
        torch.testing.assert_close(method.fishers[0][n], reference[n], rtol=1e-5, atol=1e-9)


def test_online_ewc_decays_and_sums_the_fishers(tasks: tuple[Task, ...]) -> None:
    strength, gamma = 5.0, 0.5
    method = OnlineEWC(strength=strength, gamma=gamma, labels="empirical")
    model = _model()
    per_task = []
    for t, task in enumerate(tasks[:2]):
        model.add_head(task.head, task.n_classes)
        _perturb(model, seed=30 + t)
        per_task.append(
            fisher(
                model,
                [(task.train_x, task.train_y)],
                labels="empirical",
                outputs=heads_output([task.head]),
            )
        )
        latest = _params(model)
        method.after_task(model, task, tasks[: t + 1])
    f0, f1 = per_task
    # By hand: F = γ·F_0 + F_1, where a parameter the second task does not reach (head 0) decays.
    by_hand = {n: gamma * f0[n] + f1[n] if n in f1 else gamma * f0[n] for n in f0}
    by_hand.update({n: f1[n] for n in f1 if n not in f0})
    assert method.omega is not None and set(method.omega) == set(by_hand)
    for n, value in by_hand.items():
        _close(method.omega[n], value)
    assert method.penalty is not None
    for n, anchor in method.penalty.anchors.items():  # θ* = the latest parameters only
        torch.testing.assert_close(anchor, latest[n])

    model.add_head(2, 2)
    _perturb(model, seed=40)
    _, grads = _term_and_grads(method, model)
    expected = _quadratic_grad(model, strength, by_hand, latest)
    for n in expected:
        _close(grads[n], expected[n])


def test_online_ewc_with_gamma_one_is_the_plain_sum(tasks: tuple[Task, ...]) -> None:
    model = _model()
    method = OnlineEWC(labels="empirical")
    model.add_head(0, 2)
    method.after_task(model, tasks[0], tasks[:1])
    assert method.omega is not None
    first = {n: v.clone() for n, v in method.omega.items()}
    model.add_head(1, 2)
    _perturb(model, seed=50)
    method.after_task(model, tasks[1], tasks[:2])
    f1 = fisher(
        model, [(tasks[1].train_x, tasks[1].train_y)], labels="empirical", outputs=heads_output([1])
    )
    for n in first:
        _close(method.omega[n], first[n] + f1.get(n, torch.zeros_like(first[n])))


def test_l2_importance_is_one_and_the_anchor_the_previous_task(tasks: tuple[Task, ...]) -> None:
    strength = 0.3
    method = L2(strength=strength)
    model = _model()
    for t, task in enumerate(tasks[:2]):
        model.add_head(task.head, task.n_classes)
        _perturb(model, seed=60 + t)
        latest = _params(model)
        method.after_task(model, task, tasks[: t + 1])
        assert method.omega is not None
        assert set(method.omega) == set(dict(model.named_parameters()))  # every parameter present
        assert all(torch.equal(v, torch.ones_like(v)) for v in method.omega.values())  # never 2
    assert method.penalty is not None
    for n, anchor in method.penalty.anchors.items():
        torch.testing.assert_close(anchor, latest[n])
    model.add_head(2, 2)
    _perturb(model, seed=70)
    value, grads = _term_and_grads(method, model)
    ones = {n: torch.ones_like(v) for n, v in latest.items()}
    expected = _quadratic_grad(model, strength, ones, latest)
    for n in expected:
        _close(grads[n], expected[n])
    params = dict(model.named_parameters())
    by_hand = sum(float((params[n].detach() - latest[n]).square().sum()) for n in latest)
    assert value == pytest.approx(strength * by_hand, rel=1e-4)


def test_lmas_importance_is_local_mas_of_the_task_head(tasks: tuple[Task, ...]) -> None:
    strength = 0.2
    method = LocalMAS(strength=strength)
    model = _model()
    model.add_head(0, 2)
    method.after_task(model, tasks[0], tasks[:1])
    first = local_mas(model, batches(tasks[0].train_x, 256))  # head 0 is the model's default
    assert method.omega is not None and set(method.omega) == set(first)
    for n in first:
        _close(method.omega[n], first[n])

    model.add_head(1, 2)
    _perturb(model, seed=80)
    latest = _params(model)
    method.after_task(model, tasks[1], tasks[:2])
    x = tasks[1].train_x
    second = local_mas(model, batches(x, 256))
    for n in second:
        if n.startswith("backbone"):
            _close(method.omega[n], first[n] + second[n])
        else:  # head 0 is not run on task 1's data: it keeps its Ω
            _close(method.omega[n], first[n])
    # Head 1's Ω by the formula: (1/N) Σ_k |2·y_k a_kᵀ|, a = features (post-ReLU, ≥ 0), y = head
    # 1's raw logits (no ReLU follows the head).
    with torch.no_grad():
        model.eval()
        features = model.backbone(x)
        y = model.heads["1"](features)
    _close(method.omega["heads.1.weight"], 2 * y.abs().T @ features / len(x))
    _close(method.omega["heads.1.bias"], 2 * y.abs().mean(0))

    _perturb(model, seed=90)
    _, grads = _term_and_grads(method, model)
    expected = _quadratic_grad(model, strength, method.omega, latest)
    for n in expected:
        _close(grads[n], expected[n])


def test_invalid_options_are_refused() -> None:
    with pytest.raises(ConfigError, match="strength"):
        EWC(strength=-1.0)
    with pytest.raises(ConfigError, match="labels"):
        EWC(labels="pred")
    with pytest.raises(ConfigError, match="gamma"):
        OnlineEWC(gamma=1.5)
    with pytest.raises(ConfigError, match="strength"):
        L2(strength=-0.1)
    with pytest.raises(ConfigError, match="importance_batch_size"):
        LocalMAS(importance_batch_size=0)
    assert OnlineEWC(gamma=0.9).options()["gamma"] == 0.9
    assert EWC().options()["labels"] == "true"


@pytest.mark.parametrize("setting", ["domain", "class"])
def test_single_head_settings_run(mnist: ImageDataset, setting: str) -> None:
    scenario = small_split_mnist(mnist, setting, n_train=200, n_tasks=2)
    for make in METHODS.values():
        result = run_method(
            make(),
            scenario,
            lambda: build_model("mlp", scenario.input_shape, hidden=(32,)),
            TrainConfig(epochs=1),
        )
        assert result.accuracy.values.shape == (2, 2)


# Five real Split-MNIST tasks, 3000 training images each: enough for finetuning to forget.
@pytest.fixture(scope="module")
def split_mnist(mnist: ImageDataset) -> Scenario:
    return small_split_mnist(mnist, n_train=3000, n_tasks=5)


CONFIG = TrainConfig(epochs=3, lr=1e-3, seed=0)


def _run(method: Method, scenario: Scenario) -> MethodResult:
    return run_method(
        method,
        scenario,
        lambda: build_model("mlp", scenario.input_shape, hidden=(100, 100)),
        CONFIG,
    )


@pytest.fixture(scope="module")
def finetune(split_mnist: Scenario) -> MethodResult:
    result = _run(Finetune(), split_mnist)
    assert result.accuracy.forgetting() > 0.03
    return result


INTEGRATION: dict[str, Callable[[], Method]] = {
    "ewc": lambda: EWC(strength=100.0),
    "online-ewc": lambda: OnlineEWC(strength=100.0),
    "l2": lambda: L2(strength=0.03),
    "l-mas": lambda: LocalMAS(strength=0.1),
}


@pytest.mark.parametrize("name", list(INTEGRATION))
def test_forgets_less_than_finetune(
    name: str, split_mnist: Scenario, finetune: MethodResult
) -> None:
    result = _run(INTEGRATION[name](), split_mnist)
    # seed 0 forgets (%): finetune 4.95; EWC 0.65, online EWC 1.60, L2 2.35, l-MAS 0.60
    assert result.accuracy.forgetting() < 0.6 * finetune.accuracy.forgetting()
    assert result.accuracy.average_accuracy() > finetune.accuracy.average_accuracy()
