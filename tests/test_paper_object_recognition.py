"""``memaware paper table2|table3|figure3``: the paper's object-recognition protocol and its stand-in.

End to end on a generated folder tree (tiny images, ``--model cnn``, one epoch), the protocol's
defaults, bad input refused before any work, and the offline stand-in's construction.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import memaware.cli.main as cli
from helpers import interrupt_checkpoints, kill_after_first_checkpoint, torchrun
from memaware.cli.main import main
from memaware.configs.standin import (
    DATASETS,
    StandinTraining,
    load_standin_preset,
    parse_standin_preset,
)
from memaware.data.benchmarks import STANDIN, make_scenario
from memaware.data.datasets import for_evaluation
from memaware.data.digits import DIGITS_SIZE, load_digits
from memaware.data.scenarios import Task
from memaware.data.standin import LOADERS, rgb_images, standin_scenario, subsample
from memaware.errors import ConfigError, DataError
from memaware.importance import local_mas
from memaware.methods import LocalMAS
from memaware.methods.lmas import _HeadView
from memaware.models import build_model, preprocessing
from memaware.paper import object_recognition as paper
from memaware.paper.protocol import (
    PAPER_TRAIN,
    TABLE2_METHODS,
    default_model,
    paper_protocol,
    standin_protocol,
)
from memaware.paper.reference import FIGURE3, TABLE2, TABLE3
from memaware.paper.tables import PairRun, pair_cell, table2

QUICK = ["--model", "cnn", "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-progress"]


def _write(folder: Path, classes: list[str], count: int, seed: int) -> None:
    """``count`` small RGB images per class, each class brightest in its own channel."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        for i in range(count):
            pixels = rng.integers(0, 160, (18, 22, 3), dtype=np.uint8)
            pixels[..., c % 3] = 255
            path = folder / name / f"{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """birds (3 classes, val carved), scenes (2 classes, its own val/), flowers (2 classes)."""
    base = tmp_path_factory.mktemp("paper-folders")
    _write(base / "birds" / "train", ["a", "b", "c"], 6, 0)
    _write(base / "birds" / "test", ["a", "b", "c"], 2, 1)
    _write(base / "scenes" / "train", ["x", "y"], 6, 2)
    _write(base / "scenes" / "val", ["x", "y"], 2, 3)
    _write(base / "scenes" / "test", ["x", "y"], 2, 4)
    _write(base / "flowers" / "train", ["p", "q"], 5, 5)
    _write(base / "flowers" / "test", ["p", "q"], 2, 6)
    return base


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _results(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# end to end on image folders


def test_table2_end_to_end(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t2"
    argv = ["paper", "table2", "--data-root", str(root), "--tasks", "birds,scenes", *QUICK]
    assert main([*argv, "--out", str(out)]) == 0
    results = _results(out / "birds-scenes" / "results.json")
    assert list(results["methods"]) == list(TABLE2_METHODS)
    assert results["task_names"] == ["birds", "scenes"]
    assert results["config"]["model"] == "cnn" and results["config"]["augment"] is True
    train = results["config"]["train"]
    assert (train["optimizer"], train["momentum"], train["lr_decay_epochs"]) == ("sgd", 0.9, 54)
    assert train["select_best_epoch"] and (train["lr"], train["first_task_lr"]) == (8e-4, 4e-4)
    options = {m: e["options"] for m, e in results["methods"].items()}
    assert options["mas"]["strength"] == 1.0 and options["mas"]["heads"] == "current"
    assert options["mode-imm"]["strength"] == 1e-4
    assert results["throughput"]["train_images_per_s"] > 0
    assert results["throughput"]["importance_images_per_s"] > 0
    for name in ("results.md", "accuracy.png", "comparison.png", "curves.png"):
        assert (out / "birds-scenes" / name).is_file()
    markdown = (out / "table2.md").read_text()
    assert markdown in capsys.readouterr().out
    assert "birds → scenes" in markdown and "Birds → Scenes" in markdown
    assert "images/s" in markdown
    first, second = pair_cell(results, "mas").first, pair_cell(results, "mas").second
    mas_row = next(line for line in markdown.splitlines() if line.startswith("| mas |"))
    assert f"{first:.2f} (" in mas_row and f"\\| {second:.2f}" in mas_row
    assert all(f"| {m} |" in markdown for m in TABLE2_METHODS)
    width, height = _png_size(out / "table2.png")
    assert width > 400 and height > 300


def _matrices(out: Path) -> dict[str, Any]:
    """Per method, its accuracy matrix and trained accuracies in ``out/results.json``."""
    methods = _results(out / "results.json")["methods"]
    return {m: (e["accuracy_matrix"], e["trained_accuracy"]) for m, e in methods.items()}


def test_table2_interrupted_then_resumed_gives_the_same_results(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = interrupt_checkpoints(monkeypatch)
    argv = ["paper", "table2", "--data-root", str(root), "--tasks", "birds,scenes"]
    argv += ["--tasks", "scenes,flowers", "--methods", "finetune,mas", *QUICK]
    argv += ["--checkpoint-every", "1"]
    reference, out = tmp_path / "reference", tmp_path / "killed"
    assert main([*argv, "--out", str(reference)]) == 0
    total = state[1]
    state[:] = [total * 7 // 8, 0]  # within the second pair's mas, after its finetune
    assert main([*argv, "--out", str(out)]) == 2  # finetune's results kept, mas failed
    assert "mas (seed 0) failed: Interrupted" in capsys.readouterr().err
    assert (out / "birds-scenes" / "results.json").is_file() and not (out / "table2.md").exists()
    assert any((out / "scenes-flowers" / "checkpoints" / "mas-seed0").glob("step-*"))
    state[:] = [0, 0]
    assert main(["paper", "table2", "--resume", str(out), "--no-progress"]) == 0
    assert state[1] == total - total * 7 // 8  # the finished runs are not trained again
    for pair in ("birds-scenes", "scenes-flowers"):
        assert _matrices(out / pair) == _matrices(reference / pair)
    assert (out / "table2.md").read_text() in capsys.readouterr().out
    assert main(["paper", "table2", "--resume", str(out), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "options differ from the run's: --epochs = 2 (the run's: 1)" in err
    assert main(["paper", "table3", "--resume", str(out)]) == 2
    assert "is a run of `memaware paper table2`" in capsys.readouterr().err
    assert main([*argv, "--out", str(out)]) == 2
    assert "holds checkpoints of an earlier run" in capsys.readouterr().err


def test_table2_killed_at_a_random_moment_then_resumed_is_bit_identical(
    root: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "memaware.cli.main", "paper", "table2"]
    argv = [*command, "--data-root", str(root), "--tasks", "birds,scenes", "--tasks"]
    argv += ["scenes,flowers", "--methods", "mas", *QUICK, "--epochs", "3"]
    argv += ["--checkpoint-every", "1"]
    reference, out = tmp_path / "reference", tmp_path / "killed"
    subprocess.run([*argv, "--out", str(reference)], env=env, check=True, capture_output=True)
    proc = subprocess.Popen(
        [*argv, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    alive = kill_after_first_checkpoint(
        proc, out / "birds-scenes" / "checkpoints" / "mas-seed0", 1.0
    )
    assert alive, "the command ended before it could be killed: give it more work"
    assert not (out / "table2.md").exists()
    resumed = subprocess.run(
        [*command, "--resume", str(out), "--no-progress"], env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    for pair in ("birds-scenes", "scenes-flowers"):
        assert _matrices(out / pair) == _matrices(reference / pair)


def test_table3_end_to_end(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "t3"
    argv = ["paper", "table3", "--data-root", str(root), "--tasks", "flowers,birds", *QUICK]
    assert main([*argv, "--out", str(out)]) == 0
    for omega in ("train", "test", "train+test"):
        results = _results(out / "flowers-birds" / f"omega-{omega}" / "results.json")
        assert list(results["methods"]) == ["mas", "l-mas"]
        for method in ("mas", "l-mas"):
            assert results["methods"][method]["options"]["importance_data"] == omega
            assert results["methods"][method]["options"]["strength"] == 1.0
    markdown = (out / "table3.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith(("| mas |", "| l-mas |"))]
    assert len(rows) == 6 + 6  # ours (2 methods × 3 Ω data), then the paper's
    assert "flowers → birds" in markdown
    assert _png_size(out / "table3.png")[0] > 400


def test_figure3_end_to_end(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "f3"
    argv = ["paper", "figure3", "--data-root", str(root), "--tasks", "birds,scenes,flowers"]
    argv += ["--methods", "finetune,mas,mode-imm", "--seeds", "2", *QUICK, "--no-augment"]
    assert main([*argv, "--out", str(out)]) == 0
    results = _results(out / "results.json")
    assert results["task_names"] == ["birds", "scenes", "flowers"] and results["seeds"] == [0, 1]
    assert results["config"]["augment"] is False
    assert list(results["methods"]) == ["finetune", "mas", "mode-imm"]
    markdown = (out / "figure3.md").read_text()
    mas = results["methods"]["mas"]
    assert f"| mas | {100 * mas['average_accuracy']:.2f} |" in markdown
    assert f"{FIGURE3['mas'][0]:.2f}" in markdown and f"{FIGURE3['imm'][0]:.2f}" in markdown
    assert (out / "results.md").is_file() and (out / "comparison.png").is_file()
    width, height = _png_size(out / "figure3.png")
    assert width > 800 and height > 800


def test_figure3_under_torchrun_is_the_one_process_run(root: Path, tmp_path: Path) -> None:
    """Two gloo processes: the same folders and files, rank 0 alone reports, the same matrices
    (the cnn has no BatchNorm, so DDP's split batches change only float rounding)."""
    argv = ["paper", "figure3", "--data-root", str(root), "--tasks", "birds,scenes,flowers"]
    argv += ["--methods", "finetune,mas,lwf", *QUICK]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    done = torchrun([*argv, "--out", str(tmp_path / "two")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("figure3 written to") == 1 and done.stdout.count("images/s") >= 1
    one, two = tmp_path / "one", tmp_path / "two"
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    for method in ("finetune", "mas", "lwf"):
        a, b = (
            np.array(_results(d / "results.json")["methods"][method]["accuracy_matrix"], float)
            for d in (one, two)
        )
        assert np.nanmax(np.abs(a - b)) <= 0.005, (method, a, b)


# ---------------------------------------------------------------------------------------------
# bad input: exit 2, before any data are read or anything trained or written


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("work started despite bad input")

    monkeypatch.setattr(cli, "measure_throughput", refuse)
    monkeypatch.setattr(cli, "_run_and_write", refuse)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["table2"], "needs --tasks A,B"),
        (["table2", "--tasks", "birds,scenes,flowers"], "pairs of tasks: --tasks A,B, got 3"),
        (["table3", "--tasks", "birds"], "pairs of tasks"),
        (["table2", "--tasks", "birds,birds"], "learned once"),
        (["figure3"], "needs --tasks t1,t2,...,tn"),
        (["figure3", "--tasks", "birds"], "two or more tasks"),
        (["figure3", "--tasks", "birds,scenes", "--methods", "mas,nope"], "unknown method"),
        (["figure3", "--tasks", "a,b", "--tasks", "c,d"], "one sequence"),
        (["table2", "--tasks", "birds,scenes", "--option", "lwf.strength=-1"], "strength"),
        (["table3", "--tasks", "birds,scenes", "--option", "ewc.strength=1"], "does not train"),
        (["table2", "--tasks", "birds,scenes", "--model", "alexnet"], "--weights PATH"),
        (["table2", "--tasks", "birds,scenes", "--epochs", "0"], "epochs"),
        (["table2", "--tasks", "birds,scenes", "--seeds", "0"], "--seeds"),
    ],
)
def test_bad_input_exits_2_before_any_work(
    argv: list[str],
    message: str,
    root: Path,
    tmp_path: Path,
    no_work: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "never"
    code = main(["paper", *argv[:1], "--data-root", str(root), *argv[1:], "--out", str(out)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_stand_in_refuses_unknown_tasks_and_augmentation(
    tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["paper", "table2", "--tasks", "mnist0-4,nope", "--out", str(tmp_path / "a")]) == 2
    assert "unknown stand-in task(s) nope" in capsys.readouterr().err
    assert main(["paper", "figure3", "--augment", "--out", str(tmp_path / "b")]) == 2
    assert "--augment" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the protocol


def test_the_papers_protocol_on_folders() -> None:
    assert default_model("alexnet.pth") == "alexnet"
    assert default_model(None) == "efficientnet-lite0-frozen-bn"
    protocol = paper_protocol("/data", None, None)
    assert protocol.benchmark == "folders" and protocol.model == "efficientnet-lite0-frozen-bn"
    assert protocol.augment and protocol.train == PAPER_TRAIN
    assert (PAPER_TRAIN.epochs, PAPER_TRAIN.batch_size, PAPER_TRAIN.lr_decay_epochs) == (
        100,
        200,
        54,
    )
    assert (PAPER_TRAIN.optimizer, PAPER_TRAIN.momentum, PAPER_TRAIN.reset_optimizer) == (
        "sgd",
        0.9,
        True,
    )
    options = protocol.method_options(
        ["finetune", "mas", "l-mas", "ewc", "lwf", "mean-imm"], "test"
    )
    assert options["finetune"] == {}
    assert options["mas"] == {
        "strength": 1.0,
        "importance_batch_size": 32,
        "heads": "current",
        "importance_data": "test",
    }
    assert options["l-mas"]["importance_data"] == "test" and options["l-mas"]["strength"] == 1.0
    assert "importance_data" not in options["ewc"] and options["lwf"] == {"strength": 0.25}
    with pytest.raises(ConfigError, match="ImageNet-pretrained"):
        paper_protocol("/data", "alexnet", None)


def test_overrides_reach_the_training_config() -> None:
    protocol = standin_protocol(load_standin_preset(), None, None)
    changed = paper.with_overrides(
        protocol, {"mas": {"strength": 0.5}}, epochs=2, lr=0.1, first_task_lr=None, device="cpu"
    )
    assert (changed.train.epochs, changed.train.first_task_epochs) == (2, 2)
    assert (changed.train.lr, changed.train.first_task_lr) == (0.1, 0.1)
    assert changed.method_options(["mas"])["mas"]["strength"] == 0.5


def test_tables_put_the_papers_numbers_beside_ours() -> None:
    results = {
        "task_names": ["a", "b"],
        "methods": {
            "finetune": {"accuracy_matrix": [[0.9, None], [0.7, 0.8]], "drop": [-0.2, 0.0]},
            "mas": {"accuracy_matrix": [[0.9, None], [0.875, 0.75]], "drop": [-0.025, 0.0]},
        },
    }
    cell = pair_cell(results, "mas")
    assert cell == pytest.approx((87.5, -2.5, 75.0))
    text = table2([PairRun("a", "b", results)], ["finetune", "mas"])
    assert "| mas | **87.50 (−2.50) \\| 75.00** |" in text
    assert "| finetune | 70.00 (−20.00) \\| 80.00 |" in text
    assert "| mas | 53.24 (−0.4) \\| 55.00 |" in text  # the paper's Birds → Scenes
    assert set(TABLE2) == {"finetune", "lwf", "ebll", "imm", "ewc", "si", "mas"}
    assert TABLE3[("mas", "train")] == TABLE2["mas"] and len(TABLE3) == 6


def test_check_tasks_defaults_to_the_stand_ins() -> None:
    preset = load_standin_preset()
    assert paper.check_tasks("table2", [], preset) == [tuple(p) for p in preset.pairs]
    assert paper.check_tasks("table3", [], preset) == [tuple(p) for p in preset.table3_pairs]
    assert paper.check_tasks("figure3", [], preset) == [preset.sequence]
    assert paper.methods_of("table3", None) == ("mas", "l-mas")
    assert paper.methods_of("figure3", ["mas", "si", "mas"]) == ("mas", "si")


def test_frozen_batchnorm_keeps_imagenets_statistics_while_training() -> None:
    torch.manual_seed(0)
    model = build_model("efficientnet-lite0-frozen-bn", (3, 32, 32), (), None)
    plain = build_model("efficientnet-lite0", (3, 32, 32), (), None)
    model.add_head(0, 3)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    torch.testing.assert_close(
        before, {k: v for k, v in plain.state_dict().items() if "running" in k}
    )
    model.train()
    assert model.training and model.backbone.dropout.training  # dropout still trains
    assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3, 32, 32)
    torch.nn.functional.cross_entropy(model(x, 0), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    torch.testing.assert_close(after, before)  # the statistics never move
    assert model.backbone.stem.bn.weight.grad is not None  # scale and shift still train
    model.backbone.dropout.eval()
    with torch.no_grad():
        train_mode = model(x, 0)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, 0), train_mode)  # one function in both modes


# ---------------------------------------------------------------------------------------------
# l-MAS on test data (Table 3)


def test_local_mas_computes_omega_on_the_chosen_data() -> None:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 4, 4), (8,), None)
    model.add_head(0, 2)
    x_train, x_test = torch.rand(12, 1, 4, 4), torch.rand(6, 1, 4, 4)
    labels = torch.zeros(12, dtype=torch.int64), torch.ones(6, dtype=torch.int64)
    task = Task.from_tensors(0, "t", 0, 2, x_train, labels[0], x_test, labels[1])
    test = LocalMAS(importance_data="test").importance(model, task, [task])
    expected = local_mas(_HeadView(model, 0), [x_test])
    for name, value in test.items():
        torch.testing.assert_close(value, expected["model." + name])
    both = LocalMAS(importance_data="train+test").importance(model, task, [task])
    train = LocalMAS().importance(model, task, [task])
    for name in both:  # the mean over the union: (12 · Ω_train + 6 · Ω_test) / 18
        torch.testing.assert_close(both[name], (12 * train[name] + 6 * test[name]) / 18)


# ---------------------------------------------------------------------------------------------
# the offline stand-in


def _tiny_preset(**changes: Any) -> Any:
    data: dict[str, Any] = {
        "resolution": 12,
        "tasks": {
            "m": {"dataset": "mnist", "classes": [3, 1], "train_per_class": 5, "test_per_class": 2},
            "d": {
                "dataset": "digits",
                "classes": [0, 1, 2],
                "train_per_class": 4,
                "test_per_class": 3,
            },
        },
        "sequence": ["m", "d"],
        "pairs": [["m", "d"]],
        "table3_pairs": [["d", "m"]],
        "training": {
            "epochs": 1,
            "first_task_epochs": 1,
            "batch_size": 4,
            "lr": 0.01,
            "first_task_lr": 0.01,
            "lr_decay_epochs": 1,
            "validation_fraction": 0.2,
        },
        "importance_batch_size": 8,
        "strengths": {"mas": 1},
        "options": {"lwf": {"warmup_epochs": 0}},
        "notes": {"why": "a test"},
    }
    data.update(changes)
    return data


def test_stand_in_tasks_are_subsampled_rgb_images() -> None:
    preset = parse_standin_preset(_tiny_preset())
    pre = preprocessing("efficientnet-lite0")
    scenario = standin_scenario(preset, ["m", "d"], "task", pre, seed=0)
    assert scenario.task_names == ["m", "d"] and scenario.setting == "task"
    m, d = scenario.tasks
    assert (m.head, m.n_classes, d.head, d.n_classes) == (0, 2, 1, 3)
    assert m.train_x.shape == (10, 3, 12, 12) and m.test_x.shape == (4, 3, 12, 12)
    assert d.train_x.shape == (12, 3, 12, 12) and d.test_x.shape == (9, 3, 12, 12)
    assert m.train_x.dtype == torch.float32
    assert (
        torch.bincount(m.train_y).tolist() == [5, 5]
        and torch.bincount(d.test_y).tolist() == [3] * 3
    )
    # grey copied to three channels, (x − 127/255) / (128/255): black is −127/128
    assert torch.equal(m.train_x[:, 0], m.train_x[:, 2])
    assert float(m.train_x.min()) == pytest.approx(-127 / 128)
    assert float(m.train_x.max()) <= 128 / 128 + 1e-6


def test_stand_in_images_are_the_datasets_own_resized() -> None:
    images = torch.tensor([[[0, 255], [255, 0]]], dtype=torch.uint8)
    pre = preprocessing("cnn")  # mean 0.5, std 0.5
    same = rgb_images(images, 2, pre)
    torch.testing.assert_close(same[0, 1], torch.tensor([[-1.0, 1.0], [1.0, -1.0]]))
    assert rgb_images(images, 6, pre).shape == (1, 3, 6, 6)
    labels = torch.tensor([0, 1, 2, 1, 2, 2, 0, 1])
    index, new = subsample(labels, [2, 0], 2, torch.Generator().manual_seed(0))
    assert sorted(labels[index].tolist()) == [0, 0, 2, 2]
    assert torch.equal(new, torch.where(labels[index] == 2, 0, 1))
    with pytest.raises(DataError, match="fewer than the 3"):
        subsample(labels, [0], 3, torch.Generator())


def test_stand_in_subsampling_is_deterministic() -> None:
    preset = parse_standin_preset(_tiny_preset())
    pre = preprocessing("cnn")
    a = standin_scenario(preset, ["m", "d"], "task", pre, seed=0)
    b = standin_scenario(preset, ["d", "m"], "task", pre, seed=0)
    c = standin_scenario(preset, ["m"], "task", pre, seed=1)
    assert torch.equal(a.tasks[0].train_x, b.tasks[1].train_x)  # a task draws its own images
    assert torch.equal(a.tasks[1].test_y, b.tasks[0].test_y)
    assert not torch.equal(a.tasks[0].train_x, c.tasks[0].train_x)


def test_the_shipped_preset_and_benchmark() -> None:
    preset = load_standin_preset()
    assert len(preset.sequence) == 8 and set(preset.sequence) <= set(preset.tasks)
    assert {t.dataset for t in preset.tasks.values()} == set(DATASETS) == set(LOADERS)
    assert isinstance(preset.training, StandinTraining)
    assert {"mas", "l-mas", "ewc", "si", "lwf", "ebll", "mean-imm", "mode-imm"} <= set(
        preset.strengths
    )
    protocol = standin_protocol(preset, None, None)  # the preset's options reach the methods
    assert protocol.method_options(["lwf"])["lwf"]["warmup_epochs"] == 0
    assert preset.options["lwf"] == {"warmup_epochs": 0}
    changed = dataclasses.replace(protocol, overrides={"lwf": {"warmup_epochs": 3}})
    assert changed.method_options(["lwf"])["lwf"]["warmup_epochs"] == 3  # --option wins
    first = preset.sequence[0]
    scenario = make_scenario(
        STANDIN, tasks=(first,), preprocessing=preprocessing("efficientnet-lite0")
    )
    task = scenario.tasks[0]
    size = preset.resolution
    spec = preset.tasks[first]
    assert task.train_x.shape == (spec.train_per_class * len(spec.classes), 3, size, size)
    assert len(for_evaluation(task.test)) == spec.test_per_class * len(spec.classes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"resolution": 0}, "resolution"),
        ({"sequence": ["m", "zzz"]}, "unknown tasks"),
        ({"pairs": [["m"]]}, "2 task names"),
        ({"extra": 1}, "unknown extra"),
        ({"strengths": {"mas": -1}}, "strengths.mas"),
        ({"options": {"lwf": {"warmup": 0}}}, "options.lwf.*warmup"),
        ({"options": {"lwf": {"warmup_epochs": -1}}}, "options.lwf.*warmup_epochs"),
        ({"options": {"lwf": {"strength": 1}}}, "belongs in strengths"),
        ({"options": {"nope": {}}}, "options.nope.*unknown method"),
        (
            {
                "tasks": {
                    "m": {
                        "dataset": "cifar",
                        "classes": [0, 1],
                        "train_per_class": 1,
                        "test_per_class": 1,
                    }
                }
            },
            "dataset",
        ),
        (
            {
                "tasks": {
                    "m": {
                        "dataset": "mnist",
                        "classes": [0],
                        "train_per_class": 1,
                        "test_per_class": 1,
                    }
                }
            },
            "classes",
        ),
    ],
)
def test_a_bad_preset_is_refused_naming_the_field(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_standin_preset(_tiny_preset(**changes))


def test_digits_from_scikit_learns_file() -> None:
    digits = load_digits(seed=0)
    assert len(digits.train_x) + len(digits.test_x) == DIGITS_SIZE
    assert digits.train_x.shape[1:] == (8, 8) and digits.train_x.dtype == torch.uint8
    assert int(digits.train_x.max()) == 255 and int(digits.train_x.min()) == 0
    assert torch.bincount(digits.test_y).min() >= 25
    again = load_digits(seed=0)
    assert torch.equal(again.test_y, digits.test_y)
    assert not torch.equal(load_digits(seed=1).test_y, digits.test_y)
    with pytest.raises(ConfigError):
        load_digits(test_fraction=1.0)
