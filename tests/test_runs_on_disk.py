"""Whole runs of the command line on data read from disk: CIFAR archives and image folders,
generated in their official formats and layouts (the irregular images included)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memaware.cli.main import main
from memaware.data import folders, transforms
from memaware.data.cifar import CIFAR10, CIFAR100
from test_cifar import _write_folder
from test_folders import write_split


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two image folders of every image mode and odd sizes: ``pets`` (no val/), ``cars`` (a val/)."""
    base = tmp_path_factory.mktemp("images")
    write_split(base / "pets" / "train", {"cat": 8, "dog": 8}, 0)
    write_split(base / "pets" / "test", {"cat": 3, "dog": 3}, 100)
    write_split(base / "cars" / "train", {"bus": 6, "van": 6, "suv": 6}, 200)
    write_split(base / "cars" / "val", {"bus": 2, "suv": 2}, 300)
    write_split(base / "cars" / "test", {"bus": 2, "van": 2, "suv": 2}, 400)
    return base


def _run(out: Path, *flags: str) -> dict[str, Any]:
    code = main(["run", *flags, "--epochs", "1", "--no-progress", "--out", str(out)])
    assert code == 0
    return json.loads((out / "results.json").read_text())  # type: ignore[no-any-return]


def _matrix(results: dict[str, Any], method: str) -> np.ndarray:
    return np.array(results["methods"][method]["accuracy_matrix"], dtype=float)


@pytest.mark.parametrize("setting", ["task", "class"])
def test_image_folders_run_end_to_end(image_root: Path, tmp_path: Path, setting: str) -> None:
    calls: list[bool] = []
    real = folders.training_transform

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(True)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(folders, "training_transform", counting)
        flags = ["--benchmark", "folders", "--data-root", str(image_root), "--tasks", "pets,cars"]
        flags += ["--scenario", setting, "--model", "cnn", "--methods", "finetune,mas,ewc"]
        results = _run(tmp_path / setting, *flags, "--augment", "--batch-size", "8")
    assert results["task_names"] == ["pets", "cars"]
    assert results["config"]["tasks"] == ["pets", "cars"] and results["config"]["augment"]
    for method in ("finetune", "mas", "ewc"):
        matrix = _matrix(results, method)
        assert matrix.shape == (2, 2) and np.isfinite(matrix[np.tril_indices(2)]).all()
    assert calls  # training saw augmented images


def test_image_folders_are_checked_before_any_training(image_root: Path, tmp_path: Path) -> None:
    base = ["run", "--benchmark", "folders", "--out", str(tmp_path / "x"), "--no-progress"]
    assert main([*base, "--tasks", "pets"]) == 2  # no --data-root
    assert main([*base, "--data-root", str(image_root), "--tasks", "pets,birds"]) == 2
    assert (
        main(
            [*base, "--data-root", str(image_root), "--tasks", "pets,cars", "--scenario", "domain"]
        )
        == 2
    )  # 2 and 3 classes cannot share one head
    assert not (tmp_path / "x" / "results.json").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--benchmark", "split-mnist", "--tasks", "a,b"], "--data-root and --tasks"),
        (["--benchmark", "split-mnist", "--augment"], "--augment transforms images"),
        (["--benchmark", "split-mnist", "--n-tasks", "3"], "fixed number of tasks"),
        (["--benchmark", "split-cifar10", "--n-tasks", "3"], "cannot cut its 10 classes"),
    ],
)
def test_options_that_a_benchmark_would_ignore_are_refused(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *flags, "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_split_cifar10_runs_end_to_end(tmp_path: Path) -> None:
    _write_folder(tmp_path / "data" / CIFAR10.folder, CIFAR10)
    flags = ["--benchmark", "split-cifar10", "--data-dir", str(tmp_path / "data")]
    results = _run(tmp_path / "out", *flags, "--model", "resnet18", "--methods", "finetune,mas")
    assert len(results["task_names"]) == 5
    assert _matrix(results, "mas").shape == (5, 5)


def test_split_cifar100_in_twenty_tasks_runs_end_to_end(tmp_path: Path) -> None:
    _write_folder(tmp_path / CIFAR100.folder, CIFAR100)
    flags = ["--benchmark", "split-cifar100", "--data-dir", str(tmp_path / CIFAR100.folder)]
    flags += ["--n-tasks", "20", "--scenario", "class", "--model", "cnn", "--methods", "mas"]
    results = _run(tmp_path / "out", *flags)
    assert len(results["task_names"]) == 20
    matrix = _matrix(results, "mas")
    assert matrix.shape == (20, 20) and np.isfinite(matrix[np.tril_indices(20)]).all()


def test_the_folders_preprocessing_is_the_models(image_root: Path) -> None:
    from memaware.models import preprocessing

    pre = preprocessing("efficientnet-lite0")
    data = folders.load_image_folder(image_root, "pets", pre)
    x, _ = data.test[0]
    assert tuple(x.shape) == (3, pre.crop, pre.crop)
    assert isinstance(pre, transforms.Preprocessing)
