"""Exact per-sample MAS importance against a plain per-sample loop, layer type by layer type.

The reference computes, for every sample k alone, the gradient of the per-sample objective with
ordinary autograd, applies f (|·| for MAS) and averages over the samples. Every rule in
:mod:`memaware.importance.rules`, the ``torch.func`` fallback and the engine's special cases
(shared modules, in-place activations, frozen or unreached layers) must reproduce it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from unittest.mock import patch

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.autograd.graph import GradientEdge

import memaware.importance.exact as exact_module
import memaware.importance.rules as rules_module
from memaware.data.mnist import load_mnist
from memaware.errors import ConfigError
from memaware.importance import mas

Objective = Callable[[nn.Module, torch.Tensor], Sequence[torch.Tensor]]

TOL32 = 1e-5
TOL64 = 1e-10


# ---------------------------------------------------------------------------------------------
# reference implementation


def l2sq(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return [model(x).square().sum()]


def per_sample_reference(
    model: nn.Module,
    x: torch.Tensor,
    objective: Objective = l2sq,
    f: Callable[[torch.Tensor], torch.Tensor] = torch.abs,
) -> dict[str, torch.Tensor]:
    """(1/N) Σ_k Σ_objectives f(∂objective(x_k)/∂θ), one sample and one backward at a time.

    The per-sample gradients are stacked and reduced once at the end (few large kernels: cheap
    also on a loaded machine).
    """
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads: dict[str, list[torch.Tensor]] = {name: [] for name, _ in named}
    for k in range(len(x)):
        for loss in objective(model, x[k : k + 1]):
            per_param = torch.autograd.grad(
                loss, [p for _, p in named], allow_unused=True, retain_graph=True
            )
            for (name, _), g in zip(named, per_param, strict=True):
                if g is not None:
                    grads[name].append(g)
    return {name: f(torch.stack(gs)).sum(0) / len(x) for name, gs in grads.items() if gs}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    scale = ref.abs().max().item()
    err = (a - ref).abs().max().item()
    return err / scale if scale > 0 else err


def assert_matches(
    imp: dict[str, torch.Tensor] | object,
    ref: dict[str, torch.Tensor],
    tol: float,
    detached: bool = True,
) -> None:
    got = dict(imp)  # type: ignore[call-overload]
    assert set(got) == set(ref), f"names differ: {sorted(got)} vs {sorted(ref)}"
    for name, value in ref.items():
        assert got[name].shape == value.shape, name
        assert got[name].dtype == value.dtype, name
        if detached:
            assert not got[name].requires_grad, name
        err = rel_err(got[name], value)
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol}"


def check_mas(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int | None = None,
    tol: float = TOL32,
    detached: bool = True,
) -> None:
    """mas(model, batches of x) against the per-sample loop; n_samples and counts too."""
    data = list(torch.split(x, batch_size)) if batch_size else [x]
    imp = mas(model, data)
    assert imp.n_samples == len(x)
    assert all(c == len(x) for c in imp.counts.values())
    assert imp.meta["method"] == "mas" and imp.meta["granularity"] == "sample"
    assert_matches(imp, per_sample_reference(model, x), tol, detached)


def seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Linear


def test_linear_2d_input_mlp_several_batches() -> None:
    seeded(1)
    model = nn.Sequential(
        nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 5)
    )
    check_mas(model, torch.randn(48, 20), batch_size=16)


def test_linear_uneven_batches_accumulate() -> None:
    seeded(2)
    model = nn.Sequential(nn.Linear(6, 7), nn.Sigmoid(), nn.Linear(7, 3))
    x = torch.randn(23, 6)
    imp = mas(model, [x[:10], x[10:11], x[11:]])
    assert imp.n_samples == 23
    assert_matches(imp, per_sample_reference(model, x), TOL32)


def test_linear_sequence_input_3d() -> None:
    seeded(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 4))
    check_mas(model, torch.randn(12, 5, 6), batch_size=5)


def test_linear_4d_input() -> None:
    seeded(4)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    check_mas(model, torch.randn(7, 2, 4, 3))


def test_linear_without_bias() -> None:
    seeded(5)
    model = nn.Sequential(nn.Linear(10, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False))
    check_mas(model, torch.randn(20, 10))
    check_mas(model, torch.randn(9, 4, 10))
    assert set(mas(model, [torch.randn(3, 10)])) == {"0.weight", "2.weight"}


def test_linear_float64() -> None:
    seeded(6)
    model = nn.Sequential(nn.Linear(9, 7), nn.Softplus(), nn.Linear(7, 4)).double()
    check_mas(model, torch.randn(30, 9, dtype=torch.float64), tol=TOL64)
    check_mas(model, torch.randn(6, 3, 9, dtype=torch.float64), tol=TOL64)


# ---------------------------------------------------------------------------------------------
# Convolutions


@st.composite
def conv_configs(draw: st.DrawFn, dims: int) -> dict[str, object]:
    groups = draw(st.integers(1, 3))
    in_channels = groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(dims))
    size = []
    for k, d, p in zip(kernel, dilation, padding, strict=True):
        smallest = max(1, d * (k - 1) + 1 - 2 * p)
        size.append(draw(st.integers(smallest, smallest + 4)))
    return {
        "module": dict(
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=draw(st.booleans()),
        ),
        "n": draw(st.integers(1, 5)),
        "size": tuple(size),
        # False: every conv takes the grouped weight-gradient path; True: every conv unfolds
        "unfold": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def _conv_case(conv_type: type[nn.Module], config: dict[str, object]) -> None:
    torch.manual_seed(config["seed"])  # type: ignore[arg-type]
    kwargs: dict[str, object] = config["module"]  # type: ignore[assignment]
    conv = conv_type(**kwargs).double()
    model = nn.Sequential(conv, nn.Tanh())
    x = torch.randn(config["n"], kwargs["in_channels"], *config["size"], dtype=torch.float64)  # type: ignore[misc]
    with patch.object(rules_module, "unfolds", lambda fan_in, positions: config["unfold"]):
        check_mas(model, x, tol=TOL64)


@settings(max_examples=15, deadline=None)
@given(conv_configs(1))
def test_conv1d_random_hyperparameters(config: dict[str, object]) -> None:
    _conv_case(nn.Conv1d, config)


@settings(max_examples=15, deadline=None)
@given(conv_configs(2))
def test_conv2d_random_hyperparameters(config: dict[str, object]) -> None:
    _conv_case(nn.Conv2d, config)


@pytest.mark.parametrize("unfold", [False, True])
def test_conv_net_float32_strided_grouped_dilated(
    monkeypatch: pytest.MonkeyPatch, unfold: bool
) -> None:
    monkeypatch.setattr(rules_module, "unfolds", lambda fan_in, positions: unfold)
    seeded(7)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3, bias=False),
        nn.ReLU(),
        nn.Conv2d(6, 12, 3, groups=6),  # depthwise with channel multiplier 2
        nn.Flatten(),
        nn.Linear(12 * 3 * 3, 5),
    )
    check_mas(model, torch.randn(10, 3, 9, 9), batch_size=4)


@pytest.mark.parametrize("unfold", [False, True])
def test_conv1d_depthwise_no_bias_float32(monkeypatch: pytest.MonkeyPatch, unfold: bool) -> None:
    monkeypatch.setattr(rules_module, "unfolds", lambda fan_in, positions: unfold)
    seeded(8)
    model = nn.Sequential(
        nn.Conv1d(4, 4, 5, stride=2, padding=2, groups=4, bias=False),
        nn.ReLU(),
        nn.Conv1d(4, 8, 3, dilation=3, padding=1),
        nn.Flatten(),
        nn.Linear(8 * 6, 3),
    )
    check_mas(model, torch.randn(16, 4, 19))


@pytest.mark.parametrize("unfold", [False, True])
@pytest.mark.parametrize("chunk_elements", [1, 150, 2000])
def test_conv_paths_in_several_chunks(
    monkeypatch: pytest.MonkeyPatch, unfold: bool, chunk_elements: int
) -> None:
    """Per-sample gradients materialised a few samples at a time (a ragged last chunk included)."""
    monkeypatch.setattr(rules_module, "unfolds", lambda fan_in, positions: unfold)
    monkeypatch.setattr(rules_module, "CHUNK_ELEMENTS", chunk_elements)
    seeded(46)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(4, 3, 2, stride=2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 2),
    ).double()
    check_mas(model, torch.randn(7, 2, 6, 6, dtype=torch.float64), tol=TOL64)


@pytest.fixture
def fallback_spy(monkeypatch: pytest.MonkeyPatch) -> list[type[nn.Module]]:
    """Records the module type of every call of the fallback rule made by the exact engine."""
    seen: list[type[nn.Module]] = []
    original = exact_module.fallback_rule

    def spy(module: nn.Module, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        seen.append(type(module))
        return original(module, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(exact_module, "fallback_rule", spy)
    return seen


@pytest.mark.parametrize(
    ("conv_type", "options", "shape"),
    [
        (nn.Conv2d, dict(padding="same", dilation=2), (2, 7, 6)),
        (nn.Conv2d, dict(padding="valid", stride=2), (2, 7, 6)),
        (nn.Conv2d, dict(padding=1, padding_mode="reflect", groups=2), (2, 7, 6)),
        (nn.Conv2d, dict(padding=(1, 2), padding_mode="replicate", stride=2), (2, 7, 6)),
        (nn.Conv2d, dict(padding=1, padding_mode="circular", bias=False), (2, 7, 6)),
        (nn.Conv1d, dict(padding="same"), (2, 9)),
        (nn.Conv1d, dict(padding=2, padding_mode="reflect", stride=2), (2, 9)),
    ],
)
def test_conv_string_padding_and_padding_modes_use_the_fallback(
    conv_type: type[nn.Module],
    options: dict[str, object],
    shape: tuple[int, ...],
    fallback_spy: list[type],
) -> None:
    seeded(9)
    model = nn.Sequential(conv_type(2, 4, 3, **options), nn.Tanh()).double()
    check_mas(model, torch.randn(5, *shape, dtype=torch.float64), tol=TOL64)
    assert fallback_spy == [conv_type]


def test_conv_zero_padding_uses_the_rule(fallback_spy: list[type]) -> None:
    seeded(10)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(2), nn.Conv1d(3, 2, 2, padding=(1,))
    )
    check_mas(model, torch.randn(4, 2, 5, 5))
    assert fallback_spy == []


def test_conv3d_goes_to_the_fallback(fallback_spy: list[type]) -> None:
    seeded(11)
    model = nn.Sequential(nn.Conv3d(2, 3, 2, stride=(1, 2, 1)), nn.Tanh()).double()
    check_mas(model, torch.randn(3, 2, 4, 5, 3, dtype=torch.float64), tol=TOL64)
    assert fallback_spy == [nn.Conv3d]


# ---------------------------------------------------------------------------------------------
# Embedding


class EmbeddingNet(nn.Module):
    def __init__(self, embedding: nn.Embedding, length: int) -> None:
        super().__init__()
        self.embedding = embedding
        self.head = nn.Linear(embedding.embedding_dim * length, 3)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embedding(idx)).flatten(1))


@pytest.mark.parametrize("padding_idx", [None, 0, -1])
def test_embedding_with_repeated_indices(padding_idx: int | None) -> None:
    seeded(12)
    model = EmbeddingNet(nn.Embedding(7, 4, padding_idx=padding_idx), length=6)
    idx = torch.randint(0, 7, (20, 6))
    idx[0] = torch.tensor([1, 1, 1, 2, 2, 0])  # repeated rows within one sample
    idx[1] = 6  # one row only (incl. the padding row for padding_idx=-1)
    assert any(len(row.unique()) < len(row) for row in idx)
    check_mas(model, idx, batch_size=8)
    imp = mas(model, [idx])
    if padding_idx is not None:
        assert torch.all(imp["embedding.weight"][padding_idx % 7] == 0)
    unused = sorted(set(range(7)) - set(idx.unique().tolist()))
    for row in unused:
        assert torch.all(imp["embedding.weight"][row] == 0)


def test_embedding_sequence_of_sequences_and_unseen_rows() -> None:
    seeded(13)
    embedding = nn.Embedding(30, 3)
    model = nn.Sequential(embedding, nn.Tanh(), nn.Linear(3, 2))
    idx = torch.randint(0, 10, (6, 2, 3))  # rows 10..29 never looked up
    check_mas(model, idx)
    assert torch.all(mas(model, [idx])["0.weight"][10:] == 0)


def test_embedding_scale_grad_by_freq_uses_the_fallback(fallback_spy: list[type]) -> None:
    seeded(14)
    model = EmbeddingNet(nn.Embedding(5, 3, scale_grad_by_freq=True), length=4).double()
    idx = torch.randint(0, 5, (8, 4))
    check_mas(model, idx, tol=TOL64)
    assert fallback_spy == [nn.Embedding]


# ---------------------------------------------------------------------------------------------
# Normalisation layers


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("last_dims", [1, 2])
def test_layer_norm(affine: bool, bias: bool, last_dims: int) -> None:
    seeded(15)
    normalized = (5, 6)[-last_dims:]
    norm = nn.LayerNorm(normalized, elementwise_affine=affine, bias=bias)
    if affine:
        with torch.no_grad():
            norm.weight.normal_()
            if norm.bias is not None:
                norm.bias.normal_()
    model = nn.Sequential(nn.Linear(6, 6), norm, nn.Tanh(), nn.Linear(6, 3))
    check_mas(model, torch.randn(11, 5, 6))
    names = set(mas(model, [torch.randn(2, 5, 6)]))
    assert ("1.weight" in names) == affine
    assert ("1.bias" in names) == (affine and bias)


@pytest.mark.parametrize("shape", [(4, 6, 5, 3), (4, 6, 7), (4, 6)])
def test_group_norm(shape: tuple[int, ...]) -> None:
    seeded(16)
    norm = nn.GroupNorm(3, 6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    model = nn.Sequential(norm, nn.Tanh())
    check_mas(model, torch.randn(*shape) * 2 + 1)


def _randomise_batch_norm(norm: nn.modules.batchnorm._BatchNorm) -> None:
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)  # type: ignore[union-attr]
        norm.running_var.uniform_(0.3, 3)  # type: ignore[union-attr]
        norm.weight.normal_()
        norm.bias.normal_()


def test_batch_norm_1d_and_2d_eval_with_running_stats() -> None:
    seeded(17)
    bn2 = nn.BatchNorm2d(4)
    bn1 = nn.BatchNorm1d(6)
    bn1_seq = nn.BatchNorm1d(3)
    for bn in (bn1, bn2, bn1_seq):
        _randomise_batch_norm(bn)
    conv = nn.Sequential(
        nn.Conv2d(2, 4, 3), bn2, nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 6), bn1, nn.Tanh()
    )
    check_mas(conv, torch.randn(10, 2, 5, 5), batch_size=4)
    seq = nn.Sequential(nn.Conv1d(2, 3, 2), bn1_seq, nn.Tanh())
    check_mas(seq, torch.randn(7, 2, 6))


def test_batch_norm_importance_uses_running_statistics_not_batch_statistics() -> None:
    """In eval mode each sample's importance must not depend on the rest of its batch."""
    seeded(18)
    bn = nn.BatchNorm1d(5)
    _randomise_batch_norm(bn)
    model = nn.Sequential(nn.Linear(4, 5), bn, nn.Tanh())
    x = torch.randn(6, 4)
    whole = mas(model, [x])
    alone = mas(model, [x[i : i + 1] for i in range(6)])
    for name in whole:
        torch.testing.assert_close(whole[name], alone[name], rtol=1e-5, atol=1e-7)


def test_batch_norm_in_train_mode_raises_and_restores_flags() -> None:
    seeded(19)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))
    model.train()
    with pytest.raises(ConfigError, match="mode='eval'"):
        mas(model, [torch.randn(8, 4)], mode="train")
    assert all(m.training for m in model.modules())
    model[1].eval()
    with pytest.raises(ConfigError):
        mas(model, [torch.randn(8, 4)], mode="train")
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_batch_norm_without_running_stats_in_eval_raises() -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, track_running_stats=False))
    with pytest.raises(ConfigError):
        mas(model, [torch.randn(8, 4)])


def test_batch_norm_without_affine_has_no_importance() -> None:
    seeded(20)
    bn = nn.BatchNorm1d(5, affine=False)
    bn.running_mean.uniform_(-1, 1)  # type: ignore[union-attr]
    model = nn.Sequential(nn.Linear(4, 5), bn, nn.Tanh())
    check_mas(model, torch.randn(9, 4))
    assert set(mas(model, [torch.randn(2, 4)])) == {"0.weight", "0.bias"}


# ---------------------------------------------------------------------------------------------
# Fallback, shared modules, in-place activations, frozen and unreached layers


class Gated(nn.Module):
    """A module type without a rule: elementwise gate and scale, nonlinear in its parameters."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.randn(features))
        self.scale = nn.Parameter(torch.randn(1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.gate) * self.scale + torch.sin(self.scale * x)


class Block(nn.Module):
    """A module owning a parameter directly and a child Linear (nested ownership)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.inner = nn.Linear(features, features)
        self.alpha = nn.Parameter(torch.randn(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.alpha) * self.inner(x)


def test_custom_module_without_rule_mixed_with_ruled_layers(fallback_spy: list[type]) -> None:
    seeded(21)
    model = nn.Sequential(
        nn.Linear(5, 6), Gated(6), nn.ReLU(), Block(6), nn.LayerNorm(6), nn.Linear(6, 3)
    )
    # values only: see test_fallback_result_of_module_with_trainable_children_is_detached
    check_mas(model, torch.randn(17, 5), batch_size=6, detached=False)
    assert set(fallback_spy) == {Gated, Block}


def test_fallback_result_of_module_with_trainable_children_is_detached() -> None:
    seeded(43)
    model = Block(3)
    x = torch.randn(4, 3)
    imp = mas(model, [x, x])
    assert not imp.sums["alpha"].requires_grad
    assert imp.sums["alpha"].grad_fn is None


def test_custom_module_float64_sequence_input() -> None:
    seeded(22)
    model = nn.Sequential(nn.Linear(4, 4), Gated(4), Block(4), nn.Linear(4, 2)).double()
    check_mas(model, torch.randn(6, 3, 4, dtype=torch.float64), tol=TOL64)


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.lin(torch.tanh(self.lin(x))))


def test_module_called_twice_shares_weights(fallback_spy: list[type]) -> None:
    seeded(23)
    model = Shared()
    check_mas(model, torch.randn(13, 5), batch_size=5)
    assert nn.Linear in fallback_spy  # the shared layer cannot use the single-call rule


def test_shared_conv_called_twice_float64() -> None:
    seeded(24)

    class TwiceConv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(torch.relu(self.conv(x)))

    check_mas(TwiceConv().double(), torch.randn(4, 3, 5, 5, dtype=torch.float64), tol=TOL64)


class TwoBranches(nn.Module):
    """Two parallel branches of different depth merged before a shared head."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(5, 6)
        self.right_in = nn.Linear(5, 6)
        self.right_out = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        right = self.right_out(torch.tanh(self.right_in(x)))
        out: torch.Tensor = self.head(torch.relu(self.left(x) + right))
        return out


def test_branching_graph_is_exact_and_targets_only_the_deepest_layers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeded(44)
    model = TwoBranches()
    check_mas(model, torch.randn(11, 5), batch_size=4)
    # The backward pass is asked only for the outputs with no recorded output below them; every
    # other layer's δ reaches its rule through the hooks on the way down.
    targets: list[list[GradientEdge]] = []
    deepest = exact_module._deepest

    def recorded_deepest(edges: list[GradientEdge]) -> list[GradientEdge]:
        targets.append(deepest(edges))
        return targets[-1]

    monkeypatch.setattr(exact_module, "_deepest", recorded_deepest)
    mas(model, [torch.randn(3, 5)])
    (edges,) = targets
    assert {edge.node.name() for edge in edges} == {"AddmmBackward0"}
    assert len(edges) == 2  # left and right_in: the bottoms of the two branches


def test_rules_run_during_the_backward_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each layer's δ is used as soon as it exists: the upper layers' rules run before the
    backward pass has produced the deepest layer's δ."""
    seeded(45)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 2))
    order: list[str] = []
    linear = rules_module.RULES[nn.Linear]

    def spy(module: nn.Module, *args: object) -> object:
        order.append(f"rule {module.out_features}")
        return linear(module, *args)  # type: ignore[arg-type]

    grad = torch.autograd.grad

    def spied_grad(*args: object, **kwargs: object) -> object:
        order.append("pass starts")
        result = grad(*args, **kwargs)  # type: ignore[arg-type]
        order.append("pass ends")
        return result

    monkeypatch.setitem(rules_module.RULES, nn.Linear, spy)
    monkeypatch.setattr(exact_module.torch.autograd, "grad", spied_grad)
    mas(model, [torch.randn(6, 4)])
    assert order == ["pass starts", "rule 2", "rule 5", "rule 5", "pass ends"]


def test_module_called_twice_with_one_call_unused() -> None:
    seeded(25)

    class Wasteful(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.lin(x * 2)  # result discarded: contributes nothing
            return self.lin(x)

    check_mas(Wasteful(), torch.randn(9, 4))


@pytest.mark.parametrize("depth", [1, 2])
def test_inplace_relu_after_linear_is_exact(depth: int) -> None:
    seeded(26)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(6, 6), nn.ReLU(inplace=True)]
    model = nn.Sequential(*layers, nn.Linear(6, 3), nn.ReLU(inplace=True))
    x = torch.randn(25, 6)
    check_mas(model, x, batch_size=10)
    inplace_free = nn.Sequential(*[nn.ReLU() if isinstance(m, nn.ReLU) else m for m in model])
    ref = mas(inplace_free, [x])
    imp = mas(model, [x])
    for name in ref:
        torch.testing.assert_close(imp[name], ref[name])


def test_inplace_relu_after_conv_is_exact() -> None:
    seeded(27)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(4 * 16, 3),
    )
    _randomise_batch_norm(model[1])
    check_mas(model, torch.randn(8, 1, 6, 6))


def test_frozen_layer_is_absent() -> None:
    seeded(28)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2))
    model[2].requires_grad_(False)
    model[0].bias.requires_grad_(False)
    check_mas(model, torch.randn(14, 5))
    assert set(mas(model, [torch.randn(3, 5)])) == {"0.weight", "4.weight", "4.bias"}


def test_layer_not_reaching_the_output_is_absent() -> None:
    seeded(29)

    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.spare = nn.Linear(4, 4)  # called, but its output is thrown away
            self.never = nn.Linear(4, 4)  # never called

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.spare(x)
            return self.body(x)

    model = WithSpare()
    check_mas(model, torch.randn(6, 4))
    assert set(mas(model, [torch.randn(2, 4)])) == {"body.weight", "body.bias"}


def test_module_returning_no_tensor_is_a_config_error() -> None:
    class Counter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x: torch.Tensor) -> tuple[int, int]:
            return (1, 2)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.counter = Counter()
            self.out = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.counter(x)
            return self.out(x)

    with pytest.raises(ConfigError, match=r"counter .*no tensor"):
        mas(Net(), [torch.randn(2, 3)])


def test_fallback_module_called_with_keyword_arguments() -> None:
    seeded(30)

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4))

        def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return torch.tanh(x * self.w) * scale

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.s = Scaled()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.s(x, scale=3.0)

    check_mas(Net(), torch.randn(6, 4))


# ---------------------------------------------------------------------------------------------
# Real data


@pytest.fixture(scope="module")
def mnist_256() -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_mnist()
    x = ds.train_x[:256].reshape(256, -1).float() / 255.0
    return x, ds.train_y[:256]


def test_mlp_on_real_mnist(mnist_256: tuple[torch.Tensor, torch.Tensor]) -> None:
    seeded(31)
    x, y = mnist_256
    assert x.shape == (256, 784) and x.min() >= 0.0 and x.max() <= 1.0
    model = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    check_mas(model, x, batch_size=64)
    # (x, y) batches, as a DataLoader yields them: labels ignored, same result
    ref = mas(model, torch.split(x, 64))
    imp = mas(model, list(zip(torch.split(x, 64), torch.split(y, 64), strict=True)))
    for name in ref:
        torch.testing.assert_close(imp[name], ref[name], rtol=0, atol=0)
    # pixels that are zero in every image give exactly zero importance to their first-layer weights
    dead = (x == 0).all(0)
    assert dead.any()
    assert torch.all(imp["0.weight"][:, dead] == 0)
    assert torch.all(imp["0.weight"][:, ~dead].sum(0) > 0)


# ---------------------------------------------------------------------------------------------
# Output norms, outputs=, max_samples, (x, y) tuples, mode


def _norm_objective(norm: str) -> Objective:
    def objective(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        out = model(x).reshape(-1)  # one sample
        if norm == "l2":
            return [torch.sqrt(out.square().sum())]
        if norm == "l1":
            return [out.abs().sum()]
        assert norm == "vector"
        return list(out.unbind())  # Σ_units |∂F_u(x_k)/∂θ|

    return objective


@pytest.mark.parametrize("norm", ["l2", "l1", "vector"])
def test_other_norms_against_their_definitions(norm: str) -> None:
    seeded(32)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(3 * 16, 6),
        Gated(6),
        nn.Linear(6, 4),
    )
    x = torch.randn(9, 2, 4, 4)
    imp = mas(model, torch.split(x, 4), norm=norm)  # type: ignore[arg-type]
    assert imp.meta["norm"] == norm
    assert_matches(imp, per_sample_reference(model, x, _norm_objective(norm)), TOL32)


def test_l2sq_is_the_default_and_differs_from_l2() -> None:
    seeded(33)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x = torch.randn(5, 3)
    default, l2sq_ = mas(model, [x]), mas(model, [x], norm="l2sq")
    assert default.meta["norm"] == "l2sq"
    for name in default:
        assert torch.equal(default[name], l2sq_[name])
    assert not torch.allclose(default["2.weight"], mas(model, [x], norm="l2")["2.weight"])


def test_vector_norm_on_sequence_outputs_counts_every_unit() -> None:
    seeded(34)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, 3, dtype=torch.float64)  # output (5, 3, 2): six units per sample
    imp = mas(model, [x], norm="vector")
    assert_matches(imp, per_sample_reference(model, x, _norm_objective("vector")), TOL64)


def test_unknown_options_are_config_errors() -> None:
    model = nn.Linear(2, 2)
    for kwargs in ({"norm": "l3"}, {"granularity": "token"}, {"mode": "test"}):
        with pytest.raises(ConfigError):
            mas(model, [torch.randn(2, 2)], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        mas(model, [[1.0, 2.0]])


def test_outputs_selects_a_subset_of_the_outputs() -> None:
    seeded(35)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6))

    def first_three(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m(x)[:, :3]

    x = torch.randn(15, 5)
    imp = mas(model, [x], outputs=first_three)
    assert_matches(
        imp,
        per_sample_reference(model, x, lambda m, xk: [first_three(m, xk).square().sum()]),
        TOL32,
    )
    assert torch.all(imp["2.weight"][3:] == 0) and torch.all(imp["2.bias"][3:] == 0)
    assert torch.all(imp["2.bias"][:3] > 0)


def test_outputs_selects_one_head_of_a_multi_head_model() -> None:
    seeded(36)

    class MultiHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
            self.heads = nn.ModuleList([nn.Linear(6, 2), nn.Linear(6, 3)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.trunk(x)
            return torch.cat([head(h) for head in self.heads], dim=1)

    def head0(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m.heads[0](m.trunk(x))  # type: ignore[index, operator]

    model = MultiHead()
    x = torch.randn(10, 4)
    imp = mas(model, [x], outputs=head0)
    assert_matches(
        imp, per_sample_reference(model, x, lambda m, xk: [head0(m, xk).square().sum()]), TOL32
    )
    assert not any(name.startswith("heads.1") for name in imp)


@pytest.mark.parametrize("max_samples", [1, 7, 8, 10, 40])
def test_max_samples(max_samples: int) -> None:
    seeded(37)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(20, 3)
    consumed: list[int] = []

    def stream():  # type: ignore[no-untyped-def]
        for part in torch.split(x, 4):
            consumed.append(len(part))
            yield part

    imp = mas(model, stream(), max_samples=max_samples)
    used = min(max_samples, 20)
    assert imp.n_samples == used
    assert set(imp.counts.values()) == {used}
    assert_matches(imp, per_sample_reference(model, x[:used]), TOL32)
    assert sum(consumed) == min(20, -(-used // 4) * 4)  # stops reading once it has enough


def test_x_y_tuples_and_lists_ignore_labels() -> None:
    seeded(38)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(12, 3)
    y = torch.randint(0, 2, (12,))
    plain = mas(model, torch.split(x, 5))
    tuples = mas(model, list(zip(torch.split(x, 5), torch.split(y, 5), strict=True)))
    lists = mas(
        model,
        [[xb, yb, "extra"] for xb, yb in zip(torch.split(x, 5), torch.split(y, 5), strict=True)],
    )
    for name in plain:
        assert torch.equal(plain[name], tuples[name])
        assert torch.equal(plain[name], lists[name])
    assert tuples.n_samples == 12


def test_eval_mode_switches_dropout_off_and_restores_flags() -> None:
    seeded(39)
    model = nn.Sequential(
        nn.Linear(6, 16),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Sequential(nn.Linear(16, 8), nn.Dropout(0.3)),
        nn.Linear(8, 3),
    )
    model.train()
    model[3].eval()  # a mixed state must come back as it was
    flags = [m.training for m in model.modules()]
    x = torch.randn(20, 6)
    first = mas(model, [x])
    assert [m.training for m in model.modules()] == flags
    second = mas(model, [x])
    assert [m.training for m in model.modules()] == flags
    assert first.meta["mode"] == "eval"
    ref = per_sample_reference(model, x)  # in eval mode: no dropout
    model.train()
    model[3].eval()
    assert_matches(first, ref, TOL32)
    for name in first:
        assert torch.equal(first[name], second[name])  # deterministic: dropout is off


def test_train_mode_keeps_dropout_on_and_restores_flags() -> None:
    seeded(40)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    model.eval()
    x = torch.randn(20, 6)
    a = mas(model, [x], mode="train")
    b = mas(model, [x], mode="train")
    assert not any(m.training for m in model.modules())
    assert a.meta["mode"] == "train"
    assert not torch.equal(a["0.weight"], b["0.weight"])  # dropout masks differ between runs


def test_importance_does_not_touch_parameter_gradients() -> None:
    seeded(41)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].weight.grad = torch.full_like(model[0].weight, 7.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mas(model, [torch.randn(5, 3)])
    assert torch.all(model[0].weight.grad == 7.0)
    assert model[2].weight.grad is None
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name])


def test_reference_loop_agrees_with_torch_func() -> None:
    """Sanity check of the reference itself against torch.func per-sample gradients."""
    seeded(42)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    params = {n: p.detach() for n, p in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xk: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, p, (xk.unsqueeze(0),)).square().sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)
    ref = per_sample_reference(model, x)
    for name in params:
        torch.testing.assert_close(per_sample[name].abs().mean(0), ref[name])


def test_a_fan_in_over_fewer_positions_unfolds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above UNFOLD_MAX_FAN_IN, a fan-in no smaller than the output positions unfolds and one
    over more positions takes the grouped path; both exact."""
    monkeypatch.setattr(rules_module, "UNFOLD_MAX_FAN_IN", 8)
    taken: list[str] = []
    for name in ("_unfolded", "_grouped"):
        path = getattr(rules_module, name)

        def spy(*args: object, _path: object = path, _name: str = name) -> object:
            taken.append(_name)
            return _path(*args)  # type: ignore[operator]

        monkeypatch.setattr(rules_module, name, spy)
    seeded(3)
    model = nn.Sequential(
        nn.Conv2d(4, 5, 3, padding=1),  # fan-in 36 over 8×8 = 64 positions: grouped
        nn.Tanh(),
        nn.Conv2d(5, 6, 3, stride=2),  # fan-in 45 over 3×3 = 9 positions: unfolded
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 4),
    ).double()
    check_mas(model, torch.randn(6, 4, 8, 8, dtype=torch.float64), tol=TOL64)
    assert set(taken) == {"_grouped", "_unfolded"}
