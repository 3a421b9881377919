"""The DataModule's evaluation and predict loaders, one builder per kind of split.

A shard split (a pattern of schema shards) streams every sample exactly once over ranks and
workers (:class:`~dm_lightning.data.streams.ShardSamples`); a benchmark split (a
:class:`~dm_lightning.data.benchmarks.BenchmarkSpec`) is a map-style reader dealt over ranks by
:class:`~dm_lightning.data.benchmarks.RankShardSampler`; both give
:class:`~dm_lightning.data.batch.EvalBatch` es. ``predict`` over a folder of images gives
:class:`~dm_lightning.data.predict.ImageFolder`'s batches.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset

from dm_lightning.data.benchmarks import BenchmarkSpec, RankShardSampler
from dm_lightning.data.collate import collate, sample_to_tensors
from dm_lightning.data.predict import ImageFolder, collate_predict
from dm_lightning.data.shard_paths import expand_shard_patterns
from dm_lightning.data.shards import indexed_shard_sizes
from dm_lightning.data.streams import ShardSamples, StreamLoader


def eval_entries(entries: dict[str, Any] | None) -> dict[str, str | BenchmarkSpec]:
    """Config values -> shard patterns (str) or :class:`BenchmarkSpec` (from a dict)."""
    return {
        name: BenchmarkSpec(**entry) if isinstance(entry, dict) else entry
        for name, entry in (entries or {}).items()
    }


def shard_split_loader(
    pattern: str, key: str, batch_size: int, num_workers: int, idle_batch: bool = True
) -> DataLoader:
    """The loader of a shard split: ``pattern``'s shards (``key`` names the config entry in
    errors) read exactly once over ranks and at most ``num_workers`` workers, in batches of
    ``batch_size``. With ``idle_batch`` (validation, test) a reader without a sample still
    yields its skips as an empty batch, and the loader's length comes from the shards'
    ``index.json``.

    Raises:
        MissingPathError: ``pattern`` matches no file.
    """
    urls = expand_shard_patterns(pattern, key)
    # Per-shard counts from index.json give the loader its length (progress totals). Not
    # for predict: a rank without a shard would have length 0, which Lightning refuses
    # on several devices (and skipping the loop there would hang the writer's reduce).
    sizes = indexed_shard_sizes(urls) if idle_batch else None
    dataset = ShardSamples(
        urls, batch_size, sample_to_tensors, collate, key, sizes=sizes, idle_batch=idle_batch
    )
    return StreamLoader(dataset, batch_size=None, num_workers=min(num_workers, len(urls)))


def benchmark_loader(
    dataset: Dataset, batch_size: int, num_workers: int, world: int, rank: int
) -> DataLoader:
    """The loader of a benchmark reader on ``rank`` of ``world``: each sample once over the
    ranks, in batches of ``batch_size``."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=RankShardSampler(dataset, world, rank),
        num_workers=num_workers,
        collate_fn=collate,
    )


def image_folder_loader(path: str, batch_size: int, num_workers: int) -> DataLoader:
    """The loader of ``predict`` over the images of a folder, a glob or one file: images may
    differ in size (:func:`~dm_lightning.data.predict.collate_predict` keeps mixed sizes apart);
    unreadable ones come as ``skipped_files`` (the batch format: ImageFolder)."""
    return DataLoader(
        ImageFolder(path),
        batch_size=batch_size,
        num_workers=min(num_workers, 2),
        collate_fn=collate_predict,
    )
