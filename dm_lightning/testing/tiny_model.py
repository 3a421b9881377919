"""Tiny SD-2-layout models for CPU tests and the demo (a test helper, not part of the model).

Real SD-2 weights cannot be used on a 2-core CPU machine, so tests and the demo run on a tiny
random-initialised VAE and U-Net with the same architecture families, saved as a diffusers
folder and loaded back through :func:`~dm_lightning.models.loading.load_depthmaster`, the
same code path a user's SD-2 folder takes.

A random VAE cannot reconstruct anything, which would make the decoded depth meaningless, so
:func:`pretrain_vae` gives the tiny VAE the property SD-2's VAE has: it auto-encodes images and
3-channel depth maps in [-1, 1].
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor

from dm_lightning.data.datamodule import DepthDataModule
from dm_lightning.data.packing import finish_training_batch
from dm_lightning.data.train_source import TrainSource
from dm_lightning.models.depthmaster import DepthMaster, signed_rgb
from dm_lightning.targets import SqrtDisparity
from dm_lightning.testing.real_size import SD2_VAE_CONFIG

# 4 blocks: downsampling factor 8, like SD-2 (a 2-block VAE downsamples by 2 only).
TINY_VAE_CONFIG = {
    **SD2_VAE_CONFIG,  # SD-2's layout, narrower
    "block_out_channels": (16, 32, 32, 32),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}

TINY_UNET_CONFIG = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)


def make_tiny_depthmaster(seed: int = 0, prompt_tokens: int = 2) -> DepthMaster:
    """A random-initialised tiny DepthMaster; the empty-prompt embedding is a fixed random
    (1, ``prompt_tokens``, 32) buffer (SD-2's is (1, 2, 1024))."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**TINY_VAE_CONFIG)
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    embedding = torch.randn(
        1, prompt_tokens, TINY_UNET_CONFIG["cross_attention_dim"], generator=generator
    )
    return DepthMaster(vae, unet, embedding)


def pretrain_vae(
    vae: AutoencoderKL,
    images: Iterable[Tensor],
    steps: int,
    lr: float = 2e-3,
    kl_weight: float = 1e-6,
    log_every: int = 50,
) -> list[float]:
    """Train a VAE to reconstruct ``images`` ((B, 3, H, W) in [-1, 1]); returns the losses.

    Reconstruction uses the posterior mean (what DepthMaster encodes with) plus a small KL term
    that keeps the latent scale near the SD convention.
    """
    optimizer = torch.optim.Adam(vae.parameters(), lr=lr)
    vae.train()
    losses: list[float] = []
    iterator = iter(images)
    for step in range(steps):
        x = next(iterator)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.mean).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            mean = sum(losses[-log_every:]) / log_every
            print(f"[tiny VAE] step {step + 1}/{steps} loss {mean:.4f}")
    vae.eval()
    return losses


def save_tiny_model(path: str | Path, model: DepthMaster) -> Path:
    """Save as a diffusers-layout folder (``vae/``, ``unet/``, empty-prompt embedding); it
    records ``processing_res`` :data:`TINY_PROCESSING_RES`, predict's default for it."""
    return model.save_pretrained(
        path, metadata={"tiny": True, "processing_res": TINY_PROCESSING_RES}
    )


#: The tiny model's recorded predict resolution: a CPU demo model (0.1 s per image at 256 px,
#: about 3 s at the recipe's 768).
TINY_PROCESSING_RES = 256


def vae_batches(patterns: list[str], batch_size: int, crop: int = 64) -> Iterator[torch.Tensor]:
    """Endless (2 * batch_size, 3, crop, crop) batches in [-1, 1]: random crops of RGB images
    and of their normalised square-root-disparity maps, one source per batch. Crops keep the
    CPU cost low; the convolutional VAE then runs at any size."""
    sources = [
        TrainSource(name=f"s{i}", shards=p, batch_size=batch_size) for i, p in enumerate(patterns)
    ]
    dm = DepthDataModule(train=sources, batches_per_epoch=10**9, num_workers=0, shuffle_buffer=64)
    target = SqrtDisparity()
    for packed in dm.train_dataloader():
        # No Trainer here: finish as the DataModule's on_after_batch_transfer does.
        batch = finish_training_batch(packed)
        rgb = signed_rgb(batch["rgb"])
        depth = target.normalize(batch["depth"], batch["valid"]).expand(-1, 3, -1, -1)
        h, w = rgb.shape[-2:]
        top = int(torch.randint(0, h - crop + 1, ()))
        left = int(torch.randint(0, w - crop + 1, ()))
        yield torch.cat([rgb, depth])[..., top : top + crop, left : left + crop]


def build_tiny_model_folder(
    out: str | Path,
    seed: int = 0,
    vae_shards: list[str] | None = None,
    vae_steps: int = 300,
    vae_batch: int = 4,
) -> Path:
    """Make, optionally VAE-pre-train (on ``vae_shards`` patterns) and save a tiny model folder."""
    torch.manual_seed(seed)
    model = make_tiny_depthmaster(seed=seed)
    if vae_shards:
        start = time.time()
        pretrain_vae(model.vae, vae_batches(list(vae_shards), vae_batch), vae_steps)
        print(f"[tiny VAE] pre-trained in {time.time() - start:.0f} s")
    path = save_tiny_model(out, model)
    print(f"wrote tiny model folder {path}")
    return path
