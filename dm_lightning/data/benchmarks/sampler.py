"""The exactly-once evaluation sampler over DDP ranks.

Every sample is evaluated exactly once over DDP ranks: :class:`RankShardSampler` gives rank r
the indices ``r, r + world, r + 2 world, ...`` without the padding of torch's
``DistributedSampler`` (which repeats samples so ranks get equal counts and would bias the
means). Ranks may get different numbers of batches; evaluation has no per-step collective.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

from torch.utils.data import DistributedSampler


class RankShardSampler(DistributedSampler):
    """Indices ``rank, rank + num_replicas, ...`` of a dataset, in order, without padding.

    Every index goes to exactly one rank; ranks may get one sample more than others. A
    ``DistributedSampler`` subclass on purpose: with ``use_distributed_sampler=True`` (the
    default), Lightning 2.6 replaces the sampler of an eval dataloader in a distributed run
    unless it is a ``DistributedSampler`` (``_DataConnector._requires_distributed_sampler``);
    any other sampler would be wrapped in ``DistributedSamplerWrapper``, which shards our
    indices a second time and pads them with repeats.

    Args:
        dataset: anything with ``len()``.
        num_replicas: world size (>= 1).
        rank: this process's global rank, in ``[0, num_replicas)``.
    """

    def __init__(self, dataset: Sized, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def indices(self) -> range:
        """This rank's dataset indices."""
        return range(self.rank, len(self.dataset), self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices())

    def __len__(self) -> int:
        return len(self.indices())
