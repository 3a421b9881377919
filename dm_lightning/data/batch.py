"""The batch contract between the data and the tasks, written once as types.

Every loader hands the tasks a plain ``dict``; these :class:`~typing.TypedDict` s say which
keys it holds, with their shapes, dtypes and units (a type checker reads them, nothing is
checked at run time):

* :class:`DepthSample`: one sample of an evaluation reader (a benchmark's
  :class:`~dm_lightning.data.benchmarks.DepthPairDataset` item, a shard sample through
  :func:`~dm_lightning.data.collate.sample_to_tensors`);
* :class:`EvalBatch`: those stacked (:func:`~dm_lightning.data.collate.collate`), what the
  validation and test steps receive;
* :class:`PackedBatch`: a training batch as a data-loading worker stacks it
  (:func:`~dm_lightning.data.packing.pack_training_batch`: memory copies only);
* :class:`TrainingBatch`: a packed batch finished on the training device
  (:func:`~dm_lightning.data.packing.finish_training_batch`, called by
  :meth:`DepthDataModule.on_after_batch_transfer
  <dm_lightning.data.datamodule.DepthDataModule.on_after_batch_transfer>`), what
  ``training_step``, the stages' ``training_loss`` and the callbacks' ``on_train_batch_*``
  hooks receive: the keys of an :class:`EvalBatch`, so the losses and the evaluation read one
  format.

**Empty eval batches.** A validation/test reader (a rank's worker) whose shards held no
readable sample but whose skips must still be reported yields one batch of zero samples
(:func:`~dm_lightning.data.collate.empty_batch`): ``rgb`` (0, 3, 1, 1) uint8, ``depth``
(0, 1, 1, 1) float32, ``valid`` (0, 1, 1, 1) bool, ``min_depth``/``max_depth`` (0,) float64,
``source`` and ``key`` ``[]``, and ``skipped`` > 0. A consumer counts its skips and evaluates
nothing. Training batches are never empty.

The long edge a split runs at is not in its batches: the task asks the DataModule once per
loader (:class:`~dm_lightning.data.contract.DepthData`). The batches of ``predict`` over an
image folder have their own format (:class:`~dm_lightning.data.predict.ImageFolder`).
"""

from __future__ import annotations

from typing import TypedDict

from torch import Tensor


class DepthSample(TypedDict):
    """One evaluation sample.

    Keys:
        rgb: (3, H, W) uint8.
        depth: (1, H, W) float32 metres, 0 where there is no measurement.
        valid: (1, H, W) bool: finite & ``min_depth < depth < max_depth`` & the benchmark's
            crop or mask.
        min_depth, max_depth: the source's valid range in metres (``math.inf`` allowed).
        source: the source or benchmark name.
        key: unique within the dataset, no dots (webdataset splits extensions at dots).
    """

    rgb: Tensor
    depth: Tensor
    valid: Tensor
    min_depth: float
    max_depth: float
    source: str
    key: str


class _Skips(TypedDict, total=False):
    """The key a stream adds to the batches it yields (``NotRequired`` needs Python 3.11)."""

    skipped: int


class EvalBatch(_Skips):
    """B evaluation samples of one size stacked (B = 0: the empty batch, see above).

    Keys:
        rgb: (B, 3, H, W) uint8.
        depth: (B, 1, H, W) float32 metres.
        valid: (B, 1, H, W) bool.
        min_depth, max_depth: (B,) float64 metres.
        source, key: lists of B str.
        skipped: corrupt samples the stream skipped since its previous batch (shard streams
            only).
    """

    rgb: Tensor
    depth: Tensor
    valid: Tensor
    min_depth: Tensor
    max_depth: Tensor
    source: list[str]
    key: list[str]


class TrainingBatch(EvalBatch, total=False):
    """A finished training batch: the keys of :class:`EvalBatch` (B >= 1), with ``depth`` =
    PNG units x ``depth_scale`` in float32 (0 where not measured), ``valid`` the source's
    range, and each flipped sample's RGB, depth and mask mirrored together; plus
    ``source_index``, as in :class:`PackedBatch`."""

    source_index: int


class _MixedStream(_Skips, total=False):
    """The key the training stream adds to the batches it mixes."""

    source_index: int


class PackedBatch(_MixedStream):
    """A training batch as a worker stacks it (finished into a :class:`TrainingBatch`).

    Keys:
        rgb: (B, H, W, 3) uint8.
        depth_units: (B, 1, H, W) int16 holding the uint16 PNG units' bits (int16 because
            torch's uint16 support is partial on accelerators).
        depth_scale: (B,) float32 metres per unit.
        flip: (B,) bool, whether the sample is flipped left-right when finished.
        min_depth, max_depth: (B,) float64 metres (inf = unbounded).
        source, key: lists of B str.
        skipped: as in :class:`EvalBatch` (added by the training stream).
        source_index: which training source of the DataModule the batch was drawn from, in
            config order (added by :class:`~dm_lightning.data.streams.MixedSourceBatches`).
    """

    rgb: Tensor
    depth_units: Tensor
    depth_scale: Tensor
    flip: Tensor
    min_depth: Tensor
    max_depth: Tensor
    source: list[str]
    key: list[str]
