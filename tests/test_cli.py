"""The ``memaware`` command: a real (short) run writes a report; bad input exits 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import memaware.training.experiment as experiment
from helpers import small_split_mnist
from memaware.cli.main import main
from memaware.data.images import ImageDataset
from memaware.errors import ConfigError
from memaware.methods import EWC, METHODS, Finetune


def test_run_writes_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--epochs",
            "1",
            "--hidden",
            "32",
            "--methods",
            "finetune,mas",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"finetune", "mas"}
    mas = results["methods"]["mas"]
    assert len(mas["accuracy_matrix"]) == 5 and 0.0 <= mas["average_accuracy"] <= 1.0
    for key in ("forgetting", "bwt", "wall_time_s", "drop"):
        assert key in mas
    assert results["config"]["train"]["seed"] == 0 and results["versions"]["torch"]
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| mas |" in (out / "results.md").read_text()
    assert "report written to" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--benchmark", "cifar"], "unknown benchmark"),
        (["--methods", "mas,ewc2"], "unknown method"),
        (["--lambda", "-1"], "--lambda must be a finite number >= 0"),
        (["--scenario", "online"], "unknown scenario"),
        (
            ["--benchmark", "split-mnist", "--data-dir", "{missing}"],
            "lacks train-images-idx3-ubyte",
        ),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "out"
    args = [a.replace("{missing}", str(tmp_path / "nowhere")) for a in args]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "memaware.cli.main",
            "run",
            "--epochs",
            "1",
            "--out",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_corrupt_data_file_exits_2(tmp_path: Path) -> None:
    data = tmp_path / "mnist"
    data.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (data / name).write_bytes(b"\x00\x00\x08\x03garbage")
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "memaware.cli.main",
            "run",
            "--data-dir",
            str(data),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "mnist" in proc.stderr.lower()
    assert not out.exists()


# --- bad input fails before any work ---------------------------------------------------------


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading data or training fails the test: the error must come before either."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr(experiment, "make_scenario", forbidden)
    monkeypatch.setattr(experiment, "run_method", forbidden)


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("memaware: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.usefixtures("no_work")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lambda", "nan"], "--lambda must be a finite number >= 0, got nan"),
        (["--lambda", "inf"], "--lambda must be a finite number >= 0, got inf"),
        (["--lambda", "-1"], "--lambda must be a finite number >= 0, got -1.0"),
        (["--lr", "nan"], "learning rate"),
        (["--lr", "inf"], "learning rate"),
        (["--lr", "0"], "learning rate"),
        (["--epochs", "0"], "epochs"),
        (["--batch-size", "0"], "batch_size"),
        (["--hidden", "0"], "hidden sizes must be positive"),
        (["--seed", "-1"], "seeds must be integers >= 0"),
        (["--n-tasks", "0"], "number of tasks"),
        (["--granularity", "exact"], "mas: option granularity: expected one of sample, batch"),
        (["--option", "mas.heads=all"], "mas: option heads: expected one of learned, current"),
        (["--option", "mas.strength=nan"], "mas: option strength must be a finite number"),
        (["--option", "mas.strength=-2"], "mas: option strength must be a finite number >= 0"),
        (["--option", "mas.importance_batch_size=0"], "importance_batch_size must be an integer"),
        (["--option", "mas.gamma=1"], "method mas has no option gamma; it takes strength"),
        (["--option", "gem.strength=1"], "unknown method 'gem'"),
        (["--option", "mas.heads"], "expected METHOD.FIELD=VALUE"),
        (["--option", "ewc.labels=empirical"], "options given for ewc, which this run does not"),
    ],
)
def test_bad_input_exits_2_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    assert main(["run", "--methods", "finetune,mas", "--out", str(out), *args]) == 2
    assert message in _error_line(capsys)
    assert not out.exists()


@pytest.mark.usefixtures("no_work")
def test_compare_needs_a_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", "--seeds", "0"]) == 2
    assert "--seeds must be at least 1" in _error_line(capsys)


def _unwritable(tmp_path: Path) -> list[Path]:
    """Output folders that cannot be created or written to (as any user, root included)."""
    a_file = tmp_path / "file"
    a_file.write_text("")
    folders = [Path("/proc/memaware-out"), a_file / "out"]
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        folders += [locked, locked / "out"]
    return folders


@pytest.mark.usefixtures("no_work")
def test_unwritable_out_exits_2_within_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for out in _unwritable(tmp_path):
        start = time.perf_counter()
        assert main(["run", "--out", str(out), "--no-progress"]) == 2
        assert time.perf_counter() - start < 5
        assert f"cannot write to the output folder {out}" in _error_line(capsys)


def test_unwritable_out_in_a_fresh_process(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "memaware.cli.main", "run", "--out", "/proc/memaware-out"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("memaware: error: cannot write to the output folder /proc/")


# --- options reach the methods; a late failure keeps what finished ---------------------------


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch, mnist: ImageDataset) -> None:
    """Every run trains on two small real Split-MNIST tasks."""
    scenario = small_split_mnist(mnist, "task", n_train=200, n_tasks=2)
    monkeypatch.setattr(experiment, "make_scenario", lambda *args, **kwargs: scenario)


RUN = ["run", "--epochs", "1", "--hidden", "16", "--no-progress"]


@pytest.mark.usefixtures("small")
def test_options_reach_the_methods(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--methods", "mas,ewc", "--granularity", "batch", "--option", "mas.heads=current"]
    args += ["--option", "ewc.labels=empirical", "--option", "ewc.max_samples=50"]
    args += ["--option", "mas.granularity=sample", "--lambda", "2"]  # a later --option wins
    assert main([*RUN, *args, "--option", "ewc.strength=5", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    mas, ewc = (results["methods"][m]["options"] for m in ("mas", "ewc"))
    assert mas["heads"] == "current" and mas["granularity"] == "sample" and mas["strength"] == 2
    assert ewc["labels"] == "empirical" and ewc["max_samples"] == 50 and ewc["strength"] == 5
    assert results["config"]["method_options"]["ewc"]["labels"] == "empirical"


@pytest.mark.usefixtures("small")
def test_a_late_failure_writes_the_finished_methods_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any) -> None:
        raise RuntimeError("out of memory\n(while consolidating)")

    monkeypatch.setattr(EWC, "after_task", boom)
    out = tmp_path / "run"
    assert main([*RUN, "--methods", "finetune,mas,ewc,l2", "--out", str(out)]) == 2
    err = _error_line(capsys)
    assert "ewc (seed 0) failed: RuntimeError: out of memory (while consolidating)" in err
    assert "2 finished method(s) (finetune, mas)" in err
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["finetune", "mas"]
    assert results["failed"] == {
        "method": "ewc",
        "seed": 0,
        "error": "RuntimeError: out of memory (while consolidating)",
    }
    assert "| mas |" in (out / "results.md").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.usefixtures("small")
@pytest.mark.parametrize("error", [RuntimeError, ConfigError])
def test_a_failure_in_the_first_method(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    error: type[Exception],
) -> None:
    def boom(*args: Any) -> None:
        raise error("no good")

    monkeypatch.setattr(Finetune, "before_task", boom)
    out = tmp_path / "run"
    assert main([*RUN, "--methods", "finetune,mas", "--out", str(out)]) == 2
    err = _error_line(capsys)
    if error is ConfigError:  # bad input found at the first step: nothing to keep
        assert err == "memaware: error: no good\n" and not out.exists()
    else:  # a crash: results.json says which method failed, and that none finished
        assert "finetune (seed 0) failed: RuntimeError: no good" in err
        results = json.loads((out / "results.json").read_text())
        assert results["methods"] == {} and results["failed"]["method"] == "finetune"


@pytest.mark.usefixtures("small")
def test_a_failure_while_writing_keeps_results_json_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import memaware.cli.main as cli

    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "write_report", full)
    out = tmp_path / "run"
    assert main([*RUN, "--methods", "finetune", "--out", str(out)]) == 2
    assert "cannot write the results" in _error_line(capsys)
    assert list(json.loads((out / "results.json").read_text())["methods"]) == ["finetune"]


def test_readme_lists_the_options_as_the_command_prints_them() -> None:
    from memaware.cli.main import options_table

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start = readme.index("The tables are `memaware options`' output:\n\n")
    section = readme[start:].split("\n\n", 1)[1].split("\n### ", 1)[0]
    assert section.strip() == options_table(list(METHODS)).strip(), (
        "README's method options are stale: paste the output of `memaware options`"
    )


def test_options_command_lists_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["options"]) == 0
    table = capsys.readouterr().out
    for name, cls in METHODS.items():
        assert f"**{name}**" in table
        for field in cls().options():
            assert f"| `{field}` |" in table
    assert main(["options", "gem"]) == 2
