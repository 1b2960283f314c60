"""The MAS paper's object-recognition protocol, on image folders or on the offline stand-in.

With image folders (``--data-root``), the paper's protocol (Aljundi et al. 2018, §5.1, and the
authors' code, ``MAS.py`` / ``Finetune_SGD.py``; every choice the paper leaves open is one of the
constants below, with its reason in the README):

* an ImageNet-pretrained network, all layers trained, one fresh linear head per task
  (task-incremental): AlexNet when its weights are given (``--weights``), else EfficientNet-Lite0,
  whose ImageNet weights ship offline, with its BatchNorm statistics frozen at ImageNet's
  (:data:`STANDIN_MODEL`; AlexNet has no BatchNorm);
* SGD with momentum 0.9, a fresh optimizer per task, batches of 200 (the paper's text; the
  authors' drivers hard-code 150), 100 epochs per task; the first task at the fine-tuning
  driver's lr 4·10⁻⁴, the later ones at the MAS driver's 8·10⁻⁴ for every method, ×0.1 every 54
  epochs (the MAS driver's period; the fine-tuning driver's 45 is not used, one schedule serves
  every task and method); training images augmented (random resized crop and flip);
* each task ends with the weights of its best epoch on its validation split (``val/``, else 10 %
  of ``train/`` carved by a fixed seed);
* λ = 1 for MAS and l-MAS, with Ω = (1/N) Σ_k |∂‖F(x_k)‖²/∂θ| exact per sample, F the logits of
  the head of the task just learned (the authors' ``compute_importance_l2``), on its training
  inputs (Table 3 also on its test inputs and on both), summed over tasks
  (``MAS_Omega_Acuumelation``); the baselines at the strengths of :data:`PAPER_STRENGTHS`.

On the stand-in (no ``--data-root``) the same protocol runs with the budget, resolution and
strengths of the stand-in preset (:mod:`memaware.configs.standin`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from memaware.configs.standin import StandinPreset
from memaware.data.benchmarks import STANDIN
from memaware.errors import ConfigError
from memaware.methods import accepted_options, method_class
from memaware.training.config import TrainConfig
from memaware.training.experiment import ExperimentSpec

__all__ = [
    "FIGURE3_METHODS",
    "OMEGA_DATA",
    "PAPER_STRENGTHS",
    "PAPER_TRAIN",
    "STANDIN_MODEL",
    "TABLE2_METHODS",
    "TABLE3_METHODS",
    "Protocol",
    "default_model",
    "paper_protocol",
    "standin_protocol",
]

#: Table 2 and Figure 3: every method of the paper (its one IMM as both of memaware's)
TABLE2_METHODS = ("finetune", "lwf", "ebll", "mean-imm", "mode-imm", "ewc", "si", "mas")
FIGURE3_METHODS = TABLE2_METHODS
#: Table 3: global and local MAS ...
TABLE3_METHODS = ("mas", "l-mas")
#: ... with Ω from the first task's training inputs, its test inputs, or both
OMEGA_DATA = ("train", "test", "train+test")

#: the paper's training protocol on image folders (see the module doc)
PAPER_TRAIN = TrainConfig(
    epochs=100,
    batch_size=200,
    lr=8e-4,
    first_task_lr=4e-4,
    optimizer="sgd",
    momentum=0.9,
    reset_optimizer=True,
    lr_schedule="step",
    lr_decay_epochs=54,
    lr_decay_factor=0.1,
    select_best_epoch=True,
    validation_fraction=0.1,
    device="auto",
)

#: strengths on image folders: λ = 1 for MAS and l-MAS (the authors' docstrings: "in object
#: recognition it was set to 1"); the paper gives none for the baselines, which take the same
#: λ = 1 (EWC, SI), Li & Hoiem's λ_o = 1 (LwF, EBLL: their distillation has no T² factor, which
#: memaware's has, so their λ_o = 1 is a strength of 1/T² = 0.25 at T = 2) and the IMM authors'
#: L2-transfer 10⁻⁴
PAPER_STRENGTHS: Mapping[str, float] = {
    "mas": 1.0,
    "l-mas": 1.0,
    "ewc": 1.0,
    "si": 1.0,
    "lwf": 0.25,
    "ebll": 0.25,
    "mean-imm": 1e-4,
    "mode-imm": 1e-4,
}
#: inputs per batch of every importance pass on 224×224 images (memory only: the exact Ω and the
#: Fisher do not depend on it)
PAPER_IMPORTANCE_BATCH = 32


#: the stand-in for the paper's AlexNet: EfficientNet-Lite0 with its BatchNorm statistics frozen
#: at ImageNet's, so that its whole state is parameters, as AlexNet's (which has no BatchNorm)
STANDIN_MODEL = "efficientnet-lite0-frozen-bn"


def default_model(weights: str | None) -> str:
    """The paper's AlexNet when its ImageNet weights are given, else :data:`STANDIN_MODEL`."""
    return "alexnet" if weights is not None else STANDIN_MODEL


@dataclass(frozen=True)
class Protocol:
    """What every run of a paper command shares: data, network, training and method settings."""

    benchmark: str
    model: str
    train: TrainConfig
    strengths: Mapping[str, float]
    importance_batch_size: int
    weights: str | None = None
    data_root: str | None = None
    augment: bool = False
    #: the protocol's own options of a method beyond its strength (the stand-in preset's)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: ``--option`` settings, per method, over the protocol's own
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def method_options(
        self, methods: Sequence[str], omega_data: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Each method's options: its strength, the importance batch, MAS's F, the protocol's
        ``options``, then ``overrides``.

        ``omega_data`` sets the inputs MAS and l-MAS compute Ω on (Table 3).
        """
        options: dict[str, dict[str, Any]] = {}
        for name in methods:
            accepted = accepted_options(method_class(name))
            chosen: dict[str, Any] = {}
            if "strength" in accepted and name in self.strengths:
                chosen["strength"] = self.strengths[name]
            if "importance_batch_size" in accepted:
                chosen["importance_batch_size"] = self.importance_batch_size
            if name == "mas":
                chosen["heads"] = "current"  # the authors' F: the head of the task just learned
            if omega_data is not None and "importance_data" in accepted:
                chosen["importance_data"] = omega_data
            chosen |= dict(self.options.get(name, {}))
            options[name] = chosen | dict(self.overrides.get(name, {}))
        return options

    def spec(
        self,
        tasks: Sequence[str],
        methods: Sequence[str],
        seeds: Sequence[int],
        omega_data: str | None = None,
    ) -> ExperimentSpec:
        """The experiment that learns ``tasks`` in order with each of ``methods``."""
        strays = sorted(set(self.overrides) - set(methods))
        if strays:
            raise ConfigError(
                f"--option for {', '.join(strays)}, which this command does not train "
                f"(its methods: {', '.join(methods)})"
            )
        return ExperimentSpec(
            benchmark=self.benchmark,
            scenario="task",
            methods=tuple(methods),
            seeds=tuple(seeds),
            train=self.train,
            method_options=self.method_options(methods, omega_data),
            model=self.model,
            weights=self.weights,
            data_root=self.data_root,
            tasks=tuple(tasks),
            augment=self.augment,
        )


def paper_protocol(
    data_root: str, model: str | None, weights: str | None, augment: bool = True
) -> Protocol:
    """The paper's protocol on the image folders under ``data_root``.

    ``model`` ``None`` takes :func:`default_model`. AlexNet without weights would start from a
    random initialisation, which is not the paper's network: ConfigError.
    """
    chosen = model or default_model(weights)
    if chosen == "alexnet" and weights is None:
        raise ConfigError(
            "the paper's AlexNet is ImageNet-pretrained: give its weights with --weights PATH "
            "(a torchvision state_dict), or drop --model to use efficientnet-lite0's"
        )
    return Protocol(
        benchmark="folders",
        model=chosen,
        train=PAPER_TRAIN,
        strengths=PAPER_STRENGTHS,
        importance_batch_size=PAPER_IMPORTANCE_BATCH,
        weights=weights,
        data_root=data_root,
        augment=augment,
    )


def standin_protocol(preset: StandinPreset, model: str | None, weights: str | None) -> Protocol:
    """The protocol on the offline stand-in: the preset's budget, strengths and options,
    :data:`STANDIN_MODEL`."""
    budget = preset.training
    train = replace(
        PAPER_TRAIN,
        epochs=budget.epochs,
        first_task_epochs=budget.first_task_epochs,
        batch_size=budget.batch_size,
        lr=budget.lr,
        first_task_lr=budget.first_task_lr,
        lr_decay_epochs=budget.lr_decay_epochs,
        validation_fraction=budget.validation_fraction,
        device="cpu",
    )
    return Protocol(
        benchmark=STANDIN,
        model=model or STANDIN_MODEL,
        train=train,
        strengths=preset.strengths,
        importance_batch_size=preset.importance_batch_size,
        weights=weights,
        options=preset.options,
    )
