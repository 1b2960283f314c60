"""Importance from a deployed model's unlabelled traffic.

:class:`ImportanceTracker` attaches to a model that serves predictions and counts the exact
per-sample MAS importance of a seeded fraction of the inputs it sees, without changing what the
model returns; its :class:`~memaware.importance.Importance` merges with other replicas' and with
the training data's, and a saved one is what ``MASOptions(importance_source="file")`` reads.
"""

from memaware.deploy.tracker import ImportanceTracker, TrackerError

__all__ = ["ImportanceTracker", "TrackerError"]
