"""Nested Python state (an optimizer's ``state_dict``) as JSON plus a flat dict of tensors, no pickle.

:func:`split` walks dicts, lists and tuples: every tensor is moved into the flat dict under its
path (``state/3/exp_avg``) and replaced by ``{"tensor": path}``; tuples and dicts are tagged
(``{"tuple": [...]}``, ``{"dict": [[key, value], ...]}``, keys kept as str or int) and non-finite
floats written as text, so that :func:`join` gives back an equal structure, tensors included.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from memaware.errors import ConfigError


def split(value: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """``value`` as (JSON-able skeleton, tensors by path); :class:`ConfigError` for other types."""
    tensors: dict[str, torch.Tensor] = {}
    return _encode(value, prefix, tensors), tensors


def join(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The structure :func:`split` took apart (``KeyError`` for a tensor that is missing)."""
    if isinstance(skeleton, list):
        return [join(item, tensors) for item in skeleton]
    if isinstance(skeleton, dict):
        ((tag, body),) = skeleton.items()
        if tag == "tensor":
            return tensors[body]
        if tag == "tuple":
            return tuple(join(item, tensors) for item in body)
        if tag == "float":
            return float(body)
        if tag == "dict":
            return {key: join(item, tensors) for key, item in body}
        raise ValueError(f"unknown tag {tag!r} in saved state")
    return skeleton


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[path] = value
        return {"tensor": path}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        items = [_encode(item, f"{path}/{k}", tensors) for k, item in enumerate(value)]
        return {"tuple": items} if isinstance(value, tuple) else items
    if isinstance(value, Mapping):
        bad = [key for key in value if isinstance(key, bool) or not isinstance(key, str | int)]
        if bad:
            raise ConfigError(f"cannot checkpoint {path or 'state'}: key {bad[0]!r} is not str/int")
        return {
            "dict": [[key, _encode(item, f"{path}/{key}", tensors)] for key, item in value.items()]
        }
    raise ConfigError(
        f"cannot checkpoint {path or 'state'}: a value of type {type(value).__name__}"
    )
