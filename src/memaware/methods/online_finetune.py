"""Online finetuning: the task-free stream's lower bound (no penalty, no buffer).

The same stream and the same passes per incoming batch as task-free MAS
(:mod:`memaware.methods.task_free_mas`), each step on the incoming batch's cross-entropy alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from memaware.methods.options import MethodOptions
from memaware.methods.task_free import TaskFree


@dataclass(frozen=True, kw_only=True)
class OnlineFinetuneOptions(MethodOptions):
    """Online finetuning has no settings of its own (batches and passes are the stream's)."""

    method = "online-finetune"


class OnlineFinetune(TaskFree):
    """Plain training on each incoming batch; what forgetting costs on a stream."""

    name = "online-finetune"
    Options = OnlineFinetuneOptions
