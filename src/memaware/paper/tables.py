"""Markdown tables in the layout of the MAS paper's Tables 2 and 3 and Figure 3, ours then the paper's.

Every number is read from a results dict (``results.json``): accuracies in %, drops in
percentage points. A cell of Tables 2 and 3 is, as in the paper, ``a₁ (d₁) | a₂``: the first
task's accuracy after the second task was learned, its drop d₁ = a₁ − (its accuracy right after
it was learned), and the second task's accuracy. Figure 3's numbers are each task's accuracy at
the end of the sequence and its drop, with their averages over all tasks (the last one's drop
included, 0 for all but IMM, whose drop is measured from the model trained before merging).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memaware.errors import DataError
from memaware.paper.reference import FIGURE3, PAIRS, TABLE2, TABLE3, Cell, paper_method
from memaware.reports import checked_matrix

__all__ = [
    "PairRun",
    "drops",
    "figure3_table",
    "final_accuracy",
    "pair_cell",
    "table2",
    "table3",
]

_MINUS = "\N{MINUS SIGN}"
_ARROW = "\N{RIGHTWARDS ARROW}"


@dataclass(frozen=True)
class PairRun:
    """The results of one two-task sequence ``first`` → ``second`` (``omega``: Table 3's Ω data)."""

    first: str
    second: str
    results: Mapping[str, Any]
    omega: str | None = None

    @property
    def label(self) -> str:
        return f"{self.first} {_ARROW} {self.second}"


def final_accuracy(results: Mapping[str, Any], method: str) -> list[float]:
    """Each task's accuracy (%) after the last task."""
    return [100 * v for v in checked_matrix(results, method)[-1]]


def drops(results: Mapping[str, Any], method: str) -> list[float]:
    """Each task's drop (pp): its accuracy at the end minus right after it was learned."""
    values = results["methods"][method].get("drop")
    if not isinstance(values, Sequence) or len(values) != len(results["task_names"]):
        raise DataError(f"method {method!r}: 'drop' must hold one number per task")
    return [100 * float(v) for v in values]


def pair_cell(results: Mapping[str, Any], method: str) -> Cell:
    """Table 2's cell of ``method`` from the results of a two-task sequence."""
    if len(results["task_names"]) != 2:
        raise DataError(f"a pair's results hold 2 tasks, these hold {results['task_names']}")
    final = final_accuracy(results, method)
    return Cell(final[0], drops(results, method)[0], final[1])


def _signed(value: float, digits: int = 2) -> str:
    text = f"{value:+.{digits}f}"
    return "0." + "0" * digits if float(text) == 0 else text.replace("-", _MINUS)


def _cell(cell: Cell, drop_digits: int = 2) -> str:
    """``a₁ (d₁) | a₂``; the paper's own cells print their drop to ``drop_digits`` = 1."""
    return f"{cell.first:.2f} ({_signed(cell.drop, drop_digits)}) \\| {cell.second:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| :--- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _best(cells: Sequence[Cell]) -> tuple[int, int, int]:
    """Indices of the highest first-task accuracy, smallest drop and highest second accuracy."""
    return (
        max(range(len(cells)), key=lambda k: cells[k].first),
        max(range(len(cells)), key=lambda k: cells[k].drop),
        max(range(len(cells)), key=lambda k: cells[k].second),
    )


def table2(pairs: Sequence[PairRun], methods: Sequence[str]) -> str:
    """Our Table 2 (one column per pair), then the paper's. Bold: the column's best first task."""
    columns = [[pair_cell(p.results, m) for m in methods] for p in pairs]
    rows = []
    for k, method in enumerate(methods):
        row = [method]
        for cells in columns:
            text = _cell(cells[k])
            row.append(f"**{text}**" if _best(cells)[0] == k else text)
        rows.append(row)
    paper_rows = [[name, *(_cell(c, 1) for c in cells)] for name, cells in TABLE2.items()]
    return "\n".join(
        [
            "Each cell: first task's accuracy after the second (%), its drop (pp) | second "
            "task's accuracy (%). Bold: the best first-task accuracy of the column.\n",
            _table(["Method", *(p.label for p in pairs)], rows),
            "The paper's Table 2 (AlexNet, ImageNet-pretrained; one IMM, mean or mode not "
            "stated):\n",
            _table(["Method", *(f"{a} {_ARROW} {b}" for a, b in PAIRS)], paper_rows),
        ]
    )


def table3(runs: Sequence[PairRun], methods: Sequence[str]) -> str:
    """Our Table 3 (rows: method × Ω data; columns: pairs), then the paper's."""
    pairs = list(dict.fromkeys((r.first, r.second) for r in runs))
    by_key = {(r.first, r.second, r.omega): r for r in runs}
    omegas = list(dict.fromkeys(r.omega for r in runs))
    rows = []
    for method in methods:
        for omega in omegas:
            cells = []
            for first, second in pairs:
                run = by_key.get((first, second, omega))
                cells.append("–" if run is None else _cell(pair_cell(run.results, method)))
            rows.append([method, str(omega), *cells])
    paper_rows = [[m, omega, *(_cell(c, 1) for c in cells)] for (m, omega), cells in TABLE3.items()]
    return "\n".join(
        [
            "Each cell: first task's accuracy after the second (%), its drop (pp) | second "
            "task's accuracy (%); Ω computed on the first task's training inputs, its test "
            "inputs (unlabelled) or both.\n",
            _table(
                ["Method", "Ω on", *(f"{a} {_ARROW} {b}" for a, b in pairs)],
                rows,
            ),
            "The paper's Table 3 (AlexNet):\n",
            _table(["Method", "Ω on", *(f"{a} {_ARROW} {b}" for a, b in PAIRS)], paper_rows),
        ]
    )


def figure3_table(results: Mapping[str, Any], methods: Sequence[str]) -> str:
    """Figure 3's numbers: averages beside the paper's legend, then each task's accuracy and drop."""
    names = [str(n) for n in results["task_names"]]
    summary = []
    for method in methods:
        entry = results["methods"][method]
        paper = FIGURE3.get(paper_method(method))
        summary.append(
            [
                method,
                f"{100 * float(entry['average_accuracy']):.2f}",
                _signed(100 * float(entry["average_drop"])),
                "–" if paper is None else f"{paper[0]:.2f}",
                "–" if paper is None else _signed(paper[1]),
            ]
        )
    accuracy = [[m, *(f"{v:.2f}" for v in final_accuracy(results, m))] for m in methods]
    drop = [[m, *(_signed(v) for v in drops(results, m))] for m in methods]
    return "\n".join(
        [
            "Average over all tasks of each task's accuracy after the last task, and of its "
            "drop (accuracy at the end minus right after learning it); the paper's legend "
            "(AlexNet, Flowers → Scenes → Birds → Cars → Aircraft → Actions → Letters → SVHN) "
            "beside it.\n",
            _table(
                [
                    "Method",
                    "average accuracy (%)",
                    "average drop (pp)",
                    "paper: accuracy (%)",
                    "paper: drop (pp)",
                ],
                summary,
            ),
            "(a) Accuracy (%) of each task after the last task:\n",
            _table(["Method", *names], accuracy),
            "(b) Drop (pp) of each task:\n",
            _table(["Method", *names], drop),
        ]
    )
