"""The global batch: one number that fixes the recipe whatever the world size.

The recipe's effective batch is 32 samples per optimizer step (docs/method.md §5). A run on
``world = devices x nodes`` ranks, each drawing micro-batches of ``micro`` samples, accumulates
``global / (micro x world)`` micro-batches per optimizer step (``micro`` lowered from the
configured size when that does not divide), so the same config trains the
same recipe on 1, 2, 8 or 64 ranks; the learning-rate schedule and ``max_steps`` count
optimizer steps and so do not change either.
"""

from __future__ import annotations

import math

from dm_lightning.data.checks import check_batch_size
from dm_lightning.errors import ConfigError


def split_global_batch(
    global_batch_size: int, micro_batch_size: int, devices: int, num_nodes: int
) -> tuple[int, int]:
    """The micro-batch each rank draws and the micro-batches it accumulates per optimizer step.

    The configured micro-batch is a memory limit: it is kept when ``micro x world`` divides the
    global batch, else lowered to the largest size that does (8 -> 4 for 32 samples on 8
    ranks), so the same config runs the recipe on any world size that divides the global
    batch.

    Args:
        global_batch_size: samples per optimizer step over all ranks (32 in the recipe).
        micro_batch_size: the largest samples per micro-batch and rank (the sources'
            ``batch_size``).
        devices, num_nodes: ranks per node and nodes; the world size is their product.

    Returns:
        ``(micro, accumulation)`` with ``micro <= micro_batch_size`` and
        ``micro x world x accumulation == global_batch_size``.

    Raises:
        ConfigError: naming the numbers, when the world size does not divide the global batch.
    """
    check_batch_size(global_batch_size, "data.global_batch_size")
    world = devices * num_nodes
    fits = [m for m in range(micro_batch_size, 0, -1) if global_batch_size % (m * world) == 0]
    if not fits:
        raise ConfigError(
            f"data.global_batch_size={global_batch_size} samples do not split evenly over "
            f"world size {world} ({devices} devices x {num_nodes} nodes): choose a global "
            f"batch that is a multiple of {world}"
        )
    micro = fits[0]
    return micro, global_batch_size // (micro * world)


def rank_batches_per_epoch(
    batches_per_epoch: int, micro_batch_size: int, global_batch_size: int, accumulation: int
) -> int:
    """Micro-batches per epoch and rank when the global batch is set.

    ``batches_per_epoch`` is then read as micro-batches of a one-rank run, i.e. an epoch of
    ``ceil(batches_per_epoch x micro / global)`` optimizer steps on any world size (validation
    and epoch-based schedules keep their place in the recipe); each rank draws that many
    steps' worth of micro-batches.
    """
    steps = max(1, math.ceil(batches_per_epoch * micro_batch_size / global_batch_size))
    return steps * accumulation
