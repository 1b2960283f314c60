"""Reports of a run: results.json, a markdown summary and three PNGs, all written atomically."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from memaware.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from memaware.reports.comparison import (
    bars_figure,
    plot_bars,
    plot_task_curves,
    png_bytes,
    task_curves_figure,
)
from memaware.reports.markdown import (
    accuracy_matrix_table,
    checked_matrix,
    metric_std,
    results_table,
    seed_count,
    trained_accuracy,
)
from memaware.reports.plots import _figure as _accuracy_figure
from memaware.reports.plots import plot_results

__all__ = [
    "accuracy_matrix_table",
    "checked_matrix",
    "metric_std",
    "plot_bars",
    "plot_results",
    "plot_task_curves",
    "results_table",
    "seed_count",
    "trained_accuracy",
    "write_report",
]


def _markdown_report(results: Mapping[str, Any]) -> str:
    parts = [
        "# memaware results\n",
        results_table(results),
        "![Average accuracy per method, with its average drop on each bar](comparison.png)\n",
        "![Accuracy on each task after each training stage](curves.png)\n",
        "![Accuracy matrices and final accuracy per task](accuracy.png)\n",
        "## Accuracy matrices\n",
        "Row: after training that task; column: accuracy (%) on that task.\n",
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


def write_report(results: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write results.json, results.md and three PNGs into `out_dir`, creating it if needed.

    Returns the written paths under the keys "json", "markdown", "plot" (accuracy.png: the
    accuracy matrices), "bars" (comparison.png: average accuracy per method, see `plot_bars`)
    and "curves" (curves.png: each task's accuracy over training, see `plot_task_curves`).
    The markdown and all three images are built in memory before anything is written, and the
    JSON (which rejects NaN) is written first, so malformed results fail without touching
    `out_dir`'s files; each file is replaced atomically.
    """
    out_dir = Path(out_dir)
    markdown = _markdown_report(results)
    images = {
        "plot": ("accuracy.png", png_bytes(_accuracy_figure(results))),
        "bars": ("comparison.png", png_bytes(bars_figure(results))),
        "curves": ("curves.png", png_bytes(task_curves_figure(results))),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "results.json",
        "markdown": out_dir / "results.md",
        **{key: out_dir / name for key, (name, _) in images.items()},
    }
    atomic_write_json(paths["json"], dict(results))
    atomic_write_text(paths["markdown"], markdown)
    for key, (_, data) in images.items():
        atomic_write_bytes(paths[key], data)
    return paths
