"""Synaptic Intelligence (Zenke, Poole & Ganguli, ICML 2017).

While task t is learned, every parameter keeps a running path integral of its contribution to the
decrease of the *task* loss L (unregularised), one term per optimizer step k::

    w_i ← w_i − g_i(θ^(k)) · Δθ_i^(k),    g = ∂L/∂θ at θ^(k),   Δθ^(k) = θ^(k+1) − θ^(k)

At the end of task t, with θ_t the parameters then and θ_{t−1} those at the end of the previous
task (for the first task, and for a head created later, the values when training started)::

    Ω_new = max(0, w / ((θ_t − θ_{t−1})² + ξ))      ξ = ``damping``
    Ω ← Ω + Ω_new,    w ← 0,    θ* ← θ_t

and while learning the next task the loss is  L + c Σ Ω (θ − θ*)²  (c = ``strength``, no ½).

The unregularised gradient costs no second backward pass: the training loop back-propagates L
alone and the penalty's gradient 2cΩ(θ − θ*) is added to ``.grad`` in :meth:`SI.after_backward`,
so g is copied just before that. All per-step work is a few fused ``torch._foreach_*`` kernels
over the parameters. Parameters without a task gradient in a step (the heads of other tasks)
add nothing to w: g = 0 there, even when the penalty moves them.

ξ = 0.1 is Hsu et al.'s setting (GT-RIPL benchmark); Zenke et al. used 1e-3 on their MNIST runs.
c is not portable between code bases: it depends on the loss scale, the optimizer and the
accumulation of Ω.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from memaware.data.scenarios import SETTINGS, Setting, Task
from memaware.errors import ConfigError
from memaware.methods.base import MethodState
from memaware.methods.options import MethodOptions, StrengthOptions
from memaware.methods.regulariser import QuadraticRegulariser
from memaware.models.multihead import MultiHeadClassifier


@dataclass(frozen=True, kw_only=True)
class SIOptions(StrengthOptions):
    """SI settings: c (``strength``) and the damping ξ."""

    method = "si"

    strength: float = field(
        default=1.0, metadata={"help": "c >= 0, the weight of the penalty c Σ Ω (θ − θ*)²"}
    )
    damping: float = field(
        default=0.1,
        metadata={"help": "ξ in Ω = w / (Δθ² + ξ), > 0 (Hsu et al. 0.1; Zenke et al. 1e-3)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_positive("damping")


class SI(QuadraticRegulariser):
    """Synaptic Intelligence: importance from the path integral of the task loss, summed over tasks."""

    name = "si"
    scenarios: ClassVar[tuple[Setting, ...]] = SETTINGS
    Options = SIOptions
    opts: SIOptions

    def __init__(
        self, options: MethodOptions | None = None, /, *, seed: int = 0, **fields: Any
    ) -> None:
        super().__init__(options, seed=seed, **fields)
        # Aligned lists over the parameters tracked so far (``_names`` order):
        self._names: list[str] = []
        self._params: list[torch.Tensor] = []
        self._start: list[torch.Tensor] = []  # θ_{t−1}: end of the previous task, or creation
        self._before: list[torch.Tensor] = []  # θ^(k): the parameters before the current step
        self._path: list[torch.Tensor] = []  # w
        self._task_grad: list[torch.Tensor] = []  # g of the current step, before the penalty's
        self._active: list[int] | None = None  # the parameters with a task gradient this step

    @property
    def path_integral(self) -> dict[str, torch.Tensor]:
        """w of the task being learned, keyed by parameter name (zero right after a task ends)."""
        return dict(zip(self._names, self._path, strict=True))

    def before_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        known = dict(zip(self._names, self._params, strict=True))
        for name, param in model.named_parameters():
            if name in known:
                if known[name] is not param:
                    raise ConfigError(
                        f"si: parameter {name} is not the one tracked so far; "
                        "use a fresh SI for a new model"
                    )
                continue
            # A parameter seen for the first time (the whole model before the first task, a new
            # head later) starts its path here, at its creation value.
            value = param.detach()
            self._names.append(name)
            self._params.append(param)
            self._start.append(value.clone())
            self._before.append(value.clone())
            self._path.append(torch.zeros_like(value))
            self._task_grad.append(torch.zeros_like(value))
        with torch.no_grad():
            torch._foreach_copy_(self._before, [p.detach() for p in self._params])

    def state_dict(self) -> MethodState:
        """Ω, θ* and the penalty (the base's), and per tracked parameter θ_{t−1} (``start``), θ^(k)
        (``before``) and w (``path``); the step's copy of g is scratch and not saved."""
        state = super().state_dict()
        for prefix, values in (
            ("start", self._start),
            ("before", self._before),
            ("path", self._path),
        ):
            state.put(prefix, dict(zip(self._names, values, strict=True)))
        return state

    def load_state_dict(self, model: MultiHeadClassifier, state: MethodState) -> None:
        super().load_state_dict(model, state)
        params = dict(model.named_parameters())
        device = model.device
        self._names = list(state.values["path"])
        self._params = [params[name] for name in self._names]
        self._start, self._before, self._path = (
            list(state.take(prefix, device).values()) for prefix in ("start", "before", "path")
        )
        self._task_grad = [torch.zeros_like(value) for value in self._path]
        self._active = None

    @torch.no_grad()
    def after_backward(self, model: MultiHeadClassifier) -> None:
        if not self._params:
            raise ConfigError("si: after_backward was called before before_task")
        grads = [p.grad for p in self._params]
        self._active = [i for i, g in enumerate(grads) if g is not None]
        if self._active:
            torch._foreach_copy_(
                [self._task_grad[i] for i in self._active],
                [grads[i] for i in self._active],  # type: ignore[misc]
            )
        super().after_backward(model)  # .grad += 2cΩ(θ − θ*)

    @torch.no_grad()
    def after_step(self, model: MultiHeadClassifier) -> None:
        if self._active is None:
            raise ConfigError("si: after_step was called before after_backward")
        if self._active:
            params, before, path, task_grad = (
                [values[i] for i in self._active]
                for values in (self._params, self._before, self._path, self._task_grad)
            )
            delta = torch._foreach_sub(params, before)
            torch._foreach_addcmul_(path, task_grad, delta, value=-1.0)
        torch._foreach_copy_(self._before, [p.detach() for p in self._params])
        self._active = None

    @torch.no_grad()
    def importance(
        self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]
    ) -> Mapping[str, torch.Tensor]:
        if not self._params:
            raise ConfigError("si: after_task was called before before_task")
        current = [p.detach() for p in self._params]
        denominator = torch._foreach_sub(current, self._start)
        torch._foreach_mul_(denominator, denominator)
        torch._foreach_add_(denominator, self.opts.damping)
        omega = torch._foreach_div(self._path, denominator)
        # w < 0 where the parameter's moves raised the task loss on balance (an optimizer
        # overshoot, noise, the penalty pulling against the task). Negative importance would make
        # the penalty reward leaving θ* (and QuadraticPenalty takes √max(Ω, 0) anyway): clamp at 0.
        torch._foreach_clamp_min_(omega, 0.0)
        return dict(zip(self._names, omega, strict=True))

    def after_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        super().after_task(model, task, seen)  # Ω ← Ω + Ω_new, θ* ← θ_t, new penalty
        assert self.penalty is not None
        anchors = self.penalty.anchors
        with torch.no_grad():
            for i, name in enumerate(self._names):
                self._path[i].zero_()
                self._start[i] = anchors[name]  # θ_{t−1} of the next task is θ* (the same tensor)
