"""Resuming a run from its output folder: the config it ran with, against the options given again.

``memaware run|compare --resume OUT`` reads the config from the checkpoints in
``OUT/checkpoints``. Every option given with ``--resume`` must equal the saved one; an option
left at its default takes the saved value, so ``--resume OUT`` alone is enough.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from memaware.checkpoint.store import latest
from memaware.errors import ConfigError
from memaware.training.experiment import ExperimentSpec


def saved_run(out: Path) -> tuple[dict[str, Any], int]:
    """The config and checkpoint interval (``--checkpoint-every``) of the run checkpointed in
    ``out/checkpoints``; :class:`ConfigError` if it holds no good checkpoint."""
    root = out / "checkpoints"
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for folder in folders:
        try:
            found = latest(folder)
        except ConfigError:
            continue
        if found is not None:
            return dict(found.manifest["config"]), int(found.manifest.get("checkpoint_every", 0))
    raise ConfigError(
        f"--resume {out}: {root} holds no usable checkpoint (the run stopped before its first "
        "one, or this is not a run's output folder); start the run again with its options"
    )


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in json.loads(json.dumps(config)).items():
        if isinstance(value, dict) and key == "train":
            flat |= _flat(value, f"{key}.")
        else:
            flat[prefix + key] = value
    return flat


def resumed_spec(
    given: ExperimentSpec, defaults: ExperimentSpec, saved: Mapping[str, Any]
) -> ExperimentSpec:
    """The saved run's spec, once every field of ``given`` that differs from ``defaults`` (an
    option given on the command line) is checked to equal the saved one (ConfigError if not)."""
    wanted, default, kept = _flat(given.to_json()), _flat(defaults.to_json()), _flat(saved)
    different = [
        f"{key} = {wanted.get(key)!r} (the run's: {kept.get(key)!r})"
        for key in sorted(set(wanted) | set(kept))
        if wanted.get(key) != kept.get(key) and wanted.get(key) != default.get(key)
    ]
    if different:
        raise ConfigError(
            "--resume: options differ from the run's: "
            + "; ".join(different)
            + ". Omit them (the run's are used) or give the run's values"
        )
    return ExperimentSpec.from_json(saved)
