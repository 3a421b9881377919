"""What the training suites (step, memory, scale, predict) train and run, shared: the
alignment encoders, the networks of each size with random weights, their model folders, the
stage tasks built on them (the tasks' own freezing and losses) and synthetic batches."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from dm_lightning.models.depthmaster import DepthMaster
from dm_lightning.models.encoders import TimmEncoder
from dm_lightning.testing.real_size import SD2_UNET_CONFIG, SD2_VAE_CONFIG
from dm_lightning.testing.tiny_model import (
    TINY_UNET_CONFIG,
    TINY_VAE_CONFIG,
    make_tiny_depthmaster,
    save_tiny_model,
)
from dm_lightning.training.base import DepthMasterTask
from dm_lightning.training.stage1 import Stage1
from dm_lightning.training.stage2 import Stage2

# The tiny stage-1 alignment encoder of configs/tiny/stage1.yaml, and DINOv2 ViT-L for SD-2 size.
TINY_ENCODER = dict(
    model_name="vit_small_patch14_dinov2",
    model_kwargs={"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 112},
)
REAL_ENCODER = dict(model_name="vit_large_patch14_dinov2")

# Widths of the networks the memory and scale suites build (random weights, never downloaded).
# "medium": SD-2's layout (4 VAE levels with 2 layers, 4 U-Net levels, 3 with attention) at a
# quarter of the VAE's and a fifth of the U-Net's widths, so activations dominate the weights
# the way they do at SD-2 size.
# SD-2's own configs: dm_lightning.testing.real_size (shared with the opt-in real-width test).
MEDIUM_VAE_CONFIG = {**SD2_VAE_CONFIG, "block_out_channels": (32, 64, 128, 128)}
MEDIUM_UNET_CONFIG = {
    **SD2_UNET_CONFIG,
    "block_out_channels": (64, 128, 256, 256),
    "cross_attention_dim": 256,
    "attention_head_dim": (1, 2, 4, 4),  # heads, as SD-2's: 64 channels each
}


def network_configs(size: str) -> tuple[dict, dict]:
    """(VAE config, U-Net config) of ``size``: ``tiny`` (the tests'), ``medium`` or ``sd2``."""
    return {
        "tiny": (TINY_VAE_CONFIG, TINY_UNET_CONFIG),
        "medium": (MEDIUM_VAE_CONFIG, MEDIUM_UNET_CONFIG),
        "sd2": (SD2_VAE_CONFIG, SD2_UNET_CONFIG),
    }[size]


def build_depthmaster(size: str, seed: int = 0) -> DepthMaster:
    """A random-initialised DepthMaster of ``size`` (see :func:`network_configs`) on the
    current default device; the empty-prompt embedding is (1, 2, cross_attention_dim), the
    shape of SD-2's (start and end token)."""
    vae_config, unet_config = network_configs(size)
    torch.manual_seed(seed)
    vae, unet = AutoencoderKL(**vae_config), UNet2DConditionModel(**unet_config)
    embedding = torch.randn(1, 2, unet_config["cross_attention_dim"])
    return DepthMaster(vae, unet, embedding)


def model_folder(work: Path, size: str) -> Path:
    """A saved model folder of ``size`` in ``work`` (made once), for the Lightning tasks."""
    folder = work / f"{size}-sd2-layout"
    if not (folder / "unet").is_dir():
        build_depthmaster(size).save_pretrained(folder, metadata={"benchmark": size})
    return folder


def tiny_model_folder(work: Path) -> Path:
    """The tiny SD-2-layout model folder of the tests (random weights), made once in ``work``."""
    folder = work / "tiny-sd2"
    if not (folder / "unet").is_dir():
        save_tiny_model(folder, make_tiny_depthmaster(0))
    return folder


def stage_task(
    stage: int, model_path: str, encoder: dict, net: DepthMaster | None = None, **kwargs
) -> DepthMasterTask:
    """The Lightning task of ``stage`` (``Stage1`` with a ``TimmEncoder(**encoder)``, or
    ``Stage2`` with its FE block) on the model folder ``model_path``, or, when ``net`` is
    given, on that network built in memory (``model_path`` is then only recorded). Either way
    the task freezes the VAE (and encoder) and defines the loss, so the suites time and count
    what training runs. ``kwargs`` go to the task."""
    task_class = Stage1 if stage == 1 else Stage2
    if net is not None:
        task_class = type(task_class.__name__, (task_class,), {"load_network": lambda _: net})
    extra = {"encoder": TimmEncoder(**encoder)} if stage == 1 else {}
    return task_class(model_path, **extra, **kwargs)


def synthetic_batches(count: int, batch: int, height: int, width: int, seed: int = 0) -> list:
    """``count`` finished (eval-format) batches: ``rgb`` (B, 3, H, W) uint8, ``depth``
    (B, 1, H, W) float32 metres in [0.5, 10), ``valid`` (B, 1, H, W) bool (about 95%).
    ``finish_training_batch`` passes them unchanged, so no data work is timed."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        depth = torch.rand((batch, 1, height, width), generator=g) * 9.5 + 0.5
        rgb = torch.randint(0, 256, (batch, 3, height, width), generator=g, dtype=torch.uint8)
        out.append({"rgb": rgb, "depth": depth, "valid": depth < 10.0 - 0.475})
    return out


def add_network_options(parser: argparse.ArgumentParser, work_help: str) -> None:
    """``--work`` (a folder, default: temp), ``--model`` (``tiny`` | ``medium``) and the image
    ``--height`` / ``--width`` of the suites that run a model folder (memory, predict): by
    default the medium network at 256x320, where activations dominate the weights."""
    parser.add_argument("--work", default=None, help=work_help)
    parser.add_argument("--model", choices=("tiny", "medium"), default="medium")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=320)
