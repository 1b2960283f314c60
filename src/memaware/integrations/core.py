"""MAS for other people's training loops, framework-free: the state the Lightning and Hugging Face
callbacks share.

A :class:`MASRegulariser` holds the options (:class:`~memaware.methods.mas.MASOptions`), the Ω
accumulated over the tasks learned so far and the anchors θ*, in one
:class:`~memaware.penalties.QuadraticPenalty`. Two calls are all a training loop needs:

* :meth:`MASRegulariser.consolidate` once a task is learned: Ω_new = (1/N) Σ_k |∂‖F(x_k)‖²/∂θ| on
  unlabelled inputs (:func:`memaware.importance.mas`, exact per sample), Ω ← Ω + Ω_new (or the
  blend), θ* ← θ;
* :meth:`MASRegulariser.apply_penalty_grad` after every backward pass that ends in an optimizer
  step (after unscaling under a ``GradScaler``, before clipping): ``.grad += 2λΩ(θ − θ*)``, the
  gradient of λ Σ Ω (θ − θ*)² (:meth:`~memaware.penalties.QuadraticPenalty.add_to_grad`).

Batches of importance data may be tensors, tuples or lists whose first item is the input (labels
ignored), or mappings of named tensors as Hugging Face models take them (``input_ids``,
``attention_mask``, ...; the label keys in :data:`LABEL_KEYS` are dropped). F defaults to the
model's output on the batch's input, ``model(x)`` or ``model(**inputs)``, and to its ``logits``
where the output is a model-output object (a Hugging Face ``ModelOutput``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from memaware.distributed.reduce import Distributed
from memaware.errors import ConfigError
from memaware.importance import Importance, accumulate, mas
from memaware.importance.mas import OutputFn
from memaware.methods.mas import MASOptions
from memaware.methods.options import MethodOptions, build
from memaware.penalties import QuadraticPenalty

#: F(model, inputs): ``inputs`` is a batch's input tensor, or its mapping of named tensors; the
#: result is the output tensor or an object with a ``logits`` tensor.
Outputs = Callable[[nn.Module, Any], Any]

#: the fields of :class:`~memaware.methods.mas.MASOptions` that apply outside memaware's own task
#: loop; the others (the heads F reads, which task data Ω reads, an importance file) must keep
#: their defaults, since here the caller chooses F and the data
USED_OPTIONS: frozenset[str] = frozenset(
    {
        "strength",
        "granularity",
        "norm",
        "accumulation",
        "alpha",
        "max_samples",
        "importance_batch_size",
    }
)

#: keys of a mapping batch that hold labels, not inputs: dropped before F is computed
LABEL_KEYS: tuple[str, ...] = ("labels", "label", "label_ids")


def model_output(model: nn.Module, inputs: Any) -> Any:
    """The default F: ``model(**inputs)`` for a mapping of named inputs, else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def output_tensor(output: Any) -> torch.Tensor:
    """F as a tensor: the output itself, or its ``logits`` (a Hugging Face ``ModelOutput``)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = (
        output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    )
    if isinstance(logits, torch.Tensor):
        return logits
    raise ConfigError(
        f"F must be a tensor or have a `logits` tensor, the model returned {type(output).__name__}: "
        "pass outputs=lambda model, inputs: ... returning the tensor whose squared norm MAS measures"
    )


def _parameter_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class _ImportanceBatches:
    """The batches of importance data as :func:`memaware.importance.mas` reads them.

    A tensor, tuple or list batch goes through as it is. A mapping batch goes as the tensor of
    its row indices, 0..N−1, which the engine counts samples by (and ``max_samples`` cuts), while
    the mapping is kept for F: :meth:`output` selects those rows of each of its tensors and calls
    F on them. ``mas`` computes each batch's F before it reads the next, so the batch kept is the
    one the indices belong to.
    """

    def __init__(self, data: Iterable[Any], device: torch.device) -> None:
        self.data, self.device = data, device
        self.current: dict[str, Any] | None = None
        self.rows = 0

    def __iter__(self) -> Iterator[Any]:
        for batch in self.data:
            if not isinstance(batch, Mapping):
                self.current = None
                yield batch
                continue
            inputs = {
                key: value.to(self.device) if isinstance(value, torch.Tensor) else value
                for key, value in batch.items()
                if key not in LABEL_KEYS
            }
            sizes = [v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor) and v.dim()]
            if not sizes:
                raise ConfigError(
                    f"an importance batch of keys {sorted(batch)} holds no input tensor"
                )
            self.current, self.rows = inputs, sizes[0]
            yield torch.arange(self.rows, device=self.device)

    def output(self, outputs: Outputs) -> OutputFn:
        def forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
            current = self.current
            if current is None:
                return output_tensor(outputs(model, x))
            if len(x) != self.rows:  # max_samples cut the batch: only its first rows
                current = {
                    key: value[x]
                    if isinstance(value, torch.Tensor) and value.dim() and len(value) == self.rows
                    else value
                    for key, value in current.items()
                }
            return output_tensor(outputs(model, current))

        return forward


class MASRegulariser:
    """MAS (Aljundi et al. 2018) for any training loop: Ω and θ* after each task, the penalty's
    gradient at every step.

    ``MASRegulariser(strength=0.5)`` or ``MASRegulariser(MASOptions(...))``. The options are MAS's:
    ``strength`` (λ), ``granularity`` (``sample``: the exact per-sample Ω; ``batch``: the authors'
    estimator over the data's own batches), ``norm``, ``accumulation`` and ``alpha``,
    ``max_samples`` (inputs per consolidation), and ``importance_batch_size`` (the batches a tensor
    of inputs is split into): :data:`USED_OPTIONS`. The data and F are the caller's
    (:meth:`consolidate`), so the options of memaware's own task loop (``heads``,
    ``importance_data``, ``importance_source``, ...) are refused unless left at their defaults:
    choose F with ``outputs=`` and the data with ``data``.

    Attributes: ``opts``; ``omega`` (the accumulated Ω, ``None`` before the first consolidation);
    ``last`` (the :class:`~memaware.importance.Importance` of the latest one); ``penalty`` (the
    :class:`~memaware.penalties.QuadraticPenalty` over ``omega`` and θ*, ``None`` before it); ``tasks``
    (consolidations so far).
    """

    def __init__(self, options: MASOptions | None = None, /, **fields: Any) -> None:
        if options is not None and not isinstance(options, MASOptions):
            raise TypeError(f"options must be MASOptions, got {options!r}")
        built: MethodOptions = build(MASOptions, fields, options)
        assert isinstance(built, MASOptions)
        for option in dataclasses.fields(MASOptions):
            value = getattr(built, option.name)
            if option.name not in USED_OPTIONS and value != option.default:
                raise ConfigError(
                    f"mas: option {option.name}={value} is for memaware's own task loop; here Ω "
                    "is computed on the data given to consolidate (or a callback's data=) and F "
                    "is the model's output or outputs=lambda model, inputs: ..."
                )
        self.opts = built
        self.omega: dict[str, torch.Tensor] | None = None
        self.last: Importance | None = None
        self.penalty: QuadraticPenalty | None = None
        self.tasks = 0
        self._anchored: dict[str, nn.Parameter] = {}  # the parameters the penalty holds, by name

    def importance(
        self,
        model: nn.Module,
        data: Iterable[Any] | torch.Tensor,
        outputs: Outputs | None = None,
        distributed: Distributed = "shard",
    ) -> Importance:
        """Ω_new of ``model`` on the inputs of ``data`` (unlabelled), F = ``outputs`` (default
        :func:`model_output`), in eval mode, with the options' granularity, norm and max_samples.

        Under a process group, ``distributed`` says how ``data`` relates to the ranks (see
        :func:`memaware.importance.mas`): ``shard`` (the same data on every rank), ``reduce``
        (each rank's own rows) or ``none``."""
        if isinstance(data, torch.Tensor):
            data = torch.split(data, self.opts.importance_batch_size)
        stream = _ImportanceBatches(data, _parameter_device(model))
        return mas(
            model,
            stream,
            granularity=self.opts.granularity,
            norm=self.opts.norm,
            outputs=stream.output(outputs or model_output),
            max_samples=self.opts.max_samples,
            distributed=distributed,
        )

    def consolidate(
        self,
        model: nn.Module,
        data: Iterable[Any] | torch.Tensor,
        outputs: Outputs | None = None,
        distributed: Distributed = "shard",
    ) -> Importance:
        """End of a task: Ω_new (:meth:`importance`), Ω ← Ω + Ω_new (or the blend), θ* ← θ now.

        Returns Ω_new. Parameters that do not reach F (a head of another task, a frozen layer)
        have no Ω_new; those added since the last consolidation join the penalty now.
        """
        new = self.importance(model, data, outputs, distributed)
        if not new.n_samples:
            raise ConfigError(
                "the importance data yielded no input (an iterator already used up by an "
                "earlier task?): give batches that can be read once per task"
            )
        if not len(new):
            raise ConfigError("no trainable parameter of the model reaches F: nothing to protect")
        self.omega = accumulate(self.omega, new, rule=self.opts.accumulation, alpha=self.opts.alpha)
        self.penalty = QuadraticPenalty(model, self.omega, self.opts.strength)
        params = dict(model.named_parameters())
        self._anchored = {name: params[name] for name in self.penalty.names}
        self.last = new
        self.tasks += 1
        return new

    def attach(self, model: nn.Module) -> None:
        """Check that the penalty anchors ``model``'s own parameters and move Ω and θ* to their
        device (a training run about to start may have moved the model)."""
        if self.penalty is None:
            return
        params = dict(model.named_parameters())
        for name, param in self._anchored.items():
            if params.get(name) is not param:
                raise ConfigError(
                    f"the MAS state was consolidated on another model: its parameter {name} is not "
                    "this model's; use one regulariser (one callback) per model"
                )
        devices = {param.device for param in self._anchored.values()}
        if len(devices) == 1:
            self.penalty.to(devices.pop())

    def apply_penalty_grad(self) -> bool:
        """``θ.grad += 2λΩ(θ − θ*)`` for every penalised parameter; ``False`` before the first
        consolidation (nothing to add). Call once per optimizer step, after the last backward
        pass of the step (and after unscaling, under a ``GradScaler``), before clipping."""
        if self.penalty is None:
            return False
        self.penalty.add_to_grad()
        return True

    def penalty_value(self) -> torch.Tensor | None:
        """λ Σ Ω (θ − θ*)² now, ``None`` before the first consolidation."""
        return self.penalty() if self.penalty is not None else None
