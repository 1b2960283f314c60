"""Tuned presets: per benchmark, scenario and method, the options a sweep chose and how it chose them.

One JSON file per benchmark (``<benchmark>.json``)::

    {"task": {"mas": {"strength": 0.1, "provenance": {...how it was tuned...}}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from memaware.errors import DataError

PRESET_DIR = Path(__file__).parent


def preset_path(benchmark: str, directory: Path = PRESET_DIR) -> Path:
    return directory / f"{benchmark}.json"


def load_presets(benchmark: str, directory: Path = PRESET_DIR) -> dict[str, Any]:
    """All presets of a benchmark (empty when it has none)."""
    path = preset_path(benchmark, directory)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"preset file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"preset file {path} must hold a JSON object")
    return data


def preset(
    benchmark: str, scenario: str, method: str, directory: Path = PRESET_DIR
) -> dict[str, Any] | None:
    """The preset of ``method`` on ``benchmark``/``scenario``, or ``None``."""
    entry = load_presets(benchmark, directory).get(scenario, {}).get(method)
    return entry if isinstance(entry, dict) else None


def save_preset(
    benchmark: str, scenario: str, method: str, entry: dict[str, Any], directory: Path = PRESET_DIR
) -> Path:
    """Write (or replace) one preset entry, keeping the file's other entries; atomic."""
    from memaware.files import atomic_write_json

    data = load_presets(benchmark, directory)
    data.setdefault(scenario, {})[method] = entry
    path = preset_path(benchmark, directory)
    atomic_write_json(path, data)
    return path
