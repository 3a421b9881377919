"""The global batch: one number that fixes the recipe whatever the world size.

The recipe's effective batch is 32 samples per optimizer step (docs/method.md §5). A run on
``world = devices x nodes`` ranks, each drawing micro-batches of ``micro`` samples, accumulates
``global / (micro x world)`` micro-batches per optimizer step, so the same config trains the
same recipe on 1, 2, 8 or 64 ranks; the learning-rate schedule and ``max_steps`` count
optimizer steps and so do not change either.
"""

from __future__ import annotations

import math

from dm_lightning.data.checks import check_batch_size
from dm_lightning.errors import ConfigError


def gradient_accumulation(
    global_batch_size: int, micro_batch_size: int, devices: int, num_nodes: int
) -> int:
    """Micro-batches each rank accumulates per optimizer step.

    Args:
        global_batch_size: samples per optimizer step over all ranks (32 in the recipe).
        micro_batch_size: samples per micro-batch and rank (the sources' ``batch_size``).
        devices, num_nodes: ranks per node and nodes; the world size is their product.

    Returns:
        ``global_batch_size / (micro_batch_size x devices x num_nodes)``, an integer >= 1.

    Raises:
        ConfigError: naming the numbers, when the global batch is not a whole multiple of
            ``micro_batch_size x world size``.
    """
    check_batch_size(global_batch_size, "data.global_batch_size")
    world = devices * num_nodes
    per_step = micro_batch_size * world
    if global_batch_size % per_step:
        fits = [m for m in range(1, micro_batch_size) if global_batch_size % (m * world) == 0]
        hint = (
            f"set data.train[*].batch_size to {fits[-1]}, or choose a global batch that is a "
            f"multiple of {per_step}"
            if fits
            else f"{global_batch_size} samples do not split evenly over {world} ranks: choose "
            f"a global batch that is a multiple of {per_step} (or of {world} with a smaller "
            "batch_size)"
        )
        raise ConfigError(
            f"data.global_batch_size={global_batch_size} is not a multiple of micro-batch "
            f"{micro_batch_size} x world size {world} ({devices} devices x {num_nodes} nodes) "
            f"= {per_step}: {hint}"
        )
    return global_batch_size // per_step


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
