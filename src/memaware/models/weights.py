"""Backbone weights from a file: a ``state_dict`` saved by ``torch.save`` or as safetensors.

A file is read without running any of its code (``torch.load(weights_only=True)``), and loaded
only when every key and every shape fits the backbone; otherwise the error names the first keys
that do not fit, with the expected and the found shapes.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from memaware.errors import ConfigError

StateDict = dict[str, torch.Tensor]

#: File name endings read as a ``torch.save`` pickle, and as safetensors.
TORCH_SUFFIXES = (".pth", ".pt")
SAFETENSORS_SUFFIX = ".safetensors"

# How many offending keys an error message lists per kind of problem.
_SHOWN = 5


def check_weights_path(path: Path) -> None:
    """Raise :class:`ConfigError` unless ``path`` is an existing file with a known suffix."""
    suffixes = ", ".join((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX))
    if path.suffix.lower() not in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX):
        raise ConfigError(
            f"weights file {path}: unknown format {path.suffix or '(no suffix)'}; "
            f"save the state_dict as one of {suffixes}"
        )
    if not path.is_file():
        raise ConfigError(
            f"weights file {path} does not exist; give the path of a saved state_dict ({suffixes})"
        )


def read_state_dict(path: Path) -> StateDict:
    """The tensors of the ``state_dict`` file ``path``, by name, on the CPU.

    ``.pth``/``.pt`` are read with ``torch.load(weights_only=True)`` (no code of the file runs),
    ``.safetensors`` with :func:`safetensors.torch.load_file`.
    """
    check_weights_path(path)
    try:
        if path.suffix.lower() == SAFETENSORS_SUFFIX:
            from safetensors.torch import load_file

            state: object = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        reason = " ".join(str(exc).split())[:300]  # torch's message spans many lines
        raise ConfigError(
            f"cannot read the weights file {path}: {reason}; save the backbone's "
            "state_dict with torch.save(model.state_dict(), path) or safetensors' save_file"
        ) from None
    if not isinstance(state, Mapping):
        raise ConfigError(
            f"the weights file {path} holds a {type(state).__name__}, not a state_dict "
            "(names -> tensors); save model.state_dict()"
        )
    strays = [
        str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))
    ]
    if strays:
        raise ConfigError(
            f"the weights file {path} is not a state_dict (names -> tensors): "
            f"{', '.join(strays[:_SHOWN])} are not tensors; save model.state_dict() itself, "
            "not a checkpoint dictionary around it"
        )
    return dict(state)


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def load_backbone_weights(
    backbone: nn.Module,
    state: Mapping[str, torch.Tensor],
    source: str,
    layout: str,
    rename: Callable[[str], str | None] | None = None,
) -> None:
    """Copy ``state`` into ``backbone`` after checking that its keys and shapes fit exactly.

    ``rename`` maps a key of the file's layout to the backbone's name for it, or to ``None`` for
    a tensor the backbone leaves out (the 1000-way ImageNet classifier the task heads replace).
    ``num_batches_tracked`` counters, which older files lack, may be missing. ``source`` names
    the file and ``layout`` the layout it must follow, for the error message.
    """
    mapped: StateDict = {}
    for key, value in state.items():
        name = rename(key) if rename is not None else key
        if name is not None:
            mapped[name] = value
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in mapped and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in mapped if k not in expected]
    wrong = [k for k in expected if k in mapped and mapped[k].shape != expected[k].shape]
    problems = []
    if missing:
        shown = ", ".join(f"{k} {_shape(expected[k])}" for k in missing[:_SHOWN])
        problems.append(f"{len(missing)} missing key(s): {shown}")
    if unexpected:
        shown = ", ".join(unexpected[:_SHOWN])
        problems.append(f"{len(unexpected)} unexpected key(s): {shown}")
    if wrong:
        shown = ", ".join(
            f"{k} expected {_shape(expected[k])}, got {_shape(mapped[k])}" for k in wrong[:_SHOWN]
        )
        problems.append(f"{len(wrong)} wrong shape(s): {shown}")
    if problems:
        raise ConfigError(
            f"the weights in {source} do not fit: {'; '.join(problems)}. The file must hold a "
            f"state_dict in the layout of {layout}"
        )
    backbone.load_state_dict(mapped, strict=False)  # strict up to num_batches_tracked
