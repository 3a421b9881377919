"""Reshaping SD-2's U-Net for the baselines that feed it more than the RGB latent
(docs/method.md §9).

Marigold (and E2E-FT's published 8-channel start) concatenates the RGB latent with a depth
latent, so the first convolution must take twice the channels. Marigold's trainer starts the
wider ``conv_in`` from the pretrained one: its weights repeated over the new input channels and
divided by their number, so on identical inputs the U-Net's first activation is unchanged.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from dm_lightning.errors import ConfigError


def widen_conv_in(unet: UNet2DConditionModel, latents: int = 2) -> UNet2DConditionModel:
    """Make ``unet.conv_in`` take ``latents`` concatenated latents instead of one.

    The new convolution's weight is the old one (out, C, k, k) repeated ``latents`` times along
    the input channels and divided by ``latents``; its bias is the old bias. So for any latent
    ``z`` (B, C, h, w), the widened U-Net on ``cat([z] * latents, dim=1)`` gives what the
    original gave on ``z`` (up to float rounding of the longer sum). The config's
    ``in_channels`` becomes ``latents * C``, so ``save_pretrained`` / ``from_pretrained``
    round-trip the shape.

    Args:
        unet: a U-Net whose ``conv_in`` takes one latent of C channels; changed in place.
        latents: how many latents the input concatenates (>= 1; 1 changes nothing).

    Returns:
        ``unet`` itself.

    Raises:
        ConfigError: ``latents`` < 1.
    """
    if latents < 1:
        raise ConfigError(f"widen_conv_in: latents must be >= 1, got {latents}")
    old = unet.conv_in
    if latents == 1:
        return unet
    new = nn.Conv2d(
        old.in_channels * latents,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.copy_(old.weight.repeat(1, latents, 1, 1) / latents)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.requires_grad_(old.weight.requires_grad)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)
    return unet
