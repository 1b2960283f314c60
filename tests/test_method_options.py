"""Method options as data: one checked dataclass per method, the CLI's parser, the run's seed."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from memaware.data.scenarios import Task
from memaware.errors import ConfigError
from memaware.methods import (
    EBLL,
    EWC,
    MAS,
    METHODS,
    LwF,
    MASOptions,
    Method,
    ModeIMM,
    OnlineEWC,
    make_method,
    make_options,
    option_docs,
    parse_option,
)
from memaware.methods.options import show
from memaware.models import MultiHeadClassifier

WITH_STRENGTH = [name for name, cls in METHODS.items() if "strength" in cls().options()]


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_has_one_checked_options_dataclass(name: str) -> None:
    cls = METHODS[name]
    options = cls.Options
    assert dataclasses.is_dataclass(options) and options.method == name
    assert options.__dataclass_params__.frozen  # type: ignore[attr-defined]
    method = cls()
    assert type(method.opts) is options and method.options() == dataclasses.asdict(method.opts)
    for doc in option_docs(options):  # every field documented, its default valid and writable
        assert doc.help, f"{name}.{doc.name} has no help"
        parsed = parse_option(f"{name}.{doc.name}={doc.default}")
        assert parsed == (name, doc.name, getattr(method.opts, doc.name))
    with pytest.raises(dataclasses.FrozenInstanceError):
        method.opts.seed = 1  # type: ignore[attr-defined]


def test_one_word_per_idea_for_the_importance_data() -> None:
    names = {name: set(cls().options()) for name, cls in METHODS.items()}
    for name in ("mas", "l-mas", "ewc", "online-ewc", "mode-imm"):
        assert {"importance_batch_size", "max_samples"} <= names[name], name
    every = set().union(*names.values())
    assert not {n for n in every if n.startswith("fisher")}
    assert "seed" not in every  # the seed is the run's, not a setting
    # shared by inheritance where shared: EWC ⊂ online EWC, LwF ⊂ EBLL, mean- ⊂ mode-IMM
    assert names["ewc"] < names["online-ewc"] and names["lwf"] < names["ebll"]
    assert names["mean-imm"] < names["mode-imm"] and names["l-mas"] < names["mas"]


def test_both_constructor_forms_build_the_same_method() -> None:
    keywords = MAS(strength=2, granularity="batch")
    given = MAS(MASOptions(strength=2.0, granularity="batch"))
    assert keywords.opts == given.opts and keywords.opts.strength == 2.0
    assert isinstance(keywords.opts.strength, float)  # an int is taken as the float it means
    # keywords replace fields of the given options
    assert MAS(MASOptions(heads="current"), norm="l1").opts == MASOptions(
        heads="current", norm="l1"
    )
    with pytest.raises(TypeError, match="MASOptions"):
        MAS(0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="LwFOptions"):
        LwF(EBLL.Options())  # another method's options, even a subclass of LwF's
    with pytest.raises(ConfigError, match="method ewc has no option gamma; it takes strength"):
        EWC(gamma=0.5)
    with pytest.raises(ConfigError, match="seed"):
        EWC(seed=-1)


@pytest.mark.parametrize("name", WITH_STRENGTH)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0])
def test_non_finite_or_negative_strength_is_refused(name: str, bad: float) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}: option strength must be a finite number"):
        make_method(name, strength=bad)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("mas", {"heads": "all"}, "mas: option heads must be one of learned, current, got 'all'"),
        ("mas", {"granularity": "exact"}, "one of sample, batch"),
        ("mas", {"alpha": 1.5}, "mas: option alpha must be a number in [0, 1], got 1.5"),
        ("l-mas", {"importance_batch_size": 0}, "importance_batch_size must be an integer >= 1"),
        ("ewc", {"max_samples": 0}, "max_samples must be an integer >= 1 or none, got 0"),
        ("ewc", {"importance_batch_size": 2.5}, "must be an integer, got 2.5"),
        ("ewc", {"labels": "pred"}, "one of empirical, true"),
        ("online-ewc", {"gamma": 1.5}, "gamma must be a number in [0, 1]"),
        ("si", {"damping": 0.0}, "si: option damping must be a finite number > 0"),
        ("lwf", {"temperature": math.nan}, "temperature must be a finite number"),
        ("lwf", {"warmup_epochs": -1}, "warmup_epochs must be an integer >= 0"),
        ("ebll", {"ae_lr": 0.0}, "ae_lr must be a finite number > 0"),
        ("ebll", {"code_size": True}, "code_size must be an integer, got True"),
        ("mode-imm", {"eps": -1e-8}, "eps must be a finite number >= 0"),
        ("mean-imm", {"weight_transfer": "no"}, "weight_transfer must be true or false"),
        ("mean-imm", {"eps": 1e-8}, "method mean-imm has no option eps"),
    ],
)
def test_invalid_options_name_the_method_the_option_and_what_it_accepts(
    name: str, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_options(name, **options)


def test_make_options_strength_and_explicit_options() -> None:
    assert make_options("mas", 3.0).strength == 3.0  # type: ignore[attr-defined]
    assert make_options("mas", 3.0, strength=0.5).strength == 0.5  # type: ignore[attr-defined]
    assert make_options("finetune", 3.0) == METHODS["finetune"].Options()  # no strength to set
    with pytest.raises(ConfigError, match="method finetune has no option strength"):
        make_options("finetune", strength=3.0)
    with pytest.raises(ConfigError, match="unknown method 'gem'"):
        make_options("gem")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mas.heads=current", ("mas", "heads", "current")),
        ("ewc.labels = empirical", ("ewc", "labels", "empirical")),
        ("mode-imm.max_samples=none", ("mode-imm", "max_samples", None)),
        ("mode-imm.max_samples=300", ("mode-imm", "max_samples", 300)),
        ("mean-imm.weight_transfer=false", ("mean-imm", "weight_transfer", False)),
        ("lwf.warmup_lr=3e-2", ("lwf", "warmup_lr", 0.03)),
        ("online-ewc.gamma=1", ("online-ewc", "gamma", 1.0)),
    ],
)
def test_parse_option(text: str, expected: tuple[str, str, object]) -> None:
    assert parse_option(text) == expected
    assert type(parse_option(text)[2]) is type(expected[2])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mas.heads", "expected METHOD.FIELD=VALUE"),
        ("heads=current", "expected METHOD.FIELD=VALUE"),
        ("gem.strength=1", "unknown method 'gem'"),
        ("mas.gamma=1", "method mas has no option gamma"),
        ("mas.heads=all", "mas: option heads: expected one of learned, current, got 'all'"),
        ("ewc.importance_batch_size=1.5", "expected an integer, got '1.5'"),
        ("ewc.max_samples=many", "expected an integer or none, got 'many'"),
        ("mean-imm.weight_transfer=maybe", "expected true or false"),
        ("mas.strength=", "expected a number, got ''"),
    ],
)
def test_parse_option_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^--option {text.split('=')[0]}") as error:
        parse_option(text)
    assert message in str(error.value)


def test_show_writes_values_as_the_cli_reads_them() -> None:
    assert [show(v) for v in (None, True, 1e-4, 200, "sample")] == [
        "none",
        "true",
        "0.0001",
        "200",
        "sample",
    ]


# --- the run's seed reaches every method's own random streams ------------------------------------

IN = 6


def _task(index: int, head: int, n: int = 64) -> Task:
    g = torch.Generator().manual_seed(50 + index)
    x = torch.randn(n, IN, generator=g)
    y = (x @ torch.randn(IN, 3, generator=g)).argmax(-1)
    return Task.from_tensors(index, f"t{index}", head, 3, x, y, x[:8], y[:8])


def _model() -> MultiHeadClassifier:
    torch.manual_seed(0)
    model = MultiHeadClassifier(nn.Sequential(nn.Linear(IN, 8), nn.ReLU()), feature_dim=8)
    model.add_head(0, 3)
    model.add_head(1, 3)
    return model


def _two_tasks(make: Callable[..., Method], seed: int) -> list[torch.Tensor]:
    """What the method's random stream produced over two tasks."""
    model, method, tasks = _model(), make(seed=seed), [_task(0, 0), _task(1, 1)]
    for i, task in enumerate(tasks):
        method.before_task(model, task, tasks[: i + 1])
        method.after_task(model, task, tasks[: i + 1])
    if isinstance(method, EBLL):
        return [p.detach() for a in method.autoencoders for p in a.parameters()]
    if isinstance(method, LwF):
        return [model.heads["1"].weight.detach()]  # warmed up on task 1
    if isinstance(method, OnlineEWC):
        assert method.omega is not None
        return list(method.omega.values())
    assert isinstance(method, EWC | ModeIMM)
    return list(method.fishers[-1].values())


STREAMS: dict[str, Callable[..., Method]] = {
    "ewc (sampled labels)": lambda seed: EWC(seed=seed),
    "online-ewc (sampled labels)": lambda seed: OnlineEWC(seed=seed),
    "mode-imm (sampled labels)": lambda seed: ModeIMM(seed=seed),
    "lwf (warm-up order)": lambda seed: LwF(seed=seed, warmup_epochs=1, batch_size=16),
    "ebll (autoencoder init and order)": lambda seed: EBLL(
        seed=seed, warmup_epochs=0, code_size=4, ae_epochs=1, batch_size=16
    ),
}


@pytest.mark.parametrize("name", list(STREAMS))
def test_two_seeds_give_different_streams_one_seed_the_same(name: str) -> None:
    make = STREAMS[name]
    first, again, other = _two_tasks(make, 0), _two_tasks(make, 0), _two_tasks(make, 1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_make_method_passes_the_seed() -> None:
    assert make_method("ewc", seed=7).seed == 7 and make_method("finetune").seed == 0
