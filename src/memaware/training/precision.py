"""Mixed precision of a training step: autocast of the forward pass, a gradient scaler for fp16.

bf16 keeps float32's exponent range, so its gradients need no scaling. fp16 does: the loss is
multiplied by a scale S before ``backward`` and the gradients divided by S again
(``unscale``) before anything else reads them, so that terms added straight to ``.grad``
(a quadratic penalty's 2λΩ(θ − θ*)), gradient clipping and the optimizer all see true gradients.
A step whose scaled gradients overflowed is skipped and S lowered (PyTorch's ``GradScaler``).
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from memaware.errors import ConfigError
from memaware.training.config import Precision

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecision:
    """The autocast context and the loss scaling of one run's training steps on ``device``."""

    def __init__(self, amp: Precision, device: torch.device) -> None:
        if amp != "none" and amp not in _DTYPES:
            raise ConfigError(f"unknown amp {amp!r}; choose none, bf16 or fp16")
        self.dtype = _DTYPES.get(amp)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def autocast(self) -> AbstractContextManager[object]:
        """Autocast to the chosen half precision (a no-op context without one)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``backward`` of ``loss``, scaled for fp16."""
        scaled = loss if self.scaler is None else self.scaler.scale(loss)
        scaled.backward()  # type: ignore[no-untyped-call]

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the gradients of ``optimizer``'s parameters by the loss scale (fp16 only)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimizer step (skipped by the scaler when the scaled gradients overflowed)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()
