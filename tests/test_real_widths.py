"""Opt-in: one stage-1 and one stage-2 training step of a random SD-2-sized network on the CPU
(about 16 GB of RAM, 15 GB of disk and a few minutes). Run with ``DM_LIGHTNING_REAL_WIDTHS=1 pytest
tests/test_real_widths.py``; skipped otherwise.

The network is saved as a diffusers folder and loaded back through ``model_path`` (the path a
user's SD-2 folder takes); a step runs through Lightning at 64x64 and the saved checkpoint
holds the trained weights only.
"""

from __future__ import annotations

import gc
import os

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from dm_lightning import Stage1, Stage2, TimmEncoder
from dm_lightning.testing.real_size import make_sd2_sized_depthmaster
from dm_lightning.training.checkpoint_io import StreamingCheckpointIO

pytestmark = pytest.mark.skipif(
    os.environ.get("DM_LIGHTNING_REAL_WIDTHS") != "1",
    reason="real-width test: set DM_LIGHTNING_REAL_WIDTHS=1 (about 15 GB RAM, minutes)",
)


@pytest.fixture(scope="module")
def sd2_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd2") / "sd2-sized"
    make_sd2_sized_depthmaster(0).save_pretrained(folder, metadata={"random": True})
    gc.collect()
    return folder


def _batches(count: int = 1, size: int = 64) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    items = [
        {
            "rgb": torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=gen),
            "depth": torch.rand(1, 1, size, size, generator=gen) * 10 + 0.5,
            "valid": torch.ones(1, 1, size, size, dtype=torch.bool),
        }
        for _ in range(count)
    ]
    return DataLoader(items, batch_size=None)


def _one_step(model: L.LightningModule, tmp_path) -> dict:
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        default_root_dir=tmp_path, plugins=[StreamingCheckpointIO()],
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=_batches())
    assert trainer.global_step == 1
    path = tmp_path / "step.ckpt"
    trainer.save_checkpoint(path)  # full state, as last.ckpt
    del trainer  # frees Adam's state (7 GB)
    gc.collect()
    # memory-mapped: the keys and shapes are read, the 10 GB of values stay on disk
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    assert len(checkpoint["optimizer_states"][0]["state"]) == len(_trained(model))
    return checkpoint["state_dict"]


def _trained(model: L.LightningModule) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_stage1_step_at_real_widths(sd2_folder, tmp_path):
    encoder = TimmEncoder(
        "vit_small_patch14_dinov2", model_kwargs={"depth": 2, "img_size": 56}, input_scale=0.875
    )
    model = Stage1(str(sd2_folder), encoder=encoder, gradient_checkpointing=True)
    assert model.tap.channels == 1280  # the mid block of SD-2
    assert model.alignment.projector[0].weight.shape == (encoder.embed_dim, 1280)
    state = _one_step(model, tmp_path)
    assert torch.isfinite(torch.stack(list(model._loss_parts.values()))).all()
    assert set(state) == _trained(model)  # no VAE, no encoder
    assert sum(v.numel() for v in state.values()) > 8e8  # the U-Net's ~866M
    del model, state
    gc.collect()


def test_stage2_step_at_real_widths(sd2_folder, tmp_path):
    model = Stage2(str(sd2_folder), gradient_checkpointing=True, decoder_checkpointing=True)
    assert model.net.unet.fftblock.conv_f1.weight.shape[:2] == (1280, 1280)
    state = _one_step(model, tmp_path)
    assert torch.isfinite(torch.stack(list(model._loss_parts.values()))).all()
    assert set(state) == _trained(model)
    assert any(k.startswith("net.unet.fftblock.") for k in state)
    assert not any(k.startswith("net.vae.") for k in state)
