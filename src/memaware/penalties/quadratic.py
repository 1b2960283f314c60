"""The quadratic anchor penalty λ Σ_i Ω_i (θ_i − θ*_i)² shared by MAS, l-MAS, EWC, SI, L2 and IMM.

Its gradient is ∂/∂θ_i = 2λ Ω_i (θ_i − θ*_i). Two ways to apply it, both fused over all
parameters with ``torch._foreach_*`` kernels:

* :meth:`QuadraticPenalty.add_to_grad` (the training loop's hot path): after ``loss.backward()``
  and before ``optimizer.step()``, add the gradient to every ``.grad`` in two passes over the
  parameters, in place, with no autograd node and no extra gradient buffer;
* ``penalty()``: the value as a differentiable loss term (``loss + penalty()``), for closures,
  higher-order use or when the value itself is wanted. Identical gradient, about twice the work.

Only first-order use needs the gradient, so for plain SGD/Adam the two are the same update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from memaware.errors import ConfigError


class _WeightedSquaredDistance(torch.autograd.Function):
    """λ Σ_i ‖√Ω_i ⊙ (θ_i − θ*_i)‖² over lists of tensors; gradient 2λΩ_i ⊙ (θ_i − θ*_i)."""

    @staticmethod
    def forward(
        ctx: Any,
        strength: float,
        sqrt_omegas: list[torch.Tensor],
        coefficients: list[torch.Tensor],
        anchors: list[torch.Tensor],
        *params: torch.Tensor,
    ) -> torch.Tensor:
        difference = torch._foreach_sub(params, anchors)
        ctx.difference, ctx.coefficients = difference, coefficients
        scaled = torch._foreach_mul(difference, sqrt_omegas)
        return torch.stack(torch._foreach_norm(scaled)).square().sum().mul_(strength)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        grads = torch._foreach_mul(ctx.difference, ctx.coefficients)
        # A loss term is almost always back-propagated with weight 1: skip that pass on the CPU,
        # where reading the scalar costs no device synchronisation.
        if grad_output.device.type != "cpu" or float(grad_output) != 1.0:
            torch._foreach_mul_(grads, grad_output)
        return (None, None, None, None, *grads)


class QuadraticPenalty(nn.Module):
    """``λ Σ_i Ω_i (θ_i − θ*_i)²`` over the parameters of ``model`` named in ``importance``.

    ``strength`` (λ) is fixed at construction. Ω and θ* are registered as buffers
    (``omega__<name>``, ``anchor__<name>``, dots replaced by ``__``), so they travel with a
    ``state_dict``. Parameters without an importance entry (e.g. a head added later) are not
    penalised. ``anchors`` default to the parameters' current values. Negative importance
    entries count as 0.

    Use either ``loss = task_loss + penalty()`` before ``backward()``, or, cheaper,
    ``task_loss.backward(); penalty.add_to_grad(); optimizer.step()``.
    """

    def __init__(
        self,
        model: nn.Module,
        importance: Mapping[str, torch.Tensor],
        strength: float = 1.0,
        anchors: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if strength < 0:
            raise ConfigError(f"the penalty strength λ must be >= 0, got {strength}")
        self.strength = strength
        params = dict(model.named_parameters())
        unknown = sorted(set(importance) - set(params))
        if unknown:
            raise ConfigError(f"importance names {unknown[:3]} are not parameters of the model")
        self.names = [name for name in params if name in importance]
        self._params: list[torch.Tensor] = [params[name] for name in self.names]
        for name, param in zip(self.names, self._params, strict=True):
            omega = importance[name].detach().to(param.device, param.dtype)
            if omega.shape != param.shape:
                raise ConfigError(
                    f"importance of {name} has shape {tuple(omega.shape)}, parameter {tuple(param.shape)}"
                )
            anchor = (
                (anchors[name] if anchors is not None else param)
                .detach()
                .to(param.device, param.dtype)
            )
            key = name.replace(".", "__")
            self.register_buffer(f"omega__{key}", omega.clone())
            self.register_buffer(f"anchor__{key}", anchor.clone())
            # Derived from Ω, cached because every step needs them (not saved: see _refresh).
            self.register_buffer(f"sqrt_omega__{key}", torch.empty_like(omega), persistent=False)
            self.register_buffer(f"coefficient__{key}", torch.empty_like(omega), persistent=False)
        self._lists: dict[str, list[torch.Tensor]] = {}
        self._refresh()
        self.register_load_state_dict_post_hook(  # type: ignore[no-untyped-call]
            lambda module, _keys: module._refresh()
        )

    def _refresh(self) -> None:
        """Recompute the cached √Ω and 2λΩ from the Ω buffers (after construction or loading)."""
        with torch.no_grad():
            for omega, root, coefficient in zip(
                self._buffers_named("omega"),
                self._buffers_named("sqrt_omega"),
                self._buffers_named("coefficient"),
                strict=True,
            ):
                positive = omega.clamp_min(0)
                root.copy_(positive.sqrt())
                coefficient.copy_(positive.mul(2 * self.strength))

    def _apply(self, fn: Any, recurse: bool = True) -> QuadraticPenalty:
        # .to() / .double() / .cuda() replace the buffer tensors: drop the cached lists of them.
        self._lists = {}
        super()._apply(fn, recurse)  # type: ignore[no-untyped-call]
        return self

    def _buffers_named(self, prefix: str) -> list[torch.Tensor]:
        """The buffers ``<prefix>__<name>`` in ``names`` order (cached; the hot path asks often)."""
        if prefix not in self._lists:
            self._lists[prefix] = [
                getattr(self, f"{prefix}__{name.replace('.', '__')}") for name in self.names
            ]
        return self._lists[prefix]

    @property
    def omegas(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self._buffers_named("omega"), strict=True))

    @property
    def anchors(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self._buffers_named("anchor"), strict=True))

    def forward(self) -> torch.Tensor:
        """The penalty value, differentiable with respect to the model's parameters."""
        if not self.names:
            return torch.zeros(())
        value: torch.Tensor = _WeightedSquaredDistance.apply(  # type: ignore[no-untyped-call]
            self.strength,
            self._buffers_named("sqrt_omega"),
            self._buffers_named("coefficient"),
            self._buffers_named("anchor"),
            *self._params,
        )
        return value

    @torch.no_grad()
    def add_to_grad(self) -> None:
        """``θ_i.grad += 2λ Ω_i (θ_i − θ*_i)`` for every penalised parameter, in place.

        Call it after ``backward()`` of the task loss and before the optimizer step (after
        ``GradScaler.unscale_`` under mixed precision, before gradient clipping). A penalised
        parameter without a gradient (not used by this step's loss, e.g. an earlier task's head)
        gets the penalty's gradient alone, as ``backward()`` of ``loss + penalty()`` would give.
        """
        if not self.names:
            return
        for param in self._params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        grads = [param.grad for param in self._params]
        difference = torch._foreach_sub(self._params, self._buffers_named("anchor"))
        torch._foreach_addcmul_(grads, difference, self._buffers_named("coefficient"))  # type: ignore[arg-type]
