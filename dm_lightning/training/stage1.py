"""Stage 1 (SPEC section 3): structure, latent MSE + Feature Alignment."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dm_lightning.data.packing import finish_training_batch
from dm_lightning.losses import masked_latent_mse
from dm_lightning.models.encoders import AlignmentEncoder
from dm_lightning.models.feature_alignment import FeatureAlignment
from dm_lightning.models.unet_hooks import FeatureTap
from dm_lightning.training.base import DepthMasterTask


class Stage1(DepthMasterTask):
    """Stage-1 training: ``masked latent MSE + fa_weight * L_fa``.

    Args:
        encoder: frozen alignment encoder (e.g. :class:`~dm_lightning.models.encoders.TimmEncoder`);
            None trains without Feature Alignment (the paper's M.Base).
        fa_location: U-Net block whose output is aligned: ``mid`` (paper default), ``down1``,
            ``down2``.
        fa_loss: ``kl`` (paper) or ``cosine``.
        fa_weight: lambda_fa.
        **kwargs: see :class:`~dm_lightning.training.base.DepthMasterTask`.
    """

    stage_name = "Stage1"

    def __init__(
        self,
        model_path: str,
        encoder: AlignmentEncoder | None = None,
        fa_location: str = "mid",
        fa_loss: str = "kl",
        fa_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_path, **kwargs)
        self.encoder = encoder
        self.configure_alignment()

    def configure_alignment(self) -> None:
        """Tap, projector and frozen encoder; nothing when ``encoder`` is None (M.Base)."""
        if self.encoder is None:
            self.tap = None
            self.alignment = None
            return
        self.encoder.freeze()
        self.tap = FeatureTap(self.net.unet, self.hparams.fa_location)
        self.alignment = FeatureAlignment(
            self.tap.channels, self.encoder.embed_dim, loss=self.hparams.fa_loss
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        batch = finish_training_batch(batch)  # no-op when the DataModule's hook did it
        rgb = self.rgb_signed(batch)
        with torch.no_grad():
            z_rgb = self.net.encode(rgb)
            target = self.normalized_target(batch)
            z_gt = self.net.encode(target.expand(-1, 3, -1, -1))
        z_pred = self.net.denoise(z_rgb)
        latent = masked_latent_mse(z_pred, z_gt, batch["valid"], self.net.latent_factor)
        parts = {"latent_mse": latent}
        loss = latent
        if self.alignment is not None:
            tokens, grid = self.encoder((rgb + 1.0) / 2.0)
            fa = self.alignment(self.tap.pop(), tokens, grid)
            loss = loss + self.hparams.fa_weight * fa
            parts["fa"] = fa
        elif self.tap is not None:
            self.tap.pop()
        parts["loss"] = loss
        return self.guard_loss(loss, parts)

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        super().validation_step(batch, batch_idx, dataloader_idx)
        if self.tap is not None:
            self.tap.pop()  # the eval forward also fed the tap; drop it

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        super().test_step(batch, batch_idx, dataloader_idx)
        if self.tap is not None:
            self.tap.pop()

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict:
        out = super().predict_step(batch, batch_idx, dataloader_idx)
        if self.tap is not None and out["depth"] is not None:
            self.tap.pop()
        return out
