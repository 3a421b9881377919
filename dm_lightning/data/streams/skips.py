"""Skip counting shared by the training and evaluation streams: bad samples and shards are
skipped with one warning per shard, counted, and the count rides on the next batch."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

from dm_lightning.data.schema import CorruptSampleError, DepthFormatError, decode_sample
from dm_lightning.data.shard_reader import ShardReadError, iter_shard
from dm_lightning.errors import DataError


class SkipCounter:
    """Counts skipped samples and shard parts of one stream (one copy per worker process), in
    total and per shard, and warns once per shard.

    Args:
        stream: the stream's name in messages (e.g. "training source 'hypersim'").
    """

    def __init__(self, stream: str = "stream") -> None:
        self.stream = stream
        self.pending = 0
        self.total = 0
        self.by_shard: Counter[str] = Counter()
        self.last: dict[str, str] = {}  # shard -> its latest error, for messages
        self.warned: set[str] = set()

    def handle(self, error: Exception) -> bool:
        """webdataset-style handler: warn (naming shard and key, once per shard), count,
        continue.

        Raises:
            DataError: the error is a shard that does not exist (any more): a listed shard
                vanished during the run, which no skipping can make up for; or an 8-bit
                depth PNG (:class:`DepthFormatError`), which would be read as wrong depth.
        """
        shard = getattr(error, "shard", None) or "?"
        if getattr(error, "missing", False):
            raise DataError(
                f"{self.stream}: shard {shard} does not exist any more (deleted or moved "
                "during the run?); expected every shard listed at start to stay readable"
            ) from error
        if isinstance(error, DepthFormatError):
            # A whole shard written in the wrong format: skipping would train on nothing or
            # evaluate a subset; the message names the shard and the sample.
            raise DataError(f"{self.stream}: {error}") from error
        self.pending += 1
        self.total += 1
        self.by_shard[shard] += 1
        self.last[shard] = str(error)
        if shard not in self.warned:
            self.warned.add(shard)
            warnings.warn(
                f"{self.stream}: skipped bad data: {error} (further bad samples in this shard "
                "are counted silently)",
                stacklevel=2,
            )
        return True

    def take(self) -> int:
        n, self.pending = self.pending, 0
        return n


def decoded(samples: Iterator[dict[str, Any]], counter: SkipCounter) -> Iterator[dict[str, Any]]:
    """Schema-decoded samples; undecodable ones (:class:`CorruptSampleError`) are skipped and
    counted."""
    for raw in samples:
        try:
            yield decode_sample(raw)
        except CorruptSampleError as err:
            counter.handle(err)


def read_shard(url: str, counter: SkipCounter) -> Iterator[dict[str, Any]]:
    """:func:`~dm_lightning.data.shard_reader.iter_shard` with ``counter`` as handler; a shard that
    gives no sample and no error (an empty tar) is counted as one skip too."""
    before, count = counter.total, 0
    for raw in iter_shard(url, counter.handle):
        count += 1
        yield raw
    if count == 0 and counter.total == before:
        counter.handle(ShardReadError(f"shard {url} holds no sample (an empty tar)", url))
