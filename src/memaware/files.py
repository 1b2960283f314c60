"""Atomic file writes: a reader sees either the old file or the complete new one, never a half.

A low-level module that every room may import (data files, downloads, reports, importance
state). Every writer goes through `atomic_path`, which hands out a temporary file next to the
target and renames it over the target (`os.replace`, atomic within one file system) only once
the caller's block has finished without error. The data is fsynced before the rename so a crash cannot leave
a renamed but empty file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "StrPath",
    "atomic_directory",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
]

StrPath = str | os.PathLike[str]


@contextlib.contextmanager
def atomic_path(path: StrPath) -> Iterator[Path]:
    """Yield a temporary path in `path`'s folder; move it onto `path` if the block succeeds.

    The temporary file already exists (empty) when the block starts, so writers that open it
    for writing simply overwrite it. It keeps `path`'s suffix, for writers that pick a format
    from the file name. If the block raises, the temporary file is removed and `path` is left
    as it was.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}")
    # O_EXCL reserves the name; mode 0o666 lets the umask decide permissions as for a plain
    # open() (mkstemp would force 0o600 onto the final file).
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_directory(path: StrPath) -> Iterator[Path]:
    """Yield an empty temporary folder next to `path`; move it onto `path` if the block succeeds.

    Every file written into the folder is fsynced, then the folder is renamed to `path` and the
    parent folder fsynced, so `path` appears complete or not at all. An existing `path` is
    replaced: it is first renamed aside and deleted once the new folder is in place (a crash in
    between leaves neither, never a mixture). If the block raises, the temporary folder is
    removed and `path` is left as it was.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    tmp.mkdir()
    try:
        yield tmp
        for file in tmp.iterdir():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(tmp)
        old = target.with_name(f".{target.name}.{secrets.token_hex(4)}.old")
        replaced = target.exists()
        if replaced:
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    if replaced:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable. Folders cannot be opened this way on Windows.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: StrPath, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: StrPath, text: str) -> None:
    """Write `text` to `path` atomically, as UTF-8 with the newlines exactly as given."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: StrPath, obj: Any) -> None:
    """Write `obj` to `path` atomically as indented JSON.

    NaN and infinities raise ValueError (they are not JSON); serialisation happens before any
    file is touched, so a failure leaves no trace.
    """
    text = json.dumps(obj, indent=2, allow_nan=False, ensure_ascii=False)
    atomic_write_text(path, text + "\n")
