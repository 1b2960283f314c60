"""Data files shipped inside installed Python packages: finding them and unpickling them."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import zlib
from pathlib import Path
from typing import Any

from memaware.errors import DataError

__all__ = ["package_file", "unpickle_gz"]


def package_file(package: str, *parts: str) -> Path | None:
    """Path of a data file inside an installed package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location).joinpath(*parts)
        if candidate.is_file():
            return candidate
    return None


def unpickle_gz(path: Path, reinstall: str, encoding: str = "ASCII") -> Any:
    """The object in the gzip-compressed pickle ``path``; DataError saying ``reinstall`` if unreadable."""
    # Pickles from an installed package are trusted exactly as much as its code would be.
    try:
        with gzip.open(path, "rb") as handle:
            return pickle.load(handle, encoding=encoding)
    except (
        OSError,
        EOFError,
        zlib.error,
        pickle.UnpicklingError,
        ImportError,
        AttributeError,
        ValueError,
        TypeError,
    ) as exc:
        raise DataError(f"cannot read {path} ({exc!r}); reinstall it: {reinstall}") from exc
