"""Evaluation streams: every sample of a shard list exactly once across ranks x workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from dm_lightning.data.checks import check_batch_size
from dm_lightning.data.streams.common import RankAware
from dm_lightning.data.streams.skips import SkipCounter, decoded, read_shard


class ShardSamples(RankAware):
    """Every sample of a shard list exactly once across ranks x workers, batched.

    Shards are dealt round-robin to (rank, worker) readers; a reader with no shard yields
    nothing. Order within a reader is the shard order. Skips met after a reader's last batch
    are carried by that batch (one full batch is held back); a reader that skipped samples but
    has no batch to carry the count yields ``collate([])``, an empty batch with ``skipped``.

    Args:
        urls: shard files.
        batch_size: samples per batch (>= 1).
        to_tensors: decoded sample -> dict of tensors.
        collate: list of those -> batch dict; called with ``[]`` for the empty batch.
        name: the split in messages (e.g. "data.val[nyu]").

    Raises:
        ConfigError: ``batch_size`` < 1.
    """

    def __init__(
        self,
        urls: list[str],
        batch_size: int,
        to_tensors: Callable[[dict], dict],
        collate: Callable[[list[dict]], dict],
        name: str = "eval split",
    ) -> None:
        check_batch_size(batch_size, f"{name}: eval batch size")
        self.urls = list(urls)
        self.batch_size = batch_size
        self.to_tensors = to_tensors
        self.collate = collate
        self.name = name

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, world, worker, workers = self.reader()
        mine = self.urls[rank * workers + worker :: world * workers]
        counter = SkipCounter(self.name)
        batch: list[dict[str, Any]] = []
        # One full batch is held back so that errors met after it (e.g. a truncated shard end)
        # are still reported by a later batch of this reader.
        held: list[dict[str, Any]] | None = None
        emitted = False
        for url in mine:
            for sample in decoded(read_shard(url, counter), counter):
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
        if not emitted and counter.pending:
            yield self._emit([], counter)

    def _emit(self, batch: list[dict[str, Any]], counter: SkipCounter) -> dict[str, Any]:
        out = self.collate(batch)
        out["skipped"] = counter.take()
        return out
