"""Figures comparing methods: average accuracy as bars, and each task's accuracy over training.

`plot_bars` follows Figure 3 of the MAS paper (Aljundi et al., 2018): one bar per method with
its average accuracy after the last task, an error bar for the spread over seeds and the
method's average drop written on the bar. `plot_task_curves` draws one small panel per task
with that task's accuracy after each later training stage, one line per method.

Both read the results dict that `memaware.reports.write_report` takes. For a method run over
several seeds the dict holds means, a ``"std"`` mapping of the summary metrics' standard
deviations and a ``"runs"`` list with each seed's own numbers; results without them (a
single seed, or results from before seeds were averaged) are drawn without spreads. As in
`memaware.reports.plots`, figures are drawn with `matplotlib.figure.Figure` and the Agg canvas,
never pyplot, and written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

from memaware.errors import DataError
from memaware.files import atomic_path
from memaware.reports.markdown import checked_matrix, metric_std, seed_count

__all__ = [
    "bars_figure",
    "plot_bars",
    "plot_task_curves",
    "png_bytes",
    "run_matrices",
    "task_curves_figure",
]

_DPI = 120
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
_CHAR_EM = 0.6  # width of an average character, in font sizes


def plot_bars(results: Mapping[str, Any], path: Path) -> None:
    """Write a PNG with one bar per method: average accuracy (%), ± std, average drop (pp).

    Methods keep the order of ``results["methods"]``. Error bars show the standard deviation
    of the average accuracy over seeds and appear only for methods run over more than one seed
    whose results hold it. The number in each bar is the method's average drop in percentage
    points (final accuracy on a task minus the accuracy right after learning it, averaged over
    the tasks); the number above it is the average accuracy. Raises DataError on malformed
    results, before `path` is touched.
    """
    figure = bars_figure(results)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=_DPI)


def plot_task_curves(results: Mapping[str, Any], path: Path) -> None:
    """Write a PNG with one panel per task j: its accuracy (%) after each training stage i ≥ j.

    Every panel has one line per method, the mean over seeds (the method's
    ``accuracy_matrix``), and for methods with more than one run a light band of ± one sample
    standard deviation over the runs' matrices. Stages before the task was learned are shaded;
    unmeasured entries (``None``) leave gaps. All panels share one accuracy axis: linear, and
    zoomed in when every value lies above 50 %; logit-scaled (90, 99, 99.9 % evenly spread)
    when most values lie above 85 % but some method falls far below, which would squash the
    other curves against the top of a linear axis; 100 % is then drawn at 99.95 %. Raises
    DataError on malformed results, before `path` is touched.
    """
    figure = task_curves_figure(results)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=_DPI)


def png_bytes(figure: Figure) -> bytes:
    """Render `figure` to PNG bytes in memory, at the resolution the report's files use."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def run_matrices(results: Mapping[str, Any], method: str) -> list[list[list[float]]]:
    """Each run's accuracy matrix for `method` (None → NaN), checked like `checked_matrix`.

    Empty when the results hold no ``"runs"`` (older results). Raises DataError when a run is
    not a mapping or its matrix is missing or of the wrong shape.
    """
    entry = results["methods"][method]
    if "runs" not in entry:
        return []
    seed_count(results, method)  # checks that "runs" is a non-empty list
    matrices = []
    for k, run in enumerate(entry["runs"]):
        if not isinstance(run, Mapping):
            raise DataError(f"method {method!r}: run {k} must be a mapping, got {run!r}")
        label = f"{method} (seed {run.get('seed', k)})"
        one = {"task_names": results["task_names"], "methods": {label: run}}
        matrices.append(checked_matrix(one, label))
    return matrices


# --- shared helpers ------------------------------------------------------------------------------


def _methods(results: Mapping[str, Any]) -> list[str]:
    methods = [str(name) for name in results["methods"]]
    if not methods:
        raise DataError("results hold no methods to plot")
    return methods


def _number(results: Mapping[str, Any], method: str, key: str) -> float:
    value = results["methods"][method].get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"method {method!r}: {key!r} must be a number, got {value!r}")
    return float(value)


def _palette(n: int) -> list[tuple[float, float, float]]:
    # Ten strong colours first; beyond them black and the light tab20 shades, so that up to a
    # dozen methods get clearly different colours. Markers tell the rest apart.
    strong = [to_rgb(colormaps["tab10"](k)) for k in range(10)]
    light = [to_rgb(colormaps["tab20"](k)) for k in range(1, 20, 2)]
    colours = [*strong, (0.0, 0.0, 0.0), *light]
    return [colours[k % len(colours)] for k in range(n)]


def _ink_on(colour: Sequence[float]) -> str:
    # Dark text on light fills, white text on dark ones.
    r, g, b = colour[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _y_limits(low: float, high: float) -> tuple[float, float]:
    """An accuracy axis (%) that shows `low`..`high` and ends at 100.

    It starts at 0 unless every value lies above 50 %, in which case it starts at a multiple
    of 5 a little below `low`, so that methods a point apart do not look alike.
    """
    if not math.isfinite(low) or not math.isfinite(high):
        return 0.0, 102.0
    pad = max(1.0, 0.15 * (100.0 - low))
    bottom = 0.0 if low - pad < 50.0 else 5.0 * math.floor((low - pad) / 5.0)
    top = max(100.0, high) + 0.04 * (100.0 - bottom)  # markers at 100 % stay whole
    return bottom, top


def _accuracy_ticks(ax: Any, bottom: float) -> None:
    # Round steps (1, 2, 5, 10), and no tick above 100 %: the headroom is for labels only.
    ax.yaxis.set_major_locator(MaxNLocator(nbins=7, steps=[1, 2, 5, 10]))
    ax.set_yticks([t for t in ax.get_yticks() if bottom <= t <= 100.0 + 1e-9])


def _chars(width_in: float, font_pt: float) -> int:
    # How many characters of an average width fit `width_in` inches at `font_pt`.
    return max(10, int(0.95 * width_in * 72 / (0.55 * font_pt)))  # 0.55: mixed-case text


def _wrap(text: str, width_in: float, font_pt: float) -> str:
    """Break `text` at "; " into lines that fit `width_in` inches at `font_pt`."""
    fits = _chars(width_in, font_pt)
    lines: list[str] = []
    for part in text.split("; "):
        if lines and len(lines[-1]) + 2 + len(part) <= fits:
            lines[-1] += "; " + part
        else:
            lines.append(part)
    return "\n".join(lines)


def _title(results: Mapping[str, Any], body: str, width_in: float, font_pt: float) -> str:
    # "benchmark (scenario scenario): body" on one line when it fits, else over several.
    head = f"{results['benchmark']} ({results['scenario']} scenario)"
    one_line = f"{head}: {body}"
    if len(one_line) <= _chars(width_in, font_pt):
        return one_line
    return head + "\n" + _wrap(body, width_in, font_pt)


def _too_wide(labels: Sequence[str], font_pt: float, slot_in: float) -> bool:
    return max(map(len, labels)) * _CHAR_EM * font_pt / 72 > 0.9 * slot_in


def _signed(value: float) -> str:
    # A real minus sign; a zero drop reads "0.00", a gain "+0.12".
    text = f"{value:+.2f}"
    if text in ("+0.00", "-0.00"):
        return "0.00"
    return text.replace("-", "\N{MINUS SIGN}")


def _spread_note(counts: Sequence[int]) -> str:
    if not counts:
        return "single seed, no error bars"
    if min(counts) == max(counts):
        return f"error bar: ± std over {counts[0]} seeds"
    return f"error bar: ± std over each method's {min(counts)}–{max(counts)} seeds"


# --- bars ----------------------------------------------------------------------------------------


def bars_figure(results: Mapping[str, Any]) -> Figure:
    """The figure `plot_bars` writes, for callers that render it themselves."""
    methods = _methods(results)
    n = len(methods)
    means = [100 * _number(results, m, "average_accuracy") for m in methods]
    drops = [100 * _number(results, m, "average_drop") for m in methods]
    stds = [metric_std(results, m, "average_accuracy") for m in methods]
    spreads = [0.0 if s is None else 100 * s for s in stds]
    counts = [seed_count(results, m) for m, s in zip(methods, stds, strict=True) if s is not None]

    tick_pt = 9.0
    width = max(5.0, 1.4 + 0.62 * n)
    slot_in = (width - 1.4) / n
    rotate = _too_wide(methods, tick_pt, slot_in)
    label_in = max(map(len, methods)) * _CHAR_EM * tick_pt / 72 * (0.6 if rotate else 0.0)
    height = 4.4 + min(label_in, 2.5)
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()

    colours = _palette(n)
    x = np.arange(n)
    bar_width = 0.7
    ax.bar(x, means, bar_width, color=colours, edgecolor="black", linewidth=0.6, zorder=2)
    with_spread = [k for k in range(n) if stds[k] is not None]
    if with_spread:
        ax.errorbar(
            x[with_spread],
            [means[k] for k in with_spread],
            yerr=[spreads[k] for k in with_spread],
            fmt="none",
            ecolor="black",
            elinewidth=1.0,
            capsize=min(5.0, 0.2 * slot_in * 72),
            zorder=3,
        )

    finite = [v for v in means if math.isfinite(v)]
    low = min((m - s for m, s in zip(means, spreads, strict=True) if math.isfinite(m)), default=0)
    high = max((m + s for m, s in zip(means, spreads, strict=True) if math.isfinite(m)), default=0)
    bottom, top = _y_limits(low, high) if finite else (0.0, 100.0)
    top += 0.09 * (top - bottom)  # room for the accuracy written above each bar
    ax.set_ylim(bottom, top)
    ax.set_xlim(-0.6, n - 0.4)
    _accuracy_ticks(ax, bottom)

    bar_pt = bar_width * slot_in * 72
    axes_pt = (height - 1.3 - min(label_in, 2.5)) * 72
    value_pt = min(8.5, bar_pt / (_CHAR_EM * 6 + 0.4))
    for k in range(n):
        if not math.isfinite(means[k]):
            continue
        ax.annotate(
            f"{means[k]:.2f}",
            (k, means[k] + spreads[k]),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=value_pt,
        )
        if not math.isfinite(drops[k]):
            continue
        drop = _signed(drops[k])
        drop_pt = min(9.0, bar_pt / (_CHAR_EM * len(drop) + 0.6))
        # Inside the bar, just below its top and below the error bar's lower arm.
        inside = means[k] - spreads[k]
        visible_pt = (inside - bottom) / (top - bottom) * axes_pt
        if visible_pt >= drop_pt + 8:
            ax.annotate(
                drop,
                (k, inside),
                xytext=(0, -3),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=drop_pt,
                fontweight="bold",
                color=_ink_on(colours[k]),
                zorder=4,
            )
        else:  # a bar too short to hold it: above the accuracy written over the bar
            ax.annotate(
                drop,
                (k, means[k] + spreads[k]),
                xytext=(0, 3 + 1.2 * value_pt),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=drop_pt,
                fontweight="bold",
            )

    ax.set_xticks(x, methods, fontsize=tick_pt)
    if rotate:
        ax.tick_params(axis="x", labelrotation=35)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
            label.set_rotation_mode("anchor")
    ax.set_ylabel("average accuracy after the last task (%)", fontsize=9)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.set_axisbelow(True)
    ax.set_title(
        _wrap(
            "bar: average accuracy (%), value above it; "
            f"{_spread_note(counts)}; in the bar: average drop (pp)",
            width - 1.0,
            8,
        ),
        fontsize=8,
        color="0.25",
    )
    figure.suptitle(
        _title(results, "methods compared", width, 12),
        fontsize=12,
    )
    return figure


# --- task curves ---------------------------------------------------------------------------------


def _band(results: Mapping[str, Any], method: str) -> np.ndarray | None:
    """Sample std (%) over the runs of each matrix entry; None with fewer than two runs."""
    runs = run_matrices(results, method)
    if len(runs) < 2:
        return None
    stack = 100 * np.array(runs)
    finite = np.isfinite(stack)
    counts = finite.sum(axis=0)
    filled = np.where(finite, stack, 0.0)
    mean = filled.sum(axis=0) / np.maximum(counts, 1)
    squares = np.where(finite, (stack - mean) ** 2, 0.0).sum(axis=0)
    std = np.sqrt(squares / np.maximum(counts - 1, 1))
    return np.where(counts >= 2, std, np.nan)


_LOGIT_TICKS = (1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 99, 99.5, 99.8, 99.9)
_LOGIT_CLIP = 0.05  # percent: 0 % and 100 % have no logit; they are drawn as 0.05 % and 99.95 %


def _logit(percent: Any) -> Any:
    # Clipped only to stay finite: the data are clipped to _LOGIT_CLIP before they are drawn,
    # while the axis limits may lie beyond it.
    p = np.clip(np.asarray(percent, dtype=float), 1e-6, 100 - 1e-6) / 100
    return np.log(p / (1 - p))


def _on_logit(percent: np.ndarray) -> np.ndarray:
    clipped: np.ndarray = np.clip(percent, _LOGIT_CLIP, 100 - _LOGIT_CLIP)
    return clipped


def _expit(z: Any) -> Any:
    return 100 / (1 + np.exp(-np.asarray(z, dtype=float)))


def _use_logit(values: np.ndarray, bottom: float) -> bool:
    """Whether a linear axis would squash most curves against its top.

    That happens when one method forgets a lot (the axis must reach far down) while most
    values lie above 85 %: a logit axis then spreads out 90, 99 and 99.9 % and still shows the
    fall of the weak method.
    """
    return (
        bottom == 0.0
        and float(values.min()) >= 1.0  # a task forgotten completely: show it on a linear axis
        and float(values.max()) >= 90.0
        and float(np.median(values)) >= 85.0
    )


def _logit_axis(ax: Any, low: float, high: float, axes_pt: float) -> None:
    z_low = float(_logit(max(low, 0.5)))
    z_high = float(_logit(min(high, 100 - _LOGIT_CLIP)))
    margin = 0.06 * (z_high - z_low) + 0.05
    bottom, top = float(_expit(z_low - margin)), float(_expit(z_high + margin))
    ax.set_yscale("function", functions=(_logit, _expit))
    ax.set_ylim(bottom, top)
    # Keep tick labels at least a label's height apart, filling from the top, where the
    # interesting differences are.
    gap = (z_high - z_low + 2 * margin) * 12.0 / max(axes_pt, 1.0)
    ticks: list[float] = []
    for tick in sorted(_LOGIT_TICKS, reverse=True):
        if bottom <= tick <= top and all(abs(_logit(tick) - _logit(t)) >= gap for t in ticks):
            ticks.append(tick)
    ax.yaxis.set_major_locator(FixedLocator(sorted(ticks)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_locator(NullLocator())


def _grid_shape(n_tasks: int) -> tuple[int, int]:
    n_cols = min(n_tasks, math.ceil(math.sqrt(1.5 * n_tasks)))
    return math.ceil(n_tasks / n_cols), n_cols


def task_curves_figure(results: Mapping[str, Any]) -> Figure:
    """The figure `plot_task_curves` writes, for callers that render it themselves."""
    methods = _methods(results)
    task_names = [str(name) for name in results["task_names"]]
    means = {m: 100 * np.array(checked_matrix(results, m)) for m in methods}
    bands = {m: _band(results, m) for m in methods}
    n_tasks = len(task_names)
    n_rows, n_cols = _grid_shape(n_tasks)
    spare = n_rows * n_cols - n_tasks

    drawn, lows, highs = [], [], []
    for m in methods:
        lower = np.tril(means[m])  # the entries drawn: i ≥ j
        band = bands[m]
        spread = np.zeros_like(lower) if band is None else np.nan_to_num(band)
        keep = np.tril(np.isfinite(means[m]))
        if keep.any():
            drawn.append(lower[keep])
            lows.append(float((lower - spread)[keep].min()))
            highs.append(float((lower + spread)[keep].max()))
    bottom, top = _y_limits(min(lows), max(highs)) if lows else (0.0, 102.0)
    logit = bool(drawn) and _use_logit(np.concatenate(drawn), bottom)

    panel_w, panel_h = 2.7, 2.2
    tick_pt = 7.5
    rotate = _too_wide(task_names, tick_pt, 0.8 * panel_w / n_tasks)
    label_in = max(map(len, task_names)) * _CHAR_EM * tick_pt / 72 if rotate else 0.0
    row_h = panel_h + label_in

    colours = _palette(len(methods))
    handles = [
        Line2D([], [], color=colours[k], marker=_MARKERS[k % len(_MARKERS)], label=name)
        for k, name in enumerate(methods)
    ]
    legend_pt = 8.0
    entry_in = (max(map(len, methods)) * 0.55 * legend_pt + 32) / 72
    legend_cols = max(1, min(spare, int(spare * panel_w // entry_in)))
    in_grid = spare > 0 and (
        math.ceil(len(methods) / legend_cols) * legend_pt * 1.7 / 72 <= 0.95 * row_h
    )
    below_in = 0.0 if in_grid else 0.35 + 0.2 * math.ceil(len(methods) / min(len(methods), 6))

    figure = Figure(
        figsize=(n_cols * panel_w + 0.4, n_rows * row_h + 0.6 + below_in), layout="constrained"
    )
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(n_rows, n_cols)
    first = None
    marker_pt = max(3.0, min(5.5, 0.6 * panel_w * 72 / n_tasks))
    for j, name in enumerate(task_names):
        row, col = divmod(j, n_cols)
        ax = figure.add_subplot(grid[row, col], sharex=first, sharey=first)
        first = first or ax
        if j > 0:  # stages before task j was learned
            ax.axvspan(-0.5, j - 0.5, color="0.92", zorder=0, linewidth=0)
        stages = np.arange(j, n_tasks)
        for k, m in enumerate(methods):
            curve = _on_logit(means[m][j:, j]) if logit else means[m][j:, j]
            ax.plot(
                stages,
                curve,
                color=colours[k],
                marker=_MARKERS[k % len(_MARKERS)],
                markersize=marker_pt,
                linewidth=1.3,
                zorder=3,
            )
            band = bands[m]
            if band is not None:
                spread = band[j:, j]
                ok = np.isfinite(curve) & np.isfinite(spread)
                ax.fill_between(
                    stages,
                    np.clip(curve - spread, 0.0, 100.0),  # past 0 or 100 % it says nothing
                    np.clip(curve + spread, 0.0, 100.0),
                    where=ok,
                    color=colours[k],
                    alpha=0.15,
                    linewidth=0,
                    zorder=2,
                )
        ax.set_title(f"task {name}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=tick_pt)
        ax.set_xticks(range(n_tasks), task_names)
        if rotate:
            ax.tick_params(axis="x", labelrotation=90)
        # Shared axes hide nothing: every panel keeps its tick labels, so no row is unlabelled.
        ax.tick_params(labelbottom=True, labelleft=True)
        if row == n_rows - 1 or j + n_cols >= n_tasks:
            ax.set_xlabel("after training task", fontsize=8)
        if col == 0:
            ax.set_ylabel("accuracy (%, logit scale)" if logit else "accuracy (%)", fontsize=8)
    assert first is not None  # checked_matrix guarantees at least one task
    first.set_xlim(-0.5, n_tasks - 0.5)
    if logit:
        for ax in figure.axes:  # a scale set on one shared axis does not reach the others
            # Fitted to the means: near 100 % the logit magnifies the bands' width.
            _logit_axis(ax, min(lows), max(float(d.max()) for d in drawn), (panel_h - 0.75) * 72)
    else:
        first.set_ylim(bottom, top)
        _accuracy_ticks(first, bottom)

    spread_note = "; band: ± std over seeds" if any(b is not None for b in bands.values()) else ""
    legend_kw: dict[str, Any] = {"fontsize": legend_pt, "frameon": False, "title": "method"}
    if in_grid:
        holder = figure.add_subplot(grid[n_rows - 1, n_cols - spare :])
        holder.axis("off")
        holder.legend(handles=handles, loc="center", ncols=legend_cols, **legend_kw)
    else:
        figure.legend(
            handles=handles, loc="outside lower center", ncols=min(len(methods), 6), **legend_kw
        )
    figure.suptitle(
        _title(
            results,
            f"accuracy (%) on each task after each training stage{spread_note}",
            n_cols * panel_w + 0.4,
            11,
        ),
        fontsize=11,
    )
    return figure
