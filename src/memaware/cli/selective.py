"""``memaware paper selective``: the selective-forgetting experiment (:mod:`memaware.paper.selective`)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from memaware.errors import MemawareError
from memaware.paper import selective
from memaware.training.config import TrainConfig
from memaware.training.experiment import prepare_out_dir


def _digits(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated digits, got {text!r}") from None


def add_parser(protocols: Any) -> None:
    """Add ``selective`` to the ``paper`` subcommands (``protocols``: their subparsers)."""
    parser = protocols.add_parser(
        "selective",
        help="selective forgetting: Ω from a deployed model's traffic (an ImportanceTracker) "
        "against Ω from the training set",
        description="MNIST -> Fashion-MNIST -> Animal-MNIST, task-incremental, MLP 784-400-400, "
        "MAS. At a deployment point the model serves unlabelled images that cover only part of "
        "what it learned (layout classes: some MNIST digits, after MNIST; layout tasks: MNIST "
        "only, after MNIST and Fashion-MNIST), an ImportanceTracker counts a fraction of them, "
        "and the next tasks are learned with the last task's Ω from that traffic, from its "
        "training set, or from traffic of everything (control), or without penalty. Reports "
        "accuracy on the served part, the part never served and the new tasks.",
    )
    add = parser.add_argument
    add(
        "--layout",
        choices=(*selective.LAYOUTS, "both"),
        default="both",
        help="classes: the traffic holds some digits of MNIST; tasks: it holds MNIST, not "
        "Fashion-MNIST; both (default)",
    )
    add(
        "--served",
        type=_digits,
        default=(0, 1, 2, 3, 4),
        help="the digits the classes layout serves (default 0,1,2,3,4)",
    )
    add("--seeds", type=int, default=3, help="run seeds 0..N-1 (default 3)")
    add("--lambda", dest="strength", type=float, default=1.0, help="MAS's λ (default 1)")
    add("--epochs", type=int, default=2, help="epochs per task (default 2)")
    add(
        "--n-train",
        type=int,
        default=10000,
        help="training images per task, the first of each set (default 10000)",
    )
    add(
        "--traffic",
        type=int,
        default=10000,
        help="images served at the deployment, from those never trained on (default 10000)",
    )
    add(
        "--fraction",
        type=float,
        default=0.1,
        help="share of the served images the tracker counts (default 0.1)",
    )
    add(
        "--out", type=Path, default=None, help="output folder (default runs/paper-selective-<time>)"
    )


def main(args: argparse.Namespace) -> int:
    """Run the experiment, write results.json, results.md and selective.png, print the tables."""
    if args.seeds < 1:
        raise MemawareError(f"--seeds must be at least 1, got {args.seeds}")
    config = selective.SelectiveConfig(
        layouts=selective.LAYOUTS if args.layout == "both" else (args.layout,),
        served=tuple(args.served),
        seeds=tuple(range(args.seeds)),
        strength=args.strength,
        n_train=args.n_train,
        traffic=args.traffic,
        fraction=args.fraction,
        train=TrainConfig(epochs=args.epochs),
    )
    config.check()
    out = args.out or Path("runs") / f"paper-selective-{time.strftime('%Y%m%d-%H%M%S')}"
    prepare_out_dir(out)
    results = selective.run(config, out)
    try:
        paths = selective.write(results, out)
    except (OSError, ValueError) as exc:
        raise MemawareError(f"cannot write the results to {out}/: {exc}") from exc
    print(selective.table(results))
    print(f"report written to {out}/: " + ", ".join(p.name for p in paths), file=sys.stdout)
    return 0
