"""The diagonal Fisher (empirical and true) against per-sample loops; l-MAS against its formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memaware.errors import ConfigError
from memaware.importance import fisher, local_mas


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


# ---------------------------------------------------------------------------------------------
# l-MAS


def two_layer() -> nn.Sequential:
    return nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))


@pytest.mark.parametrize("activation", ["relu", "identity"])
def test_local_mas_two_layer_net_by_hand(activation: str) -> None:
    torch.manual_seed(7)
    model = two_layer()
    x = torch.randn(19, 7)
    imp = local_mas(model, torch.split(x, 8), activation=activation)  # type: ignore[arg-type]
    act = torch.relu if activation == "relu" else (lambda t: t)
    with torch.no_grad():
        z1 = model[0](x)
        a2 = torch.relu(z1)  # the second layer's input (after the network's ReLU module)
        z2 = model[2](a2)
        y1, y2 = act(z1), act(z2)
        n = len(x)
        expected = {
            "0.weight": (2 / n) * y1.abs().t() @ x.abs(),  # (2/N) Σ_k |y1_k| |x_k|ᵀ
            "0.bias": 2 * y1.abs().mean(0),
            "2.weight": (2 / n) * y2.abs().t() @ a2.abs(),
            "2.bias": 2 * y2.abs().mean(0),
        }
        literal = {  # the definition, one sample at a time: (1/N) Σ_k |2·y_i^k·a_j^k|
            "0.weight": torch.stack([(2 * torch.outer(y1[k], x[k])).abs() for k in range(n)]).mean(
                0
            ),
            "2.weight": torch.stack([(2 * torch.outer(y2[k], a2[k])).abs() for k in range(n)]).mean(
                0
            ),
        }
    assert set(imp) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(imp[name], value, rtol=1e-5, atol=1e-7)
    for name, value in literal.items():
        torch.testing.assert_close(imp[name], value, rtol=1e-5, atol=1e-7)
    assert imp.n_samples == 19 and set(imp.counts.values()) == {19}
    assert imp.meta == {"method": "l-mas", "activation": activation, "mode": "eval"}
    if activation == "relu":  # inactive units get no importance
        dead = (z1 <= 0).all(0)
        assert torch.all(imp["0.weight"][dead] == 0)


def test_local_mas_sequence_positions_are_summed_before_the_magnitude() -> None:
    torch.manual_seed(8)
    layer = nn.Linear(4, 3)
    model = nn.Sequential(layer)
    x = torch.randn(6, 5, 4)
    imp = local_mas(model, [x], activation="identity")
    with torch.no_grad():
        y = layer(x)
        weight = (2 * torch.einsum("nto,nti->noi", y, x)).abs().mean(0)
        bias = (2 * y.sum(1)).abs().mean(0)
    torch.testing.assert_close(imp["0.weight"], weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(imp["0.bias"], bias, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["relu", "identity"])
def test_local_mas_conv_by_hand_with_unfold(activation: str) -> None:
    torch.manual_seed(9)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 2))
    x = torch.randn(11, 3, 6, 6)
    imp = local_mas(model, [x[:5], x[5:]], activation=activation)  # type: ignore[arg-type]
    act = torch.relu if activation == "relu" else (lambda t: t)
    with torch.no_grad():
        y = act(conv(x)).reshape(11, 4, -1)  # (N, out, positions)
        cols = F.unfold(x, 3, padding=1, stride=2)  # (N, in·3·3, positions)
        per_sample = 2 * torch.einsum("nol,ncl->noc", y, cols)
        weight = per_sample.abs().mean(0).reshape(conv.weight.shape)
        bias = (2 * y.sum(-1)).abs().mean(0)
    torch.testing.assert_close(imp["0.weight"], weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(imp["0.bias"], bias, rtol=1e-5, atol=1e-6)
    assert set(imp) == {"0.weight", "0.bias", "3.weight", "3.bias"}


def test_local_mas_grouped_dilated_conv1d_against_autograd() -> None:
    """g_k = ∂/∂W Σ_{o,l} c_{o,l}·conv(x_k; W)_{o,l} with c = 2·y_k held fixed.

    That is Σ_l 2·y·a, computed by autograd instead of unfold.
    """
    torch.manual_seed(10)
    conv = nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2).double()
    model = nn.Sequential(conv, nn.ReLU())
    x = torch.randn(7, 4, 13, dtype=torch.float64)
    imp = local_mas(model, [x])
    weight = torch.zeros_like(conv.weight)
    bias = torch.zeros_like(conv.bias)
    for k in range(len(x)):
        out = conv(x[k : k + 1])
        c = 2 * torch.relu(out).detach()
        gw, gb = torch.autograd.grad((c * out).sum(), [conv.weight, conv.bias])
        weight += gw.abs() / len(x)
        bias += gb.abs() / len(x)
    torch.testing.assert_close(imp["0.weight"], weight, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(imp["0.bias"], bias, rtol=1e-10, atol=1e-12)


def test_local_mas_skips_other_layers_and_runs_no_backward() -> None:
    torch.manual_seed(11)
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    model[2].bias.requires_grad_(False)
    model.train()
    imp = local_mas(model, [torch.randint(0, 10, (5, 2))])
    assert set(imp) == {"2.weight"}
    assert all(p.grad is None for p in model.parameters())
    assert all(m.training for m in model.modules())


def test_local_mas_rejects_what_it_cannot_compute() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"))
    with pytest.raises(ConfigError):
        local_mas(model, [torch.randn(2, 1, 5, 5)])
    with pytest.raises(ConfigError):
        local_mas(two_layer(), [torch.randn(2, 7)], activation="tanh")  # type: ignore[arg-type]


def test_local_mas_max_samples_and_tuples() -> None:
    torch.manual_seed(12)
    model = two_layer()
    x, y = torch.randn(20, 7), torch.zeros(20)
    a = local_mas(
        model, list(zip(torch.split(x, 6), torch.split(y, 6), strict=True)), max_samples=10
    )
    b = local_mas(model, [x[:10]])
    assert a.n_samples == 10
    for name in b:
        torch.testing.assert_close(a[name], b[name])


def test_local_mas_identity_with_inplace_relu() -> None:
    torch.manual_seed(13)
    model = nn.Sequential(nn.Linear(7, 5), nn.ReLU(inplace=True), nn.Linear(5, 3))
    x = torch.randn(16, 7)
    with torch.no_grad():
        z1 = model[0](x)
    imp = local_mas(model, [x], activation="identity")
    torch.testing.assert_close(imp["0.bias"], 2 * z1.abs().mean(0))
