"""``memaware importance``: MAS's Ω of a saved model on one task's data, written as an Importance file.

    memaware importance --checkpoint OUT/checkpoints/mas-seed0/step-000000300 --task 1 \\
        --data train --out omega.safetensors

The model is rebuilt from the checkpoint (its run's ``config``: model, hidden sizes, benchmark,
scenario, data options), the task's inputs come from that benchmark (``--benchmark``,
``--scenario`` and ``--data-dir`` override the run's), and

    Ω = (1/N) Σ_k |∂‖F(x_k)‖²/∂θ|   (F = the logits of the heads ``--heads`` names)

is computed by :func:`memaware.importance.mas` and saved with
:meth:`~memaware.importance.Importance.save` (sums, counts and kind: it merges with other
estimates of its kind). Under ``torchrun`` each rank measures its share of the batches and the
sums and counts are all-reduced (the file holds the one-process Ω); rank 0 writes it.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from memaware.checkpoint import load_checkpoint_model
from memaware.data.benchmarks import make_scenario
from memaware.data.datasets import batches, concat, for_evaluation
from memaware.data.scenarios import Scenario, Task
from memaware.distributed import is_main_process, process_group
from memaware.errors import ConfigError, DataError
from memaware.importance import Importance, mas
from memaware.importance.mas import NORMS
from memaware.models import MultiHeadClassifier
from memaware.models.multihead import heads_output
from memaware.training.config import resolve_device
from memaware.training.experiment import ExperimentSpec


def add_parser(commands: Any) -> None:
    """``memaware importance``'s arguments."""
    parser = commands.add_parser(
        "importance",
        help="MAS's Ω of a checkpoint's model on one task's data, saved as an Importance file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--checkpoint",
        type=Path,
        required=True,
        help="a checkpoint folder OUT/checkpoints/<method>-seed<seed>/step-<N> or the "
        "<method>-seed<seed> folder (its newest good checkpoint)",
    )
    add("--task", required=True, help="the task: its index in the stream (from 0) or its name")
    add("--data", choices=("train", "test", "both"), default="train", help="default train")
    add("--benchmark", default=None, help="default: the checkpoint run's")
    add("--scenario", default=None, help="default: the checkpoint run's")
    add("--data-dir", default=None, help="default: the checkpoint run's")
    add(
        "--heads",
        choices=("learned", "current"),
        default="learned",
        help="F = the logits of the heads of tasks 0..T (learned, MAS's default) or of task T",
    )
    add("--granularity", choices=("sample", "batch"), default="sample", help="default sample")
    add("--norm", choices=NORMS, default="l2sq", help="the output norm (default l2sq)")
    add("--batch-size", type=int, default=200, help="inputs per batch (default 200)")
    add("--max-samples", type=int, default=None, help="use at most this many inputs")
    add("--device", default="cpu", help="cpu (default), cuda, auto")
    add("--out", type=Path, required=True, help="the .safetensors file to write")


def _spec(config: dict[str, Any], args: argparse.Namespace) -> ExperimentSpec:
    """The checkpoint run's model and data options, with the command's overrides (its methods,
    their options and its training budget play no part here)."""
    known = {f.name for f in fields(ExperimentSpec)} - {
        "train",
        "methods",
        "seeds",
        "method_options",
        "strength",
        "weights",  # the backbone's starting weights: the checkpoint holds the trained ones
    }
    given = {key: value for key, value in config.items() if key in known}
    for key in ("benchmark", "scenario", "data_dir"):
        if getattr(args, key) is not None:
            given[key] = getattr(args, key)
    try:
        return ExperimentSpec(**given)
    except TypeError as exc:
        raise DataError(f"the checkpoint's config does not describe a run: {exc}") from None


def _task(scenario: Scenario, text: str) -> int:
    names = scenario.task_names
    if text in names:
        return names.index(text)
    if text.isdigit() and int(text) < len(names):
        return int(text)
    raise ConfigError(
        f"--task {text}: the stream has tasks 0..{len(names) - 1} ({', '.join(names)})"
    )


def _data(task: Task, which: str) -> Any:
    parts = {"train": [task.train], "test": [task.test], "both": [task.train, task.test]}[which]
    return concat([for_evaluation(p) for p in parts])


def _omega(
    args: argparse.Namespace, model: MultiHeadClassifier, spec: ExperimentSpec, device: str
) -> tuple[Importance, Task]:
    """Ω of the checkpoint's model on the task's data, and the task (on every rank, all-reduced)."""
    scenario = make_scenario(spec.benchmark, **vars(spec.data_request()))
    tasks = scenario.tasks[: _task(scenario, args.task) + 1]
    model = model.to(resolve_device(device))
    heads = [tasks[-1].head] if args.heads == "current" else [t.head for t in tasks]
    missing = [h for h in dict.fromkeys(heads) if h not in model.head_ids]
    if missing:
        raise DataError(
            f"{args.checkpoint}: the model has no head {missing[0]} (it has {model.head_ids}): "
            "it was saved before that task was learned"
        )
    omega = mas(
        model,
        batches(_data(tasks[-1], args.data), args.batch_size, device=model.device),
        granularity=args.granularity,
        norm=args.norm,
        outputs=heads_output(list(dict.fromkeys(heads))),
        max_samples=args.max_samples,
    )
    return omega, tasks[-1]


def main(args: argparse.Namespace) -> int:
    """Compute Ω and write it (under torchrun, rank 0 writes)."""
    if args.batch_size < 1 or (args.max_samples is not None and args.max_samples < 1):
        raise ConfigError("--batch-size and --max-samples must be at least 1")
    if args.out.suffix != ".safetensors":
        raise ConfigError(f"--out {args.out}: the Importance file must end in .safetensors")
    model, manifest = load_checkpoint_model(args.checkpoint)
    spec = _spec(manifest["config"], args)
    spec.check()
    with process_group(args.device) as device:
        omega, task = _omega(args, model, spec, device)
        if is_main_process():
            try:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                omega.save(args.out)
            except OSError as exc:
                raise DataError(f"cannot write {args.out}: {exc.strerror or exc}") from None
            print(
                f"Ω of {len(omega)} parameters over {omega.n_samples} inputs of task "
                f"{task.name} ({args.data}) written to {args.out}"
            )
    return 0
