"""Accuracy-matrix metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from memaware.metrics import AccuracyMatrix

NAN = float("nan")
# R[i][j]: accuracy on task j after training task i (upper triangle not measured).
R = AccuracyMatrix.from_rows(
    [
        [0.90, NAN, NAN],
        [0.80, 0.95, NAN],
        [0.70, 0.85, 0.99],
    ]
)


def test_average_accuracy_is_mean_of_last_row() -> None:
    assert R.average_accuracy() == pytest.approx((0.70 + 0.85 + 0.99) / 3)


def test_forgetting_uses_best_earlier_accuracy_and_excludes_last_task() -> None:
    # task 0: max(0.90, 0.80) - 0.70 = 0.20; task 1: 0.95 - 0.85 = 0.10; mean over T-1 = 2 tasks
    assert R.forgetting() == pytest.approx(0.15)


def test_forgetting_peak_after_learning() -> None:
    # Accuracy on task 0 rises after task 1 (0.5 -> 0.9) and then falls: forgetting counts from the peak.
    rising = AccuracyMatrix.from_rows([[0.5, NAN, NAN], [0.9, 0.8, NAN], [0.6, 0.8, 0.9]])
    assert rising.forgetting() == pytest.approx(((0.9 - 0.6) + 0.0) / 2)
    assert rising.backward_transfer() == pytest.approx(((0.6 - 0.5) + 0.0) / 2)


def test_backward_transfer() -> None:
    # (0.70 - 0.90 + 0.85 - 0.95) / 2
    assert R.backward_transfer() == pytest.approx(-0.15)


def test_drop_per_task_and_average_includes_last_task() -> None:
    np.testing.assert_allclose(R.drop(), [-0.20, -0.10, 0.0], atol=1e-12)
    assert R.average_drop() == pytest.approx(-0.10)


def test_single_task_has_no_forgetting() -> None:
    one = AccuracyMatrix.from_rows([[0.8]])
    assert one.forgetting() == 0.0 and one.backward_transfer() == 0.0
    assert one.average_accuracy() == pytest.approx(0.8)


def test_summary_is_json_ready() -> None:
    summary = R.summary()
    assert summary["accuracy_matrix"][0][1] is None
    assert not any(
        isinstance(v, float) and math.isnan(v) for row in summary["accuracy_matrix"] for v in row
    )


def test_rejects_non_square() -> None:
    with pytest.raises(ValueError):
        AccuracyMatrix.from_rows([[0.1, 0.2]])


# The same R with the accuracy right after training each task (before after_task) recorded apart,
# as for IMM, whose after_task replaces the trained model by a merge: a = [0.95, 0.97, 0.995].
MERGED = AccuracyMatrix.from_rows(R.values.tolist(), trained=[0.95, 0.97, 0.995])


def test_trained_accuracy_defaults_to_the_diagonal() -> None:
    same = AccuracyMatrix.from_rows(R.values.tolist(), trained=np.diag(R.values).tolist())
    np.testing.assert_array_equal(R.learned(), [0.90, 0.95, 0.99])
    np.testing.assert_array_equal(R.drop(), same.drop())
    assert R.forgetting() == same.forgetting()
    assert R.backward_transfer() == same.backward_transfer()
    assert R.summary()["trained_accuracy"] == [0.90, 0.95, 0.99]


def test_drop_and_bwt_are_measured_against_the_trained_model() -> None:
    # drop_j = R[T-1, j] - a_j: the last task's is no longer 0 by construction
    np.testing.assert_allclose(MERGED.drop(), [0.70 - 0.95, 0.85 - 0.97, 0.99 - 0.995], atol=1e-12)
    assert MERGED.average_drop() == pytest.approx((-0.25 - 0.12 - 0.005) / 3)
    assert MERGED.backward_transfer() == pytest.approx((-0.25 - 0.12) / 2)
    assert MERGED.summary()["trained_accuracy"] == [0.95, 0.97, 0.995]


def test_forgetting_peak_includes_the_trained_model() -> None:
    # task 0: max(a_0 = 0.95, R[0,0] = 0.90, R[1,0] = 0.80) - 0.70; task 1: max(0.97, 0.95) - 0.85
    assert MERGED.forgetting() == pytest.approx(((0.95 - 0.70) + (0.97 - 0.85)) / 2)
    # a later row above the trained accuracy still counts as the peak
    rising = AccuracyMatrix.from_rows(
        [[0.5, NAN, NAN], [0.9, 0.8, NAN], [0.6, 0.8, 0.9]], trained=[0.6, 0.85, 0.9]
    )
    assert rising.forgetting() == pytest.approx(((0.9 - 0.6) + (0.85 - 0.8)) / 2)


def test_rejects_trained_accuracies_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="one per task"):
        AccuracyMatrix.from_rows(R.values.tolist(), trained=[0.9, 0.9])
