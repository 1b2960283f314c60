"""Resuming ``memaware sweep`` and ``memaware paper ...``: the command line, saved in OUT.

These commands run several experiments, each checkpointed in a folder of its own
(:class:`~memaware.checkpoint.CheckpointOptions`), so no one checkpoint's config describes the
whole command. Instead the first invocation saves its arguments in ``OUT/command.json``
(:func:`save_command`); ``--resume OUT`` parses them again and plans the same experiments
(:func:`resumed_args`). Every option given with ``--resume`` must equal the saved one; an option
left at its default takes the saved value, so ``--resume OUT`` alone is enough.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from memaware import __version__
from memaware.errors import ConfigError
from memaware.files import atomic_write_json

#: the file in OUT holding the command line of the first invocation
COMMAND_FILE = "command.json"

#: what may change between invocations: the folder, the checkpoint interval, progress bars
_FREE = ("out", "resume", "checkpoint_every", "no_progress")

Parse = Callable[[Sequence[str]], argparse.Namespace]


def save_command(out: Path, argv: Sequence[str]) -> None:
    """Save the arguments ``argv`` of a fresh invocation in ``out`` (atomically); ConfigError if
    ``out`` holds those of an earlier one (never overwritten: it is what resumes that one)."""
    if (out / COMMAND_FILE).exists():
        raise ConfigError(
            f"{out} holds an earlier run ({COMMAND_FILE}): resume it (--resume {out}), write to "
            "another output folder, or delete that folder"
        )
    try:
        atomic_write_json(out / COMMAND_FILE, {"memaware_version": __version__, "argv": list(argv)})
    except OSError as exc:
        raise ConfigError(f"cannot write {out / COMMAND_FILE}: {exc.strerror or exc}") from None


def _saved_argv(out: Path) -> list[str]:
    """The arguments :func:`save_command` saved in ``out``; ConfigError if there are none."""
    path = out / COMMAND_FILE
    try:
        argv = json.loads(path.read_text())["argv"]
    except FileNotFoundError:
        raise ConfigError(
            f"--resume {out}: {path} is missing (not the output folder of a sweep or paper "
            "command, or one from before they could resume); start it again with its options"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--resume {out}: cannot read {path} ({exc})") from None
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ConfigError(f"--resume {out}: {path} holds no command line")
    return argv


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def resumed_args(
    given: argparse.Namespace, head: Sequence[str], parse: Parse
) -> argparse.Namespace:
    """The options of the invocation saved in ``given.resume``, checked against those given.

    ``head`` is the command (``["sweep"]``, ``["paper", "table2"]``), which ``parse`` (the
    command's parser) reads with no options for the defaults. An option given that differs from
    its default must equal the saved one (ConfigError naming every one that does not); the
    folder is ``given.resume``; ``--checkpoint-every`` and ``--no-progress`` may change.
    """
    out: Path = given.resume
    if given.out is not None and given.out.resolve() != out.resolve():
        raise ConfigError(f"--out {given.out} and --resume {out}: a resumed run writes into OUT")
    argv = _saved_argv(out)
    if argv[: len(head)] != list(head):
        ran = argv[: 2 if argv[:1] == ["paper"] else 1]
        raise ConfigError(
            f"--resume {out} is a run of `memaware {' '.join(ran)}`, not "
            f"`memaware {' '.join(head)}`"
        )
    saved, defaults = parse(argv), parse(head)
    wanted, kept, default = vars(given), vars(saved), vars(defaults)
    different = [
        f"{_flag(key)} = {wanted.get(key)!r} (the run's: {kept.get(key)!r})"
        for key in sorted(set(wanted) | set(kept))
        if key not in _FREE
        and wanted.get(key) != kept.get(key)
        and wanted.get(key) != default.get(key)
    ]
    if different:
        raise ConfigError(
            "--resume: options differ from the run's: "
            + "; ".join(different)
            + ". Omit them (the run's are used) or give the run's values"
        )
    every: Any = given.checkpoint_every
    return argparse.Namespace(
        **kept
        | {
            "out": out,
            "resume": out,
            "checkpoint_every": saved.checkpoint_every if every is None else every,
            "no_progress": given.no_progress,
        }
    )
