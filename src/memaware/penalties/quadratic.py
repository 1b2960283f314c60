"""The quadratic anchor penalty λ Σ_i Ω_i (θ_i − θ*_i)² shared by MAS, l-MAS, EWC, SI and L2.

It is an explicit loss term (no hidden optimizer), computed with fused ``torch._foreach_*`` kernels
over all parameters at once, with a hand-written backward: ∂/∂θ_i = 2λ Ω_i (θ_i − θ*_i).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from memaware.errors import ConfigError


class _WeightedSquaredDistance(torch.autograd.Function):
    """Σ_i ‖√Ω_i ⊙ (θ_i − θ*_i)‖² over lists of tensors; gradient 2 Ω_i (θ_i − θ*_i)."""

    @staticmethod
    def forward(
        ctx: Any,
        sqrt_omegas: list[torch.Tensor],
        anchors: list[torch.Tensor],
        *params: torch.Tensor,
    ) -> torch.Tensor:
        scaled = torch._foreach_sub(list(params), anchors)
        torch._foreach_mul_(scaled, sqrt_omegas)
        ctx.sqrt_omegas, ctx.scaled = sqrt_omegas, scaled
        return torch.stack(torch._foreach_norm(scaled)).square().sum()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        grads = torch._foreach_mul(ctx.scaled, ctx.sqrt_omegas)
        torch._foreach_mul_(grads, 2.0 * grad_output)
        return (None, None, *grads)


class QuadraticPenalty(nn.Module):
    """``λ Σ_i Ω_i (θ_i − θ*_i)²`` over the parameters of ``model`` named in ``importance``.

    Ω and θ* are registered as buffers (``omega.<name>``, ``anchor.<name>`` with dots replaced),
    so they travel with a ``state_dict``. Parameters without an importance entry (e.g. a head added
    later) are not penalised. ``anchors`` default to the parameters' current values.
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
        self._params = [params[name] for name in self.names]
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
            self.register_buffer(f"sqrt_omega__{key}", omega.clamp_min(0).sqrt(), persistent=False)
        self.register_load_state_dict_post_hook(  # type: ignore[no-untyped-call]
            lambda module, _keys: module._refresh_sqrt_omegas()
        )

    def _refresh_sqrt_omegas(self) -> None:
        """Recompute the cached √Ω after Ω buffers were replaced (``load_state_dict``)."""
        for name, omega in zip(self.names, self._buffers_named("omega"), strict=True):
            getattr(self, f"sqrt_omega__{name.replace('.', '__')}").copy_(omega.clamp_min(0).sqrt())

    def _buffers_named(self, prefix: str) -> list[torch.Tensor]:
        return [getattr(self, f"{prefix}__{name.replace('.', '__')}") for name in self.names]

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
        value = _WeightedSquaredDistance.apply(  # type: ignore[no-untyped-call]
            self._buffers_named("sqrt_omega"), self._buffers_named("anchor"), *self._params
        )
        return self.strength * value  # type: ignore[no-any-return]
