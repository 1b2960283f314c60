"""Checkpoints of training runs and resuming from them (safetensors and a JSON manifest, no pickle).

Layout: ``OUT/checkpoints/<method>-seed<seed>/step-<NNNNNNNNN>/`` with ``manifest.json`` and
``model.safetensors``, ``optimizer.safetensors``, ``method.safetensors``, ``rng.safetensors``
(:mod:`memaware.checkpoint.store`); what is saved: :mod:`memaware.checkpoint.run`.
"""

from memaware.checkpoint.model import load_checkpoint_model
from memaware.checkpoint.run import CheckpointOptions, RunCheckpoints
from memaware.checkpoint.store import (
    Checkpoint,
    CheckpointWarning,
    latest,
    open_checkpoint,
    resolve,
)

__all__ = [
    "Checkpoint",
    "CheckpointOptions",
    "CheckpointWarning",
    "RunCheckpoints",
    "latest",
    "load_checkpoint_model",
    "open_checkpoint",
    "resolve",
]
