"""Continual-learning methods, one file each, and the registry the CLI picks them from.

Each method's settings are one options dataclass (``METHODS[name].Options``, see
:mod:`memaware.methods.options`); :func:`make_method` builds a method by name from keyword
options, :func:`parse_option` reads the CLI's ``METHOD.FIELD=VALUE``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from memaware.errors import ConfigError
from memaware.methods.base import Batch, Method
from memaware.methods.ebll import EBLL, EBLLOptions
from memaware.methods.ewc import EWC, EWCOptions
from memaware.methods.finetune import Finetune, FinetuneOptions
from memaware.methods.imm import IMM, MeanIMM, MeanIMMOptions, ModeIMM, ModeIMMOptions
from memaware.methods.joint import Joint, JointOptions
from memaware.methods.l2 import L2, L2Options
from memaware.methods.lmas import LocalMAS, LocalMASOptions
from memaware.methods.lwf import LwF, LwFOptions
from memaware.methods.mas import MAS, MASOptions
from memaware.methods.online_ewc import OnlineEWC, OnlineEWCOptions
from memaware.methods.online_finetune import OnlineFinetune, OnlineFinetuneOptions
from memaware.methods.options import MethodOptions, build, option_docs, parse_field
from memaware.methods.si import SI, SIOptions
from memaware.methods.task_free import TaskFree
from memaware.methods.task_free_mas import TaskFreeMAS, TaskFreeMASOptions

#: every method by its name, in the order reports list them: bounds, the paper's method,
#: baselines, then the task-free methods (which learn from `memaware stream` only)
METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        Finetune, Joint, MAS, LocalMAS, EWC, OnlineEWC, SI, L2, LwF, EBLL, MeanIMM, ModeIMM,
        TaskFreeMAS, OnlineFinetune,
    )
}  # fmt: skip


def method_class(name: str) -> type[Method]:
    """The registered method called ``name`` (:class:`ConfigError` naming the known ones if none)."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]


def accepted_options(cls: type[Method]) -> set[str]:
    """The option names a method takes: the fields of its ``Options`` dataclass."""
    return {field.name for field in dataclasses.fields(cls.Options)}


def make_options(name: str, strength: float | None = None, /, **options: Any) -> MethodOptions:
    """The options of method ``name``: its defaults, then ``strength`` if it has one, then ``options``.

    ``strength`` (positional) is a default for every regularising method, as ``--lambda``: a
    method without one ignores it, and ``options["strength"]`` (a keyword) wins over it. Unknown
    or invalid options raise :class:`ConfigError` naming the method and what it accepts.
    """
    cls = method_class(name).Options
    if strength is not None and "strength" in {f.name for f in dataclasses.fields(cls)}:
        options.setdefault("strength", strength)
    return build(cls, options)


def make_method(
    name: str, strength: float | None = None, /, *, seed: int = 0, **options: Any
) -> Method:
    """Build the method called ``name`` from :func:`make_options`; ``seed`` is the run's.

    The seed is the method's, not an option: it seeds the method's own random streams.
    """
    return method_class(name)(make_options(name, strength, **options), seed=seed)


def parse_option(text: str) -> tuple[str, str, object]:
    """``METHOD.FIELD=VALUE`` as (method, field, value), the value parsed by the field's type.

    Raises :class:`ConfigError` for a malformed text, an unknown method or field, or a value the
    field's type cannot take (ranges are checked when the options are built).
    """
    target, sep, value = text.partition("=")
    name, dot, field = target.strip().rpartition(".")
    if not sep or not dot or not name or not field:
        raise ConfigError(f"--option {text}: expected METHOD.FIELD=VALUE, e.g. mas.heads=current")
    try:
        return name, field, parse_field(method_class(name).Options, field, value.strip())
    except ConfigError as exc:
        raise ConfigError(f"--option {text}: {exc}") from None


def check_task_loop(names: list[str]) -> None:
    """Raise :class:`ConfigError` if a method of ``names`` is task-free (it needs a stream)."""
    streamed = [n for n in names if n in METHODS and issubclass(METHODS[n], TaskFree)]
    if streamed:
        raise ConfigError(
            f"{', '.join(streamed)} learn(s) from a stream without task boundaries, not from "
            "the task loop: run it with `memaware stream`"
        )


def methods_for(setting: str) -> list[str]:
    """Every registered method of the task loop that supports ``setting`` (``--methods all``).

    The task-free methods (:class:`~memaware.methods.task_free.TaskFree`) are not among them:
    they learn from a stream without boundaries (``memaware stream``).
    """
    return [
        name
        for name, cls in METHODS.items()
        if setting in cls.scenarios and not issubclass(cls, TaskFree)
    ]


__all__ = [
    "EBLL",
    "EWC",
    "IMM",
    "L2",
    "MAS",
    "METHODS",
    "SI",
    "Batch",
    "EBLLOptions",
    "EWCOptions",
    "Finetune",
    "FinetuneOptions",
    "Joint",
    "JointOptions",
    "L2Options",
    "LocalMAS",
    "LocalMASOptions",
    "LwF",
    "LwFOptions",
    "MASOptions",
    "MeanIMM",
    "MeanIMMOptions",
    "Method",
    "MethodOptions",
    "ModeIMM",
    "ModeIMMOptions",
    "OnlineEWC",
    "OnlineEWCOptions",
    "OnlineFinetune",
    "OnlineFinetuneOptions",
    "SIOptions",
    "TaskFree",
    "TaskFreeMAS",
    "TaskFreeMASOptions",
    "accepted_options",
    "check_task_loop",
    "make_method",
    "make_options",
    "method_class",
    "methods_for",
    "option_docs",
    "parse_option",
]
