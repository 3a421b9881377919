"""What a training run shows in TensorBoard beyond the logged scalars: depth panels of fixed
samples and the training throughput (:class:`TrainingMonitor`).

A panel row is RGB | ground truth | prediction | error
(:func:`~dm_lightning.visualize.depth_panel`). Ground truth and prediction are drawn in the
model's target space normalised as in training: the ground truth is exactly the training
target (the target of metric depth, 2%/98% quantiles of its valid pixels mapped to 0 and 1);
the prediction is first aligned to the ground truth by the evaluation's own per-image scale
and shift (:func:`~dm_lightning.evaluation.alignment.align_prediction`), then mapped with the
same quantiles. Both are drawn near warm, far cool over the fixed range [0, 1], the error
``|prediction - ground truth|`` over a fixed [0, ``error_max``]: images of different runs and
steps compare.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.data import extract_batch_size
from torch import Tensor, nn

from dm_lightning.data.contract import depth_data
from dm_lightning.errors import ConfigError
from dm_lightning.evaluation.alignment import align_prediction
from dm_lightning.models.pipeline_depthmaster import near_is_one
from dm_lightning.targets import DepthTarget
from dm_lightning.visualize import depth_panel

SAMPLES_PER_SEC = "train/samples_per_sec"
TRAIN_PANEL_TAG = "panels/train"
VAL_PANEL_TAG = "panels/val/{split}"


def near_values(
    target: DepthTarget, gt: Tensor, valid: Tensor, aligned: Tensor
) -> tuple[Tensor, Tensor]:
    """Ground truth and aligned prediction in ``target``'s training normalisation, as
    "nearness" for :func:`~dm_lightning.visualize.depth_panel`.

    Args:
        target: the model's depth target.
        gt: (H, W) ground-truth depth, metres.
        valid: (H, W) bool, valid ground-truth pixels.
        aligned: (H, W) predicted depth aligned to ``gt``, metres.

    Returns:
        ``(near_gt, near_pred)``, (H, W) float32 in [0, 1] with 1 = near: ``(v - lo) / (hi -
        lo)`` clipped, ``v`` the target of the depth and ``lo``, ``hi`` the target's quantiles
        of the valid ground truth (``near_gt`` equals ``(target.normalize(gt) + 1) / 2`` on
        valid pixels), reversed for the plain-depth target (1 = far there). NaN everywhere
        when no pixel is valid.
    """
    gt, aligned = gt.float(), aligned.float()
    value_gt = target.forward(torch.where(valid, gt, torch.ones_like(gt)))
    value_pred = target.forward(aligned.clamp(min=1e-6))
    q = torch.tensor([target.lower_quantile, target.upper_quantile])
    lo, hi = torch.nanquantile(torch.where(valid, value_gt, torch.nan).flatten(), q)
    scale = torch.clamp(hi - lo, min=1e-6)
    near = [((v - lo) / scale).clamp(0.0, 1.0) for v in (value_gt, value_pred)]
    if not near_is_one(target.name):
        near = [1.0 - v for v in near]
    return near[0], near[1]


def panel_rows(
    target: DepthTarget,
    space: str,
    rgb: Tensor,
    depth: Tensor,
    valid: Tensor,
    pred: Tensor,
    error_max: float,
) -> np.ndarray:
    """Panel rows of a batch stacked top to bottom.

    Args:
        target: the model's depth target (the space the tiles show).
        space: the evaluation's alignment space (``sqrt_disparity``, ``disparity``, ``depth``).
        rgb: (B, 3, H, W) uint8.
        depth: (B, 1, H, W) ground-truth metres.
        valid: (B, 1, H, W) bool.
        pred: (B, 1, H, W) relative prediction in [0, 1] (``DepthMaster.predict``).
        error_max: the error drawn brightest.

    Returns:
        (B H, 4 W, 3) uint8.
    """
    rgb, depth, valid, pred = (t.detach().cpu() for t in (rgb, depth, valid, pred))
    aligned = align_prediction(pred[:, 0], depth[:, 0], valid[:, 0], space)
    rows = []
    for i in range(rgb.shape[0]):
        near_gt, near_pred = near_values(target, depth[i, 0], valid[i, 0], aligned[i])
        rows.append(depth_panel(rgb[i], near_gt, near_pred, valid[i, 0], error_max))
    return np.concatenate(rows, axis=0)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` and its children in eval mode, each put back in its own mode afterwards
    (a frozen part stays in eval mode, a trained one returns to training)."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class TrainingMonitor(L.Callback):
    """Depth panels and training throughput in TensorBoard.

    Everything is written at Lightning's step number (:func:`logged_step`), that of the scalars
    logged by the task at the same step: after the 10th optimizer step, 9.

    * ``panels/train``: every ``every_n_steps`` optimizer steps, the first ``num_samples``
      samples of the current training batch (as the loss saw them: finished by the
      DataModule, in metres, with the valid mask and the flip),
      predicted in eval mode without gradients.
    * ``panels/val/<split>``: at every validation, the same ``num_samples`` samples of each
      validation split (the first of its first batches on rank 0, kept on the CPU).
    * ``train/samples_per_sec``: every ``log_every_n_steps`` optimizer steps, the training
      samples of all ranks (rank 0's micro-batch sizes times the world size: every rank
      draws micro-batches of one size with ``data.global_batch_size``) per second of wall
      time since the last value, validation excluded. Counted from batch sizes on the host.

    All on global rank 0: panels go to every
    :class:`~lightning.pytorch.loggers.TensorBoardLogger` of the trainer, the throughput to
    every logger; other steps only compare integers (no device work, no host sync). See
    :mod:`dm_lightning.training.monitor` for what the tiles show.

    Args:
        every_n_steps: optimizer steps between training panels (>= 1).
        num_samples: rows per panel image (>= 1).
        error_max: the error (difference of [0, 1] normalised target values) drawn brightest.
    """

    def __init__(self, every_n_steps: int = 500, num_samples: int = 2, error_max: float = 0.2):
        for name, value in (("every_n_steps", every_n_steps), ("num_samples", num_samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"TrainingMonitor init_args.{name} must be an integer >= 1, got {value!r}"
                )
        if not error_max > 0:
            raise ConfigError(f"TrainingMonitor init_args.error_max must be > 0, got {error_max!r}")
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.error_max = float(error_max)
        # Validation samples per dataloader index: {"rgb", "depth", "valid"} CPU tensors.
        self._val_samples: dict[int, dict[str, Tensor]] = {}
        self._writers: list[Any] = []
        self._last_panel_step = -1
        self._last_rate_step = -1
        self._samples = 0
        self._started: float | None = None
        self._paused: float | None = None

    # ---- set-up -------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Only fit and validate draw (asking for a writer creates the log folder).
        if stage not in ("fit", "validate") or not trainer.is_global_zero:
            self._writers = []
            return
        self._writers = [
            logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)
        ]
        if not self._writers:
            rank_zero_warn(
                "TrainingMonitor: the trainer has no TensorBoardLogger, so no depth panel is "
                "written (set trainer.logger to lightning.pytorch.loggers.TensorBoardLogger)"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._samples, self._started, self._paused = 0, None, None
        self._last_rate_step = self._last_panel_step = trainer.global_step

    # ---- training -----------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._started is None:
            self._started = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not trainer.is_global_zero:
            return
        self._samples += _batch_size(batch)
        # Which steps draw: by optimizer steps done, as Lightning picks its logging steps;
        # the number they are written at: Lightning's own (see logged_step).
        step, log_every = trainer.global_step, trainer.log_every_n_steps
        if step != self._last_rate_step and log_every and step % log_every == 0:
            self._log_rate(trainer, step)
        if step != self._last_panel_step and step % self.every_n_steps == 0 and self._writers:
            self._last_panel_step = step
            drawn = time.perf_counter()
            self._train_panel(trainer, pl_module, batch, logged_step(trainer))
            if self._started is not None:  # the panel's forward is not training time
                self._started += time.perf_counter() - drawn

    def _log_rate(self, trainer: L.Trainer, step: int) -> None:
        now = time.perf_counter()
        elapsed = now - (self._started if self._started is not None else now)
        if elapsed > 0:
            rate = self._samples * trainer.world_size / elapsed
            for logger in trainer.loggers:
                logger.log_metrics({SAMPLES_PER_SEC: rate}, step=logged_step(trainer))
        self._samples, self._started, self._last_rate_step = 0, now, step

    def _train_panel(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, step: int
    ) -> None:
        if not isinstance(batch, dict) or "rgb" not in batch:
            return
        b = _batch_size(batch)
        n = min(self.num_samples, b)
        sample = {k: _first(v, b, n) for k, v in batch.items()}
        # At the size the loss saw (training runs at native size).
        self._write(trainer, pl_module, TRAIN_PANEL_TAG, sample, step, None)

    # ---- validation ---------------------------------------------------------------------
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._started is not None and self._paused is None:
            self._paused = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._paused is not None and self._started is not None:
            self._started += time.perf_counter() - self._paused
        self._paused = None

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self._writers or not isinstance(batch, dict) or not len(batch.get("key", ())):
            return
        kept = self._val_samples.get(dataloader_idx)
        have = 0 if kept is None else kept["rgb"].shape[0]
        if have >= self.num_samples:
            return
        if kept is not None and batch["rgb"].shape[-2:] != kept["rgb"].shape[-2:]:
            return  # one panel image: rows of one size
        n = self.num_samples - have
        new = {k: batch[k][:n].detach().cpu() for k in ("rgb", "depth", "valid")}
        if kept is not None:
            new = {k: torch.cat([kept[k], new[k]]) for k in new}
        self._val_samples[dataloader_idx] = new

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._writers:
            return
        data = depth_data(trainer.datamodule)
        names = data.val_names if data else None
        for idx, samples in sorted(self._val_samples.items()):
            split = names[idx] if names and idx < len(names) else str(idx)
            res = pl_module.processing_res_of("val", idx)
            tag = VAL_PANEL_TAG.format(split=split)
            self._write(trainer, pl_module, tag, samples, logged_step(trainer), res)

    # ---- drawing ------------------------------------------------------------------------
    def _write(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        tag: str,
        sample: dict[str, Tensor],
        step: int,
        processing_res: int | None,
    ) -> None:
        """Predict ``sample`` (eval mode, no gradients, the trainer's precision context) and
        write its panel under ``tag`` at ``step``."""
        net = pl_module.net
        with torch.no_grad(), eval_mode(net), trainer.precision_plugin.forward_context():
            pred = net.predict(sample["rgb"].to(pl_module.device), processing_res)
        panel = panel_rows(
            pl_module.target,
            pl_module.eval_alignment,
            sample["rgb"],
            sample["depth"],
            sample["valid"],
            pred.float(),
            self.error_max,
        )
        for writer in self._writers:
            writer.add_image(tag, panel, step, dataformats="HWC")


def logged_step(trainer: L.Trainer) -> int:
    """The step number Lightning writes the scalars logged now under (``self.log`` in
    ``training_step`` and at validation's end, ``LearningRateMonitor``): the optimizer steps
    completed before the current batch (the loss of the 10th step is at 9, the validation
    after step 100 at 99). Panels and throughput use it too, so that everything of one step
    shares one number in TensorBoard. Falls back to ``global_step`` for a trainer without a
    fit loop (unit tests)."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", trainer.global_step))


def _batch_size(batch: Any) -> int:
    """Samples in a batch, from tensor shapes (host metadata: no device sync)."""
    if isinstance(batch, dict) and isinstance(batch.get("rgb"), Tensor):
        return int(batch["rgb"].shape[0])
    return extract_batch_size(batch)


def _first(value: Any, batch_size: int, n: int) -> Any:
    """The first ``n`` samples of a batch entry (tensors and lists with one item per sample);
    other entries unchanged."""
    if isinstance(value, Tensor) and value.ndim and value.shape[0] == batch_size:
        return value[:n]
    if isinstance(value, list) and len(value) == batch_size:
        return value[:n]
    return value
