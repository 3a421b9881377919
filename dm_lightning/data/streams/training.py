"""Training streams: endless shuffled batches of one source (:class:`SourceStream`), mixed per
batch over sources (:class:`MixedSourceBatches`), and the rules that stop a training stream
instead of skipping (a whole barren pass, too many skipped samples)."""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from dm_lightning.data.checks import check_bad_fraction, check_batch_size, check_probabilities
from dm_lightning.data.packing import has_valid_depth
from dm_lightning.data.schema import CorruptSampleError, decode_sample
from dm_lightning.data.streams.common import RankAware, assign, stream_seed
from dm_lightning.data.streams.skips import SkipCounter, read_shard
from dm_lightning.errors import ConfigError, DataError

DEFAULT_MAX_BAD_FRACTION = 0.1
"""Default share of skipped samples above which a training stream stops (see
:class:`SourceStream`)."""

BAD_FRACTION_MIN_READS = 20
"""Shard reads a training stream makes (or its shard count, if smaller) before it judges its
bad-sample fraction: bad samples come in whole shards, so fewer reads are too noisy."""


@dataclass(eq=False)
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

    name: str
    urls: list[str]
    batch_size: int
    pack: Callable[[list[dict], list[bool]], dict]
    shuffle_buffer: int = 200
    hflip: float = 0.5
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION
    min_checked: int = 100

    def __post_init__(self) -> None:
        check_batch_size(self.batch_size, f"training source {self.name!r}: batch_size")
        if not self.urls:
            raise ConfigError(f"training source {self.name!r} has no shards")
        check_bad_fraction(
            self.max_bad_fraction, f"training source {self.name!r}: max_bad_fraction"
        )
        self.urls = list(self.urls)

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
