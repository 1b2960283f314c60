"""The Split-MNIST demo of the MAS authors' repository, runnable: ``memaware paper mnist-demo``.

``MAS_to_be_published/Demo.ipynb`` of rahafaljundi/MAS-Memory-Aware-Synapses, its
``MAS_Omega_Acuumelation`` run (Ω measured on the task just learned and summed over tasks):

* tasks {1,2}, {3,4}, {5,6}, {7,8}, {9,0}, task-incremental (a fresh 2-way head per task), inputs
  standardised as (x − 0.1307) / 0.3081 (benchmark ``split-mnist-authors``);
* an MLP 784-256-256 with ReLUs, then the task's head (the notebook's ``MNIST_Net``);
* SGD with momentum 0.9, a new optimizer for every task (each of the notebook's calls builds
  one), batches of 150, no weight decay, no step decay within a task (theirs starts at epoch 45
  and 54);
* task 1: plain fine-tuning at lr 0.01 for 10 epochs; tasks 2-5: MAS at lr 0.001 for 20
  epochs, λ = 1, penalty λ Σ Ω (θ − θ*)²;
* after each task, Ω on its training inputs with MAS's ``authors`` preset:
  Ω ← Ω + (1/B) Σ_b |G_b| / n_b, G_b = ∂(Σ_{x∈b} ‖F(x)‖²)/∂θ over batches of 200, F the
  logits of that task's head, in eval mode;
* each task ends with the weights of its best epoch.

The notebook's figure is the average forgetting (1/T) Σ_j (a_j − R[T−1, j]) over all T tasks (the
last one's is 0): a_j the accuracy on task j right after training it, R[T−1, j] after the last
task; that is −``average_drop`` of memaware's results. Finetuning runs under the same protocol
for reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from memaware.errors import DataError
from memaware.files import atomic_write_text
from memaware.reports import checked_matrix, metric_std
from memaware.training.config import TrainConfig
from memaware.training.experiment import ExperimentSpec

#: the methods the demo runs: MAS, and finetuning for reference
METHODS: tuple[str, ...] = ("finetune", "mas")

#: the notebook's training protocol (its first task's 10 epochs at lr 0.01 are the overrides)
TRAIN = TrainConfig(
    epochs=20,
    batch_size=150,
    lr=1e-3,
    optimizer="sgd",
    momentum=0.9,
    reset_optimizer=True,
    first_task_lr=1e-2,
    first_task_epochs=10,
    select_best_epoch=True,
    validation_fraction=0.1,
)

#: what differs from the notebook, and why
DEVIATIONS: tuple[str, ...] = (
    "the best epoch of each task is chosen on a validation split carved from its training data "
    "(10 %, stratified, seed 0), not on the test set as in the notebook; training and Ω use the "
    "other 90 %",
    "the first task trains on batches of 150, as the later ones (the notebook: 200); the "
    "training loop has one batch size",
    "the initial weights are PyTorch's default initialisation under the run's seed (the notebook "
    "starts from its shipped mnist_net.pth.tar)",
)

#: the notebook's stored output (fractions): accuracy on each task after the last task, and
#: right after training it; the average forgetting it prints is 0.0706505694457 (pp)
NOTEBOOK: dict[str, Any] = {
    "source": "rahafaljundi/MAS-Memory-Aware-Synapses, MAS_to_be_published/Demo.ipynb, "
    "the MAS_Omega_Acuumelation run",
    "task_names": ["1/2", "3/4", "5/6", "7/8", "9/0"],
    "final_accuracy": [0.994923857868, 0.996485943775, 0.98, 0.981018981019, 0.990447461036],
    "trained_accuracy": [
        0.994923857868,
        0.995481927711,
        0.980540540541,
        0.985014985015,
        0.990447461036,
    ],
    "average_forgetting": 0.000706505694457,
}


def demo_spec(seeds: Sequence[int] = (0,)) -> ExperimentSpec:
    """The demo as an experiment: finetuning and MAS (λ = 1, the ``authors`` Ω) over ``seeds``."""
    return ExperimentSpec(
        benchmark="split-mnist-authors",
        scenario="task",
        methods=METHODS,
        seeds=tuple(seeds),
        train=TRAIN,
        method_options={"mas": {"strength": 1.0, "importance_preset": "authors"}},
        model="mlp",
        hidden=(256, 256),
    )


def with_reference(results: Mapping[str, Any]) -> dict[str, Any]:
    """``results`` with the notebook's numbers and this protocol's deviations from it added."""
    return {**results, "notebook": NOTEBOOK, "deviations": list(DEVIATIONS)}


def _task_numbers(results: Mapping[str, Any], method: str) -> tuple[list[float], list[float]]:
    """(final accuracy, accuracy right after training) per task of ``method``, fractions."""
    final = checked_matrix(results, method)[-1]
    trained = results["methods"][method].get("trained_accuracy")
    if not isinstance(trained, Sequence) or len(trained) != len(final):
        raise DataError(f"method {method!r}: trained_accuracy must hold one number per task")
    return final, [float(v) for v in trained]


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _pp(value: float) -> str:
    return f"{100 * value:.3f}"


def comparison_table(results: Mapping[str, Any]) -> str:
    """Markdown: per task, the notebook's and each method's final accuracy, accuracy right after
    training and forgetting a_j − R[T−1, j]; last row, their averages.

    Accuracies in %, forgetting in percentage points; over several seeds, means (the average
    forgetting with its standard deviation).
    """
    names = [str(n) for n in results["task_names"]]
    if names != NOTEBOOK["task_names"]:
        raise DataError(
            f"the demo's tasks are {NOTEBOOK['task_names']}, these results have {names}"
        )
    columns: list[tuple[str, list[float], list[float], str | None]] = [
        ("Notebook", NOTEBOOK["final_accuracy"], NOTEBOOK["trained_accuracy"], None)
    ]
    for method in results["methods"]:
        final, trained = _task_numbers(results, method)
        spread = metric_std(results, method, "average_drop")
        columns.append((str(method), final, trained, None if spread is None else _pp(spread)))
    header = ["Task"]
    for label, *_ in columns:
        header += [f"{label} final (%)", f"{label} after training (%)", f"{label} forgetting (pp)"]
    rows = []
    for j, name in enumerate(names):
        row = [name]
        for _, final, trained, _ in columns:
            row += [_pct(final[j]), _pct(trained[j]), _pp(trained[j] - final[j])]
        rows.append(row)
    average = ["Average"]
    for _, final, trained, std in columns:
        forgetting = _pp(sum(t - f for t, f in zip(trained, final, strict=True)) / len(names))
        average += [
            _pct(sum(final) / len(names)),
            _pct(sum(trained) / len(names)),
            forgetting if std is None else f"{forgetting} ± {std}",
        ]
    rows.append(average)
    lines = ["| " + " | ".join(header) + " |", "| :--- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def comparison_report(results: Mapping[str, Any]) -> str:
    """The comparison with the notebook as a markdown page: the table, its source, the deviations."""
    seeds = results.get("seeds", [0])
    parts = [
        "# The authors' Split-MNIST demo, against the notebook\n",
        f"memaware: mean over seeds {', '.join(str(s) for s in seeds)}; notebook: "
        f"{NOTEBOOK['source']}. Forgetting of task j: its accuracy right after training it minus "
        "its accuracy after the last task (the notebook's measure; its average includes the "
        "last task's 0).\n",
        comparison_table(results),
        "Deviations from the notebook:\n",
        *(f"* {deviation}" for deviation in DEVIATIONS),
    ]
    return "\n".join(parts) + "\n"


def write_comparison(results: Mapping[str, Any], out_dir: Path) -> Path:
    """Write :func:`comparison_report` to ``out_dir/notebook.md`` (atomically); return its path."""
    path = Path(out_dir) / "notebook.md"
    atomic_write_text(path, comparison_report(results))
    return path
