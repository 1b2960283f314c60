"""The ``memaware`` command: a real (short) run writes a report; bad input exits 2 with one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memaware.cli.main import main


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
        (["--lambda", "-1"], "--lambda must be >= 0"),
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
