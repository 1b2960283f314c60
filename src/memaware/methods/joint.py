"""Joint training: at task t, train on the union of the data of tasks 1..t (the upper bound)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from memaware.data.scenarios import Task
from memaware.methods.base import Method
from memaware.methods.options import MethodOptions


@dataclass(frozen=True, kw_only=True)
class JointOptions(MethodOptions):
    """Joint training has no settings of its own (the training budget is the loop's)."""

    method = "joint"


class Joint(Method):
    """Not continual: it revisits all past data, giving the accuracy a method could hope for."""

    name = "joint"
    Options = JointOptions

    def training_tasks(self, seen: Sequence[Task]) -> Sequence[Task]:
        return seen
