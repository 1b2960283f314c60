"""Tests for memaware.reports: atomic writes, markdown tables, the PNG and write_report."""

from __future__ import annotations

import copy
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from memaware.errors import DataError
from memaware.reports import (
    accuracy_matrix_table,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    plot_results,
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


# --- atomic writes -----------------------------------------------------------------------------


def test_atomic_write_replaces_content_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_path_exception_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.suffix == ".safetensors"
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_atomic_path_failed_rename_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def failing_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_path_creates_file_when_absent(tmp_path: Path) -> None:
    target = tmp_path / "fresh.txt"
    with atomic_path(target) as tmp:
        assert tmp.exists() and not target.exists()
        tmp.write_text("hello")
    assert target.read_text() == "hello"
    assert os.listdir(tmp_path) == ["fresh.txt"]


def test_atomic_path_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write_bytes(tmp_path / "absent" / "x.bin", b"x")
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_atomic_write_respects_umask(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        target = tmp_path / "perm.txt"
        atomic_write_text(target, "x")
        assert target.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)


def test_atomic_write_text_is_utf8_and_keeps_newlines(tmp_path: Path) -> None:
    target = tmp_path / "t.md"
    atomic_write_text(target, "a\r\nb\n→")
    assert target.read_bytes() == "a\r\nb\n→".encode()


def test_atomic_write_json_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    results = _results()
    atomic_write_json(target, results)
    text = target.read_text(encoding="utf-8")
    assert json.loads(text) == results
    assert text.startswith('{\n  "memaware_version"')  # indent 2, key order kept
    assert text.endswith("}\n")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_atomic_write_json_nan_keeps_old_file(tmp_path: Path, bad: float) -> None:
    target = tmp_path / "r.json"
    target.write_text('{"ok": true}')
    with pytest.raises(ValueError):
        atomic_write_json(target, {"average_accuracy": bad})
    assert target.read_text() == '{"ok": true}'
    assert os.listdir(tmp_path) == ["r.json"]


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


def test_write_report_writes_three_files(tmp_path: Path) -> None:
    out_dir = tmp_path / "runs" / "demo"
    results = _results()
    paths = write_report(results, out_dir)
    assert paths == {
        "json": out_dir / "results.json",
        "markdown": out_dir / "results.md",
        "plot": out_dir / "accuracy.png",
    }
    assert sorted(os.listdir(out_dir)) == ["accuracy.png", "results.json", "results.md"]
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == results
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert markdown.startswith("# ")
    assert results_table(results) in markdown
    assert "### finetune" in markdown and "### mas" in markdown
    assert "| 4/5 | 98.50 | 98.00 | 97.50 |" in markdown  # mas' matrix, last row
    assert paths["plot"].read_bytes()[:8] == PNG_MAGIC


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
