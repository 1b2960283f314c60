"""The offline stand-in for the MAS paper's object recognition: its preset, read and checked.

``paper/standin.json`` (under this folder; not a preset, so not beside the ``<benchmark>.json``
presets) fixes what the ``object-recognition-standin`` benchmark holds and how
``memaware paper table2|table3|figure3`` train on it without ``--data-root``::

    {"resolution": R,                      images are R×R RGB
     "tasks": {NAME: {"dataset": D, "classes": [...], "train_per_class": n, "test_per_class": m}},
     "sequence": [NAME, ...],              figure3's tasks, in order
     "pairs": [[A, B], ...],               table2's pairs (first A, then B)
     "table3_pairs": [[A, B], ...],        table3's pairs
     "training": {"epochs", "first_task_epochs", "batch_size", "lr", "first_task_lr",
                  "lr_decay_epochs", "validation_fraction"},
     "importance_batch_size": k,           inputs per batch of every importance pass
     "strengths": {METHOD: λ, ...},        each method's strength
     "options": {METHOD: {FIELD: V}},      other options of a method's (its Options' fields)
     "notes": {...}}                       why each value (free text, for the README and results)

D is one of :data:`DATASETS`. Every field is checked when the file is read
(:func:`load_standin_preset`); a bad one raises :class:`DataError` naming it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memaware.configs import PRESET_DIR
from memaware.errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "STANDIN_PRESET",
    "StandinPreset",
    "StandinTask",
    "StandinTraining",
    "load_standin_preset",
]

#: the datasets a stand-in task can be cut from (all 10 classes, grey images)
DATASETS = ("mnist", "fashion-mnist", "animal-mnist", "digits")
#: the preset shipped with memaware
STANDIN_PRESET = PRESET_DIR / "paper" / "standin.json"


@dataclass(frozen=True)
class StandinTask:
    """One task: ``classes`` of ``dataset`` (relabelled 0..k−1 in this order), subsampled.

    ``train_per_class`` training and ``test_per_class`` test images of each class, drawn
    without replacement from the dataset's own training and test splits.
    """

    name: str
    dataset: str
    classes: tuple[int, ...]
    train_per_class: int
    test_per_class: int


@dataclass(frozen=True)
class StandinTraining:
    """The stand-in's training budget (SGD with momentum 0.9 and step decay, as the paper's)."""

    epochs: int
    first_task_epochs: int
    batch_size: int
    lr: float
    first_task_lr: float
    lr_decay_epochs: int
    validation_fraction: float


@dataclass(frozen=True)
class StandinPreset:
    """The whole stand-in: its tasks, the sequences and pairs run on them, the training budget."""

    resolution: int
    tasks: dict[str, StandinTask]
    sequence: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    table3_pairs: tuple[tuple[str, str], ...]
    training: StandinTraining
    importance_batch_size: int
    strengths: dict[str, float]
    options: dict[str, dict[str, Any]]
    notes: dict[str, str]
    source: str = ""


def _fail(where: str, message: str) -> DataError:
    return DataError(f"stand-in preset {where}: {message}")


def _count(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(where, f"must be an integer >= 1, got {value!r}")
    return value


def _positive(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(where, f"must be a finite number, got {value!r}")
    if value <= 0:
        raise _fail(where, f"must be > 0, got {value!r}")
    return float(value)


def _object(where: str, value: Any, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"must be a JSON object, got {type(value).__name__}")
    missing, unknown = keys - set(value), set(value) - keys
    if missing or unknown:
        raise _fail(
            where,
            f"must have exactly the keys {', '.join(sorted(keys))}"
            + (f"; missing {', '.join(sorted(missing))}" if missing else "")
            + (f"; unknown {', '.join(sorted(unknown))}" if unknown else ""),
        )
    return value


def _task(name: str, value: Any) -> StandinTask:
    where = f"tasks.{name}"
    entry = _object(where, value, {"dataset", "classes", "train_per_class", "test_per_class"})
    if entry["dataset"] not in DATASETS:
        raise _fail(
            f"{where}.dataset", f"must be one of {', '.join(DATASETS)}, got {entry['dataset']!r}"
        )
    classes = entry["classes"]
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or len(set(classes)) != len(classes)
        or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 10 for c in classes)
    ):
        raise _fail(
            f"{where}.classes", f"must list two or more distinct classes 0..9, got {classes!r}"
        )
    return StandinTask(
        name,
        entry["dataset"],
        tuple(classes),
        _count(f"{where}.train_per_class", entry["train_per_class"]),
        _count(f"{where}.test_per_class", entry["test_per_class"]),
    )


def _names(
    where: str, value: Any, tasks: dict[str, StandinTask], length: int | None
) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or (length is not None and len(value) != length):
        size = f"{length} task names" if length is not None else "task names"
        raise _fail(where, f"must be a list of {size}, got {value!r}")
    unknown = [v for v in value if v not in tasks]
    if unknown:
        raise _fail(where, f"names unknown tasks {unknown}; the tasks are {', '.join(tasks)}")
    if len(set(value)) != len(value):
        raise _fail(where, f"names a task twice: {value}")
    return tuple(value)


def _pairs(where: str, value: Any, tasks: dict[str, StandinTask]) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise _fail(where, f"must be a non-empty list of [first, second] pairs, got {value!r}")
    pairs = [_names(f"{where}[{k}]", pair, tasks, 2) for k, pair in enumerate(value)]
    return tuple((a, b) for a, b in pairs)


def _training(value: Any) -> StandinTraining:
    keys = {
        "epochs",
        "first_task_epochs",
        "batch_size",
        "lr",
        "first_task_lr",
        "lr_decay_epochs",
        "validation_fraction",
    }
    entry = _object("training", value, keys)
    fraction = _positive("training.validation_fraction", entry["validation_fraction"])
    if fraction >= 1:
        raise _fail("training.validation_fraction", f"must be < 1, got {fraction}")
    return StandinTraining(
        epochs=_count("training.epochs", entry["epochs"]),
        first_task_epochs=_count("training.first_task_epochs", entry["first_task_epochs"]),
        batch_size=_count("training.batch_size", entry["batch_size"]),
        lr=_positive("training.lr", entry["lr"]),
        first_task_lr=_positive("training.first_task_lr", entry["first_task_lr"]),
        lr_decay_epochs=_count("training.lr_decay_epochs", entry["lr_decay_epochs"]),
        validation_fraction=fraction,
    )


def parse_standin_preset(data: Any, source: str = "") -> StandinPreset:
    """The preset in ``data`` (the parsed JSON), checked field by field."""
    keys = {
        "resolution",
        "tasks",
        "sequence",
        "pairs",
        "table3_pairs",
        "training",
        "importance_batch_size",
        "strengths",
        "options",
        "notes",
    }
    entry = _object("file", data, keys)
    if not isinstance(entry["tasks"], dict) or not entry["tasks"]:
        raise _fail("tasks", "must be a non-empty object of named tasks")
    tasks = {name: _task(name, value) for name, value in entry["tasks"].items()}
    strengths = entry["strengths"]
    if not isinstance(strengths, dict) or not all(isinstance(k, str) for k in strengths):
        raise _fail("strengths", "must be an object {method: strength}")
    for method, value in strengths.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise _fail(f"strengths.{method}", f"must be a number >= 0, got {value!r}")
    options = _method_options(entry["options"])
    notes = entry["notes"]
    if not isinstance(notes, dict) or not all(isinstance(v, str) for v in notes.values()):
        raise _fail("notes", "must be an object of texts")
    return StandinPreset(
        resolution=_count("resolution", entry["resolution"]),
        tasks=tasks,
        sequence=_names("sequence", entry["sequence"], tasks, None),
        pairs=_pairs("pairs", entry["pairs"], tasks),
        table3_pairs=_pairs("table3_pairs", entry["table3_pairs"], tasks),
        training=_training(entry["training"]),
        importance_batch_size=_count("importance_batch_size", entry["importance_batch_size"]),
        strengths={k: float(v) for k, v in strengths.items()},
        options=options,
        notes=dict(notes),
        source=source,
    )


def _method_options(value: Any) -> dict[str, dict[str, Any]]:
    """``options``: per method, fields its options dataclass accepts, checked by building it."""
    from memaware.methods import make_options  # here: the methods import the data layer

    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise _fail("options", "must be an object {method: {option: value}}")
    for method, fields in value.items():
        if "strength" in fields:
            raise _fail(f"options.{method}", "the strength belongs in strengths")
        try:
            make_options(method, **fields)
        except ConfigError as exc:
            raise _fail(f"options.{method}", str(exc)) from exc
    return {method: dict(fields) for method, fields in value.items()}


def load_standin_preset(path: Path = STANDIN_PRESET) -> StandinPreset:
    """Read and check the stand-in preset (default: the one shipped with memaware)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise DataError(f"cannot read the stand-in preset {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"the stand-in preset {path} is not valid JSON: {exc}") from exc
    return parse_standin_preset(data, str(path))
