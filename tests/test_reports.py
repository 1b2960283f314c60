"""Tests for memaware.reports: atomic writes, markdown tables, the PNG and write_report."""

from __future__ import annotations

import copy
import json
import os
import random
import statistics
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memaware.errors import DataError
from memaware.reports import (
    accuracy_matrix_table,
    plot_bars,
    plot_results,
    plot_task_curves,
    results_table,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _results() -> dict[str, Any]:
    # Summary metrics are consistent with the matrices (final row minus the best earlier value).
    return {
        "memaware_version": "0.1.0",
        "benchmark": "split-mnist",
        "scenario": "task",
        "task_names": ["0/1", "2/3", "4/5"],
        "config": {"epochs": 1, "lr": 0.01},
        "seeds": [0],
        "versions": {"python": "3.11", "torch": "2.13", "numpy": "2.0"},
        "methods": {
            "finetune": {
                "accuracy_matrix": [[0.99, 0.10, 0.20], [0.50, 0.98, 0.30], [0.40, 0.60, 0.97]],
                "average_accuracy": 0.6566666666666666,
                "forgetting": 0.485,
                "bwt": -0.485,
                "drop": [-0.59, -0.38, 0.0],
                "average_drop": -0.3233333333333333,
                "wall_time_s": 12.3,
            },
            "mas": {
                "accuracy_matrix": [[0.995, 0.5, 0.5], [0.99, 0.985, 0.5], [0.985, 0.98, 0.975]],
                "average_accuracy": 0.98,
                "forgetting": 0.0075,
                "bwt": -0.0075,
                "drop": [-0.01, -0.005, 0.0],
                "average_drop": -0.005,
                "wall_time_s": 20.0,
            },
        },
    }


def _synthetic(n_methods: int, n_tasks: int) -> dict[str, Any]:
    results = _results()
    results["task_names"] = [f"{2 * t}/{2 * t + 1}" for t in range(n_tasks)]
    results["methods"] = {
        f"method-{k}": {
            "accuracy_matrix": [
                [round(0.5 + 0.5 * ((i + j + k) % 7) / 7, 3) for j in range(n_tasks)]
                for i in range(n_tasks)
            ],
            "average_accuracy": 0.8,
            "forgetting": 0.1,
            "bwt": -0.1,
            "drop": [-0.1] * n_tasks,
            "average_drop": -0.1,
            "wall_time_s": 1.0 + k,
        }
        for k in range(n_methods)
    }
    return results


_METHOD_NAMES = [
    "finetune", "joint", "ewc", "online-ewc", "si", "mas", "mas-local", "l2",
    "lwf", "imm-mean", "imm-mode", "synaptic-intelligence",
]  # fmt: skip


def _summary(matrix: list[list[float | None]]) -> dict[str, Any]:
    # The metrics of one accuracy matrix, with the definitions the report documents.
    t = len(matrix)
    nan = float("nan")
    a = [[nan if v is None else v for v in row] for row in matrix]
    last = [v for v in a[-1] if v == v]
    drop = [
        None if a[-1][j] != a[-1][j] or a[j][j] != a[j][j] else a[-1][j] - a[j][j] for j in range(t)
    ]
    forgetting = [
        max(v for i in range(j, t - 1) if (v := a[i][j]) == v) - a[-1][j]
        for j in range(t - 1)
        if a[-1][j] == a[-1][j]
    ]
    known = [d for d in drop if d is not None]
    return {
        "average_accuracy": sum(last) / len(last),
        "forgetting": sum(forgetting) / len(forgetting) if forgetting else 0.0,
        "bwt": sum(known[:-1]) / max(1, len(known) - 1),
        "drop": drop,
        "average_drop": sum(known) / len(known),
    }


def _multi_seed(n_methods: int, n_tasks: int, n_seeds: int, holes: bool = False) -> dict[str, Any]:
    """Results shaped like a comparison run: per method the means, "std" and "runs"."""
    rng = random.Random(1234 + 100 * n_methods + 10 * n_tasks + n_seeds)
    keys = ("average_accuracy", "forgetting", "bwt", "average_drop", "wall_time_s")
    methods: dict[str, Any] = {}
    for k in range(n_methods):
        name = _METHOD_NAMES[k] if k < len(_METHOD_NAMES) else f"method-{k}"
        # Accuracy kept per later task: finetune forgets most, joint nothing.
        keep = [0.85, 1.0, 0.99, 0.988, 0.985, 0.996, 0.994, 0.98, 0.93, 0.97, 0.975, 0.983]
        noise = 0.002 + (1 - keep[k % len(keep)]) / 8
        runs = []
        for seed in range(n_seeds):
            matrix: list[list[float | None]] = [
                [
                    None
                    if j > i
                    else min(1.0, 0.985 * keep[k % len(keep)] ** (i - j) + rng.gauss(0, noise))
                    for j in range(n_tasks)
                ]
                for i in range(n_tasks)
            ]
            if holes and n_tasks >= 3:
                matrix[1][0] = None  # an evaluation that was skipped
            run = {"seed": seed, "accuracy_matrix": matrix, **_summary(matrix)}
            run["wall_time_s"] = 10.0 + 3 * k + rng.random()
            runs.append(run)
        mean_matrix = [
            [
                None
                if all(r["accuracy_matrix"][i][j] is None for r in runs)
                else statistics.fmean(
                    v for r in runs if (v := r["accuracy_matrix"][i][j]) is not None
                )
                for j in range(n_tasks)
            ]
            for i in range(n_tasks)
        ]
        spread = 1 if n_seeds == 1 else None
        methods[name] = {
            "accuracy_matrix": mean_matrix,
            **{key: statistics.fmean(r[key] for r in runs) for key in keys},
            "drop": _summary(mean_matrix)["drop"],
            "std": {key: 0.0 if spread else statistics.stdev(r[key] for r in runs) for key in keys},
            "runs": runs,
            "options": {},
        }
    return {
        "benchmark": "split-mnist",
        "scenario": "task",
        "task_names": [f"{2 * t}/{2 * t + 1}" for t in range(n_tasks)],
        "seeds": list(range(n_seeds)),
        "config": {"epochs": 1},
        "versions": {"python": "3.11"},
        "methods": methods,
    }


def _row(table: str, label: str) -> list[str]:
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == label:
            return cells
    raise AssertionError(f"no row {label!r} in:\n{table}")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# --- markdown ----------------------------------------------------------------------------------


def test_results_table_numbers() -> None:
    table = results_table(_results())
    assert "split-mnist" in table.splitlines()[0]
    assert "task" in table.splitlines()[0]
    header = _row(table, "Method")
    assert header == [
        "Method",
        "Avg acc (%)",
        "Forgetting (pp)",
        "BWT (pp)",
        "Avg drop (pp)",
        "0/1 (%)",
        "2/3 (%)",
        "4/5 (%)",
        "Time (s)",
    ]
    assert _row(table, "finetune")[1:] == [
        "65.67", "48.50", "-48.50", "-32.33", "40.00", "60.00", "97.00", "12.30",
    ]  # fmt: skip
    assert _row(table, "mas")[1:] == [
        "98.00", "0.75", "-0.75", "-0.50", "98.50", "98.00", "97.50", "20.00",
    ]  # fmt: skip
    # Every row, header and separator included, has the same number of columns.
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len(lines) == 4
    assert len({line.count(" | ") for line in lines}) == 1


def test_accuracy_matrix_table_numbers() -> None:
    results = _results()
    table = accuracy_matrix_table(
        results["methods"]["finetune"]["accuracy_matrix"], results["task_names"]
    )
    assert _row(table, "0/1")[1:] == ["99.00", "10.00", "20.00"]
    assert _row(table, "2/3")[1:] == ["50.00", "98.00", "30.00"]
    assert _row(table, "4/5")[1:] == ["40.00", "60.00", "97.00"]
    assert table.splitlines()[0].endswith("| 0/1 | 2/3 | 4/5 |")


def test_pipe_in_names_is_escaped() -> None:
    results = _results()
    results["methods"]["mas|lambda=1"] = results["methods"].pop("mas")
    table = results_table(results)
    assert "| mas\\|lambda=1 |" in table


def test_extra_keys_are_tolerated() -> None:
    plain = _results()
    extended = copy.deepcopy(plain)
    extended["new_top_level"] = {"anything": [1, 2]}
    for entry in extended["methods"].values():
        summary = {k: v for k, v in entry.items() if k != "accuracy_matrix"}
        entry["seeds"] = {"mean": summary, "std": dict.fromkeys(summary, 0.0)}
        entry["per_seed"] = [summary]
    assert results_table(extended) == results_table(plain)


def test_bad_matrix_shape_raises_data_error() -> None:
    results = _results()
    results["methods"]["mas"]["accuracy_matrix"] = [[0.9, 0.8], [0.7, 0.6]]
    with pytest.raises(DataError, match="mas"):
        results_table(results)
    with pytest.raises(DataError):
        accuracy_matrix_table([[0.9, 0.8]], ["a", "b"])


def test_missing_metric_raises_data_error() -> None:
    results = _results()
    del results["methods"]["finetune"]["bwt"]
    with pytest.raises(DataError, match="bwt"):
        results_table(results)


# --- plot --------------------------------------------------------------------------------------


def test_plot_results_writes_png(tmp_path: Path) -> None:
    target = tmp_path / "accuracy.png"
    plot_results(_results(), target)
    width, height = _png_size(target)
    assert 600 <= width <= 4000
    assert 500 <= height <= 4000
    assert target.stat().st_size > 10_000
    assert os.listdir(tmp_path) == ["accuracy.png"]


@pytest.mark.parametrize(("n_methods", "n_tasks"), [(1, 2), (3, 10), (12, 20)])
def test_plot_results_sizes(tmp_path: Path, n_methods: int, n_tasks: int) -> None:
    target = tmp_path / "accuracy.png"
    plot_results(_synthetic(n_methods, n_tasks), target)
    width, height = _png_size(target)
    assert 600 <= width <= 5000
    assert 500 <= height <= 5000


def test_plot_does_not_import_pyplot(tmp_path: Path) -> None:
    # pyplot would pick a global backend for the caller; the report must not load it.
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from memaware.reports import plot_results\n"
        f"plot_results(json.loads(sys.stdin.read()), Path({str(tmp_path / 'a.png')!r}))\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(_results()), text=True, check=True
    )
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG_MAGIC


# --- write_report ------------------------------------------------------------------------------


def test_write_report_writes_five_files(tmp_path: Path) -> None:
    out_dir = tmp_path / "runs" / "demo"
    results = _results()
    paths = write_report(results, out_dir)
    assert paths == {
        "json": out_dir / "results.json",
        "markdown": out_dir / "results.md",
        "plot": out_dir / "accuracy.png",
        "bars": out_dir / "comparison.png",
        "curves": out_dir / "curves.png",
    }
    assert sorted(os.listdir(out_dir)) == [
        "accuracy.png", "comparison.png", "curves.png", "results.json", "results.md",
    ]  # fmt: skip
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == results
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert markdown.startswith("# ")
    assert results_table(results) in markdown
    assert "### finetune" in markdown and "### mas" in markdown
    assert "| 4/5 | 98.50 | 98.00 | 97.50 |" in markdown  # mas' matrix, last row
    assert "](comparison.png)" in markdown and "](curves.png)" in markdown
    for key in ("plot", "bars", "curves"):
        assert paths[key].read_bytes()[:8] == PNG_MAGIC


def test_write_report_tolerates_extra_keys(tmp_path: Path) -> None:
    results = _results()
    results["methods"]["mas"]["seeds"] = {"mean": {"bwt": -0.01}, "std": {"bwt": 0.002}}
    paths = write_report(results, tmp_path)
    assert json.loads(paths["json"].read_text(encoding="utf-8"))["methods"]["mas"]["seeds"] == {
        "mean": {"bwt": -0.01},
        "std": {"bwt": 0.002},
    }


def test_write_report_nan_writes_nothing(tmp_path: Path) -> None:
    results = _results()
    results["methods"]["mas"]["bwt"] = float("nan")
    with pytest.raises(ValueError):
        write_report(results, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_no_methods_raises_data_error(tmp_path: Path) -> None:
    results = _results()
    results["methods"] = {}
    with pytest.raises(DataError):
        write_report(results, tmp_path)
    with pytest.raises(DataError):
        plot_results(results, tmp_path / "a.png")
    assert os.listdir(tmp_path) == []


def test_write_report_bad_results_leave_old_report(tmp_path: Path) -> None:
    write_report(_results(), tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    broken = _results()
    broken["methods"]["mas"]["accuracy_matrix"] = [[1.0]]
    with pytest.raises(DataError):
        write_report(broken, tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


# --- several seeds: mean ± std ------------------------------------------------------------------


def test_results_table_mean_std_over_seeds() -> None:
    results = _multi_seed(3, 4, 3)
    table = results_table(results)
    assert "mean ± std over 3 seeds" in table.splitlines()[0]
    for method, entry in results["methods"].items():
        row = _row(table, method)
        std = entry["std"]
        assert (
            row[1] == f"{100 * entry['average_accuracy']:.2f} ± {100 * std['average_accuracy']:.2f}"
        )
        assert row[2] == f"{100 * entry['forgetting']:.2f} ± {100 * std['forgetting']:.2f}"
        assert row[3] == f"{100 * entry['bwt']:.2f} ± {100 * std['bwt']:.2f}"
        assert row[4] == f"{100 * entry['average_drop']:.2f} ± {100 * std['average_drop']:.2f}"
        assert "±" not in "".join(row[5:])  # per-task accuracies and time: means only
        assert row[-1] == f"{entry['wall_time_s']:.2f}"
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len({line.count(" | ") for line in lines}) == 1


def test_results_table_one_seed_unchanged() -> None:
    # One run with std 0 reads exactly like the results from before seeds were averaged.
    results = _multi_seed(2, 3, 1)
    old = copy.deepcopy(results)
    for entry in old["methods"].values():
        del entry["std"], entry["runs"]
    table = results_table(results)
    assert table == results_table(old)
    assert "±" not in table and "seeds" not in table.splitlines()[0]


def test_results_table_mixed_seed_counts() -> None:
    results = _multi_seed(2, 3, 3)
    single = _multi_seed(1, 3, 1)["methods"]["finetune"]
    results["methods"]["finetune"] = single
    table = results_table(results)
    assert "±" not in "".join(_row(table, "finetune"))
    assert "±" in _row(table, "joint")[1]
    assert "over 3 seeds" in table.splitlines()[0]


def test_results_table_old_format_with_several_seeds_shows_means() -> None:
    # Several top-level seeds but no "std": nothing to show a spread with.
    results = _results()
    results["seeds"] = [0, 1, 2]
    table = results_table(results)
    assert "±" not in table
    assert _row(table, "mas")[1] == "98.00"


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda e: e["std"].pop("bwt"), "bwt"),
        (lambda e: e["std"].update(forgetting=-0.1), "forgetting"),
        (lambda e: e["std"].update(average_drop="x"), "average_drop"),
        (lambda e: e.update(std=[0.1]), "std"),
        (lambda e: e.update(runs=[]), "runs"),
        (lambda e: e.update(runs="abc"), "runs"),
    ],
)
def test_results_table_bad_std_raises_data_error(mutate: Any, match: str) -> None:
    results = _multi_seed(2, 3, 3)
    mutate(results["methods"]["joint"])
    with pytest.raises(DataError, match=match):
        results_table(results)


# --- comparison figures -------------------------------------------------------------------------


@pytest.mark.parametrize("n_seeds", [1, 3])
@pytest.mark.parametrize("plot", [plot_bars, plot_task_curves])
def test_comparison_plots_write_png(tmp_path: Path, plot: Any, n_seeds: int) -> None:
    target = tmp_path / "figure.png"
    plot(_multi_seed(8, 5, n_seeds), target)
    width, height = _png_size(target)
    assert 500 <= width <= 3000
    assert 350 <= height <= 3000
    assert target.stat().st_size > 10_000
    assert os.listdir(tmp_path) == ["figure.png"]


@pytest.mark.parametrize(("n_methods", "n_tasks"), [(2, 1), (2, 2), (12, 10), (3, 20)])
def test_comparison_plot_sizes(tmp_path: Path, n_methods: int, n_tasks: int) -> None:
    results = _multi_seed(n_methods, n_tasks, 3)
    plot_bars(results, tmp_path / "bars.png")
    plot_task_curves(results, tmp_path / "curves.png")
    bars_w, bars_h = _png_size(tmp_path / "bars.png")
    assert 500 <= bars_w <= 2000 and 350 <= bars_h <= 1500
    curves_w, curves_h = _png_size(tmp_path / "curves.png")
    assert 300 <= curves_w <= 3000 and 300 <= curves_h <= 3000


def test_comparison_plots_bars_grow_with_methods(tmp_path: Path) -> None:
    plot_bars(_multi_seed(2, 3, 3), tmp_path / "few.png")
    plot_bars(_multi_seed(12, 3, 3), tmp_path / "many.png")
    assert _png_size(tmp_path / "many.png")[0] > _png_size(tmp_path / "few.png")[0]


def test_comparison_plots_tolerate_none_entries(tmp_path: Path) -> None:
    results = _multi_seed(3, 4, 3, holes=True)
    results["methods"]["joint"]["accuracy_matrix"][3][1] = None  # a gap in the mean as well
    plot_bars(results, tmp_path / "bars.png")
    plot_task_curves(results, tmp_path / "curves.png")
    assert _png_size(tmp_path / "curves.png")[0] > 300
    # A task never measured at all leaves its panel empty rather than failing.
    for entry in results["methods"].values():
        for row in entry["accuracy_matrix"]:
            row[2] = None
    plot_task_curves(results, tmp_path / "curves.png")


def test_comparison_plots_old_format(tmp_path: Path) -> None:
    # Results without "std" and "runs" (and with values above the diagonal) still draw.
    results = _results()
    plot_bars(results, tmp_path / "bars.png")
    plot_task_curves(results, tmp_path / "curves.png")
    assert _png_size(tmp_path / "bars.png")[0] >= 500
    assert _png_size(tmp_path / "curves.png")[0] >= 300


def test_comparison_plots_wide_accuracy_range(tmp_path: Path) -> None:
    # Accuracies from 0 % to 100 % (a logit axis cannot show those exactly) still draw.
    results = _multi_seed(3, 3, 3)
    matrix = results["methods"]["finetune"]["accuracy_matrix"]
    matrix[2][0], matrix[1][0], matrix[0][0] = 0.0, 1.0, 1.0
    results["methods"]["finetune"]["average_accuracy"] = 0.0
    plot_bars(results, tmp_path / "bars.png")
    plot_task_curves(results, tmp_path / "curves.png")


@pytest.mark.parametrize("plot", [plot_bars, plot_task_curves])
def test_comparison_plots_bad_input_raise_data_error(tmp_path: Path, plot: Any) -> None:
    target = tmp_path / "figure.png"
    empty = _multi_seed(2, 3, 3)
    empty["methods"] = {}
    with pytest.raises(DataError):
        plot(empty, target)
    broken = _multi_seed(2, 3, 3)
    if plot is plot_bars:
        broken["methods"]["joint"]["average_drop"] = None
    else:
        broken["methods"]["joint"]["runs"][1]["accuracy_matrix"] = [[0.9]]
    with pytest.raises(DataError, match="joint"):
        plot(broken, target)
    assert os.listdir(tmp_path) == []


def test_task_curves_bad_mean_matrix_raises_data_error(tmp_path: Path) -> None:
    results = _multi_seed(2, 3, 3)
    results["methods"]["finetune"]["accuracy_matrix"][0] = [0.9, "x", None]
    with pytest.raises(DataError, match="finetune"):
        plot_task_curves(results, tmp_path / "c.png")
    results = _multi_seed(2, 3, 3)
    results["methods"]["finetune"]["runs"][0] = "not a run"
    with pytest.raises(DataError, match="run 0"):
        plot_task_curves(results, tmp_path / "c.png")


def test_comparison_plots_do_not_import_pyplot(tmp_path: Path) -> None:
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from memaware.reports import plot_bars, plot_task_curves\n"
        "results = json.loads(sys.stdin.read())\n"
        f"plot_bars(results, Path({str(tmp_path / 'b.png')!r}))\n"
        f"plot_task_curves(results, Path({str(tmp_path / 'c.png')!r}))\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(_multi_seed(3, 3, 3)),
        text=True,
        check=True,
    )
    assert (tmp_path / "b.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC


def test_write_report_several_seeds(tmp_path: Path) -> None:
    results = _multi_seed(4, 5, 3)
    paths = write_report(results, tmp_path)
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == results
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert "mean ± std over 3 seeds" in markdown
    assert markdown.index("comparison.png") < markdown.index("## Accuracy matrices")
    for key in ("bars", "curves", "plot"):
        assert _png_size(paths[key])[0] > 300


def test_write_report_bad_runs_leave_old_report(tmp_path: Path) -> None:
    # The runs are only read by the task curves, drawn after the markdown and the bars: all of
    # them are built before any file is written.
    write_report(_multi_seed(2, 3, 3), tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    broken = _multi_seed(2, 3, 3)
    broken["methods"]["joint"]["runs"][2]["accuracy_matrix"] = None
    with pytest.raises(DataError, match="joint"):
        write_report(broken, tmp_path)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


# --- the accuracy right after training (IMM's pre-merge model) ---------------------------------


def _with_merge() -> dict[str, Any]:
    # "imm"'s after_task changed its weights: its trained accuracies differ from the diagonal.
    results = _results()
    results["methods"]["finetune"]["trained_accuracy"] = [0.99, 0.98, 0.97]  # the diagonal
    imm = copy.deepcopy(results["methods"]["mas"])
    imm["trained_accuracy"] = [0.996, 0.99, 0.985]
    results["methods"]["imm"] = imm
    return results


def test_report_says_drop_is_measured_before_merging(tmp_path: Path) -> None:
    results = _with_merge()
    table = results_table(results)
    note = table.split("\n\n", 1)[1].split("\n\n", 1)[1]
    assert "`imm`" in note and "before merging" in note and "`finetune`" not in note
    paths = write_report(results, tmp_path)
    markdown = paths["markdown"].read_text(encoding="utf-8")
    imm_part = markdown.split("### imm")[1]
    assert _row(imm_part, "Right after training")[1:] == ["99.60", "99.00", "98.50"]
    matrices = markdown.split("## Accuracy matrices")[1].split("### imm")[0]
    assert "Right after training" not in matrices  # finetune's and mas's
    assert json.loads(paths["json"].read_text())["methods"]["imm"]["trained_accuracy"][0] == 0.996


def test_no_note_without_a_change_or_for_old_results() -> None:
    results = _with_merge()
    del results["methods"]["imm"]
    assert "before merging" not in results_table(results)
    assert "before merging" not in results_table(_results())  # no trained_accuracy at all


@pytest.mark.parametrize("bad", [[0.9, 0.9], "0.9", [0.9, None, 0.9], [True, 0.9, 0.9]])
def test_bad_trained_accuracy_raises_data_error(bad: Any) -> None:
    results = _with_merge()
    results["methods"]["imm"]["trained_accuracy"] = bad
    with pytest.raises(DataError, match="trained_accuracy"):
        results_table(results)


def test_accuracy_matrix_table_trained_row() -> None:
    table = accuracy_matrix_table([[0.9, None], [0.8, 0.95]], ["a", "b"], [0.92, 0.97])
    assert _row(table, "Right after training")[1:] == ["92.00", "97.00"]
    with pytest.raises(DataError, match="one per task"):
        accuracy_matrix_table([[0.9, None], [0.8, 0.95]], ["a", "b"], [0.92])
