"""The diagonal Fisher (empirical and true) against per-sample loops (l-MAS: tests/test_local_mas.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memaware.errors import ConfigError
from memaware.importance import fisher


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a - ref).abs().max() / ref.abs().max()).item()


def squared_ce_gradients(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """(1/N) Σ_k (∂ CE(model(x_k), y_k) / ∂θ)², one sample and one backward at a time."""
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    sums = {name: torch.zeros_like(p) for name, p in named}
    for k in range(len(x)):
        loss = F.cross_entropy(model(x[k : k + 1]), y[k : k + 1], reduction="sum")
        grads = torch.autograd.grad(loss, [p for _, p in named])
        for (name, _), g in zip(named, grads, strict=True):
            sums[name] += g.square()
    return {name: value / len(x) for name, value in sums.items()}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 5))


def conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, groups=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6, 5),
    )


CASES = [(mlp, (12,)), (conv_net, (1, 8, 8))]


@pytest.mark.parametrize(("factory", "shape"), CASES, ids=["mlp", "conv"])
def test_empirical_fisher_against_per_sample_loop(factory, shape) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = factory()
    x, y = torch.randn(30, *shape), torch.randint(0, 5, (30,))
    imp = fisher(model, list(zip(torch.split(x, 8), torch.split(y, 8), strict=True)))
    ref = squared_ce_gradients(model, x, y)
    assert set(imp) == set(ref)
    for name in ref:
        assert rel_err(imp[name], ref[name]) <= 1e-5, name
        assert imp[name].dtype == ref[name].dtype and not imp[name].requires_grad
    assert imp.n_samples == 30 and set(imp.counts.values()) == {30}
    assert imp.meta == {"method": "fisher", "labels": "empirical", "mode": "eval"}


def test_empirical_fisher_float64_exact() -> None:
    torch.manual_seed(1)
    model = conv_net().double()
    x, y = torch.randn(10, 1, 8, 8, dtype=torch.float64), torch.randint(0, 5, (10,))
    imp = fisher(model, [(x, y, "ignored extra item")])
    ref = squared_ce_gradients(model, x, y)
    for name in ref:
        assert rel_err(imp[name], ref[name]) <= 1e-10, name


def test_fisher_max_samples_and_frozen_layers() -> None:
    torch.manual_seed(2)
    model = mlp()
    model[2].requires_grad_(False)
    x, y = torch.randn(20, 12), torch.randint(0, 5, (20,))
    data = list(zip(torch.split(x, 6), torch.split(y, 6), strict=True))
    imp = fisher(model, data, max_samples=9)
    ref = squared_ce_gradients(model, x[:9], y[:9])
    assert set(imp) == set(ref) == {"0.weight", "0.bias", "4.weight", "4.bias"}
    for name in ref:
        assert rel_err(imp[name], ref[name]) <= 1e-5, name
    assert imp.n_samples == 9


def test_fisher_switches_dropout_off_and_restores_flags() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 5))
    model.train()
    x, y = torch.randn(10, 12), torch.randint(0, 5, (10,))
    a, b = fisher(model, [(x, y)]), fisher(model, [(x, y)])
    assert all(m.training for m in model.modules())
    ref = squared_ce_gradients(model, x, y)
    for name in ref:
        assert torch.equal(a[name], b[name])
        assert rel_err(a[name], ref[name]) <= 1e-5


def _true_fisher(seed: int, model: nn.Module, data: list[tuple[torch.Tensor, torch.Tensor]]):  # type: ignore[no-untyped-def]
    return fisher(model, data, labels="true", generator=torch.Generator().manual_seed(seed))


def test_true_fisher_is_deterministic_and_differs_from_empirical() -> None:
    torch.manual_seed(4)
    model = mlp()
    x, y = torch.randn(40, 12), torch.randint(0, 5, (40,))
    data = list(zip(torch.split(x, 16), torch.split(y, 16), strict=True))
    a, b = _true_fisher(7, model, data), _true_fisher(7, model, data)
    c = _true_fisher(8, model, data)
    empirical = fisher(model, data)
    assert a.meta["labels"] == "true" and a.n_samples == 40
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert any(not torch.allclose(a[name], c[name]) for name in a)  # another seed, other labels
    assert any(not torch.allclose(a[name], empirical[name]) for name in a)


def test_true_fisher_is_the_empirical_fisher_of_labels_drawn_from_the_model() -> None:
    torch.manual_seed(5)
    model = conv_net()
    x = torch.randn(24, 1, 8, 8)
    batches = list(torch.split(x, 10))
    dummy = [(b, torch.zeros(len(b), dtype=torch.long)) for b in batches]
    imp = _true_fisher(11, model, dummy)
    generator = torch.Generator().manual_seed(11)
    model.eval()
    with torch.no_grad():
        drawn = [
            torch.multinomial(F.softmax(model(b), -1), 1, generator=generator).squeeze(1)
            for b in batches
        ]
    ref = squared_ce_gradients(model, x, torch.cat(drawn))
    for name in ref:
        assert rel_err(imp[name], ref[name]) <= 1e-5, name


def test_fisher_needs_labels_and_known_options() -> None:
    model = mlp()
    with pytest.raises(ConfigError, match="labels"):
        fisher(model, [torch.randn(2, 12)])
    with pytest.raises(ConfigError):
        fisher(model, [(torch.randn(2, 12),)])
    with pytest.raises(ConfigError):
        fisher(model, [(torch.randn(2, 12), torch.zeros(2, dtype=torch.long))], labels="model")  # type: ignore[arg-type]


def test_fisher_outputs_selects_a_head() -> None:
    torch.manual_seed(6)
    trunk, head_a, head_b = (
        nn.Sequential(nn.Linear(12, 8), nn.ReLU()),
        nn.Linear(8, 3),
        nn.Linear(8, 4),
    )
    model = nn.ModuleDict({"trunk": trunk, "a": head_a, "b": head_b})
    x, y = torch.randn(9, 12), torch.randint(0, 3, (9,))

    def head_a_logits(m: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return m["a"](m["trunk"](inputs))  # type: ignore[index, no-any-return]

    imp = fisher(model, [(x, y)], outputs=head_a_logits)
    single = nn.Sequential(trunk, head_a)
    ref = squared_ce_gradients(single, x, y)
    assert set(imp) == {"trunk.0.weight", "trunk.0.bias", "a.weight", "a.bias"}
    for ours, theirs in [
        ("trunk.0.weight", "0.0.weight"),
        ("a.weight", "1.weight"),
        ("a.bias", "1.bias"),
    ]:
        assert rel_err(imp[ours], ref[theirs]) <= 1e-5
