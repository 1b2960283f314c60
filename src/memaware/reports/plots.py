"""One PNG summarising a run: each method's accuracy matrix as a heatmap, plus final accuracies.

The figure is drawn with `matplotlib.figure.Figure` and the Agg canvas directly instead of
pyplot, so rendering neither needs a display nor changes pyplot's global state (backend,
current figure) for whoever imports memaware.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from memaware.errors import DataError
from memaware.files import atomic_path
from memaware.reports.markdown import checked_matrix

_MAX_COLS = 4  # heatmaps per row
_MAX_ANNOTATED_TASKS = 12
_DPI = 120


def _heatmap_inches(n_tasks: int) -> float:
    # Grows with the task count so cells stay legible, within bounds so 20 tasks stay printable.
    return min(7.0, max(3.4, 1.6 + 0.3 * n_tasks))


def _font_size(cell_pt: float, chars: int) -> float:
    # A digit is about 0.6 em wide; leave a margin so neighbouring labels do not touch.
    return min(9.0, cell_pt / (0.6 * chars + 0.8))


def _too_wide(labels: list[str], font_pt: float, slot_in: float) -> bool:
    # True when the longest label, set horizontally, would run into its neighbour.
    return max(map(len, labels)) * 0.6 * font_pt / 72 > 0.9 * slot_in


def plot_results(results: Mapping[str, Any], path: Path) -> None:
    """Write a PNG with one accuracy-matrix heatmap per method and a final-accuracy panel.

    Heatmaps share one 0-100 % colour scale; row i is after training task i, column j the
    task evaluated. Cells are annotated with their value while they are big enough to read.
    The last panel shows each method's final accuracy on every task as grouped bars.
    """
    figure = _figure(results)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=_DPI)


def _figure(results: Mapping[str, Any]) -> Figure:
    task_names = [str(name) for name in results["task_names"]]
    methods = [str(name) for name in results["methods"]]
    if not methods:
        raise DataError("results hold no methods to plot")
    matrices = {name: 100 * np.array(checked_matrix(results, name)) for name in methods}
    n_tasks = len(task_names)

    n_cols = min(len(methods), _MAX_COLS)
    n_rows = math.ceil(len(methods) / n_cols)
    side = _heatmap_inches(n_tasks)
    cell_in = 0.8 * side / n_tasks  # the axes get about 80 % of the square's inches
    # Tick labels must fit a cell's height; x labels turn vertical when too wide for a cell.
    tick_size = min(9.0, max(5.0, cell_in * 72 / 1.4))
    rotate_heat = _too_wide(task_names, tick_size, cell_in)
    decimals = 1 if n_tasks <= 6 else 0
    annot_size = _font_size(cell_in * 72, 4 + decimals)
    # Beyond a dozen tasks the numbers turn into noise; the colours carry the matrix alone.
    annotate = n_tasks <= _MAX_ANNOTATED_TASKS and annot_size >= 5.0

    # Room around each square for tick labels, axis labels and title; sizing the grid cells
    # to fit lets constrained layout pack the squares without gaps.
    pad_x = 0.9
    pad_y = 1.0
    if rotate_heat:
        pad_y += max(map(len, task_names)) * 0.6 * tick_size / 72
    width = max(7.0, n_cols * (side + pad_x) + 1.1)  # + 1.1 in for the shared colour bar
    bar_height = max(3.0, 0.2 * width)  # keeps a wide bar panel from looking squashed
    figure = Figure(
        figsize=(width, n_rows * (side + pad_y) + bar_height + 0.4), layout="constrained"
    )
    FigureCanvasAgg(figure)
    # Separate subfigures lay out independently, so the bar legend's margin does not push the
    # heatmaps' colour bar away from them.
    halves = figure.add_gridspec(2, 1, height_ratios=[n_rows * (side + pad_y), bar_height])
    top, bottom = figure.add_subfigure(halves[0]), figure.add_subfigure(halves[1])
    grid = top.add_gridspec(n_rows, n_cols)
    figure.suptitle(
        f"{results['benchmark']} ({results['scenario']} scenario): accuracy (%)",
        fontsize=12,
    )

    cmap = colormaps["viridis"]
    norm = Normalize(vmin=0.0, vmax=100.0)

    heat_axes = []
    for k, name in enumerate(methods):
        ax = top.add_subplot(grid[k // n_cols, k % n_cols])
        heat_axes.append(ax)
        matrix = matrices[name]
        ax.imshow(matrix, cmap=cmap, norm=norm, aspect="equal")
        ax.set_title(name, fontsize=10)
        ax.set_xticks(range(n_tasks), task_names, fontsize=tick_size)
        ax.set_yticks(range(n_tasks), task_names, fontsize=tick_size)
        if rotate_heat:
            ax.tick_params(axis="x", labelrotation=90)
        ax.set_xlabel("accuracy on task", fontsize=9)
        ax.set_ylabel("after training task", fontsize=9)
        if annotate:
            for (i, j), value in np.ndenumerate(matrix):
                if np.isnan(value):  # not measured: a task not learned yet
                    continue
                r, g, b, _ = cmap(norm(value))
                # Dark text on the light end of the colour map, light text on the dark end.
                colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                ax.text(
                    j,
                    i,
                    f"{value:.{decimals}f}",
                    ha="center",
                    va="center",
                    fontsize=annot_size,
                    color=colour,
                )
    top.colorbar(
        ScalarMappable(norm=norm, cmap=cmap),
        ax=heat_axes,
        label="accuracy (%)",
        shrink=min(0.9, 1.2 / n_rows),  # about one heatmap tall, however many rows
    )

    bars = bottom.add_subplot()
    colours = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    width_each = 0.8 / len(methods)
    positions = np.arange(n_tasks)
    for k, name in enumerate(methods):
        offset = (k - (len(methods) - 1) / 2) * width_each
        bars.bar(
            positions + offset,
            matrices[name][-1],
            width_each,
            label=name,
            color=colours(k),
        )
    bars.set_xticks(positions, task_names, fontsize=tick_size)
    if _too_wide(task_names, tick_size, (width - 1.5) / n_tasks):
        bars.tick_params(axis="x", labelrotation=90)
    bars.set_xlim(-0.5, n_tasks - 0.5)
    bars.set_ylim(0, 100)
    bars.set_ylabel("final accuracy (%)", fontsize=9)
    bars.set_xlabel("task", fontsize=9)
    bars.set_title(f"Final accuracy on each task (after training all {n_tasks} tasks)", fontsize=10)
    bars.grid(axis="y", alpha=0.3)
    bars.set_axisbelow(True)
    bars.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        ncols=1 if len(methods) <= 8 else 2,
        frameon=False,
    )
    return figure
