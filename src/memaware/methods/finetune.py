"""Finetuning: train on each task in turn with no protection of the past (the lower bound)."""

from __future__ import annotations

from dataclasses import dataclass

from memaware.methods.base import Method
from memaware.methods.options import MethodOptions


@dataclass(frozen=True, kw_only=True)
class FinetuneOptions(MethodOptions):
    """Finetuning has no settings of its own (the training budget is the loop's)."""

    method = "finetune"


class Finetune(Method):
    """Plain sequential training; the accuracy it loses is what forgetting costs."""

    name = "finetune"
    Options = FinetuneOptions
