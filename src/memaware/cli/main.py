"""The ``memaware`` command.

* ``memaware run``: the default job (Split-MNIST, task-incremental, finetune vs MAS, Hsu et al.'s
  protocol, seed 0) or any benchmark/scenario/methods, one seed;
* ``memaware compare``: several methods (``all`` = every one that supports the scenario) over
  several seeds, with mean ± std and the paper's Figure 3 style bar chart;
* ``memaware sweep``: tune a method's strength on a validation split and store it as a preset;
  ``run``, ``compare``, ``sweep`` and ``paper`` (but ``selective``) checkpoint and ``--resume``
  (the latter two through :mod:`memaware.cli.resume`);
  ``memaware presets``: the stored presets as a markdown table;
* ``memaware options``: every method's options (``--option METHOD.FIELD=VALUE``), as a table;
* ``memaware models``: the backbones ``--model`` chooses from, as a table;
* ``memaware importance``: MAS's Ω of a checkpoint's model on one task's data, as an Importance
  file (:mod:`memaware.cli.importance`);
* ``memaware stream``: a benchmark's tasks as one stream of small batches with sharp or blurred
  boundaries, read once; task-free methods never see the boundaries (:mod:`memaware.cli.stream`);
* ``memaware paper mnist-demo``: the Split-MNIST demo of the MAS authors' repository, with the
  notebook's numbers next to memaware's (:mod:`memaware.paper.mnist_demo`);
* ``memaware paper table2|table3|figure3``: the MAS paper's object-recognition experiments on
  image folders, or on the offline stand-in (:mod:`memaware.paper.object_recognition`);
  ``memaware paper selective``: selective forgetting, Ω from a deployed model's traffic against
  Ω from the training set (:mod:`memaware.paper.selective`);
* ``memaware bench importance``: speed of the importance engine;
  ``memaware bench training``: a whole MAS run against a bare PyTorch script;
  ``memaware bench backbone``: MAS training steps and importance of EfficientNet-Lite0 and
  ResNet-18 against bare PyTorch;
  ``memaware bench deploy``: serving latency with and without an importance tracker.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from memaware.checkpoint import CheckpointOptions
from memaware.checkpoint.resume import resumed_spec, saved_run
from memaware.cli import importance as importance_cli
from memaware.cli import selective as selective_cli
from memaware.cli.resume import resumed_args, save_command
from memaware.cli.stream import add_stream_parser, stream_command
from memaware.configs import PRESET_DIR, load_presets, preset_path
from memaware.data.benchmarks import BENCHMARKS, check_benchmark
from memaware.data.scenarios import SETTINGS
from memaware.distributed import (
    is_main_process,
    launched_by_torchrun,
    process_group,
    value_of_main,
)
from memaware.errors import ConfigError, MemawareError
from memaware.files import atomic_write_json
from memaware.methods import METHODS, method_class, option_docs, parse_option
from memaware.methods.options import PRESET_KEY, show
from memaware.models import MODELS, models_table
from memaware.paper import mnist_demo, object_recognition
from memaware.paper.throughput import measure_throughput
from memaware.reports import results_table, write_report
from memaware.reports.markdown import presets_table
from memaware.training.config import OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig
from memaware.training.experiment import (
    ExperimentError,
    ExperimentSpec,
    default_out_dir,
    prepare_out_dir,
    run_experiment,
)
from memaware.training.sweep import check_sweep, sweep_strength, value_checkpoints, write_sweep


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


OPTIONS_HELP = """\
method options: --option METHOD.FIELD=VALUE sets any field of a method's options (repeatable),
e.g. --option mas.heads=current --option ewc.labels=empirical; VALUE is read by the field's type
(none, true/false, a number, a choice). `memaware options` lists every method's fields."""


def _add_option_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="METHOD.FIELD=VALUE",
        help="set one option of one method (repeatable; see `memaware options`)",
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        choices=list(MODELS),
        default="mlp",
        help="the shared backbone, with one head per task on top: "
        + "; ".join(f"{name}: {entry.summary}" for name, entry in MODELS.items())
        + " (default mlp; `memaware models` lists inputs, sizes and preprocessing)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        metavar="PATH",
        help="state_dict of the backbone (.pth, .pt or .safetensors), checked before any data "
        "are read: torchvision's layout for alexnet (its classifier.6 is dropped), the "
        "efficientnet-lite-pytorch layout for efficientnet-lite0 (default: its ImageNet "
        "weights), the backbone's own state_dict for mlp, cnn and resnet18",
    )


def _method_options(texts: Sequence[str]) -> dict[str, dict[str, object]]:
    """``--option`` texts as ``{method: {field: value}}`` (later ones win); ConfigError if bad."""
    options: dict[str, dict[str, object]] = {}
    for text in texts:
        name, field, value = parse_option(text)
        options.setdefault(name, {})[field] = value
    return options


def _add_experiment_options(parser: argparse.ArgumentParser, methods: list[str]) -> None:
    add = parser.add_argument
    add("--benchmark", default="split-mnist", help=f"one of {', '.join(BENCHMARKS)}")
    add("--scenario", default="task", help=f"one of {', '.join(SETTINGS)} (default task)")
    add(
        "--methods",
        type=_name_list,
        default=methods,
        help=f"comma list of {', '.join(METHODS)}, or all",
    )
    add("--epochs", type=int, default=4, help="epochs per task (default 4)")
    add("--batch-size", type=int, default=128, help="training batch size (default 128)")
    add("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    add(
        "--optimizer",
        choices=OPTIMIZERS,
        default="adam",
        help="adam (default) or sgd; one optimizer is kept for the whole stream",
    )
    add("--momentum", type=float, default=0.0, help="SGD momentum (default 0; the authors: 0.9)")
    add(
        "--weight-decay",
        type=float,
        default=0.0,
        help="L2 weight decay of the stepped parameters (default 0)",
    )
    add(
        "--lr-schedule",
        choices=SCHEDULES,
        default=None,
        help="learning rate over a task's epochs: constant (default), step (times "
        "--lr-decay-factor every --lr-decay-epochs, as the MAS authors' code; the default when "
        "--lr-decay-epochs is given) or cosine (lr·½(1 + cos(π·epoch/epochs)))",
    )
    add(
        "--lr-decay-epochs",
        type=int,
        default=None,
        metavar="N",
        help="period of the step schedule: multiply the learning rate by --lr-decay-factor "
        "every N epochs of a task",
    )
    add(
        "--lr-decay-factor",
        type=float,
        default=0.1,
        help="factor of --lr-decay-epochs (default 0.1)",
    )
    add("--grad-clip", type=float, default=None, help="clip the gradient norm to this (default off)")
    add(
        "--device",
        default="cpu",
        help="auto (CUDA, else MPS, else CPU), cpu (default), cuda, cuda:N or mps",
    )
    add(
        "--amp",
        choices=PRECISIONS,
        default="none",
        help="mixed-precision training: bf16 or fp16 autocast (fp16 with loss scaling); "
        "default none",
    )
    add(
        "--workers",
        type=int,
        default=0,
        help="DataLoader worker processes for datasets read from disk (default 0)",
    )
    add(
        "--first-task-lr",
        type=float,
        default=None,
        help="learning rate of the first task (default --lr)",
    )
    add(
        "--first-task-epochs",
        type=int,
        default=None,
        help="epochs of the first task (default --epochs)",
    )
    add(
        "--select-best-epoch",
        action="store_true",
        help="hold out --validation of each task's training data and end each task with the "
        "weights of its best validation epoch",
    )
    add(
        "--validation",
        type=float,
        default=0.1,
        help="held-out share of each task's training data for --select-best-epoch (default 0.1)",
    )
    add(
        "--lambda",
        dest="strength",
        type=float,
        default=None,
        help="strength of every regulariser (default: each method's tuned preset, else its default)",
    )
    add(
        "--granularity",
        default=None,
        help="shorthand for --option mas.granularity=VALUE: sample (exact per-sample Ω, default) "
        "or batch (Ω from the gradients of batch sums, the authors' estimator); only the "
        "granularity changes (F stays what mas.heads says; --option mas.importance_preset=authors "
        "sets both)",
    )
    _add_option_argument(parser)
    _add_model_arguments(parser)
    add("--hidden", type=_int_list, default=[400, 400], help="MLP hidden sizes (default 400,400)")
    add(
        "--n-tasks",
        type=int,
        default=None,
        help="number of tasks: of permuted-mnist (default 10), or of equal tasks of consecutive "
        "classes for split-cifar10 (default 5) and split-cifar100 (default 10; 20 gives 5 "
        "classes each)",
    )
    add(
        "--data-dir",
        default=None,
        help="folder with the dataset's files: the four IDX files of (Fashion-)MNIST (default: "
        "the installed package), or for CIFAR the folder holding cifar-10-batches-py/ or "
        "cifar-100-python/ (or their .tar.gz, unpacked there), or that folder itself "
        "(default ~/.cache/memaware/cifar10, .../cifar100)",
    )
    add(
        "--download",
        action="store_true",
        help="download the dataset if it is not installed (CIFAR: into --data-dir)",
    )
    add(
        "--data-root",
        default=None,
        help="the folders benchmark: the folder holding one image folder per task, "
        "<name>/{train,val,test}/<class>/<image>",
    )
    add(
        "--tasks",
        type=_name_list,
        default=[],
        help="the folders benchmark: comma list of the folders under --data-root, one task each, "
        "in order",
    )
    add(
        "--augment",
        action="store_true",
        help="the folders benchmark: random resized crops and flips of the training images "
        "(evaluation and importance always see the model's resize and centre crop)",
    )
    add(
        "--out",
        type=Path,
        default=None,
        help="output folder (default runs/<command>-<benchmark>-...)",
    )
    add(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help="checkpoint each method and seed into OUT/checkpoints after every task and every N "
        "optimizer steps (default 0: after every task only; with --resume: the run's)",
    )
    add(
        "--resume",
        type=Path,
        default=None,
        metavar="OUT",
        help="go on with the run in output folder OUT from its newest good checkpoints "
        "(finished methods are not trained again); options given must equal the run's, "
        "omitted ones are read from it",
    )
    add("--no-progress", action="store_true", help="hide progress bars")


def _add_checkpoint_arguments(parser: argparse.ArgumentParser, where: str) -> None:
    """``--checkpoint-every`` and ``--resume`` of a command of several runs (sweep, paper)."""
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help=f"checkpoint each run into {where} after every task and every N optimizer steps "
        "(default 0: after every task only; with --resume: the run's)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="OUT",
        help="go on with the command in output folder OUT (its command.json and checkpoints; "
        "finished runs are not trained again); options given must equal the run's, omitted "
        "ones are read from it",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memaware", description="Memory Aware Synapses and continual-learning baselines."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run", help="run methods on a benchmark (one seed) and write a report", epilog=OPTIONS_HELP
    )
    _add_experiment_options(run, ["finetune", "mas"])
    run.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    compare = commands.add_parser(
        "compare", help="compare methods over several seeds", epilog=OPTIONS_HELP
    )
    _add_experiment_options(compare, ["all"])
    compare.add_argument("--seeds", type=int, default=3, help="run seeds 0..N-1 (default 3)")

    sweep = commands.add_parser(
        "sweep", help="tune a method's λ on a validation split, save a preset", epilog=OPTIONS_HELP
    )
    sweep.add_argument("--benchmark", default="split-mnist")
    sweep.add_argument("--scenario", default="task")
    sweep.add_argument("--method", default="mas")
    sweep.add_argument(
        "--values", type=_float_list, default=[0.01, 0.1, 1.0, 10.0], help="λ values"
    )
    sweep.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per value (default 3)")
    sweep.add_argument(
        "--validation", type=float, default=0.1, help="held-out share of training data"
    )
    sweep.add_argument("--epochs", type=int, default=4)
    sweep.add_argument("--data-dir", default=None)
    _add_model_arguments(sweep)
    sweep.add_argument("--preset-dir", type=Path, default=None, help="where to write the preset")
    sweep.add_argument(
        "--replace",
        action="store_true",
        help="forget the values a stored preset tried (default: merge grids of the same protocol)",
    )
    _add_option_argument(sweep)
    sweep.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run folder: command.json and checkpoints/lambda-<value>/<method>-seed<seed> "
        "(default runs/sweep-<benchmark>-<scenario>-<method>-<time>)",
    )
    _add_checkpoint_arguments(sweep, "OUT/checkpoints/lambda-<value>/<method>-seed<seed>")
    sweep.add_argument("--no-progress", action="store_true")

    options = commands.add_parser(
        "options", help="every method's options, their types, defaults and meaning (markdown)"
    )
    options.add_argument("methods", nargs="*", help="only these methods (default all)")

    presets = commands.add_parser("presets", help="print the tuned presets as a markdown table")
    presets.add_argument(
        "--benchmark", action="append", help="only this benchmark (repeatable; default all)"
    )
    presets.add_argument("--preset-dir", type=Path, default=None, help="where presets are read")

    commands.add_parser(
        "models", help="the models --model chooses from: inputs, sizes, weights, preprocessing"
    )

    add_stream_parser(commands)
    importance_cli.add_parser(commands)

    paper = commands.add_parser("paper", help="the MAS authors' own experiments, runnable")
    protocols = paper.add_subparsers(dest="protocol", required=True)
    demo = protocols.add_parser(
        "mnist-demo",
        help="the Split-MNIST demo of the authors' repository (Demo.ipynb), against its numbers",
        description="Tasks {1,2},{3,4},{5,6},{7,8},{9,0}, MLP 784-256-256 with a 2-way head per "
        "task, SGD momentum 0.9, batches of 150; task 1 fine-tuned at lr 0.01 for 10 epochs, then "
        "MAS (λ = 1, Ω by the authors' preset) at lr 0.001 for 20 epochs per task, each task's "
        "best epoch chosen on a validation split of its training data; finetuning under the same "
        "protocol for reference.",
    )
    demo.add_argument(
        "--out", type=Path, default=None, help="output folder (default runs/paper-...-<time>)"
    )
    demo.add_argument("--seeds", type=int, default=3, help="run seeds 0..N-1 (default 3)")
    _add_checkpoint_arguments(demo, "OUT/checkpoints/<method>-seed<seed>")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    for command in object_recognition.COMMANDS:
        _add_object_recognition_parser(protocols, command)
    selective_cli.add_parser(protocols)

    bench = commands.add_parser("bench", help="speed benchmarks, measured side by side")
    bench.add_argument(
        "target",
        choices=("importance", "training", "backbone", "deploy"),
        help="importance: the importance engine; training: a whole MAS run against a bare script; "
        "backbone: MAS steps and importance of efficientnet-lite0 and resnet18 against bare "
        "PyTorch; deploy: serving latency with an ImportanceTracker attached",
    )
    bench.add_argument(
        "rest", nargs=argparse.REMAINDER, help="options of the benchmark (see its --help)"
    )
    return parser


_OBJECT_RECOGNITION_HELP = {
    "table2": "Table 2: two-task sequences A -> B with every method of the paper",
    "table3": "Table 3: MAS and l-MAS with Ω from the first task's train data, test data or both",
    "figure3": "Figure 3: a sequence of tasks with every method (bar charts of accuracy and drop)",
}


def _add_object_recognition_parser(protocols: Any, command: str) -> None:
    """``memaware paper table2|table3|figure3``: the paper's protocol, overridable for a quick run."""
    parser = protocols.add_parser(
        command,
        help=_OBJECT_RECOGNITION_HELP[command],
        description=_OBJECT_RECOGNITION_HELP[command] + ". With --data-root: the paper's "
        "protocol on image folders <root>/<name>/{train,val,test}/<class>/<image> (AlexNet with "
        "--weights, else EfficientNet-Lite0; SGD momentum 0.9, batches of 200, 100 epochs, lr "
        "4e-4 for the first task and 8e-4 after, x0.1 every 54 epochs, λ = 1, best epoch on "
        "validation). Without: the offline stand-in (MNIST, Fashion-MNIST, Animal-MNIST and "
        "scikit-learn's digits as small RGB tasks, src/memaware/configs/paper/standin.json).",
        epilog=OPTIONS_HELP,
    )
    add = parser.add_argument
    pairs = command != "figure3"
    add("--data-root", default=None, help="the folder holding one image folder per task")
    add(
        "--tasks",
        type=_name_list,
        action="append",
        default=[],
        help="a pair A,B (repeat for more pairs)"
        if pairs
        else "the sequence t1,t2,...,tn; default without --data-root: the stand-in's",
    )
    if command != "table3":
        add(
            "--methods",
            type=_name_list,
            default=None,
            help="comma list of methods (default: the paper's finetune, lwf, ebll, mean-imm, "
            "mode-imm, ewc, si, mas)",
        )
    add("--seeds", type=int, default=1, help="run seeds 0..N-1 (default 1)")
    _add_option_argument(parser)
    _add_model_arguments(parser)
    parser.set_defaults(model=None)
    parser.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random resized crops and flips of the training images (default: on with "
        "--data-root; the stand-in's tensors are not augmented)",
    )
    add("--epochs", type=int, default=None, help="epochs of every task (default: the protocol's)")
    add("--first-task-epochs", type=int, default=None, help="epochs of the first task")
    add("--lr", type=float, default=None, help="learning rate of every task")
    add("--first-task-lr", type=float, default=None, help="learning rate of the first task")
    add("--lr-decay-epochs", type=int, default=None, help="period of the x0.1 step decay")
    add("--batch-size", type=int, default=None, help="training batch size")
    add("--device", default=None, help="default: auto with --data-root, cpu for the stand-in")
    add("--amp", choices=PRECISIONS, default=None, help="mixed-precision training (default none)")
    add("--workers", type=int, default=None, help="DataLoader workers for image folders")
    add(
        "--out", type=Path, default=None, help="output folder (default runs/paper-<command>-<time>)"
    )
    _add_checkpoint_arguments(
        parser, "its own folder's checkpoints/<method>-seed<seed> (figure3: OUT's)"
    )
    add("--no-progress", action="store_true", help="hide progress bars")


#: the commands that run under torchrun (one process per rank; rank 0 prints and writes)
TORCHRUN_COMMANDS = ("run", "compare", "importance", "paper")


def _experiment(args: argparse.Namespace, seeds: Sequence[int], command: str) -> int:
    spec = _spec(args, seeds)
    every, out = args.checkpoint_every, args.out
    if args.resume is not None:
        spec, every, out = _resumed(args, spec, command)
    # Under torchrun the group sets each rank's current CUDA device, which the spec's "cuda"
    # then names; the spec (and what results.json and the checkpoints record) keeps the option.
    with process_group(spec.train.device):
        out = value_of_main(out or default_out_dir(spec, command))  # one clock names it
        checkpoints = CheckpointOptions(out / "checkpoints", every or 0, args.resume is not None)
        results, paths = _run_and_write(spec, out, _shows_progress(args), checkpoints=checkpoints)
        if is_main_process():
            print(results_table(results))
            print(f"\nreport written to {out}/: " + ", ".join(p.name for p in paths))
    return 0


def _resumed(
    args: argparse.Namespace, given: ExperimentSpec, command: str
) -> tuple[ExperimentSpec, int, Path]:
    """``--resume OUT``: the run's spec (checked against the options given), interval and folder."""
    out: Path = args.resume
    if args.out is not None and args.out.resolve() != out.resolve():
        raise ConfigError(f"--out {args.out} and --resume {out}: a resumed run writes into OUT")
    config, every = saved_run(out)
    defaults = build_parser().parse_args([command])
    seeds = [defaults.seed] if command == "run" else range(defaults.seeds)
    spec = resumed_spec(given, _spec(defaults, seeds), config)
    return spec, every if args.checkpoint_every is None else args.checkpoint_every, out


def _spec(args: argparse.Namespace, seeds: Sequence[int]) -> ExperimentSpec:
    """The experiment the options of ``memaware run`` / ``compare`` describe."""
    granularity = [] if args.granularity is None else [f"mas.granularity={args.granularity}"]
    return ExperimentSpec(
        benchmark=args.benchmark,
        scenario=args.scenario,
        methods=tuple(args.methods),
        seeds=tuple(seeds),
        train=TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            optimizer=args.optimizer,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            lr_schedule=args.lr_schedule
            or ("step" if args.lr_decay_epochs is not None else "constant"),
            lr_decay_epochs=args.lr_decay_epochs,
            lr_decay_factor=args.lr_decay_factor,
            grad_clip=args.grad_clip,
            device=args.device,
            amp=args.amp,
            workers=args.workers,
            first_task_lr=args.first_task_lr,
            first_task_epochs=args.first_task_epochs,
            select_best_epoch=args.select_best_epoch,
            validation_fraction=args.validation,
        ),
        strength=args.strength,
        method_options=_method_options([*granularity, *args.option]),
        model=args.model,
        weights=args.weights,
        hidden=tuple(args.hidden),
        n_tasks=args.n_tasks,
        data_dir=args.data_dir,
        download=args.download,
        data_root=args.data_root,
        tasks=tuple(args.tasks),
        augment=args.augment,
    )


def _run_and_write(
    spec: ExperimentSpec,
    out: Path,
    show_progress: bool,
    annotate: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    checkpoints: CheckpointOptions | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Check ``spec`` and ``out``, run it, write the report; the results and the files written.

    ``annotate`` adds to the finished results before they are written; ``checkpoints`` says
    where and how often the run is checkpointed and whether it resumes. Bad input fails before
    any work; a method that fails later leaves results.json with the finished methods and
    ``failed``, and raises :class:`MemawareError` naming them. Under torchrun only rank 0 writes
    (the others return no paths).
    """
    spec.check()
    writes = is_main_process()
    created = prepare_out_dir(out) if writes else False

    def checkpoint(partial: dict[str, Any]) -> None:  # each method's results, once it is done
        if writes:
            _write(partial, out, report=False)

    try:
        results = run_experiment(
            spec, show_progress=show_progress, on_result=checkpoint, checkpoints=checkpoints
        )
    except ExperimentError as exc:
        finished = list(exc.results["methods"])
        if writes:
            _write(exc.results, out, report=bool(finished))
        raise MemawareError(
            f"{exc}; results of the {len(finished)} finished method(s) "
            f"({', '.join(finished) or 'none'}) written to {out}/"
        ) from exc
    except MemawareError:
        if created:  # failed before training (bad data): leave no empty folder behind
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    if annotate is not None:
        results = annotate(results)
    return results, _write(results, out, report=True) if writes else []


def _checkpoints(args: argparse.Namespace, root: Path) -> CheckpointOptions:
    """Where and how often one run of a sweep or paper command is checkpointed; resumes?"""
    return CheckpointOptions(root, args.checkpoint_every or 0, args.resume is not None)


def _start(
    args: argparse.Namespace, argv: Sequence[str], out: Path, runs: Sequence[CheckpointOptions]
) -> None:
    """Before the first run of a sweep or paper command: refuse a fresh one whose runs' folders
    hold checkpoints, create ``out`` and, unless resuming, save the command line there (rank 0
    alone under torchrun)."""
    if not is_main_process():
        return
    for checkpoints in runs:
        checkpoints.check_fresh()
    prepare_out_dir(out)
    if args.resume is None:
        save_command(out, argv)


def _paper(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``memaware paper mnist-demo|table2|table3|figure3``; ``--resume OUT`` takes the options
    saved in OUT, and a fresh run saves ``argv`` (the whole command line) in its output folder.

    mnist-demo: run the demo, write the report and the notebook comparison.
    """
    if args.resume is not None:
        args = resumed_args(args, ["paper", args.protocol], build_parser().parse_args)
    if args.protocol in object_recognition.COMMANDS:
        return _object_recognition(args, argv)
    if args.seeds < 1:
        raise MemawareError(f"--seeds must be at least 1, got {args.seeds}")
    spec = mnist_demo.demo_spec(range(args.seeds))
    spec.check()
    with process_group(spec.train.device):
        out = value_of_main(args.out or default_out_dir(spec, "paper"))
        checkpoints = _checkpoints(args, out / "checkpoints")
        _start(args, argv, out, [checkpoints])
        show_progress = _shows_progress(args)
        results, paths = _run_and_write(
            spec, out, show_progress, mnist_demo.with_reference, checkpoints
        )
        if not is_main_process():
            return 0
    try:
        paths.append(mnist_demo.write_comparison(results, out))
    except OSError as exc:
        raise MemawareError(f"cannot write the comparison to {out}/: {exc}") from exc
    print(results_table(results))
    print(mnist_demo.comparison_report(results))
    print(f"report written to {out}/: " + ", ".join(p.name for p in paths))
    return 0


def _shows_progress(args: argparse.Namespace) -> bool:
    """Progress bars: unless ``--no-progress``, on a terminal, on rank 0 alone under torchrun."""
    return not args.no_progress and sys.stderr.isatty() and is_main_process()


def _object_recognition(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``memaware paper table2|table3|figure3``: check, time the backbone, run, write the summary.

    Each planned run is checkpointed in its own folder's ``checkpoints/``.
    """
    command = args.protocol
    if args.seeds < 1:
        raise MemawareError(f"--seeds must be at least 1, got {args.seeds}")
    protocol, preset = object_recognition.protocol_from(
        args.data_root, args.model, args.weights, args.augment
    )
    protocol = object_recognition.with_overrides(
        protocol,
        _method_options(args.option),
        epochs=args.epochs,
        first_task_epochs=args.first_task_epochs,
        lr=args.lr,
        first_task_lr=args.first_task_lr,
        lr_decay_epochs=args.lr_decay_epochs,
        batch_size=args.batch_size,
        device=args.device,
        amp=args.amp,
        workers=args.workers,
    )
    task_lists = object_recognition.check_tasks(command, args.tasks, preset)
    methods = object_recognition.methods_of(command, getattr(args, "methods", None))
    with process_group(protocol.train.device):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = value_of_main(args.out or Path("runs") / f"paper-{command}-{stamp}")  # one clock
        planned = object_recognition.plan(
            command, protocol, task_lists, methods, range(args.seeds), out
        )
        checkpoints = [_checkpoints(args, p.out / "checkpoints") for p in planned]
        _start(args, argv, out, checkpoints)
        throughput = measure_throughput(planned[0].spec)  # every rank: MAS's Ω is sharded
        if is_main_process():
            print(throughput.summary(), flush=True)
        results = []
        for p, where in zip(planned, checkpoints, strict=True):
            done, _ = _run_and_write(
                p.spec,
                p.out,
                _shows_progress(args),
                lambda r: {**r, "throughput": throughput.to_json()},
                where,
            )
            results.append(done)
        if not is_main_process():
            return 0
    try:
        markdown, paths = object_recognition.write_summary(
            command, planned, results, methods, out, throughput
        )
    except OSError as exc:
        raise MemawareError(f"cannot write the {command} summary to {out}/: {exc}") from exc
    print(markdown)
    print(f"{command} written to {out}/: " + ", ".join(p.name for p in paths))
    return 0


def _write(results: dict[str, Any], out: Path, report: bool) -> list[Path]:
    """Write the report (or, ``report=False``, results.json alone); MemawareError if that fails."""
    try:
        if report:
            return list(write_report(results, out).values())
        atomic_write_json(out / "results.json", results)
        return [out / "results.json"]
    except (OSError, ValueError) as exc:
        raise MemawareError(f"cannot write the results to {out}/: {exc}") from exc


def _sweep(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``memaware sweep``: check, train every value and seed (checkpointed in the run folder),
    write the preset; ``argv`` (the whole command line) is saved there for ``--resume``."""
    if args.resume is not None:
        args = resumed_args(args, ["sweep"], build_parser().parse_args)
    options = _method_options(args.option)
    strays = sorted(set(options) - {args.method})
    if strays:
        raise MemawareError(
            f"--option for {', '.join(strays)}: the sweep trains {args.method} alone"
        )
    values, seeds, swept = args.values, list(range(args.seeds)), options.get(args.method, {})
    check_sweep(
        args.benchmark,
        args.scenario,
        args.method,
        values,
        seeds,
        args.validation,
        swept,
        model=args.model,
        weights=args.weights,
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or Path("runs") / f"sweep-{args.benchmark}-{args.scenario}-{args.method}-{stamp}"
    checkpoints = _checkpoints(args, out / "checkpoints")
    directory = args.preset_dir or PRESET_DIR
    prepare_out_dir(directory)  # the preset is written at the end: fail now if it cannot be
    _start(args, argv, out, [value_checkpoints(checkpoints, value) for value in values])
    print(f"sweep runs checkpointed in {out}/ (--resume {out} goes on after a stop)", flush=True)
    entry = sweep_strength(
        args.benchmark,
        args.scenario,
        args.method,
        values,
        seeds,
        train=TrainConfig(epochs=args.epochs),
        validation_fraction=args.validation,
        data_dir=args.data_dir,
        show_progress=not args.no_progress and sys.stderr.isatty(),
        options=swept,
        model=args.model,
        weights=args.weights,
        checkpoints=checkpoints,
    )
    path, entry = write_sweep(
        args.benchmark, args.scenario, args.method, entry, directory, extend=not args.replace
    )
    for value, accs in entry["provenance"]["validation_average_accuracy"].items():
        print(f"λ={value:>8}  validation accuracy " + " ".join(f"{a:.4f}" for a in accs))
    print(f"best λ={entry['strength']:g}; preset written to {path}")
    return 0


def _presets(args: argparse.Namespace) -> int:
    directory = args.preset_dir or PRESET_DIR
    names = args.benchmark or [b for b in BENCHMARKS if preset_path(b, directory).is_file()]
    for name in names:
        check_benchmark(name)
    print(presets_table({b: load_presets(b, directory) for b in names}))
    return 0


def options_table(names: Sequence[str]) -> str:
    """Markdown: per method, each option's name, what it accepts, its default and meaning."""
    lines = []
    for name in names:
        docs = option_docs(method_class(name).Options)
        lines += [f"**{name}**" + ("" if docs else ": no options of its own"), ""]
        if docs:
            lines += ["| option | accepts | default | meaning |", "|---|---|---|---|"]
            for d in docs:
                meaning = d.help.replace("|", "\\|")  # a bare | would end the cell
                lines.append(f"| `{d.name}` | {d.accepts} | `{d.default}` | {meaning} |")
            lines.append("")
        for preset, values in method_class(name).Options.importance_presets.items():
            fields = ", ".join(f"{k}={show(v)}" for k, v in values.items())
            lines += [
                f"`--option {name}.{PRESET_KEY}={preset}` sets {fields} (options given next to "
                "it win).",
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; bad input ends with one line on stderr and exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if launched_by_torchrun() and args.command not in TORCHRUN_COMMANDS:
            raise MemawareError(
                f"memaware {args.command} runs as one process; under torchrun only "
                f"{', '.join(TORCHRUN_COMMANDS)} do"
            )
        if args.command == "run":
            return _experiment(args, [args.seed], "run")
        if args.command == "compare":
            if args.seeds < 1:
                raise MemawareError(f"--seeds must be at least 1, got {args.seeds}")
            return _experiment(args, range(args.seeds), "compare")
        if args.command == "sweep":
            return _sweep(args, argv)
        if args.command == "presets":
            return _presets(args)
        if args.command == "paper" and args.protocol == "selective":
            return selective_cli.main(args)
        if args.command == "paper":
            return _paper(args, argv)
        if args.command == "stream":
            return stream_command(args)
        if args.command == "importance":
            return importance_cli.main(args)
        if args.command == "models":
            print(models_table())
            return 0
        if args.command == "options":
            print(options_table(args.methods or list(METHODS)), end="")
            return 0
        if args.command == "bench":
            from memaware.bench import backbone, deploy, importance, training

            benches = {
                "importance": importance.main,
                "training": training.main,
                "backbone": backbone.main,
                "deploy": deploy.main,
            }
            return benches[args.target](args.rest)
    except MemawareError as exc:
        print(f"memaware: error: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
