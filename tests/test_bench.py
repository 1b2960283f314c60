"""The benchmarks compare like with like: the bare script of ``bench training`` is the same run
as memaware's MAS with the batched importance, ``bench importance``'s penalty timing runs the
training loop's own step, and ``bench backbone``'s two training sides end with the same weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import small_split_mnist
from memaware.bench.backbone import MODELS, Size, TrainingPair, importance_runs, prepare
from memaware.bench.importance import penalty_overhead
from memaware.bench.training import bare_mas_run, memaware_mas_run
from memaware.cli.main import main
from memaware.data.images import ImageDataset


def test_bare_script_is_memaware_mas_with_the_batched_importance(mnist: ImageDataset) -> None:
    scenario = small_split_mnist(mnist, n_train=1000, n_test=400)
    bare = bare_mas_run(scenario, epochs=1, strength=1.0)
    batched = memaware_mas_run(scenario, epochs=1, strength=1.0, granularity="batch")
    exact = memaware_mas_run(scenario, epochs=1, strength=1.0)
    assert np.isnan(bare[0, 1]) and np.isnan(batched[0, 1])
    # Same weights, batches, Ω and penalty gradient: only rounding may differ.
    np.testing.assert_allclose(bare, batched, atol=0.01)
    np.testing.assert_allclose(exact[np.tril_indices(3)], bare[np.tril_indices(3)], atol=0.05)
    assert np.nanmean(bare[-1]) > 0.9


def test_penalty_timing_fields(mnist: ImageDataset) -> None:
    x = mnist.train_x[:256].reshape(256, -1).float() / 255.0
    out = penalty_overhead(x, repeats=1)
    assert set(out) == {
        "step_s_plain",
        "step_s_penalty",
        "penalty_step_overhead",
        "penalty_step_overhead_loss_term",
    }
    assert all(v > 0 for v in out.values())


@pytest.mark.slow
def test_bench_training_command(capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    assert main(["bench", "training", "--epochs", "1", "--repeats", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["memaware_over_bare"] > 0 and out["bare_s"] > 0
    assert out["memaware_average_accuracy"] > 0.95 and out["bare_average_accuracy"] > 0.95


@pytest.mark.parametrize("name", list(MODELS))
def test_backbone_sides_compute_the_same(name: str) -> None:
    """Two runs of 2 MAS steps each side: equal weights, moved off θ* (the penalty acts); Ω exact
    >= batched elementwise (the triangle inequality), equal for batches of one."""
    prepared = prepare(name, Size(image_size=32, batch_size=2, steps=2), torch.device("cpu"))
    pair = TrainingPair(prepared)
    for _ in range(2):
        pair.memaware()
        pair.bare()
    assert pair.max_abs_difference() <= 1e-8  # dropping the penalty's gradient moves it by 1e-6
    penalty = prepared.method.penalty
    assert penalty is not None and float(penalty().detach()) > 0
    exact, batched = (run() for run in importance_runs(prepared.model, prepared.x, 2))
    assert set(exact) == set(batched) == {n for n, _ in prepared.model.named_parameters()}
    for param, value in exact.items():
        assert bool((value >= batched[param] * (1 - 1e-5) - 1e-9).all()), param
    assert any(bool((exact[p] > batched[p] * 1.01).any()) for p in exact)  # not all equal
    exact, batched = (run() for run in importance_runs(prepared.model, prepared.x, 1))
    for param, value in exact.items():
        torch.testing.assert_close(value, batched[param], rtol=1e-4, atol=1e-8, msg=param)


def test_bench_backbone_command(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--steps", "1", "--batch-size", "2", "--image-size", "32", "--repeats", "1"]
    assert main(["bench", "backbone", "--json", *argv]) == 0
    out = json.loads(capsys.readouterr().out)
    per_model = {
        "image_size",
        "batch_size",
        "steps",
        "train_step_s_memaware",
        "train_step_s_bare",
        "memaware_over_bare_train",
        "params_max_abs_diff",
        "importance_images",
        "importance_s_exact",
        "importance_s_batch",
        "exact_over_batch",
        "train_images_per_s",
        "importance_images_per_s",
    }
    expected = {"device", "threads", "repeats", "inputs", "optimizer"}
    expected |= {"memaware_over_bare_train", "memaware_over_bare_train_worst"}
    expected |= {f"{key}_{label}" for key in per_model for label in MODELS.values()}
    assert set(out) == expected
    assert out["device"] == "cpu" and out["memaware_over_bare_train_worst"] in MODELS.values()
    assert (out["image_size_efficientnet"], out["image_size_resnet18"]) == (32, 32)
    for label in MODELS.values():
        assert out[f"params_max_abs_diff_{label}"] <= 1e-6
        assert out[f"exact_over_batch_{label}"] > 0 and out[f"train_images_per_s_{label}"] > 0
    assert out["memaware_over_bare_train"] == max(
        out[f"memaware_over_bare_train_{label}"] for label in MODELS.values()
    )
