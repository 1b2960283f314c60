"""IMM: the mean/mode merges, the swap between merged and trained parameters, L2-transfer, MNIST."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import small_mlp, small_split_mnist
from memaware.data.images import ImageDataset
from memaware.data.scenarios import Scenario, Task
from memaware.errors import ConfigError
from memaware.methods.finetune import Finetune
from memaware.methods.imm import MeanIMM, ModeIMM, load_values, mean_imm, mode_imm
from memaware.models import MultiHeadClassifier
from memaware.training import MethodResult, TrainConfig, run_method
from memaware.training.loop import include_new_parameters

T = torch.tensor


def _task(index: int, head: int, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed + index)
    x = torch.randn(16, 3, generator=g)
    y = torch.randint(0, 2, (16,), generator=g)
    return Task.from_tensors(index, f"t{index}", head, 2, x, y, x, y)


def _tiny() -> MultiHeadClassifier:
    torch.manual_seed(0)
    model = MultiHeadClassifier(nn.Sequential(nn.Linear(3, 2), nn.ReLU()), feature_dim=2)
    model.add_head(0, 2)
    return model


def _values(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Hand-set parameter values ("what training left"), distinct per seed."""
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class _HandFisher(ModeIMM):
    """mode-IMM whose Fisher per task is given, not measured."""

    def __init__(self, fishers: list[dict[str, torch.Tensor]], strength: float = 0.0) -> None:
        super().__init__(strength=strength, eps=0.0)
        self.given = fishers

    def task_fisher(self, model: MultiHeadClassifier, task: Task) -> Mapping[str, torch.Tensor]:
        return self.given[task.index]


# --- the merge formulas -------------------------------------------------------------------------

# Three models; head 1 was created at the second task, so only models 2 and 3 hold it.
MODELS = [
    {"backbone.w": T([1.0, 2.0]), "backbone.b": T([1.0]), "heads.0.w": T([3.0])},
    {
        "backbone.w": T([3.0, 6.0]),
        "backbone.b": T([2.0]),
        "heads.0.w": T([3.0]),
        "heads.1.w": T([10.0]),
    },
    {
        "backbone.w": T([5.0, -2.0]),
        "backbone.b": T([6.0]),
        "heads.0.w": T([3.0]),
        "heads.1.w": T([20.0]),
    },
]
FISHERS = [
    {"backbone.w": T([1.0, 1.0]), "backbone.b": T([0.0]), "heads.0.w": T([2.0])},
    {
        "backbone.w": T([2.0, 0.0]),
        "backbone.b": T([0.0]),
        "heads.0.w": T([0.5]),
        "heads.1.w": T([1.0]),
    },
    {
        "backbone.w": T([1.0, 3.0]),
        "backbone.b": T([0.0]),
        "heads.0.w": T([0.1]),
        "heads.1.w": T([3.0]),
    },
]


def test_mean_imm_is_the_average_over_the_models_holding_each_parameter() -> None:
    merged = mean_imm(MODELS)
    torch.testing.assert_close(merged["backbone.w"], T([3.0, 2.0]))  # (1+3+5)/3, (2+6−2)/3
    torch.testing.assert_close(merged["backbone.b"], T([3.0]))
    torch.testing.assert_close(merged["heads.0.w"], T([3.0]))  # identical copies stay
    torch.testing.assert_close(merged["heads.1.w"], T([15.0]))  # (10+20)/2: models 2 and 3 only


def test_mode_imm_is_the_fisher_weighted_average() -> None:
    merged = mode_imm(MODELS, FISHERS)
    # (1·1 + 2·3 + 1·5)/(1+2+1) = 3;  (1·2 + 0·6 + 3·(−2))/(1+0+3) = −1
    torch.testing.assert_close(merged["backbone.w"], T([3.0, -1.0]))
    torch.testing.assert_close(merged["heads.1.w"], T([17.5]))  # (1·10 + 3·20)/(1+3)
    torch.testing.assert_close(merged["heads.0.w"], T([3.0]))
    torch.testing.assert_close(merged["backbone.b"], T([3.0]))  # no precision anywhere: the mean
    # uniform α cancels: scaling every Fisher changes nothing
    scaled = mode_imm(MODELS, [{n: 7 * f for n, f in fs.items()} for fs in FISHERS])
    torch.testing.assert_close(scaled["backbone.w"], merged["backbone.w"])


def test_merge_errors() -> None:
    with pytest.raises(ConfigError, match="shapes"):
        mean_imm([{"w": T([1.0])}, {"w": T([1.0, 2.0])}])
    with pytest.raises(ConfigError, match="no entry"):
        mode_imm(MODELS, [FISHERS[0], FISHERS[1], {"backbone.w": T([1.0, 1.0])}])
    with pytest.raises(ConfigError, match="one Fisher per model"):
        mode_imm(MODELS, FISHERS[:2])
    with pytest.raises(ConfigError, match="at least one"):
        mean_imm([])
    for bad in ({"strength": -1.0}, {"eps": -1.0}, {"importance_batch_size": 0}):
        with pytest.raises(ConfigError):
            ModeIMM(**bad)
    with pytest.raises(ConfigError, match="has no option eps"):
        MeanIMM(eps=1e-8)  # mean-IMM measures no Fisher


# --- the hooks: merged for evaluation, trained for training -------------------------------------


@pytest.mark.parametrize("merge", ["mean", "mode"])
def test_evaluation_sees_the_merge_and_training_resumes_from_the_trained_parameters(
    merge: str,
) -> None:
    model = _tiny()
    tasks = [_task(0, 0), _task(1, 1), _task(2, 2)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    fishers: list[dict[str, torch.Tensor]] = []
    imm = MeanIMM(strength=0.0) if merge == "mean" else _HandFisher(fishers, strength=0.0)
    objects = {n: id(p) for n, p in model.named_parameters()}

    imm.before_task(model, tasks[0], tasks[:1])
    # one real step creates Adam state, then "training" leaves the hand-set values A
    F.cross_entropy(model(tasks[0].train_x, 0), tasks[0].train_y).backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    a = _values(model, 1)
    load_values(model, a)
    fishers.append({n: torch.rand(v.shape) + 0.1 for n, v in a.items()})
    imm.after_task(model, tasks[0], tasks[:1])
    torch.testing.assert_close(_params(model), a)  # one model: the merge is itself

    model.add_head(1, 2)
    include_new_parameters(optimizer, model)
    imm.before_task(model, tasks[1], tasks[:2])
    for name, value in a.items():
        assert torch.equal(model.get_parameter(name), value)
    b = _values(model, 2)
    load_values(model, b)
    # task 1's Fisher has no entry for head 0 (not in task 1's output): it counts as 0 (eps=0)
    fishers.append(
        {n: torch.rand(v.shape) + 0.1 for n, v in b.items() if not n.startswith("heads.0")}
    )
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    imm.after_task(model, tasks[1], tasks[:2])

    merged = _params(model)
    for name in a:  # backbone and head 0: merged over both models
        if merge == "mean":
            expected = (a[name] + b[name]) / 2
        else:
            f_b = fishers[1].get(name, torch.zeros_like(b[name]))
            expected = (fishers[0][name] * a[name] + f_b * b[name]) / (fishers[0][name] + f_b)
        torch.testing.assert_close(merged[name], expected)
    if merge == "mode":  # head 0 has no precision in model 2, so it keeps model 1's value
        torch.testing.assert_close(merged["heads.0.weight"], a["heads.0.weight"])
    torch.testing.assert_close(merged["heads.1.weight"], b["heads.1.weight"])  # one holder
    assert not torch.allclose(merged["backbone.0.weight"], b["backbone.0.weight"])

    # the swap keeps the Parameter objects and leaves the optimizer state alone
    assert all(objects[n] == id(p) for n, p in model.named_parameters() if n in objects)
    for p, s in optimizer.state.items():
        for k, v in s.items():
            assert torch.equal(v, state[id(p)][k])

    model.add_head(2, 2)
    imm.before_task(model, tasks[2], tasks)
    for name, value in b.items():
        assert torch.equal(model.get_parameter(name), value)  # exactly the trained θ_2
    assert len(imm.trained) == 2


def test_without_weight_transfer_each_task_restarts_from_the_initial_parameters() -> None:
    model = _tiny()
    initial = _params(model)
    tasks = [_task(0, 0), _task(1, 1)]
    imm = MeanIMM(strength=0.0, weight_transfer=False)
    imm.before_task(model, tasks[0], tasks[:1])
    a = _values(model, 1)
    load_values(model, a)
    imm.after_task(model, tasks[0], tasks[:1])
    model.add_head(1, 2)
    imm.before_task(model, tasks[1], tasks)
    for name, value in initial.items():
        expected = a[name] if name.startswith("heads.0") else value  # old head: trained value
        assert torch.equal(model.get_parameter(name), expected)

    # domain-incremental: the shared head is trained again, so it restarts too
    model = _tiny()
    initial = _params(model)
    domain = [_task(0, 0), _task(1, 0)]
    imm.before_task(model, domain[0], domain[:1])
    load_values(model, _values(model, 1))
    imm.after_task(model, domain[0], domain[:1])
    imm.before_task(model, domain[1], domain)
    for name, value in initial.items():
        assert torch.equal(model.get_parameter(name), value)


# --- L2-transfer ---------------------------------------------------------------------------------


def test_l2_transfer_term_and_its_gradient() -> None:
    strength = 0.3
    model = _tiny()
    tasks = [_task(0, 0), _task(1, 1)]
    imm = MeanIMM(strength=strength)
    imm.before_task(model, tasks[0], tasks[:1])
    assert imm.penalty is None  # nothing to pull towards on the first task
    previous = _values(model, 1)
    load_values(model, previous)
    imm.after_task(model, tasks[0], tasks[:1])
    model.add_head(1, 2)
    imm.before_task(model, tasks[1], tasks)

    moved = {n: v + torch.randn(v.shape) for n, v in previous.items()}
    load_values(model, moved)
    assert imm.penalty is not None
    term = imm.penalty()
    backbone = [n for n in previous if n.startswith("backbone.")]
    expected = strength * sum(((moved[n] - previous[n]) ** 2).sum() for n in backbone)
    torch.testing.assert_close(term, torch.as_tensor(expected))
    imm.after_backward(model)  # the training step adds the gradient straight to .grad
    for name in backbone:
        grad = model.get_parameter(name).grad
        assert grad is not None
        torch.testing.assert_close(grad, 2 * strength * (moved[name] - previous[name]))
    # old head (not trained by task 1) and new head (no θ_{t−1}) are outside the term
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("heads."))

    # domain-incremental: the shared head is trained and anchored as well
    model = _tiny()
    domain = [_task(0, 0), _task(1, 0)]
    imm.before_task(model, domain[0], domain[:1])
    imm.after_task(model, domain[0], domain[:1])
    imm.before_task(model, domain[1], domain)
    assert imm.penalty is not None and set(imm.penalty.names) == {
        n for n, _ in model.named_parameters()
    }
    zero = ModeIMM(strength=0.0)
    zero.before_task(model, domain[0], domain[:1])
    zero.after_task(model, domain[0], domain[:1])
    zero.before_task(model, domain[1], domain)
    assert zero.penalty is None


# --- the real Fisher -----------------------------------------------------------------------------


def test_measured_fisher_covers_the_model_and_is_reproducible() -> None:
    tasks = [_task(0, 0), _task(1, 1)]
    runs = []
    for _ in range(2):
        model = _tiny()
        imm = ModeIMM(eps=1e-8)
        for i, task in enumerate(tasks):
            model.add_head(task.head, 2)
            imm.before_task(model, task, tasks[: i + 1])
            imm.after_task(model, task, tasks[: i + 1])
        runs.append(imm.fishers)
    last = runs[0][1]
    assert set(last) == {n for n, _ in model.named_parameters()}
    assert torch.equal(last["heads.0.weight"], torch.full((2, 2), 1e-8))  # not in task 1's output
    assert float(last["heads.1.weight"].sum()) > 1e-6
    assert all(bool((f >= 1e-8).all()) for f in last.values())
    for first, second in zip(runs[0], runs[1], strict=True):
        for name in first:
            assert torch.equal(first[name], second[name])


# --- real MNIST ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def five_tasks(mnist: ImageDataset) -> Scenario:
    return small_split_mnist(mnist, "task", n_train=3000, n_tasks=5)


@pytest.fixture(scope="module")
def finetuned(five_tasks: Scenario) -> MethodResult:
    config = TrainConfig(epochs=3, lr=1e-3, seed=0)
    return run_method(Finetune(), five_tasks, lambda: small_mlp(five_tasks), config)


def test_mode_imm_forgets_less_than_finetune(five_tasks: Scenario, finetuned: MethodResult) -> None:
    config = TrainConfig(epochs=3, lr=1e-3, seed=0)
    imm = run_method(ModeIMM(), five_tasks, lambda: small_mlp(five_tasks), config)
    assert finetuned.accuracy.forgetting() > 0.03
    assert imm.accuracy.forgetting() < finetuned.accuracy.forgetting() / 3
    assert imm.accuracy.average_accuracy() > finetuned.accuracy.average_accuracy()
    assert imm.accuracy.final()[0] > finetuned.accuracy.final()[0]


def test_mean_imm_forgets_less_than_finetune(five_tasks: Scenario, finetuned: MethodResult) -> None:
    # Mean-IMM keeps old tasks but pays on the newest (averaging 5 models dilutes the last one):
    # its average accuracy is about finetuning's, so only forgetting is compared. Forgetting
    # counts from the trained (pre-merge) model, so the merge's own cost is in it (0.020 against
    # finetuning's 0.049 here; from the merged models alone it would read -0.002).
    config = TrainConfig(epochs=3, lr=1e-3, seed=0)
    imm = run_method(MeanIMM(), five_tasks, lambda: small_mlp(five_tasks), config)
    assert imm.accuracy.forgetting() < finetuned.accuracy.forgetting() / 2
    assert imm.accuracy.final()[0] > finetuned.accuracy.final()[0]


@pytest.mark.parametrize("setting", ["domain", "class"])
def test_domain_and_class_settings_run(mnist: ImageDataset, setting: str) -> None:
    scenario = small_split_mnist(mnist, setting, n_train=300, n_tasks=2)
    result = run_method(ModeIMM(), scenario, lambda: small_mlp(scenario), TrainConfig(epochs=1))
    values = result.accuracy.values
    assert values.shape == (2, 2) and np.isfinite(values[1]).all()


def test_drop_is_measured_against_the_model_trained_before_merging(mnist: ImageDataset) -> None:
    # R[j][j] is the merged model's accuracy; the drop counts from the model trained on task j
    # before merging, so the last task's drop is not 0 by construction (the MAS paper's Figure 3
    # gives IMM one). Finetuning leaves its weights after training: trained = the diagonal.
    scenario = small_split_mnist(mnist, "task", n_train=1000, n_tasks=3)
    config = TrainConfig(epochs=2, seed=0)
    imm = run_method(MeanIMM(), scenario, lambda: small_mlp(scenario), config).accuracy
    assert imm.trained is not None
    assert imm.drop()[-1] == imm.values[-1, -1] - imm.trained[-1]
    assert imm.drop()[-1] < 0  # three models averaged dilute the newest
    np.testing.assert_array_equal(imm.drop(), imm.values[-1] - imm.trained)
    plain = run_method(Finetune(), scenario, lambda: small_mlp(scenario), config).accuracy
    assert plain.trained is not None
    np.testing.assert_array_equal(plain.trained, np.diag(plain.values))
    assert plain.drop()[-1] == 0
