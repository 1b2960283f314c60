"""Training: the task loop shared by every method."""

from memaware.training.config import TrainConfig
from memaware.training.loop import (
    MethodResult,
    evaluate,
    run_method,
    train_task,
    training_step,
)

__all__ = ["MethodResult", "TrainConfig", "evaluate", "run_method", "train_task", "training_step"]
