"""One experiment: a benchmark, a scenario, several methods under one seed and budget → a results dict."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memaware import __version__
from memaware.configs import preset
from memaware.data.benchmarks import make_scenario
from memaware.errors import ConfigError
from memaware.methods import METHODS, make_method
from memaware.models import build_model
from memaware.training.loop import TrainConfig, run_method


@dataclass(frozen=True)
class ExperimentSpec:
    """Everything that defines a run; it is written into ``results.json`` as ``config``."""

    benchmark: str = "split-mnist"
    scenario: str = "task"
    methods: Sequence[str] = ("finetune", "mas")
    train: TrainConfig = field(default_factory=TrainConfig)
    #: λ of the regularising methods; ``None`` takes the benchmark's preset (else 1, the paper's value)
    strength: float | None = None
    granularity: str = "sample"
    model: str = "mlp"
    hidden: Sequence[int] = (400, 400)
    n_tasks: int = 10
    data_dir: str | None = None
    download: bool = False

    def check(self) -> None:
        """Reject bad options before any data is read or any file written."""
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(
                f"unknown method(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(METHODS)}"
            )
        if self.strength is not None and self.strength < 0:
            raise ConfigError(f"--lambda must be >= 0, got {self.strength}")
        if self.granularity not in ("sample", "batch"):
            raise ConfigError(f"unknown granularity {self.granularity!r}; use sample or batch")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden sizes must be positive, got {list(self.hidden)}")

    def to_json(self) -> dict[str, Any]:
        config = asdict(self)
        config["methods"], config["hidden"] = list(self.methods), list(self.hidden)
        return config


def versions() -> dict[str, str]:
    """Versions of what produced the numbers."""
    return {
        "memaware": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def run_experiment(spec: ExperimentSpec, show_progress: bool = False) -> dict[str, Any]:
    """Run every method of ``spec`` on the same task stream, seed and budget; return the results dict."""
    spec.check()
    scenario = make_scenario(
        spec.benchmark,
        spec.scenario,
        data_dir=spec.data_dir,
        download=spec.download,
        seed=spec.train.seed,
        n_tasks=spec.n_tasks,
    )
    methods: dict[str, Any] = {}
    for name in spec.methods:
        tuned = preset(spec.benchmark, spec.scenario, name) if spec.strength is None else None
        strength = (
            spec.strength if spec.strength is not None else (tuned or {}).get("strength", 1.0)
        )
        method = make_method(name, strength=strength, granularity=spec.granularity)
        result = run_method(
            method,
            scenario,
            lambda: build_model(spec.model, scenario.input_shape, spec.hidden),
            spec.train,
            show_progress=show_progress,
            label=name,
        )
        methods[name] = {
            **result.accuracy.summary(),
            "wall_time_s": result.wall_time_s,
            "options": method.options(),
        }
        if tuned is not None:
            methods[name]["preset"] = tuned
    return {
        "memaware_version": __version__,
        "benchmark": spec.benchmark,
        "scenario": spec.scenario,
        "task_names": scenario.task_names,
        "config": spec.to_json(),
        "seeds": [spec.train.seed],
        "versions": versions(),
        "methods": methods,
    }


def default_out_dir(spec: ExperimentSpec) -> Path:
    """``runs/<benchmark>-<scenario>-<timestamp>``: a new folder per run."""
    import time

    return Path("runs") / f"{spec.benchmark}-{spec.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"
