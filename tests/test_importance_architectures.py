"""Exact importance for the architectures of today's models, against the shared per-sample loop.

Tied weights, a module reused at two depths, sequence-first and folded layouts, attention and
transformer layers (both layouts, padding masks), recurrent layers and half precision.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import memaware.importance.exact as exact_module
import memaware.importance.sequence_rules as sequence_rules
from memaware.errors import ConfigError
from memaware.importance import mas
from test_importance_rules import TOL64, assert_matches, check_mas, per_sample_reference, seeded


class TiedLM(nn.Module):
    """An embedding whose weight is also the output projection (GPT-2, BERT)."""

    def __init__(self, vocab: int = 11, dim: int = 6, functional: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.functional = functional
        if not functional:
            self.out = nn.Linear(dim, vocab, bias=False)
            self.out.weight = self.emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.mix(self.emb(idx))).mean(1)
        if self.functional:
            return nn.functional.linear(h, self.emb.weight)
        return self.out(h)


@pytest.mark.parametrize("functional", [False, True])
def test_tied_embedding_and_output_projection(functional: bool) -> None:
    seeded(100)
    model = TiedLM(functional=functional).double()
    idx = torch.randint(0, 11, (9, 5))
    imp = mas(model, torch.split(idx, 4))
    assert set(imp) == {n for n, _ in model.named_parameters()}
    assert "out.weight" not in imp
    assert_matches(imp, per_sample_reference(model, idx), TOL64)


def test_tied_weights_are_not_the_sum_of_separate_magnitudes() -> None:
    """|g_emb + g_out| summed per sample is less than |g_emb| + |g_out|: the engine must add first."""
    seeded(101)
    model = TiedLM().double()
    idx = torch.randint(0, 11, (6, 5))
    ref = per_sample_reference(model, idx)
    untied = TiedLM().double()
    untied.load_state_dict(model.state_dict())
    untied.out.weight = nn.Parameter(model.emb.weight.detach().clone())
    separate = per_sample_reference(untied, idx)
    assert not torch.allclose(ref["emb.weight"], separate["emb.weight"] + separate["out.weight"])


def test_module_reused_at_two_depths() -> None:
    seeded(102)
    block = nn.Linear(5, 5)
    model = nn.Sequential(block, nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), block, nn.Linear(5, 2))
    check_mas(model.double(), torch.randn(11, 5, dtype=torch.float64), batch_size=4, tol=TOL64)


class SequenceFirst(nn.Module):
    """A linear layer on a (T, N, d) tensor: the sample is on dimension 1."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.proj(x.transpose(0, 1)))  # (T, N, 3)
        return self.head(h.mean(0))


class Folded(nn.Module):
    """A linear layer on N·T rows (a batch folded with its sequence)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h = torch.tanh(self.proj(x.reshape(n * t, d))).reshape(n, t, -1)
        return self.head(h.mean(1))


@pytest.mark.parametrize("model_type", [SequenceFirst, Folded])
def test_non_sample_first_layouts_are_exact(model_type: type[nn.Module]) -> None:
    seeded(103)
    model = model_type().double()
    check_mas(model, torch.randn(6, 7, 4, dtype=torch.float64), batch_size=4, tol=TOL64)


def test_declared_sample_dim_covers_coinciding_sizes() -> None:
    """T == N hides the layout from the size check; a declared sample dimension fixes it."""
    seeded(104)
    model = SequenceFirst().double()
    x = torch.randn(5, 5, 4, dtype=torch.float64)
    ref = per_sample_reference(model, x)
    assert_matches(mas(model, [x], sample_dims={"proj": 1}), ref, TOL64)
    with pytest.raises(ConfigError, match="nope"):
        mas(model, [x], sample_dims={"nope": 1})


class Encoder(nn.Module):
    """Two transformer encoder layers; with ``masked``, a sample's positions whose first feature
    exceeds 0.5 are padding (the mask follows from each sample's own data, so the per-sample
    loop sees the same mask as the batch)."""

    def __init__(self, batch_first: bool, layers: int = 2, masked: bool = False) -> None:
        super().__init__()
        self.batch_first, self.masked = batch_first, masked
        self.emb = nn.Linear(5, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 24, dropout=0.1, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding = None
        if self.masked:
            padding = x[:, :, 0] > 0.5
            padding[:, 0] = False  # every sample keeps a position to attend to
        h = self.emb(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        h = self.encoder(h, src_key_padding_mask=padding)
        return self.head(h.mean(1 if self.batch_first else 0))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_transformer_encoder_layers(batch_first: bool, masked: bool) -> None:
    seeded(105)
    model = Encoder(batch_first, masked=masked).double()
    x = torch.randn(7, 6, 5, dtype=torch.float64)
    if masked:
        assert (x[:, 1:, 0] > 0.5).any() and not (x[:, 1:, 0] > 0.5).all()
    check_mas(model, x, batch_size=4, tol=1e-9)


def test_attention_uses_its_rule_not_the_graph_path(monkeypatch: pytest.MonkeyPatch) -> None:
    seeded(106)
    model = Encoder(batch_first=True, layers=1)
    passes: list[int] = []
    original = exact_module.ExactEngine._graph_pass

    def spy(self: exact_module.ExactEngine, loss: torch.Tensor) -> None:
        passes.append(1)
        original(self, loss)

    monkeypatch.setattr(exact_module.ExactEngine, "_graph_pass", spy)
    mas(model, [torch.randn(4, 6, 5)])
    assert passes == []


@pytest.mark.parametrize("batch_first", [True, False])
def test_self_attention_reads_the_forward_projections(
    batch_first: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Self-attention gets δ of its packed projection from the backward pass itself; the core is
    recomputed only for cross attention (the recompute is the fallback, checked by the test
    below)."""
    seeded(113)
    recomputed: list[int] = []
    original = sequence_rules._attend

    def spy(*args: object, **kwargs: object) -> object:
        recomputed.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sequence_rules, "_attend", spy)
    model = Encoder(batch_first).double()
    x = torch.randn(5, 6, 5, dtype=torch.float64)
    check_mas(model, x, tol=1e-9)
    assert recomputed == []


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_with_masks_and_weights_used(batch_first: bool) -> None:
    """Cross attention with a 3-D boolean attn_mask, a float padding mask, and the returned
    (averaged) weights reaching the output."""
    seeded(107)

    class Cross(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
            self.head = nn.Linear(8 + 3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, kv = x[:, :4], x[:, 4:]
            n = len(x)
            mask = torch.zeros(n * 2, 4, 3, dtype=torch.bool)
            mask[:, 1, 0] = True
            padding = torch.zeros(n, 3, dtype=x.dtype)
            padding[:, 2] = -1.5
            if not batch_first:
                q, kv = q.transpose(0, 1), kv.transpose(0, 1)
            out, weights = self.attn(q, kv, kv, key_padding_mask=padding, attn_mask=mask)
            if not batch_first:
                out = out.transpose(0, 1)
            return self.head(torch.cat([out, weights], -1)).sum(1)

    check_mas(Cross().double(), torch.randn(5, 7, 8, dtype=torch.float64), tol=1e-9)


@pytest.mark.parametrize("batch_first", [True, False])
def test_self_attention_whose_weights_reach_the_output(batch_first: bool) -> None:
    seeded(114)

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
            self.head = nn.Linear(8 + 5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x if batch_first else x.transpose(0, 1)
            out, weights = self.attn(h, h, h)
            if not batch_first:
                out = out.transpose(0, 1)
            return self.head(torch.cat([out, weights], -1)).sum(1)

    check_mas(SelfAttention().double(), torch.randn(6, 5, 8, dtype=torch.float64), tol=1e-9)


@pytest.mark.parametrize("kind", [nn.GRU, nn.LSTM, nn.RNN])
@pytest.mark.parametrize("batch_first", [True, False])
def test_recurrent_layers(kind: type[nn.RNNBase], batch_first: bool) -> None:
    seeded(108)

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = kind(4, 5, num_layers=2, batch_first=batch_first, bidirectional=True)
            self.head = nn.Linear(10, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.rnn(x if batch_first else x.transpose(0, 1))[0]
            return self.head(out[:, -1] if batch_first else out[-1])

    check_mas(
        Recurrent().double(), torch.randn(6, 5, 4, dtype=torch.float64), batch_size=4, tol=TOL64
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_close_to_float32_and_summed_in_float32(dtype: torch.dtype) -> None:
    seeded(109)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.LayerNorm(32), nn.Linear(32, 10))
    model, x = model.to(dtype), torch.randn(256, 20).to(dtype)
    # the same weights and inputs, computed in float32
    ref = mas(copy.deepcopy(model).float(), torch.split(x.float(), 64))
    half = mas(model, torch.split(x, 64))
    for name, value in ref.items():
        assert half.sums[name].dtype == torch.float32
        err = ((half[name] - value).abs().max() / value.abs().max()).item()
        assert err <= 3e-2, f"{name}: {err}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_stays_finite_with_large_logits_over_many_samples(
    dtype: torch.dtype,
) -> None:
    seeded(110)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        model[2].weight.mul_(300.0)  # logits in the hundreds: ‖F‖² ~ 1e5 per sample
    model = model.to(dtype)
    x = torch.randn(100_000, 8, dtype=dtype)
    with torch.no_grad():
        assert model(x[:100]).abs().max() > 100
    imp = mas(model, torch.split(x, 5_000))
    assert imp.n_samples == 100_000
    for name, value in imp.items():
        assert torch.isfinite(value).all(), name
        assert torch.isfinite(imp.sums[name]).all(), name


def test_recurrent_rule_with_initial_states_and_no_graph_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeded(111)
    passes: list[int] = []
    monkeypatch.setattr(
        exact_module.ExactEngine, "_graph_pass", lambda self, loss: passes.append(1)
    )

    class WithState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.init = nn.Linear(4, 2 * 5)
            self.lstm = nn.LSTM(4, 5, batch_first=True)
            self.head = nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h0, c0 = torch.tanh(self.init(x[:, 0])).unsqueeze(0).chunk(2, -1)
            out, (_, c) = self.lstm(x, (h0.contiguous(), c0.contiguous()))
            return self.head(out.mean(1) + c[0])

    model = WithState().double()
    check_mas(model, torch.randn(7, 6, 4, dtype=torch.float64), tol=TOL64)
    assert passes == []


def test_packed_sequences_take_the_exact_graph_path() -> None:
    seeded(112)

    class Packed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = nn.GRU(3, 4, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            lengths = [5 if v > 0 else 3 for v in x[:, 0, 0].tolist()]  # per sample
            packed = nn.utils.rnn.pack_padded_sequence(
                x, lengths, batch_first=True, enforce_sorted=False
            )
            return self.head(self.gru(packed)[1][0])

    check_mas(Packed().double(), torch.randn(6, 5, 3, dtype=torch.float64), tol=TOL64)


def test_a_batch_with_a_new_call_structure_is_watched_again() -> None:
    """The engine watches parameter uses once per structure of calls: a later batch that takes
    another branch (here: a second layer, and the embedding's weight applied by the parent) is
    watched too, so its functional use takes the graph path."""
    seeded(115)

    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Linear(4, 4)
            self.extra = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.emb(x))
            if bool(x[0, 0] > 0):
                h = nn.functional.linear(self.extra(h), self.emb.weight)
            return h

    model = Branching().double()
    first = torch.randn(5, 4, dtype=torch.float64)
    first[:, 0] = -1.0  # every sample, alone or in its batch, takes the same branch
    second = torch.randn(5, 4, dtype=torch.float64)
    second[:, 0] = 1.0
    imp = mas(model, [first, second])
    ref_first, ref_second = per_sample_reference(model, first), per_sample_reference(model, second)
    ref = {
        name: (ref_first.get(name, 0) + ref_second[name]) / 2
        if name in ref_first
        else ref_second[name] / 2
        for name in ref_second
    }
    assert_matches(imp, ref, TOL64)
