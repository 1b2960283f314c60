"""torch.distributed support: the process group, importance over several processes, DDP training.

Public API::

    from memaware.distributed import (
        is_distributed, rank, world_size, is_main_process,   # who this process is
        broadcast_from_main, value_of_main,                 # rank 0's weights, values everywhere
        all_reduce_importance,                             # Σ_r sums, Σ_r counts over the ranks
        shard_batches, shard_indices,                      # disjoint shards, no padding
    )

Without an initialised process group every helper acts as for one process and nothing is
communicated. ``memaware.importance.mas`` (and ``fisher``, ``local_mas``) take
``distributed="shard" | "reduce" | "none"``; :mod:`memaware.distributed.ddp` wraps the training
loop's step in ``DistributedDataParallel``.
"""

from memaware.distributed.process_group import (
    broadcast_from_main,
    is_distributed,
    is_main_process,
    launched_by_torchrun,
    process_group,
    rank,
    sum_over_ranks,
    value_of_main,
    world_size,
)
from memaware.distributed.reduce import (
    DISTRIBUTED_MODES,
    Distributed,
    all_reduce_importance,
    shard_batches,
    shard_indices,
)

__all__ = [
    "DISTRIBUTED_MODES",
    "Distributed",
    "all_reduce_importance",
    "broadcast_from_main",
    "is_distributed",
    "is_main_process",
    "launched_by_torchrun",
    "process_group",
    "rank",
    "shard_batches",
    "shard_indices",
    "sum_over_ranks",
    "value_of_main",
    "world_size",
]
