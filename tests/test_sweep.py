"""memaware sweep: tuning on a validation split, presets with provenance, grids merged by protocol."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import memaware.training.sweep as sweep
from helpers import Interrupted, interrupt_checkpoints, small_split_mnist
from memaware.cli.main import main
from memaware.data.images import ImageDataset
from memaware.training import TrainConfig
from memaware.training.sweep import merge_sweeps, sweep_strength


def _entry(scores: dict[str, list[float]], date: str, seeds: list[int] | None = None) -> dict:
    best = max(scores, key=lambda v: sum(scores[v]) / len(scores[v]))
    return {
        "strength": float(best),
        "provenance": {
            "criterion": "mean validation average accuracy over seeds",
            "validation": "stratified 0.1 of each task's training data (seed 0)",
            "seeds": seeds or [0, 1],
            "train": {"epochs": 4},
            "hidden": [400, 400],
            "validation_average_accuracy": scores,
            "date": date,
        },
    }


def test_merge_extends_a_grid_of_the_same_protocol() -> None:
    old = _entry({"1": [0.5, 0.6], "10": [0.7, 0.7]}, "2026-11-27")
    new = _entry({"100": [0.8, 0.9], "10": [0.6, 0.6]}, "2026-11-28")
    merged = merge_sweeps(old, new)
    scores = merged["provenance"]["validation_average_accuracy"]
    assert list(scores) == ["1", "10", "100"]  # numeric order
    assert scores["10"] == [0.6, 0.6]  # the newer run of a value wins
    assert merged["strength"] == 100.0
    assert merged["provenance"]["extends"] == ["2026-11-27"]
    assert merged["provenance"]["date"] == "2026-11-28"
    # an earlier, better value stays the choice after an extension that finds nothing better
    worse = _entry({"1000": [0.1, 0.1]}, "2026-11-29")
    again = merge_sweeps(merged, worse)
    assert again["strength"] == 100.0 and again["provenance"]["extends"] == [
        "2026-11-27",
        "2026-11-28",
    ]


def test_a_preset_from_before_a_training_field_existed_merges_under_its_default() -> None:
    old = _entry({"1": [0.5, 0.5]}, "2026-11-27")  # records only "epochs"
    new = _entry({"10": [0.6, 0.6]}, "2026-12-02")
    new["provenance"]["train"] = dataclasses.asdict(TrainConfig(epochs=4))
    assert list(merge_sweeps(old, new)["provenance"]["validation_average_accuracy"]) == ["1", "10"]
    other = _entry({"10": [0.6, 0.6]}, "2026-12-02")
    other["provenance"]["train"] = dataclasses.asdict(TrainConfig(epochs=4, lr_schedule="cosine"))
    assert merge_sweeps(old, other) == other


def test_merge_refuses_a_different_protocol() -> None:
    old = _entry({"1": [0.99, 0.99]}, "2026-11-27", seeds=[0, 1, 2])
    new = _entry({"10": [0.5, 0.5]}, "2026-11-28")
    assert merge_sweeps(old, new) == new
    assert merge_sweeps(None, new) == new
    # other method options are another protocol too
    plain = _entry({"1": [0.5, 0.5]}, "2026-11-27")
    other = _entry({"10": [0.6, 0.6]}, "2026-11-28")
    other["provenance"]["options"] = {"labels": "empirical"}
    assert merge_sweeps(plain, other) == other


def test_sweep_command_writes_and_extends_a_preset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["sweep", "--benchmark", "split-mnist", "--scenario", "task", "--method", "l2"]
    common += ["--seeds", "1", "--epochs", "1", "--preset-dir", str(tmp_path), "--no-progress"]
    assert main([*common, "--values", "0,0.001", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--values", "0.01", "--out", str(tmp_path / "b")]) == 0
    entry = json.loads((tmp_path / "split-mnist.json").read_text())["task"]["l2"]
    scores = entry["provenance"]["validation_average_accuracy"]
    assert set(scores) == {"0", "0.001", "0.01"}
    assert all(len(v) == 1 and 0.5 < v[0] <= 1.0 for v in scores.values())
    assert entry["strength"] == max((float(v) for v in scores), key=lambda v: scores[f"{v:g}"][0])
    capsys.readouterr()
    assert main(["presets", "--preset-dir", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "| split-mnist | task | l2 |" in table and "0.001:" in table
    assert main(["presets", "--benchmark", "cifar"]) == 2


def test_shipped_presets_are_consistent_with_their_provenance() -> None:
    """Every preset in the package names a known benchmark, scenario and method, and its strength
    is the best mean validation score its own recorded sweep found (no hand-edited values)."""
    from memaware.configs import PRESET_DIR, load_presets
    from memaware.data.benchmarks import BENCHMARKS
    from memaware.methods import methods_for

    files = sorted(PRESET_DIR.glob("*.json"))
    assert files, "no presets shipped"
    for path in files:
        benchmark = path.stem
        assert benchmark in BENCHMARKS, path
        for scenario, methods in load_presets(benchmark).items():
            for method, entry in methods.items():
                assert method in methods_for(scenario), (benchmark, scenario, method)
                provenance = entry["provenance"]
                assert provenance["tuned_by"] == "memaware sweep"
                assert "validation" in provenance and provenance["seeds"]
                scores = provenance["validation_average_accuracy"]
                assert all(len(v) == len(provenance["seeds"]) for v in scores.values())
                means = {float(v): sum(s) / len(s) for v, s in scores.items()}
                assert entry["strength"] == max(means, key=lambda v: means[v]), (
                    benchmark,
                    scenario,
                    method,
                )


@pytest.fixture
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr(sweep, "make_scenario", forbidden)
    monkeypatch.setattr(sweep, "run_method", forbidden)


@pytest.mark.usefixtures("no_work")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--values", "nan"], "non-empty list of finite numbers >= 0, got [nan]"),
        (["--values", "1,inf"], "finite numbers >= 0"),
        (["--values", "1,-1"], "finite numbers >= 0"),
        (["--method", "finetune"], "finetune has no strength to sweep"),
        (["--method", "gem"], "unknown method 'gem'"),
        (["--scenario", "online"], "unknown scenario"),
        (["--benchmark", "cifar"], "unknown benchmark"),
        (["--seeds", "0"], "at least one seed"),
        (["--validation", "1.5"], "validation fraction must be in (0, 1)"),
        (["--option", "mas.strength=1"], "mas.strength is what the sweep tunes"),
        (["--option", "ewc.labels=empirical"], "the sweep trains mas alone"),
        (["--option", "mas.heads=all"], "expected one of learned, current"),
        (["--preset-dir", "/proc/memaware-presets"], "cannot write to the output folder"),
    ],
)
def test_bad_sweep_input_exits_2_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    base = ["sweep", "--method", "mas", "--seeds", "1", "--preset-dir", str(tmp_path)]
    assert main([*base, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memaware: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "split-mnist.json").exists()


def test_sweep_options_and_seeds_reach_the_method(
    monkeypatch: pytest.MonkeyPatch, mnist: ImageDataset
) -> None:
    scenario = small_split_mnist(mnist, "task", n_train=200, n_tasks=2)
    monkeypatch.setattr(sweep, "make_scenario", lambda *args, **kwargs: scenario)
    seen: list[tuple[float, str, int]] = []
    real = sweep.run_method

    def spy(method: Any, stream: Any, make_model: Any, config: TrainConfig, **kwargs: Any) -> Any:
        seen.append((method.opts.strength, method.opts.labels, method.seed))
        assert method.seed == config.seed
        return real(method, stream, make_model, config, **kwargs)

    monkeypatch.setattr(sweep, "run_method", spy)
    entry = sweep_strength(
        "split-mnist",
        "task",
        "ewc",
        [0.0, 1.0],
        [0, 1],
        train=TrainConfig(epochs=1),
        hidden=(16,),
        options={"labels": "empirical"},
    )
    assert seen == [
        (0.0, "empirical", 0),
        (0.0, "empirical", 1),
        (1.0, "empirical", 0),
        (1.0, "empirical", 1),
    ]
    assert entry["provenance"]["options"] == {"labels": "empirical"}


def _preset_entry(directory: Path) -> dict[str, Any]:
    """The sweep's preset entry in ``directory``, without its date."""
    entry = json.loads((directory / "split-mnist.json").read_text())["task"]["mas"]
    del entry["provenance"]["date"]
    return entry  # type: ignore[no-any-return]


SWEEP = ["sweep", "--method", "mas", "--values", "0.1,10", "--seeds", "2", "--epochs", "2"]
SWEEP += ["--no-progress", "--checkpoint-every", "3"]


def test_an_interrupted_sweep_resumes_to_the_same_preset(
    monkeypatch: pytest.MonkeyPatch,
    mnist: ImageDataset,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scenario = small_split_mnist(mnist, "task", n_train=200, n_tasks=2)
    monkeypatch.setattr(sweep, "make_scenario", lambda *args, **kwargs: scenario)
    state = interrupt_checkpoints(monkeypatch)
    reference = ["--preset-dir", str(tmp_path / "reference"), "--out", str(tmp_path / "first")]
    assert main([*SWEEP, *reference]) == 0
    assert state[1] == 8  # 2 steps an epoch, 8 a run: steps 3 and 6 of each of the 4 runs
    out, presets = tmp_path / "killed", tmp_path / "resumed"
    state[:] = [5, 0]  # the third run (λ 10, seed 0), at its step 3
    with pytest.raises(Interrupted):
        main([*SWEEP, "--preset-dir", str(presets), "--out", str(out)])
    assert not (presets / "split-mnist.json").exists()
    assert (out / "checkpoints" / "lambda-0.1" / "mas-seed1").is_dir()
    assert (out / "command.json").is_file()
    state[:] = [0, 0]
    assert main(["sweep", "--resume", str(out), "--no-progress"]) == 0
    assert state[1] == 3  # the finished runs are not trained again, the third goes on
    assert _preset_entry(presets) == _preset_entry(tmp_path / "reference")
    assert f"preset written to {presets}" in capsys.readouterr().out


def test_sweep_resume_checks_its_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    (out / "checkpoints" / "lambda-0.1" / "mas-seed0" / "step-000000003").mkdir(parents=True)
    (out / "command.json").write_text(json.dumps({"argv": [*SWEEP, "--out", str(out)]}))
    assert main(["sweep", "--resume", str(out), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "options differ from the run's: --epochs = 3 (the run's: 2)" in err and "Omit" in err
    assert main([*SWEEP, "--out", str(out), "--preset-dir", str(tmp_path)]) == 2
    assert "holds checkpoints of an earlier run" in capsys.readouterr().err
    other = ["--values", "3", "--out", str(out), "--preset-dir", str(tmp_path)]
    assert main([*SWEEP, *other]) == 2  # its values have no checkpoints: command.json is kept
    assert "holds an earlier run (command.json): resume it" in capsys.readouterr().err
    assert json.loads((out / "command.json").read_text())["argv"][: len(SWEEP)] == SWEEP
    assert main(["sweep", "--resume", str(out), "--out", str(tmp_path / "else")]) == 2
    assert "a resumed run writes into OUT" in capsys.readouterr().err
    assert main(["sweep", "--resume", str(tmp_path / "nothing")]) == 2
    assert "command.json is missing" in capsys.readouterr().err
    assert main(["paper", "mnist-demo", "--resume", str(out)]) == 2
    assert "is a run of `memaware sweep`, not `memaware paper mnist-demo`" in (
        capsys.readouterr().err
    )
    assert main(["sweep", "--checkpoint-every", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "--checkpoint-every must be an integer >= 0" in capsys.readouterr().err
    assert not (tmp_path / "split-mnist.json").exists()
