"""Stage 2 (docs/method.md §4): detail, pixel MSE through the frozen decoder + gradient loss,
with the Fourier Enhancement block."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor

from dm_lightning.data.batch import TrainingBatch
from dm_lightning.losses import gradient_loss, masked_mse
from dm_lightning.models.unet_hooks import attach_fourier_enhancement, has_fourier_enhancement
from dm_lightning.training.base import DepthMasterTask


class Stage2(DepthMasterTask):
    """Stage-2 training: ``masked pixel MSE + gradient_weight * L_h``.

    Start it from a stage-1 export through ``model_path`` (an export folder holds ``vae/`` and
    ``unet/``) or ``unet_path``; never through ``--ckpt_path``, which would restore stage 1's
    optimizer and step counters. From SD-2 base weights it is the one-stage pixel-loss ablation.

    Args:
        fourier: insert a new, randomly initialised FE block after the mid block (kept if the
            loaded U-Net already has one).
        gradient_weight: weight of L_h (1e-3 in the paper; 0 disables it).
        gradient_delta: inverted-Huber threshold of L_h.
        decoder_checkpointing: recompute the frozen VAE decoder's blocks in the backward pass
            (diffusers' own switch): the decoder's activations at full resolution dominate
            stage 2's memory, which is why the original trained at micro-batch 1.
        **kwargs: see :class:`~dm_lightning.training.base.DepthMasterTask`; ``lr`` defaults to
            3e-6 here.
    """

    stage_name = "Stage2"

    def __init__(
        self,
        model_path: str,
        fourier: bool = True,
        gradient_weight: float = 1e-3,
        gradient_delta: float = 0.2,
        decoder_checkpointing: bool = False,
        lr: float = 3e-6,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_path, lr=lr, **kwargs)

    def configure_models(self) -> None:
        super().configure_models()
        if self.hparams.fourier and not has_fourier_enhancement(self.net.unet):
            attach_fourier_enhancement(self.net.unet)

    def configure_losses(self) -> None:
        """Masked pixel MSE plus ``gradient_weight`` x L_h (left out at weight 0)."""
        self.pixel_loss = masked_mse
        self.gradient_weight = self.hparams.gradient_weight
        self.gradient_loss = partial(gradient_loss, delta=self.hparams.gradient_delta)

    def training_loss(self, batch: TrainingBatch) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.no_grad():
            z_rgb = self.net.encode(self.rgb_signed(batch))
            target = self.normalized_target(batch)
        pred = self.net.decode(self.net.denoise(z_rgb))
        valid = batch["valid"]
        pixel = self.pixel_loss(pred, target, valid)
        parts = {"pixel_mse": pixel}
        loss = pixel
        if self.gradient_weight > 0:
            grad = self.gradient_loss(pred, target, valid)
            loss = loss + self.gradient_weight * grad
            parts["gradient"] = grad
        parts["loss"] = loss
        return loss, parts
