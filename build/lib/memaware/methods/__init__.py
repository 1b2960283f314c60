"""Continual-learning methods, one file each, and the registry the CLI picks them from."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from memaware.errors import ConfigError
from memaware.methods.base import Batch, Method
from memaware.methods.ebll import EBLL
from memaware.methods.ewc import EWC
from memaware.methods.finetune import Finetune
from memaware.methods.imm import IMM, MeanIMM, ModeIMM
from memaware.methods.joint import Joint
from memaware.methods.l2 import L2
from memaware.methods.lmas import LocalMAS
from memaware.methods.lwf import LwF
from memaware.methods.mas import MAS, MASOptions
from memaware.methods.online_ewc import OnlineEWC
from memaware.methods.si import SI

#: every method by its name, in the order reports list them: bounds, the paper's method, baselines
METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (Finetune, Joint, MAS, LocalMAS, EWC, OnlineEWC, SI, L2, LwF, EBLL, MeanIMM, ModeIMM)
}


def accepted_options(cls: type[Method]) -> set[str]:
    """Keyword options a method's constructor takes (the fields of its ``Options`` dataclass, if any)."""
    options = getattr(cls, "Options", None)
    if options is not None and dataclasses.is_dataclass(options):
        return {field.name for field in dataclasses.fields(options)}
    parameters = inspect.signature(cls.__init__).parameters.values()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in parameters if p.name != "self" and p.kind in named}


def make_method(name: str, strength: float | None = None, **options: Any) -> Method:
    """Build the method called ``name``; ``strength`` sets its main regularisation weight (if it has one).

    Unknown options raise :class:`ConfigError` naming what the method accepts.
    """
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    cls = METHODS[name]
    accepted = accepted_options(cls)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(
            f"method {name} has no option {', '.join(unknown)}; it takes {', '.join(sorted(accepted)) or 'none'}"
        )
    if strength is not None and "strength" in accepted:
        options["strength"] = strength
    return cls(**options)


def methods_for(setting: str) -> list[str]:
    """Every registered method that supports ``setting`` (what ``--methods all`` means)."""
    return [name for name, cls in METHODS.items() if setting in cls.scenarios]


__all__ = [
    "EBLL",
    "EWC",
    "IMM",
    "L2",
    "MAS",
    "METHODS",
    "SI",
    "Batch",
    "Finetune",
    "Joint",
    "LocalMAS",
    "LwF",
    "MASOptions",
    "MeanIMM",
    "Method",
    "ModeIMM",
    "OnlineEWC",
    "accepted_options",
    "make_method",
    "methods_for",
]
