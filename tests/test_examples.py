"""The README's own-training-loop example runs on real MNIST and keeps the first task."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
