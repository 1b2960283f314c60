"""Memory Aware Synapses (Aljundi et al., ECCV 2018).

After each task t, on unlabelled inputs of that task (the model in eval mode):

    Ω_new = (1/N) Σ_k |∂‖F(x_k)‖²/∂θ|   (F = logits of the heads of the tasks learned so far)
    Ω ← Ω + Ω_new                       (the authors' code: plain sum over tasks)
    θ* ← θ

and while learning the next task the loss is  L_task + λ Σ Ω (θ − θ*)²  (no factor ½).
A head created for a new task has no Ω and is free; the heads of past tasks are regularised.

The importance preset ``authors`` (``MAS(importance_preset="authors")``) is Ω as the authors'
code computes it (``compute_importance_l2`` in ``MAS_Omega_Acuumelation``): over the task's
training inputs in B batches b of n_b ≤ 200, with F = the logits of the head of the task just
learned only,

    Ω_new = (1/B) Σ_b |G_b| / n_b,   G_b = ∂(Σ_{x∈b} ‖F(x)‖²)/∂θ   (the gradient of the batch sum)
    Ω ← Ω + Ω_new

which is ≤ the per-sample Ω by the triangle inequality (equal for batches of one).

Ω from deployment (``importance_source``): after the task numbered ``importance_file_task``
(from 0), Ω_new can come from a saved :class:`~memaware.importance.Importance` instead, e.g. the
file of an :class:`~memaware.deploy.ImportanceTracker` that counted the inputs the model served
between that task and the next (``file``), or from that file merged with the task's own data
(``train+file``: sums and counts add, so Ω_new is the mean over both sets of inputs). The
file is read when the options are built (it must exist and hold MAS importance of the kind
the merge needs) and checked against the model's parameter names and shapes before that task
trains. The file's Ω is the one its tracker measured: F as the served calls computed it (the
head each call asked for), the importance data's F as ``heads`` says.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from memaware.data.datasets import LabelledData, batches, concat, for_evaluation
from memaware.data.scenarios import Task
from memaware.errors import ConfigError, DataError
from memaware.importance import Importance, mas
from memaware.importance.mas import Granularity, Norm
from memaware.methods.regulariser import AccumulatedOptions, QuadraticRegulariser
from memaware.models.multihead import MultiHeadClassifier, heads_output


@dataclass(frozen=True, kw_only=True)
class MASOptions(AccumulatedOptions):
    """MAS settings (see :func:`memaware.importance.mas` for granularity and norm).

    ``importance_preset="authors"`` (:data:`~memaware.methods.options.PRESET_KEY`) sets the
    fields to what the authors' code computes (see the module doc); fields given next to it win.
    """

    method = "mas"
    importance_presets: ClassVar[Mapping[str, Mapping[str, object]]] = {
        "authors": {
            "granularity": "batch",
            "importance_batch_size": 200,
            "heads": "current",
            "accumulation": "sum",
            "norm": "l2sq",
            "importance_data": "train",
        }
    }

    importance_batch_size: int = field(
        default=200,
        metadata={
            "help": "inputs per batch of the Ω pass, >= 1; with granularity=batch also the batch "
            "each gradient is taken over (the authors' 200)"
        },
    )
    granularity: Granularity = field(
        default="sample",
        metadata={
            "help": "sample: the exact per-sample Ω, mean_k |g_k|; batch: the authors' estimator, "
            "(1/B) Σ_b |G_b|/n_b with G_b the gradient of batch b's summed ‖F‖² (F stays what "
            "heads says)"
        },
    )
    norm: Norm = field(
        default="l2sq", metadata={"help": "the output norm: l2sq ‖F‖² (the paper), l2, l1, vector"}
    )
    heads: Literal["learned", "current"] = field(
        default="learned",
        metadata={
            "help": "F = the logits of every head learned so far (learned) or of the task just "
            "learned (current, what the authors' code sees)"
        },
    )
    importance_source: Literal["train", "file", "train+file"] = field(
        default="train",
        metadata={
            "help": "Ω after task importance_file_task: from importance_data (train), from "
            "importance_file (file, e.g. a deployed model's ImportanceTracker), or both merged "
            "(train+file: sums and counts add)"
        },
    )
    # None first: `--option mas.importance_file=none` reads as None, not as a file called none
    importance_file: None | str = field(  # noqa: RUF036
        default=None,
        metadata={
            "help": "a saved Importance (Importance.save, ImportanceTracker) for "
            "importance_source=file or train+file"
        },
    )
    importance_file_task: int = field(
        default=0,
        metadata={
            "help": "the task (numbered from 0) after which importance_file is used; after the "
            "others Ω comes from importance_data"
        },
    )
    importance_data: Literal["train", "test", "train+test"] = field(
        default="train",
        metadata={"help": "the finished task's inputs Ω is computed on (unlabelled)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_at_least("importance_file_task", 0)
        if self.importance_source == "train":
            if self.importance_file is not None:
                self.fail(
                    "importance_file",
                    "none with importance_source=train (set importance_source=file or "
                    "train+file to use the file)",
                    self.importance_file,
                )
            return
        if self.importance_file is None:
            self.fail(
                "importance_file",
                f"a saved importance file with importance_source={self.importance_source}",
                None,
            )
        self.read_file()

    def read_file(self) -> Importance:
        """The importance in ``importance_file``, checked to be MAS's and, for ``train+file``,
        of the kind the task's own Ω has (:class:`ConfigError` otherwise)."""
        assert self.importance_file is not None
        try:
            saved = Importance.load(self.importance_file)
        except DataError as exc:
            self.fail("importance_file", "a readable importance file", f"{exc}")
        wanted = {"method": "mas", "granularity": self.granularity, "norm": self.norm}
        if self.importance_source == "file":
            wanted = {"method": "mas"}
        else:
            wanted["mode"] = "eval"
        wrong = {k: saved.meta.get(k) for k, v in wanted.items() if saved.meta.get(k) != v}
        if wrong:
            self.fail(
                "importance_file",
                "a file of MAS importance of kind "
                + "/".join(str(v) for v in wanted.values())
                + f" (its {', '.join(f'{k} is {v}' for k, v in wrong.items())})",
                self.importance_file,
            )
        return saved


class MAS(QuadraticRegulariser):
    """Global MAS with exact per-sample importance (or the authors' batched estimate).

    ``MAS(MASOptions(...))`` or ``MAS(strength=..., granularity=...)`` (fields of MASOptions).
    """

    name = "mas"
    Options = MASOptions
    opts: MASOptions
    _file: Importance | None = None

    def _file_task(self, seen: Sequence[Task]) -> bool:
        """Whether Ω after the current task (the last of ``seen``) reads the file."""
        return self.opts.importance_source != "train" and len(seen) - 1 == (
            self.opts.importance_file_task
        )

    def before_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        """Before the task whose Ω reads the file: read it, checked against the model, so that a
        file that does not fit fails before the task trains."""
        if self._file_task(seen):
            saved = self.opts.read_file()
            try:
                saved.check_fits(model, source=str(self.opts.importance_file))
            except DataError as exc:
                raise ConfigError(f"mas: option importance_file: {exc}") from None
            device = model.device
            sums = {name: value.to(device) for name, value in saved.sums.items()}
            self._file = Importance(sums, saved.counts, saved.n_samples, saved.meta)

    def importance_data(self, task: Task) -> LabelledData:
        """The data whose (unlabelled, unaugmented) inputs Ω is computed on."""
        parts = {
            "train": [task.train],
            "test": [task.test],
            "train+test": [task.train, task.test],
        }
        return concat([for_evaluation(d) for d in parts[self.opts.importance_data]])

    def importance(
        self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]
    ) -> Mapping[str, torch.Tensor]:
        if self._file_task(seen):
            if self._file is None:  # after_task without before_task (a loop of one's own)
                self.before_task(model, task, seen)
            assert self._file is not None
            saved, self._file = self._file, None
            if self.opts.importance_source == "file":
                return saved
            return self.data_importance(model, task, seen).merge(saved)
        return self.data_importance(model, task, seen)

    def data_importance(
        self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]
    ) -> Importance:
        """Ω_new from the task's ``importance_data``."""
        heads = (
            [task.head]
            if self.opts.heads == "current"
            else list(dict.fromkeys(t.head for t in seen))
        )
        return mas(
            model,
            batches(
                self.importance_data(task), self.opts.importance_batch_size, device=model.device
            ),
            granularity=self.opts.granularity,
            norm=self.opts.norm,
            outputs=heads_output(heads),
            max_samples=self.opts.max_samples,
        )
