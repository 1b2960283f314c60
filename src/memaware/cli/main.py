"""The ``memaware`` command. ``memaware run`` with no options runs the default job:
Split-MNIST, task-incremental, finetune vs MAS, Hsu et al.'s protocol, seed 0."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from memaware.configs import PRESET_DIR
from memaware.data.benchmarks import BENCHMARKS
from memaware.data.scenarios import SETTINGS
from memaware.errors import MemawareError
from memaware.methods import METHODS
from memaware.reports import results_table, write_report
from memaware.training.experiment import ExperimentSpec, default_out_dir, run_experiment
from memaware.training.loop import TrainConfig
from memaware.training.sweep import sweep_strength, write_sweep


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memaware", description="Memory Aware Synapses and continual-learning baselines."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run methods on a benchmark and write a report")
    run.add_argument(
        "--benchmark",
        default="split-mnist",
        help=f"one of {', '.join(BENCHMARKS)} (default split-mnist)",
    )
    run.add_argument(
        "--scenario", default="task", help=f"one of {', '.join(SETTINGS)} (default task)"
    )
    run.add_argument(
        "--methods",
        type=_name_list,
        default=["finetune", "mas"],
        help=f"comma list of {', '.join(METHODS)}",
    )
    run.add_argument("--epochs", type=int, default=4, help="epochs per task (default 4)")
    run.add_argument(
        "--batch-size", type=int, default=128, help="training batch size (default 128)"
    )
    run.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    run.add_argument(
        "--lambda",
        dest="strength",
        type=float,
        default=None,
        help="penalty strength λ (default: the benchmark's tuned preset, else 1 as in the paper)",
    )
    run.add_argument(
        "--granularity",
        default="sample",
        help="MAS importance: sample (exact, paper) or batch (authors' code)",
    )
    run.add_argument(
        "--hidden", type=_int_list, default=[400, 400], help="MLP hidden sizes (default 400,400)"
    )
    run.add_argument(
        "--n-tasks", type=int, default=10, help="number of tasks of permuted-mnist (default 10)"
    )
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    run.add_argument(
        "--data-dir",
        default=None,
        help="folder with the dataset's IDX files (else the installed package)",
    )
    run.add_argument(
        "--download", action="store_true", help="download the dataset if it is not installed"
    )
    run.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default runs/<benchmark>-<scenario>-<time>)",
    )
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")

    bench = commands.add_parser("bench", help="speed benchmarks, measured side by side")
    bench.add_argument("target", choices=("importance",), help="what to benchmark")
    bench.add_argument(
        "rest", nargs=argparse.REMAINDER, help="options of the benchmark (see its --help)"
    )

    sweep = commands.add_parser(
        "sweep", help="tune a method's λ on a validation split and save it as a preset"
    )
    sweep.add_argument("--benchmark", default="split-mnist")
    sweep.add_argument("--scenario", default="task")
    sweep.add_argument("--method", default="mas")
    sweep.add_argument(
        "--values", type=_float_list, default=[0.01, 0.1, 1.0, 10.0], help="comma list of λ values"
    )
    sweep.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per value (default 3)")
    sweep.add_argument(
        "--validation",
        type=float,
        default=0.1,
        help="held-out fraction of each task's training data",
    )
    sweep.add_argument("--epochs", type=int, default=4)
    sweep.add_argument("--data-dir", default=None)
    sweep.add_argument(
        "--preset-dir",
        type=Path,
        default=None,
        help="where to write the preset (default: the package's)",
    )
    sweep.add_argument("--no-progress", action="store_true")
    return parser


def _run(args: argparse.Namespace) -> int:
    spec = ExperimentSpec(
        benchmark=args.benchmark,
        scenario=args.scenario,
        methods=tuple(args.methods),
        train=TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed
        ),
        strength=args.strength,
        granularity=args.granularity,
        hidden=tuple(args.hidden),
        n_tasks=args.n_tasks,
        data_dir=args.data_dir,
        download=args.download,
    )
    spec.check()
    out = args.out or default_out_dir(spec)
    results = run_experiment(spec, show_progress=not args.no_progress and sys.stderr.isatty())
    paths = write_report(results, out)
    print(results_table(results))
    print(f"\nreport written to {out}/: " + ", ".join(p.name for p in paths.values()))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    entry = sweep_strength(
        args.benchmark,
        args.scenario,
        args.method,
        args.values,
        list(range(args.seeds)),
        train=TrainConfig(epochs=args.epochs),
        validation_fraction=args.validation,
        data_dir=args.data_dir,
        show_progress=not args.no_progress and sys.stderr.isatty(),
    )
    path = write_sweep(
        args.benchmark, args.scenario, args.method, entry, args.preset_dir or PRESET_DIR
    )
    for value, accs in entry["provenance"]["validation_average_accuracy"].items():
        print(f"λ={value:>8}  validation accuracy " + " ".join(f"{a:.4f}" for a in accs))
    print(f"best λ={entry['strength']:g}; preset written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends with one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "bench":
            from memaware.bench.importance import main as bench_importance

            return bench_importance(args.rest)
    except MemawareError as exc:
        print(f"memaware: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
