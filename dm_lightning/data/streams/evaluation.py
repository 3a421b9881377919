"""Evaluation streams: every sample of a shard list exactly once across ranks x workers."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dm_lightning.data.checks import check_batch_size
from dm_lightning.data.streams.common import RankAware
from dm_lightning.data.streams.skips import SkipCounter, decoded, read_shard
from dm_lightning.errors import DataError


@dataclass(eq=False)
class ShardSamples(RankAware):
    """Every sample of a shard list exactly once across ranks x workers, batched.

    Shards are dealt round-robin to (rank, worker) readers; a reader with no shard yields
    nothing, except (with ``idle_batch``) the first worker of a rank with no shard at all,
    which yields one empty batch: every rank then runs the evaluation loop (Lightning skips a
    loop of length 0), whose epoch end synchronises the metrics over ranks. Order within a
    reader is the shard order. Skips met after a reader's last batch are carried by that batch
    (one full batch is held back); a reader that skipped samples but has no batch to carry the
    count yields ``collate([])``, an empty batch with ``skipped``.

    Length: with ``sizes`` known, ``len()`` is the number of batches this rank yields over
    its ``loader_workers`` readers (``rank_world`` and ``loader_workers`` are set by
    :class:`~dm_lightning.data.streams.common.StreamLoader`): each reader yields
    ``ceil(samples / batch_size)`` batches, or one empty batch when its shards hold no sample.
    Skipped samples can only lower the count. Lightning stops an evaluation loop at this
    length, so a shard holding more samples than ``sizes`` says raises instead of being cut
    off silently. Without ``sizes`` (URL shards, no ``index.json``), ``len()`` raises
    ``TypeError``: Lightning then reads the stream to its end with no known total.

    Args:
        urls: shard files.
        batch_size: samples per batch (>= 1).
        to_tensors: decoded sample -> dict of tensors.
        collate: list of those -> batch dict; called with ``[]`` for the empty batch.
        name: the split in messages (e.g. "data.val[nyu]").
        sizes: samples per shard, in ``urls`` order (from the shards' ``index.json``), or
            None if unknown.
        idle_batch: a rank without shards yields one empty batch (validation and test, whose
            epoch end is a collective); False for predict, which has none.

    Raises:
        ConfigError: ``batch_size`` < 1.
        ValueError: ``sizes`` does not have one count per shard.
    """

    urls: list[str]
    batch_size: int
    to_tensors: Callable[[dict], dict]
    collate: Callable[[list[dict]], dict]
    name: str = "eval split"
    sizes: list[int] | None = None
    idle_batch: bool = True

    def __post_init__(self) -> None:
        check_batch_size(self.batch_size, f"{self.name}: eval batch size")
        if self.sizes is not None and len(self.sizes) != len(self.urls):
            raise ValueError(
                f"{self.name}: {len(self.sizes)} shard sizes for {len(self.urls)} shards"
            )
        self.sizes = None if self.sizes is None else [int(n) for n in self.sizes]
        self.urls = list(self.urls)

    def _mine(self, rank: int, world: int, worker: int, workers: int) -> range:
        """Indices (into ``urls``) of the shards of reader (rank, worker)."""
        return range(rank * workers + worker, len(self.urls), world * workers)

    def reader_batches(self, rank: int, world: int, worker: int, workers: int) -> int:
        """Batches reader (rank, worker) yields when every sample reads (``sizes`` needed)."""
        if self.sizes is None:
            raise TypeError(f"{self.name}: the shards' sample counts are unknown (no index.json)")
        mine = self._mine(rank, world, worker, workers)
        if not mine:
            return int(self._idle_rank(rank, workers) and worker == 0)
        samples = sum(self.sizes[i] for i in mine)
        # A reader whose shards hold no sample reports them in one empty batch.
        return math.ceil(samples / self.batch_size) if samples else 1

    def _idle_rank(self, rank: int, workers: int) -> bool:
        """Rank ``rank`` has no shard (fewer shards than ranks x workers) and reports it with
        one empty batch."""
        return self.idle_batch and rank * workers >= len(self.urls)

    def __len__(self) -> int:
        rank, world = self.rank_world
        workers = self.loader_workers
        return sum(self.reader_batches(rank, world, w, workers) for w in range(workers))

    def _counted(self, index: int, counter: SkipCounter) -> Iterator[dict[str, Any]]:
        """Raw samples of shard ``index``, checked against its indexed size."""
        url = self.urls[index]
        for count, raw in enumerate(read_shard(url, counter), 1):
            if self.sizes is not None and count > self.sizes[index]:
                raise DataError(
                    f"{self.name}: shard {url} holds more samples than the {self.sizes[index]} "
                    "its index.json lists; the index is stale and the evaluation would stop "
                    "short of the extra batches. Rewrite the shards with the tool that made "
                    "them (it writes index.json), or delete index.json to evaluate without a "
                    "known length"
                )
            yield raw

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, workers = self.reader()
        mine = self._mine(rank, world, worker, workers)
        counter = SkipCounter(self.name)
        batch: list[dict[str, Any]] = []
        # One full batch is held back so that errors met after it (e.g. a truncated shard end)
        # are still reported by a later batch of this reader.
        held: list[dict[str, Any]] | None = None
        emitted = False
        for index in mine:
            for sample in decoded(self._counted(index, counter), counter):
                batch.append(self.to_tensors(sample))
                if len(batch) == self.batch_size:
                    if held is not None:
                        emitted = True
                        yield self._emit(held, counter)
                    held, batch = batch, []
        for last in (held, batch):
            if last:
                emitted = True
                yield self._emit(last, counter)
        idle = not mine and worker == 0 and self._idle_rank(rank, workers)
        if not emitted and (counter.pending or idle):
            yield self._emit([], counter)

    def _emit(self, batch: list[dict[str, Any]], counter: SkipCounter) -> dict[str, Any]:
        out = self.collate(batch)
        out["skipped"] = counter.take()
        return out
