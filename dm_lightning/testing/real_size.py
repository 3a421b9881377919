"""The published SD-2 network sizes, random-initialised (for the opt-in real-width test and the
``scale`` benchmark; real weights cannot be downloaded on the reference machines).

The configs are those of ``stabilityai/stable-diffusion-2`` (``unet/config.json``,
``vae/config.json``): U-Net block widths 320/640/1280/1280 with cross-attention width 1024,
VAE widths 128/256/512/512 (factor 8). The empty-prompt embedding is SD-2's shape, (1, 77, 1024).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from dm_lightning.models.depthmaster import DepthMaster

SD2_UNET_CONFIG = dict(
    sample_size=96,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    norm_num_groups=32,
)

SD2_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=768,
    scaling_factor=0.18215,
)


def make_sd2_sized_depthmaster(seed: int = 0) -> DepthMaster:
    """A random-initialised DepthMaster of SD-2's size (U-Net ~866M parameters, VAE ~84M;
    about 3.8 GB in fp32)."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(**SD2_VAE_CONFIG)
    unet = UNet2DConditionModel(**SD2_UNET_CONFIG)
    embedding = torch.randn(1, 77, SD2_UNET_CONFIG["cross_attention_dim"]) * 0.1
    return DepthMaster(vae, unet, embedding)
