"""Named benchmarks: a dataset and a way of cutting it into tasks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from memaware.data.scenarios import Scenario, permuted_scenario, split_scenario
from memaware.data.sources import load_dataset
from memaware.errors import ConfigError


def _split(dataset: str) -> Callable[..., Scenario]:
    def make(
        setting: str, data_dir: str | Path | None, download: bool, seed: int, n_tasks: int
    ) -> Scenario:
        return split_scenario(
            load_dataset(dataset, data_dir, download), setting, name=f"split-{dataset}"
        )

    return make


def _permuted(
    setting: str, data_dir: str | Path | None, download: bool, seed: int, n_tasks: int
) -> Scenario:
    return permuted_scenario(
        load_dataset("mnist", data_dir, download), setting, n_tasks, seed, "permuted-mnist"
    )


BENCHMARKS: dict[str, Callable[..., Scenario]] = {
    "split-mnist": _split("mnist"),
    "split-fashion-mnist": _split("fashion-mnist"),
    "permuted-mnist": _permuted,
}


def make_scenario(
    benchmark: str,
    setting: str = "task",
    *,
    data_dir: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
    n_tasks: int = 10,
) -> Scenario:
    """The task stream of ``benchmark`` in ``setting`` (``task``, ``domain`` or ``class``).

    ``seed`` and ``n_tasks`` matter for Permuted-MNIST only (its permutations and length).
    """
    if benchmark not in BENCHMARKS:
        raise ConfigError(
            f"unknown benchmark {benchmark!r}; known benchmarks: {', '.join(BENCHMARKS)}"
        )
    return BENCHMARKS[benchmark](setting, data_dir, download, seed, n_tasks)
