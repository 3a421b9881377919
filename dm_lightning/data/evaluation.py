"""Test/validate data on the zero-shot benchmarks (SPEC section 6) and on users' RGB-D folders.

:class:`BenchmarkDataModule` reads each named benchmark with the map-style readers of
:mod:`dm_lightning.data.benchmarks` and gives one dataloader per benchmark, in config order, so
:class:`~dm_lightning.training.base.DepthMasterTask` logs ``test/<name>/<metric>``. Batches are
those of :func:`~dm_lightning.data.datamodule.collate` plus ``processing_res``: a list of
``int | None`` (long edge the network runs at, None = native size), one per sample.

Every sample is evaluated exactly once over DDP ranks: :class:`RankShardSampler` gives rank r
the indices ``r, r + world, r + 2 world, ...`` without the padding of torch's
``DistributedSampler`` (which repeats samples so ranks get equal counts and would bias the
means). Ranks may get different numbers of batches; evaluation has no per-step collective.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler

from dm_lightning.data.benchmarks import BENCHMARKS, DepthPairDataset, RGBDFolder, get_benchmark
from dm_lightning.data.datamodule import DepthDataModule, collate

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


def collate_with_resolution(
    samples: list[dict[str, Any]], processing_res: int | None
) -> dict[str, Any]:
    """:func:`~dm_lightning.data.datamodule.collate` plus ``processing_res``: a list with
    ``processing_res`` (pixels, or None = native) once per sample."""
    batch = collate(samples)
    batch["processing_res"] = [processing_res] * len(samples)
    return batch


class BenchmarkDataModule(DepthDataModule):
    """Benchmarks and RGB-D folders for ``test`` and ``validate``, one dataloader per entry.

    A :class:`~dm_lightning.data.datamodule.DepthDataModule` without training sources (the CLI
    accepts its subclasses as ``data``); ``predict`` runs over the benchmarks' images. Readers
    are built in :meth:`setup`, so configs parse without the data present.

    Args:
        benchmarks: name -> :class:`BenchmarkSpec` (or a dict of its fields); the names label
            the logs (``test/<name>/abs_rel``) and keep their order.
        batch_size: samples per batch; frames of one benchmark may differ in size (ETH3D,
            DIODE, user folders), and a batch needs one size, hence 1 by default.
        num_workers: data-loading processes per benchmark and rank.

    Raises:
        ValueError: ``benchmarks`` is empty or ``batch_size`` < 1.
    """

    def __init__(
        self,
        benchmarks: dict[str, BenchmarkSpec],
        batch_size: int = 1,
        num_workers: int = 2,
    ) -> None:
        super().__init__(eval_batch_size=batch_size, num_workers=num_workers)
        if not benchmarks:
            raise ValueError("BenchmarkDataModule: data.benchmarks is empty; name at least one")
        if batch_size < 1:
            raise ValueError(f"BenchmarkDataModule: batch_size must be >= 1, got {batch_size}")
        self.benchmarks = {
            name: BenchmarkSpec(**spec) if isinstance(spec, dict) else spec
            for name, spec in benchmarks.items()
        }
        self.datasets: dict[str, DepthPairDataset] = {}
        # A benchmark with fewer frames than ranks leaves some ranks without a batch: Lightning
        # raises on a zero-length eval dataloader in a multi-device run unless this is set.
        self.allow_zero_length_dataloader_with_multiple_devices = True

    # Names of the eval dataloaders, in dataloader_idx order; the LightningModule logs by them.
    @property
    def val_names(self) -> list[str]:
        return list(self.benchmarks)

    @property
    def test_names(self) -> list[str]:
        return list(self.benchmarks)

    def setup(self, stage: str) -> None:
        if not self.datasets:
            self.datasets = {name: build_dataset(name, s) for name, s in self.benchmarks.items()}

    def processing_res(self, name: str) -> int | None:
        """Long edge (pixels) benchmark ``name`` runs at: the spec's, else its reader's
        (None = native size)."""
        spec = self.benchmarks[name]
        if spec.processing_res is not None:
            return spec.processing_res
        self.setup("test")
        return self.datasets[name].processing_res

    def _benchmark_loader(self, name: str) -> DataLoader:
        self.setup("test")
        dataset = self.datasets[name]
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=RankShardSampler(dataset, world, rank),
            num_workers=self.num_workers,
            collate_fn=partial(collate_with_resolution, processing_res=self.processing_res(name)),
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [self._benchmark_loader(name) for name in self.benchmarks]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._benchmark_loader(name) for name in self.benchmarks]
