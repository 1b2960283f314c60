"""l-MAS, the paper's local (Hebbian) importance, from forward activations only.

Applying MAS to each layer alone, with F_l the layer's own output y = act(W a + b), gives the
per-sample gradient g_ij(x_k) = ∂‖y^k‖²/∂θ_ij = 2·y_i^k·a_j^k, hence

    Ω_ij = (1/N) Σ_k |2·y_i^k·a_j^k|  = 2·mean_k(y_i^k·a_j^k) for ReLU networks,

the average co-activation of the two neurons that the weight connects (Aljundi et al. §4.3).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn

from memaware.errors import ConfigError
from memaware.importance.capture import owners, recording
from memaware.importance.mas import Mode, _device, _ModeSwitch, input_batches
from memaware.importance.rules import RULES
from memaware.importance.state import Importance

LOCAL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def local_mas(
    model: nn.Module,
    data: Iterable[Any],
    *,
    activation: Literal["relu", "identity"] = "relu",
    mode: Mode = "eval",
    max_samples: int | None = None,
) -> Importance:
    """l-MAS importance of every ``nn.Linear``, ``nn.Conv1d`` and ``nn.Conv2d`` layer of ``model``.

    * ``y`` is the layer's output passed through ``activation``: ``"relu"`` (default) takes the
      post-activation value of the neuron, as in the paper's ReLU networks; ``"identity"`` the
      raw module output.
    * Positions (conv locations, sequence steps) belong to one sample: its gradient is
      Σ_positions 2·y·a before the magnitude is taken, exactly as for a per-sample gradient.
    * Biases have a constant input a ≡ 1: Ω_i = (1/N) Σ_k |2·Σ_positions y_i^k|.

    No backward pass is run. Other parameter layers get no l-MAS importance.
    """
    if activation not in ("relu", "identity"):
        raise ConfigError(f"unknown activation {activation!r}; use 'relu' or 'identity'")
    act = torch.relu if activation == "relu" else (lambda t: t)
    layers = [entry for entry in owners(model) if type(entry.module) in LOCAL_LAYERS]
    device = _device(model)
    sums: dict[str, torch.Tensor] = {}
    n = 0
    with _ModeSwitch(model, mode), torch.no_grad():
        for x in input_batches(data, max_samples):
            for entry in layers:
                entry.calls.clear()
            with recording(layers):
                model(x.to(device))
            for entry in layers:
                for call in entry.calls:
                    assert call.value is not None  # recorded without on_gradient
                    result = RULES[type(entry.module)](
                        entry.module, call.args, 2 * act(call.value), torch.abs
                    )
                    if result is None:
                        raise ConfigError(
                            f"l-MAS does not support {entry.module} (string padding or padding mode)"
                        )
                    for local, value in result.items():
                        full = entry.full_names[local]
                        sums[full] = sums[full] + value if full in sums else value
                entry.calls.clear()
            n += len(x)
    meta = {"method": "l-mas", "activation": activation, "mode": mode}
    return Importance(sums, dict.fromkeys(sums, n), n, meta)
