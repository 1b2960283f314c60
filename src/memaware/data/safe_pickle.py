"""Unpickling data files from outside the package without letting them run code.

A pickle can name any importable callable and have it called while loading; a data file only
needs containers, bytes and numpy arrays. :func:`load_data_pickle` therefore resolves only the
few globals that numpy arrays and protocol-2 bytes are rebuilt from, and refuses every other
global with a :class:`DataError` before anything is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from memaware.errors import DataError

__all__ = ["load_data_pickle"]


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol 2 uses it for bytes: ``text`` encoded as latin-1, nothing else."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(
            f"_codecs.encode is allowed only as protocol 2 writes bytes (a str and 'latin1'), "
            f"not with {type(text).__name__} and {encoding!r}"
        )
    return text.encode("latin1")


# ndarray.__reduce__ names numpy's private array rebuilder; taking it from there finds it on
# numpy 1 (numpy.core) and 2 (numpy._core) alike, and pickles written by either name it.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_ALLOWED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_bytes,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _Forbidden(pickle.UnpicklingError):
    """The pickle names a global that a data file has no reason to hold."""


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Forbidden(f"{module}.{name}") from None


def load_data_pickle(path: Path, what: str) -> Any:
    """The object pickled in ``path`` (bytes stay bytes), refusing globals other than numpy's.

    ``what`` says what the file should be, e.g. ``"a CIFAR-10 batch"``, for the messages.

    Raises:
        DataError: the file is missing, is not a complete pickle, or names a forbidden global.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return _DataUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Forbidden as exc:
        raise DataError(
            f"{path} is not {what}: it refers to {exc}, which a data file has no reason to "
            "hold, so it was not loaded (unpickling it could run code); get a fresh copy from "
            "the dataset's official site"
        ) from exc
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
    ) as exc:
        raise DataError(
            f"{path} is not {what}: it is corrupt or truncated ({exc!r}); get a fresh copy"
        ) from exc
