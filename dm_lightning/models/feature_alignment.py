"""Feature Alignment (FA): pull U-Net features toward a frozen encoder's (docs/method.md §3)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from dm_lightning.errors import ConfigError
from dm_lightning.losses import feature_alignment_cosine, feature_alignment_kl

ALIGNMENT_LOSSES = {"kl": feature_alignment_kl, "cosine": feature_alignment_cosine}


class FeatureAlignment(nn.Module):
    """Projector MLP plus alignment loss.

    Args:
        unet_channels: C of the tapped U-Net feature (1280 at SD-2's mid block).
        encoder_dim: D, the encoder's token width (read from the encoder, never hard-coded).
        loss: ``kl`` (paper: softmax over features, KL(p_enc || p_unet), element-wise mean) or
            ``cosine`` (ablation).
    """

    def __init__(self, unet_channels: int, encoder_dim: int, loss: str = "kl") -> None:
        super().__init__()
        if loss not in ALIGNMENT_LOSSES:
            raise ConfigError(
                f"unknown alignment loss {loss!r}; expected {sorted(ALIGNMENT_LOSSES)}"
            )
        self.loss_name = loss
        self.unet_channels = unet_channels
        self.encoder_dim = encoder_dim
        self.projector = nn.Sequential(
            nn.Linear(unet_channels, encoder_dim),
            nn.SiLU(),
            nn.Linear(encoder_dim, encoder_dim),
            nn.SiLU(),
            nn.Linear(encoder_dim, encoder_dim),
        )

    def forward(
        self, unet_feature: Tensor, encoder_tokens: Tensor, encoder_grid: tuple[int, int]
    ) -> Tensor:
        """Alignment loss.

        Args:
            unet_feature: (B, C, h, w) tapped U-Net feature.
            encoder_tokens: (B, gh * gw, D) encoder patch tokens.
            encoder_grid: (gh, gw).

        Returns:
            Scalar loss. The encoder's token map is resized (bicubic) to (h, w) first.

        Raises:
            ConfigError: the tokens are not ``encoder_dim`` wide (an encoder whose declared
                ``embed_dim`` is not the width of the tokens it returns), the feature has not
                ``unet_channels`` channels, or the token count is not gh * gw.
        """
        b, c, h, w = unet_feature.shape
        gh, gw = encoder_grid
        width = encoder_tokens.shape[-1]
        if width != self.encoder_dim:
            raise ConfigError(
                f"Feature Alignment: the encoder returns tokens of width {width}, but the "
                f"projector was built for encoder embed_dim={self.encoder_dim}; the encoder's "
                "embed_dim must equal the width of the tokens its encode() returns"
            )
        if c != self.unet_channels:
            raise ConfigError(
                f"Feature Alignment: the tapped U-Net feature has {c} channels, but the "
                f"projector was built for {self.unet_channels}"
            )
        if encoder_tokens.ndim != 3 or encoder_tokens.shape[1] != gh * gw:
            raise ConfigError(
                f"Feature Alignment: encoder tokens {tuple(encoder_tokens.shape)} do not fill its "
                f"grid {gh} x {gw}; encode() must return (B, gh * gw, D) patch tokens only"
            )
        target = encoder_tokens.transpose(1, 2).reshape(b, -1, gh, gw)
        if (gh, gw) != (h, w):
            target = F.interpolate(target.float(), size=(h, w), mode="bicubic", align_corners=False)
        target = target.flatten(2).transpose(1, 2)
        projected = self.projector(unet_feature.flatten(2).transpose(1, 2))
        return ALIGNMENT_LOSSES[self.loss_name](projected, target)
