"""Evaluation sets on the zero-shot benchmarks (SPEC section 6) and on users' RGB-D folders.

A :class:`BenchmarkSpec` names a reader of :mod:`dm_lightning.data.benchmarks`; the
:class:`~dm_lightning.data.datamodule.DepthDataModule` accepts specs next to shard patterns in
``val`` and ``test`` (so validation during ``fit`` can run on e.g. NYU or KITTI subsets), and
:class:`~dm_lightning.data.datamodule.BenchmarkDataModule` is the test-only shorthand. Their
batches carry ``processing_res``: a list of ``int | None`` (long edge the network runs at,
None = native size), one per sample.

Every sample is evaluated exactly once over DDP ranks: :class:`RankShardSampler` gives rank r
the indices ``r, r + world, r + 2 world, ...`` without the padding of torch's
``DistributedSampler`` (which repeats samples so ranks get equal counts and would bias the
means). Ranks may get different numbers of batches; evaluation has no per-step collective.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import DistributedSampler

from dm_lightning.data.benchmarks import BENCHMARKS, DepthPairDataset, RGBDFolder, get_benchmark

RGBD_FOLDER = "rgbd_folder"


@dataclass
class BenchmarkSpec:
    """One evaluation set.

    Args:
        kind: a benchmark of :data:`~dm_lightning.data.benchmarks.BENCHMARKS` (``nyu``,
            ``kitti``, ``eth3d``, ``scannet``, ``diode``) or ``rgbd_folder`` (a user folder read
            by :class:`~dm_lightning.data.benchmarks.RGBDFolder`).
        root: the data folder, or a tar archive of it.
        list_file: reference list replacing the packaged ``splits/eval/<kind>.txt`` (benchmarks
            only).
        processing_res: long edge (pixels) the network runs at; None = the benchmark's own
            (756 for ETH3D, 640 for DIODE, native size otherwise).
        options: further reader keyword arguments, e.g. ``rgb_pattern``, ``depth_pattern``,
            ``decode``/``depth_scale``, ``min_depth``, ``max_depth`` for ``rgbd_folder``.
    """

    kind: str
    root: str
    list_file: str | None = None
    processing_res: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


def build_dataset(name: str, spec: BenchmarkSpec) -> DepthPairDataset:
    """The reader of one spec; an ``rgbd_folder`` takes ``name`` as its ``source`` unless
    ``options`` sets one.

    Raises:
        ValueError: unknown ``kind``, or a ``list_file`` given to an ``rgbd_folder`` (names the
            benchmark key and the value).
        FileNotFoundError: the root (or list) does not exist, from the reader.
    """
    if spec.kind == RGBD_FOLDER:
        if spec.list_file is not None:
            raise ValueError(
                f"benchmarks.{name}: list_file={spec.list_file!r} is not used by kind "
                f"{RGBD_FOLDER!r}, which matches files by options.rgb_pattern/depth_pattern"
            )
        return RGBDFolder(spec.root, **{"name": name, **spec.options})
    if spec.kind not in BENCHMARKS:
        raise ValueError(
            f"benchmarks.{name}.kind: unknown kind {spec.kind!r}; expected one of "
            f"{', '.join([*sorted(BENCHMARKS), RGBD_FOLDER])}"
        )
    return get_benchmark(spec.kind, spec.root, list_file=spec.list_file, **spec.options)


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
