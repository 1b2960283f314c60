"""``granularity="batch"``: the MAS authors' running mean of |batch gradient|, and how it relates
to the exact per-sample importance (triangle inequality)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from memaware.importance import mas


def authors_running_mean(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' update, literally: Ω ← (Ω·b·n_b + |G_b|) / ((b+1)·n_b), Ω starting at 0,
    with G_b = ∂/∂θ Σ_{x∈b} ‖F(x)‖² (eval mode)."""
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    omega = {name: torch.zeros_like(p) for name, p in named}
    for b, x in enumerate(batches):
        n_b = len(x)
        model.zero_grad(set_to_none=True)
        model(x).square().sum().backward()
        for name, p in named:
            assert p.grad is not None
            omega[name] = (omega[name] * b * n_b + p.grad.abs()) / ((b + 1) * n_b)
    model.zero_grad(set_to_none=True)
    return omega


def per_batch_mean(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """(1/B) Σ_b |G_b| / n_b, the definition in mas.py's docstring (any batch sizes)."""
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    omega = {name: torch.zeros_like(p) for name, p in named}
    for x in batches:
        grads = torch.autograd.grad(model(x).square().sum(), [p for _, p in named])
        for (name, _), g in zip(named, grads, strict=True):
            omega[name] += g.abs() / len(x)
    return {name: value / len(batches) for name, value in omega.items()}


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 5 * 5, 8),
        nn.Tanh(),
        nn.Linear(8, 4),
    )


@pytest.mark.parametrize("batch_size", [1, 4, 8, 32])
def test_batch_granularity_is_the_authors_running_mean(batch_size: int) -> None:
    model = make_model(0)
    x = torch.randn(32, 1, 5, 5)
    data = list(torch.split(x, batch_size))
    imp = mas(model, data, granularity="batch")
    ref = authors_running_mean(model, data)
    assert set(imp) == set(ref)
    for name in ref:
        torch.testing.assert_close(imp[name], ref[name], rtol=1e-5, atol=1e-7)
    assert imp.n_samples == 32
    assert set(imp.counts.values()) == {len(data)}  # the divisor is the number of batches
    assert imp.meta["granularity"] == "batch"


def test_batch_granularity_with_uneven_batches_is_the_mean_over_batches() -> None:
    model = make_model(1)
    x = torch.randn(23, 1, 5, 5)
    data = [x[:10], x[10:13], x[13:]]
    imp = mas(model, data, granularity="batch")
    ref = per_batch_mean(model, data)
    for name in ref:
        torch.testing.assert_close(imp[name], ref[name], rtol=1e-5, atol=1e-7)
    assert imp.n_samples == 23


def test_batch_granularity_max_samples_and_tuples() -> None:
    model = make_model(2)
    x, y = torch.randn(20, 1, 5, 5), torch.randint(0, 4, (20,))
    data = list(zip(torch.split(x, 6), torch.split(y, 6), strict=True))
    imp = mas(model, data, granularity="batch", max_samples=15)
    ref = per_batch_mean(model, [x[:6], x[6:12], x[12:15]])
    for name in ref:
        torch.testing.assert_close(imp[name], ref[name], rtol=1e-5, atol=1e-7)
    assert imp.n_samples == 15


def test_batch_granularity_skips_frozen_parameters_and_restores_flags() -> None:
    model = make_model(3)
    model[0].requires_grad_(False)
    model.train()
    imp = mas(model, [torch.randn(4, 1, 5, 5)], granularity="batch")
    assert set(imp) == {"3.weight", "3.bias", "5.weight", "5.bias"}
    assert all(m.training for m in model.modules())


def test_sample_dominates_batch_and_is_equal_for_batches_of_one() -> None:
    model = make_model(4)
    x = torch.randn(24, 1, 5, 5)
    sample = mas(model, torch.split(x, 8))
    for batch_size in (2, 8, 24):
        batch = mas(model, torch.split(x, batch_size), granularity="batch")
        assert set(batch) == set(sample)
        for name in sample:
            scale = sample[name].abs().max()
            # |Σ_k g_k| / n <= Σ_k |g_k| / n elementwise
            assert torch.all(sample[name] >= batch[name] - 1e-5 * scale), name
        assert any(
            torch.any(sample[n] > batch[n] * (1 + 1e-3) + 1e-6) for n in sample
        )  # strict somewhere
    ones = mas(model, torch.split(x, 1), granularity="batch")
    for name in sample:
        torch.testing.assert_close(ones[name], sample[name], rtol=1e-5, atol=1e-7)


@settings(max_examples=15, deadline=None)
@given(
    n_batches=st.integers(1, 4),
    batch_size=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    norm=st.sampled_from(["l2sq", "l2", "l1", "vector"]),
)
def test_triangle_inequality_for_every_norm(
    n_batches: int, batch_size: int, seed: int, norm: str
) -> None:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(n_batches * batch_size, 3, dtype=torch.float64)
    data = list(torch.split(x, batch_size))
    sample = mas(model, data, norm=norm)  # type: ignore[arg-type]
    batch = mas(model, data, granularity="batch", norm=norm)  # type: ignore[arg-type]
    assert set(sample) == set(batch)
    for name in sample:
        assert torch.all(sample[name] >= batch[name] - 1e-12), name
        if batch_size == 1:
            torch.testing.assert_close(sample[name], batch[name])
