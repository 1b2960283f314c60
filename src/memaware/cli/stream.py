"""``memaware stream``: a benchmark's tasks as one stream of small batches, read once.

Task-free methods (``task-free-mas``, ``online-finetune``) never see a boundary; methods that
need them (``mas``, ``ewc``, ``si``, ...) are given the true ones. Accuracy on every task is
measured at the true boundaries and written in the usual results format, with the plot of
accuracy over the stream (stream.png) and the importance updates marked on it
(:mod:`memaware.training.stream`, :mod:`memaware.reports.stream`).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memaware.data.benchmarks import BENCHMARKS
from memaware.data.streams import BOUNDARIES, DEFAULT_BLUR
from memaware.errors import MemawareError
from memaware.files import atomic_write_json
from memaware.methods import METHODS, TaskFree, parse_option
from memaware.models import MODELS
from memaware.reports import results_table
from memaware.reports.stream import write_stream_report
from memaware.training.config import OPTIMIZERS
from memaware.training.experiment import ExperimentError, prepare_out_dir
from memaware.training.stream import (
    BOUNDARY_METHODS,
    StreamConfig,
    StreamSpec,
    run_stream_experiment,
)

_DEFAULTS = StreamConfig()


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def add_stream_parser(commands: Any) -> None:
    """Add the ``stream`` command to the ``memaware`` subparsers ``commands``."""
    task_free = [n for n, cls in METHODS.items() if issubclass(cls, TaskFree)]
    parser = commands.add_parser(
        "stream",
        help="one pass over a benchmark's tasks as a stream without task boundaries",
        description="Present a benchmark's tasks as one stream of small batches, read once, "
        "with sharp or gradually mixed (blurred) boundaries. Task-free methods "
        f"({', '.join(task_free)}) never see the boundaries; {', '.join(BOUNDARY_METHODS)} are "
        "given the true ones. Accuracy on every task is measured at the true boundaries.",
        epilog="method options: --option METHOD.FIELD=VALUE, e.g. --option "
        "task-free-mas.hard_buffer=100 (see `memaware options task-free-mas`)",
    )
    add = parser.add_argument
    add(
        "--benchmark",
        default="split-mnist",
        help=f"one of {', '.join(b for b in BENCHMARKS if b != 'folders')}",
    )
    add(
        "--scenario",
        default="domain",
        help="domain (default: one shared head over each task's own labels) or class (one head "
        "over every class); a task-free stream has no task id to pick a head with, so the "
        "task-incremental scenario is refused",
    )
    add(
        "--methods",
        type=_names,
        default=["task-free-mas", "online-finetune", "mas"],
        help="comma list (default task-free-mas,online-finetune,mas)",
    )
    add(
        "--boundaries",
        choices=BOUNDARIES,
        default=_DEFAULTS.boundaries,
        help="sharp or blurred (default)",
    )
    add(
        "--blur",
        type=float,
        default=DEFAULT_BLUR,
        help="width of a blurred boundary's window, as a share of the smallest task, in (0, 1] "
        f"(default {DEFAULT_BLUR}): across it the share of the next task rises linearly",
    )
    add(
        "--batch-size",
        type=int,
        default=_DEFAULTS.batch_size,
        help=f"samples per incoming batch (default {_DEFAULTS.batch_size})",
    )
    add(
        "--passes",
        type=int,
        default=_DEFAULTS.passes,
        help=f"gradient steps per incoming batch (default {_DEFAULTS.passes})",
    )
    add("--lr", type=float, default=_DEFAULTS.lr, help=f"learning rate (default {_DEFAULTS.lr:g})")
    add(
        "--optimizer",
        choices=OPTIMIZERS,
        default=_DEFAULTS.optimizer,
        help=f"default {_DEFAULTS.optimizer}",
    )
    add("--momentum", type=float, default=0.0, help="SGD momentum (default 0)")
    add(
        "--seeds",
        type=int,
        default=1,
        help="run seeds 0..N-1 (default 1); each seed draws its own stream order",
    )
    add("--seed-list", type=_ints, default=None, help="run exactly these seeds (overrides --seeds)")
    add(
        "--lambda",
        dest="strength",
        type=float,
        default=None,
        help="strength of every regulariser (default: task-free-mas its own default, the "
        "boundary methods their task-loop presets)",
    )
    add(
        "--option",
        action="append",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help="one option of one method (repeatable)",
    )
    add("--model", choices=list(MODELS), default="mlp", help="the backbone (default mlp)")
    add("--hidden", type=_ints, default=[400, 400], help="MLP hidden sizes (default 400,400)")
    add(
        "--n-tasks",
        type=int,
        default=None,
        help="number of tasks of permuted-mnist, split-cifar10/100",
    )
    add(
        "--evaluations",
        type=int,
        default=_DEFAULTS.evaluations,
        help=f"points of the accuracy curve (default {_DEFAULTS.evaluations})",
    )
    add(
        "--validation",
        action="store_true",
        help="the validation stream: each task's test set replaced by a held-out tenth of its "
        "training data (what the defaults were tuned on)",
    )
    add("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")
    add(
        "--data-dir", default=None, help="folder with the dataset's files (see memaware run --help)"
    )
    add("--download", action="store_true", help="download the dataset if it is not installed")
    add(
        "--out", type=Path, default=None, help="output folder (default runs/stream-<benchmark>-...)"
    )
    add("--no-progress", action="store_true", help="hide progress bars")


def _spec(args: argparse.Namespace) -> StreamSpec:
    options: dict[str, dict[str, object]] = {}
    for text in args.option:
        name, field, value = parse_option(text)
        options.setdefault(name, {})[field] = value
    if args.seed_list is None and args.seeds < 1:
        raise MemawareError(f"--seeds must be at least 1, got {args.seeds}")
    seeds = args.seed_list if args.seed_list is not None else list(range(args.seeds))
    return StreamSpec(
        benchmark=args.benchmark,
        scenario=args.scenario,
        methods=tuple(args.methods),
        seeds=tuple(seeds),
        stream=StreamConfig(
            batch_size=args.batch_size,
            passes=args.passes,
            lr=args.lr,
            optimizer=args.optimizer,
            momentum=args.momentum,
            boundaries=args.boundaries,
            blur=args.blur,
            evaluations=args.evaluations,
            device=args.device,
        ),
        strength=args.strength,
        method_options=options,
        model=args.model,
        hidden=tuple(args.hidden),
        n_tasks=args.n_tasks,
        data_dir=args.data_dir,
        download=args.download,
        validation=args.validation,
    )


def _write(results: dict[str, Any], out: Path, report: bool) -> list[Path]:
    try:
        if report:
            return list(write_stream_report(results, out).values())
        atomic_write_json(out / "results.json", results)
        return [out / "results.json"]
    except (OSError, ValueError) as exc:
        raise MemawareError(f"cannot write the results to {out}/: {exc}") from exc


def stream_summary(results: dict[str, Any]) -> str:
    """One line per method: importance updates per seed and wall time."""
    lines = []
    for name, entry in results["methods"].items():
        updates = [len(run["stream"]["importance_updates"]) for run in entry["runs"]]
        seen = "never saw a boundary" if entry.get("task_free") else "given the true boundaries"
        lines.append(
            f"{name}: {seen}; importance updates per seed {updates}; "
            f"wall time {entry['wall_time_s']:.1f} s per seed"
        )
    return "\n".join(lines)


def stream_command(
    args: argparse.Namespace, progress: Callable[[], bool] = lambda: sys.stderr.isatty()
) -> int:
    """Run ``memaware stream`` from parsed arguments; bad input raises MemawareError first."""
    spec = _spec(args)
    spec.check()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or Path("runs") / f"stream-{spec.benchmark}-{spec.scenario}-{stamp}"
    created = prepare_out_dir(out)

    def checkpoint(partial: dict[str, Any]) -> None:  # each method's results, once it is done
        _write(partial, out, report=False)

    try:
        results = run_stream_experiment(
            spec, show_progress=not args.no_progress and progress(), on_result=checkpoint
        )
    except ExperimentError as exc:
        finished = list(exc.results["methods"])
        _write(exc.results, out, report=bool(finished))
        raise MemawareError(
            f"{exc}; results of the {len(finished)} finished method(s) "
            f"({', '.join(finished) or 'none'}) written to {out}/"
        ) from exc
    except MemawareError:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    paths = _write(results, out, report=True)
    print(results_table(results))
    print(stream_summary(results))
    print(f"\nreport written to {out}/: " + ", ".join(p.name for p in paths))
    return 0
