"""Incremental Moment Matching, IMM (Lee et al., NeurIPS 2017), one of the MAS paper's baselines.

Each task t is learned on its own, starting from the previous task's trained parameters
(*weight-transfer*), optionally pulled towards them by *L2-transfer*::

    L = L_task(θ) + λ ‖θ − θ_{t−1}‖²        (λ = ``strength``; no factor ½, as the authors' code)

After task t the trained θ_t is stored (and, for mode-IMM, the diagonal Fisher F_t of task t) and
the model that is evaluated is the *merge* of θ_1..θ_t, with α_k = 1/t::

    mean-IMM:  θ = Σ_k α_k θ_k
    mode-IMM:  θ = (Σ_k α_k F_k ⊙ θ_k) / (Σ_k α_k F_k)       (elementwise; α cancels when uniform)

F_k is the exact per-sample *true* Fisher (labels drawn from the model, seeded by the run's seed)
of the logits of task k's head, on task k's training inputs, plus ``eps`` (Lee et al. add 1e-8)
so that a weight no task's Fisher sees gets the plain mean instead of 0/0.

Choices (beyond the paper, which merges one fixed network):

* **Heads.** A head created for task k exists only in θ_k..θ_t, so each parameter is merged over
  the models that hold it, with α uniform over those. In task-incremental learning the head of task
  k is trained at task k only (later tasks' losses do not reach it), so its later copies are equal
  and the merge gives back its trained value; its Fisher after task k is ``eps`` (it is not part of
  the later tasks' output). Domain- and class-incremental scenarios share one head, merged like
  the backbone.
* **Swapping.** The loop evaluates the model as :meth:`after_task` leaves it, so ``after_task``
  loads the merged parameters and the next :meth:`before_task` puts the trained θ_{t−1} back before
  training goes on from it (the merge is for evaluation only, as in Lee et al.). Values are
  copied in place under ``no_grad``: the ``Parameter`` objects, hence the optimizer and its Adam
  moments, are untouched. Buffers (e.g. BatchNorm statistics) are not merged: they stay as training
  left them.
* **L2-transfer** applies to the parameters the current task trains that existed at task t−1
  (the backbone and, in domain/class settings, the shared head); a new head is free, and old
  heads are left out of the penalty (the loss does not reach them, and the training loop holds
  them still). The first task has no penalty (the authors' code pulls it towards 0, a weight decay;
  we leave that to the optimiser). Default λ = 1e-4, the authors' code default (an L2 distance
  summed over all weights is large, so useful values are small; with 0 only weight-transfer acts).
* **weight_transfer=False** restarts the trained parameters (backbone and current heads) of every
  task from their values when the first task began, θ_0, not from a fresh random draw: a fresh
  draw would need a private random stream and a re-initialisation rule for every module type, and
  merging networks from unrelated initialisations is meaningless (their units are not aligned;
  Lee et al. find IMM needs transfer). Heads of past tasks keep their trained values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from memaware.data.scenarios import SETTINGS, Setting, Task
from memaware.errors import ConfigError
from memaware.methods.base import MethodState, Penalised
from memaware.methods.ewc import task_fisher
from memaware.methods.options import MethodOptions, SampledOptions, StrengthOptions
from memaware.models.multihead import MultiHeadClassifier
from memaware.penalties import QuadraticPenalty

Parameters = dict[str, torch.Tensor]


def _holders(
    models: Sequence[Mapping[str, torch.Tensor]],
) -> dict[str, list[int]]:
    """For each parameter name, the indices of the models that hold it (in order of first sight)."""
    holders: dict[str, list[int]] = {}
    for k, model in enumerate(models):
        for name, value in model.items():
            indices = holders.setdefault(name, [])
            if indices and value.shape != models[indices[0]][name].shape:
                raise ConfigError(
                    f"cannot merge {name}: shapes {tuple(models[indices[0]][name].shape)} "
                    f"and {tuple(value.shape)}"
                )
            indices.append(k)
    return holders


def mean_imm(models: Sequence[Mapping[str, torch.Tensor]]) -> Parameters:
    """θ = Σ_k α_k θ_k, α_k uniform over the models that hold each parameter."""
    if not models:
        raise ConfigError("mean-IMM needs at least one model")
    merged: Parameters = {}
    for name, indices in _holders(models).items():
        total = torch.zeros_like(models[indices[0]][name])
        for k in indices:
            total += models[k][name]
        merged[name] = total / len(indices)
    return merged


def mode_imm(
    models: Sequence[Mapping[str, torch.Tensor]],
    fishers: Sequence[Mapping[str, torch.Tensor]],
) -> Parameters:
    """θ = Σ_k α_k F_k θ_k / Σ_k α_k F_k elementwise, over the models that hold each parameter.

    Every model needs a Fisher entry for each of its parameters. Where all the Fishers of an entry
    are 0 (possible only without ``eps``), the entry falls back to the mean.
    """
    if not models:
        raise ConfigError("mode-IMM needs at least one model")
    if len(fishers) != len(models):
        raise ConfigError(f"mode-IMM needs one Fisher per model: {len(fishers)} for {len(models)}")
    merged: Parameters = {}
    for name, indices in _holders(models).items():
        weighted = torch.zeros_like(models[indices[0]][name])
        precision = torch.zeros_like(weighted)
        for k in indices:
            if name not in fishers[k]:
                raise ConfigError(f"the Fisher of model {k} has no entry for {name}")
            f = fishers[k][name]
            if f.shape != weighted.shape:
                raise ConfigError(
                    f"the Fisher of {name} in model {k} has shape {tuple(f.shape)}, "
                    f"the parameter {tuple(weighted.shape)}"
                )
            weighted += f * models[k][name]
            precision += f
        mean = mean_imm([{name: models[k][name]} for k in indices])[name]
        merged[name] = torch.where(precision > 0, weighted / precision, mean)
    return merged


def _snapshot(model: nn.Module) -> Parameters:
    """A CPU copy of every parameter's value."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()}


@torch.no_grad()
def load_values(model: nn.Module, values: Mapping[str, torch.Tensor]) -> None:
    """Copy ``values`` into the model's parameters of those names, in place (the objects stay)."""
    params = dict(model.named_parameters())
    for name, value in values.items():
        if name not in params:
            raise ConfigError(f"{name} is not a parameter of the model")
        params[name].copy_(value)


def trained_names(model: nn.Module, tasks: Iterable[Task]) -> set[str]:
    """Names of the parameters that training on ``tasks`` updates: the backbone and their heads."""
    prefixes = ("backbone.", *(f"heads.{t.head}." for t in tasks))
    return {name for name, _ in model.named_parameters() if name.startswith(prefixes)}


@dataclass(frozen=True, kw_only=True)
class MeanIMMOptions(StrengthOptions):
    """mean-IMM settings (shared by mode-IMM): L2-transfer's λ and weight transfer."""

    method = "mean-imm"

    strength: float = field(
        default=1e-4,
        metadata={"help": "λ >= 0 of L2-transfer λ‖θ − θ_{t−1}‖² (0: weight transfer alone)"},
    )
    weight_transfer: bool = field(
        default=True,
        metadata={
            "help": "start each task from the previous task's θ (false: from θ_0, the start)"
        },
    )


@dataclass(frozen=True, kw_only=True)
class ModeIMMOptions(SampledOptions, MeanIMMOptions):
    """mode-IMM settings: mean-IMM's, and the Fisher that weights the merge."""

    method = "mode-imm"

    importance_batch_size: int = field(
        default=500,
        metadata={"help": "inputs per batch of the Fisher pass, >= 1 (memory and speed only)"},
    )
    eps: float = field(
        default=1e-8, metadata={"help": "added to every Fisher entry, >= 0 (Lee et al. 1e-8)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_non_negative("eps")


class IMM(Penalised):
    """Weight transfer, L2-transfer and the merged/trained swap of mean- and mode-IMM.

    The subclasses say how the stored models are merged (:meth:`merged`).
    """

    name = "imm"
    scenarios: ClassVar[tuple[Setting, ...]] = SETTINGS
    Options = MeanIMMOptions
    opts: MeanIMMOptions

    def __init__(
        self, options: MethodOptions | None = None, /, *, seed: int = 0, **fields: Any
    ) -> None:
        super().__init__(options, seed=seed, **fields)
        self.reset()

    def reset(self) -> None:
        """Forget every stored model (done when a new stream starts)."""
        #: θ_1..θ_t, the trained parameters after each task (CPU)
        self.trained: list[Parameters] = []
        #: F_1..F_t + eps for every parameter of θ_k (mode-IMM only; CPU)
        self.fishers: list[Parameters] = []
        #: the parameters when the first task began (for ``weight_transfer=False``)
        self.initial: Parameters = {}
        self.penalty = None

    def before_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        if len(seen) == 1:
            self.reset()
            if not self.opts.weight_transfer:
                self.initial = _snapshot(model)
            return
        if not self.trained:
            raise ConfigError("IMM: before_task of a later task without after_task of the first")
        previous = self.trained[-1]
        trains = trained_names(model, self.training_tasks(seen))
        start = dict(previous)
        if not self.opts.weight_transfer:
            start.update({n: v for n, v in self.initial.items() if n in trains})
        load_values(model, start)  # undo the merge: training goes on from θ_{t−1} (or θ_0)
        anchored = {name: previous[name] for name in trains if name in previous}
        self.penalty = (
            QuadraticPenalty(
                model,
                {name: torch.ones_like(value) for name, value in anchored.items()},
                self.opts.strength,
                anchors=anchored,
            )
            if self.opts.strength > 0 and anchored
            else None
        )

    def state_dict(self) -> MethodState:
        """L2-transfer's penalty (the base's), θ_1..θ_t, F_1..F_t (mode-IMM) and θ_0."""
        state = super().state_dict()
        state.put_list("trained", self.trained)
        state.put_list("fishers", self.fishers)
        state.put("initial", self.initial)
        return state

    def load_state_dict(self, model: MultiHeadClassifier, state: MethodState) -> None:
        super().load_state_dict(model, state)
        self.trained = state.take_list("trained")
        self.fishers = state.take_list("fishers")
        self.initial = state.take("initial")

    def after_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        self.trained.append(_snapshot(model))
        load_values(model, self.merged())

    def merged(self) -> Parameters:
        """The IMM merge of the models stored so far (what is evaluated after each task)."""
        raise NotImplementedError


class MeanIMM(IMM):
    """mean-IMM: the merged model is the plain average of the task models."""

    name = "mean-imm"

    def merged(self) -> Parameters:
        return mean_imm(self.trained)


class ModeIMM(IMM):
    """mode-IMM: the Fisher-weighted average of the task models."""

    name = "mode-imm"
    Options = ModeIMMOptions
    opts: ModeIMMOptions

    def task_fisher(self, model: MultiHeadClassifier, task: Task) -> Mapping[str, torch.Tensor]:
        """F_t: exact per-sample true Fisher of task ``task``'s head logits on its training inputs."""
        return task_fisher(
            model,
            task,
            labels="true",
            batch_size=self.opts.importance_batch_size,
            max_samples=self.opts.max_samples,
            seed=self.seed,
        )

    def after_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        # F_t of the trained θ_t, before the merge replaces it
        measured = self.task_fisher(model, task)
        self.fishers.append(
            {
                name: (
                    measured[name].detach().to("cpu", param.dtype)
                    if name in measured
                    else torch.zeros_like(param, device="cpu")
                )
                + self.opts.eps
                for name, param in model.named_parameters()
            }
        )
        super().after_task(model, task, seen)

    def merged(self) -> Parameters:
        return mode_imm(self.trained, self.fishers)
