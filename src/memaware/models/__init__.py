"""Models: backbones (MLP, small CNN, reduced ResNet-18, EfficientNet-Lite0, AlexNet), a classifier
with one head per task, and the registry ``--model NAME`` chooses from."""

from memaware.models.alexnet import AlexNet
from memaware.models.backbones import MLP, SmallCNN
from memaware.models.efficientnet import EfficientNetLite0
from memaware.models.multihead import MultiHeadClassifier
from memaware.models.registry import (
    MODELS,
    ModelEntry,
    build_model,
    check_model,
    model_entry,
    models_table,
    preprocessing,
)
from memaware.models.resnet import ResNet18

__all__ = [
    "MLP",
    "MODELS",
    "AlexNet",
    "EfficientNetLite0",
    "ModelEntry",
    "MultiHeadClassifier",
    "ResNet18",
    "SmallCNN",
    "build_model",
    "check_model",
    "model_entry",
    "models_table",
    "preprocessing",
]
