"""Diagonal Fisher information from exact per-sample gradients (for EWC).

F_ii = (1/N) Σ_k (∂ log p(y_k | x_k; θ)/∂θ_i)², with ``labels="empirical"`` taking y_k from the data
(the empirical Fisher) and ``labels="true"`` drawing y_k ~ p(·|x_k; θ) from the model (the Fisher proper).
Computed with the same per-layer rules as MAS, with f = (·)² in place of |·|.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from memaware.distributed.process_group import is_distributed
from memaware.distributed.reduce import Distributed, combined, rank_share
from memaware.errors import ConfigError
from memaware.importance.exact import ExactEngine
from memaware.importance.mas import Mode, OutputFn, _device, _ModeSwitch, model_output
from memaware.importance.rules import compute_dtype
from memaware.importance.state import Importance


def fisher(
    model: nn.Module,
    data: Iterable[Any],
    *,
    labels: Literal["empirical", "true"] = "empirical",
    outputs: OutputFn | None = None,
    mode: Mode = "eval",
    max_samples: int | None = None,
    generator: torch.Generator | None = None,
    distributed: Distributed = "shard",
) -> Importance:
    """Exact per-sample diagonal Fisher of the log-likelihood of ``outputs(model, x)`` (logits).

    ``data`` yields ``(x, y, ...)`` batches; ``y`` is only read for the empirical Fisher.
    ``distributed`` is as for :func:`memaware.importance.mas`: under a process group, ``shard``
    measures this rank's batches of the common stream and all-reduces the sums and counts. The
    true Fisher draws its labels from ``generator`` batch after batch, so a rank measuring every
    N-th batch would draw others: it takes ``none`` there (every rank computes the whole Fisher,
    the same on each when the model, data and generator are).
    """
    if labels not in ("empirical", "true"):
        raise ConfigError(f"unknown Fisher labels {labels!r}; use 'empirical' or 'true'")
    if labels == "true" and distributed == "shard" and is_distributed():
        raise ConfigError(
            "fisher: labels='true' draws labels batch after batch from one generator, so sharded "
            "batches would draw other labels than one process; pass distributed='none' (every "
            "rank computes the whole Fisher) or use labels='empirical'"
        )
    forward = outputs or model_output
    device = _device(model)
    engine = ExactEngine(model, torch.square, 2)
    n = 0
    with _ModeSwitch(model, mode), torch.enable_grad():
        for x, y in rank_share(_labelled(data, max_samples), distributed):
            x, y = x.to(device), y.to(device)

            def objectives(
                m: nn.Module, inputs: torch.Tensor, y: torch.Tensor = y
            ) -> list[torch.Tensor]:
                logits = forward(m, inputs)
                target = y
                if labels == "true":
                    probs = F.softmax(logits.detach(), dim=-1)
                    target = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                return [
                    F.cross_entropy(
                        logits.to(compute_dtype(logits.dtype)), target, reduction="none"
                    )
                ]

            engine.add_batch(x, objectives)
            n += len(x)
    meta = {"method": "fisher", "labels": labels, "mode": mode}
    estimate = Importance(engine.sums, dict.fromkeys(engine.sums, n), n, meta)
    return combined(estimate, distributed, device)


def _labelled(
    data: Iterable[Any], max_samples: int | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` of each batch, the stream cut after ``max_samples`` rows."""
    seen = 0
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ConfigError("the Fisher needs (inputs, labels) batches")
        x, y = batch[0], batch[1]
        if max_samples is not None:
            x, y = x[: max_samples - seen], y[: max_samples - seen]
        if len(x) == 0:
            return
        seen += len(x)
        yield x, y
        if max_samples is not None and seen >= max_samples:
            return
