"""Memory Aware Synapses importance (Aljundi et al., ECCV 2018), exact per sample or as the authors' code.

Paper: Ω_ij = (1/N) Σ_k |∂ℓ(F(x_k))/∂θ_ij| with ℓ = ‖·‖₂² of the network output F (the logits),
computed on unlabelled inputs with the model in eval mode.

* ``granularity="sample"`` computes that sum exactly, one gradient per sample, at the cost of one
  batched backward (see :mod:`memaware.importance.rules`).
* ``granularity="batch"`` is the authors' estimator: per batch b of size n_b, the gradient of the
  batch sum G_b = Σ_{x∈b} ∂ℓ(F(x))/∂θ, and Ω = (1/B) Σ_b |G_b| / n_b. By the triangle inequality
  this is ≤ the paper's quantity and equals it only for batches of one. Only the granularity
  changes: F is whatever ``outputs`` computes (the authors' code uses the logits of the head of
  the task just learned; MAS's ``importance_preset="authors"`` sets both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from memaware.distributed.reduce import Distributed, combined, rank_share
from memaware.errors import ConfigError
from memaware.importance.exact import ExactEngine
from memaware.importance.rules import compute_dtype
from memaware.importance.state import Importance

Granularity = Literal["sample", "batch"]
Norm = Literal["l2sq", "l2", "l1", "vector"]
Mode = Literal["eval", "train"]
OutputFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]

NORMS: tuple[Norm, ...] = ("l2sq", "l2", "l1", "vector")


def model_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The default F: whatever ``model(x)`` returns."""
    return model(x)  # type: ignore[no-any-return]


def input_batches(data: Iterable[Any], max_samples: int | None = None) -> Iterator[torch.Tensor]:
    """Input tensors from an iterable of batches (tensors, or tuples/lists whose first item is the input).

    Labels and any other items are ignored; with ``max_samples`` the stream stops after that many rows.
    """
    seen = 0
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, torch.Tensor):
            raise ConfigError(
                f"importance data must yield tensors or (tensor, ...) tuples, got {type(x).__name__}"
            )
        if max_samples is not None:
            x = x[: max_samples - seen]
        if len(x) == 0:
            break
        seen += len(x)
        yield x
        if max_samples is not None and seen >= max_samples:
            break


def batches(x: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split a tensor of inputs into consecutive batches (views, no copy)."""
    return list(torch.split(x, batch_size))


def output_objectives(
    norm: Norm, outputs: OutputFn
) -> Callable[[nn.Module, torch.Tensor], list[torch.Tensor]]:
    """Per-sample objectives ℓ(F(x_k)), each of shape (N,), for the chosen output functional ℓ.

    ``l2sq``: ‖F‖² (paper); ``l2``: ‖F‖; ``l1``: Σ|F_u|; ``vector``: one objective per output unit u,
    F_u(x_k), whose gradient magnitudes are summed over units (the authors' per-unit option).
    F is taken in float32 at least, so that ‖F‖² of a half-precision model cannot overflow.
    """
    if norm not in NORMS:
        raise ConfigError(f"unknown output norm {norm!r}; choose one of {', '.join(NORMS)}")

    def objectives(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        out = outputs(model, x)
        out = out.reshape(out.shape[0], -1)
        out = out.to(compute_dtype(out.dtype))
        if norm == "l2sq":
            return [out.square().sum(1)]
        if norm == "l2":
            return [torch.linalg.vector_norm(out, dim=1)]
        if norm == "l1":
            return [out.abs().sum(1)]
        return list(out.unbind(1))

    return objectives


class _ModeSwitch:
    """Puts a model in eval or train mode for the block and restores every module's flag after."""

    def __init__(self, model: nn.Module, mode: Mode) -> None:
        if mode not in ("eval", "train"):
            raise ConfigError(f"unknown mode {mode!r}; use 'eval' (the paper) or 'train'")
        self.model, self.mode = model, mode
        self.flags = [m.training for m in model.modules()]

    def __enter__(self) -> None:
        self.model.train(self.mode == "train")

    def __exit__(self, *exc: object) -> None:
        for module, flag in zip(self.model.modules(), self.flags, strict=True):
            module.training = flag


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def mas(
    model: nn.Module,
    data: Iterable[Any],
    *,
    granularity: Granularity = "sample",
    norm: Norm = "l2sq",
    outputs: OutputFn | None = None,
    mode: Mode = "eval",
    max_samples: int | None = None,
    sample_dims: Mapping[str, int] | None = None,
    distributed: Distributed = "shard",
) -> Importance:
    """MAS importance of every trainable parameter of ``model`` that reaches F, keyed by name.

    Args:
        model: any ``nn.Module``; parameters with ``requires_grad=False`` are skipped.
        data: iterable of input batches (a tensor, or a tuple/list whose first item is the input).
        granularity: ``"sample"`` (exact paper definition) or ``"batch"`` (authors' code, see module doc).
        norm: output functional ℓ: ``"l2sq"`` (paper), ``"l2"``, ``"l1"`` or ``"vector"``.
        outputs: ``F(model, x)``; e.g. the heads of the tasks learned so far. Default ``model(x)``.
        mode: ``"eval"`` (paper, dropout off, BatchNorm running statistics) or ``"train"``.
        max_samples: use at most this many inputs.
        sample_dims: module name -> the dimension that holds the sample in that module's (and
            its descendants') inputs and outputs, where it is not 0 and the engine cannot tell
            from the sizes (see :mod:`memaware.importance.exact`).
        distributed: under a ``torch.distributed`` process group (no effect without one):
            ``"shard"`` (every rank passes the same ``data``; rank r measures its batches
            r, r + N, ..., after ``max_samples`` cut the stream, and the sums and counts are
            all-reduced: the one-process Ω on every rank), ``"reduce"`` (``data`` is this
            rank's own shard; all-reduced) or ``"none"`` (this rank's estimate alone). See
            :mod:`memaware.distributed.reduce`.

    Returns:
        :class:`Importance` whose mapping view is Ω, with ``n_samples`` = inputs used.
    """
    if granularity not in ("sample", "batch"):
        raise ConfigError(f"unknown granularity {granularity!r}; use 'sample' or 'batch'")
    objectives = output_objectives(norm, outputs or model_output)
    device = _device(model)
    meta = {"method": "mas", "granularity": granularity, "norm": norm, "mode": mode}
    stream = rank_share(input_batches(data, max_samples), distributed)
    with _ModeSwitch(model, mode), torch.enable_grad():
        if granularity == "sample":
            engine = ExactEngine(model, torch.abs, 1, sample_dims)
            n = 0
            for x in stream:
                engine.add_batch(x.to(device), objectives)
                n += len(x)
            estimate = Importance(engine.sums, dict.fromkeys(engine.sums, n), n, meta)
        else:
            estimate = _batched(model, stream, objectives, meta, device)
    return combined(estimate, distributed, device)


def _batched(
    model: nn.Module,
    stream: Iterable[torch.Tensor],
    objectives: Callable[[nn.Module, torch.Tensor], Sequence[torch.Tensor]],
    meta: dict[str, str],
    device: torch.device,
) -> Importance:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("the model has no trainable parameter: nothing to measure")
    names, params = zip(*trainable, strict=True)
    sums: dict[str, torch.Tensor] = {}
    n_batches = n_samples = 0
    for x in stream:
        losses = objectives(model, x.to(device))
        magnitude: list[torch.Tensor | None] = [None] * len(params)
        for i, loss in enumerate(losses):
            grads = torch.autograd.grad(
                loss.sum(), params, allow_unused=True, retain_graph=i < len(losses) - 1
            )
            for j, g in enumerate(grads):
                if g is not None:
                    g = g.to(compute_dtype(g.dtype)).abs()
                    current = magnitude[j]
                    magnitude[j] = g if current is None else current + g
        for name, value in zip(names, magnitude, strict=True):
            if value is not None:
                value = value / len(x)
                sums[name] = sums[name] + value if name in sums else value
        n_batches += 1
        n_samples += len(x)
    # The divisor is the number of batches: Ω = (1/B) Σ_b |G_b| / n_b, as the authors' running mean.
    return Importance(sums, dict.fromkeys(sums, n_batches), n_samples, meta)
