"""Tune a method's strength on a validation split held out from the training data (never the test set)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from memaware import __version__
from memaware.configs import PRESET_DIR, preset, save_preset
from memaware.data.benchmarks import make_scenario
from memaware.data.scenarios import with_validation
from memaware.errors import ConfigError
from memaware.methods import make_method
from memaware.models import build_model
from memaware.training.loop import TrainConfig, run_method


def sweep_strength(
    benchmark: str,
    scenario: str,
    method: str,
    values: Sequence[float],
    seeds: Sequence[int],
    *,
    train: TrainConfig | None = None,
    validation_fraction: float = 0.1,
    hidden: Sequence[int] = (400, 400),
    data_dir: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Mean validation average accuracy of ``method`` for each strength; the best becomes the preset.

    Every run trains on the training data minus a stratified ``validation_fraction`` of each task
    (split with seed 0) and is scored on that held-out part.
    """
    if not values or any(v < 0 for v in values):
        raise ConfigError(
            f"sweep values must be a non-empty list of numbers >= 0, got {list(values)}"
        )
    if not seeds:
        raise ConfigError("a sweep needs at least one seed")
    train = train or TrainConfig()
    stream = with_validation(
        make_scenario(benchmark, scenario, data_dir=data_dir), validation_fraction, seed=0
    )
    scores: dict[str, list[float]] = {}
    for value in values:
        for seed in seeds:
            result = run_method(
                make_method(method, strength=value),
                stream,
                lambda: build_model("mlp", stream.input_shape, hidden),
                replace(train, seed=seed),
                show_progress=show_progress,
                label=f"{method} λ={value:g} seed {seed}",
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
            "validation_average_accuracy": scores,
            "memaware_version": __version__,
            "date": time.strftime("%Y-%m-%d"),
        },
    }


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


PROTOCOL_KEYS = ("criterion", "validation", "seeds", "train", "hidden")


def merge_sweeps(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new`` extended with the values ``old`` tried, when both ran the same protocol."""
    if old is None or "provenance" not in old:
        return new
    before, after = old["provenance"], new["provenance"]
    if any(before.get(key) != after.get(key) for key in PROTOCOL_KEYS):
        return new
    scores = {**before["validation_average_accuracy"], **after["validation_average_accuracy"]}
    scores = dict(sorted(scores.items(), key=lambda item: float(item[0])))
    dates = [*before.get("extends", []), before.get("date")]
    return {
        "strength": best_strength(scores),
        "provenance": {**after, "validation_average_accuracy": scores, "extends": dates},
    }
