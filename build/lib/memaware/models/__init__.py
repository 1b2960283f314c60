"""Models: an MLP backbone, a small CNN backbone, and a classifier with one head per task."""

from memaware.models.backbones import MLP, SmallCNN
from memaware.models.multihead import MultiHeadClassifier, build_model

__all__ = ["MLP", "MultiHeadClassifier", "SmallCNN", "build_model"]
