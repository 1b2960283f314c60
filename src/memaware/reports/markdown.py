"""Markdown tables for a run's results dict.

Accuracies in the results dict are fractions in [0, 1]; the tables show accuracies in percent
and the differences between accuracies (forgetting, BWT, drop) in percentage points. Keys
that the tables do not use are ignored, so later additions to the results dict are harmless.

Drop, forgetting and BWT are measured against each task's accuracy right after training it
(``"trained_accuracy"``), which is the accuracy matrix's diagonal unless the method changes its
weights once a task is learned (IMM merges the task models); the report then says so and shows
that accuracy as an extra row of the method's matrix.

A method run over several seeds holds the mean of each metric, a ``"std"`` mapping with the
standard deviation of the summary metrics and a ``"runs"`` list with one entry per seed;
`seed_count` and `metric_std` read these, and results without them count as one seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from memaware.errors import DataError


def checked_matrix(results: Mapping[str, Any], method: str) -> list[list[float]]:
    """Return `method`'s accuracy matrix as floats, checked to be T x T for T task names.

    Raises DataError when the method has no matrix or it has the wrong shape, so that a table
    or plot never silently shows a truncated matrix. Unmeasured entries (``None``, e.g. a task not
    yet learned) become NaN.
    """
    n_tasks = len(results["task_names"])
    rows = results["methods"][method].get("accuracy_matrix")
    if (
        n_tasks == 0
        or not isinstance(rows, Sequence)
        or len(rows) != n_tasks
        or any(not isinstance(row, Sequence) or len(row) != n_tasks for row in rows)
    ):
        raise DataError(
            f"method {method!r}: accuracy_matrix must be a {n_tasks}x{n_tasks} list of lists, "
            f"one row and one column per task (and there must be at least one task)"
        )
    try:
        return [[float("nan") if value is None else float(value) for value in row] for row in rows]
    except (TypeError, ValueError):
        raise DataError(f"method {method!r}: accuracy_matrix holds a non-number") from None


def trained_accuracy(results: Mapping[str, Any], method: str) -> list[float] | None:
    """`method`'s accuracy on each task right after training it, before its ``after_task``.

    Drop, forgetting and BWT are measured against these. None when it equals the diagonal of the
    accuracy matrix (the method's ``after_task`` leaves the weights alone) or when the results
    predate it (then the diagonal is the reference). It differs for IMM, whose ``after_task``
    merges the task models: the matrix holds the merged model's accuracies. Raises DataError
    when ``"trained_accuracy"`` is there but not one number per task.
    """
    entry = results["methods"][method]
    if "trained_accuracy" not in entry:
        return None
    trained = entry["trained_accuracy"]
    n_tasks = len(results["task_names"])
    if (
        isinstance(trained, str | bytes)
        or not isinstance(trained, Sequence)
        or len(trained) != n_tasks
        or any(isinstance(v, bool) or not isinstance(v, int | float) for v in trained)
    ):
        raise DataError(
            f"method {method!r}: trained_accuracy must be a list of {n_tasks} numbers, one per task"
        )
    matrix = checked_matrix(results, method)
    # Means over the same seeds of the same numbers: equal up to rounding where nothing changed.
    if all(math.isclose(float(v), matrix[j][j], abs_tol=1e-12) for j, v in enumerate(trained)):
        return None
    return [float(v) for v in trained]


def _metric(entry: Mapping[str, Any], method: str, key: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"method {method!r}: {key!r} must be a number, got {value!r}")
    return float(value)


def seed_count(results: Mapping[str, Any], method: str) -> int:
    """How many seeds `method`'s numbers average over: its ``"runs"``, else the top-level seeds.

    Results from before per-seed runs were recorded have neither key (or one seed) and count as
    one seed. Raises DataError when ``"runs"`` is present but not a non-empty list.
    """
    entry = results["methods"][method]
    if "runs" in entry:
        runs = entry["runs"]
        if isinstance(runs, str | bytes) or not isinstance(runs, Sequence) or not runs:
            raise DataError(f"method {method!r}: 'runs' must be a non-empty list of runs")
        return len(runs)
    seeds = results.get("seeds")
    if isinstance(seeds, Sequence) and not isinstance(seeds, str | bytes) and seeds:
        return len(seeds)
    return 1


def metric_std(results: Mapping[str, Any], method: str, key: str) -> float | None:
    """The standard deviation over seeds of `method`'s summary metric `key`, in its own unit.

    None when there is nothing to show: a single seed, or results without a ``"std"`` mapping.
    Raises DataError when the mapping is there but `key` is missing, negative or not a number.
    """
    entry = results["methods"][method]
    std = entry.get("std")
    if std is None or seed_count(results, method) <= 1:
        return None
    if not isinstance(std, Mapping):
        raise DataError(f"method {method!r}: 'std' must map metric names to numbers")
    value = std.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise DataError(
            f"method {method!r}: std of {key!r} must be a non-negative number, got {value!r}"
        )
    return float(value)


def _num(value: float) -> str:
    return f"{value:.2f}"


def _cell(text: str) -> str:
    # A "|" in a method or task name would otherwise start a new column.
    return text.replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    # First column is a label (left-aligned), the rest are numbers (right-aligned).
    lines = [
        "| " + " | ".join(header) + " |",
        "| :--- | " + " | ".join("---:" for _ in header[1:]) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _seed_phrase(counts: Sequence[int]) -> str:
    low, high = min(counts), max(counts)
    if low == high:
        return f"mean ± std over {high} seeds"
    return f"mean ± std over {low} to {high} seeds per method"


def results_table(results: Mapping[str, Any]) -> str:
    """One row per method: summary metrics, final accuracy on each task and wall time.

    Columns: average accuracy (%), average forgetting, BWT and average drop (percentage
    points), final accuracy per task (%) and wall time (s), all to 2 decimals. Preceded by a
    line naming the benchmark and scenario. For a method run over several seeds the numbers
    are means over the seeds, and the four summary metrics read "mean ± std" when the results
    hold their standard deviations; the line above the table then says over how many seeds.
    """
    if not results["methods"]:
        raise DataError("results hold no methods to report")
    task_names = [str(name) for name in results["task_names"]]
    header = [
        "Method",
        "Avg acc (%)",
        "Forgetting (pp)",
        "BWT (pp)",
        "Avg drop (pp)",
        *(f"{_cell(name)} (%)" for name in task_names),
        "Time (s)",
    ]
    rows = []
    spread_counts = []  # seed counts of the methods shown with a ± std
    for method, entry in results["methods"].items():
        final = checked_matrix(results, method)[-1]
        summary = []
        for key in ("average_accuracy", "forgetting", "bwt", "average_drop"):
            text = _num(100 * _metric(entry, method, key))
            std = metric_std(results, method, key)
            if std is not None:
                text += f" ± {_num(100 * std)}"
            summary.append(text)
        if metric_std(results, method, "average_accuracy") is not None:
            spread_counts.append(seed_count(results, method))
        rows.append(
            [
                _cell(str(method)),
                *summary,
                *(_num(100 * acc) for acc in final),
                _num(_metric(entry, method, "wall_time_s")),
            ]
        )
    over = f", {_seed_phrase(spread_counts)}" if spread_counts else ""
    intro = (
        f"Benchmark `{results['benchmark']}`, scenario `{results['scenario']}`{over}: "
        f"accuracy in %, forgetting/BWT/drop in percentage points (pp).\n\n"
    )
    return intro + _table(header, rows) + _reference_note(results)


def _reference_note(results: Mapping[str, Any]) -> str:
    changed = [str(m) for m in results["methods"] if trained_accuracy(results, m) is not None]
    if not changed:
        return ""
    names = ", ".join(f"`{_cell(m)}`" for m in changed)
    return (
        f"\n{names}: the accuracies are those of the model the method deploys after each task "
        "(IMM: the merge of the task models), while drop, forgetting and BWT are measured against "
        "the model trained on each task *before merging* (its accuracy is the row "
        f'"{TRAINED_ROW}" of the accuracy matrix), as in the MAS paper\'s Figure 3; so the last '
        "task has a drop too.\n"
    )


#: label of the accuracy-matrix row with each task's accuracy right after training it
TRAINED_ROW = "Right after training"


def accuracy_matrix_table(
    matrix: Sequence[Sequence[float]],
    task_names: Sequence[str],
    trained: Sequence[float] | None = None,
) -> str:
    """The accuracy matrix in percent: row i is after training task i, column j is task j.

    With ``trained`` (see `trained_accuracy`), a last row gives each task's accuracy right after
    training it, before the method's end-of-task step (IMM's merge).
    """
    names = [_cell(str(name)) for name in task_names]
    if len(matrix) != len(names) or any(len(row) != len(names) for row in matrix):
        raise DataError(f"accuracy matrix must be {len(names)}x{len(names)}, one per task")
    if trained is not None and len(trained) != len(names):
        raise DataError(f"trained accuracies must be {len(names)}, one per task")

    def cells(row: Sequence[float | None]) -> list[str]:
        return ["–" if acc is None or math.isnan(acc) else _num(100 * float(acc)) for acc in row]

    header = ["After training ↓ / accuracy (%) on →", *names]
    rows = [[name, *cells(row)] for name, row in zip(names, matrix, strict=True)]
    if trained is not None:
        rows.append([TRAINED_ROW, *cells(trained)])
    return _table(header, rows)


def presets_table(presets: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of tuned presets ``{benchmark: {scenario: {method: entry}}}``.

    One row per preset: the chosen strength, the seeds, and the mean validation average accuracy
    (percent) of every value tried, the chosen one in bold.
    """
    lines = [
        "| benchmark | scenario | method | chosen λ | seeds | mean validation accuracy per λ (%) |",
        "|---|---|---|---|---|---|",
    ]
    for benchmark, scenarios in presets.items():
        for scenario, methods in scenarios.items():
            for method, entry in methods.items():
                provenance = entry.get("provenance", {})
                tried = provenance.get("validation_average_accuracy", {})
                chosen = float(entry["strength"])
                cells = []
                for value, scores in tried.items():
                    cell = f"{value}: {100 * sum(scores) / len(scores):.2f}"
                    cells.append(f"**{cell}**" if float(value) == chosen else cell)
                seeds = provenance.get("seeds", [])
                lines.append(
                    f"| {benchmark} | {scenario} | {method} | {chosen:g} | {len(seeds)} | "
                    + "; ".join(cells)
                    + " |"
                )
    return "\n".join(lines)
