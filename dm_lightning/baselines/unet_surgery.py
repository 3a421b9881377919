"""Reshaping SD-2's U-Net for the baselines (docs/method.md §8): a wider ``conv_in`` for
inputs that concatenate latents (Marigold, E2E-FT's published start) and a projection class
embedding for Lotus-D's task switcher.

Each change is recorded in the U-Net's config (``register_to_config``), so ``save_pretrained``
writes it and :func:`~dm_lightning.models.loading.load_unet` (diffusers' ``from_pretrained``)
builds the same shape again: an export reloads without running the surgery twice.
"""

from __future__ import annotations

import copy

from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import TimestepEmbedding
from torch import nn

from dm_lightning.errors import ConfigError

# Lotus' task switcher: sin and cos of a 2-way one-hot, 4 numbers (docs/method.md §8.2).
SWITCH_INPUTS = 4


def widen_conv_in(unet: UNet2DConditionModel, latents: int = 2) -> UNet2DConditionModel:
    """Make ``conv_in`` take ``latents`` concatenated latents instead of one (in place).

    The weights of the original input channels are repeated ``latents`` times and divided by
    ``latents``, the bias kept (Marigold's initialisation, Ke et al., CVPR 2024): the widened
    layer gives on ``[z, z, ...]`` exactly what the original gave on ``z``, so the pretrained
    U-Net's behaviour is the starting point. (E2E-FT's released ``replace_unet_conv_in`` also
    halves the bias, which breaks that identity; fine-tuning absorbs either.)

    Args:
        unet: a U-Net whose ``conv_in`` takes one latent (``in_channels`` of the config).
        latents: how many latents the input concatenates (>= 2).

    Returns:
        ``unet``, its config's ``in_channels`` now ``latents`` times the old one.

    Raises:
        ConfigError: ``latents`` < 2.
    """
    if latents < 2:
        raise ConfigError(f"widen_conv_in: latents must be >= 2, got {latents}")
    old = unet.conv_in
    # A copy keeps every other property of the layer (kernel, stride, padding, dilation,
    # groups, padding mode, bias, device, dtype); only the input channels widen.
    new = copy.deepcopy(old)
    new.in_channels = old.in_channels * latents
    new.weight = nn.Parameter(old.weight.detach().repeat(1, latents, 1, 1) / latents)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)
    return unet


def add_task_switcher(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Give ``unet`` a ``"projection"`` class embedding of :data:`SWITCH_INPUTS` inputs (in
    place): Lotus' task switcher, added to the timestep embedding (He et al., ICLR 2025).

    The new layer is the ``TimestepEmbedding`` diffusers' ``UNet2DConditionModel`` builds for
    ``class_embed_type="projection"`` (two linear layers, freshly initialised, as Lotus' own
    ``from_pretrained(..., class_embed_type="projection")`` leaves them). A U-Net that already
    has this switcher (a Lotus-D export) is returned unchanged.

    Raises:
        ConfigError: the U-Net has another class embedding.
    """
    config = unet.config
    if unet.class_embedding is not None:
        if (
            config.class_embed_type == "projection"
            and config.projection_class_embeddings_input_dim == SWITCH_INPUTS
        ):
            return unet
        raise ConfigError(
            f"U-Net has a class embedding (class_embed_type={config.class_embed_type!r}, "
            f"projection_class_embeddings_input_dim="
            f"{config.projection_class_embeddings_input_dim}); Lotus-D's task switcher needs "
            f"none (SD-2) or its own ('projection', {SWITCH_INPUTS})"
        )
    time_embed_dim = unet.time_embedding.linear_2.out_features
    weight = unet.time_embedding.linear_2.weight
    unet.class_embedding = TimestepEmbedding(SWITCH_INPUTS, time_embed_dim).to(
        weight.device, weight.dtype
    )
    unet.register_to_config(
        class_embed_type="projection", projection_class_embeddings_input_dim=SWITCH_INPUTS
    )
    return unet
