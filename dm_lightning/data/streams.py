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

Only read and decode errors are handled (:data:`~dm_lightning.data.shards.READ_ERRORS`,
:class:`~dm_lightning.data.schema.CorruptSampleError`); anything else propagates.
"""

from __future__ import annotations

import logging
import math
import os
import random
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from numbers import Integral
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dm_lightning.data.packing import has_valid_depth
from dm_lightning.data.schema import CorruptSampleError, decode_sample
from dm_lightning.data.shards import ShardReadError, iter_shard
from dm_lightning.errors import ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_MAX_BAD_FRACTION = 0.1
"""Default share of skipped samples above which a training stream stops (see
:class:`SourceStream`)."""

BAD_FRACTION_MIN_READS = 20
"""Shard reads a training stream makes (or its shard count, if smaller) before it judges its
bad-sample fraction: bad samples come in whole shards, so fewer reads are too noisy."""


def check_batch_size(value: Any, what: str) -> None:
    """Raise :class:`~dm_lightning.errors.ConfigError` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ConfigError(f"{what} must be an integer >= 1, got {value!r}")


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
                vanished during the run, which no skipping can make up for.
        """
        shard = getattr(error, "shard", None) or "?"
        if getattr(error, "missing", False):
            raise DataError(
                f"{self.stream}: shard {shard} does not exist any more (deleted or moved "
                "during the run?); expected every shard listed at start to stay readable"
            ) from error
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


def stream_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, rank, worker, ...), stable across runs."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(
        1, np.uint64
    )
    return int(state[0] >> 1)


def decoded(samples: Iterator[dict[str, Any]], counter: SkipCounter) -> Iterator[dict[str, Any]]:
    """Schema-decoded samples; undecodable ones (:class:`CorruptSampleError`) are skipped and
    counted."""
    for raw in samples:
        try:
            yield decode_sample(raw)
        except CorruptSampleError as err:
            counter.handle(err)


def read_shard(url: str, counter: SkipCounter) -> Iterator[dict[str, Any]]:
    """:func:`~dm_lightning.data.shards.iter_shard` with ``counter`` as handler; a shard that
    gives no sample and no error (an empty tar) is counted as one skip too."""
    before, count = counter.total, 0
    for raw in iter_shard(url, counter.handle):
        count += 1
        yield raw
    if count == 0 and counter.total == before:
        counter.handle(ShardReadError(f"shard {url} holds no sample (an empty tar)", url))


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
    drawn: a few hundred samples then cost about 1 MB each instead of 2 MB decoded. A drawn
    sample that does not decode, or has no pixel inside its valid depth range
    (:func:`~dm_lightning.data.packing.has_valid_depth`), is skipped and counted.

    Args:
        name: source name (logs).
        urls: its shard files.
        batch_size: samples per batch (>= 1).
        pack: (decoded samples with ``depth_as_units``, flip per sample) -> batch dict, e.g.
            :func:`~dm_lightning.data.packing.pack_training_batch`.
        shuffle_buffer: raw samples held for shuffling.
        hflip: probability of flipping RGB, depth and mask together.
        max_bad_fraction: the stream raises :class:`~dm_lightning.errors.DataError` when more
            than this share of its samples was skipped (1 = never).
        min_checked: samples (skipped + decoded) a stream meets before it judges that share.

    Raises:
        ConfigError: ``batch_size`` < 1, no shard, or ``max_bad_fraction`` outside [0, 1].
    """

    def __init__(
        self,
        name: str,
        urls: list[str],
        batch_size: int,
        pack: Callable[[list[dict], list[bool]], dict],
        shuffle_buffer: int = 200,
        hflip: float = 0.5,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
        min_checked: int = 100,
    ) -> None:
        check_batch_size(batch_size, f"training source {name!r}: batch_size")
        if not urls:
            raise ConfigError(f"training source {name!r} has no shards")
        check_bad_fraction(max_bad_fraction, f"training source {name!r}: max_bad_fraction")
        self.name = name
        self.urls = list(urls)
        self.batch_size = batch_size
        self.pack = pack
        self.shuffle_buffer = shuffle_buffer
        self.hflip = hflip
        self.max_bad_fraction = max_bad_fraction
        self.min_checked = min_checked

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
        """Endless batches from ``shards`` (drawn with replacement by ``rng``).

        Raises:
            DataError: a whole pass over ``shards`` gave nothing trainable, a shard vanished,
                or more than ``max_bad_fraction`` of the samples were skipped.
        """
        counter = SkipCounter(f"training source {self.name!r}")
        passes = _PassCheck(f"training source {self.name!r}", shards, counter)
        buffer: list[tuple[int, dict[str, Any]]] = []  # (read number, raw sample)
        batch: list[dict[str, Any]] = []
        flips: list[bool] = []
        good = 0  # samples decoded, with a valid pixel
        while True:
            url = rng.choice(shards)
            read = passes.start(url)
            skipped_before = counter.total
            for raw in read_shard(url, counter):
                passes.add(read)
                buffer.append((read, raw))
                if len(buffer) < self.shuffle_buffer:
                    continue
                origin, drawn = buffer.pop(rng.randrange(len(buffer)))
                # Drawn whether or not the sample decodes, so a corrupt sample does not shift
                # the random stream of the samples after it.
                flip = rng.random() < self.hflip
                sample = self._decode(drawn, counter)
                passes.drawn(origin, sample is not None)
                if sample is None:
                    self._check_bad_fraction(counter, good, passes)
                    continue
                good += 1
                batch.append(sample)
                flips.append(flip)
                if len(batch) == self.batch_size:
                    out = self.pack(batch, flips)
                    out["skipped"] = counter.take()
                    yield out
                    batch, flips = [], []
            passes.finish(read)
            if counter.total > skipped_before:
                self._check_bad_fraction(counter, good, passes)

    def _decode(self, raw: dict[str, Any], counter: SkipCounter) -> dict[str, Any] | None:
        """The decoded sample, or None (counted) if it is corrupt or has no valid pixel."""
        try:
            sample = decode_sample(raw, depth_as_units=True)
        except CorruptSampleError as err:
            counter.handle(err)
            return None
        if not has_valid_depth(sample["depth_units"], sample["meta"]):
            meta, url = sample["meta"], raw.get("__url__", "?")
            counter.handle(
                CorruptSampleError(
                    f"shard {url}, sample {sample['key']}: no valid depth pixel (none inside "
                    f"({meta['min_depth']}, {meta['max_depth']}) m after decoding), nothing "
                    "to train on",
                    url,
                    sample["key"],
                )
            )
            return None
        return sample

    def _check_bad_fraction(self, counter: SkipCounter, good: int, passes: _PassCheck) -> None:
        seen = counter.total + good
        reads = min(len(passes.shards), BAD_FRACTION_MIN_READS)
        if seen < self.min_checked or passes.reads_done < reads:
            return
        if counter.total <= self.max_bad_fraction * seen:
            return
        worst = ", ".join(f"{url} ({n})" for url, n in counter.by_shard.most_common(3))
        raise DataError(
            f"training source {self.name!r}: {counter.total} of {seen} samples skipped "
            f"({counter.total / seen:.0%}; {good} decoded), more than max_bad_fraction = "
            f"{self.max_bad_fraction:g}; most skips in: {worst}. Stopped instead of training "
            "on garbage: fix or drop those shards (tools/inspect_shards.py shows what is "
            "wrong), or raise data.max_bad_fraction"
        )


def check_bad_fraction(value: Any, what: str) -> None:
    """Raise :class:`~dm_lightning.errors.ConfigError` unless ``value`` is in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{what} must be a fraction in [0, 1] (1 = never stop), got {value!r}")


class _PassCheck:
    """Tells a training reader that a whole pass over its shards gave nothing trainable.

    Each shard read is tracked until it is resolved: read to its end and all its samples
    drawn from the shuffle buffer. A resolved read none of whose samples was good makes its
    shard barren; any good sample clears the barren set. When every distinct shard of the
    subset is barren, no shard has given a good sample since the last one, however the shards
    were drawn: :class:`~dm_lightning.errors.DataError`. No random numbers are drawn here.
    """

    def __init__(self, stream: str, shards: list[str], counter: SkipCounter) -> None:
        self.stream = stream
        self.shards = list(shards)
        self.distinct = set(shards)
        self.counter = counter
        self.reads_done = 0
        self._next = 0
        # read number -> [url, samples in the buffer, good sample seen, read to its end]
        self._open: dict[int, list[Any]] = {}
        self._barren: dict[str, None] = {}

    def start(self, url: str) -> int:
        self._next += 1
        self._open[self._next] = [url, 0, False, False]
        return self._next

    def add(self, read: int) -> None:
        self._open[read][1] += 1

    def drawn(self, read: int, good: bool) -> None:
        state = self._open[read]
        state[1] -= 1
        if good:
            state[2] = True
            self._barren.clear()
        if state[3] and state[1] == 0:
            self._resolve(read)

    def finish(self, read: int) -> None:
        self.reads_done += 1
        state = self._open[read]
        state[3] = True
        if state[1] == 0:
            self._resolve(read)

    def _resolve(self, read: int) -> None:
        url, _, good, _ = self._open.pop(read)
        if good:
            return
        self._barren[url] = None
        if len(self._barren) < len(self.distinct):
            return
        shown = sorted(self.distinct)
        details = "; ".join(
            f"{u}: {self.counter.last.get(u, 'no sample')} ({self.counter.by_shard[u]} skipped)"
            for u in shown[:5]
        )
        more = f"; and {len(shown) - 5} more shards" if len(shown) > 5 else ""
        raise DataError(
            f"{self.stream}: nothing readable in a whole pass over this reader's "
            f"{len(shown)} shard(s): each was read and gave no sample that decodes with a "
            f"valid depth pixel: {details}{more}. Expected at least one trainable sample"
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
            raise ConfigError("one probability per training source is needed")
        check_probabilities([s.name for s in sources], probabilities)
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


def check_probabilities(
    names: list[str],
    probabilities: list[float],
    key: str = "data.train",
    allow_zero_sum: bool = False,
) -> None:
    """Raise :class:`~dm_lightning.errors.ConfigError` unless every mixing probability is a
    finite number >= 0 and (unless ``allow_zero_sum``) their sum is positive; ``key`` is the
    config key named in the message."""
    for name, p in zip(names, probabilities):
        number = isinstance(p, (int, float)) and not isinstance(p, bool)
        if not (number and math.isfinite(p) and p >= 0):
            raise ConfigError(f"{key}[{name}].probability must be a finite number >= 0, got {p!r}")
    if not allow_zero_sum and not sum(probabilities) > 0:
        raise ConfigError(
            f"{key}: the probabilities {dict(zip(names, probabilities))} sum to "
            f"{sum(probabilities)!r}; at least one source needs a probability > 0"
        )


class StreamLoader(DataLoader):
    """DataLoader for the streams: before workers start on each pass, it records the process's
    rank in the dataset and advances a training stream's ``epoch``, so each epoch draws new
    (but reproducible) shards and orders.

    Its data position is part of Lightning's checkpoint (``state_dict`` /
    ``load_state_dict``, which also tells Lightning the loader resumes): the training
    stream's epoch, seed and the optimizer steps of earlier run parts. A resumed epoch
    continues with batches drawn from a seed that folds in the resume step (see
    :class:`MixedSourceBatches`), so it neither replays the batches its first part already
    trained on nor runs longer than planned (Lightning ends it at its batch count).
    """

    def state_dict(self) -> dict[str, Any]:
        if not hasattr(self.dataset, "epoch"):
            return {}
        return {"epoch": self.dataset.epoch, "seed": self.dataset.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "epoch" not in state or not hasattr(self.dataset, "epoch"):
            return
        if state["seed"] != self.dataset.seed:
            warnings.warn(
                f"resuming with data.seed={self.dataset.seed}, the checkpoint was trained with "
                f"seed {state['seed']}: the stream continues with the new seed",
                stacklevel=2,
            )
        self.dataset.epoch = int(state["epoch"])
        self._started = False  # the restored epoch is the next one iterated

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
