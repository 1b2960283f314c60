"""Unpacking a downloaded tar archive safely: plain files and folders inside the target only."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath

from memaware.errors import DataError

__all__ = ["extract_tar"]


def _checked_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    """The members of ``tar``, or DataError at the first that is not a plain file or folder
    with a relative name that stays inside the target folder."""
    members = tar.getmembers()
    for member in members:
        parts = PurePosixPath(member.name).parts
        if not parts or member.name.startswith("/") or ".." in parts or "\\" in member.name:
            raise DataError(
                f"{archive} holds {member.name!r}, a name outside the folder it unpacks into; "
                "refusing to unpack it: delete the archive and download it again"
            )
        if not (member.isfile() or member.isdir()):
            raise DataError(
                f"{archive} holds {member.name!r}, which is a link or a special file, not a "
                "plain file or folder; refusing to unpack it: delete the archive and download "
                "it again"
            )
    return members


def _unpack(tar: tarfile.TarFile, members: list[tarfile.TarInfo], root: Path) -> None:
    """Write ``members`` under ``root``; files get the umask's permissions, not the archive's."""
    for member in members:
        target = root.joinpath(*PurePosixPath(member.name).parts)
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        if source is None:  # cannot happen for a regular file; kept for the type checker
            raise DataError(f"cannot read {member.name!r} from the archive")
        with source, target.open("wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)


def extract_tar(archive: Path, dest: Path) -> list[Path]:
    """Unpack ``archive`` (a tar, any compression) into ``dest``; return its top-level entries.

    Links, devices and names that are absolute or climb out with ``..`` are refused before
    anything is written. The members are unpacked into a temporary folder in ``dest`` and
    each top-level entry is renamed into ``dest`` only once all of them are out, so a failure
    leaves ``dest`` as it was.

    Raises:
        DataError: the archive is corrupt or holds a refused member, or ``dest`` already has
            one of its top-level entries, or cannot be written.
    """
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest, prefix=f".{archive.name}.") as tmp:
            with tarfile.open(archive) as tar:
                _unpack(tar, _checked_members(tar, archive), Path(tmp))
            tops = sorted(Path(tmp).iterdir())
            taken = [entry.name for entry in tops if (dest / entry.name).exists()]
            if taken:
                raise DataError(
                    f"cannot unpack {archive} into {dest}: {', '.join(taken)} already exists "
                    "there; move it away, or point --data-dir at it if it is complete"
                )
            for entry in tops:
                os.replace(entry, dest / entry.name)
            return [dest / entry.name for entry in tops]
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{archive} is not a complete tar archive ({exc}); delete it and download it again"
        ) from exc
    except OSError as exc:
        raise DataError(f"cannot unpack {archive} into {dest}: {exc.strerror or exc}") from exc
