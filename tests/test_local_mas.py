"""l-MAS against a plain per-sample loop and against its closed form, on the output as the network uses it.

The reference scores every call of every layer alone: for each sample, the layer is run on its
own (detached) input, y is its output, passed through a ReLU where the test says the network
applies one directly, and the gradient of ‖y‖² with respect to the layer's weight and bias is
taken by ordinary autograd; |·| per sample and call, then the mean over the samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from memaware.errors import ConfigError
from memaware.importance import local_mas
from test_importance_rules import TOL64, Objective, assert_matches, per_sample_reference

# ---------------------------------------------------------------------------------------------
# reference


def local_objective(relu_after: Mapping[nn.Module, Sequence[bool]]) -> Objective:
    """One objective ‖y‖² per call of each layer, on that call's detached input.

    ``relu_after[layer][c]`` says whether the network applies a ReLU directly to call c's output
    (then y = ReLU(raw output)); otherwise y is the raw output.
    """

    def objective(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        inputs: dict[nn.Module, list[torch.Tensor]] = {layer: [] for layer in relu_after}

        def keep(layer: nn.Module, args: tuple[Any, ...]) -> None:
            inputs[layer].append(args[0].detach())

        handles = [layer.register_forward_pre_hook(keep) for layer in relu_after]
        try:
            with torch.no_grad():
                model(x)
        finally:
            for handle in handles:
                handle.remove()
        losses = []
        for layer, flags in relu_after.items():
            assert len(flags) == len(inputs[layer]), "one flag per call"
            for a, relu in zip(inputs[layer], flags, strict=True):
                y = layer(a)
                losses.append((torch.relu(y) if relu else y).square().sum())
        return losses

    return objective


def check_local_mas(
    model: nn.Module,
    x: torch.Tensor,
    relu_after: Mapping[nn.Module, Sequence[bool]],
    batch_size: int = 5,
) -> None:
    """local_mas(model, batches of x) against the per-sample loop (float64: relative error 1e-10)."""
    imp = local_mas(model, list(torch.split(x, batch_size)))
    assert imp.n_samples == len(x) and set(imp.counts.values()) == {len(x)}
    assert imp.meta == {"method": "l-mas", "mode": "eval"}
    ref = per_sample_reference(model, x, local_objective(relu_after))
    assert_matches(imp, ref, TOL64)


# ---------------------------------------------------------------------------------------------
# against the per-sample loop


def test_mlp_head_uses_its_raw_logits() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)
    ).double()
    x = torch.randn(17, 7, dtype=torch.float64)
    check_local_mas(model, x, {model[0]: [True], model[2]: [True], model[4]: [False]})
    imp = local_mas(model, [x])
    with torch.no_grad():
        logits = model(x)
    assert (logits < 0).any()  # a ReLU on the head would have dropped these
    torch.testing.assert_close(imp["4.bias"], 2 * logits.abs().mean(0))


def test_inplace_relu_modules() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(7, 6),
        nn.ReLU(inplace=True),
        nn.Linear(6, 5),
        nn.ReLU(inplace=True),
        nn.Linear(5, 4),
        nn.ReLU(inplace=True),  # rewrites the model's own output
    ).double()
    x = torch.randn(13, 7, dtype=torch.float64)
    check_local_mas(model, x, {model[0]: [True], model[2]: [True], model[4]: [True]})


class Functional(nn.Module):
    """ReLUs as functions (F.relu, torch.relu, Tensor.relu_, F.relu in place) and a raw use."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d, self.e = (nn.Linear(6, 6) for _ in range(5))
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(x))
        h = torch.relu(self.b(h))
        h = self.c(h).relu_()
        h = F.relu(self.d(h), inplace=True)
        z = self.e(h)
        # z is also used raw: a ReLU is not its only use
        return self.head(F.relu(z) + z)  # type: ignore[no-any-return]


def test_functional_relu_and_a_raw_second_use() -> None:
    torch.manual_seed(3)
    model = Functional().double()
    flags: dict[nn.Module, list[bool]] = {m: [True] for m in (model.a, model.b, model.c, model.d)}
    check_local_mas(
        model,
        torch.randn(11, 6, dtype=torch.float64),
        flags | {model.e: [False], model.head: [False]},
    )


def test_conv_batchnorm_relu_takes_the_raw_conv_output() -> None:
    torch.manual_seed(4)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)  # type: ignore[union-attr]
        bn.running_var.uniform_(0.5, 2)  # type: ignore[union-attr]
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        bn,
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(5 * 3 * 3, 2),
    ).double()
    x = torch.randn(9, 3, 7, 7, dtype=torch.float64)
    model.train()
    local_mas(model, [x])
    assert all(m.training for m in model.modules())  # eval for the estimate, then restored
    check_local_mas(model, x, {model[0]: [False], model[3]: [True], model[6]: [False]})


def test_conv1d_and_sequence_positions_are_summed_before_the_magnitude() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv1d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Unflatten(1, (4, 6)),
        nn.Linear(6, 2),
    ).double()
    x = torch.randn(8, 3, 6, dtype=torch.float64)  # the Linear sees 4 positions of 6 features
    check_local_mas(model, x, {model[0]: [True], model[4]: [False]})


def test_other_nonlinearities_are_not_a_relu() -> None:
    torch.manual_seed(6)
    layers = [nn.Linear(6, 6) for _ in range(5)]
    model = nn.Sequential(
        layers[0],
        nn.Tanh(),
        layers[1],
        nn.GELU(),
        layers[2],
        nn.LeakyReLU(),
        layers[3],
        nn.ReLU6(),
        layers[4],
    ).double()
    check_local_mas(model, torch.randn(10, 6, dtype=torch.float64), {m: [False] for m in layers})


class Twice(nn.Module):
    """One Linear called twice: a ReLU follows the first call, a tanh the second."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.lin(torch.relu(self.lin(x)))))  # type: ignore[no-any-return]


def test_each_call_of_a_shared_layer_is_judged_on_its_own() -> None:
    torch.manual_seed(7)
    model = Twice().double()
    check_local_mas(
        model,
        torch.randn(9, 5, dtype=torch.float64),
        {model.lin: [True, False], model.head: [False]},
    )


class DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(6, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = torch.relu(self.trunk(x))
        return {"logits": self.head(features), "features": features}


def test_model_returning_a_dict() -> None:
    torch.manual_seed(8)
    model = DictOutput().double()
    check_local_mas(
        model, torch.randn(7, 6, dtype=torch.float64), {model.trunk: [True], model.head: [False]}
    )


# ---------------------------------------------------------------------------------------------
# closed forms


def two_layer() -> nn.Sequential:
    return nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))


def test_two_layer_net_by_hand() -> None:
    """Ω = 2·mean_k(y_k x_kᵀ) on the post-ReLU hidden layer; (2/N) Σ_k |y_k| |a_k|ᵀ on the raw head."""
    torch.manual_seed(9)
    model = two_layer()
    x = torch.randn(19, 7)
    imp = local_mas(model, torch.split(x, 8))
    with torch.no_grad():
        z1 = model[0](x)
        y1 = torch.relu(z1)  # also the head's input
        y2 = model[2](y1)
        n = len(x)
        expected = {
            "0.weight": (2 / n) * y1.t() @ x.abs(),  # y1 ≥ 0: the co-activation
            "0.bias": 2 * y1.mean(0),
            "2.weight": (2 / n) * y2.abs().t() @ y1,
            "2.bias": 2 * y2.abs().mean(0),
        }
    assert set(imp) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(imp[name], value, rtol=1e-5, atol=1e-7)
    dead = (z1 <= 0).all(0)  # inactive units get no importance
    assert torch.all(imp["0.weight"][dead] == 0)


def test_conv_by_hand_with_unfold() -> None:
    torch.manual_seed(10)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 2))
    x = torch.randn(11, 3, 6, 6)
    imp = local_mas(model, [x[:5], x[5:]])
    with torch.no_grad():
        y = torch.relu(conv(x)).reshape(11, 4, -1)  # (N, out, positions)
        cols = F.unfold(x, 3, padding=1, stride=2)  # (N, in·3·3, positions)
        per_sample = 2 * torch.einsum("nol,ncl->noc", y, cols)
        weight = per_sample.abs().mean(0).reshape(conv.weight.shape)
        bias = (2 * y.sum(-1)).abs().mean(0)
    torch.testing.assert_close(imp["0.weight"], weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(imp["0.bias"], bias, rtol=1e-5, atol=1e-6)
    assert set(imp) == {"0.weight", "0.bias", "3.weight", "3.bias"}


def test_grouped_dilated_conv1d_against_autograd() -> None:
    """g_k = ∂/∂W Σ_{o,l} c_{o,l}·conv(x_k; W)_{o,l} with c = 2·ReLU(conv(x_k)) held fixed."""
    torch.manual_seed(11)
    conv = nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2).double()
    model = nn.Sequential(conv, nn.ReLU())
    x = torch.randn(7, 4, 13, dtype=torch.float64)
    imp = local_mas(model, [x])
    assert conv.bias is not None
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


# ---------------------------------------------------------------------------------------------
# scope, options and errors


def test_skips_other_layers_and_runs_no_backward() -> None:
    torch.manual_seed(12)
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    model[2].bias.requires_grad_(False)
    model.train()
    imp = local_mas(model, [torch.randint(0, 10, (5, 2))])
    assert set(imp) == {"2.weight"}
    assert all(p.grad is None for p in model.parameters())
    assert all(m.training for m in model.modules())


def test_max_samples_and_tuples() -> None:
    torch.manual_seed(13)
    model = two_layer()
    x, y = torch.randn(20, 7), torch.zeros(20)
    a = local_mas(
        model, list(zip(torch.split(x, 6), torch.split(y, 6), strict=True)), max_samples=10
    )
    b = local_mas(model, [x[:10]])
    assert a.n_samples == 10
    for name in b:
        torch.testing.assert_close(a[name], b[name])


class Detached(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x)).detach()


def test_rejects_what_it_cannot_compute() -> None:
    with pytest.raises(ConfigError, match="padding"):
        local_mas(nn.Sequential(nn.Conv2d(1, 2, 3, padding="same")), [torch.randn(2, 1, 5, 5)])
    with pytest.raises(ConfigError, match="autograd graph"):
        local_mas(Detached(), [torch.randn(2, 3)])


class SequenceFirst(nn.Module):
    """A Linear applied to a (T, N, d) tensor: its leading dimension is not the sample."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.transpose(0, 1)).transpose(0, 1)  # type: ignore[no-any-return]


def test_refuses_a_layer_whose_leading_dimension_is_not_the_sample() -> None:
    with pytest.raises(ConfigError, match="4 rows for a batch of 6 samples"):
        local_mas(SequenceFirst(), [torch.randn(6, 4, 3)])
