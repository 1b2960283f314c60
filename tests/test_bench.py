"""The benchmarks compare like with like: the bare script of ``bench training`` is the same run
as memaware's MAS with the batched importance, and ``bench importance``'s penalty timing runs the
training loop's own step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import small_split_mnist
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
