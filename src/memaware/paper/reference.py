"""The MAS paper's object-recognition numbers (Aljundi et al., ECCV 2018), to print beside ours.

Accuracies and drops in % / percentage points, as printed in the paper: Table 2 (two-task
sequences), Table 3 (Ω from train, test or both; MAS and l-MAS) and the legend of Figure 3
(the 8-task sequence Flowers → Scenes → Birds → Cars → Aircraft → Actions → Letters → SVHN).
The paper reports one IMM, without saying whether mean- or mode-IMM; both of memaware's are
printed against it.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["FIGURE3", "IMM_VARIANTS", "PAIRS", "TABLE2", "TABLE3", "Cell", "paper_method"]


class Cell(NamedTuple):
    """One cell of Table 2 or 3: first task's accuracy after the second, its drop, the second's."""

    first: float
    drop: float
    second: float


#: the paper's four pairs (first task, second task), in its column order
PAIRS: tuple[tuple[str, str], ...] = (
    ("Birds", "Scenes"),
    ("Scenes", "Birds"),
    ("Flowers", "Birds"),
    ("Flowers", "Scenes"),
)

#: Table 2: method -> one cell per pair of :data:`PAIRS`
TABLE2: dict[str, tuple[Cell, ...]] = {
    "finetune": (
        Cell(45.20, -8.0, 57.8),
        Cell(49.7, -9.3, 52.8),
        Cell(64.87, -13.2, 53.8),
        Cell(70.17, -7.9, 57.31),
    ),
    "lwf": (
        Cell(51.65, -2.0, 55.59),
        Cell(55.89, -3.1, 49.46),
        Cell(73.97, -4.1, 53.64),
        Cell(76.20, -1.9, 58.05),
    ),
    "ebll": (
        Cell(52.79, -0.8, 55.67),
        Cell(56.34, -2.7, 49.41),
        Cell(75.45, -2.6, 50.51),
        Cell(76.20, -1.9, 58.35),
    ),
    "imm": (
        Cell(51.51, -2.1, 52.62),
        Cell(54.76, -4.2, 52.20),
        Cell(75.68, -2.4, 48.32),
        Cell(76.28, -1.8, 55.64),
    ),
    "ewc": (
        Cell(52.19, -1.4, 55.74),
        Cell(58.28, -0.8, 49.65),
        Cell(76.46, -1.6, 50.7),
        Cell(77.0, -1.1, 57.53),
    ),
    "si": (
        Cell(52.64, -1.0, 55.89),
        Cell(57.46, -1.5, 49.70),
        Cell(75.19, -2.9, 51.20),
        Cell(76.61, -1.5, 57.53),
    ),
    "mas": (
        Cell(53.24, -0.4, 55.0),
        Cell(57.61, -1.4, 49.62),
        Cell(77.33, -0.7, 50.39),
        Cell(77.24, -0.8, 57.38),
    ),
}

#: Table 3: (method, Ω data) -> one cell per pair of :data:`PAIRS`
TABLE3: dict[tuple[str, str], tuple[Cell, ...]] = {
    ("mas", "train"): TABLE2["mas"],
    ("mas", "test"): (
        Cell(53.43, -0.2, 55.07),
        Cell(57.31, -1.7, 49.01),
        Cell(77.62, -0.5, 50.29),
        Cell(77.45, -0.6, 57.45),
    ),
    ("mas", "train+test"): (
        Cell(53.29, -0.3, 56.04),
        Cell(57.83, -1.2, 49.56),
        Cell(77.52, -0.6, 49.70),
        Cell(77.54, -0.5, 57.39),
    ),
    ("l-mas", "train"): (
        Cell(51.36, -2.3, 55.67),
        Cell(57.61, -1.4, 49.86),
        Cell(73.96, -4.1, 50.5),
        Cell(76.20, -1.9, 56.68),
    ),
    ("l-mas", "test"): (
        Cell(51.62, -2.0, 53.95),
        Cell(55.74, -3.3, 50.43),
        Cell(74.48, -3.6, 50.32),
        Cell(76.56, -1.5, 57.83),
    ),
    ("l-mas", "train+test"): (
        Cell(52.15, -1.5, 54.40),
        Cell(56.79, -2.2, 48.92),
        Cell(73.73, -4.3, 50.5),
        Cell(76.41, -1.7, 57.91),
    ),
}

#: Figure 3's legend: method -> (average accuracy, average drop) over the 8 tasks
FIGURE3: dict[str, tuple[float, float]] = {
    "mas": (52.69, -0.49),
    "si": (50.49, -1.27),
    "ewc": (50.0, -3.18),
    "ebll": (50.29, -7.83),
    "lwf": (49.49, -8.47),
    "imm": (46.83, -12.13),
    "finetune": (32.67, -26.29),
}

#: memaware's two IMMs, both set against the paper's one
IMM_VARIANTS = ("mean-imm", "mode-imm")


def paper_method(method: str) -> str:
    """The paper's name for memaware's ``method`` in these tables (both IMMs are its IMM)."""
    return "imm" if method in IMM_VARIANTS else method
