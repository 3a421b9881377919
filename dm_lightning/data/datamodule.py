"""One LightningDataModule for both training stages: streamed shards, mixed per batch.

Training: each source is an infinite, resampled shard stream with its own resolution and batch
size; whole batches are mixed by probability, so every micro-batch comes from a single source
(docs/method.md §5). An epoch is a fixed number of batches per rank, which keeps ranks in step
whatever the shard sizes. Validation/test: each named split is read exactly once over ranks and
workers; its loader's length (batches on this rank, the progress bar's total) comes from the
shards' ``index.json``. Seeding and splitting: :mod:`dm_lightning.data.streams`.

The batches (keys, shapes, units; the empty eval batch) are typed in
:mod:`dm_lightning.data.batch`; training batches arrive packed and are finished on the
training device by :meth:`DepthDataModule.on_after_batch_transfer`.

**Checks** (:mod:`dm_lightning.data.checks`). Config values are checked when the DataModule
is built (batch sizes >= 1, mixing probabilities finite >= 0 with a positive sum,
``max_bad_fraction`` in [0, 1]), and :meth:`DepthDataModule.setup` checks, before any step,
that every shard pattern matches files and that the first sample of each training source and
shard eval split has this dm_lightning's schema version. While streaming, bad samples are
skipped and counted (see :mod:`dm_lightning.data.streams` for what stops a run instead).

The loaders of the evaluation splits and of ``predict`` are built by
:mod:`dm_lightning.data.eval_loaders`, the global batch and the epoch's length are planned by
:mod:`dm_lightning.data.global_batch`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from dm_lightning.data.benchmarks import BenchmarkSpec, build_dataset
from dm_lightning.data.checks import (
    check_bad_fraction,
    check_batch_size,
    check_probabilities,
    first_sample_meta,
)
from dm_lightning.data.eval_loaders import (
    benchmark_loader,
    eval_entries,
    image_folder_loader,
    shard_split_loader,
)
from dm_lightning.data.global_batch import (
    common_micro_batch,
    configure_accumulation,
    one_pass_batches,
    rank_batches_per_epoch,
)
from dm_lightning.data.packing import finish_training_batch, pack_training_batch
from dm_lightning.data.shard_paths import expand_shard_patterns
from dm_lightning.data.streams import (
    DEFAULT_MAX_BAD_FRACTION,
    MixedSourceBatches,
    SourceStream,
    StreamLoader,
)
from dm_lightning.data.train_source import TrainSource
from dm_lightning.errors import ConfigError


class DepthDataModule(L.LightningDataModule):
    """Shard-streaming data for DepthMaster training, validation, test and predict.

    Args:
        train: training sources, mixed per batch by their ``probability``.
        val: validation splits, name -> shard pattern or :class:`BenchmarkSpec` (e.g. a
            100-image NYU or KITTI subset through ``list_file``); the first one drives
            checkpoint selection.
        test: test splits, name -> shard pattern or :class:`BenchmarkSpec`.
        predict: a folder or glob of images for ``predict`` (default: the test splits).
        batches_per_epoch: training batches per epoch and rank; None plans one pass over the
            training samples counted in the shards' ``index.json``, shared by all ranks. With
            ``global_batch_size`` set: micro-batches per epoch of a one-rank run, i.e. an
            epoch is the same number of optimizer steps on any world size.
        global_batch_size: samples per optimizer step over all ranks (the recipe's 32), or
            None to leave ``trainer.accumulate_grad_batches`` as configured. When set, every
            rank accumulates ``global / (batch_size x devices x nodes)`` micro-batches per
            optimizer step, derived at fit set-up
            (:mod:`~dm_lightning.data.global_batch`); all training sources must then share
            one ``batch_size``, which becomes the largest micro-batch (lowered, e.g. 8 -> 4 on
            8 ranks for 32, when it does not divide).
        eval_batch_size: batch size of validation and test streams.
        num_workers: data-loading processes per rank.
        shuffle_buffer: raw (still compressed) samples held for shuffling within each training
            source.
        hflip: probability of the horizontal flip augmentation.
        seed: seed of shard choice, shuffling, mixing and flips (with rank, worker and epoch).
        max_bad_fraction: a training stream (one per source, rank and worker) stops with a
            :class:`~dm_lightning.errors.DataError` when it has skipped more than this share
            of its samples (``skipped / (skipped + decoded)``, judged after 100 samples and
            20 shard reads, or all of a reader's shards if fewer), naming the shards with the
            most skips. The default 0.1 lets a few truncated or corrupt shards be skipped but
            stops a source whose data is broken throughout (wrong depth scale or range, a
            converter bug); 1 never stops.
        predict_batch_size: images per forward pass of ``predict`` over a ``predict`` folder;
            images of different sizes may share a batch (those of one working size run
            together: :func:`~dm_lightning.inference.batching.predict_batch`).

    Raises:
        ConfigError: a batch size < 1, ``batches_per_epoch`` < 1, mixing probabilities that
            are not finite >= 0 with a positive sum, ``max_bad_fraction`` outside [0, 1], or
            a ``global_batch_size`` with sources of different batch sizes (at fit set-up
            also: one that the world size does not divide).
    """

    def __init__(
        self,
        train: list[TrainSource] | None = None,
        val: dict[str, str | BenchmarkSpec] | None = None,
        test: dict[str, str | BenchmarkSpec] | None = None,
        predict: str | None = None,
        batches_per_epoch: int | None = None,
        eval_batch_size: int = 4,
        num_workers: int = 2,
        shuffle_buffer: int = 200,
        hflip: float = 0.5,
        seed: int = 0,
        max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
        global_batch_size: int | None = None,
        predict_batch_size: int = 1,
    ) -> None:
        super().__init__()
        self.train_sources = list(train or [])
        if self.train_sources:
            check_probabilities(
                [s.name for s in self.train_sources], [s.probability for s in self.train_sources]
            )
        check_batch_size(eval_batch_size, "data.eval_batch_size")
        check_batch_size(predict_batch_size, "data.predict_batch_size")
        self.predict_batch_size = predict_batch_size
        if batches_per_epoch is not None:
            check_batch_size(batches_per_epoch, "data.batches_per_epoch")
        check_bad_fraction(max_bad_fraction, "data.max_bad_fraction")
        # the sources' batch_size when a global batch is set (the largest micro-batch)
        self.configured_micro_batch: int | None = None
        if global_batch_size is not None:
            check_batch_size(global_batch_size, "data.global_batch_size")
            # one size for all sources, or a clear error now
            sizes = {s.name: s.batch_size for s in self.train_sources}
            self.configured_micro_batch = common_micro_batch(sizes)
        self.global_batch_size = global_batch_size
        # Micro-batches per optimizer step and rank, set by setup("fit") from the global batch.
        self.accumulation = 1
        self.val_splits = eval_entries(val)
        self.test_splits = eval_entries(test)
        # An exactly-once split smaller than the world leaves a rank without batches.
        self.allow_zero_length_dataloader_with_multiple_devices = True
        self.predict_path = predict
        self.batches_per_epoch = batches_per_epoch
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.shuffle_buffer = shuffle_buffer
        self.hflip = hflip
        self.seed = seed
        self.max_bad_fraction = max_bad_fraction
        self.datasets: dict[str, Dataset] = {}  # benchmark readers, built on first use
        self._first_metas: dict[tuple[str, str], dict[str, Any]] = {}

    # The contract with the tasks (dm_lightning.data.contract.DepthData). Names of the eval
    # dataloaders, in dataloader_idx order; the LightningModule logs by them.
    @property
    def val_names(self) -> list[str]:
        return list(self.val_splits)

    @property
    def test_names(self) -> list[str]:
        return list(self.test_splits)

    def eval_splits(self, stage: str) -> dict[str, str | BenchmarkSpec]:
        """The splits of ``stage``: ``val_splits`` for "val", else ``test_splits``."""
        return self.val_splits if stage == "val" else self.test_splits

    def setup(self, stage: str) -> None:
        """Start-up checks, before any step of ``stage`` ("fit", "validate", "test",
        "predict"): every shard pattern of the stage (for "fit": training sources and
        validation splits) matches files, and the first sample of each training source and
        shard eval split has a readable JSON of this dm_lightning's schema version (one
        sample read per source or split; :meth:`train_resolutions` reuses them).

        Raises:
            ConfigError: "fit" without training sources.
            MissingPathError: a pattern matches no file (naming its ``data.*`` key).
            DataError: shards of another schema version, or no readable sample in a source's
                first shards.
        """
        if stage == "fit":
            if not self.train_sources:
                raise ConfigError("DepthDataModule: no training sources configured (data.train)")
            self.train_resolutions()
            if self.global_batch_size is not None and self.trainer is not None:
                self.accumulation = self.apply_global_batch(self.trainer)
        eval_stage = {"fit": "val", "validate": "val", "test": "test"}.get(stage)
        if stage == "predict" and self.predict_path is None:
            eval_stage = "test"
        if eval_stage is None:
            return
        for name, entry in self.eval_splits(eval_stage).items():
            if not isinstance(entry, BenchmarkSpec):
                key = f"data.{eval_stage}[{name}]"
                self._first_meta(key, expand_shard_patterns(entry, key))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Finish a packed training batch on the device Lightning just moved it to
        (:func:`~dm_lightning.data.packing.finish_training_batch`: metres, valid mask, flip),
        the one place it happens: ``training_step`` and every callback's ``on_train_batch_*``
        hook receive a :class:`~dm_lightning.data.batch.TrainingBatch`. Evaluation and
        predict batches pass unchanged. (Lightning calls a DataModule's hook instead of the
        LightningModule's, which keeps the default.)"""
        return finish_training_batch(batch)

    def apply_global_batch(self, trainer: L.Trainer) -> int:
        """Set ``trainer.accumulate_grad_batches`` and every source's micro-batch from
        ``global_batch_size`` (:func:`~dm_lightning.data.global_batch.configure_accumulation`,
        which raises when they do not fit); return the accumulation."""
        micro, accumulation = configure_accumulation(
            trainer, self.global_batch_size, self.configured_micro_batch
        )
        for source in self.train_sources:
            source.batch_size = micro
        return accumulation

    def train_resolutions(self) -> dict[str, tuple[int, int]]:
        """Source name -> (height, width) in pixels of each training source, read from the
        JSON of its first readable sample (cached: one sample read per source, at
        :meth:`setup` or on the first call). A source's samples all share one resolution (a
        batch needs one size), so the model can check it against its VAE factor before
        training.

        Raises:
            MissingPathError, DataError: as :meth:`setup`.
        """
        sizes = {}
        for source in self.train_sources:
            meta = self._first_meta(f"data.train[{source.name}]", self._source_urls(source))
            sizes[source.name] = (int(meta["height"]), int(meta["width"]))
        return sizes

    def _source_urls(self, source: TrainSource) -> list[str]:
        return expand_shard_patterns(source.shards, f"data.train[{source.name}].shards")

    def _first_meta(self, key: str, urls: list[str]) -> dict[str, Any]:
        """The checked JSON of the first readable sample of ``urls``
        (:func:`~dm_lightning.data.checks.first_sample_meta`), cached."""
        if (key, urls[0]) not in self._first_metas:
            self._first_metas[key, urls[0]] = first_sample_meta(key, urls)
        return self._first_metas[key, urls[0]]

    def train_dataloader(self) -> DataLoader:
        if not self.train_sources:
            raise ConfigError("DepthDataModule: no training sources configured (data.train)")
        streams = [
            SourceStream(
                s.name,
                self._source_urls(s),
                s.batch_size,
                pack_training_batch,
                self.shuffle_buffer,
                self.hflip,
                self.max_bad_fraction,
            )
            for s in self.train_sources
        ]
        per_rank = self.batches_per_epoch
        if per_rank is not None and self.global_batch_size is not None:
            per_rank = rank_batches_per_epoch(
                per_rank, self.configured_micro_batch, self.global_batch_size, self.accumulation
            )
        dataset = MixedSourceBatches(
            streams, [s.probability for s in self.train_sources], per_rank, self.seed
        )
        if dataset.batches_per_epoch is None:
            world = self.trainer.world_size if self.trainer is not None else 1
            dataset.batches_per_epoch = one_pass_batches(dataset, world, self.accumulation)
        if self.trainer is not None:
            # Continue from the restored trainer state (--ckpt_path), not from epoch 0.
            dataset.epoch = self.trainer.current_epoch
            dataset.resumed_at = self.trainer.global_step
        return StreamLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            prefetch_factor=4 if self.num_workers else None,
        )

    def _eval_loader(
        self, stage: str, name: str, entry: str | BenchmarkSpec, idle_batch: bool = True
    ) -> DataLoader:
        if isinstance(entry, BenchmarkSpec):
            trainer = self.trainer
            world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
            dataset = self._benchmark(name, entry)
            return benchmark_loader(dataset, self.eval_batch_size, self.num_workers, world, rank)
        key = f"data.{stage}[{name}]"
        return shard_split_loader(entry, key, self.eval_batch_size, self.num_workers, idle_batch)

    def _benchmark(self, name: str, spec: BenchmarkSpec) -> Dataset:
        # Keyed by the spec too: a val and a test entry may share a name with other lists.
        key = f"{name}:{spec!r}"
        if key not in self.datasets:
            self.datasets[key] = build_dataset(name, spec)
        return self.datasets[key]

    def eval_dataset(self, name: str, stage: str = "test") -> Dataset:
        """The reader of benchmark entry ``name`` of ``stage`` ("val" or "test")."""
        spec = self.eval_splits(stage)[name]
        if not isinstance(spec, BenchmarkSpec):
            raise TypeError(f"{stage} split {name!r} is a shard pattern, not a benchmark spec")
        return self._benchmark(name, spec)

    def processing_res(
        self, name: str, stage: str = "test", default: int | None = None
    ) -> int | None:
        """Long edge (pixels) eval set ``name`` of ``stage`` ("val" or "test") runs at: its
        spec's, else its reader's default (None = native size); shard splits: ``default``
        (the model's ``processing_res``). The LightningModule asks once per dataloader."""
        spec = self.eval_splits(stage)[name]
        if not isinstance(spec, BenchmarkSpec):
            return default
        if spec.processing_res is not None:
            return spec.processing_res
        return self._benchmark(name, spec).processing_res

    def val_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader("val", n, e) for n, e in self.val_splits.items()]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader("test", n, e) for n, e in self.test_splits.items()]

    def predict_dataloader(self) -> DataLoader | list[DataLoader]:
        if self.predict_path is None:
            # A rank without a shard predicts nothing (no empty batch: no collective to join).
            return [
                self._eval_loader("test", n, e, idle_batch=False)
                for n, e in self.test_splits.items()
            ]
        return image_folder_loader(self.predict_path, self.predict_batch_size, self.num_workers)


class BenchmarkDataModule(DepthDataModule):
    """Evaluation-only shorthand: the same named :class:`BenchmarkSpec` sets for ``test`` and
    ``validate``, one dataloader each, in config order (``test/<name>/<metric>``); ``predict``
    runs over their images.

    Args:
        benchmarks: name -> :class:`BenchmarkSpec` (or a dict of its fields).
        batch_size: samples per batch; frames of one benchmark may differ in size (ETH3D,
            DIODE, user folders), and a batch needs one size, hence 1 by default.
        num_workers: data-loading processes per benchmark and rank.

    Raises:
        ConfigError: (a ``ValueError``) ``benchmarks`` is empty or ``batch_size`` < 1.
    """

    def __init__(
        self,
        benchmarks: dict[str, BenchmarkSpec],
        batch_size: int = 1,
        num_workers: int = 2,
    ) -> None:
        if not benchmarks:
            raise ConfigError("BenchmarkDataModule: data.benchmarks is empty; name at least one")
        check_batch_size(batch_size, "BenchmarkDataModule: data.batch_size")
        super().__init__(
            val=benchmarks, test=benchmarks, eval_batch_size=batch_size, num_workers=num_workers
        )
        self.benchmarks = self.test_splits

    def setup(self, stage: str) -> None:
        # Build the readers up front so a wrong root fails before any model work.
        for name, spec in self.benchmarks.items():
            self._benchmark(name, spec)
