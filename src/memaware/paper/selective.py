"""Selective forgetting, measured: ``memaware paper selective``.

The MAS abstract claims that, with the importance computed on "the data that the network is
actively applied to", knowledge is "preserved or erased selectively": what the deployed model
uses is kept, what it never meets may be overwritten. No readable copy of the paper's own
adaptation experiment was found (see ``shared/reference/online-mas.md``), so this experiment is
ours. The stream is MNIST → Fashion-MNIST → Animal-MNIST, task-incremental (a 10-way head per
dataset), an MLP 784-400-400 trained with Adam; MAS (λ = ``strength``) trains every task but
the first. At one point of the stream the model is deployed: it serves unlabelled images it was
not trained on, in requests of seeded sizes 1-64 under ``torch.inference_mode``, and an
:class:`~memaware.deploy.ImportanceTracker` counts a ``fraction`` of them and saves its
importance. The traffic covers only part of what the model has learned. Two layouts:

* ``classes``: deployed after MNIST, the traffic holds some of its digits (``served``, 0-4 by
  default); then Fashion-MNIST and Animal-MNIST are learned. Served: those digits' test
  images; never served: the other digits' (both through MNIST's head).
* ``tasks``: deployed after MNIST and Fashion-MNIST, the traffic holds MNIST images only; then
  Animal-MNIST is learned. Served: MNIST's test set; never served: Fashion-MNIST's.

From the deployment point on, four variants continue from the same model, optimizer state and
batch order, and differ only in the Ω the last learned task is anchored with (the Ω of the
tasks before it, from their training data, is kept and summed as MAS does):

* ``finetune``: no penalty at all from here on;
* ``mas (Ω train)``: from the last learned task's whole training set (MAS's default);
* ``mas (Ω traffic)``: from the tracker's file (``MASOptions(importance_source="file")``);
* ``mas (Ω traffic, everything)``: the control: a tracker on traffic of the same size that
  covers everything learned (every digit; or MNIST and Fashion-MNIST requests in turn, each
  answered by its own head), to tell what the tracker itself changes from what the traffic's
  coverage does.

Measured at the end: accuracy on the served part, on the part never served, and on the tasks
learned after the deployment, right after each was learned (the capacity left) and at the end.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from memaware import __version__
from memaware.data.benchmarks import make_scenario
from memaware.data.datasets import TensorData
from memaware.data.scenarios import Scenario, Task
from memaware.deploy import ImportanceTracker
from memaware.errors import ConfigError
from memaware.files import atomic_path, atomic_write_json, atomic_write_text
from memaware.methods import MAS, Finetune, Method
from memaware.models import MultiHeadClassifier, build_model
from memaware.training.config import TrainConfig
from memaware.training.experiment import versions
from memaware.training.loop import evaluate, include_new_parameters, train_task

LAYOUTS = ("classes", "tasks")

#: the variants, in the tables' order: label -> where the last learned task's Ω comes from
VARIANTS: dict[str, str] = {
    "finetune": "no penalty",
    "mas (Ω train)": "its whole training set",
    "mas (Ω traffic)": "the tracker, on the served traffic",
    "mas (Ω traffic, everything)": "a tracker on traffic of everything learned (control)",
}

#: the variants' names under the figure's bars
TICKS = {
    "finetune": "finetune",
    "mas (Ω train)": "MAS\nΩ train",
    "mas (Ω traffic)": "MAS\nΩ traffic",
    "mas (Ω traffic, everything)": "MAS Ω traffic\n(everything)",
}

#: what each layout serves, never serves and learns next, for the tables
PARTS: dict[str, tuple[str, str, str]] = {
    "classes": ("MNIST, served digits", "MNIST, other digits", "Fashion, Animal"),
    "tasks": ("MNIST (served)", "Fashion (never served)", "Animal"),
}


@dataclass(frozen=True)
class SelectiveConfig:
    """The experiment's settings (``memaware paper selective --help`` names the flags)."""

    layouts: tuple[str, ...] = LAYOUTS
    #: the digits the traffic of the ``classes`` layout holds
    served: tuple[int, ...] = (0, 1, 2, 3, 4)
    seeds: tuple[int, ...] = (0, 1, 2)
    #: λ of MAS
    strength: float = 1.0
    #: training images per task (the first ones of each training set)
    n_train: int = 10000
    #: images served at the deployment (training images not trained on)
    traffic: int = 10000
    #: share of the served images the tracker counts
    fraction: float = 0.1
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=2))
    hidden: tuple[int, ...] = (400, 400)

    def check(self) -> None:
        """Reject bad settings before any data are read."""
        if not self.layouts or any(layout not in LAYOUTS for layout in self.layouts):
            raise ConfigError(
                f"--layout must be {', '.join(LAYOUTS)} or both, got {', '.join(self.layouts)}"
            )
        if (
            not self.served
            or len(set(self.served)) != len(self.served)
            or any(not 0 <= d <= 9 for d in self.served)
            or len(self.served) == 10
        ):
            raise ConfigError(
                f"--served must be distinct digits 0-9, not all of them, got {list(self.served)}"
            )
        seeds = self.seeds
        if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds must be distinct integers >= 0, got {list(seeds)}")
        if not (np.isfinite(self.strength) and self.strength >= 0):
            raise ConfigError(f"--lambda must be a finite number >= 0, got {self.strength}")
        if self.n_train < 1 or self.traffic < 1:
            raise ConfigError("--n-train and --traffic must be at least 1")
        if self.n_train + self.traffic > 50000:
            raise ConfigError(
                "--n-train + --traffic must leave room in MNIST's and Fashion-MNIST's 60000 "
                f"training images (at most 50000), got {self.n_train} + {self.traffic}"
            )
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"--fraction must be in (0, 1], got {self.fraction}")


@dataclass
class _State:
    """A model at the deployment point with its optimizer, batch order and accumulated Ω."""

    model: MultiHeadClassifier
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    omega: dict[str, torch.Tensor] | None


@dataclass(frozen=True)
class _Layout:
    """One layout's data: the tasks learned before and after the deployment, the traffic, and
    the served part and the rest as tasks whose test sets are those parts' test images."""

    before: tuple[Task, ...]
    after: tuple[Task, ...]
    traffic: tuple[tuple[torch.Tensor, int], ...]  # requests' images and their head, in order
    everything: tuple[tuple[torch.Tensor, int], ...]  # the control's traffic
    served: Task
    unserved: Task


def _cut(task: Task, n: int) -> Task:
    train = task.train
    assert isinstance(train, TensorData)
    return replace(task, train=TensorData(train.x[:n], train.y[:n]))


def _held_out(task: Task, n_train: int) -> TensorData:
    """The task's training images after the first ``n_train``: never trained on."""
    train = task.train
    assert isinstance(train, TensorData)
    return TensorData(train.x[n_train:], train.y[n_train:])


def _test(task: Task) -> TensorData:
    assert isinstance(task.test, TensorData)
    return task.test


def _requests(
    sources: Sequence[tuple[torch.Tensor, int]], total: int, seed: int
) -> tuple[tuple[torch.Tensor, int], ...]:
    """Requests of seeded sizes 1-64, ``total`` images in all, taken from the sources in turn."""
    generator = torch.Generator().manual_seed(seed)
    used = [0] * len(sources)
    requests, sent, turn = [], 0, 0
    while sent < total:
        size = min(int(torch.randint(1, 65, (1,), generator=generator)), total - sent)
        images, head = sources[turn % len(sources)]
        start = used[turn % len(sources)]
        if start + size > len(images):
            raise ConfigError(
                f"--traffic {total}: the images never trained on run out after {sent} "
                "(fewer --served digits or a smaller --n-train leave more)"
            )
        requests.append((images[start : start + size], head))
        used[turn % len(sources)] += size
        sent += size
        turn += 1
    return tuple(requests)


def layout_data(layout: str, config: SelectiveConfig, scenario: Scenario, seed: int) -> _Layout:
    """The tasks, traffic and evaluation sets of ``layout``."""
    tasks = tuple(_cut(task, config.n_train) for task in scenario.tasks)
    mnist, fashion = scenario.tasks[0], scenario.tasks[1]
    spare_mnist = _held_out(mnist, config.n_train)
    spare_fashion = _held_out(fashion, config.n_train)
    test = _test(mnist)
    if _deployed_after(layout) == 1:
        digits = torch.tensor(config.served)
        chosen = torch.isin(spare_mnist.y, digits)
        on_test = torch.isin(test.y, digits)
        return _Layout(
            before=tasks[:1],
            after=tasks[1:],
            traffic=_requests([(spare_mnist.x[chosen], 0)], config.traffic, seed),
            everything=_requests([(spare_mnist.x, 0)], config.traffic, seed),
            served=replace(mnist, test=TensorData(test.x[on_test], test.y[on_test])),
            unserved=replace(mnist, test=TensorData(test.x[~on_test], test.y[~on_test])),
        )
    return _Layout(
        before=tasks[:2],
        after=tasks[2:],
        traffic=_requests([(spare_mnist.x, 0)], config.traffic, seed),
        everything=_requests([(spare_mnist.x, 0), (spare_fashion.x, 1)], config.traffic, seed),
        served=mnist,
        unserved=fashion,
    )


def _serve(
    model: MultiHeadClassifier,
    requests: Sequence[tuple[torch.Tensor, int]],
    config: SelectiveConfig,
    seed: int,
    path: Path,
) -> int:
    """Serve the requests with a tracker attached that saves to ``path``; samples it counted."""
    tracker = ImportanceTracker(model, fraction=config.fraction, seed=seed, path=path)
    model.eval()
    with tracker, torch.inference_mode():
        for images, head in requests:
            model(images, head)
    return tracker.counted


def _learn(
    state: _State, method: Method, tasks: Sequence[Task], index: int, config: TrainConfig
) -> None:
    """Learn ``tasks[index]`` (the earlier ones are learned) with ``method``."""
    task, seen = tasks[index], tasks[: index + 1]
    state.model.add_head(task.head, task.n_classes)
    method.before_task(state.model, task, seen)
    include_new_parameters(state.optimizer, state.model)
    train_task(state.model, method, [task], config, state.generator, state.optimizer, index=index)


def _branch(base: _State, config: TrainConfig) -> _State:
    model = copy.deepcopy(base.model)
    # the same parameter groups (a head added later is a group of its own), then the state
    position = {id(p): i for i, p in enumerate(base.model.parameters())}
    params = list(model.parameters())
    groups = [[params[position[id(p)]] for p in g["params"]] for g in base.optimizer.param_groups]
    optimizer = config.make_optimizer(groups[0])
    for group in groups[1:]:
        optimizer.add_param_group({"params": group})
    optimizer.load_state_dict(base.optimizer.state_dict())
    generator = torch.Generator().set_state(base.generator.get_state())
    omega = None if base.omega is None else {k: v.clone() for k, v in base.omega.items()}
    return _State(model, optimizer, generator, omega)


def _backbone_sum(omega: Mapping[str, torch.Tensor] | None) -> float | None:
    if not omega:
        return None
    return float(sum(value.sum() for name, value in omega.items() if name.startswith("backbone")))


def run_layout(
    layout: str, config: SelectiveConfig, scenario: Scenario, seed: int, out: Path
) -> dict[str, dict[str, Any]]:
    """Every variant of one layout on one seed: accuracies (fractions) and Ω figures."""
    data = layout_data(layout, config, scenario, seed)
    tasks = (*data.before, *data.after)
    k = len(data.before)
    train_config = replace(config.train, seed=seed)
    torch.manual_seed(seed)
    model = build_model("mlp", scenario.input_shape, config.hidden)
    optimizer = train_config.make_optimizer(model.parameters())
    base = _State(model, optimizer, torch.Generator().manual_seed(seed), None)
    learner = MAS(strength=config.strength)  # the tasks before the deployment (Ω from training)
    for i in range(k):
        _learn(base, learner, tasks, i, train_config)
        if i < k - 1:
            learner.after_task(base.model, tasks[i], tasks[: i + 1])
    base.omega = learner.omega
    deployed = {
        "served": evaluate(model, data.served, train_config.eval_batch_size),
        "unserved": evaluate(model, data.unserved, train_config.eval_batch_size),
    }

    files: dict[str, tuple[Path, int]] = {}
    for label, requests in (("traffic", data.traffic), ("everything", data.everything)):
        path = out / f"omega-{layout}-{label}-seed{seed}.safetensors"
        files[label] = (path, _serve(model, requests, config, seed, path))

    def tracked(label: str) -> MAS:
        return MAS(
            strength=config.strength,
            importance_source="file",
            importance_file=str(files[label][0]),
            importance_file_task=k - 1,
        )

    variants: dict[str, tuple[Method, int | None]] = {
        "finetune": (Finetune(), None),
        "mas (Ω train)": (MAS(strength=config.strength), len(tasks[k - 1].train)),
        "mas (Ω traffic)": (tracked("traffic"), files["traffic"][1]),
        "mas (Ω traffic, everything)": (tracked("everything"), files["everything"][1]),
    }
    results: dict[str, dict[str, Any]] = {}
    for label, (method, samples) in variants.items():
        state = _branch(base, train_config)
        if isinstance(method, MAS):
            method.omega = state.omega  # the Ω of the tasks before, summed onto
            method.after_task(state.model, tasks[k - 1], tasks[:k])
        anchored = _backbone_sum(method.omega) if isinstance(method, MAS) else None
        trained = []
        for i in range(k, len(tasks)):
            _learn(state, method, tasks, i, train_config)
            trained.append(evaluate(state.model, tasks[i], train_config.eval_batch_size))
            method.after_task(state.model, tasks[i], tasks[: i + 1])
        results[label] = {
            "served_at_deployment": deployed["served"],
            "unserved_at_deployment": deployed["unserved"],
            "served": evaluate(state.model, data.served, train_config.eval_batch_size),
            "unserved": evaluate(state.model, data.unserved, train_config.eval_batch_size),
            "new_tasks_trained": statistics.fmean(trained),
            "new_tasks_final": statistics.fmean(
                evaluate(state.model, task, train_config.eval_batch_size) for task in data.after
            ),
            "omega_samples": samples,
            "omega_backbone_sum": anchored,
        }
    return results


METRICS = (
    "served",
    "unserved",
    "new_tasks_trained",
    "new_tasks_final",
    "served_at_deployment",
    "unserved_at_deployment",
)


def run(config: SelectiveConfig, out: Path) -> dict[str, Any]:
    """Run every layout and seed; the results dict (config, per-seed runs, means and stds)."""
    config.check()
    scenario = make_scenario("mnist-fashion-animal", "task")
    out.mkdir(parents=True, exist_ok=True)
    layouts: dict[str, Any] = {}
    for layout in config.layouts:
        runs = {seed: run_layout(layout, config, scenario, seed, out) for seed in config.seeds}
        summary: dict[str, dict[str, Any]] = {}
        for label in VARIANTS:
            values = {key: [runs[s][label][key] for s in config.seeds] for key in METRICS}
            summary[label] = {
                "omega_from": VARIANTS[label],
                "mean": {k: statistics.fmean(v) for k, v in values.items()},
                "std": {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in values.items()},
                "omega_samples": [runs[s][label]["omega_samples"] for s in config.seeds],
                "omega_backbone_sum": [runs[s][label]["omega_backbone_sum"] for s in config.seeds],
            }
        layouts[layout] = {
            "summary": summary,
            "runs": {str(seed): runs[seed] for seed in config.seeds},
        }
    return {
        "experiment": "selective forgetting (memaware paper selective)",
        "memaware_version": __version__,
        "versions": versions(),
        "config": _config_json(config),
        "task_names": scenario.task_names,
        "layouts": layouts,
    }


def _config_json(config: SelectiveConfig) -> dict[str, Any]:
    data = asdict(config)
    for key in ("layouts", "served", "seeds", "hidden"):
        data[key] = list(getattr(config, key))
    return data


def _cell(summary: Mapping[str, Any], key: str) -> str:
    return f"{100 * summary['mean'][key]:.1f} ± {100 * summary['std'][key]:.1f}"


def table(results: Mapping[str, Any]) -> str:
    """Markdown: one table per layout, accuracy (%) at the end, mean ± std over seeds."""
    config = results["config"]
    lines: list[str] = []
    for layout, entry in results["layouts"].items():
        served, unserved, new = PARTS[layout]
        if layout == "classes":
            digits = ",".join(map(str, config["served"]))
            served = served.replace("served digits", f"served digits {digits}")
            title = f"**classes**: deployed after MNIST, the traffic holds digits {digits}"
        else:
            title = "**tasks**: deployed after MNIST and Fashion-MNIST, the traffic holds MNIST"
        lines += [
            title,
            "",
            f"| variant | Ω of the last task before deployment from | {served} | {unserved} | "
            f"{new}, just learned | {new}, at the end |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for label, summary in entry["summary"].items():
            lines.append(
                f"| {label} | {summary['omega_from']} | {_cell(summary, 'served')} | "
                f"{_cell(summary, 'unserved')} | {_cell(summary, 'new_tasks_trained')} | "
                f"{_cell(summary, 'new_tasks_final')} |"
            )
        first = next(iter(entry["summary"].values()))
        lines += [
            "",
            f"At the deployment (one model for every variant): served "
            f"{_cell(first, 'served_at_deployment')}, never served "
            f"{_cell(first, 'unserved_at_deployment')}.",
            "",
        ]
    lines.append(
        f"Accuracy in %, mean ± sample std over {len(config['seeds'])} seeds; λ = "
        f"{config['strength']:g}, {config['n_train']} training images per task, "
        f"{config['train']['epochs']} epochs per task; traffic {config['traffic']} images, "
        f"tracker fraction {config['fraction']:g}."
    )
    return "\n".join(lines) + "\n"


def plot(results: Mapping[str, Any], path: Path) -> None:
    """One row of bars per layout: served part, never-served part, new tasks (with std); the
    dashed line is the accuracy at the deployment."""
    layouts = results["layouts"]
    panels = (
        ("served", 0, "served_at_deployment"),
        ("unserved", 1, "unserved_at_deployment"),
        ("new_tasks_trained", 2, None),
        ("new_tasks_final", 2, None),
    )
    figure = Figure(figsize=(13, 3.6 * len(layouts)), constrained_layout=True)
    FigureCanvasAgg(figure)
    colours = ["#7f7f7f", "#1f77b4", "#d62728", "#ff9896"]
    grid = np.asarray(figure.subplots(len(layouts), len(panels), squeeze=False))
    suffix = {"new_tasks_trained": ", just learned", "new_tasks_final": ", at the end"}
    for row, (layout, entry) in zip(grid, layouts.items(), strict=True):
        summary = entry["summary"]
        labels = list(summary)
        positions = np.arange(len(labels))
        one_new_task = len(results["task_names"]) - _deployed_after(layout) == 1
        for ax, (key, part, before) in zip(row, panels, strict=True):
            if key == "new_tasks_final" and one_new_task:  # the same as just learned
                ax.set_axis_off()
                continue
            means = [100 * summary[label]["mean"][key] for label in labels]
            stds = [100 * summary[label]["std"][key] for label in labels]
            ax.bar(positions, means, yerr=stds, color=colours, capsize=3)
            for x, m, sd in zip(positions, means, stds, strict=True):
                ax.text(x, m + sd + 0.4, f"{m:.1f}", ha="center", va="bottom", fontsize=8)
            low = min(m - sd for m, sd in zip(means, stds, strict=True))
            high = max(m + sd for m, sd in zip(means, stds, strict=True))
            title = f"{layout}: {PARTS[layout][part]}{suffix.get(key, '')}"
            if before is not None:
                level = 100 * summary[labels[0]]["mean"][before]
                ax.axhline(level, color="black", linestyle="--", linewidth=1)
                low, high = min(low, level), max(high, level)
                title += " (- - at deployment)"
            ax.set_ylim(max(0.0, low - 8), min(100.0, high + 5))
            ax.set_xticks(positions, [TICKS[label] for label in labels], fontsize=7)
            ax.set_title(title, fontsize=9)
            ax.set_ylabel("accuracy (%)")
    config = results["config"]
    figure.suptitle(
        "Selective forgetting: MNIST → Fashion-MNIST → Animal-MNIST, MAS λ = "
        f"{config['strength']:g}, Ω of the last task before the deployment from each source "
        f"({len(config['seeds'])} seeds)",
        fontsize=10,
    )
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)


def _deployed_after(layout: str) -> int:
    """How many tasks the model has learned when the layout deploys it."""
    return 1 if layout == "classes" else 2


def write(results: Mapping[str, Any], out: Path) -> list[Path]:
    """results.json, results.md and selective.png in ``out``."""
    paths = [out / "results.json", out / "results.md", out / "selective.png"]
    atomic_write_json(paths[0], results)
    atomic_write_text(paths[1], table(results))
    plot(results, paths[2])
    return paths
