"""The global batch: one number that fixes the recipe whatever the world size.

The recipe's effective batch is 32 samples per optimizer step (docs/method.md §5). A run on
``world = devices x nodes`` ranks, each drawing micro-batches of ``micro`` samples, accumulates
``global / (micro x world)`` micro-batches per optimizer step (``micro`` lowered from the
configured size when that does not divide), so the same config trains the
same recipe on 1, 2, 8 or 64 ranks; the learning-rate schedule and ``max_steps`` count
optimizer steps and so do not change either. The length of an epoch in batches per rank is
planned here too (:func:`rank_batches_per_epoch`, :func:`one_pass_batches`).
"""

from __future__ import annotations

import math

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from dm_lightning.data.checks import check_batch_size
from dm_lightning.data.shard_paths import is_shard_url
from dm_lightning.data.shards import indexed_sample_count
from dm_lightning.data.streams import MixedSourceBatches
from dm_lightning.errors import ConfigError


def common_micro_batch(batch_sizes: dict[str, int]) -> int:
    """The one ``batch_size`` (samples per micro-batch and rank) of the training sources
    (name -> batch size); 1 without sources.

    Raises:
        ConfigError: the sources have different batch sizes (a global batch needs one).
    """
    if len(set(batch_sizes.values())) > 1:
        raise ConfigError(
            f"data.global_batch_size needs one micro-batch size for all training sources, "
            f"got batch_size {batch_sizes}; give every data.train entry the same batch_size"
        )
    return next(iter(batch_sizes.values()), 1)


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


def configure_accumulation(
    trainer: L.Trainer, global_batch_size: int, configured: int
) -> tuple[int, int]:
    """Split ``global_batch_size`` over the trainer's world size (devices x nodes) with
    :func:`split_global_batch`, set ``trainer.accumulate_grad_batches`` and say so (rank 0).

    Args:
        trainer: the fitting trainer.
        global_batch_size: samples per optimizer step over all ranks.
        configured: the sources' ``batch_size``, the largest micro-batch.

    Returns:
        ``(micro, accumulation)``: the micro-batch every source draws now, and the
        micro-batches per optimizer step and rank.

    Raises:
        ConfigError: the world size does not divide the global batch, or
            ``trainer.accumulate_grad_batches`` was set to another value as well.
    """
    micro, accumulation = split_global_batch(
        global_batch_size, configured, trainer.num_devices, trainer.num_nodes
    )
    if trainer.accumulate_grad_batches not in (1, accumulation):
        raise ConfigError(
            f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} and "
            f"data.global_batch_size={global_batch_size} both set the accumulation "
            f"(the global batch gives {accumulation}); leave accumulate_grad_batches at 1"
        )
    trainer.accumulate_grad_batches = accumulation
    lowered = f" (batch_size {configured} lowered to divide it)" if micro < configured else ""
    rank_zero_info(
        f"global batch {global_batch_size} = micro-batch {micro} x "
        f"{trainer.world_size} ranks x {accumulation} accumulated micro-batches{lowered}"
    )
    return micro, accumulation


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


def one_pass_batches(dataset: MixedSourceBatches, world: int, accumulation: int) -> int:
    """Batches per epoch and rank for one pass over the samples counted in the shards'
    ``index.json``: ``ceil(samples / (expected batch size x world size))``, rounded up to
    whole optimizer steps of ``accumulation`` micro-batches.

    Raises:
        ConfigError: a source has shards missing from an ``index.json`` (or URL shards, with
            no index to count), naming the sources and what to set instead.
    """
    streams = dataset.sources
    counts = [indexed_sample_count(s.urls) for s in streams]
    missing = [s.name for s, c in zip(streams, counts) if c is None]
    if missing:
        urls = [s.name for s in streams if any(is_shard_url(u) for u in s.urls)]
        fix = (
            f"URL shards ({urls}) have no index.json to count: set batches_per_epoch"
            if urls
            else "set batches_per_epoch or regenerate the shards' index"
        )
        raise ConfigError(
            f"data.batches_per_epoch is not set and sources {missing} have shards missing "
            f"from an index.json: {fix}"
        )
    total = sum(p * s.batch_size for p, s in zip(dataset.probabilities, streams))
    batches = max(1, math.ceil(sum(counts) / (total * world)))
    # whole optimizer steps, so that an epoch ends on one
    return math.ceil(batches / accumulation) * accumulation
