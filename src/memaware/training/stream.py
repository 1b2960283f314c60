"""One pass over a stream without task boundaries: every method sees the same small batches.

A scenario's tasks become one stream (:func:`memaware.data.streams.make_stream`: sharp or
blurred boundaries, seeded). Every method is trained on each incoming batch for the stream's
``passes`` steps of one optimizer kept for the whole stream (:func:`training_step`, with the
method's loss term and gradient hooks), and the stream is read once.

* A task-free method (:class:`~memaware.methods.task_free.TaskFree`) is shown batches only:
  its ``stream_batch`` chooses what the passes train on (the incoming batch, with its replay),
  ``after_stream_batch`` consolidates when it decides to; it never sees a boundary.
* A method that needs boundaries (``mas``, ``ewc``, ``si``, ...) is given the true ones:
  ``before_task`` where a task's segment starts and ``after_task`` at its true boundary, with
  the task's training samples that the stream has shown by then (its unseen ones stay unseen).

At each true boundary (which task-free methods never see) every task learned so far is
evaluated on its test set: the accuracy matrix of the usual results format, ``R[i][j]`` after
the stream passed task i's boundary. The model is also evaluated on every task at
``evaluations`` evenly spaced points of the stream, for the curve of accuracy over the stream,
and the points where a task-free method updated its importance are kept.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from memaware import __version__
from memaware.configs import preset
from memaware.data.benchmarks import DataRequest, check_benchmark, make_scenario
from memaware.data.datasets import select
from memaware.data.scenarios import Scenario, Task, with_validation
from memaware.data.streams import BOUNDARIES, DEFAULT_BLUR, Boundaries, Stream, make_stream
from memaware.errors import ConfigError, MemawareError
from memaware.methods import METHODS, Method, MethodOptions, make_options
from memaware.methods.base import Batch
from memaware.methods.task_free import TaskFree
from memaware.metrics import AccuracyMatrix
from memaware.models import MultiHeadClassifier, build_model, check_model
from memaware.training.config import OPTIMIZERS, Optimizer, resolve_device
from memaware.training.experiment import ExperimentError, aggregate, versions
from memaware.training.loop import check_model_fits, evaluate, training_step

#: the methods that need boundaries and take them from a stream: the quadratic regularisers
#: and finetuning. Joint training keeps every past task's data, LwF and EBLL warm a head up for
#: epochs over a task's data and IMM merges whole task models: none of that is one pass.
BOUNDARY_METHODS = ("finetune", "mas", "l-mas", "ewc", "online-ewc", "si", "l2")
#: the scenarios a stream supports: a shared output (see :class:`StreamSpec`)
STREAM_SCENARIOS = ("domain", "class")


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class StreamConfig:
    """The stream and the training budget, the same for every method.

    ``batch_size`` samples arrive at a time and each batch is trained on for ``passes`` steps
    (the paper's several steps per incoming batch), ``optimizer`` at ``lr`` kept for the whole
    stream. ``boundaries`` are ``sharp`` or ``blurred`` (window ``blur`` of the smallest task,
    see :mod:`memaware.data.streams`); ``evaluations`` points along the stream are scored for
    the curve. The defaults were chosen on a validation stream of Split-MNIST (README).
    """

    batch_size: int = 10
    passes: int = 2
    lr: float = 5e-5
    optimizer: Optimizer = "adam"
    momentum: float = 0.0
    boundaries: Boundaries = "blurred"
    blur: float = DEFAULT_BLUR
    evaluations: int = 40
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 2048

    def __post_init__(self) -> None:
        for name in ("batch_size", "passes", "evaluations", "eval_batch_size"):
            if not _count(getattr(self, name)):
                raise ConfigError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"the learning rate must be a finite number > 0, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        if not (isinstance(self.momentum, int | float) and 0 <= self.momentum < 1):
            raise ConfigError(f"momentum must be a number in [0, 1), got {self.momentum!r}")
        if self.momentum > 0 and self.optimizer != "sgd":
            raise ConfigError("momentum is an option of the sgd optimizer")
        if self.boundaries not in BOUNDARIES:
            raise ConfigError(
                f"unknown boundaries {self.boundaries!r}; choose one of {', '.join(BOUNDARIES)}"
            )
        if not (isinstance(self.blur, int | float) and 0 < self.blur <= 1):
            raise ConfigError(
                f"blur must be in (0, 1] (a share of the smallest task), got {self.blur!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"the seed must be an integer >= 0, got {self.seed!r}")
        resolve_device(self.device)

    def make_optimizer(self, params: Sequence[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer, fused where PyTorch has a fused kernel for the device (same update)."""
        if self.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum)
        try:  # Adam's fused kernel is about 4x faster than its loop on a small model's CPU steps
            return torch.optim.Adam(params, lr=self.lr, fused=True)
        except (RuntimeError, TypeError):  # an older PyTorch, or a device without the kernel
            return torch.optim.Adam(params, lr=self.lr)


@dataclass(frozen=True)
class StreamResult:
    """What one method achieved on one stream.

    ``accuracy``: the matrix at the true boundaries; ``positions``: the samples seen at each
    evaluation of the curve, ``curve[k][j]`` the accuracy on task j there (every task, those not
    shown yet included); ``updates``: the samples seen at each importance update of a task-free
    method; ``watched``: the loss a task-free method watched, averaged over ``watched_every``
    consecutive batches (empty if it watches none); ``boundaries`` and ``windows``: the samples
    seen at each true boundary and each boundary's blur window (:class:`~memaware.data.streams.Stream`).
    """

    accuracy: AccuracyMatrix
    wall_time_s: float
    positions: tuple[int, ...]
    curve: tuple[tuple[float, ...], ...]
    updates: tuple[int, ...]
    watched: tuple[float, ...] = ()
    watched_every: int = 1
    boundaries: tuple[int, ...] = ()
    windows: tuple[tuple[float, float], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "positions": list(self.positions),
            "accuracy": [list(row) for row in self.curve],
            "importance_updates": list(self.updates),
            "watched_loss": list(self.watched),
            "watched_every_batches": self.watched_every,
        }


def evaluation_points(n_batches: int, evaluations: int, boundaries: Sequence[int]) -> list[int]:
    """Batch counts after which the curve is scored: ``evaluations`` evenly spaced ones and the
    true boundaries (the last being the stream's end)."""
    even = {max(1, round(n_batches * (k + 1) / evaluations)) for k in range(evaluations)}
    return sorted(even | set(boundaries))


def _seen_task(task: Task, stream: Stream, batches: int) -> Task:
    return dataclasses.replace(
        task, train=select(task.train, stream.seen_rows(task.index, batches))
    )


def run_stream_method(
    method: Method,
    scenario: Scenario,
    make_model: Callable[[], MultiHeadClassifier],
    config: StreamConfig,
    *,
    show_progress: bool = False,
    label: str = "",
) -> StreamResult:
    """One pass of ``method`` over the scenario's stream (see the module doc).

    The model is built after seeding with ``config.seed`` and the stream's order is drawn from
    it, so methods compared under one seed start from the same weights and see the same batches.
    """
    if scenario.setting not in STREAM_SCENARIOS:
        raise ConfigError(_SCENARIO_ERROR.format(scenario.setting))
    task_free = isinstance(method, TaskFree)
    if not task_free and method.name not in BOUNDARY_METHODS:
        raise ConfigError(_METHOD_ERROR.format(method.name))
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = make_model().to(device)
    scenario = scenario.to(device)
    tasks = scenario.tasks
    head = tasks[0].head
    model.add_head(head, tasks[0].n_classes)
    check_model_fits(model, tasks[0])
    stream = make_stream(
        scenario, config.batch_size, config.boundaries, blur=config.blur, seed=config.seed
    )
    optimizer = config.make_optimizer(list(model.parameters()))
    points = set(evaluation_points(stream.n_batches, config.evaluations, stream.boundaries))
    n = len(tasks)
    values = np.full((n, n), np.nan)
    trained = np.full(n, np.nan)
    positions: list[int] = []
    curve: list[tuple[float, ...]] = []
    updates: list[int] = []
    watched: list[float] = []
    current = 0
    start = time.perf_counter()
    if not task_free:
        method.before_task(model, tasks[0], tasks[:1])
    model.train()
    for k, (x, y) in enumerate(
        tqdm(
            stream, desc=label or method.name, unit="batch", disable=not show_progress, leave=False
        ),
        start=1,
    ):
        incoming = Batch(x, y, head)
        batch = method.stream_batch(model, incoming) if isinstance(method, TaskFree) else incoming
        for _ in range(config.passes):
            training_step(model, method, optimizer, batch)
        if isinstance(method, TaskFree):
            if method.after_stream_batch(model, incoming):
                updates.append(stream.samples_seen(k))
            if method.watched is not None:
                watched.append(method.watched)
        while current < n and k == stream.boundaries[current]:
            task = tasks[current]
            trained[current] = evaluate(model, task, config.eval_batch_size)
            model.train()  # after_task sees the model as training left it, as in the task loop
            if not task_free:
                method.after_task(model, _seen_task(task, stream, k), tasks[: current + 1])
            for j in range(current + 1):
                values[current, j] = evaluate(model, tasks[j], config.eval_batch_size)
            current += 1
            if not task_free and current < n:
                method.before_task(model, tasks[current], tasks[: current + 1])
        if k in points:
            positions.append(stream.samples_seen(k))
            curve.append(tuple(evaluate(model, t, config.eval_batch_size) for t in tasks))
        model.train()
    every = max(1, len(watched) // 1000)
    trace = tuple(float(np.mean(watched[i : i + every])) for i in range(0, len(watched), every))
    return StreamResult(
        AccuracyMatrix(values, trained),
        time.perf_counter() - start,
        tuple(positions),
        tuple(curve),
        tuple(updates),
        trace,
        every,
        tuple(stream.samples_seen(b) for b in stream.boundaries),
        stream.windows,
    )


_SCENARIO_ERROR = (
    "a stream without task boundaries has no task id to pick a head with, so it learns a "
    "shared output: scenario domain (one head over each task's own labels, as the CVPR paper's "
    "shared output) or class (one head over every class); got {}"
)
_METHOD_ERROR = (
    "{} cannot learn from a one-pass stream; the stream takes the task-free methods "
    f"({', '.join(n for n, c in METHODS.items() if issubclass(c, TaskFree))}) and, given the "
    f"true boundaries, {', '.join(BOUNDARY_METHODS)} (joint keeps every task's data, lwf and "
    "ebll warm a head up for epochs over a task, imm merges whole task models)"
)


@dataclass(frozen=True)
class StreamSpec:
    """Everything that defines a stream run; it is written into ``results.json`` as ``config``.

    The scenario is ``domain`` (default) or ``class``: a task-free stream carries no task id, so
    it cannot pick a head by task (the task-incremental setting) and learns one shared output,
    as the CVPR paper's. ``validation`` runs on the validation stream: each task's test set is
    replaced by a held-out tenth of its training data (stratified, seed 0), the stream holds
    the rest; defaults are tuned there, never on the test sets.
    """

    benchmark: str = "split-mnist"
    scenario: str = "domain"
    methods: Sequence[str] = ("task-free-mas", "online-finetune", "mas")
    seeds: Sequence[int] = (0,)
    stream: StreamConfig = field(default_factory=StreamConfig)
    #: λ of every regularising method; ``None``: each method's preset, else its default
    strength: float | None = None
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    model: str = "mlp"
    hidden: Sequence[int] = (400, 400)
    n_tasks: int | None = None
    data_seed: int = 0
    data_dir: str | None = None
    download: bool = False
    validation: bool = False

    def data_request(self) -> DataRequest:
        return DataRequest(
            self.scenario,
            data_dir=self.data_dir,
            download=self.download,
            seed=self.data_seed,
            n_tasks=self.n_tasks,
        )

    def check(self) -> None:
        """Reject bad options before any data is read or any file written."""
        if self.scenario not in STREAM_SCENARIOS:
            raise ConfigError(_SCENARIO_ERROR.format(repr(self.scenario)))
        if self.benchmark == "folders":
            raise ConfigError(
                "the folders benchmark reads images from disk; a stream holds its samples in "
                "memory (choose another benchmark)"
            )
        check_model(self.model, None)
        check_benchmark(self.benchmark, self.data_request())
        names = list(dict.fromkeys(self.methods))
        unknown = [m for m in names if m not in METHODS]
        if unknown or not names:
            raise ConfigError(
                f"unknown method(s) {', '.join(unknown) or '(none given)'}; known: "
                f"{', '.join(METHODS)}"
            )
        for name in names:
            if not issubclass(METHODS[name], TaskFree) and name not in BOUNDARY_METHODS:
                raise ConfigError(_METHOD_ERROR.format(name))
            if self.scenario not in METHODS[name].scenarios:
                raise ConfigError(f"{name} does not support the {self.scenario} scenario")
        if self.strength is not None and not (math.isfinite(self.strength) and self.strength >= 0):
            raise ConfigError(f"--lambda must be a finite number >= 0, got {self.strength}")
        if not self.seeds or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds
        ):
            raise ConfigError(f"seeds must be integers >= 0, at least one, got {list(self.seeds)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds must differ, got {list(self.seeds)}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden sizes must be positive, got {list(self.hidden)}")
        strays = sorted(set(self.method_options) - set(names))
        if strays:
            raise ConfigError(
                f"options given for {', '.join(strays)}, which this run does not train "
                f"(its methods: {', '.join(names)})"
            )
        for name in names:
            stream_method_settings(self, name)

    def to_json(self) -> dict[str, Any]:
        config = dataclasses.asdict(self)
        config["methods"], config["hidden"] = list(self.methods), list(self.hidden)
        config["seeds"] = list(self.seeds)
        config["method_options"] = {k: dict(v) for k, v in self.method_options.items()}
        return config


def stream_method_settings(
    spec: StreamSpec, name: str
) -> tuple[MethodOptions, dict[str, Any] | None]:
    """The options method ``name`` runs with, and the preset its strength came from (if any).

    As for ``memaware run``: ``method_options[name]["strength"]``, then ``spec.strength``, then
    the benchmark's and scenario's tuned preset (boundary methods; tuned for the task loop),
    then the method's default (the task-free methods' defaults are tuned for the stream).
    """
    given = dict(spec.method_options.get(name, {}))
    tuned = None
    strength = spec.strength
    if strength is None and "strength" not in given:
        tuned = preset(spec.benchmark, spec.scenario, name)
        strength = float(tuned["strength"]) if tuned else None
    return make_options(name, strength, **given), tuned


def stream_scenario(spec: StreamSpec) -> Scenario:
    """The spec's scenario, or its validation stream's (see :class:`StreamSpec`)."""
    scenario = make_scenario(spec.benchmark, **vars(spec.data_request()))
    return with_validation(scenario) if spec.validation else scenario


def run_stream_experiment(
    spec: StreamSpec,
    show_progress: bool = False,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every method of ``spec`` for every seed on the same stream; return the results dict.

    The layout is ``memaware run``'s (per method the mean accuracy matrix at the true
    boundaries and its summaries over seeds, each seed's in ``runs``), each run adding
    ``stream``: its curve of accuracy over the stream and its importance updates
    (:meth:`StreamResult.to_json`). ``on_result`` is called after each method, as in
    :func:`memaware.training.experiment.run_experiment`; a method failing later raises
    :class:`~memaware.training.experiment.ExperimentError` with the finished ones.
    """
    spec.check()
    scenario = stream_scenario(spec)
    methods: dict[str, Any] = {}
    results: dict[str, Any] = {
        "memaware_version": __version__,
        "benchmark": spec.benchmark,
        "scenario": spec.scenario,
        "task_names": scenario.task_names,
        "config": spec.to_json(),
        "seeds": list(spec.seeds),
        "versions": versions(),
        "stream": {
            **dataclasses.asdict(spec.stream),
            "validation": spec.validation,
            "n_samples": sum(len(t.train) for t in scenario.tasks),
        },
        "methods": methods,
    }

    def make_model() -> MultiHeadClassifier:
        return build_model(spec.model, scenario.input_shape, spec.hidden)

    for name in dict.fromkeys(spec.methods):
        options, tuned = stream_method_settings(spec, name)
        runs = []
        for seed in spec.seeds:
            try:
                result = run_stream_method(
                    METHODS[name](options, seed=seed),
                    scenario,
                    make_model,
                    dataclasses.replace(spec.stream, seed=seed),
                    show_progress=show_progress,
                    label=f"{name} seed {seed}",
                )
            except Exception as exc:
                if isinstance(exc, MemawareError) and not methods:
                    raise
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())
                results["failed"] = {"method": name, "seed": seed, "error": reason}
                raise ExperimentError(f"{name} (seed {seed}) failed: {reason}", results) from exc
            results["stream"]["boundary_samples"] = list(result.boundaries)
            results["stream"]["windows"] = [list(w) for w in result.windows]
            runs.append(
                {
                    "seed": seed,
                    **result.accuracy.summary(),
                    "wall_time_s": result.wall_time_s,
                    "stream": result.to_json(),
                }
            )
        methods[name] = aggregate(runs) | {"options": dataclasses.asdict(options)}
        methods[name]["task_free"] = issubclass(METHODS[name], TaskFree)
        if tuned is not None:
            methods[name]["preset"] = tuned
        if on_result is not None:
            on_result(results)
    return results
