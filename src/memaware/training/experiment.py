"""Experiments: a benchmark, a scenario, several methods over several seeds → one results dict.

Every method sees the same task stream, the same training budget and, seed by seed, the same
initial weights and batch order (see :func:`memaware.training.loop.run_method`).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memaware import __version__
from memaware.configs import preset
from memaware.data.benchmarks import BENCHMARKS, make_scenario
from memaware.data.scenarios import SETTINGS, Scenario
from memaware.errors import ConfigError
from memaware.methods import METHODS, make_method, methods_for
from memaware.models import MultiHeadClassifier, build_model
from memaware.training.loop import TrainConfig, run_method

SUMMARY_KEYS = ("average_accuracy", "forgetting", "bwt", "average_drop", "wall_time_s")


@dataclass(frozen=True)
class ExperimentSpec:
    """Everything that defines a run; it is written into ``results.json`` as ``config``."""

    benchmark: str = "split-mnist"
    scenario: str = "task"
    methods: Sequence[str] = ("finetune", "mas")
    seeds: Sequence[int] = (0,)
    train: TrainConfig = field(default_factory=TrainConfig)
    #: λ of every regularising method; ``None`` takes each method's preset (else its default)
    strength: float | None = None
    #: per method, options passed to its constructor, e.g. ``{"mas": {"granularity": "batch"}}``
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    model: str = "mlp"
    hidden: Sequence[int] = (400, 400)
    n_tasks: int = 10
    #: seed of the benchmark's own randomness (Permuted-MNIST's permutations, data splits)
    data_seed: int = 0
    data_dir: str | None = None
    download: bool = False

    def method_names(self) -> list[str]:
        """The methods to run, with ``all`` expanded to every method supporting the scenario."""
        names: list[str] = []
        for name in self.methods:
            names += methods_for(self.scenario) if name == "all" else [name]
        return list(dict.fromkeys(names))

    def check(self) -> None:
        """Reject bad options before any data is read or any file written."""
        if self.scenario not in SETTINGS:
            raise ConfigError(
                f"unknown scenario {self.scenario!r}; choose one of {', '.join(SETTINGS)}"
            )
        if self.benchmark not in BENCHMARKS:
            raise ConfigError(
                f"unknown benchmark {self.benchmark!r}; known benchmarks: {', '.join(BENCHMARKS)}"
            )
        names = self.method_names()
        unknown = [m for m in names if m not in METHODS]
        if unknown or not names:
            raise ConfigError(
                f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
                f"known: {', '.join(METHODS)}, or all"
            )
        unsupported = [
            m for m in names if m in METHODS and self.scenario not in METHODS[m].scenarios
        ]
        if unsupported:
            raise ConfigError(
                f"{', '.join(unsupported)} do not support the {self.scenario} scenario"
            )
        if self.strength is not None and self.strength < 0:
            raise ConfigError(f"--lambda must be >= 0, got {self.strength}")
        if not self.seeds:
            raise ConfigError("at least one seed is needed")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden sizes must be positive, got {list(self.hidden)}")
        for name in names:  # builds each method once, so unknown options fail now
            make_method(name, self.strength, **self.method_options.get(name, {}))

    def to_json(self) -> dict[str, Any]:
        config = asdict(self)
        config["methods"], config["hidden"] = list(self.methods), list(self.hidden)
        config["seeds"] = list(self.seeds)
        config["method_options"] = {k: dict(v) for k, v in self.method_options.items()}
        return config


def versions() -> dict[str, str]:
    """Versions of what produced the numbers."""
    return {
        "memaware": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def _mean_matrix(matrices: Sequence[Sequence[Sequence[float | None]]]) -> list[list[float | None]]:
    stacked = np.array([[[np.nan if v is None else v for v in row] for row in m] for m in matrices])
    mean = stacked.mean(axis=0)
    return [[None if np.isnan(v) else float(v) for v in row] for row in mean]


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of every figure, the sample standard deviation (n − 1) of the summaries, and the runs."""
    summary: dict[str, Any] = {
        "accuracy_matrix": _mean_matrix([run["accuracy_matrix"] for run in runs]),
        "drop": np.mean([run["drop"] for run in runs], axis=0).tolist(),
        # each task's accuracy right after training it, before after_task (IMM merges there)
        "trained_accuracy": np.mean([run["trained_accuracy"] for run in runs], axis=0).tolist(),
    }
    summary |= {key: statistics.fmean(run[key] for run in runs) for key in SUMMARY_KEYS}
    summary["std"] = {
        key: statistics.stdev([run[key] for run in runs]) if len(runs) > 1 else 0.0
        for key in SUMMARY_KEYS
    }
    summary["runs"] = list(runs)
    return summary


def _method_strength(spec: ExperimentSpec, name: str) -> tuple[float | None, dict[str, Any] | None]:
    if spec.strength is not None:
        return spec.strength, None
    tuned = preset(spec.benchmark, spec.scenario, name)
    return (float(tuned["strength"]) if tuned else None), tuned


def run_experiment(spec: ExperimentSpec, show_progress: bool = False) -> dict[str, Any]:
    """Run every method of ``spec`` for every seed on the same task stream; return the results dict."""
    spec.check()
    scenario = make_scenario(
        spec.benchmark,
        spec.scenario,
        data_dir=spec.data_dir,
        download=spec.download,
        seed=spec.data_seed,
        n_tasks=spec.n_tasks,
    )
    methods: dict[str, Any] = {}
    for name in spec.method_names():
        strength, tuned = _method_strength(spec, name)
        options = dict(spec.method_options.get(name, {}))
        runs = []
        for seed in spec.seeds:
            method = make_method(name, strength, **options)
            result = run_method(
                method,
                scenario,
                _model_factory(spec, scenario),
                replace(spec.train, seed=seed),
                show_progress=show_progress,
                label=f"{name} seed {seed}",
            )
            runs.append(
                {"seed": seed, **result.accuracy.summary(), "wall_time_s": result.wall_time_s}
            )
        methods[name] = aggregate(runs) | {"options": method.options()}
        if tuned is not None:
            methods[name]["preset"] = tuned
    return {
        "memaware_version": __version__,
        "benchmark": spec.benchmark,
        "scenario": spec.scenario,
        "task_names": scenario.task_names,
        "config": spec.to_json(),
        "seeds": list(spec.seeds),
        "versions": versions(),
        "methods": methods,
    }


def _model_factory(spec: ExperimentSpec, scenario: Scenario) -> Callable[[], MultiHeadClassifier]:
    return lambda: build_model(spec.model, scenario.input_shape, spec.hidden)


def default_out_dir(spec: ExperimentSpec, command: str = "run") -> Path:
    """``runs/<command>-<benchmark>-<scenario>-<timestamp>``: a new folder per run."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{command}-{spec.benchmark}-{spec.scenario}-{stamp}"
