"""Benchmark of the importance tracker: serving latency with and without it, and its throughput.

A model serves a stream of requests (real MNIST images in batches of seeded sizes 1-128, MLP
784-400-400-10, under ``torch.inference_mode``). Each round serves the stream once plain and once
with an :class:`~memaware.deploy.ImportanceTracker` attached, in alternating order. The tracked
side's time is the serving loop's alone: its worker counts concurrently, as it would beside a
server. To measure the steady state, not a queue that fills up after the clock stops:

* the stream is long enough that the tracker draws at least four of its batches
  (``batch_size`` = 256 by default) at the fraction measured: 8192 samples at 1.0, 10240 at
  0.1, 102400 at 0.01, so the worker's passes run inside the timed window;
* the tracker's queue holds an eighth of the 8192 (1024 samples), so that at fraction 1.0,
  where the worker cannot keep up, the stream runs at the pace the worker sets.

What the worker still holds when the loop ends (at most a queue and a batch) is counted before
the next side runs, untimed, so that it never runs beside the other side. The figures are
medians over rounds, each ratio the median of the per-round ratios (as
:func:`~memaware.bench.timing.paired` pairs them). Run: ``memaware bench deploy [--json]``.

* ``served_s_plain_F``, ``served_s_at_F``: seconds to serve the stream of fraction F without / with
  the tracker; ``latency_overhead_at_F``: their ratio (goal ≤ 1.10 at 0.1);
* ``serving_cpu_s_plain_F``, ``serving_cpu_s_at_F``, ``serving_cpu_overhead_at_F``: CPU seconds of
  the serving thread itself (``time.thread_time``), without / with the tracker, and their ratio:
  what the hooks cost the served calls, free of the machine's waits and of the worker's share;
* ``p99_request_s_plain_F``, ``p99_request_s_at_F``: the 99th percentile of one request's
  time (median over rounds), without / with the tracker;
* ``backlog_at_F``: samples drawn but not counted yet when the stream ended (median);
  ``counted_per_stream_at_F`` and ``stream_samples_at_F``: samples counted and served per stream;
* ``importance_samples_per_s``: samples the tracker's worker counts per second of its own
  passes at fraction 1.0 (while the stream is served beside it), and
  ``mas_samples_per_s``: :func:`memaware.importance.mas` on 2048 of the inputs in batches of
  256, alone, for comparison.

``--model cnn`` serves the importance benchmark's small CNN instead (seeded 3×32×32 inputs,
about a hundred times the MLP's time per request; streams an eighth as long, ``--batch-size``
to keep four batches in them), to show how the served call's fixed cost weighs on a heavier
model.
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

from memaware.bench.importance import cnn_inputs, cnn_model, mlp_inputs, mlp_model
from memaware.bench.timing import median_time, print_figures
from memaware.deploy import ImportanceTracker
from memaware.importance import batches, mas

FRACTIONS = (1.0, 0.1, 0.01)
#: samples of the shortest served stream, per model (the CNN's requests take ~100 times longer)
STREAMS = {"mlp": 8192, "cnn": 1024}
#: batches of the tracker each stream draws at least, so that its passes run while it serves
PASSES = 4


def request_stream(x: torch.Tensor, total: int, seed: int = 0) -> list[torch.Tensor]:
    """Requests of seeded sizes in 1..128 cycling through ``x``, ``total`` samples in all."""
    generator = torch.Generator().manual_seed(seed)
    requests, start = [], 0
    while start < total:
        size = min(int(torch.randint(1, 129, (1,), generator=generator)), total - start)
        index = torch.arange(start, start + size) % len(x)
        requests.append(x[index])
        start += size
    return requests


def serve(model: nn.Module, requests: list[torch.Tensor]) -> tuple[list[float], float]:
    """Seconds to answer each request, one after the other, and the CPU seconds this thread
    spent on them (what the hooks add to the serving thread itself, without the waits)."""
    times = []
    cpu = time.thread_time()
    with torch.inference_mode():
        for x in requests:
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return times, time.thread_time() - cpu


def _p99(times: list[float]) -> float:
    return float(np.quantile(times, 0.99))


def tracked_rounds(
    model: nn.Module,
    requests: list[torch.Tensor],
    fraction: float,
    rounds: int,
    *,
    max_pending: int = 1024,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Paired rounds of plain and tracked serving; medians of both sides, of their ratio, of the
    backlog, and the worker's samples per second."""
    plain_times: list[float] = []
    tracked_times: list[float] = []
    plain_p99: list[float] = []
    tracked_p99: list[float] = []
    plain_cpu: list[float] = []
    tracked_cpu: list[float] = []
    backlogs: list[int] = []
    tracker = ImportanceTracker(
        model, fraction=fraction, seed=0, max_pending=max_pending, batch_size=batch_size
    )
    serve(model, requests)  # warm-up of both sides
    with tracker:
        serve(model, requests)
        tracker.flush()
    busy = passes = counted = 0.0
    for round_ in range(rounds):

        def plain() -> None:
            times, cpu = serve(model, requests)
            plain_times.append(sum(times))
            plain_p99.append(_p99(times))
            plain_cpu.append(cpu)

        def tracked() -> None:
            tracker.attach()
            times, cpu = serve(model, requests)
            tracked_times.append(sum(times))
            tracked_p99.append(_p99(times))
            tracked_cpu.append(cpu)
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
        "cpu_ratio": statistics.median(t / p for t, p in zip(tracked_cpu, plain_cpu, strict=True)),
        "cpu_s_plain": statistics.median(plain_cpu),
        "cpu_s": statistics.median(tracked_cpu),
        "p99_s_plain": statistics.median(plain_p99),
        "p99_s": statistics.median(tracked_p99),
        "backlog": statistics.median(backlogs),
        "samples_per_s": counted / busy if busy else float("nan"),
        "counted_per_round": counted / rounds,
        "passes_per_round": passes / rounds,
    }


MODELS = ("mlp", "cnn")


def run(rounds: int = 15, model_name: str = "mlp", batch_size: int = 256) -> dict[str, Any]:
    """All figures of the benchmark as one dict (seconds, samples and ratios)."""
    if model_name == "mlp":
        model, x = mlp_model(), mlp_inputs().reshape(-1, 1, 28, 28)
    else:
        model, x = cnn_model(), cnn_inputs()
    model.eval()
    shortest = STREAMS[model_name]
    out: dict[str, Any] = {
        "model": model_name,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "max_pending": shortest // 8,
    }
    for fraction in FRACTIONS:
        total = max(shortest, round(PASSES * batch_size / fraction))
        requests = request_stream(x, total)
        figures = tracked_rounds(
            model, requests, fraction, rounds, max_pending=shortest // 8, batch_size=batch_size
        )
        label = f"{fraction:g}" if fraction < 1 else "1.0"
        out[f"stream_samples_at_{label}"] = total
        out[f"served_s_plain_{label}"] = figures["served_s_plain"]
        out[f"served_s_at_{label}"] = figures["served_s"]
        out[f"latency_overhead_at_{label}"] = figures["ratio"]
        out[f"serving_cpu_s_plain_{label}"] = figures["cpu_s_plain"]
        out[f"serving_cpu_s_at_{label}"] = figures["cpu_s"]
        out[f"serving_cpu_overhead_at_{label}"] = figures["cpu_ratio"]
        out[f"p99_request_s_plain_{label}"] = figures["p99_s_plain"]
        out[f"p99_request_s_at_{label}"] = figures["p99_s"]
        out[f"backlog_at_{label}"] = figures["backlog"]
        out[f"counted_per_stream_at_{label}"] = figures["counted_per_round"]
        if fraction == 1.0:
            out["importance_samples_per_s"] = figures["samples_per_s"]
    inputs = x[:2048]
    offline = median_time(lambda: mas(model, batches(inputs, 256)), repeats=max(3, rounds // 2))
    out["mas_s_2048"] = offline
    out["mas_samples_per_s"] = len(inputs) / offline
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="memaware bench deploy", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--rounds", type=int, default=15, help="paired rounds per fraction (median)"
    )
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="mlp",
        help="mlp: MLP 784-400-400-10 on real MNIST (default); cnn: the importance benchmark's "
        "small CNN on seeded 3x32x32 inputs",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="the tracker's batch_size (default 256, the tracker's own default)",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.batch_size < 1:
        parser.error("--rounds and --batch-size must be at least 1")
    print_figures(run(args.rounds, args.model, args.batch_size), as_json=args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
