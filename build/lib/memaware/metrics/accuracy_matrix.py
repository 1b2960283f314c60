"""The accuracy matrix ``R`` and every summary derived from it.

``R[i, j]`` is the accuracy on task ``j`` after training task ``i`` (``T × T``, fractions in [0, 1]).
Definitions follow Lopez-Paz & Ranzato (2017) for BWT, Chaudhry et al. (2018) for forgetting, and
Aljundi et al. (2018) for the per-task "drop".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class AccuracyMatrix:
    """A square accuracy matrix, ``values[i][j]`` = accuracy on task j after training task i."""

    values: npt.NDArray[np.float64]

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[float]]) -> AccuracyMatrix:
        values = np.asarray(rows, dtype=np.float64)
        if values.ndim != 2 or values.shape[0] != values.shape[1] or values.shape[0] == 0:
            raise ValueError(
                f"an accuracy matrix must be square and non-empty, got shape {values.shape}"
            )
        return cls(values)

    @property
    def n_tasks(self) -> int:
        return int(self.values.shape[0])

    def final(self) -> npt.NDArray[np.float64]:
        """Accuracy on every task after the last one was learned: ``R[T-1, :]``."""
        final: npt.NDArray[np.float64] = self.values[-1].copy()
        return final

    def average_accuracy(self) -> float:
        """ACC = (1/T) Σ_j R[T-1, j]."""
        return float(self.values[-1].mean())

    def drop(self) -> npt.NDArray[np.float64]:
        """The paper's drop per task: R[T-1, j] − R[j, j] (negative = forgotten; 0 for the last task)."""
        drop: npt.NDArray[np.float64] = self.values[-1] - np.diag(self.values)
        return drop

    def average_drop(self) -> float:
        """Mean drop over all T tasks, the last one (drop 0) included, as in Aljundi et al. Fig. 3."""
        return float(self.drop().mean())

    def backward_transfer(self) -> float:
        """BWT = 1/(T−1) Σ_{j<T−1} (R[T-1, j] − R[j, j]); 0 for a single task."""
        if self.n_tasks < 2:
            return 0.0
        return float(self.drop()[:-1].mean())

    def forgetting(self) -> float:
        """Average forgetting = 1/(T−1) Σ_{j<T−1} max_{j≤l<T−1} R[l, j] − R[T-1, j].

        The maximum runs over the models *before* the last one (l < T−1), from the moment task j
        was learned; 0 for a single task.
        """
        t = self.n_tasks
        if t < 2:
            return 0.0
        best = [self.values[j : t - 1, j].max() for j in range(t - 1)]
        return float(np.mean(np.asarray(best) - self.values[-1, : t - 1]))

    def summary(self) -> dict[str, object]:
        """The JSON-ready figures a report needs; unmeasured entries (NaN) become ``None``."""
        return {
            "accuracy_matrix": [
                [None if np.isnan(v) else float(v) for v in row] for row in self.values
            ],
            "average_accuracy": self.average_accuracy(),
            "forgetting": self.forgetting(),
            "bwt": self.backward_transfer(),
            "drop": self.drop().tolist(),
            "average_drop": self.average_drop(),
        }
