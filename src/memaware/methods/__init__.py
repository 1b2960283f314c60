"""Continual-learning methods, one file each, and the registry the CLI picks them from."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memaware.errors import ConfigError
from memaware.methods.base import Method
from memaware.methods.finetune import Finetune
from memaware.methods.joint import Joint
from memaware.methods.mas import MAS, MASOptions

METHODS: dict[str, Callable[..., Method]] = {
    "finetune": lambda **_: Finetune(),
    "joint": lambda **_: Joint(),
    "mas": lambda strength=1.0, granularity="sample", **_: MAS(
        MASOptions(strength=strength, granularity=granularity)
    ),
}


def make_method(name: str, **options: Any) -> Method:
    """Build the method called ``name`` with the options it understands (others are ignored)."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name](**options)


__all__ = ["MAS", "METHODS", "Finetune", "Joint", "MASOptions", "Method", "make_method"]
