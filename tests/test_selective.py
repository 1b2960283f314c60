"""``memaware paper selective`` (the selective-forgetting experiment) and ``memaware bench deploy``
run end to end on small settings and write what the README shows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from memaware.bench.deploy import request_stream, tracked_rounds
from memaware.cli.main import main
from memaware.errors import ConfigError
from memaware.importance import Importance
from memaware.paper.selective import LAYOUTS, VARIANTS, SelectiveConfig


def test_the_experiment_runs_and_writes_its_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "selective"
    argv = ["paper", "selective", "--seeds", "1", "--n-train", "200", "--traffic", "300"]
    assert main([*argv, "--epochs", "1", "--fraction", "0.5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "**classes**" in printed and "**tasks**" in printed
    results = json.loads((out / "results.json").read_text())
    assert list(results["layouts"]) == list(LAYOUTS)
    for layout, entry in results["layouts"].items():
        assert list(entry["summary"]) == list(VARIANTS)
        run = entry["runs"]["0"]
        for label in VARIANTS:
            for key in ("served", "unserved", "new_tasks_trained", "new_tasks_final"):
                assert 0 <= run[label][key] <= 1
        # one model at the deployment point for every variant
        assert len({run[label]["served_at_deployment"] for label in VARIANTS}) == 1
        counted = run["mas (Ω traffic)"]["omega_samples"]
        assert 100 < counted < 200  # about half of the 300 served images
        saved = Importance.load(out / f"omega-{layout}-traffic-seed0.safetensors")
        assert saved.n_samples == counted
    assert (out / "selective.png").stat().st_size > 10_000
    assert "mas (Ω traffic)" in (out / "results.md").read_text()


def test_bad_settings_fail_before_any_data_are_read(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["paper", "selective", "--served", "0,0"]) == 2
    assert main(["paper", "selective", "--fraction", "0"]) == 2
    assert main(["paper", "selective", "--n-train", "45000", "--traffic", "10000"]) == 2
    assert "memaware: error:" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="--layout"):
        SelectiveConfig(layouts=("rows",)).check()


def test_the_benchmark_reports_both_sides(mnist_inputs: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU())
    requests = request_stream(mnist_inputs.reshape(-1, 1, 28, 28), total=600)
    assert sum(len(r) for r in requests) == 600
    figures = tracked_rounds(model, requests, 0.1, rounds=2)
    assert figures["served_s_plain"] > 0 and figures["served_s"] > 0 and figures["ratio"] > 0
    assert 20 < figures["counted_per_round"] < 100
    assert figures["samples_per_s"] > 0


@pytest.mark.slow
def test_bench_deploy_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "deploy", "--json", "--rounds", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    for fraction in ("1.0", "0.1", "0.01"):
        assert out[f"latency_overhead_at_{fraction}"] > 0
        assert out[f"served_s_plain_{fraction}"] > 0 and out[f"served_s_at_{fraction}"] > 0
    assert out["importance_samples_per_s"] > 0
