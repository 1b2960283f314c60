"""Importance over several processes: each rank measures its shard, the sums and counts add up.

An :class:`~memaware.importance.Importance` holds ``sums[name] = Σ_k f(g_k)`` and ``counts[name]``
(samples, or batches for the batched MAS estimator), so the estimate over the union of the ranks'
shards is exact:

    Ω[name] = (Σ_r sums_r[name]) / (Σ_r counts_r[name]),   n_samples = Σ_r n_samples_r

:func:`all_reduce_importance` computes it (the sums in float64, then in the estimate's own
dtype), so that Ω on N processes is Ω on one up to the order of float32 additions inside each
rank. The shards must be disjoint and cover the data once: :func:`shard_batches` deals the
batches of one stream round-robin, :func:`shard_indices` gives a rank the rows of those batches;
neither pads with repeated samples as ``DistributedSampler`` does by default, which would count
some samples twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch
import torch.distributed as dist

from memaware.distributed.process_group import is_distributed, rank, world_size
from memaware.errors import ConfigError

if TYPE_CHECKING:  # the importance engines import this module: Importance is imported on use
    from memaware.importance.state import Importance

T = TypeVar("T")

#: How an importance computation treats its data under a process group (no effect without one):
#: ``shard``: every rank was given the same data; rank r measures batches r, r + N, r + 2N, ...
#: and the estimates are all-reduced (the one-process Ω, on every rank);
#: ``reduce``: the data are this rank's own shard (e.g. :func:`shard_indices`); all-reduced;
#: ``none``: no communication, this rank's own estimate.
Distributed = Literal["shard", "reduce", "none"]

DISTRIBUTED_MODES: tuple[Distributed, ...] = ("shard", "reduce", "none")


def check_mode(distributed: str) -> None:
    """:class:`ConfigError` for a value that is not one of :data:`DISTRIBUTED_MODES`."""
    if distributed not in DISTRIBUTED_MODES:
        raise ConfigError(
            f"unknown distributed mode {distributed!r}; use one of {', '.join(DISTRIBUTED_MODES)}"
        )


def shard_batches(batches: Iterable[T]) -> Iterator[T]:
    """This rank's batches of a stream every rank reads alike: batch i goes to rank i mod N.

    The union over ranks is the stream, each batch once; when the number of batches is not a
    multiple of N the first ranks get one more (a rank may get none). The batches keep their
    composition, so an estimator that depends on it (MAS's batched one) is unchanged. Every rank
    still draws every batch (views of tensors in memory cost nothing; a ``DataLoader`` reads
    them): give each rank its own rows (:func:`shard_indices`) where reading is what costs.
    """
    if not is_distributed():
        yield from batches
        return
    mine, ranks = rank(), world_size()
    for index, batch in enumerate(batches):
        if index % ranks == mine:
            yield batch


def shard_indices(n: int, batch_size: int = 1) -> torch.Tensor:
    """The rows of ``n`` that this rank measures: those of batches r, r + N, ... of ``batch_size``.

    Batched in order with the same ``batch_size`` (``torch.split``, ``DataLoader`` without
    shuffling), the rows give back exactly those batches, so ``distributed="reduce"`` on them
    equals ``"shard"`` on all ``n``. Disjoint over ranks, covering each row once, no padding.
    """
    if n < 0 or batch_size < 1:
        raise ConfigError(f"need n >= 0 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    rows = torch.split(torch.arange(n), batch_size)
    return torch.cat([torch.zeros(0, dtype=torch.int64), *shard_batches(rows)])


def _description(estimate: Importance) -> dict[str, Any]:
    return {
        "names": sorted(estimate.sums),
        "shapes": {name: tuple(t.shape) for name, t in estimate.sums.items()},
        "dtypes": {name: str(t.dtype).removeprefix("torch.") for name, t in estimate.sums.items()},
        "meta": estimate.meta,
        "n_samples": estimate.n_samples,
    }


def _agreed(descriptions: list[dict[str, Any]]) -> dict[str, Any]:
    """The description every rank's estimate fits; :class:`ConfigError` naming the first that differs.

    A rank that saw no data (more ranks than batches) has no sums and takes the others' names.
    """
    metas = [d["meta"] for d in descriptions]
    for r, meta in enumerate(metas):
        if meta != metas[0]:
            raise ConfigError(
                f"cannot all-reduce importance: rank {r} computed kind {meta}, rank 0 {metas[0]}; "
                "every rank must call the same importance function with the same options"
            )
    measured = [(r, d) for r, d in enumerate(descriptions) if d["names"]]
    if not measured:
        return descriptions[0]
    first_rank, first = measured[0]
    for r, d in measured[1:]:
        if d["names"] != first["names"] or d["shapes"] != first["shapes"]:
            only = sorted(set(d["names"]) ^ set(first["names"]))
            detail = f"parameters only one has: {', '.join(only)}" if only else "shapes differ"
            raise ConfigError(
                f"cannot all-reduce importance: rank {r} and rank {first_rank} measured different "
                f"parameters ({detail}); every rank must measure the same model"
            )
    return first


def all_reduce_importance(estimate: Importance, device: torch.device | None = None) -> Importance:
    """The estimate over every rank's data: sums and counts summed over the ranks, on every rank.

    Without a process group, ``estimate`` itself. The ranks' parameter names, shapes and kinds
    (``meta``) must agree (:class:`ConfigError` otherwise); a rank without data contributes zeros
    (its sums are placed on ``device``, default the CPU). The sums are added in float64 and
    returned in the dtype they were computed in.
    """
    from memaware.importance.state import Importance

    if not is_distributed():
        return estimate
    descriptions: list[dict[str, Any]] = [{} for _ in range(world_size())]
    dist.all_gather_object(descriptions, _description(estimate))
    agreed = _agreed(descriptions)
    names: list[str] = agreed["names"]
    if not names:
        return estimate
    home = next(iter(estimate.sums.values())).device if estimate.sums else device
    home = home or torch.device("cpu")
    reduce_on = home if dist.get_backend() == "nccl" else torch.device("cpu")
    sizes = [torch.Size(agreed["shapes"][name]).numel() for name in names]
    flat = torch.cat(
        [
            estimate.sums[name].to(reduce_on, torch.float64).reshape(-1)
            if name in estimate.sums
            else torch.zeros(size, dtype=torch.float64, device=reduce_on)
            for name, size in zip(names, sizes, strict=True)
        ]
    )
    counts = torch.tensor(
        [estimate.counts.get(name, 0) for name in names] + [estimate.n_samples],
        dtype=torch.int64,
        device=reduce_on,
    )
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    sums: dict[str, torch.Tensor] = {}
    for name, part in zip(names, torch.split(flat, sizes), strict=True):
        dtype = getattr(torch, agreed["dtypes"][name])
        sums[name] = part.reshape(agreed["shapes"][name]).to(home, dtype)
    totals = counts.tolist()
    return Importance(sums, dict(zip(names, totals[:-1], strict=True)), totals[-1], estimate.meta)


def rank_share(batches: Iterable[T], distributed: Distributed) -> Iterable[T]:
    """The batches this rank measures under ``distributed`` (:func:`shard_batches` for ``shard``)."""
    check_mode(distributed)
    return shard_batches(batches) if distributed == "shard" else batches


def combined(estimate: Importance, distributed: Distributed, device: torch.device) -> Importance:
    """The estimate as ``distributed`` asks: all-reduced over the ranks unless ``none``."""
    return estimate if distributed == "none" else all_reduce_importance(estimate, device)
