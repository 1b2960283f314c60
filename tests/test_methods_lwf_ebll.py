"""LwF and EBLL: the distillation and code terms against their formulas, warm-up, autoencoders, real MNIST."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from helpers import small_mlp, small_split_mnist
from memaware.data.images import ImageDataset
from memaware.data.scenarios import Scenario, Task
from memaware.errors import ConfigError
from memaware.methods.base import Batch
from memaware.methods.ebll import EBLL, Autoencoder, code_loss, train_autoencoder
from memaware.methods.finetune import Finetune
from memaware.methods.lwf import LwF, backbone_features, distillation_loss
from memaware.models import MultiHeadClassifier, build_model
from memaware.training import TrainConfig, run_method
from memaware.training.loop import MethodResult

IN = 6


def _task(index: int, head: int, n_classes: int = 3, n: int = 96) -> Task:
    """Synthetic inputs whose label is the argmax of a fixed linear map (learnable by a head)."""
    generator = torch.Generator().manual_seed(100 + index)
    x = torch.randn(n, IN, generator=generator)
    rule = torch.randn(IN, n_classes, generator=generator)
    y = (x @ rule).argmax(-1)
    return Task.from_tensors(index, f"t{index}", head, n_classes, x, y, x[:16], y[:16])


def _model(heads: dict[int, int]) -> MultiHeadClassifier:
    torch.manual_seed(0)
    model = build_model("mlp", (IN,), hidden=(16, 12))
    for head, n_classes in heads.items():
        model.add_head(head, n_classes)
    return model


def _drift(model: MultiHeadClassifier, scale: float = 0.3) -> None:
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for param in model.backbone.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))


def _grads(loss: torch.Tensor, model: MultiHeadClassifier) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    p = F.softmax(logits / temperature, dim=-1)
    return -(p * p.log()).sum(-1).mean()


# --- LwF -------------------------------------------------------------------------------------


def test_lwf_term_none_first_then_zero_gradient_until_the_student_drifts() -> None:
    t0, t1 = _task(0, 0), _task(1, 1)
    model = _model({0: 3})
    lwf = LwF(strength=0.7, temperature=2.0, warmup_epochs=0)
    lwf.before_task(model, t0, [t0])
    assert lwf.loss_term(model, Batch(t0.train_x, t0.train_y, 0)) is None
    model.add_head(1, 3)
    lwf.before_task(model, t1, [t0, t1])
    assert lwf.old_heads == [0]
    batch = Batch(t1.train_x, t1.train_y, 1)
    term = lwf.loss_term(model, batch)
    assert term is not None
    # student == teacher: the cross-entropy equals λ T² H(p̃) and its gradient vanishes
    entropy = _entropy(model(t1.train_x, 0).detach(), 2.0)
    torch.testing.assert_close(term.detach(), 0.7 * 4 * entropy)
    assert max(float(g.abs().max()) for g in _grads(term, model)) < 1e-6
    _drift(model)
    drifted = lwf.loss_term(model, batch)
    assert drifted is not None
    assert float(drifted.detach()) > float(term.detach()) + 1e-3
    assert max(float(g.abs().max()) for g in _grads(drifted, model)) > 1e-3


def test_distillation_gradient_matches_the_formula() -> None:
    t0, t1, t2 = _task(0, 0), _task(1, 1, n_classes=4), _task(2, 2, n_classes=2)
    model = _model({0: 3, 1: 4, 2: 2})
    strength, temperature = 1.7, 3.0
    lwf = LwF(strength=strength, temperature=temperature, warmup_epochs=0)
    lwf.before_task(model, t2, [t0, t1, t2])
    teacher = lwf.teacher
    assert teacher is not None and lwf.old_heads == [0, 1]
    _drift(model)
    x = t2.train_x
    term = lwf.loss_term(model, Batch(x, t2.train_y, 2))
    assert term is not None

    # the same loss written out: −λ T² Σ_h (1/N) Σ_n Σ_c p̃_c log p_c, log p = z/T − logsumexp(z/T)
    explicit = torch.zeros(())
    for head in (0, 1):
        z = model(x, head) / temperature
        with torch.no_grad():
            zt = teacher(x, head) / temperature
            target = zt.exp() / zt.exp().sum(-1, keepdim=True)
        log_p = z - torch.logsumexp(z, dim=-1, keepdim=True)
        explicit = explicit - (target * log_p).sum() / len(x)
    explicit = strength * temperature**2 * explicit
    torch.testing.assert_close(term, explicit)
    for ours, theirs in zip(_grads(term, model), _grads(explicit, model), strict=True):
        torch.testing.assert_close(ours, theirs)

    # and in closed form at the logits: ∂(T² L_KD)/∂z = T (p − p̃) / N
    z = model(x, 0).detach().requires_grad_(True)
    zt = teacher(x, 0)
    (grad,) = torch.autograd.grad(distillation_loss(z, zt, temperature), z)
    expected = temperature * (F.softmax(z / temperature, -1) - F.softmax(zt / temperature, -1))
    torch.testing.assert_close(grad, expected.detach() / len(x))


def test_domain_setting_distils_the_full_shared_head() -> None:
    t0, t1 = _task(0, 0, n_classes=4), _task(1, 0, n_classes=4)
    model = _model({0: 4})
    lwf = LwF(warmup_epochs=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lwf.before_task(model, t1, [t0, t1])
    assert lwf.old_heads == [0]
    # the shared head is not new: no warm-up, nothing moved
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert lwf.teacher is not None
    _drift(model)
    term = lwf.loss_term(model, Batch(t1.train_x, t1.train_y, 0))
    expected = distillation_loss(model(t1.train_x, 0), lwf.teacher(t1.train_x, 0), 2.0)
    assert term is not None
    torch.testing.assert_close(term, expected)


@torch.no_grad()
def _loss(model: MultiHeadClassifier, task: Task) -> float:
    return float(F.cross_entropy(model(task.train_x, task.head), task.train_y))


def test_warm_up_trains_only_the_new_head() -> None:
    t0, t1 = _task(0, 0), _task(1, 1, n=256)
    model = _model({0: 3, 1: 3})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_before = _loss(model, t1)
    rng = torch.get_rng_state()
    lwf = LwF(warmup_epochs=40, warmup_lr=3e-2)
    lwf.before_task(model, t1, [t0, t1])
    assert torch.equal(rng, torch.get_rng_state())
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"heads.1.weight", "heads.1.bias"}
    assert all(p.grad is None for p in model.parameters())
    assert _loss(model, t1) < 0.9 * loss_before
    # the teacher is the model from before the warm-up, and the warm-up is deterministic
    assert lwf.teacher is not None
    torch.testing.assert_close(lwf.teacher.heads["1"].weight, before["heads.1.weight"])
    again = _model({0: 3, 1: 3})
    LwF(warmup_epochs=40, warmup_lr=3e-2).before_task(again, t1, [t0, t1])
    torch.testing.assert_close(again.heads["1"].weight, model.heads["1"].weight)


@pytest.mark.parametrize(
    "options",
    [
        {"strength": -1.0},
        {"temperature": 0.0},
        {"warmup_epochs": -1},
        {"batch_size": 0},
        {"code_strength": -1.0},
        {"code_size": 0},
        {"ae_epochs": 0},
    ],
)
def test_bad_options(options: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        EBLL(**options)


def test_options_are_reported() -> None:
    assert LwF(strength=0.5, temperature=3.0).options()["temperature"] == 3.0
    options = EBLL(code_strength=2.0, code_size=7).options()
    assert options["strength"] == 1.0 and options["code_size"] == 7
    assert options["code_strength"] == 2.0 and "warmup_epochs" in options


# --- EBLL ------------------------------------------------------------------------------------


def test_ebll_code_loss_matches_its_formula() -> None:
    t0, t1, t2 = _task(0, 0), _task(1, 1), _task(2, 2)
    model = _model({0: 3, 1: 3, 2: 3})
    alpha, strength = 0.6, 0.4
    ebll = EBLL(strength=strength, code_strength=alpha, code_size=5, warmup_epochs=0)
    torch.manual_seed(3)
    ebll.autoencoders = [Autoencoder(12, 5), Autoencoder(12, 5)]
    ebll.before_task(model, t2, [t0, t1, t2])
    teacher = ebll.teacher
    assert teacher is not None
    _drift(model)
    x = t2.train_x
    term = ebll.loss_term(model, Batch(x, t2.train_y, 2))
    assert term is not None

    f, f_star = model.backbone(x), teacher.backbone(x)
    codes = torch.zeros(())
    for autoencoder in ebll.autoencoders:
        linear = autoencoder.encoder[0]
        assert isinstance(linear, torch.nn.Linear)
        w, b = linear.weight, linear.bias
        diff = torch.sigmoid(f @ w.T + b) - torch.sigmoid(f_star @ w.T + b)
        codes = codes + (diff**2).sum() / len(x)
    lwf = LwF(strength=strength, warmup_epochs=0)
    lwf.teacher, lwf.old_heads = teacher, [0, 1]
    distill = lwf.loss_term(model, Batch(x, t2.train_y, 2))
    assert distill is not None
    torch.testing.assert_close(term, distill + alpha * codes)
    assert float(codes.detach()) > 0
    torch.testing.assert_close(code_loss(ebll.encoders, f_star, f_star), torch.zeros(()))


def test_autoencoder_reconstructs_real_features(mnist_inputs: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (784,), hidden=(64,))
    model.add_head(0, 2)
    features = backbone_features(model, mnist_inputs) * 10
    labels = torch.zeros(len(features), dtype=torch.long)
    rng = torch.get_rng_state()
    autoencoder = train_autoencoder(features, labels, model.heads["0"], 16, 100, 1e-2, 0.0, 64, 5)
    assert torch.equal(rng, torch.get_rng_state())
    assert not any(p.requires_grad for p in autoencoder.parameters())
    with torch.no_grad():
        mse = float(F.mse_loss(autoencoder(features), features))
        code = autoencoder.encoder(features)
    # chance = predicting every feature by its mean (the total variance); the best any 16-d
    # linear code can do is the PCA residual (≈ 0.28 of it here)
    centred = features - features.mean(dim=0)
    chance = float(centred.pow(2).mean())
    spectrum = torch.linalg.svdvals(centred) ** 2
    pca = chance * float(spectrum[16:].sum() / spectrum.sum())
    assert mse < 0.5 * chance
    assert mse < 1.5 * pca
    assert float(code.min()) > 0 and float(code.max()) < 1


def test_autoencoder_task_term_leaves_the_head_alone() -> None:
    task = _task(0, 0, n=256)
    model = _model({0: 3})
    head = model.heads["0"]
    assert isinstance(head, torch.nn.Linear)
    before = head.weight.clone()
    features = backbone_features(model, task.train_x)
    plain, kept = (
        train_autoencoder(features, task.train_y, head, 4, 30, 1e-2, weight, 64, 1)
        for weight in (0.0, 1.0)
    )
    assert torch.equal(before, head.weight) and head.weight.grad is None
    with torch.no_grad():
        reference = F.cross_entropy(head(features), task.train_y)
        losses = [F.cross_entropy(head(a(features)), task.train_y) for a in (plain, kept)]
    # the classification-preserving term keeps the reconstructions as useful to the head
    assert float(losses[1]) < float(losses[0])
    assert float(losses[1]) < float(reference) + 0.05


def test_ebll_trains_one_autoencoder_per_task() -> None:
    t0, t1 = _task(0, 0), _task(1, 1)
    model = _model({0: 3})
    ebll = EBLL(code_size=4, ae_epochs=1, warmup_epochs=0)
    ebll.before_task(model, t0, [t0])
    assert ebll.loss_term(model, Batch(t0.train_x, t0.train_y, 0)) is None
    ebll.after_task(model, t0, [t0])
    model.add_head(1, 3)
    ebll.before_task(model, t1, [t0, t1])
    ebll.after_task(model, t1, [t0, t1])
    assert len(ebll.autoencoders) == 2 and len(ebll.encoders) == 2
    # the same object used again on a new stream starts from scratch
    ebll.before_task(model, t0, [t0])
    assert ebll.autoencoders == [] and ebll.teacher is None


# --- real MNIST ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def split5(mnist: ImageDataset) -> Scenario:
    # Five real Split-MNIST tasks, 3000 training images each: enough for finetuning to forget.
    return small_split_mnist(mnist, "task", n_train=3000, n_tasks=5)


CONFIG = TrainConfig(epochs=3, lr=1e-3, seed=0)


@pytest.fixture(scope="module")
def finetune(split5: Scenario) -> MethodResult:
    return run_method(Finetune(), split5, lambda: small_mlp(split5), CONFIG)


@pytest.mark.parametrize(
    "make",
    [LwF, lambda: EBLL(code_size=25, ae_epochs=5)],
    ids=["lwf", "ebll"],
)
def test_forgets_less_than_finetune(
    make: Callable[[], LwF], split5: Scenario, finetune: MethodResult
) -> None:
    result = run_method(make(), split5, lambda: small_mlp(split5), CONFIG)
    assert finetune.accuracy.forgetting() > 0.03
    assert result.accuracy.forgetting() < finetune.accuracy.forgetting() / 3
    assert result.accuracy.average_accuracy() > finetune.accuracy.average_accuracy()


@pytest.mark.parametrize("setting", ["domain", "class"])
def test_shared_head_settings_run(mnist: ImageDataset, setting: str) -> None:
    scenario = small_split_mnist(mnist, setting, n_train=300, n_tasks=2)
    method = EBLL(code_size=10, ae_epochs=1)
    result = run_method(method, scenario, lambda: small_mlp(scenario), TrainConfig(epochs=1))
    assert result.accuracy.values.shape == (2, 2)
    assert method.old_heads == [0] and len(method.autoencoders) == 2
