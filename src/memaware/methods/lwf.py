"""Learning without Forgetting (Li & Hoiem, ECCV 2016 / TPAMI 2018).

Before task t > 1 the model is frozen into a teacher (θ_s*, θ_o*); while learning task t the
loss on a batch x of the *current* task's inputs is

    L = ℓ_CE(F_t(x), y) + λ_o Σ_{h ∈ old heads} T² · L_KD(z_h(x), z̃_h(x))

    L_KD(z, z̃) = −(1/N) Σ_n Σ_c p̃_c(x_n) log p_c(x_n),
    p̃ = softmax(z̃ / T)   (teacher, i.e. the model at the end of task t−1),
    p  = softmax(z / T)    (student, the model being trained),

with temperature T (Li & Hoiem: T = 2) and z_h the logits of head h. The old heads are the
heads of tasks 1..t−1: in the task-incremental setting one head per past task, each softened
and distilled on its own; in the domain- and class-incremental settings the single shared head,
whose *full* teacher output (every unit, including classes no task has shown yet) is distilled.

The term is Li & Hoiem's cross-entropy, not the KL divergence: the two differ by the teacher's
entropy H(p̃), a constant in θ, so they have the same gradient, but the value of this term is
λ_o T² Σ_h H(p̃_h) > 0 (not 0) while the student still equals the teacher.

**T² factor.** ∂L_KD/∂z = (p − p̃)/T, and for small logit differences p − p̃ ≈ (z − z̃)/T, so
the gradient of the unscaled loss shrinks like 1/T². Multiplying by T² (Hinton et al. 2015)
keeps λ_o's meaning independent of T. It also makes λ_o = 1 the weighting of van de Ven &
Tolias's public LwF code (KD loss times T², total CE/t + (1 − 1/t)·mean_h T²·L_KD at task t,
i.e. t⁻¹·(CE + T² Σ_h L_KD), and Adam is nearly blind to the overall factor t⁻¹). Li & Hoiem's
own loss has no T² with λ_o = 1; ``strength = 1/T²`` reproduces it.

**Warm-up.** Li & Hoiem first train the new head θ_n alone, with θ_s and θ_o frozen, and only
then train everything jointly: a randomly initialised head otherwise sends large, meaningless
gradients into the shared body during the first steps. Here ``before_task`` does this in a
self-contained loop: the shared features f(x) of the task's training inputs are computed once
(no gradient), then ``warmup_epochs`` epochs of Adam (lr ``warmup_lr``) on the cross-entropy of
the new head only, batches of ``batch_size`` drawn from a generator seeded with the run's seed and
the task index. Nothing else moves: the backbone and the other heads take no gradient, and the
global random state is not touched (the heads created later initialise exactly as without
warm-up). A head is "new" when no earlier task used it, so warm-up happens only in the
task-incremental setting, from the second task on (the first task has no trained body to
rest a head on); the shared head of the domain/class settings is never warmed up alone,
since that would move the old tasks' outputs.

Defaults: 10 epochs at lr 10⁻². A linear head on fixed features is a convex problem, so a
larger step than the loop's 10⁻³ is safe, and Li & Hoiem train it to convergence: on the
Split-MNIST validation split (task 2 on the features left by task 1) one epoch at 10⁻³ only
takes the head's cross-entropy from 0.68 to 0.56 (validation accuracy 71 %), 10 epochs at
10⁻² to 0.13 (96 %; 100 epochs: 0.07). Each step is a 128 × d × classes product on cached
features, so this costs far less than one training epoch. On Split-MNIST the warm-up makes no
measurable difference to the final accuracy (validation average 99.51 % without, 99.56 % with
these defaults, 99.48 % with one epoch at 10⁻³; one seed, differences within noise);
``warmup_epochs=0`` switches it off.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from memaware.data.datasets import LabelledData, batches, for_evaluation
from memaware.data.scenarios import SETTINGS, Setting, Task
from memaware.methods.base import Batch, Method, MethodState, task_seed
from memaware.methods.options import MethodOptions, StrengthOptions
from memaware.models.multihead import MultiHeadClassifier

#: rows per forward pass when computing features of a whole training set without gradient
FEATURE_CHUNK = 2048


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T² · L_KD: the batch mean of −Σ_c softmax(z̃/T)_c log softmax(z/T)_c, times T²."""
    targets = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    return -(targets * log_probs).sum(dim=-1).mean() * temperature**2


@torch.no_grad()
def backbone_features(
    model: MultiHeadClassifier, data: torch.Tensor | LabelledData
) -> torch.Tensor:
    """f(x) for a whole set of inputs (a tensor, or a dataset's unaugmented inputs), in eval mode
    and chunks, without gradient, on the model's device."""
    chunks = (
        torch.split(data, FEATURE_CHUNK)
        if isinstance(data, torch.Tensor)
        else (x for x, _ in batches(for_evaluation(data), FEATURE_CHUNK, device=model.device))
    )
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model.backbone(chunk) for chunk in chunks])
    finally:
        model.train(was_training)


def freeze(model: MultiHeadClassifier) -> MultiHeadClassifier:
    """A deep copy of ``model`` in eval mode with every parameter frozen (the teacher)."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


@dataclass(frozen=True, kw_only=True)
class LwFOptions(StrengthOptions):
    """LwF settings: λ_o, the temperature and the new head's warm-up."""

    method = "lwf"

    strength: float = field(
        default=1.0, metadata={"help": "λ_o >= 0, the weight of the distillation term (times T²)"}
    )
    temperature: float = field(default=2.0, metadata={"help": "T of the softened outputs, > 0"})
    warmup_epochs: int = field(
        default=10,
        metadata={"help": "epochs of the new head alone on fixed features, >= 0 (0: none)"},
    )
    warmup_lr: float = field(
        default=1e-2, metadata={"help": "Adam's learning rate of the warm-up, > 0"}
    )
    batch_size: int = field(
        default=128,
        metadata={"help": "batch size of the warm-up (and of EBLL's autoencoders), >= 1"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_positive("temperature", "warmup_lr")
        self.require_at_least("warmup_epochs", 0)
        self.require_at_least("batch_size", 1)


class LwF(Method):
    """Learning without Forgetting: distil the previous model's old-head outputs on new inputs."""

    name = "lwf"
    scenarios: ClassVar[tuple[Setting, ...]] = SETTINGS
    Options = LwFOptions
    opts: LwFOptions

    def __init__(
        self, options: MethodOptions | None = None, /, *, seed: int = 0, **fields: Any
    ) -> None:
        super().__init__(options, seed=seed, **fields)
        #: the model as it was at the end of the previous task (None during the first task)
        self.teacher: MultiHeadClassifier | None = None
        #: the heads of the previous tasks, distilled while learning the current one
        self.old_heads: list[int] = []

    def before_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        self.old_heads = list(dict.fromkeys(t.head for t in seen[:-1]))
        if not self.old_heads:
            self.teacher = None
            return
        self.teacher = freeze(model)
        if task.head not in self.old_heads and self.opts.warmup_epochs > 0:
            self.warm_up(model, task)

    def state_dict(self) -> MethodState:
        """The teacher's state_dict (``teacher``, when there is one) and the distilled heads."""
        state = super().state_dict()
        state.values["old_heads"] = list(self.old_heads)
        if self.teacher is not None:
            state.put("teacher", self.teacher.state_dict())
        return state

    def load_state_dict(self, model: MultiHeadClassifier, state: MethodState) -> None:
        """The teacher is rebuilt as a frozen copy of ``model`` with the saved state_dict loaded."""
        super().load_state_dict(model, state)
        self.old_heads = [int(head) for head in state.values["old_heads"]]
        self.teacher = None
        if "teacher" in state.values:
            self.teacher = freeze(model)
            self.teacher.load_state_dict(state.take("teacher"))

    def warm_up(self, model: MultiHeadClassifier, task: Task) -> None:
        """Train head ``task.head`` alone on fixed features f(x) of the task's training data."""
        head = model.heads[str(task.head)]
        features = backbone_features(model, task.train)
        labels = task.train.labels.to(features.device)
        optimizer = torch.optim.Adam(head.parameters(), lr=self.opts.warmup_lr)
        generator = torch.Generator().manual_seed(task_seed(self.seed, task))
        was_training = head.training
        head.train()
        for _ in range(self.opts.warmup_epochs):
            order = torch.randperm(len(labels), generator=generator).to(labels.device)
            for index in torch.split(order, self.opts.batch_size):
                loss = F.cross_entropy(head(features[index]), labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        head.train(was_training)

    def features(
        self, model: MultiHeadClassifier, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's features f(x) (with gradient) and the teacher's f*(x) (without)."""
        teacher = self.teacher
        assert teacher is not None
        with torch.no_grad():
            teacher_features = teacher.backbone(x)
        return model.backbone(x), teacher_features

    def distillation(
        self, model: MultiHeadClassifier, features: torch.Tensor, teacher_features: torch.Tensor
    ) -> torch.Tensor:
        """λ_o Σ_h T² L_KD(z_h, z̃_h), the logits computed from f(x) and f*(x)."""
        teacher = self.teacher
        assert teacher is not None
        total = features.new_zeros(())
        for head in self.old_heads:
            key = str(head)
            with torch.no_grad():
                teacher_logits = teacher.heads[key](teacher_features)
            total = total + distillation_loss(
                model.heads[key](features), teacher_logits, self.opts.temperature
            )
        return self.opts.strength * total

    def loss_term(self, model: MultiHeadClassifier, batch: Batch) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        return self.distillation(model, *self.features(model, batch.x))

    def loss_heads(self) -> Sequence[int]:
        """The distilled heads (the previous tasks'), which the distillation term trains."""
        return self.old_heads if self.teacher is not None else ()
