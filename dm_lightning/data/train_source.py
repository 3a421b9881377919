"""One training source of the DataModule (:class:`TrainSource`): which shards, how often, in
what micro-batch size."""

from __future__ import annotations

from dataclasses import dataclass

from dm_lightning.data.checks import check_batch_size, check_probabilities


@dataclass
class TrainSource:
    """One training source: the config entry that says how to *train* on a source's shards
    (which shards, how often, in what batch size).

    What the shards *contain* (image size, valid depth range, depth scale) is the source's
    :class:`~dm_lightning.data.sources.spec.SourceSpec`, written into every sample and into
    ``index.json`` by the converters and the synthetic generator; it is read from the samples,
    never configured here.

    Args:
        name: label used in logs (e.g. "hypersim").
        shards: shard list: a brace pattern (``data/hypersim/train-{000000..000099}.tar``), a glob
            (``data/hypersim/train-*.tar``) or a single file.
        probability: share of batches drawn from this source (normalised over sources);
            finite, >= 0.
        batch_size: micro-batch size for this source (>= 1).

    Raises:
        ConfigError: ``batch_size`` < 1 or ``probability`` not a finite number >= 0.
    """

    name: str
    shards: str
    probability: float = 1.0
    batch_size: int = 2

    def __post_init__(self) -> None:
        check_batch_size(self.batch_size, f"data.train[{self.name}].batch_size")
        # (a positive sum over the sources is DepthDataModule's check)
        check_probabilities([self.name], [self.probability], allow_zero_sum=True)
