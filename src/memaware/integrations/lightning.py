"""MAS as a PyTorch Lightning callback: an unchanged ``LightningModule``, one ``trainer.fit`` per task.

::

    from memaware.integrations.lightning import MASCallback

    mas = MASCallback(strength=1.0)                  # MASOptions' fields, or MASCallback(MASOptions(...))
    for task in tasks:                               # one fit per task, the same callback throughout
        trainer = lightning.pytorch.Trainer(max_epochs=..., callbacks=[mas])
        trainer.fit(module, task.train_loader)       # Ω on task.train_loader's inputs at the fit's end

* The penalty's gradient: ``on_before_optimizer_step`` adds 2λΩ(θ − θ*) to ``.grad``. Lightning
  calls it once per optimizer step, after the step's last backward pass (so with
  ``accumulate_grad_batches=k`` the penalty is added once, to the accumulated gradient), after
  unscaling the gradients under ``precision="16-mixed"`` and before gradient clipping, so
  ``gradient_clip_val`` bounds the whole gradient, the penalty's included. (``on_after_backward``
  would run once per micro-batch, and on gradients still scaled by the ``GradScaler``.)
* Importance: at the end of each ``fit`` (``on_train_end``, the model still on its device),
  :meth:`MASCallback.consolidate` computes Ω_new = (1/N) Σ_k |∂‖F(x_k)‖²/∂θ| on ``data`` (the
  fit's training loader by default, labels ignored; any iterable of batches; a function of the
  trainer and module; or ``None`` to call :meth:`MASCallback.consolidate` yourself), adds it to Ω
  and anchors θ* at the parameters. F is the module's forward output unless ``outputs`` says
  otherwise (e.g. one task's head: ``outputs=lambda module, x: module.heads[t](module.body(x))``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.optim import Optimizer

from memaware.errors import ConfigError
from memaware.importance import Importance
from memaware.integrations.core import MASRegulariser, Outputs
from memaware.methods.mas import MASOptions

#: where Ω is computed at the end of each fit: the fit's training loader (``"train"``), a fixed
#: iterable of batches, a function of the trainer and module that returns one, or ``None`` (no
#: automatic consolidation)
ImportanceData = (
    Literal["train"]
    | Iterable[Any]
    | torch.Tensor
    | Callable[[Trainer, LightningModule], Iterable[Any]]
    | None
)


class MASCallback(Callback):
    """Memory Aware Synapses for an unchanged ``LightningModule`` (see the module doc).

    Args:
        options: :class:`~memaware.methods.mas.MASOptions`, or give its fields as keywords
            (``strength``, ``granularity``, ``norm``, ``accumulation``, ``alpha``,
            ``max_samples``, ``importance_batch_size``).
        data: the importance data of each fit (default ``"train"``: the inputs of the fit's
            training loader), see :data:`ImportanceData`.
        outputs: F(module, inputs); default the module's forward output (its ``logits`` where it
            returns a model-output object).

    ``regulariser`` is the :class:`~memaware.integrations.core.MASRegulariser` holding Ω, θ*
    and the penalty; it carries over from one fit (and one ``Trainer``) to the next.
    """

    def __init__(
        self,
        options: MASOptions | None = None,
        /,
        *,
        data: ImportanceData = "train",
        outputs: Outputs | None = None,
        **fields: Any,
    ) -> None:
        super().__init__()
        if isinstance(data, str) and data != "train":
            raise ConfigError(f"data must be 'train', batches, a function or None, got {data!r}")
        self.regulariser = MASRegulariser(options, **fields)
        self.data = data
        self.outputs = outputs

    @property
    def penalty_active(self) -> bool:
        """Whether a task has been consolidated (the penalty applies from then on)."""
        return self.regulariser.penalty is not None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        optimizers = trainer.optimizers
        if len(optimizers) > 1:
            raise ConfigError(
                f"MASCallback adds the penalty's gradient once per optimizer step; this module has "
                f"{len(optimizers)} optimizers, whose steps would each add it to every parameter"
            )
        plugin = trainer.precision_plugin
        if (
            isinstance(plugin, MixedPrecision)
            and plugin.scaler is not None
            and any(getattr(o, "_step_supports_amp_scaling", False) for o in optimizers)
        ):
            raise ConfigError(
                "this optimizer unscales its gradients inside step() (a fused optimizer under "
                "precision='16-mixed'), after MAS would add the penalty's gradient: use an "
                "unfused optimizer, or precision='bf16-mixed' or '32-true'"
            )
        if isinstance(self.data, str) and trainer.world_size > 1:
            raise ConfigError(
                "with several processes each one's training loader holds its own shard, and Ω "
                "(so the penalty) would differ between them: give MASCallback(data=...) the same "
                "batches on every process"
            )
        self.regulariser.attach(pl_module)

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer
    ) -> None:
        self.regulariser.apply_penalty_grad()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.data is None:
            return
        if isinstance(self.data, str):  # "train"
            data = _training_loader(trainer)
        elif callable(self.data):
            data = self.data(trainer, pl_module)
        else:
            data = self.data
        if isinstance(data, torch.Tensor):
            data = torch.split(data, self.regulariser.opts.importance_batch_size)
        # the batches as training step receives them: floating inputs in the precision's dtype
        # (bf16-true, 16-true); unchanged under mixed and 32-bit precision
        convert = trainer.precision_plugin.convert_input
        self.consolidate(pl_module, (convert(batch) for batch in data))

    def consolidate(
        self,
        pl_module: torch.nn.Module,
        data: Iterable[Any] | torch.Tensor,
        outputs: Outputs | None = None,
    ) -> Importance:
        """End of a task: Ω ← Ω + Ω_new on ``data`` (labels ignored), θ* ← θ; returns Ω_new.

        Called at the end of each fit with the callback's ``data`` (its floating inputs cast as
        the fit's precision casts a training batch); call it yourself (with ``data=None``) to
        choose the data after the fit, in the model's dtype. ``outputs`` defaults to the callback's.
        """
        return self.regulariser.consolidate(pl_module, data, outputs or self.outputs)


def _training_loader(trainer: Trainer) -> Iterable[Any]:
    loader = trainer.train_dataloader
    if loader is None:
        raise ConfigError("the fit has no training loader to compute the importance on: give data=")
    if isinstance(loader, (Mapping, Sequence)):
        raise ConfigError(
            "the fit has several training loaders: give MASCallback(data=...) the batches "
            "the importance is computed on"
        )
    return loader  # type: ignore[no-any-return]
