"""Shared LightningModule base: model loading, optimiser, schedule, validation, test, predict.

Built through hooks, as torchgeo's ``BaseTask``: ``__init__`` saves the hyper-parameters
(less the class's ``hparams_ignore``) and calls :meth:`DepthMasterTask.configure_models`,
``configure_losses`` and ``configure_metrics``. Subclasses (:class:`Stage1`, :class:`Stage2`)
build their extra parts and losses in those hooks and define ``training_loss``; the shared
``training_step`` guards the loss of the batch the DataModule finished; everything after
training is common. The non-finite guard (:class:`~dm_lightning.training.nonfinite.NonFiniteGuard`)
and the frozen parts' rules (:class:`~dm_lightning.training.frozen.FrozenParts`) are mixins of
their own modules. The validation and test steps, and their
:class:`~dm_lightning.evaluation.book.EvaluationBook`, are
:class:`~dm_lightning.evaluation.task.EvaluationTask`'s: this class only says how a batch is
predicted (:meth:`DepthMasterTask.eval_prediction`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from dm_lightning.data.batch import TrainingBatch
from dm_lightning.data.contract import depth_data
from dm_lightning.data.packing import is_packed
from dm_lightning.errors import ConfigError
from dm_lightning.evaluation.task import EvaluationTask
from dm_lightning.inference.batching import predict_batch
from dm_lightning.inference.onnx_runtime import OnnxDepthModel, is_onnx_path
from dm_lightning.inference.precision import cast_for_inference
from dm_lightning.inference.precision import inference_dtype as cast_dtype
from dm_lightning.inference.tiling import check_tiling
from dm_lightning.models.depthmaster import DepthMaster, signed_rgb
from dm_lightning.models.loading import load_depthmaster
from dm_lightning.models.model_facts import recorded_target
from dm_lightning.models.pipeline_depthmaster import DEFAULT_TARGET
from dm_lightning.models.resolution import (
    check_processing_res,
    network_res,
)
from dm_lightning.targets import check_alignment_space, get_target
from dm_lightning.training.checkpoints import (
    CHECKPOINT_RECORD,
    checkpoint_stage,
    stage_mismatch_message,
)
from dm_lightning.training.ema import ema_callback
from dm_lightning.training.frozen import FrozenParts
from dm_lightning.training.nonfinite import NonFiniteGuard
from dm_lightning.training.schedule import warmup_exponential_decay
from dm_lightning.training.target_choice import settle_target


class DepthMasterTask(FrozenParts, NonFiniteGuard, EvaluationTask):
    """Base task.

    ``stage_name`` is recorded in every checkpoint; ``--ckpt_path`` only resumes a task of
    the same ``stage_name`` (subclasses of a stage inherit it).

    Args:
        model_path: diffusers-layout folder or hub id with ``vae/`` and ``unet/`` (SD-2 base
            weights, the released DepthMaster model, or a dm_lightning export), or a
            ``Stage1`` / ``Stage2`` checkpoint (``.ckpt``: its network, built on the
            ``model_path`` it was trained from; see
            :func:`~dm_lightning.models.loading.load_depthmaster_checkpoint`).
        unet_path: optional U-Net folder replacing ``model_path/unet``.
        target: depth target representation: ``sqrt_disparity`` | ``disparity`` | ``depth``;
            None (default): the one recorded with ``model_path`` (an export's
            ``dm_lightning.json``, a checkpoint's hyper-parameters, an ONNX graph's metadata),
            else the class's :attr:`default_target`. A model is read in the space it was
            trained in without being told.
        eval_alignment: space of the per-image scale/shift fit at evaluation; default: the
            target's own space.
        lr: Adam learning rate.
        warmup_steps, decay_steps, final_lr_ratio: the warm-up + exponential decay schedule,
            in optimizer steps.
        processing_res: long edge in pixels (>= the VAE factor) at which validation, test and
            predict run, or ``"native"`` (each image's own size); None: each benchmark's own
            at validation and test (native size for shard splits), and for ``predict`` of
            image files the model's recorded one (export metadata), else 768
            (:mod:`dm_lightning.models.resolution`).
        max_nonfinite_steps: consecutive optimizer steps with a non-finite loss or gradient
            (each skipped without changing the weights) after which the run saves a
            checkpoint and stops; None never stops.
        gradient_checkpointing: recompute the U-Net's blocks in the backward pass instead of
            keeping their activations (diffusers' own switch): less memory, about a third
            more compute per step. Same gradients.
        channels_last: hold the network's convolution weights in channels-last layout (faster
            convolutions on tensor-core GPUs); same numbers up to float rounding.
        cast_frozen: under a mixed precision (``--trainer.precision bf16-mixed`` or
            ``16-mixed``), hold the frozen VAE encoder and alignment encoder in that dtype
            (half their memory); they run in it under autocast anyway. The VAE decoder, the
            Fourier Enhancement block and the losses stay fp32. Exports keep the VAE as
            loaded. Ignored, with a warning, at full precision.
        compile_unet: ``torch.compile`` the U-Net in place (``nn.Module.compile``: parameter
            names, checkpoints and exports unchanged); the first steps are slow while it
            compiles.
        tile_size, tile_overlap: ``predict`` of image files only: a tile edge in pixels (a
            multiple of the VAE factor) turns on tiled high-resolution prediction, a global
            pass at ``processing_res`` plus overlapping full-detail tiles aligned to it and
            blended (:mod:`dm_lightning.inference.tiling`; overlap default a quarter tile);
            None (default): one pass per image.
        inference_dtype: ``predict`` only: ``bf16`` or ``fp16`` hold the U-Net and VAE
            encoder in that dtype (the decode and the FE block stay fp32,
            :mod:`dm_lightning.inference.precision`); None / ``fp32``: as loaded.
    """

    stage_name = "DepthMasterTask"
    # The training target when neither the config nor the model names one.
    default_target = DEFAULT_TARGET
    # __init__ arguments left out of the saved hyper-parameters (modules, e.g. an encoder).
    hparams_ignore: tuple[str, ...] = ()

    def __init__(
        self,
        model_path: str,
        unet_path: str | None = None,
        target: str | None = None,
        eval_alignment: str | None = None,
        lr: float = 3e-5,
        warmup_steps: int = 100,
        decay_steps: int = 25_000,
        final_lr_ratio: float = 0.01,
        processing_res: int | str | None = None,
        max_nonfinite_steps: int | None = 20,
        gradient_checkpointing: bool = False,
        channels_last: bool = False,
        cast_frozen: bool = False,
        compile_unet: bool = False,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        inference_dtype: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=list(self.hparams_ignore))
        given_target, given_alignment = target, eval_alignment
        target = target or recorded_target(model_path) or self.default_target
        self.hparams["target"] = target  # resolved: checkpoints and exports record it
        self.target = get_target(target)
        self.eval_alignment = check_alignment_space(
            eval_alignment or target, "model.init_args.eval_alignment"
        )
        if not (lr > 0 and math.isfinite(lr)):
            # lr 0 trained "successfully" and exported the input weights unchanged.
            raise ConfigError(
                f"model.init_args.lr must be a finite number > 0 (Adam's learning rate), got {lr}"
            )
        self.init_nonfinite_guard(max_nonfinite_steps)
        # Frozen modules are not in checkpoints; add them back before a strict load.
        self.strict_loading = True
        # Long edge per eval dataloader, stage -> [int | None], resolved in setup().
        self.loader_processing_res: dict[str, list[int | None]] = {}
        self.configure_models()
        settle_target(self, given_target, given_alignment)
        check_processing_res(
            processing_res, self.net.latent_factor, "model.init_args.processing_res"
        )
        check_tiling(tile_size, tile_overlap, self.net.latent_factor)
        self.inference_dtype = cast_dtype(inference_dtype, "model.init_args.inference_dtype")
        self.configure_memory()
        self.configure_losses()
        self.configure_metrics()

    # ---- construction hooks -------------------------------------------------------------
    def configure_models(self) -> None:
        """The DepthMaster network ``net`` (frozen VAE); subclasses add their parts after it.
        An ``.onnx`` ``model_path`` gives an onnxruntime session with the same ``predict``
        (:class:`~dm_lightning.inference.onnx_runtime.OnnxDepthModel`): predict, validate
        and test with this base task only, nothing to train."""
        if is_onnx_path(self.hparams.model_path):
            if self.stage_name != DepthMasterTask.stage_name or self.hparams.unet_path:
                raise ConfigError(
                    f"model.init_args.model_path {self.hparams.model_path} is an ONNX graph: it "
                    f"runs predict, validate and test with dm_lightning.DepthMasterTask, without "
                    f"unet_path; {type(self).__name__} trains from a model folder or checkpoint"
                )
            self.net = OnnxDepthModel(self.hparams.model_path)  # type: ignore[assignment]
            return
        self.net: DepthMaster = self.load_network()
        self.net.vae.requires_grad_(False).eval()
        # from_pretrained leaves modules in eval mode and Lightning keeps module modes as found.
        self.net.unet.train()

    def load_network(self) -> DepthMaster:
        """The network :meth:`configure_models` freezes and trains: ``model_path`` (and
        ``unet_path``) loaded. Overridden where the network is built in memory instead (the
        ``scale`` benchmark's random SD-2-size network on the meta device), so that the task's
        own freezing and losses apply to it."""
        return load_depthmaster(self.hparams.model_path, self.hparams.unet_path)

    def configure_memory(self) -> None:
        """The memory and speed switches on the built network (after every part of it, the
        FE block included, exists): U-Net gradient checkpointing, channels-last layout,
        ``torch.compile``. (``cast_frozen`` waits for :meth:`setup`, which knows the
        trainer's precision.)"""
        hp = self.hparams
        if hp.gradient_checkpointing:
            self.net.unet.enable_gradient_checkpointing()
        # The switch of the tasks that backpropagate through the frozen decoder (Stage2, E2EFT).
        # It sets the encoder's flag too, which runs without gradients, where diffusers never
        # checkpoints.
        if hp.get("decoder_checkpointing"):
            self.net.vae.enable_gradient_checkpointing()
        if hp.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if hp.compile_unet:
            self.net.unet.compile()

    def configure_losses(self) -> None:
        """The training losses and their weights (the training stages define them)."""

    def setup(self, stage: str) -> None:
        # Our buffers are constants (prompt embedding, encoder mean/std). Left to DDP, they are
        # broadcast before every forward, a collective that hangs when ranks run different
        # numbers of validation batches (exactly-once eval splits are uneven).
        self._ddp_params_and_buffers_to_ignore = [name for name, _ in self.named_buffers()]
        super().setup(stage)  # the evaluation book's splits
        loader_stage = {"fit": "val", "validate": "val"}.get(stage, stage)
        self.loader_processing_res[loader_stage] = self._resolve_processing_res(loader_stage)
        if self.hparams.cast_frozen:
            self.cast_frozen_modules(str(self.trainer.precision))
        if stage == "predict":
            native = None in self.loader_processing_res.get("predict", [])
            if self.hparams.get("tile_size") is not None and native:
                raise ConfigError(
                    "model.init_args.tile_size needs a processing_res in pixels for the "
                    "global pass of tiled prediction, not native size: set "
                    "model.init_args.processing_res"
                )
            cast_for_inference(self.net, self.inference_dtype)

    def on_fit_start(self) -> None:
        # Fail before the first step when a training source cannot pass the VAE cleanly.
        data = depth_data(self.trainer.datamodule)
        factor = self.net.latent_factor
        for name, (height, width) in (data.train_resolutions() if data else {}).items():
            if height % factor or width % factor:
                raise ConfigError(
                    f"data.train[{name}]: samples are {height}x{width} pixels, not a multiple "
                    f"of the VAE factor {factor}; crop or resize the shards to multiples of "
                    f"{factor} (e.g. {height // factor * factor}x{width // factor * factor})"
                )
        self.warn_stray_eval_modules()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ---- optimisation -------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.Adam(self.trainable_parameters(), lr=hp.lr, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_exponential_decay(
                step, hp.warmup_steps, hp.decay_steps, hp.final_lr_ratio
            ),
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def train(self, mode: bool = True) -> DepthMasterTask:
        super().train(mode)
        if isinstance(self.net, DepthMaster):  # not an onnxruntime graph
            self.net.vae.eval()  # frozen: no dropout / norm-statistics changes
        return self

    def training_step(self, batch: TrainingBatch, batch_idx: int) -> Tensor:
        """The stage's :meth:`training_loss` of a batch finished on the training device by
        :meth:`DepthDataModule.on_after_batch_transfer
        <dm_lightning.data.datamodule.DepthDataModule.on_after_batch_transfer>`, guarded.

        Raises:
            ConfigError: a packed batch arrived (its loader was given to the trainer without
                the DataModule that finishes it): training on PNG units would be wrong.
        """
        if is_packed(batch):
            raise ConfigError(
                "training_step got a packed training batch (depth_units, not yet metres): the "
                "DataModule finishes its batches on the device, so pass it whole, "
                "trainer.fit(model, datamodule=dm), not dm.train_dataloader()"
            )
        loss, parts = self.training_loss(batch)
        return self.guard_loss(loss, parts)

    def training_loss(self, batch: TrainingBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """The stage's loss of a finished batch and its logged terms (``loss`` among them)."""
        raise NotImplementedError

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        if isinstance(batch, dict) and "skipped" in batch:
            # Ranks step in lockstep during training, so a synchronised sum is safe here.
            self.log(
                "train/skipped_samples",
                float(batch["skipped"]),
                reduce_fx="sum",
                on_step=False,
                on_epoch=True,
                sync_dist=True,
                batch_size=1,
            )

    # ---- batch helpers ------------------------------------------------------------------
    @staticmethod
    def rgb_signed(batch: dict[str, Any]) -> Tensor:
        """uint8 RGB -> (B, 3, H, W) float in [-1, 1]."""
        return signed_rgb(batch["rgb"])

    def normalized_target(self, batch: dict[str, Any]) -> Tensor:
        """(B, 1, H, W) target in [-1, 1] built on the fly from metric depth."""
        return self.target.normalize(batch["depth"], batch["valid"])

    # ---- evaluation ---------------------------------------------------------------------
    def _resolve_processing_res(self, stage: str) -> list[int | None]:
        """Long edge each dataloader of ``stage`` ("val", "test", "predict") runs at, asked
        once of the DataModule: a benchmark split's own (None = native size), else the
        ``processing_res`` hyper-parameter. Predict runs over the test splits unless the
        DataModule has a ``predict`` folder (or there is no DataModule)."""
        default = network_res(self.hparams.processing_res)
        data = depth_data(self.trainer.datamodule)
        if data is None:
            return [default]
        if stage == "predict" and data.predict_path is not None:
            return [network_res(self.predict_processing_res)]
        split = "test" if stage == "predict" else stage
        names = list(data.eval_splits(split))
        return [data.processing_res(name, split, default) for name in names] or [default]

    def processing_res_of(self, stage: str, dataloader_idx: int = 0) -> int | None:
        """Long edge the network runs at for dataloader ``dataloader_idx`` of ``stage``
        ("val", "test", "predict"; None = native size)."""
        resolved = self.loader_processing_res.get(stage, [])
        if dataloader_idx < len(resolved):
            return resolved[dataloader_idx]
        return network_res(self.hparams.processing_res)

    @property
    def predict_processing_res(self) -> int | str:
        """Long edge ``predict`` runs image files at (or ``"native"``): the
        ``processing_res`` hyper-parameter, else the network's (``net.facts``: the one
        recorded with ``model_path``, else
        :data:`~dm_lightning.models.pipeline_depthmaster.DEFAULT_PROCESSING_RES`).
        Exports record it."""
        if self.hparams.processing_res is not None:
            return self.hparams.processing_res
        return self.net.facts.processing_res

    def eval_prediction(self, batch: dict[str, Any], stage: str, dataloader_idx: int) -> Tensor:
        """The network's relative depth of the batch's RGB, run at the split's processing
        resolution and resized back to the GT size (:meth:`DepthMaster.predict`)."""
        return self.net.predict(batch["rgb"], self.processing_res_of(stage, dataloader_idx))

    def evaluation_settings(self, stage: str = "test") -> dict[str, Any]:
        """The model (``model_path``, ``unet_path``), its ``target`` (the space of its
        output), the fit space and each split's processing resolution (pixels, or
        ``"native"``), recorded with the results."""
        names = self._eval_names(stage)
        resolutions = [self.processing_res_of(stage, i) for i in range(len(names))]
        return {
            "model": str(self.hparams.get("model_path", "")),
            **({"unet": str(self.hparams.unet_path)} if self.hparams.get("unet_path") else {}),
            "target": self.target.name,
            **super().evaluation_settings(stage),
            "processing_res": {n: "native" if r is None else r for n, r in zip(names, resolutions)},
        }

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Relative depth (B, 1, H, W) in [0, 1] at input size, with the sample keys; unreadable
        files of an image-folder batch (``skipped_files``) are passed on to the writer, and a
        batch of only unreadable files runs nothing (``depth`` None)."""
        skipped = batch.get("skipped_files", [])
        if batch["rgb"] is None:
            return {"key": [], "depth": None, "skipped_files": skipped}
        res = self.processing_res_of("predict", dataloader_idx)
        tiles = self.hparams.get("tile_size"), self.hparams.get("tile_overlap")
        depth = predict_batch(self.net, batch["rgb"], res, *tiles)
        depth = depth.cpu() if isinstance(depth, Tensor) else depth
        return {"key": batch["key"], "depth": depth, "skipped_files": skipped}

    # ---- checkpoints --------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        self.drop_frozen(state)
        ema = ema_callback(self._trainer) if self._trainer is not None else None
        if ema is not None and "optimizer_states" not in checkpoint:
            ema.put_average(state)  # a weights-only checkpoint holds the EMA weights
        checkpoint[CHECKPOINT_RECORD] = {"stage": self.stage_name, **self.nonfinite_record()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        record = checkpoint.get(CHECKPOINT_RECORD, {})
        state = checkpoint["state_dict"]
        stage = checkpoint_stage(checkpoint)
        if stage not in ("unknown", self.stage_name):
            raise ConfigError(stage_mismatch_message(stage, self.stage_name))
        self.restore_nonfinite(record)
        self.add_frozen(state)
