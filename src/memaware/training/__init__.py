"""Training: the task loop shared by every method."""

from memaware.training.loop import (
    MethodResult,
    TrainConfig,
    evaluate,
    run_method,
    train_task,
    training_step,
)

__all__ = ["MethodResult", "TrainConfig", "evaluate", "run_method", "train_task", "training_step"]
