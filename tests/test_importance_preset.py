"""MAS's importance preset ``authors``: one name for Ω as the authors' code computes it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from memaware.data.datasets import TensorData
from memaware.data.scenarios import Task
from memaware.errors import ConfigError
from memaware.methods import MAS, MASOptions, make_method, make_options, parse_option
from memaware.methods.options import PRESET_KEY
from memaware.models.backbones import MLP
from memaware.models.multihead import MultiHeadClassifier
from memaware.training.experiment import ExperimentSpec, method_settings

AUTHORS = {
    "granularity": "batch",
    "importance_batch_size": 200,
    "heads": "current",
    "accumulation": "sum",
    "norm": "l2sq",
    "importance_data": "train",
}


def test_the_preset_expands_to_the_authors_fields() -> None:
    opts = MAS(importance_preset="authors").opts
    assert {k: getattr(opts, k) for k in AUTHORS} == AUTHORS
    assert opts == MASOptions(**AUTHORS)  # type: ignore[arg-type]
    # the options (and so results.json) hold the expanded values, not the name
    assert PRESET_KEY not in MAS(importance_preset="authors").options()
    assert (
        MASOptions.from_preset("authors")
        == opts
        == make_options("mas", importance_preset="authors")
    )


def test_fields_given_next_to_the_preset_win() -> None:
    opts = MASOptions.from_preset("authors", granularity="sample", strength=2, max_samples=500)
    assert opts.granularity == "sample" and opts.strength == 2.0 and opts.max_samples == 500
    assert opts.heads == "current" and opts.importance_batch_size == 200
    # the strength passed as --lambda is a default too: an explicit one wins, the preset has none
    assert make_options("mas", 3.0, importance_preset="authors").strength == 3.0  # type: ignore[attr-defined]
    method = make_method("mas", seed=2, importance_preset="authors", heads="learned")
    assert method.seed == 2 and method.opts.heads == "learned"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: MAS(importance_preset="paper"),
            "mas: option importance_preset must be one of authors, got 'paper'",
        ),
        (lambda: MAS(importance_preset=1), "must be one of authors, got 1"),
        (
            lambda: make_options("ewc", importance_preset="authors"),
            "method ewc has no option importance_preset",
        ),
        (
            lambda: make_options("l-mas", importance_preset="authors"),
            "method l-mas has no option importance_preset",
        ),
        (lambda: MAS(MASOptions(), importance_preset="authors"), "given with an options object"),
        (
            lambda: MASOptions.from_preset("authors", granularity="exact"),
            "granularity must be one of sample, batch",
        ),
        (
            lambda: MASOptions.from_preset("authors", heads2="current"),
            "no option heads2; it takes strength",
        ),
    ],
)
def test_bad_presets_and_combinations_are_refused(call: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()  # type: ignore[operator]


def test_the_cli_reads_the_preset() -> None:
    assert parse_option("mas.importance_preset=authors") == ("mas", PRESET_KEY, "authors")
    with pytest.raises(ConfigError, match=r"--option mas\.importance_preset=paper: mas: option"):
        parse_option("mas.importance_preset=paper")
    with pytest.raises(ConfigError, match="method ewc has no option importance_preset"):
        parse_option("ewc.importance_preset=authors")
    with pytest.raises(
        ConfigError, match=r"it takes strength, .*, importance_data, importance_preset"
    ):
        parse_option("mas.preset=authors")


def test_an_experiment_expands_the_preset_and_checks_it_first() -> None:
    spec = ExperimentSpec(
        methods=("mas",), method_options={"mas": {"importance_preset": "authors", "norm": "l1"}}
    )
    options, tuned = method_settings(spec, "mas")
    assert dataclasses.asdict(options) == dataclasses.asdict(
        MASOptions(**{**AUTHORS, "norm": "l1"}, strength=tuned["strength"] if tuned else 1.0)  # type: ignore[arg-type]
    )
    assert spec.to_json()["method_options"] == {
        "mas": {"importance_preset": "authors", "norm": "l1"}
    }
    bad = dataclasses.replace(spec, method_options={"mas": {"importance_preset": "paper"}})
    with pytest.raises(ConfigError, match="importance_preset must be one of authors"):
        bad.check()


def test_the_preset_computes_the_authors_omega() -> None:
    """Ω = (1/B) Σ_b |G_b| / n_b over batches of 200 (the last one shorter), G_b the gradient of
    the batch sum of ‖F‖² with F the finished task's head alone, in eval mode."""
    torch.manual_seed(0)
    model = MultiHeadClassifier(torch.nn.Sequential(MLP(12, (9,)), torch.nn.Dropout(0.5)), 9)
    model.add_head(0, 2)
    model.add_head(1, 3)
    x = torch.randn(450, 12)
    task = Task.from_tensors(1, "b", 1, 3, x, torch.zeros(450, dtype=torch.long), x[:5], torch.zeros(5))
    model.train()  # the preset measures in eval mode (dropout off) and leaves the mode alone
    omega = MAS(importance_preset="authors").importance(model, task, [task, task])
    assert model.training

    model.eval()
    params = dict(model.named_parameters())
    expected = {name: torch.zeros_like(p) for name, p in params.items()}
    batches = torch.split(x, 200)
    for batch in batches:
        grads = torch.autograd.grad(
            model(batch, 1).square().sum(), list(params.values()), allow_unused=True
        )
        for (name, _), g in zip(params.items(), grads, strict=True):
            if g is not None:
                expected[name] += g.abs() / len(batch)
    assert set(omega) == {n for n in params if not n.startswith("heads.0.")}  # head 0 is not F
    for name, value in omega.items():
        torch.testing.assert_close(value, expected[name] / len(batches), rtol=1e-5, atol=1e-7)
    # with batches of one size, ≤ the exact per-sample Ω (triangle inequality), not equal to it
    even = dataclasses.replace(task, train=TensorData(x[:400], task.train_y[:400]))
    batched = MAS(importance_preset="authors").importance(model, even, [even])
    exact = MAS(heads="current").importance(model, even, [even])
    assert all(bool((exact[n] >= batched[n] - 1e-6).all()) for n in batched)
    assert any(not torch.allclose(exact[n], batched[n]) for n in batched)
