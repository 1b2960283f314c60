"""Benchmark of the importance tracker: serving latency with and without it, and its throughput.

A model serves a fixed stream of requests (real MNIST images in batches of seeded sizes 1-128,
MLP 784-400-400-10, under ``torch.inference_mode``). Each round serves the stream once plain and
once with an :class:`~memaware.deploy.ImportanceTracker` attached, in alternating order. The
tracked side's time is the serving loop's alone: its worker counts concurrently, as it would
beside a server, and its queue holds at most ``MAX_PENDING`` = 1024 samples, so that at
fraction 1.0 the stream reaches the pace the worker sets. What the worker still holds when the
loop ends is counted before the next side runs, untimed, so that it never runs beside the other
side. The figures are medians over rounds, each ratio the median of the per-round ratios (as
:func:`~memaware.bench.timing.paired` pairs them). Run: ``memaware bench deploy [--json]``.

* ``served_s_plain``, ``served_s_at_F``: seconds to serve the stream without / with a tracker at
  fraction F; ``latency_overhead_at_F``: their ratio (goal ≤ 1.10 at 0.1);
* ``p99_request_s_plain_F``, ``p99_request_s_at_F``: the 99th percentile of one request's
  time (median over rounds), without / with the tracker;
* ``backlog_at_F``: samples the worker had not counted yet when the stream ended (median), so
  that a ratio bought by a growing queue shows;
* ``importance_samples_per_s``: samples the tracker's worker counts per second of its own
  passes at fraction 1.0 (while the stream is served beside it), and
  ``mas_samples_per_s``: :func:`memaware.importance.mas` on the same inputs in batches of 256,
  alone, for comparison.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from memaware.bench.importance import mlp_inputs, mlp_model
from memaware.bench.timing import median_time, print_figures
from memaware.deploy import ImportanceTracker
from memaware.importance import batches, mas

FRACTIONS = (1.0, 0.1, 0.01)
STREAM = 8192  # samples per served stream
#: the tracker's queue in the benchmark: small enough that a stream reaches the steady state in
#: which a worker that cannot keep up (fraction 1.0) sets the pace of serving
MAX_PENDING = 1024


def request_stream(x: torch.Tensor, total: int = STREAM, seed: int = 0) -> list[torch.Tensor]:
    """Requests of seeded sizes in 1..128 cycling through ``x``, ``total`` samples in all."""
    generator = torch.Generator().manual_seed(seed)
    requests, start = [], 0
    while start < total:
        size = min(int(torch.randint(1, 129, (1,), generator=generator)), total - start)
        index = torch.arange(start, start + size) % len(x)
        requests.append(x[index])
        start += size
    return requests


def serve(model: nn.Module, requests: list[torch.Tensor]) -> list[float]:
    """Seconds to answer each request, one after the other."""
    times = []
    with torch.inference_mode():
        for x in requests:
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return times


def _p99(times: list[float]) -> float:
    return float(np.quantile(times, 0.99))


def tracked_rounds(
    model: nn.Module,
    requests: list[torch.Tensor],
    fraction: float,
    rounds: int,
    niceness: int | None = None,
) -> dict[str, Any]:
    """Paired rounds of plain and tracked serving; medians of both sides, of their ratio, of the
    backlog, and the worker's samples per second."""
    plain_times: list[float] = []
    tracked_times: list[float] = []
    plain_p99: list[float] = []
    tracked_p99: list[float] = []
    backlogs: list[int] = []
    settings = {} if niceness is None else {"niceness": niceness}
    tracker = ImportanceTracker(
        model, fraction=fraction, seed=0, max_pending=MAX_PENDING, **settings
    )
    serve(model, requests)  # warm-up of both sides
    with tracker:
        serve(model, requests)
        tracker.flush()
    busy = passes = counted = 0.0
    for round_ in range(rounds):

        def plain() -> None:
            times = serve(model, requests)
            plain_times.append(sum(times))
            plain_p99.append(_p99(times))

        def tracked() -> None:
            tracker.attach()
            times = serve(model, requests)
            tracked_times.append(sum(times))
            tracked_p99.append(_p99(times))
            backlogs.append(tracker.pending)
            tracker.detach()  # counts the backlog, untimed, before the other side runs

        before = (tracker.busy_s, tracker.passes, tracker.counted)
        for side in (plain, tracked) if round_ % 2 == 0 else (tracked, plain):
            side()
        busy += tracker.busy_s - before[0]
        passes += tracker.passes - before[1]
        counted += tracker.counted - before[2]
    ratio = statistics.median(t / p for t, p in zip(tracked_times, plain_times, strict=True))
    return {
        "served_s_plain": statistics.median(plain_times),
        "served_s": statistics.median(tracked_times),
        "ratio": ratio,
        "p99_s_plain": statistics.median(plain_p99),
        "p99_s": statistics.median(tracked_p99),
        "backlog": statistics.median(backlogs),
        "samples_per_s": counted / busy if busy else float("nan"),
        "counted_per_round": counted / rounds,
        "passes_per_round": passes / rounds,
    }


def run(rounds: int = 7) -> dict[str, Any]:
    """All figures of the benchmark as one dict (seconds, samples and ratios)."""
    model, x = mlp_model(), mlp_inputs()
    model.eval()
    requests = request_stream(x.reshape(-1, 1, 28, 28))
    out: dict[str, Any] = {
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "requests": len(requests),
        "stream_samples": sum(len(r) for r in requests),
        "max_pending": MAX_PENDING,
    }
    for fraction in FRACTIONS:
        figures = tracked_rounds(model, requests, fraction, rounds)
        label = f"{fraction:g}" if fraction < 1 else "1.0"
        out[f"served_s_plain_{label}"] = figures["served_s_plain"]
        out[f"served_s_at_{label}"] = figures["served_s"]
        out[f"latency_overhead_at_{label}"] = figures["ratio"]
        out[f"p99_request_s_plain_{label}"] = figures["p99_s_plain"]
        out[f"p99_request_s_at_{label}"] = figures["p99_s"]
        out[f"backlog_at_{label}"] = figures["backlog"]
        out[f"counted_per_stream_at_{label}"] = figures["counted_per_round"]
        if fraction == 1.0:
            out["importance_samples_per_s"] = figures["samples_per_s"]
    inputs = x[:2048].reshape(-1, 1, 28, 28)
    offline = median_time(lambda: mas(model, batches(inputs, 256)), repeats=max(3, rounds // 2))
    out["mas_s_2048"] = offline
    out["mas_samples_per_s"] = len(inputs) / offline
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memaware bench deploy", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=7, help="paired rounds per fraction (median)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    print_figures(run(args.rounds), as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
