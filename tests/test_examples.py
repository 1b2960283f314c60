"""The README's examples run: the own training loop, Lightning and the Hugging Face Trainer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_training_loop.py"


def test_own_training_loop_example() -> None:
    spec = importlib.util.spec_from_file_location("own_training_loop", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    first, second = module.main(n_train=2000, epochs=1)
    assert first > 0.97 and second > 0.9


def test_deploy_tracker_example(tmp_path: Path) -> None:
    path = EXAMPLE.with_name("deploy_tracker.py")
    spec = importlib.util.spec_from_file_location("deploy_tracker", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    first, second = module.main(n_train=1500, folder=tmp_path)
    assert first > 0.97 and second > 0.9
    assert (tmp_path / "deployed-omega.safetensors").is_file()


def run_example(name: str) -> object:
    path = EXAMPLE.parent / name
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    importlib.util.find_spec("lightning") is None,
    reason="the lightning extra is not installed (pip install 'memaware[lightning]'; make test does)",
)
def test_lightning_example_keeps_more_of_the_first_task() -> None:
    results = run_example("lightning_mas.py").main(n_train=1000, epochs=2)  # type: ignore[attr-defined]
    (plain_first, plain_second), (mas_first, mas_second) = results["no callback"], results["MAS"]
    assert plain_second > 0.9 and mas_second > 0.85
    assert mas_first > plain_first + 0.02  # measured 0.905 vs 0.857


@pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None,
    reason="the hf extra is not installed (pip install 'memaware[hf]'; make test does)",
)
def test_hf_trainer_example_learns_both_tasks() -> None:
    first, second = run_example("hf_trainer_mas.py").main(n_train=256, epochs=3)  # type: ignore[attr-defined]
    assert first > 0.9 and second > 0.9
