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
sample is read exactly once; ranks may get uneven counts. With the shards' sizes known (their
``index.json``), its length is the exact number of batches of the calling rank.

Corrupt shards and samples are skipped with a warning naming the shard and key (one warning
per shard and stream; further bad samples of that shard are counted silently); each batch
carries ``skipped``, the number of read errors (corrupt samples, unreadable, truncated or empty
shards, and training samples without a valid depth pixel) met since the previous batch of its
stream, so the count reaches the LightningModule from worker processes without any extra
channel. An eval reader whose shards gave no sample but did skip some yields one empty batch
(zero samples) carrying that count.

What is an error instead of a skip (:class:`~dm_lightning.errors.DataError`, naming the source
and shards):

* a shard listed at start that no longer exists (deleted or moved during the run);
* a training reader for which a whole pass over its shards gave nothing trainable: every
  distinct shard of its subset was read, since the last good sample, and each read ended with
  no sample that decodes and has a valid pixel (an empty tar counts as such a read). Reads are
  drawn with replacement, so the rule waits until every distinct shard has been seen so;
* a training stream that skipped more than ``max_bad_fraction`` of its samples
  (``skipped / (skipped + decoded)``), judged once it has met ``min_checked`` samples and read
  ``min(shards, 20)`` shards.

Only read and decode errors are handled (:data:`~dm_lightning.data.shard_reader.READ_ERRORS`,
:class:`~dm_lightning.data.schema.CorruptSampleError`); anything else propagates.

Modules: :mod:`.common` (rank and worker of a reader, seeds, :class:`StreamLoader`),
:mod:`.skips` (skip counting shared by every stream), :mod:`.training`
(:class:`SourceStream`, :class:`MixedSourceBatches`, the stop rules) and :mod:`.evaluation`
(:class:`ShardSamples`); this package re-exports their public names. The config checks are in
:mod:`dm_lightning.data.checks`.
"""

from __future__ import annotations

from dm_lightning.data.checks import check_bad_fraction, check_batch_size, check_probabilities
from dm_lightning.data.streams.common import (
    RankAware,
    StreamLoader,
    assign,
    process_rank,
    stream_seed,
)
from dm_lightning.data.streams.evaluation import ShardSamples
from dm_lightning.data.streams.skips import SkipCounter, decoded, read_shard
from dm_lightning.data.streams.training import (
    BAD_FRACTION_MIN_READS,
    DEFAULT_MAX_BAD_FRACTION,
    MixedSourceBatches,
    SourceStream,
)

__all__ = [
    "BAD_FRACTION_MIN_READS",
    "DEFAULT_MAX_BAD_FRACTION",
    "MixedSourceBatches",
    "RankAware",
    "ShardSamples",
    "SkipCounter",
    "SourceStream",
    "StreamLoader",
    "assign",
    "check_bad_fraction",
    "check_batch_size",
    "check_probabilities",
    "decoded",
    "process_rank",
    "read_shard",
    "stream_seed",
]
