"""The checkpoint folders of one run: written atomically, checked completely before use.

A run's checkpoints live in one folder (``OUT/checkpoints/<method>-seed<seed>/``), one
sub-folder per checkpoint, ``step-<NNNNNNNNN>`` (the run's optimizer steps so far, nine
digits), holding ``manifest.json`` and the safetensors files it lists with the sha256 and size
of each. A checkpoint is written into a temporary folder and renamed into place once every file
is complete and fsynced (:func:`memaware.files.atomic_directory`); only then are the older ones
deleted, down to the newest :data:`KEEP`. No pickle anywhere: tensors in safetensors, the rest
in the manifest's JSON.

:func:`open_checkpoint` accepts a checkpoint only if its manifest says ``format``
``memaware-checkpoint`` of :data:`FORMAT_VERSION` written by this memaware version, and every
listed file exists with its size and sha256; anything else is a :class:`ConfigError` naming the
file and the way out. :func:`latest` skips a damaged newest checkpoint, with a warning, for the
one before it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from memaware import __version__
from memaware.errors import ConfigError
from memaware.files import atomic_directory

FORMAT = "memaware-checkpoint"
#: the layout and manifest version this memaware writes and reads
FORMAT_VERSION = 1
#: checkpoints kept per run (the newest ones)
KEEP = 2
MANIFEST = "manifest.json"
_PREFIX = "step-"


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped for an older one."""


def step_name(step: int) -> str:
    """The folder name of the checkpoint after ``step`` optimizer steps: ``step-000000042``."""
    return f"{_PREFIX}{step:09d}"


@dataclass(frozen=True)
class Checkpoint:
    """One checked checkpoint folder: its path and its manifest."""

    path: Path
    manifest: dict[str, Any]

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The tensors of the listed safetensors file ``name`` (on the CPU)."""
        try:
            return load_file(str(self.path / name))
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise ConfigError(f"{self.path / name} is not readable: {exc}; {_WAY_OUT}") from exc


_WAY_OUT = (
    "resume from an older checkpoint (delete this step-* folder) or start the run again "
    "(delete the <method>-seed<seed> folder)"
)


def write(
    folder: Path,
    step: int,
    files: Mapping[str, Mapping[str, torch.Tensor]],
    manifest: Mapping[str, Any],
) -> Path:
    """Write checkpoint ``step`` into ``folder`` atomically, then keep only the newest :data:`KEEP`.

    ``files`` maps safetensors file names to their tensors; ``manifest`` is the JSON to write
    with them (format, versions and the file list are added here). Returns the new folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / step_name(step)
    with atomic_directory(target) as tmp:
        listing = {}
        for name, tensors in files.items():
            # Own contiguous CPU copies: safetensors refuses tensors that share memory.
            plain = {k: t.detach().to("cpu", copy=True).contiguous() for k, t in tensors.items()}
            save_file(plain, str(tmp / name))
            listing[name] = {"sha256": _sha256(tmp / name), "bytes": (tmp / name).stat().st_size}
        full = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "memaware_version": __version__,
            **manifest,
            "files": listing,
        }
        text = json.dumps(full, indent=1, allow_nan=False, ensure_ascii=False)
        (tmp / MANIFEST).write_text(text + "\n", encoding="utf-8")
    _prune(folder)
    return target


def _prune(folder: Path) -> None:
    """Delete all but the newest :data:`KEEP` checkpoints, and temporary folders of crashed writes."""
    for old in _candidates(folder)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in folder.glob(f".{_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


def _candidates(folder: Path) -> list[Path]:
    """The ``step-*`` folders of ``folder``, newest first."""
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.iterdir()
        if p.is_dir() and p.name.startswith(_PREFIX) and p.name[5:].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]), reverse=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def open_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint in folder ``path``, checked; :class:`ConfigError` naming the fault otherwise."""
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{manifest_path} is missing: {path} is not a checkpoint; {_WAY_OUT}"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{manifest_path} is damaged ({exc}); {_WAY_OUT}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{manifest_path} is not a memaware checkpoint manifest; {_WAY_OUT}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"{manifest_path} is of checkpoint format {manifest.get('format_version')!r}, this "
            f"memaware reads format {FORMAT_VERSION}: resume with the memaware that wrote it"
        )
    if manifest.get("memaware_version") != __version__:
        raise ConfigError(
            f"{manifest_path} was written by memaware {manifest.get('memaware_version')}, this is "
            f"memaware {__version__}: resume with that version, or start the run again"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ConfigError(f"{manifest_path} lists no files; {_WAY_OUT}")
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise ConfigError(f"{file} is missing (listed in {manifest_path}); {_WAY_OUT}")
        if file.stat().st_size != entry.get("bytes") or _sha256(file) != entry.get("sha256"):
            raise ConfigError(
                f"{file} is damaged: its size or sha256 differs from {manifest_path}; {_WAY_OUT}"
            )
    return Checkpoint(path, manifest)


def latest(folder: Path) -> Checkpoint | None:
    """The newest good checkpoint in ``folder`` (``None`` if it holds none at all).

    A damaged newer checkpoint is skipped with a :class:`CheckpointWarning`; if every one is
    damaged, :class:`ConfigError` names the newest one's fault.
    """
    candidates = _candidates(folder)
    first_error: ConfigError | None = None
    for path in candidates:
        try:
            found = open_checkpoint(path)
        except ConfigError as exc:
            first_error = first_error or exc
            continue
        if first_error is not None:
            warnings.warn(
                f"skipped a damaged checkpoint ({first_error}); using {path}",
                CheckpointWarning,
                stacklevel=2,
            )
        return found
    if first_error is not None:
        raise ConfigError(f"no usable checkpoint in {folder}: {first_error}")
    return None


def resolve(path: Path) -> Checkpoint:
    """A ``step-*`` checkpoint folder, or a run's folder of them (its newest good checkpoint)."""
    if (path / MANIFEST).exists():
        return open_checkpoint(path)
    found = latest(path)
    if found is None:
        raise ConfigError(
            f"{path} is neither a checkpoint (step-* folder with {MANIFEST}) nor a folder of "
            "them (OUT/checkpoints/<method>-seed<seed>)"
        )
    return found
