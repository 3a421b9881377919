"""Callbacks: stage hand-off export and prediction writing. (Resumable checkpoints on
signals and crashes: :mod:`dm_lightning.training.resumable`.)"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from dm_lightning import atomic
from dm_lightning.data.contract import depth_data
from dm_lightning.data.predict import ImageFolder
from dm_lightning.errors import ConfigError, disk_full_as_error
from dm_lightning.hub.model_card import CardChoices, write_model_card
from dm_lightning.inference.outputs import (
    BackgroundWriter,
    refuse_writing_over_inputs,
    summary_line,
)
from dm_lightning.models.model_facts import ModelFacts
from dm_lightning.models.pipeline_depthmaster import near_is_one
from dm_lightning.output_folders import check_writable_folder, output_folder, run_dir
from dm_lightning.training.base import DepthMasterTask
from dm_lightning.training.checkpoints import load_checkpoint_safely
from dm_lightning.training.deferred_signals import deferred_signals
from dm_lightning.training.ema import ema_callback
from dm_lightning.training.resumable import ResumableCheckpoint  # noqa: F401 (its former home)

log = logging.getLogger(__name__)

EXPORT_RECORD = "export.json"


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

    With an :class:`~dm_lightning.training.ema.EMAWeights` callback the export holds the
    averaged weights (a best checkpoint already holds them).
    """

    def __init__(self, dirpath: str | None = None, best: bool = False) -> None:
        self.dirpath = dirpath
        self.best = best
        self.exported: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # fail now, not after a day of training
            exported_task(pl_module)
        self.run_folder = run_dir(trainer)
        self.target = output_folder(trainer, self.dirpath, "export")
        if stage == "fit":
            check_writable_folder(self.target.parent, "export folder's parent")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.best:
            path = getattr(trainer.checkpoint_callback, "best_model_path", "")
            if path:
                state = load_checkpoint_safely(path, mmap=True)["state_dict"]
                pl_module.load_state_dict({**pl_module.state_dict(), **state})
        folder, target = self.run_folder, self.target
        ema = ema_callback(trainer)
        averaged = ema.averaged() if ema is not None and not self.best else contextlib.nullcontext()
        # A SIGTERM / Ctrl-C now waits for the folder to be complete (see deferred_signals).
        with averaged, deferred_signals(f"the export to {target}"):
            self._export(trainer, pl_module, folder, target)
        trainer.strategy.barrier()
        self.exported = target

    def _export(
        self, trainer: L.Trainer, pl_module: L.LightningModule, folder: Path, target: Path
    ) -> None:
        if trainer.is_global_zero:
            task = exported_task(pl_module)
            # What the model records (models/model_facts.py): the task's target and predict's
            # default long edge, when in pixels ("native" is not a recorded fact).
            res = task.predict_processing_res
            facts = ModelFacts(task.target.name, res if isinstance(res, int) else None)
            metadata = {
                "stage": type(task).__name__,
                **facts.to_record(),
                "global_step": trainer.global_step,
            }

            def write(tmp: Path) -> None:
                task.net.save_pretrained(tmp, metadata)
                write_export_card(tmp, folder / "config.yaml", target)

            replace_folder(target, write, "model export")
            record = {"export": str(target.resolve()), "global_step": trainer.global_step}
            folder.mkdir(parents=True, exist_ok=True)
            (folder / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
            print(f"[dm_lightning] exported {type(pl_module).__name__} model to {target}")


def exported_task(pl_module: L.LightningModule) -> DepthMasterTask:
    """``pl_module`` as the :class:`~dm_lightning.training.base.DepthMasterTask` (a stage or a
    baseline) whose network :class:`ExportDepthMaster` writes; TypeError naming it otherwise."""
    if not isinstance(pl_module, DepthMasterTask):
        raise TypeError(
            f"ExportDepthMaster exports a DepthMasterTask's network (Stage1, Stage2, a "
            f"baseline); got {type(pl_module).__name__}"
        )
    return pl_module


def written_target(pl_module: L.LightningModule) -> str | None:
    """The target whose meaning :class:`DepthPredictionWriter`'s colours follow: the one the
    model was trained on, as its loader read it (``net.facts``: also for hub ids, without
    reading the model file again), else the task's; None (the recipe's) for another
    LightningModule."""
    if not isinstance(pl_module, DepthMasterTask):
        return None
    return pl_module.net.facts.recorded_target or pl_module.target.name


def write_export_card(tmp: Path, run_config: Path, target: Path) -> None:
    """The export's model card (:func:`~dm_lightning.hub.model_card.write_model_card`), written
    into the temporary folder so it is renamed with the weights. A card that cannot be built is
    a warning, not a lost export: ``tools/model_card.py`` writes it later."""

    try:
        write_model_card(tmp, run_config, CardChoices(model_ref=str(Path(target).resolve())))
    except OSError:
        raise  # a full disk is the export's problem too (disk_full_as_error names it)
    except Exception as err:
        log.warning(
            "model card of %s not written (%s); write it with tools/model_card.py", target, err
        )


def replace_folder(target: Path, write: Any, what: str = "folder") -> None:
    """Write a folder atomically: ``write(tmp)`` fills a sibling temporary folder, which then
    replaces ``target`` by rename (:mod:`dm_lightning.atomic`). A kill at any moment leaves
    either the previous complete folder or the new one at ``target`` (plus, at worst, a hidden
    ``*.tmp`` / ``*.old`` sibling), never a half-written model that loads. A full disk while
    writing is one :class:`~dm_lightning.errors.DiskFullError` naming ``what`` and
    ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replaced_on_success(target) as tmp, disk_full_as_error(target, what):
        write(tmp)


class DepthPredictionWriter(BasePredictionWriter):
    """Write each prediction as a float32 ``.npy`` (raw values in [0, 1]), a 16-bit PNG
    (stretched per image to 0..65535) and a colourised PNG, by
    :func:`~dm_lightning.inference.outputs.write_depth_outputs` (names and value ranges in
    :mod:`dm_lightning.inference.outputs`), the same files as the Python API writes.

    Files are ``<output_dir>/<key>.npy``, ``<key>.png`` and ``<key>_color.png``: a key with
    folders (an :class:`~dm_lightning.data.predict.ImageFolder` key is the input's relative
    path) writes into the same sub-folders. Only samples with a depth map are written;
    unreadable inputs, listed by the batch's ``skipped_files`` (see :class:`ImageFolder` for
    the batch contract), are warned about once each and counted. At the end of ``predict``:
    ``wrote N depth maps to <folder>, skipped M unreadable files`` (summed over ranks).
    Colours put near in red whatever the model's training target (a ``depth``-target model's
    1 = far): the target recorded with the model (export metadata, checkpoint), else the
    task's ``target``.
    Files are written by a background thread
    (:class:`~dm_lightning.inference.outputs.BackgroundWriter`), overlapping the next batch;
    all are on disk when ``predict`` ends.

    Args:
        output_dir: folder for the files; default ``<run dir>/predictions``.

    Raises:
        ConfigError: in ``setup``, before any batch runs: the output folder cannot be created or
            written, or a file written there would replace an input image; later, a key
            that would write outside it, or keys that do not match the depth maps.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.written = 0
        self.skipped = 0
        self._files: Any = None  # BackgroundWriter of the running predict

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.folder = output_folder(trainer, self.output_dir, "predictions")
        if stage == "predict":
            data = depth_data(trainer.datamodule)
            predict_path = data.predict_path if data else None
            if predict_path is not None:  # image files: none of them may be overwritten
                images = ImageFolder(str(predict_path))
                refuse_writing_over_inputs(self.folder, images.keys, images.files)
            check_writable_folder(self.folder, "prediction output folder")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.written = 0
        self.skipped = 0
        self._close_files()

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, Any] | None,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:

        skipped = batch.get("skipped_files") if isinstance(batch, dict) else None
        if skipped is None and isinstance(prediction, dict):
            skipped = prediction.get("skipped_files")
        for path, reason in skipped or []:
            log.warning("skipped unreadable image %s: %s", path, reason)
            self.skipped += 1
        keys = list((prediction or {}).get("key") or [])
        depth = (prediction or {}).get("depth")
        if depth is None or not keys:
            return
        if len(keys) != len(depth):
            raise ConfigError(
                f"predict_step returned {len(keys)} keys but {len(depth)} depth maps "
                f"(keys {keys[:4]}); it must return the keys of the readable samples only"
            )
        if self._files is None:
            self._files = BackgroundWriter(self.folder, near_is_one(written_target(pl_module)))
        for key, values in zip(keys, (d.detach().float().cpu() for d in depth)):
            self._files.submit(key, values)
            self.written += 1

    def _close_files(self) -> None:
        files, self._files = self._files, None
        if files is not None:
            files.close()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        try:  # the run's own error matters more than a write that failed with it
            self._close_files()
        except Exception as err:
            log.warning("a depth map write also failed: %s", err)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:

        self._close_files()  # every file on disk before the summary
        counts = torch.tensor([self.written, self.skipped], device=pl_module.device)
        if trainer.world_size > 1:
            counts = trainer.strategy.reduce(counts, reduce_op="sum")
        written, skipped = (int(c) for c in counts.tolist())
        if trainer.is_global_zero:
            print(f"[dm_lightning] {summary_line(written, skipped, self.folder)}")
