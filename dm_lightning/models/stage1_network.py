"""The stage-1 network as a plain ``nn.Module``: DepthMaster + feature tap + FA projector.

:class:`AlignedDepthMaster` is what stage 1 trains (docs/method.md §3), usable without Lightning:
``forward`` runs the RGB latent through the U-Net and returns the depth latent together with
the tapped U-Net feature; :meth:`AlignedDepthMaster.alignment_loss` scores that feature
against the frozen encoder's tokens of the same image.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dm_lightning.models.depthmaster import DepthMaster
from dm_lightning.models.encoders import AlignmentEncoder
from dm_lightning.models.feature_alignment import FeatureAlignment
from dm_lightning.models.unet_hooks import FeatureTap


class AlignedDepthMaster(nn.Module):
    """DepthMaster with Feature Alignment.

    Built in this order (module construction draws from torch's RNG): the encoder is frozen,
    a :class:`~dm_lightning.models.unet_hooks.FeatureTap` is hooked on ``fa_location``, then
    the :class:`~dm_lightning.models.feature_alignment.FeatureAlignment` projector is made,
    sized from the tap's channels and the encoder's ``embed_dim``.

    Args:
        net: the DepthMaster network (its U-Net receives the tap).
        encoder: frozen alignment encoder (e.g. :class:`~dm_lightning.models.encoders.TimmEncoder`).
        fa_location: U-Net block whose output is aligned: ``mid``, ``down1``, ``down2``, ...
        fa_loss: ``kl`` (paper) or ``cosine``.

    Example::

        model = AlignedDepthMaster(load_depthmaster("sd2"), TimmEncoder())
        x = rgb * 2 - 1  # rgb (B, 3, H, W) in [0, 1]
        z_pred, feature = model(x)
        loss = masked_latent_mse(z_pred, z_gt, valid, 8) + model.alignment_loss(feature, x)
    """

    def __init__(
        self,
        net: DepthMaster,
        encoder: AlignmentEncoder,
        fa_location: str = "mid",
        fa_loss: str = "kl",
    ) -> None:
        super().__init__()
        self.net = net
        self.encoder = encoder.freeze()
        # Records inside forward only: evaluation's forwards of the same U-Net keep nothing.
        self.tap = FeatureTap(net.unet, fa_location, always=False)
        self.alignment = FeatureAlignment(self.tap.channels, encoder.embed_dim, loss=fa_loss)

    def forward(self, rgb_signed: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) RGB in [-1, 1] -> (depth latent (B, 4, h, w), tapped U-Net feature
        (B, C, h', w')). The VAE encoding runs without gradients (the VAE is frozen). The
        feature is taken from the tap: the network holds none between forwards."""
        with torch.no_grad():
            z_rgb = self.net.encode(rgb_signed)
        with self.tap.recording():
            z_depth = self.net.denoise(z_rgb)
        return z_depth, self.tap.pop()

    def alignment_loss(self, feature: Tensor, rgb_signed: Tensor) -> Tensor:
        """FA loss of a tapped ``feature`` against the encoder's tokens of the same
        ``rgb_signed`` image batch (the encoder sees it in [0, 1], without gradients)."""
        tokens, grid = self.encoder((rgb_signed + 1.0) / 2.0)
        return self.alignment(feature, tokens, grid)
