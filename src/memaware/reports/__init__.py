"""Reports of a run: results.json, a markdown summary and a PNG, all written atomically."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from memaware.reports.io import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from memaware.reports.markdown import accuracy_matrix_table, checked_matrix, results_table
from memaware.reports.plots import plot_results

__all__ = [
    "accuracy_matrix_table",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "checked_matrix",
    "plot_results",
    "results_table",
    "write_report",
]


def _markdown_report(results: Mapping[str, Any]) -> str:
    parts = [
        "# memaware results\n",
        results_table(results),
        "![Accuracy matrices and final accuracy per task](accuracy.png)\n",
        "## Accuracy matrices\n",
        "Row: after training that task; column: accuracy (%) on that task.\n",
    ]
    for method in results["methods"]:
        parts.append(f"### {method}\n")
        parts.append(accuracy_matrix_table(checked_matrix(results, method), results["task_names"]))
    return "\n".join(parts)


def write_report(results: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write results.json, results.md and accuracy.png into `out_dir`, creating it if needed.

    Returns the written paths under the keys "json", "markdown" and "plot". The markdown is
    built before anything is written, so malformed results fail without touching `out_dir`'s
    files.
    """
    out_dir = Path(out_dir)
    markdown = _markdown_report(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "results.json",
        "markdown": out_dir / "results.md",
        "plot": out_dir / "accuracy.png",
    }
    atomic_write_json(paths["json"], dict(results))
    atomic_write_text(paths["markdown"], markdown)
    plot_results(results, paths["plot"])
    return paths
