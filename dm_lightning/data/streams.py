"""Shard streams with explicit seeding and rank/worker splitting.

Shards are plain tar files: local ones are read with random access, anything else (``pipe:``
commands, URLs) through webdataset's ``gopen`` as a stream. This module decides which shards
each rank and worker reads and seeds every random choice, because webdataset's pipeline
defaults seed from the process id and the clock (not reproducible) and resample all shards on
every rank (ranks then see the same samples).

Training (:class:`MixedSourceBatches`): each rank (and, when there are enough shards, each
worker) resamples shards from its own disjoint subset, so ranks see disjoint samples; whole
batches are drawn from one source at a time with the configured probabilities; every rank
yields exactly ``batches_per_epoch`` batches, whatever the shard sizes, so ranks stay in step.

Evaluation (:class:`ShardSamples`): shards are dealt round-robin over ranks x workers, so every
sample is read exactly once; ranks may get uneven counts.

Corrupt shards and samples are skipped with a warning naming the shard and key; each batch
carries ``skipped``, the number of read errors (corrupt samples, unreadable or truncated shard
parts) met since the previous batch of its stream, so the count reaches the LightningModule
from worker processes without any extra channel.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dm_lightning.data.schema import decode_sample
from dm_lightning.data.shards import iter_shard

log = logging.getLogger(__name__)


class SkipCounter:
    """Counts skipped samples and shards of one stream (one copy per worker process)."""

    def __init__(self) -> None:
        self.pending = 0
        self.total = 0

    def handle(self, error: Exception) -> bool:
        """webdataset-style handler: warn (naming shard and key), count, continue."""
        self.pending += 1
        self.total += 1
        warnings.warn(f"skipped corrupt data: {error}", stacklevel=2)
        return True

    def take(self) -> int:
        n, self.pending = self.pending, 0
        return n


def stream_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, rank, worker, ...), stable across runs."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(
        1, np.uint64
    )
    return int(state[0] >> 1)


def decoded(samples: Iterator[dict[str, Any]], counter: SkipCounter) -> Iterator[dict[str, Any]]:
    """Schema-decoded samples; undecodable ones are skipped and counted."""
    for raw in samples:
        try:
            yield decode_sample(raw)
        except Exception as err:
            counter.handle(err)


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process: torch.distributed if initialised, else the RANK /
    WORLD_SIZE environment variables, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class RankAware(IterableDataset):
    """Base of the streams: knows its (rank, world), set by :class:`StreamLoader` in the main
    process (worker processes may not see the process group), and its worker."""

    rank_world: tuple[int, int] = (0, 1)

    def reader(self) -> tuple[int, int, int, int]:
        """(rank, world, worker, workers) of the calling process."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return (*self.rank_world, worker, workers)


def assign(items: list[Any], index: int, count: int) -> list[Any]:
    """``items[index::count]``, or all items when there are fewer than ``count``."""
    return items[index::count] if len(items) >= count else list(items)


class SourceStream:
    """Endless, shuffled, batched samples of one training source.

    The shuffle buffer holds raw (still PNG-compressed) samples, which are decoded only when
    drawn: a few hundred samples then cost about 1 MB each instead of 2 MB decoded.

    Args:
        name: source name (logs).
        urls: its shard files.
        batch_size: samples per batch.
        pack: (decoded samples with ``depth_as_units``, flip per sample) -> batch dict, e.g.
            :func:`~dm_lightning.data.packing.pack_training_batch`.
        shuffle_buffer: raw samples held for shuffling.
        hflip: probability of flipping RGB, depth and mask together.
    """

    def __init__(
        self,
        name: str,
        urls: list[str],
        batch_size: int,
        pack: Callable[[list[dict], list[bool]], dict],
        shuffle_buffer: int = 200,
        hflip: float = 0.5,
    ) -> None:
        if not urls:
            raise ValueError(f"training source {name!r} has no shards")
        self.name = name
        self.urls = list(urls)
        self.batch_size = batch_size
        self.pack = pack
        self.shuffle_buffer = shuffle_buffer
        self.hflip = hflip

    def shards_for(self, rank: int, world: int, worker: int, workers: int) -> list[str]:
        """This reader's shard subset: disjoint across ranks (and workers) when there are
        enough shards; otherwise shared, with a warning, and told apart by the seed only."""
        mine = assign(self.urls, rank, world)
        if len(self.urls) < world and worker == 0:
            warnings.warn(
                f"source {self.name!r} has {len(self.urls)} shards for {world} ranks: ranks "
                "resample the same shards (write more, smaller shards for disjoint ranks)",
                stacklevel=2,
            )
        return assign(mine, worker, workers)

    def batches(self, rng: random.Random, shards: list[str]) -> Iterator[dict[str, Any]]:
        counter = SkipCounter()
        buffer: list[dict[str, Any]] = []
        batch: list[dict[str, Any]] = []
        flips: list[bool] = []
        decoded = 0  # samples decoded so far: a source that never yields one fails loudly
        while True:
            for raw in iter_shard(rng.choice(shards), counter.handle):
                buffer.append(raw)
                if len(buffer) < self.shuffle_buffer:
                    continue
                drawn = buffer.pop(rng.randrange(len(buffer)))
                # Drawn whether or not the sample decodes, so a corrupt sample does not shift
                # the random stream of the samples after it.
                flip = rng.random() < self.hflip
                try:
                    sample = decode_sample(drawn, depth_as_units=True)
                except Exception as err:
                    counter.handle(err)
                    continue
                decoded += 1
                batch.append(sample)
                flips.append(flip)
                if len(batch) == self.batch_size:
                    out = self.pack(batch, flips)
                    out["skipped"] = counter.take()
                    yield out
                    batch, flips = [], []
            if decoded == 0 and counter.total > 10 * len(shards) + 100:
                raise RuntimeError(
                    f"source {self.name!r}: {counter.total} corrupt samples/shards and nothing "
                    f"readable in {shards[:3]}..."
                )


class MixedSourceBatches(RankAware):
    """Batches mixed per batch from several :class:`SourceStream`, ``batches_per_epoch`` per
    rank and epoch (None: the caller sets it before iterating), reproducible from ``seed``;
    set ``epoch`` before each epoch (:class:`StreamLoader` does)."""

    def __init__(
        self,
        sources: list[SourceStream],
        probabilities: list[float],
        batches_per_epoch: int | None,
        seed: int,
    ) -> None:
        if len(sources) != len(probabilities):
            raise ValueError("one probability per training source is needed")
        if any(p < 0 for p in probabilities) or sum(probabilities) <= 0:
            raise ValueError(
                f"source probabilities must be >= 0 with a positive sum: {probabilities}"
            )
        self.sources = sources
        total = float(sum(probabilities))
        self.probabilities = [p / total for p in probabilities]
        self.batches_per_epoch = batches_per_epoch
        self.seed = seed
        self.epoch = 0
        # Optimizer steps already taken when this run started (a resumed run): folded into the
        # seed, so a resumed epoch does not replay the batches its first part already drew.
        self.resumed_at = 0

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, workers = self.reader()
        count = self.batches_per_epoch // workers + int(worker < self.batches_per_epoch % workers)
        rng = random.Random(stream_seed(self.seed, self.epoch, rank, worker, self.resumed_at))
        streams = [
            s.batches(
                random.Random(rng.getrandbits(63)), s.shards_for(rank, world, worker, workers)
            )
            for s in self.sources
        ]
        indices = range(len(streams))
        for _ in range(count):
            (i,) = rng.choices(indices, weights=self.probabilities)
            batch = next(streams[i])
            batch["source_index"] = i
            yield batch


class StreamLoader(DataLoader):
    """DataLoader for the streams: before workers start on each pass, it records the process's
    rank in the dataset and advances a training stream's ``epoch``, so each epoch draws new
    (but reproducible) shards and orders."""

    def __iter__(self):
        if isinstance(self.dataset, RankAware):
            self.dataset.rank_world = process_rank()
        if hasattr(self.dataset, "epoch"):
            if getattr(self, "_started", False):
                self.dataset.epoch += 1
            self._started = True
        return super().__iter__()


class ShardSamples(RankAware):
    """Every sample of a shard list exactly once across ranks x workers, batched.

    Shards are dealt round-robin to (rank, worker) readers; a reader with no shard yields
    nothing. Order within a reader is the shard order.
    """

    def __init__(
        self,
        urls: list[str],
        batch_size: int,
        to_tensors: Callable[[dict], dict],
        collate: Callable[[list[dict]], dict],
    ) -> None:
        self.urls = list(urls)
        self.batch_size = batch_size
        self.to_tensors = to_tensors
        self.collate = collate

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, workers = self.reader()
        mine = self.urls[rank * workers + worker :: world * workers]
        counter = SkipCounter()
        batch: list[dict[str, Any]] = []
        # One full batch is held back so that errors met after it (e.g. a truncated shard end)
        # are still reported by a later batch of this reader.
        held: list[dict[str, Any]] | None = None
        for url in mine:
            for sample in decoded(iter_shard(url, counter.handle), counter):
                batch.append(self.to_tensors(sample))
                if len(batch) == self.batch_size:
                    if held is not None:
                        yield self._emit(held, counter)
                    held, batch = batch, []
        for last in (held, batch):
            if last:
                yield self._emit(last, counter)

    def _emit(self, batch: list[dict[str, Any]], counter: SkipCounter) -> dict[str, Any]:
        out = self.collate(batch)
        out["skipped"] = counter.take()
        return out
