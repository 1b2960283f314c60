"""The paper commands' figures: grouped bar charts with one fixed colour per method.

* :func:`figure3_figure`: the MAS paper's Figure 3: (a) each task's accuracy after the last task,
  (b) each task's drop, one bar per method in every task's group, the averages in the legends;
* :func:`table2_figure`: one panel per pair, per method the first task's accuracy after the
  second (solid, its drop written in the bar) and the second task's (hatched);
* :func:`table3_figure`: the same per pair for MAS and l-MAS, grouped by the data Ω was
  computed on.

A method has the same colour in every figure (:func:`method_colour`), and every bar has its
value written on it. Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas (no
pyplot, no display), as the rest of :mod:`memaware.reports`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from memaware.paper.tables import PairRun, drops, final_accuracy, pair_cell

__all__ = ["METHOD_COLOURS", "figure3_figure", "method_colour", "table2_figure", "table3_figure"]

_TAB = colormaps["tab10"]
#: one colour per method, the same in every figure (MAS red, as in the paper's Figure 3)
METHOD_COLOURS: dict[str, tuple[float, float, float]] = {
    "finetune": (0.55, 0.55, 0.55),
    "lwf": to_rgb(_TAB(1)),
    "ebll": to_rgb(_TAB(5)),
    "mean-imm": to_rgb(_TAB(6)),
    "mode-imm": to_rgb(_TAB(4)),
    "ewc": to_rgb(_TAB(0)),
    "si": to_rgb(_TAB(2)),
    "mas": to_rgb(_TAB(3)),
    "l-mas": (0.98, 0.62, 0.55),
    "online-ewc": to_rgb(_TAB(9)),
    "l2": to_rgb(_TAB(8)),
    "joint": (0.1, 0.1, 0.1),
}
_MINUS = "\N{MINUS SIGN}"


def method_colour(method: str) -> tuple[float, float, float]:
    """The fixed colour of ``method`` (a grey-blue for a method outside the list)."""
    return METHOD_COLOURS.get(method, (0.35, 0.45, 0.55))


def _ink(colour: Sequence[float]) -> str:
    r, g, b = colour[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _signed(value: float, digits: int = 1) -> str:
    text = f"{value:+.{digits}f}"
    return f"{0:.{digits}f}" if float(text) == 0 else text.replace("-", _MINUS)


@dataclass(frozen=True)
class _Series:
    """One bar per group: heights, each bar's colour, a hatch, and the text written inside."""

    label: str
    colours: Sequence[tuple[float, float, float]]
    values: Sequence[float]
    hatch: str | None = None
    inside: Sequence[str] | None = None


def _new_figure(width: float, height: float, rows: int, cols: int) -> tuple[Figure, list[Axes]]:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, [ax for row in axes for ax in row]


def _bars(
    ax: Axes,
    groups: Sequence[str],
    series: Sequence[_Series],
    *,
    limits: tuple[float, float],
    panel_in: float,
    signed: bool = False,
) -> None:
    """Grouped bars, each with its value above it (below it when negative) and ``inside`` text.

    ``panel_in`` is the panel's width in inches, which sizes the writing to the bars.
    """
    n = len(series)
    width = 0.84 / n
    bottom, top = limits
    bar_pt = width * panel_in / max(len(groups), 1) * 72
    font = max(5.0, min(8.0, 0.85 * bar_pt))
    for k, s in enumerate(series):
        xs = [g - 0.42 + width * (k + 0.5) for g in range(len(groups))]
        ax.bar(
            xs,
            s.values,
            width,
            color=list(s.colours),
            hatch=s.hatch,
            edgecolor="black",
            linewidth=0.5,
            label=s.label,
            zorder=2,
        )
        for g, (x, v) in enumerate(zip(xs, s.values, strict=True)):
            ax.annotate(
                _signed(v) if signed else f"{v:.1f}",
                (x, v),
                xytext=(0, 2 if v >= 0 else -2),
                textcoords="offset points",
                ha="center",
                va="bottom" if v >= 0 else "top",
                rotation=90,
                fontsize=font,
            )
            if s.inside is not None and v - bottom > 0.15 * (top - bottom):
                ax.annotate(
                    s.inside[g],
                    (x, bottom),
                    xytext=(0, 3),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    rotation=90,
                    fontsize=font,
                    fontweight="bold",
                    color=_ink(s.colours[g]),
                    zorder=4,
                )
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.set_ylim(bottom, top)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.set_axisbelow(True)


def _accuracy_limits(values: Sequence[float]) -> tuple[float, float]:
    """0 (or a multiple of 10 under the lowest value when all are high) to 100, plus room."""
    low = min(values, default=0.0)
    bottom = 0.0 if low < 40 else 10.0 * math.floor((low - 15) / 10)
    return bottom, 100 + 0.16 * (100 - bottom)


def _drop_limits(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values, default=-1.0), max(values, default=0.0)
    span = max(high - low, 1.0)
    return min(low, 0.0) - 0.3 * span, max(high, 0.0) + 0.3 * span


def _title(results: Mapping[str, Any], what: str) -> str:
    config = results.get("config")
    model = config.get("model", "") if isinstance(config, Mapping) else ""
    return f"{results.get('benchmark', '')}, {model}: {what}"


def figure3_figure(results: Mapping[str, Any], methods: Sequence[str]) -> Figure:
    """Figure 3: (a) accuracy of each task after the last, (b) its drop; averages in the legends."""
    tasks = [str(n) for n in results["task_names"]]
    width = max(8.0, 3.4 + 0.2 * len(tasks) * len(methods))
    figure, (top, bottom) = _new_figure(width, 8.4, 2, 1)
    accuracy = {m: final_accuracy(results, m) for m in methods}
    drop = {m: drops(results, m) for m in methods}
    entries = results["methods"]
    panel_in = width - 3.0  # the legend takes the rest
    _bars(
        top,
        tasks,
        [
            _Series(
                f"{m} ({100 * float(entries[m]['average_accuracy']):.2f})",
                [method_colour(m)] * len(tasks),
                accuracy[m],
            )
            for m in methods
        ],
        limits=_accuracy_limits([v for values in accuracy.values() for v in values]),
        panel_in=panel_in,
    )
    top.set_ylabel("accuracy after the last task (%)")
    top.set_title("(a) accuracy of each task at the end of the sequence; legend: average (%)")
    _bars(
        bottom,
        tasks,
        [
            _Series(
                f"{m} ({_signed(100 * float(entries[m]['average_drop']), 2)})",
                [method_colour(m)] * len(tasks),
                drop[m],
            )
            for m in methods
        ],
        limits=_drop_limits([v for values in drop.values() for v in values]),
        panel_in=panel_in,
        signed=True,
    )
    bottom.axhline(0, color="black", linewidth=0.8)
    bottom.set_ylabel("drop (pp)")
    bottom.set_title(
        "(b) drop of each task (accuracy at the end − right after learning it); legend: average (pp)"
    )
    for ax in (top, bottom):  # beside the panel, one method a line
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0)
    figure.suptitle(_title(results, "a sequence of tasks (the paper's Figure 3)"), fontsize=11)
    return figure


def _panels(n: int) -> tuple[int, int]:
    cols = min(n, 2)
    return math.ceil(n / cols), cols


def _pair_values(runs: Sequence[PairRun], methods: Sequence[str]) -> list[float]:
    cells = [pair_cell(r.results, m) for r in runs for m in methods]
    return [v for c in cells for v in (c.first, c.second)]


def _pair_legend(figure: Figure, methods: Sequence[str]) -> None:
    """Which bar is which: solid the first task after the second, hatched the second task;
    with ``methods``, their colours too (where the x axis does not name them)."""
    handles = [Patch(facecolor=method_colour(m), edgecolor="black", label=m) for m in methods]
    handles += [
        Patch(facecolor="white", edgecolor="black", label="first task, after the second"),
        Patch(facecolor="white", edgecolor="black", hatch="///", label="second task"),
    ]
    fits = max(1, int(figure.get_figwidth() / 2.2))
    figure.legend(
        handles=handles, loc="outside lower center", ncols=min(len(handles), fits), fontsize=8
    )


def table2_figure(pairs: Sequence[PairRun], methods: Sequence[str]) -> Figure:
    """Table 2: per pair, each method's first task after the second (drop in the bar) and second."""
    rows, cols = _panels(len(pairs))
    panel_in = max(4.5, 0.62 * len(methods))
    figure, axes = _new_figure(panel_in * cols + 0.8, 3.8 * rows + 1.0, rows, cols)
    limits = _accuracy_limits(_pair_values(pairs, methods))
    colours = [method_colour(m) for m in methods]
    for ax, run in zip(axes, pairs, strict=False):
        cells = [pair_cell(run.results, m) for m in methods]
        first = _Series(
            "first", colours, [c.first for c in cells], inside=[_signed(c.drop) for c in cells]
        )
        second = _Series("second", colours, [c.second for c in cells], hatch="///")
        _bars(ax, list(methods), [first, second], limits=limits, panel_in=panel_in)
        ax.set_title(run.label, fontsize=10)
        ax.set_ylabel("accuracy (%)")
        ax.tick_params(axis="x", labelrotation=30)
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    _pair_legend(figure, ())
    figure.suptitle(
        _title(pairs[0].results, "two-task sequences (the paper's Table 2); in the bar: drop (pp)"),
        fontsize=11,
    )
    return figure


def table3_figure(runs: Sequence[PairRun], methods: Sequence[str]) -> Figure:
    """Table 3: per pair, MAS and l-MAS grouped by the data Ω was computed on."""
    pairs = list(dict.fromkeys((r.first, r.second) for r in runs))
    omegas = list(dict.fromkeys(str(r.omega) for r in runs))
    rows, cols = _panels(len(pairs))
    panel_in = max(4.5, 0.45 * len(omegas) * 2 * len(methods))
    figure, axes = _new_figure(panel_in * cols + 0.8, 3.8 * rows + 1.0, rows, cols)
    limits = _accuracy_limits(_pair_values(runs, methods))
    for ax, (first, second) in zip(axes, pairs, strict=False):
        by_omega = {str(r.omega): r for r in runs if (r.first, r.second) == (first, second)}
        series = []
        for m in methods:
            cells = [pair_cell(by_omega[o].results, m) for o in omegas]
            colours = [method_colour(m)] * len(omegas)
            series.append(
                _Series(
                    m, colours, [c.first for c in cells], inside=[_signed(c.drop) for c in cells]
                )
            )
            series.append(_Series(m, colours, [c.second for c in cells], hatch="///"))
        _bars(ax, [f"Ω on {o}" for o in omegas], series, limits=limits, panel_in=panel_in)
        ax.set_title(f"{first} \N{RIGHTWARDS ARROW} {second}", fontsize=10)
        ax.set_ylabel("accuracy (%)")
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    _pair_legend(figure, methods)
    figure.suptitle(
        _title(runs[0].results, "Ω from train or test data, MAS vs l-MAS (the paper's Table 3)"),
        fontsize=11,
    )
    return figure
