"""The quadratic anchor penalty λ Σ_i Ω_i (θ_i − θ*_i)² shared by MAS, l-MAS, EWC, SI, L2 and IMM.

Its gradient is ∂/∂θ_i = 2λ Ω_i (θ_i − θ*_i). Two ways to apply it, both fused over all
parameters with ``torch._foreach_*`` kernels:

* :meth:`QuadraticPenalty.add_to_grad` (the training loop's hot path): after ``loss.backward()``
  and before ``optimizer.step()``, add the gradient to every ``.grad`` in two passes over the
  parameters, in place, with no autograd node and no extra gradient buffer;
* ``penalty()``: the value as a differentiable loss term (``loss + penalty()``), for closures,
  higher-order use or when the value itself is wanted. Identical gradient, about twice the work.

Only first-order use needs the gradient, so for plain SGD/Adam the two are the same update.

Half precision: for float16 and bfloat16 parameters Ω, θ* and 2λΩ are kept in float32, and
θ − θ*, 2λΩ(θ − θ*) and the value are computed in float32; the gradient is rounded to the
parameter's dtype once, when it is added to ``.grad``. A float16 gradient term beyond 65504 (λΩ
too large for float16) raises :class:`~memaware.errors.ConfigError` rather than writing ``inf``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from memaware.errors import ConfigError


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of Ω, θ* and 2λΩ for a parameter of ``dtype``: the parameter's, float32 at least."""
    return torch.promote_types(dtype, torch.float32)


def _check_float16_range(
    names: Sequence[str], dtypes: Sequence[torch.dtype], terms: Sequence[torch.Tensor]
) -> None:
    """Raise :class:`ConfigError` if a float16 parameter's gradient term 2λΩ(θ − θ*) exceeds 65504.

    float16 is the one trainable dtype with a narrower exponent range than float32: a bfloat16
    (or float32) term out of range is one beyond 3.4e38, already ``inf`` in the float32 arithmetic.
    """
    half = [
        (name, term)
        for name, dtype, term in zip(names, dtypes, terms, strict=True)
        if dtype == torch.float16
    ]
    if not half:
        return
    peaks = torch.stack(torch._foreach_norm([term for _, term in half], math.inf)).tolist()
    limit = torch.finfo(torch.float16).max
    over = [(name, peak) for (name, _), peak in zip(half, peaks, strict=True) if peak > limit]
    if over:
        name, peak = over[0]
        raise ConfigError(
            f"the penalty's gradient 2λΩ(θ − θ*) of {name} reaches {peak:.3g}, beyond float16's "
            f"largest value {limit:.0f}: lower λ, or keep the parameters in bfloat16 or float32"
        )


class _WeightedSquaredDistance(torch.autograd.Function):
    """λ Σ_i ‖√Ω_i ⊙ (θ_i − θ*_i)‖² over lists of tensors; gradient 2λΩ_i ⊙ (θ_i − θ*_i)."""

    @staticmethod
    def forward(
        ctx: Any,
        strength: float,
        names: list[str],
        sqrt_omegas: list[torch.Tensor],
        coefficients: list[torch.Tensor],
        anchors: list[torch.Tensor],
        *params: torch.Tensor,
    ) -> torch.Tensor:
        difference = torch._foreach_sub(params, anchors)  # in the state's dtype: float32 at least
        ctx.difference, ctx.coefficients = difference, coefficients
        ctx.names, ctx.dtypes = names, [param.dtype for param in params]
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
        _check_float16_range(ctx.names, ctx.dtypes, grads)
        # float32 terms of half parameters: autograd rounds them to the parameter's dtype.
        return (None, None, None, None, None, *grads)


class QuadraticPenalty(nn.Module):
    """``λ Σ_i Ω_i (θ_i − θ*_i)²`` over the parameters of ``model`` named in ``importance``.

    ``strength`` (λ, finite, >= 0) is fixed at construction. Ω and θ* are registered as buffers
    (``omega__<name>``, ``anchor__<name>``, dots replaced by ``__``), so they travel with a
    ``state_dict``. Parameters without an importance entry (e.g. a head added later) are not
    penalised. ``anchors`` default to the parameters' current values. Negative importance
    entries count as 0; a non-finite Ω, or a 2λΩ that overflows, raises :class:`ConfigError`.

    The buffers have the parameter's dtype, but float32 for float16/bfloat16 parameters (also
    after ``.half()`` or ``.to(torch.bfloat16)``): a default anchor is then the parameter's value
    exactly (float32 holds every half value), a given one keeps its float32 value, and 2λΩ does
    not overflow at float16's 65504.

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
        if not math.isfinite(strength) or strength < 0:
            raise ConfigError(
                f"the penalty strength λ must be a finite number >= 0, got {strength}"
            )
        self.strength = strength
        params = dict(model.named_parameters())
        unknown = sorted(set(importance) - set(params))
        if unknown:
            raise ConfigError(f"importance names {unknown[:3]} are not parameters of the model")
        self.names = [name for name in params if name in importance]
        self._params: list[torch.Tensor] = [params[name] for name in self.names]
        for name, param in zip(self.names, self._params, strict=True):
            dtype = _state_dtype(param.dtype)
            omega = importance[name].detach().to(param.device, dtype)
            if omega.shape != param.shape:
                raise ConfigError(
                    f"importance of {name} has shape {tuple(omega.shape)}, parameter {tuple(param.shape)}"
                )
            anchor = (
                (anchors[name] if anchors is not None else param).detach().to(param.device, dtype)
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
            coefficients = self._buffers_named("coefficient")
            for omega, root, coefficient in zip(
                self._buffers_named("omega"),
                self._buffers_named("sqrt_omega"),
                coefficients,
                strict=True,
            ):
                positive = omega.clamp_min(0)
                root.copy_(positive.sqrt())
                coefficient.copy_(positive.mul(2 * self.strength))
            if not coefficients:
                return
            # One synchronisation for all: a non-finite Ω (or λΩ) would make every step inf or nan.
            finite = torch.stack([torch.isfinite(c).all() for c in coefficients]).tolist()
            for name, ok, omega in zip(
                self.names, finite, self._buffers_named("omega"), strict=True
            ):
                if ok:
                    continue
                if not bool(torch.isfinite(omega).all()):
                    raise ConfigError(
                        f"the importance of {name} has non-finite (inf or nan) entries"
                    )
                raise ConfigError(
                    f"2λΩ of {name} overflows {omega.dtype}: λ = {self.strength:g}, "
                    f"largest Ω = {float(omega.max()):.3g}"
                )

    def _apply(
        self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
    ) -> QuadraticPenalty:
        # .to() / .double() / .cuda() replace the buffer tensors: drop the cached lists of them.
        self._lists = {}

        def keep_float32(tensor: torch.Tensor) -> torch.Tensor:
            # A conversion to a half dtype would round θ* and can overflow 2λΩ: stay in float32.
            converted = fn(tensor)
            dtype = _state_dtype(converted.dtype)
            if not converted.is_floating_point() or converted.dtype == dtype:
                return converted
            return tensor.to(converted.device, dtype)

        super()._apply(keep_float32, recurse)  # type: ignore[no-untyped-call]
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
        """The penalty value (float32 for half parameters), differentiable in the parameters."""
        if not self.names:
            return torch.zeros(())
        value: torch.Tensor = _WeightedSquaredDistance.apply(  # type: ignore[no-untyped-call]
            self.strength,
            self.names,
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
        For a half parameter the sum is formed in float32 and rounded once to its dtype.
        """
        if not self.names:
            return
        coefficients = self._buffers_named("coefficient")
        difference = torch._foreach_sub(self._params, self._buffers_named("anchor"))
        float16 = any(param.dtype == torch.float16 for param in self._params)
        if float16:
            # Form the term first, to check that it fits float16 before any gradient changes.
            torch._foreach_mul_(difference, coefficients)
            _check_float16_range(self.names, [p.dtype for p in self._params], difference)
        for param in self._params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        grads = [param.grad for param in self._params]
        if float16:
            torch._foreach_add_(grads, difference)  # type: ignore[arg-type]
        else:
            torch._foreach_addcmul_(grads, difference, coefficients)  # type: ignore[arg-type]
