"""MAS as a Hugging Face ``transformers`` ``TrainerCallback``, for any ``PreTrainedModel``.

::

    from memaware.integrations.hf import MASTrainerCallback

    mas = MASTrainerCallback(strength=1.0, data=unlabelled)   # MASOptions' fields; batches of inputs
    for task in tasks:                                         # one Trainer (or train()) per task
        Trainer(model, args, train_dataset=task.train, callbacks=[mas]).train()

* The penalty's gradient: ``on_pre_optimizer_step`` adds 2λΩ(θ − θ*) to ``.grad``. The
  ``Trainer`` calls it once per optimizer step, after the step's last backward pass (with
  ``gradient_accumulation_steps=k``, once, to the accumulated gradient) and before
  ``optimizer.step()``. The ``Trainer`` clips (``max_grad_norm``) *before* this hook, so the
  clipping and the logged ``grad_norm`` see the task's gradient alone, not the penalty's.
* Importance: at the end of each ``train()`` (``on_train_end``, after ``load_best_model_at_end``
  has loaded the best weights), Ω_new = (1/N) Σ_k |∂‖F(x_k)‖²/∂θ| on ``data``: an iterable of
  unlabelled batches, each a mapping of the model's input tensors (``input_ids``,
  ``attention_mask``, ...; ``labels`` is dropped), a DataLoader for instance; a function of the
  ``Trainer``'s callback arguments (``args, state, model, train_dataloader``, ...) that returns
  one; ``"train"`` (the ``Trainer``'s own training loader); or ``None`` to call
  :meth:`MASTrainerCallback.consolidate` yourself. F is the model's ``logits`` unless
  ``outputs`` says otherwise; the exact per-sample engine handles BERT-like models (embeddings,
  LayerNorm, attention's linear layers; a parameter the engine cannot split by layer, such as
  BERT's position embeddings of shape (1, T) or tied weights, takes its exact graph path).
* ``fp16=True`` is refused: depending on the ``transformers`` version and on ``max_grad_norm``,
  the gradients at ``on_pre_optimizer_step`` may still be scaled by the ``GradScaler``, and a
  penalty added to them would be divided by the scale. ``bf16=True`` and float32 are fine, and
  so are half-precision models (the penalty's state stays in float32). DeepSpeed is refused (it
  owns the gradients and the step).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler

from memaware.errors import ConfigError
from memaware.importance import Importance
from memaware.integrations.core import MASRegulariser, Outputs
from memaware.methods.mas import MASOptions

if not hasattr(CallbackHandler, "on_pre_optimizer_step"):  # an old Trainer would never call it
    raise ImportError(
        "memaware.integrations.hf needs a transformers whose Trainer has on_pre_optimizer_step "
        "(4.47 or later): pip install 'memaware[hf]'"
    )

#: where Ω is computed at the end of each ``train()``: batches, ``"train"``, a function of the
#: callback's keyword arguments (``args``, ``state``, ``model``, ``train_dataloader``, ...), or None
ImportanceData = str | Iterable[Any] | torch.Tensor | Callable[..., Iterable[Any]] | None


class MASTrainerCallback(TrainerCallback):
    """Memory Aware Synapses for the Hugging Face ``Trainer`` (see the module doc).

    Args:
        options: :class:`~memaware.methods.mas.MASOptions`, or give its fields as keywords
            (``strength``, ``granularity``, ``norm``, ``accumulation``, ``alpha``,
            ``max_samples``, ``importance_batch_size``).
        data: the importance data of each ``train()``, see :data:`ImportanceData`.
        outputs: F(model, inputs), ``inputs`` the batch's mapping without labels; default the
            model's ``logits``.

    ``regulariser`` is the :class:`~memaware.integrations.core.MASRegulariser` holding Ω, θ*
    and the penalty; it carries over from one ``train()`` (and one ``Trainer``) to the next.
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
        if isinstance(data, str) and data != "train":
            raise ConfigError(f"data must be 'train', batches, a function or None, got {data!r}")
        self.regulariser = MASRegulariser(options, **fields)
        self.data = data
        self.outputs = outputs

    @property
    def penalty_active(self) -> bool:
        """Whether a task has been consolidated (the penalty applies from then on)."""
        return self.regulariser.penalty is not None

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if args.fp16:
            raise ConfigError(
                "MASTrainerCallback does not support fp16=True: the gradients it would add the "
                "penalty to may still be scaled by the GradScaler; use bf16=True or float32"
            )
        if args.deepspeed:
            raise ConfigError(
                "MASTrainerCallback does not support DeepSpeed, which owns the gradients and the "
                "optimizer step"
            )
        if isinstance(self.data, str) and args.world_size > 1:
            raise ConfigError(
                "with several processes each one's training loader holds its own shard, and Ω "
                "(so the penalty) would differ between them: give MASTrainerCallback(data=...) "
                "the same batches on every process"
            )
        if model is not None:
            self.regulariser.attach(model)

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.regulariser.apply_penalty_grad()

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        train_dataloader: Iterable[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if self.data is None:
            return
        if model is None:
            raise ConfigError("the Trainer passed no model to on_train_end")
        if isinstance(self.data, str):  # "train"
            if train_dataloader is None:
                raise ConfigError("the Trainer has no training loader: give data=")
            data: Iterable[Any] | torch.Tensor = train_dataloader
        elif callable(self.data):
            data = self.data(
                args=args,
                state=state,
                model=model,
                train_dataloader=train_dataloader,
                **kwargs,
            )
        else:
            data = self.data
        self.consolidate(model, data)

    def consolidate(
        self, model: nn.Module, data: Iterable[Any] | torch.Tensor, outputs: Outputs | None = None
    ) -> Importance:
        """End of a task: Ω ← Ω + Ω_new on ``data`` (labels dropped), θ* ← θ; returns Ω_new.

        Called at the end of each ``train()`` with the callback's ``data``; call it yourself
        (with ``data=None``) to choose the data after training. ``outputs`` defaults to the
        callback's.
        """
        return self.regulariser.consolidate(model, data, outputs or self.outputs)
