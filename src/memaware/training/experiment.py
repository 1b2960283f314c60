"""Experiments: a benchmark, a scenario, several methods over several seeds → one results dict.

Every method sees the same task stream, the same training budget and, seed by seed, the same
initial weights and batch order (see :func:`memaware.training.loop.run_method`). The run's seed
also seeds each method's own random streams (sampled Fisher labels, LwF's warm-up order, EBLL's
autoencoders), so the spread over seeds includes theirs.

Every option is checked (:meth:`ExperimentSpec.check`) before any data is read; a method that
fails later ends the run with :class:`ExperimentError`, which carries the results of the methods
finished before it.
"""

from __future__ import annotations

import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memaware import __version__
from memaware.checkpoint.run import CheckpointOptions
from memaware.configs import preset
from memaware.data.benchmarks import DataRequest, check_benchmark, make_scenario
from memaware.data.scenarios import SETTINGS, Scenario
from memaware.errors import ConfigError, MemawareError
from memaware.methods import METHODS, MethodOptions, check_task_loop, make_options, methods_for
from memaware.models import MultiHeadClassifier, build_model, check_model, preprocessing
from memaware.training.config import TrainConfig
from memaware.training.loop import run_method

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
    #: per method, fields of its options dataclass, e.g. ``{"mas": {"granularity": "batch"}}``;
    #: a ``strength`` given here wins over ``strength`` above and over the preset
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: a name of :data:`memaware.models.MODELS` (``--model``)
    model: str = "mlp"
    #: a state_dict file of the backbone (``--weights``); ``None``: the model's own weights
    weights: str | None = None
    hidden: Sequence[int] = (400, 400)
    #: length of permuted-mnist, equal tasks of split-cifar10/100; None: the benchmark's default
    n_tasks: int | None = None
    #: seed of the benchmark's own randomness (Permuted-MNIST's permutations, data splits)
    data_seed: int = 0
    data_dir: str | None = None
    download: bool = False
    #: the image folders of the ``folders`` benchmark: ``data_root``/<name> for each of ``tasks``
    data_root: str | None = None
    tasks: Sequence[str] = ()
    #: augment the training images read from disk (random resized crop and flip)
    augment: bool = False

    def data_request(self) -> DataRequest:
        """What this run asks of its benchmark (the model's preprocessing for image folders)."""
        return DataRequest(
            self.scenario,
            data_dir=self.data_dir,
            download=self.download,
            seed=self.data_seed,
            n_tasks=self.n_tasks,
            data_root=self.data_root,
            tasks=tuple(self.tasks),
            preprocessing=preprocessing(self.model),
            augment=self.augment,
        )

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
        check_model(self.model, self.weights)  # an unknown model or bad weights fail now
        check_benchmark(self.benchmark, self.data_request())
        names = self.method_names()
        unknown = [m for m in names if m not in METHODS]
        if unknown or not names:
            raise ConfigError(
                f"unknown method(s) {', '.join(unknown) or '(none given)'}; "
                f"known: {', '.join(METHODS)}, or all"
            )
        check_task_loop(names)
        unsupported = [
            m for m in names if m in METHODS and self.scenario not in METHODS[m].scenarios
        ]
        if unsupported:
            raise ConfigError(
                f"{', '.join(unsupported)} do not support the {self.scenario} scenario"
            )
        if self.strength is not None and not (math.isfinite(self.strength) and self.strength >= 0):
            raise ConfigError(f"--lambda must be a finite number >= 0, got {self.strength}")
        if not self.seeds:
            raise ConfigError("at least one seed is needed")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ConfigError(f"seeds must be integers >= 0, got {list(self.seeds)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(
                f"seeds must differ (the spread over seeds counts each once), got {list(self.seeds)}"
            )
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden sizes must be positive, got {list(self.hidden)}")
        if self.n_tasks is not None and self.n_tasks < 1:
            raise ConfigError(f"the number of tasks must be >= 1, got {self.n_tasks}")
        strays = sorted(set(self.method_options) - set(names))
        if strays:
            raise ConfigError(
                f"options given for {', '.join(strays)}, which this run does not train "
                f"(its methods: {', '.join(names)})"
            )
        for name in names:  # every method's options, checked now
            method_settings(self, name)

    @classmethod
    def from_json(cls, config: Mapping[str, Any]) -> ExperimentSpec:
        """The spec :meth:`to_json` wrote (``results.json``'s ``config``); ConfigError if it does not fit."""
        try:
            fields = dict(config)
            fields["train"] = TrainConfig(**fields["train"])
            for name in ("methods", "seeds", "hidden", "tasks"):
                fields[name] = tuple(fields[name])
            return cls(**fields)
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"not a memaware run config ({type(exc).__name__}: {exc})") from None

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


def method_settings(spec: ExperimentSpec, name: str) -> tuple[MethodOptions, dict[str, Any] | None]:
    """The options method ``name`` runs with, and the preset they took its strength from (if any).

    Its strength is, by precedence: ``method_options[name]["strength"]``, ``spec.strength``
    (``--lambda``), the tuned preset of the benchmark and scenario, the method's default.
    """
    given = dict(spec.method_options.get(name, {}))
    tuned = None
    strength = spec.strength
    if strength is None and "strength" not in given:
        tuned = preset(spec.benchmark, spec.scenario, name)
        strength = float(tuned["strength"]) if tuned else None
    options = make_options(name, strength, **given)
    return options, tuned


class ExperimentError(MemawareError):
    """A method failed during the run; :attr:`results` holds the methods finished before it.

    ``results["failed"]`` names the method, the seed and the error.
    """

    def __init__(self, message: str, results: dict[str, Any]) -> None:
        super().__init__(message)
        self.results = results


def run_experiment(
    spec: ExperimentSpec,
    show_progress: bool = False,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    checkpoints: CheckpointOptions | None = None,
) -> dict[str, Any]:
    """Run every method of ``spec`` for every seed on the same task stream; return the results dict.

    With ``checkpoints`` each method and seed is checkpointed in ``<root>/<method>-seed<seed>``
    and, with ``checkpoints.resume``, goes on from there (a finished one is not trained again).

    ``on_result`` is called with the results so far each time a method has finished all its
    seeds (the CLI writes them, so that a run that dies later keeps them). An exception while a
    method trains is raised as :class:`ExperimentError` carrying the finished methods' results,
    except a :class:`MemawareError` before any method has finished (bad input found at the first
    step, e.g. a model that does not fit the data), which is raised as it is.
    """
    spec.check()
    if checkpoints is not None:
        checkpoints.check_fresh()
    scenario = make_scenario(spec.benchmark, **vars(spec.data_request()))
    methods: dict[str, Any] = {}
    results: dict[str, Any] = {
        "memaware_version": __version__,
        "benchmark": spec.benchmark,
        "scenario": spec.scenario,
        "task_names": scenario.task_names,
        "config": spec.to_json(),
        "seeds": list(spec.seeds),
        "versions": versions(),
        "methods": methods,
    }
    for name in spec.method_names():
        options, tuned = method_settings(spec, name)
        runs = []
        for seed in spec.seeds:
            try:
                method = METHODS[name](options, seed=seed)
                result = run_method(
                    method,
                    scenario,
                    _model_factory(spec, scenario),
                    replace(spec.train, seed=seed),
                    show_progress=show_progress,
                    label=f"{name} seed {seed}",
                    checkpoints=None
                    if checkpoints is None
                    else checkpoints.for_run(results["config"], scenario.input_shape, method, seed),
                )
            except Exception as exc:
                if isinstance(exc, MemawareError) and not methods:
                    raise  # bad input found at the first step (a model that does not fit)
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line
                results["failed"] = {"method": name, "seed": seed, "error": reason}
                raise ExperimentError(f"{name} (seed {seed}) failed: {reason}", results) from exc
            runs.append(
                {"seed": seed, **result.accuracy.summary(), "wall_time_s": result.wall_time_s}
            )
        methods[name] = aggregate(runs) | {"options": asdict(options)}
        if tuned is not None:
            methods[name]["preset"] = tuned
        if on_result is not None:
            on_result(results)
    return results


def _model_factory(spec: ExperimentSpec, scenario: Scenario) -> Callable[[], MultiHeadClassifier]:
    return lambda: build_model(spec.model, scenario.input_shape, spec.hidden, spec.weights)


def default_out_dir(spec: ExperimentSpec, command: str = "run") -> Path:
    """``runs/<command>-<benchmark>-<scenario>-<timestamp>``: a new folder per run."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{command}-{spec.benchmark}-{spec.scenario}-{stamp}"


def prepare_out_dir(path: Path) -> bool:
    """Create the output folder ``path`` (and its parents) and check a file can be written there.

    Done before any work, so that an unwritable ``--out`` fails in seconds, not after training.
    Returns whether the folder was created now (a run that ends before writing anything removes
    it again). Raises :class:`ConfigError` with the reason otherwise.
    """
    existed = path.is_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".memaware-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write to the output folder {path}: {exc.strerror or exc}"
        ) from None
    return not existed
