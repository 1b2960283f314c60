"""Encoder-Based Lifelong Learning (Rannen, Aljundi, Blaschko & Tuytelaars, ICCV 2017).

EBLL is :mod:`LwF <memaware.methods.lwf>` plus one undercomplete autoencoder per task on the
shared features f(x) = ``model.backbone(x)``, whose code pins down the feature directions that
task relied on.

**After task a** the backbone f_a (as it is now) gives the features of the task's training
inputs; an autoencoder with one hidden code layer,

    code  c(f) = σ(W_e f + b_e) ∈ (0, 1)^k      (sigmoid code, as in the paper; k = ``code_size``)
    recon r(f) = W_d c(f) + b_d                  (linear decoder)

is trained on them, the network frozen, by minimising

    L_AE = (1/(N d)) Σ_n ‖r(f_n) − f_n‖²  +  β · ℓ_CE(T_a(r(f_n)), y_n)

(Adam, ``ae_epochs`` epochs, batches of ``batch_size``; its initial weights and batch order
seeded by the run's seed and the task index). The second term is the paper's
classification-preserving term: the frozen head T_a of the task must still classify the
*reconstructed* features, so the code keeps what the task needs rather than whatever has the
most variance. The paper weights the reconstruction error by a hyper-parameter λ against the
task term (De Lange et al.'s port uses λ = 10⁻⁶, on AlexNet's raw 9216-d conv features);
here the reconstruction is a mean over the d feature units and β = ``ae_task_weight`` weights
the task term instead. Only the encoder E_a(f) = σ(W_e f + b_e) is used afterwards; it is
frozen.

**While learning task t** the loss on a batch x of the current task's inputs is

    L = ℓ_CE + λ_o Σ_h T² L_KD(z_h, z̃_h)                   (LwF, see memaware.methods.lwf)
          + α Σ_{a < t} (1/N) Σ_n ‖E_a(f(x_n)) − E_a(f*(x_n))‖²

with f* the teacher's backbone (the model at the end of task t−1), α = ``code_strength`` and the
squared norm summed over the k code units (the paper writes α/2; there is no ½ here). Only the
projection of the features onto the old tasks' codes is held in place; the rest of the
feature space stays free for the new task (a plain ‖f − f*‖² would pin all of it).

Defaults, chosen on the Split-MNIST *validation* split (``with_validation``; 400-400 MLP,
Hsu et al.'s protocol, seed 0), never on the test set:

* ``code_size`` 100 for a 400-d feature (the paper: 100 for AlexNet's features);
* ``ae_epochs`` 10: the reconstruction error is then 2 % of the features' variance (30 epochs:
  0.8 %), at a cost comparable to a couple of training epochs per task;
* ``ae_task_weight`` β = 0.1: as good a reconstruction as β = 0 (2.0 % vs 1.9 %) and the head
  classifies the reconstructions as well as the features themselves (98.8 % vs 98.5 %);
  β = 1 doubles the reconstruction error;
* ``code_strength`` α = 1: validation average accuracy 99.61 % (LwF alone 99.48 %); α = 10
  is too rigid (99.02 %, the last task only reaches 97.3 %).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from memaware.data.scenarios import Task
from memaware.distributed import broadcast_from_main
from memaware.methods.base import Batch, MethodState, task_seed
from memaware.methods.lwf import LwF, LwFOptions, backbone_features
from memaware.methods.options import MethodOptions
from memaware.models.multihead import MultiHeadClassifier


@dataclass(frozen=True, kw_only=True)
class EBLLOptions(LwFOptions):
    """EBLL settings: LwF's, the code term's weight α and the autoencoders' training."""

    method = "ebll"

    code_strength: float = field(
        default=1.0,
        metadata={"help": "α >= 0, the weight of the code term Σ_a ‖E_a(f) − E_a(f*)‖²"},
    )
    code_size: int = field(
        default=100, metadata={"help": "k >= 1, the units of each autoencoder's code"}
    )
    ae_epochs: int = field(
        default=10, metadata={"help": "epochs of each autoencoder's training, >= 1"}
    )
    ae_lr: float = field(
        default=1e-3, metadata={"help": "Adam's learning rate for the autoencoders, > 0"}
    )
    ae_task_weight: float = field(
        default=0.1,
        metadata={"help": "β >= 0, the weight of the classification-preserving term of L_AE"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_non_negative("code_strength", "ae_task_weight")
        self.require_at_least("code_size", 1)
        self.require_at_least("ae_epochs", 1)
        self.require_positive("ae_lr")


class Autoencoder(nn.Module):
    """``f -> σ(W_e f + b_e) -> W_d c + b_d``: one sigmoid code layer, a linear decoder."""

    def __init__(self, features: int, code_size: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(features, code_size), nn.Sigmoid())
        self.decoder = nn.Linear(code_size, features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(features))  # type: ignore[no-any-return]


def train_autoencoder(
    features: torch.Tensor,
    labels: torch.Tensor,
    head: nn.Module,
    code_size: int,
    epochs: int,
    lr: float,
    task_weight: float,
    batch_size: int,
    seed: int,
) -> Autoencoder:
    """Fit an :class:`Autoencoder` to ``features`` by L_AE; ``head`` (frozen) scores the reconstructions.

    Its initial weights and batch order come from ``seed``; the global random state is left as
    it was (so the heads the training loop creates later initialise as without EBLL).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        autoencoder = Autoencoder(features.shape[1], code_size)
    autoencoder = autoencoder.to(features.device, features.dtype)
    generator = torch.Generator().manual_seed(seed)
    head_params = {name: p.detach() for name, p in head.named_parameters()}
    optimizer = torch.optim.Adam(autoencoder.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator).to(features.device)
        for index in torch.split(order, batch_size):
            f = features[index]
            recon = autoencoder(f)
            loss = F.mse_loss(recon, f)
            if task_weight > 0:
                logits = functional_call(head, head_params, (recon,))
                loss = loss + task_weight * F.cross_entropy(logits, labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    autoencoder.eval()
    autoencoder.requires_grad_(False)
    return autoencoder


def code_loss(
    encoders: Sequence[nn.Module], features: torch.Tensor, teacher_features: torch.Tensor
) -> torch.Tensor:
    """Σ_a (1/N) Σ_n ‖E_a(f(x_n)) − E_a(f*(x_n))‖², the norm summed over code units."""
    total = features.new_zeros(())
    for encoder in encoders:
        with torch.no_grad():
            target = encoder(teacher_features)
        total = total + (encoder(features) - target).pow(2).sum(dim=-1).mean()
    return total


class EBLL(LwF):
    """LwF plus, per past task, an autoencoder code of the shared features held in place."""

    name = "ebll"

    Options = EBLLOptions
    opts: EBLLOptions

    def __init__(
        self, options: MethodOptions | None = None, /, *, seed: int = 0, **fields: Any
    ) -> None:
        super().__init__(options, seed=seed, **fields)
        #: the frozen autoencoders of the tasks learned so far, in order (their encoders are E_a)
        self.autoencoders: list[Autoencoder] = []

    @property
    def encoders(self) -> list[nn.Module]:
        """E_a = σ(W_e · + b_e) of every past task's autoencoder."""
        return [autoencoder.encoder for autoencoder in self.autoencoders]

    def state_dict(self) -> MethodState:
        """LwF's state and every past task's autoencoder (its state_dict, ``autoencoders/<a>``)."""
        state = super().state_dict()
        state.put_list("autoencoders", [a.state_dict() for a in self.autoencoders])
        return state

    def load_state_dict(self, model: MultiHeadClassifier, state: MethodState) -> None:
        super().load_state_dict(model, state)
        self.autoencoders = []
        for saved in state.take_list("autoencoders"):
            features, code_size = saved["decoder.weight"].shape
            autoencoder = Autoencoder(features, code_size)
            autoencoder.load_state_dict(saved)
            autoencoder = autoencoder.to(model.device, saved["decoder.weight"].dtype)
            autoencoder.eval()
            autoencoder.requires_grad_(False)
            self.autoencoders.append(autoencoder)

    def before_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        if len(seen) == 1:  # a new stream: forget the codes of an earlier one
            self.autoencoders = []
        super().before_task(model, task, seen)

    def after_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        """Train the task's autoencoder (on every rank alike under torchrun, then rank 0's kept)."""
        autoencoder = train_autoencoder(
            backbone_features(model, task.train),
            task.train.labels.to(model.device),
            model.heads[str(task.head)],
            self.opts.code_size,
            self.opts.ae_epochs,
            self.opts.ae_lr,
            self.opts.ae_task_weight,
            self.opts.batch_size,
            task_seed(self.seed, task) + 1,
        )
        broadcast_from_main(autoencoder)
        self.autoencoders.append(autoencoder)

    def loss_term(self, model: MultiHeadClassifier, batch: Batch) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        features, teacher_features = self.features(model, batch.x)
        distill = self.distillation(model, features, teacher_features)
        if not self.autoencoders or self.opts.code_strength == 0:
            return distill
        return distill + self.opts.code_strength * code_loss(
            self.encoders, features, teacher_features
        )
