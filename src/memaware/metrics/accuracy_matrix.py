"""The accuracy matrix ``R`` and every summary derived from it.

``R[i, j]`` is the accuracy on task ``j`` after training task ``i`` (``T × T``, fractions in [0, 1]).
Definitions follow Lopez-Paz & Ranzato (2017) for BWT, Chaudhry et al. (2018) for forgetting, and
Aljundi et al. (2018) for the per-task "drop".

All three measure a task against its accuracy *right after it was learned*, ``a_j``: the accuracy
of the model trained on task j, before the method's end-of-task step (``Method.after_task``). For
most methods that step leaves the weights alone and ``a_j = R[j, j]``; IMM replaces them by the
merge of the task models, so ``R[j, j]`` is the merged model's accuracy and ``a_j`` the trained
(pre-merge) model's, the reference of the MAS paper's Figure 3. Without a recorded ``a``
(``trained=None``, e.g. a matrix read from an older report) ``a_j = R[j, j]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class AccuracyMatrix:
    """A square accuracy matrix, ``values[i][j]`` = accuracy on task j after training task i.

    ``trained[j]``, when given, is the accuracy on task j of the model right after training it,
    before the method's ``after_task``; ``None`` means it equals the diagonal.
    """

    values: npt.NDArray[np.float64]
    trained: npt.NDArray[np.float64] | None = None

    def __post_init__(self) -> None:
        if self.trained is not None and self.trained.shape != (self.values.shape[0],):
            raise ValueError(
                f"trained accuracies must be one per task ({self.values.shape[0]}), "
                f"got shape {self.trained.shape}"
            )

    @classmethod
    def from_rows(
        cls, rows: Sequence[Sequence[float]], trained: Sequence[float] | None = None
    ) -> AccuracyMatrix:
        values = np.asarray(rows, dtype=np.float64)
        if values.ndim != 2 or values.shape[0] != values.shape[1] or values.shape[0] == 0:
            raise ValueError(
                f"an accuracy matrix must be square and non-empty, got shape {values.shape}"
            )
        return cls(values, None if trained is None else np.asarray(trained, dtype=np.float64))

    @property
    def n_tasks(self) -> int:
        return int(self.values.shape[0])

    def final(self) -> npt.NDArray[np.float64]:
        """Accuracy on every task after the last one was learned: ``R[T-1, :]``."""
        final: npt.NDArray[np.float64] = self.values[-1].copy()
        return final

    def learned(self) -> npt.NDArray[np.float64]:
        """``a_j``: accuracy on task j right after training it (``trained``, else ``R[j, j]``)."""
        learned: npt.NDArray[np.float64] = (
            np.diag(self.values).copy() if self.trained is None else self.trained.copy()
        )
        return learned

    def average_accuracy(self) -> float:
        """ACC = (1/T) Σ_j R[T-1, j]."""
        return float(self.values[-1].mean())

    def drop(self) -> npt.NDArray[np.float64]:
        """The paper's drop per task: R[T-1, j] − a_j (negative = forgotten).

        The last task's drop is 0 unless its ``after_task`` changed the weights (IMM's merge).
        """
        drop: npt.NDArray[np.float64] = self.values[-1] - self.learned()
        return drop

    def average_drop(self) -> float:
        """Mean drop over all T tasks, the last one included, as in Aljundi et al. Fig. 3."""
        return float(self.drop().mean())

    def backward_transfer(self) -> float:
        """BWT = 1/(T−1) Σ_{j<T−1} (R[T-1, j] − a_j); 0 for a single task."""
        if self.n_tasks < 2:
            return 0.0
        return float(self.drop()[:-1].mean())

    def forgetting(self) -> float:
        """Average forgetting = 1/(T−1) Σ_{j<T−1} max(a_j, max_{j≤l<T−1} R[l, j]) − R[T-1, j].

        The maximum runs over the models *before* the last one (l < T−1), from the moment task j
        was learned, the trained model ``a_j`` included; 0 for a single task.
        """
        t = self.n_tasks
        if t < 2:
            return 0.0
        learned = self.learned()
        best = [max(learned[j], self.values[j : t - 1, j].max()) for j in range(t - 1)]
        return float(np.mean(np.asarray(best) - self.values[-1, : t - 1]))

    def summary(self) -> dict[str, object]:
        """The JSON-ready figures a report needs; unmeasured entries (NaN) become ``None``.

        ``trained_accuracy`` is ``a`` (the diagonal when nothing else was recorded).
        """
        return {
            "accuracy_matrix": [
                [None if np.isnan(v) else float(v) for v in row] for row in self.values
            ],
            "trained_accuracy": self.learned().tolist(),
            "average_accuracy": self.average_accuracy(),
            "forgetting": self.forgetting(),
            "bwt": self.backward_transfer(),
            "drop": self.drop().tolist(),
            "average_drop": self.average_drop(),
        }
