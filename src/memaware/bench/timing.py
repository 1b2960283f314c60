"""Timing and peak-memory helpers: medians of repeats, and peak RSS of a fresh process."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired(
    numerator: Callable[[], object], denominator: Callable[[], object], repeats: int
) -> tuple[float, float, float]:
    """Median times of two functions run alternately, and the median of their paired ratios.

    Each round times both functions back to back, so a shared machine's drifts hit both sides
    of a ratio alike, and which one goes first alternates between rounds, so that neither
    always finds the caches the other left; the median of per-round ratios discards the rounds
    a burst of load spoiled. Returns (median numerator s, median denominator s, ratio).
    """
    numerator()
    denominator()
    tops: list[float] = []
    bottoms: list[float] = []
    sides = [(numerator, tops), (denominator, bottoms)]
    for round_ in range(repeats):
        for fn, times in sides if round_ % 2 == 0 else sides[::-1]:
            times.append(median_time(fn, repeats=1, warmup=0))
    ratio = statistics.median(t / b for t, b in zip(tops, bottoms, strict=True))
    return statistics.median(tops), statistics.median(bottoms), ratio


def print_figures(figures: dict[str, Any], as_json: bool) -> None:
    """Print a benchmark's figures: one JSON object, or one aligned ``name value`` line each."""
    if as_json:
        print(json.dumps(figures, indent=2))
        return
    width = max(map(len, figures), default=0) + 2
    for key, value in figures.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{key:{width}s}{shown}")


def peak_memory_bytes(module: str, variant: str) -> int:
    """Peak resident memory added by ``python -m <module> --peak-memory <variant>`` in a fresh process.

    The child prints one JSON line ``{"before": rss_bytes, "peak": max_rss_bytes}``; the difference is
    what the variant itself allocated at its peak (inputs and model already in ``before``).
    """
    proc = subprocess.run(
        [sys.executable, "-m", module, "--peak-memory", variant],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return int(data["peak"]) - int(data["before"])


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark of this process (Linux ``clear_refs``), so that
    :func:`peak_rss_bytes` reports the peak from now on. ``ru_maxrss`` cannot do this: it
    survives ``exec`` and would report the parent's peak."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux)."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """Peak resident set size since the last :func:`reset_peak_rss` (Linux)."""
    return _status_kib("VmHWM") * 1024
