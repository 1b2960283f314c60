"""Continual-learning metrics, all derived from one accuracy matrix."""

from memaware.metrics.accuracy_matrix import AccuracyMatrix

__all__ = ["AccuracyMatrix"]
