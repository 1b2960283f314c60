"""Tune a method's strength on a validation split held out from the training data (never the test set)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from memaware import __version__
from memaware.checkpoint.run import CheckpointOptions
from memaware.configs import PRESET_DIR, preset, save_preset
from memaware.data.benchmarks import check_benchmark, make_scenario
from memaware.data.scenarios import SETTINGS, with_validation
from memaware.errors import ConfigError
from memaware.methods import (
    accepted_options,
    check_task_loop,
    make_method,
    make_options,
    method_class,
)
from memaware.models import build_model, check_model
from memaware.training.config import TrainConfig
from memaware.training.loop import run_method


def sweep_strength(
    benchmark: str,
    scenario: str,
    method: str,
    values: Sequence[float],
    seeds: Sequence[int],
    *,
    train: TrainConfig | None = None,
    validation_fraction: float = 0.1,
    model: str = "mlp",
    weights: str | None = None,
    hidden: Sequence[int] = (400, 400),
    data_dir: str | None = None,
    show_progress: bool = False,
    options: Mapping[str, Any] | None = None,
    checkpoints: CheckpointOptions | None = None,
) -> dict[str, Any]:
    """Mean validation average accuracy of ``method`` for each strength; the best becomes the preset.

    Every run trains on the training data minus a stratified ``validation_fraction`` of each task
    (split with seed 0) and is scored on that held-out part. ``options`` are the method's other
    options (every value tried shares them; they are recorded in the provenance). The method's
    own random streams are seeded by each run's seed; ``model`` and ``weights`` choose the
    backbone (:func:`memaware.models.build_model`). Every input is checked before any data is
    read.

    With ``checkpoints`` each value and seed is checkpointed in
    ``<root>/lambda-<value>/<method>-seed<seed>`` (:func:`value_checkpoints`) and, with
    ``checkpoints.resume``, goes on from there (a finished one is not trained again).
    """
    options = dict(options or {})
    check_sweep(
        benchmark,
        scenario,
        method,
        values,
        seeds,
        validation_fraction,
        options,
        model=model,
        weights=weights,
    )
    train = train or TrainConfig()
    stream = with_validation(
        make_scenario(benchmark, scenario, data_dir=data_dir), validation_fraction, seed=0
    )
    scores: dict[str, list[float]] = {}
    config = {
        "command": "sweep",
        "benchmark": benchmark,
        "scenario": scenario,
        "validation": validation_fraction,
        "train": asdict(train),
        "model": model,
        "weights": weights,
        "hidden": list(hidden),
        "data_dir": data_dir,
    }
    for value in values:
        for seed in seeds:
            learner = make_method(method, seed=seed, strength=value, **options)
            hook = None
            if checkpoints is not None:
                where = value_checkpoints(checkpoints, value)
                hook = where.for_run(config, stream.input_shape, learner, seed)
            result = run_method(
                learner,
                stream,
                lambda: build_model(model, stream.input_shape, hidden, weights),
                replace(train, seed=seed),
                show_progress=show_progress,
                label=f"{method} λ={value:g} seed {seed}",
                checkpoints=hook,
            )
            scores.setdefault(f"{value:g}", []).append(result.accuracy.average_accuracy())
    return {
        "strength": best_strength(scores),
        "provenance": {
            "tuned_by": "memaware sweep",
            "criterion": "mean validation average accuracy over seeds",
            "validation": f"stratified {validation_fraction:g} of each task's training data (seed 0)",
            "seeds": list(seeds),
            "train": asdict(train),
            "hidden": list(hidden),
            # an MLP sweep records no model, so that it merges with presets from before --model
            **({"model": model} if model != "mlp" else {}),
            **({"weights": weights} if weights is not None else {}),
            **({"options": options} if options else {}),
            "validation_average_accuracy": scores,
            "memaware_version": __version__,
            "date": time.strftime("%Y-%m-%d"),
        },
    }


def value_checkpoints(checkpoints: CheckpointOptions, value: float) -> CheckpointOptions:
    """The checkpoints of the sweep's runs with strength ``value``: ``<root>/lambda-<value>``."""
    return replace(checkpoints, root=checkpoints.root / f"lambda-{value:g}")


def check_sweep(
    benchmark: str,
    scenario: str,
    method: str,
    values: Sequence[float],
    seeds: Sequence[int],
    validation_fraction: float,
    options: Mapping[str, Any],
    *,
    model: str = "mlp",
    weights: str | None = None,
) -> None:
    """Raise :class:`ConfigError` for a sweep that cannot run, before any work."""
    check_benchmark(benchmark)
    if scenario not in SETTINGS:
        raise ConfigError(f"unknown scenario {scenario!r}; choose one of {', '.join(SETTINGS)}")
    cls = method_class(method)
    check_task_loop([method])
    if scenario not in cls.scenarios:
        raise ConfigError(f"{method} does not support the {scenario} scenario")
    if "strength" not in accepted_options(cls):
        raise ConfigError(f"{method} has no strength to sweep")
    if "strength" in options:
        raise ConfigError(f"{method}.strength is what the sweep tunes: give it as --values")
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(
            f"sweep values must be a non-empty list of finite numbers >= 0, got {list(values)}"
        )
    if not seeds or any(s < 0 for s in seeds):
        raise ConfigError(f"a sweep needs at least one seed, each >= 0, got {list(seeds)}")
    if not 0 < validation_fraction < 1:
        raise ConfigError(f"the validation fraction must be in (0, 1), got {validation_fraction}")
    for value in values:
        make_options(method, strength=value, **options)
    check_model(model, weights)


def best_strength(scores: dict[str, list[float]]) -> float:
    """The value with the best mean validation score (the sweep's criterion)."""
    return float(max(scores, key=lambda value: statistics.fmean(scores[value])))


def write_sweep(
    benchmark: str,
    scenario: str,
    method: str,
    entry: dict[str, Any],
    directory: Path = PRESET_DIR,
    *,
    extend: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Store the sweep's result as the preset of ``method`` on ``benchmark``/``scenario``.

    With ``extend``, a stored preset tuned under the same protocol (criterion, validation split,
    seeds, training budget, model) keeps the values it tried: the grids are merged (the new
    sweep's scores win for a value tried twice) and the best value over both is chosen. Returns
    the file and the entry written.
    """
    old = preset(benchmark, scenario, method, directory) if extend else None
    merged = merge_sweeps(old, entry)
    return save_preset(benchmark, scenario, method, merged, directory), merged


#: what must agree for two sweeps' grids to merge (``model``, ``weights`` and ``options`` are
#: absent for the defaults)
PROTOCOL_KEYS = (
    "criterion",
    "validation",
    "seeds",
    "train",
    "model",
    "weights",
    "hidden",
    "options",
)


def _protocol(provenance: dict[str, Any], key: str) -> Any:
    """``provenance[key]``; for ``train``, with the fields a preset from before they existed
    lacks filled in by their defaults (what that sweep ran with)."""
    value = provenance.get(key)
    if key == "train" and isinstance(value, dict):
        return asdict(TrainConfig()) | value
    return value


def merge_sweeps(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` extended with the values ``old`` tried, when both ran the same protocol."""
    if old is None or "provenance" not in old:
        return new
    before, after = old["provenance"], new["provenance"]
    if any(_protocol(before, key) != _protocol(after, key) for key in PROTOCOL_KEYS):
        return new
    scores = {**before["validation_average_accuracy"], **after["validation_average_accuracy"]}
    scores = dict(sorted(scores.items(), key=lambda item: float(item[0])))
    dates = [*before.get("extends", []), before.get("date")]
    return {
        "strength": best_strength(scores),
        "provenance": {**after, "validation_average_accuracy": scores, "extends": dates},
    }
