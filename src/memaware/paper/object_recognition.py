"""``memaware paper table2|table3|figure3``: the MAS paper's object-recognition experiments.

Each command plans its experiments (:func:`plan`), every one an :class:`ExperimentSpec` of the
protocol (:mod:`memaware.paper.protocol`) with an output folder of its own, checks them all before
anything is read or trained, times the backbone (:mod:`memaware.paper.throughput`), runs them
through the caller's ``runner`` (which writes each one's usual report) and writes its own table and
figure (:func:`write_summary`):

* ``table2``: for each pair A → B, every method of the paper; one experiment per pair, in
  ``<out>/<A>-<B>/``; ``table2.md`` and ``table2.png``;
* ``table3``: for each pair, MAS and l-MAS with Ω computed on A's training inputs, its test
  inputs (unlabelled) and both; one experiment per pair and Ω data, in
  ``<out>/<A>-<B>/omega-<data>/``; ``table3.md`` and ``table3.png``;
* ``figure3``: the methods on one sequence, in ``<out>/``; ``figure3.md`` and ``figure3.png``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from memaware.configs.standin import StandinPreset, load_standin_preset
from memaware.errors import ConfigError
from memaware.files import atomic_write_bytes, atomic_write_text
from memaware.paper.figures import figure3_figure, table2_figure, table3_figure
from memaware.paper.protocol import (
    FIGURE3_METHODS,
    OMEGA_DATA,
    TABLE2_METHODS,
    TABLE3_METHODS,
    Protocol,
    paper_protocol,
    standin_protocol,
)
from memaware.paper.tables import PairRun, figure3_table, table2, table3
from memaware.paper.throughput import Throughput
from memaware.reports.comparison import png_bytes
from memaware.training.experiment import ExperimentSpec

__all__ = [
    "COMMANDS",
    "Planned",
    "check_tasks",
    "methods_of",
    "plan",
    "protocol_from",
    "with_overrides",
    "write_summary",
]

Command = Literal["table2", "table3", "figure3"]
COMMANDS: tuple[Command, ...] = ("table2", "table3", "figure3")
_TITLES = {
    "table2": "Table 2: two-task sequences",
    "table3": "Table 3: Ω from training or test data, MAS vs l-MAS",
    "figure3": "Figure 3: a sequence of tasks",
}


@dataclass(frozen=True)
class Planned:
    """One experiment of a command: its spec, its output folder, its pair and Ω data if any."""

    spec: ExperimentSpec
    out: Path
    first: str = ""
    second: str = ""
    omega: str | None = None


def protocol_from(
    data_root: str | None, model: str | None, weights: str | None, augment: bool | None
) -> tuple[Protocol, StandinPreset | None]:
    """The paper's protocol on ``data_root`` (augmented unless ``augment`` is False), else the
    stand-in's with its preset (``augment`` True is refused there: its tasks are tensors)."""
    if data_root is not None:
        return paper_protocol(data_root, model, weights, augment is not False), None
    preset = load_standin_preset()
    return replace(standin_protocol(preset, model, weights), augment=bool(augment)), preset


def with_overrides(
    protocol: Protocol, options: Mapping[str, Mapping[str, Any]], **train: Any
) -> Protocol:
    """``protocol`` with ``--option`` settings and the training fields given (not None).

    ``epochs`` and ``lr`` set every task's, the first task's too unless ``first_task_epochs``
    or ``first_task_lr`` is given; the other fields replace the protocol's. A bad value raises
    ConfigError (from :class:`TrainConfig`).
    """
    given = {k: v for k, v in train.items() if v is not None}
    for field, first in (("epochs", "first_task_epochs"), ("lr", "first_task_lr")):
        if field in given:
            given.setdefault(first, given[field])
    return replace(protocol, train=replace(protocol.train, **given), overrides=dict(options))


def methods_of(command: Command, given: Sequence[str] | None) -> tuple[str, ...]:
    """The methods a command trains: Table 3's MAS and l-MAS, else ``given`` or the paper's."""
    if command == "table3":
        return TABLE3_METHODS
    if given is not None:
        if not given:
            raise ConfigError("--methods names no method")
        return tuple(dict.fromkeys(given))
    return TABLE2_METHODS if command == "table2" else FIGURE3_METHODS


def check_tasks(
    command: Command,
    given: Sequence[Sequence[str]],
    preset: StandinPreset | None,
) -> list[tuple[str, ...]]:
    """The task lists the command runs: ``given`` (``--tasks``, repeatable), else the stand-in's.

    ``table2``/``table3`` take pairs (each ``--tasks A,B`` one pair, several allowed),
    ``figure3`` one sequence of two or more tasks. With image folders (``preset`` None)
    ``--tasks`` is required. ConfigError otherwise.
    """
    pairs = command != "figure3"
    if not given:
        if preset is None:
            what = "A,B (a pair of folders; repeat for more pairs)" if pairs else "t1,t2,...,tn"
            raise ConfigError(f"paper {command} with --data-root needs --tasks {what}")
        if command == "table2":
            return [tuple(p) for p in preset.pairs]
        return [tuple(p) for p in preset.table3_pairs] if pairs else [preset.sequence]
    lists = [tuple(t) for t in given]
    if not pairs and len(lists) > 1:
        raise ConfigError("paper figure3 learns one sequence: give --tasks once, t1,t2,...,tn")
    for tasks in lists:
        if pairs and len(tasks) != 2:
            raise ConfigError(
                f"paper {command} learns pairs of tasks: --tasks A,B, got {len(tasks)} "
                f"({','.join(tasks)}); repeat --tasks for more pairs"
            )
        if len(tasks) < 2:
            raise ConfigError(f"paper figure3 needs a sequence of two or more tasks, got {tasks}")
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"a task can be learned once in a sequence, got {','.join(tasks)}")
    return lists


def plan(
    command: Command,
    protocol: Protocol,
    task_lists: Sequence[Sequence[str]],
    methods: Sequence[str],
    seeds: Sequence[int],
    out: Path,
) -> list[Planned]:
    """The command's experiments, each checked (:meth:`ExperimentSpec.check`) before any runs."""
    planned: list[Planned] = []
    for tasks in task_lists:
        if command == "figure3":
            planned.append(Planned(protocol.spec(tasks, methods, seeds), out))
            continue
        first, second = tasks
        folder = out / f"{first}-{second}"
        if command == "table2":
            planned.append(Planned(protocol.spec(tasks, methods, seeds), folder, first, second))
            continue
        for omega in OMEGA_DATA:
            spec = protocol.spec(tasks, TABLE3_METHODS, seeds, omega_data=omega)
            planned.append(Planned(spec, folder / f"omega-{omega}", first, second, omega))
    for p in planned:
        p.spec.check()
    return planned


def _header(
    command: Command, runs: Sequence[Mapping[str, Any]], throughput: Throughput | None
) -> str:
    config = runs[0]["config"]
    train = config["train"]
    lines = [
        f"# {_TITLES[command]} (the MAS paper's object-recognition protocol)\n",
        f"Benchmark {runs[0]['benchmark']}"
        + (f" (data root {config['data_root']})" if config.get("data_root") else "")
        + f", model {config['model']}, seeds {', '.join(map(str, runs[0]['seeds']))}; "
        f"SGD momentum {train['momentum']}, batches of {train['batch_size']}; first task: "
        f"{train['first_task_epochs'] or train['epochs']} epochs at lr "
        f"{train['first_task_lr'] or train['lr']:g}, later tasks: {train['epochs']} epochs at "
        f"lr {train['lr']:g}; ×{train['lr_decay_factor']:g} every {train['lr_decay_epochs']} "
        "epochs; each task's best epoch on its validation split.\n",
    ]
    if throughput is not None:
        lines.append(throughput.summary() + ".\n")
    seconds = [float(e["wall_time_s"]) for r in runs for e in r["methods"].values()]
    lines.append(f"Training time, all methods and seeds: {sum(seconds) / 60:.1f} min.\n")
    return "\n".join(lines)


def write_summary(
    command: Command,
    planned: Sequence[Planned],
    results: Sequence[Mapping[str, Any]],
    methods: Sequence[str],
    out: Path,
    throughput: Throughput | None,
) -> tuple[str, list[Path]]:
    """Write ``<command>.md`` and ``<command>.png`` into ``out``; return the markdown and paths."""
    if command == "figure3":
        body = figure3_table(results[0], methods)
        figure = figure3_figure(results[0], methods)
    else:
        runs = [
            PairRun(p.first, p.second, r, p.omega) for p, r in zip(planned, results, strict=True)
        ]
        shown = TABLE3_METHODS if command == "table3" else methods
        body = (table3 if command == "table3" else table2)(runs, shown)
        figure = (table3_figure if command == "table3" else table2_figure)(runs, shown)
    markdown = _header(command, results, throughput) + "\n" + body
    image = png_bytes(figure)
    paths = [out / f"{command}.md", out / f"{command}.png"]
    atomic_write_text(paths[0], markdown)
    atomic_write_bytes(paths[1], image)
    return markdown, paths
