"""Callbacks: stage hand-off export and prediction writing."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

log = logging.getLogger(__name__)

EXPORT_RECORD = "export.json"


def run_dir(trainer: L.Trainer) -> Path:
    """The run's log folder (``trainer.log_dir``), falling back to ``default_root_dir``.

    Under DDP ``trainer.log_dir`` is a collective: call it on every rank (callbacks resolve
    their folders in ``setup``), never from rank 0 alone.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def output_folder(trainer: L.Trainer, configured: str | None, default_name: str) -> Path:
    """A callback's output folder: the configured one, else ``<run dir>/<default_name>``."""
    return Path(configured) if configured else run_dir(trainer) / default_name


class ExportDepthMaster(L.Callback):
    """At the end of ``fit``, export the trained network as a diffusers-layout folder.

    The folder (``unet/`` in safetensors, with ``fftblock.*`` after stage 2; ``vae/``; the
    empty-prompt embedding) loads with ``model_path=<folder>`` in the next stage, in
    ``test``/``predict``, or with plain diffusers. Its location is written to
    ``<run dir>/export.json`` and printed.

    Args:
        dirpath: export folder; default ``<run dir>/export``.
        best: export the weights of the best checkpoint (by the ``ModelCheckpoint`` monitor)
            instead of the last weights, when one exists.
    """

    def __init__(self, dirpath: str | None = None, best: bool = False) -> None:
        self.dirpath = dirpath
        self.best = best
        self.exported: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.run_folder = run_dir(trainer)
        self.target = output_folder(trainer, self.dirpath, "export")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.best:
            path = getattr(trainer.checkpoint_callback, "best_model_path", "")
            if path:
                state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
                pl_module.load_state_dict({**pl_module.state_dict(), **state})
        folder, target = self.run_folder, self.target
        if trainer.is_global_zero:
            pl_module.net.save_pretrained(
                target,
                metadata={
                    "stage": type(pl_module).__name__,
                    "target": pl_module.hparams.get("target"),
                    "global_step": trainer.global_step,
                },
            )
            record = {"export": str(target.resolve()), "global_step": trainer.global_step}
            folder.mkdir(parents=True, exist_ok=True)
            (folder / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
            print(f"[dm_lightning] exported {type(pl_module).__name__} model to {target}")
        trainer.strategy.barrier()
        self.exported = target


class DepthPredictionWriter(BasePredictionWriter):
    """Write each prediction as a 16-bit PNG (value / 65535 = relative depth in [0, 1],
    1 = near for the default target) and, optionally, a float32 ``.npy``.

    Args:
        output_dir: folder for the files; default ``<run dir>/predictions``.
        save_npy: also write ``<key>.npy`` with the float values.
    """

    def __init__(self, output_dir: str | None = None, save_npy: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.save_npy = save_npy

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.folder = output_folder(trainer, self.output_dir, "predictions")

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        out = self.folder
        out.mkdir(parents=True, exist_ok=True)
        for key, depth in zip(prediction["key"], prediction["depth"]):
            values = depth[0].numpy().astype(np.float32)
            units = np.round(np.clip(values, 0.0, 1.0) * 65535).astype(np.uint16)
            Image.fromarray(units).save(out / f"{key}.png")
            if self.save_npy:
                np.save(out / f"{key}.npy", values)
