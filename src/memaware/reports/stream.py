"""The report of a stream run: the usual results files and the plot of accuracy over the stream.

`write_stream_report` writes results.json (the usual layout, each run with its ``stream``
curve), results.md, accuracy.png and comparison.png as `memaware.reports.write_report` does,
and stream.png (`stream_figure`): the first seed's accuracy over the stream, one panel per
method with one line per task (drawn from the point the task first appears), the true
boundaries as dashed lines with their blur windows shaded, and the importance updates of a
task-free method marked; a top panel compares the methods' mean accuracy over the tasks shown
so far. Every file is built in memory first and written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from memaware.errors import DataError
from memaware.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from memaware.reports.comparison import bars_figure, png_bytes
from memaware.reports.markdown import (
    accuracy_matrix_table,
    checked_matrix,
    results_table,
    trained_accuracy,
)
from memaware.reports.plots import plot_results

__all__ = ["stream_figure", "stream_markdown", "write_stream_report"]


def _first_run_stream(results: Mapping[str, Any], method: str) -> Mapping[str, Any]:
    runs = results["methods"][method].get("runs") or []
    if not runs or "stream" not in runs[0]:
        raise DataError(f"method {method!r} has no stream curve to plot")
    stream: Mapping[str, Any] = runs[0]["stream"]
    n_tasks = len(results["task_names"])
    positions, accuracy = stream.get("positions"), stream.get("accuracy")
    if (
        not isinstance(positions, Sequence)
        or not isinstance(accuracy, Sequence)
        or len(positions) != len(accuracy)
        or not positions
        or any(len(row) != n_tasks for row in accuracy)
    ):
        raise DataError(f"method {method!r}: the stream curve must hold one row per position")
    return stream


def _shown_from(results: Mapping[str, Any]) -> list[int]:
    """Samples seen when each task first appears (its blur window's start; 0 for the first)."""
    windows = results["stream"]["windows"]
    return [0] + [max(0, int(start)) for start, _ in windows[:-1]]


def stream_figure(results: Mapping[str, Any]) -> Figure:
    """Accuracy over the stream (first seed): a comparison panel, then one panel per method."""
    methods = list(results["methods"])
    if not methods:
        raise DataError("results hold no methods to plot")
    info = results["stream"]
    task_names = [str(t) for t in results["task_names"]]
    boundaries = [int(b) for b in info["boundary_samples"]]
    windows = info["windows"]
    shown_from = _shown_from(results)
    n_tasks = len(task_names)
    figure = Figure(figsize=(10.0, 2.6 * (len(methods) + 1) + 0.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(methods) + 1, 1, sharex=True)
    colours = colormaps["tab10"]
    task_colours = colormaps["viridis"](np.linspace(0.0, 0.9, n_tasks))
    seed = results["methods"][methods[0]]["runs"][0].get("seed", 0)
    figure.suptitle(
        f"{results['benchmark']} as one stream ({results['scenario']} scenario, "
        f"{info['boundaries']} boundaries): test accuracy over the stream, seed {seed}",
        fontsize=11,
    )

    def frame(ax: Any) -> None:
        for t, end in enumerate(boundaries[:-1]):
            start, stop = windows[t]
            if stop > start:
                ax.axvspan(start / 1000, stop / 1000, color="0.9", zorder=0)
            ax.axvline(end / 1000, color="0.45", linestyle="--", linewidth=0.8, zorder=1)
        ax.set_ylim(0, 101)
        ax.set_ylabel("accuracy (%)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)

    top = axes[0]
    frame(top)
    for k, method in enumerate(methods):
        stream = _first_run_stream(results, method)
        positions = np.asarray(stream["positions"], dtype=float)
        accuracy = 100 * np.asarray(stream["accuracy"], dtype=float)
        shown = np.asarray(shown_from)[None, :] < positions[:, None]
        mean = np.where(shown, accuracy, np.nan)
        top.plot(
            positions / 1000,
            np.nanmean(mean, axis=1),
            color=colours(k),
            label=method,
            linewidth=1.6,
        )
        ax = axes[k + 1]
        frame(ax)
        for j in range(n_tasks):
            visible = positions > shown_from[j]
            ax.plot(
                positions[visible] / 1000,
                accuracy[visible, j],
                color=task_colours[j],
                linewidth=1.2,
                label=f"task {task_names[j]}",
            )
        updates = np.asarray(stream.get("importance_updates", []), dtype=float)
        title = method
        if len(updates):
            ax.plot(
                updates / 1000,
                np.full(len(updates), 3.0),
                linestyle="none",
                marker="|",
                markersize=12,
                markeredgewidth=1.5,
                color="crimson",
                label="importance update",
            )
            title += f": {len(updates)} importance updates (red ticks), no boundaries seen"
        elif results["methods"][method].get("task_free"):
            title += ": no boundaries seen"
        else:
            title += ": given the true boundaries"
        ax.set_title(title, fontsize=10, loc="left")
        ax.legend(loc="lower left", fontsize=7, ncols=n_tasks + 1, frameon=False)
    top.set_title(
        "mean accuracy over the tasks shown so far; dashed: true boundaries, grey: blur windows",
        fontsize=10,
        loc="left",
    )
    top.legend(loc="lower left", fontsize=8, ncols=len(methods), frameon=False)
    axes[-1].set_xlabel("samples seen (thousands)", fontsize=9)
    return figure


def stream_markdown(results: Mapping[str, Any]) -> str:
    """results.md of a stream run: the table, the plots and each method's accuracy matrix."""
    info = results["stream"]
    parts = [
        "# memaware stream results\n",
        f"One pass over {results['benchmark']} as a stream of batches of {info['batch_size']}, "
        f"{info['passes']} steps per batch, {info['boundaries']} boundaries"
        + (" (validation stream)" if info.get("validation") else "")
        + ". Accuracy measured at the true task boundaries, which task-free methods never see.\n",
        results_table(results),
        "![Accuracy over the stream, importance updates marked](stream.png)\n",
        "![Average accuracy per method, with its average drop on each bar](comparison.png)\n",
        "![Accuracy matrices and final accuracy per task](accuracy.png)\n",
        "## Accuracy matrices\n",
        "Row: at the true boundary after that task; column: accuracy (%) on that task.\n",
    ]
    for method in results["methods"]:
        parts.append(f"### {method}\n")
        parts.append(
            accuracy_matrix_table(
                checked_matrix(results, method),
                results["task_names"],
                trained_accuracy(results, method),
            )
        )
    return "\n".join(parts)


def write_stream_report(results: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write results.json, results.md, stream.png, comparison.png and accuracy.png into ``out_dir``.

    Returns the paths under "json", "markdown", "stream", "bars" and "plot". The markdown and
    the stream and bar figures are built before anything is written; each file is replaced
    atomically.
    """
    out_dir = Path(out_dir)
    markdown = stream_markdown(results)
    images = {
        "stream": ("stream.png", png_bytes(stream_figure(results))),
        "bars": ("comparison.png", png_bytes(bars_figure(results))),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "results.json",
        "markdown": out_dir / "results.md",
        **{key: out_dir / name for key, (name, _) in images.items()},
        "plot": out_dir / "accuracy.png",
    }
    atomic_write_json(paths["json"], dict(results))
    atomic_write_text(paths["markdown"], markdown)
    for key, (_, data) in images.items():
        atomic_write_bytes(paths[key], data)
    plot_results(results, paths["plot"])
    return paths
