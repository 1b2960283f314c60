"""Typed method options: one frozen dataclass per method holds its defaults, checks and help.

Every method's settings are the fields of its ``Options`` dataclass (``MAS.Options`` is
:class:`~memaware.methods.mas.MASOptions`, and so on). A field's annotation is its type: ``int``,
``float``, ``bool``, ``str``, a ``Literal`` of strings, or one of these ``| None``; its
``metadata["help"]`` is the line ``memaware options`` prints. Building an options object checks
every value against its type (:meth:`MethodOptions.__post_init__`), then against the ranges the
method accepts (each subclass's ``__post_init__``); a bad value raises
:class:`~memaware.errors.ConfigError` naming the method, the option and what it accepts.

Methods that really share settings share them by inheritance: :class:`StrengthOptions` (λ, for
every regularising method) and :class:`SampledOptions` (the data an importance estimate reads:
``importance_batch_size`` and ``max_samples``, for MAS, l-MAS, EWC, online EWC and mode-IMM).

An importance preset is one name for several field values (MAS's ``authors``: Ω as the authors'
code computes it). It is not a field: :func:`build` takes it as the keyword
:data:`PRESET_KEY` and expands it, the fields given next to it winning, so that the options (and
``results.json``) hold the values the run used; the run's config keeps the name.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple, NoReturn, TypeVar, Union, cast

from memaware.errors import ConfigError

#: the keyword that names an importance preset (see :attr:`MethodOptions.importance_presets`)
PRESET_KEY = "importance_preset"

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _hints(cls: type[MethodOptions]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _alternatives(hint: Any) -> tuple[Any, ...]:
    """``X | Y`` as ``(X, Y)``; any other type as ``(hint,)``."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _accepts(hint: Any, value: object) -> bool:
    for kind in _alternatives(hint):
        if kind is type(None):
            if value is None:
                return True
        elif typing.get_origin(kind) is Literal:
            if isinstance(value, str) and value in typing.get_args(kind):
                return True
        elif kind is float:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return True
        elif kind is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return True
        elif isinstance(value, kind):
            return True
    return False


def describe(hint: Any) -> str:
    """What a field of type ``hint`` accepts, in words: ``"one of sum, blend"``, ``"an integer or none"``."""
    words = []
    for kind in _alternatives(hint):
        if kind is type(None):
            words.append("none")
        elif typing.get_origin(kind) is Literal:
            words.append("one of " + ", ".join(str(c) for c in typing.get_args(kind)))
        else:
            words.append(
                {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
            )
    return " or ".join(words)


def parse(hint: Any, text: str) -> object:
    """The value of type ``hint`` that ``text`` writes (``none`` for None, ``true``/``false``, ...).

    Raises :class:`ConfigError` when ``text`` is none of them; ranges are not checked here.
    """
    for kind in _alternatives(hint):
        if kind is type(None):
            if text.lower() == "none":
                return None
        elif typing.get_origin(kind) is Literal:
            if text in typing.get_args(kind):
                return text
        elif kind is bool:
            if text.lower() in _TRUE + _FALSE:
                return text.lower() in _TRUE
        elif kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        elif kind is str:
            return text
    raise ConfigError(f"expected {describe(hint)}, got {text!r}")


_Options = TypeVar("_Options", bound="MethodOptions")


@dataclass(frozen=True, kw_only=True)
class MethodOptions:
    """Base of every method's options: the type check of every field, and the shared range checks."""

    #: the registered name of the method these options belong to (for messages)
    method: ClassVar[str] = "base"
    #: named sets of field values that :data:`PRESET_KEY` selects (none for most methods)
    importance_presets: ClassVar[Mapping[str, Mapping[str, object]]] = {}

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            if not _accepts(hint, value):
                self.fail(f.name, describe(hint), value)
            if float in _alternatives(hint) and isinstance(value, int | float):
                if not math.isfinite(value):  # no option of any method means anything at nan or inf
                    self.fail(f.name, "a finite number", value)
                object.__setattr__(self, f.name, float(value))  # 1 → 1.0, as the CLI parses it

    @classmethod
    def from_preset(cls: type[_Options], name: str, /, **fields: Any) -> _Options:
        """The values of importance preset ``name``, with ``fields`` replacing any of them, checked.

        ``MASOptions.from_preset("authors", strength=2)``; :class:`ConfigError` if these options
        have no preset ``name``.
        """
        return cast(_Options, build(cls, {PRESET_KEY: name, **fields}))

    def fail(self, name: str, allowed: str, value: object) -> NoReturn:
        """Raise the :class:`ConfigError` every check of these options raises."""
        raise ConfigError(f"{self.method}: option {name} must be {allowed}, got {value!r}")

    def require_non_negative(self, *names: str) -> None:
        """Each named float field is >= 0 (strengths, weights; finite, as every float option)."""
        for name in names:
            value = getattr(self, name)
            if not value >= 0:
                self.fail(name, "a finite number >= 0", value)

    def require_positive(self, *names: str) -> None:
        """Each named float field is > 0 (learning rates, temperatures)."""
        for name in names:
            value = getattr(self, name)
            if not value > 0:
                self.fail(name, "a finite number > 0", value)

    def require_within(self, name: str, low: float, high: float) -> None:
        """The named float field is in the closed interval [low, high]."""
        value = getattr(self, name)
        if not low <= value <= high:
            self.fail(name, f"a number in [{low:g}, {high:g}]", value)

    def require_at_least(self, name: str, minimum: int) -> None:
        """The named int field (or ``None``, where its type allows it) is >= ``minimum``."""
        value = getattr(self, name)
        if value is not None and value < minimum:
            optional = " or none" if type(None) in _alternatives(_hints(type(self))[name]) else ""
            self.fail(name, f"an integer >= {minimum}{optional}", value)


@dataclass(frozen=True, kw_only=True)
class StrengthOptions(MethodOptions):
    """Options of a method with a regularisation strength (what ``--lambda`` and sweeps set)."""

    strength: float = field(
        default=1.0,
        metadata={"help": "λ >= 0, the weight of the method's regulariser (no factor ½)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_non_negative("strength")


@dataclass(frozen=True, kw_only=True)
class SampledOptions(MethodOptions):
    """The data an importance estimate (MAS's Ω, a Fisher) is computed on."""

    importance_batch_size: int = field(
        default=256,
        metadata={"help": "inputs per batch of the importance pass, >= 1 (memory and speed only)"},
    )
    max_samples: int | None = field(
        default=None,
        metadata={"help": "use at most this many (>= 1) of the task's inputs (none: all of them)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_at_least("importance_batch_size", 1)
        self.require_at_least("max_samples", 1)


class OptionDoc(NamedTuple):
    """One row of a method's option table."""

    name: str
    accepts: str
    default: str
    help: str


def show(value: object) -> str:
    """A value as ``--option`` writes it: ``none``, ``true``, ``0.0001``, ``sample``."""
    if value is None or isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def option_docs(options: type[MethodOptions]) -> list[OptionDoc]:
    """Every field of ``options``: its name, what it accepts, its default and its help line."""
    hints = _hints(options)
    return [
        OptionDoc(f.name, describe(hints[f.name]), show(f.default), str(f.metadata.get("help", "")))
        for f in dataclasses.fields(options)
    ]


def _option_names(options: type[MethodOptions]) -> list[str]:
    """What ``--option`` may set on these options: their fields, and the preset key if any."""
    names = [f.name for f in dataclasses.fields(options)]
    return [*names, PRESET_KEY] if options.importance_presets else names


def _no_option(options: type[MethodOptions], names: list[str]) -> ConfigError:
    taken = ", ".join(_option_names(options)) or "none"
    return ConfigError(
        f"method {options.method} has no option {', '.join(names)}; it takes {taken}"
    )


def preset_fields(options: type[MethodOptions], name: object) -> Mapping[str, object]:
    """The field values of importance preset ``name`` of ``options``.

    :class:`ConfigError` if the method has no presets, or none called ``name``.
    """
    presets = options.importance_presets
    if not presets:
        raise _no_option(options, [PRESET_KEY])
    if not isinstance(name, str) or name not in presets:
        raise ConfigError(
            f"{options.method}: option {PRESET_KEY} must be one of {', '.join(presets)}, "
            f"got {name!r}"
        )
    return presets[name]


def build(
    options: type[MethodOptions], fields: Mapping[str, Any], base: MethodOptions | None = None
) -> MethodOptions:
    """``base`` (default: the defaults of ``options``) with ``fields`` replaced, checked.

    ``fields[PRESET_KEY]``, if given, names an importance preset: its values are set first and
    the other ``fields`` over them. An unknown field raises :class:`ConfigError` naming the
    options the method takes, and so do an unknown preset and a preset on top of ``base`` (a
    field of ``base`` cannot tell a value chosen from a default, so which should win is unknown).
    """
    fields = dict(fields)
    if PRESET_KEY in fields:
        chosen = preset_fields(options, fields.pop(PRESET_KEY))
        if base is not None:
            raise ConfigError(
                f"{options.method}: {PRESET_KEY} is given with an options object; build the "
                f"options with {options.__name__}.from_preset(...) or give every option as a keyword"
            )
        fields = {**chosen, **fields}
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(options)})
    if unknown:
        raise _no_option(options, unknown)
    return dataclasses.replace(base if base is not None else options(), **fields)


def parse_field(options: type[MethodOptions], name: str, text: str) -> object:
    """``text`` parsed by the type of field ``name`` of ``options`` (:class:`ConfigError` if none).

    ``name`` may also be :data:`PRESET_KEY` for options with presets; ``text`` is then one of them.
    """
    if name not in _option_names(options):
        raise _no_option(options, [name])
    if name == PRESET_KEY:
        preset_fields(options, text)  # one of the presets, or the error that lists them
        return text
    try:
        return parse(_hints(options)[name], text)
    except ConfigError as exc:
        raise ConfigError(f"{options.method}: option {name}: {exc}") from None
