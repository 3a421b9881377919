"""Stage 1 (docs/method.md §3): structure, latent MSE + Feature Alignment.

:class:`Stage1` trains an :class:`~dm_lightning.models.stage1_network.AlignedDepthMaster`
(the plain ``nn.Module`` stage-1 network), or the bare DepthMaster without an encoder.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor

from dm_lightning.losses import masked_latent_mse
from dm_lightning.models.encoders import AlignmentEncoder
from dm_lightning.models.stage1_network import AlignedDepthMaster
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
    hparams_ignore = ("encoder",)

    def __init__(
        self,
        model_path: str,
        encoder: AlignmentEncoder | None = None,
        fa_location: str = "mid",
        fa_loss: str = "kl",
        fa_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        # nn.Module refuses a Module attribute before Module.__init__(): the encoder waits in
        # the instance dict, unregistered, for configure_models (called by super().__init__).
        vars(self)["_given_encoder"] = encoder
        super().__init__(model_path, **kwargs)

    def configure_models(self) -> None:
        """``net``, then around it the stage-1 network (frozen encoder, tap, projector, built
        in that order); with no encoder (M.Base) none of them."""
        super().configure_models()
        encoder = vars(self).pop("_given_encoder")
        if encoder is None:
            self.network = self.encoder = self.tap = self.alignment = None
            return
        network = AlignedDepthMaster(
            self.net, encoder, self.hparams.fa_location, self.hparams.fa_loss
        )
        # The parts are registered on the task under their own names (checkpoint keys net.*,
        # alignment.*; the frozen encoder.* left out), the network that ties them is not.
        vars(self)["network"] = network
        self.encoder, self.tap, self.alignment = network.encoder, network.tap, network.alignment

    def configure_losses(self) -> None:
        """Masked latent MSE plus ``fa_weight`` x the FA loss of the projector."""
        self.latent_loss = partial(masked_latent_mse, factor=self.net.latent_factor)
        self.fa_weight = self.hparams.fa_weight

    def training_loss(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        rgb = self.rgb_signed(batch)
        with torch.no_grad():
            target = self.normalized_target(batch)
            z_gt = self.net.encode(target.expand(-1, 3, -1, -1))
        if self.network is None:
            with torch.no_grad():
                z_rgb = self.net.encode(rgb)
            z_pred = self.net.denoise(z_rgb)
        else:
            z_pred, feature = self.network(rgb)
        latent = self.latent_loss(z_pred, z_gt, batch["valid"])
        parts = {"latent_mse": latent}
        loss = latent
        if self.network is not None:
            fa = self.network.alignment_loss(feature, rgb)
            loss = loss + self.fa_weight * fa
            parts["fa"] = fa
        parts["loss"] = loss
        return loss, parts
