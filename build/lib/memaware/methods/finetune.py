"""Finetuning: train on each task in turn with no protection of the past (the lower bound)."""

from __future__ import annotations

from memaware.methods.base import Method


class Finetune(Method):
    """Plain sequential training; the accuracy it loses is what forgetting costs."""

    name = "finetune"
