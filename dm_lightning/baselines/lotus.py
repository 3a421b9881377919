"""Lotus-D (He et al. 2025, "Lotus: Diffusion-based Visual Foundation Model for High-quality
Dense Prediction", ICLR 2025) as a baseline: docs/method.md §8.2.

SD-2's U-Net at timestep 999 predicting the depth latent itself (x0) from the RGB latent,
trained with the latent MSE against the VAE-encoded normalised disparity, plus the detail
preserver: the batch doubled, a task switcher (a projection class embedding) asks the same
U-Net to reconstruct the RGB latent. Inference runs the depth switch only.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor

from dm_lightning.baselines.losses import lotus_d_loss
from dm_lightning.baselines.network import BaselineNetwork
from dm_lightning.baselines.single_step import LAST_TIMESTEP, last_timestep_pass
from dm_lightning.baselines.task import BaselineTask
from dm_lightning.baselines.unet_surgery import add_task_switcher
from dm_lightning.data.batch import TrainingBatch
from dm_lightning.errors import ConfigError

# The task switcher's one-hot positions (Lotus: [1, 0] annotation, [0, 1] RGB).
DEPTH, RGB = 0, 1


def task_switch(task: int, batch: int) -> Tensor:
    """Lotus' task switcher input for ``batch`` samples of ``task`` (:data:`DEPTH` or
    :data:`RGB`): ``concat(sin(onehot), cos(onehot))``, (batch, 4) float32; depth is
    ``[sin 1, 0, cos 1, 1]``, RGB ``[0, sin 1, 1, cos 1]`` (docs/method.md §8.2, Eq. 8.5)."""
    onehot = torch.zeros(batch, 2)
    onehot[:, task] = 1.0
    return torch.cat([onehot.sin(), onehot.cos()], dim=1)


class LotusDNetwork(BaselineNetwork):
    """Lotus-D's network: a U-Net with the task switcher; :meth:`predict_latent` is its x0
    output under the depth switch."""

    method = "lotus_d"
    task = "dm_lightning.LotusD"

    @classmethod
    def from_parts(
        cls, vae: AutoencoderKL, unet: UNet2DConditionModel, embedding: Tensor, **options: Any
    ) -> LotusDNetwork:
        """The network from loaded parts: SD-2's U-Net gets a new task switcher
        (:func:`~dm_lightning.baselines.unet_surgery.add_task_switcher`), an export keeps its
        own."""
        return cls(vae, add_task_switcher(unet), embedding, **options)

    def x0(self, latent: Tensor, tasks: Tensor) -> Tensor:
        """The U-Net's x0 prediction for RGB latents (B, 4, h, w) under the switches ``tasks``
        (B, 4) (:func:`task_switch`), (B, 4, h, w)."""
        return last_timestep_pass(self.unet, self.empty_prompt_embedding, latent, tasks)

    def predict_latent(self, latent: Tensor) -> Tensor:
        """RGB latent -> depth latent, (B, 4, h, w) both: the depth switch only."""
        return self.x0(latent, task_switch(DEPTH, latent.shape[0]))

    def export_settings(self) -> dict[str, Any]:
        return {"timestep": LAST_TIMESTEP, "task_switch": "depth"}


class LotusD(BaselineTask):
    """Lotus-D training: the masked latent MSE of the depth prediction plus the detail
    preserver's RGB-reconstruction MSE on the doubled batch (docs/method.md §8.2).

    Args:
        model_path: SD-2 (or a Lotus-D export).
        preserver_weight: weight of the detail preserver's term (1 in Lotus); 0 turns the
            preserver off (no doubled batch).
        target: depth target; ``disparity`` as Lotus-D.
        lr: Adam learning rate, 3e-5 as Lotus.
        **kwargs: see :class:`~dm_lightning.training.base.DepthMasterTask`.
    """

    stage_name = "LotusD"
    default_target = "disparity"
    network_class = LotusDNetwork

    def __init__(
        self,
        model_path: str,
        preserver_weight: float = 1.0,
        target: str | None = None,
        lr: float = 3e-5,
        **kwargs: Any,
    ) -> None:
        if not preserver_weight >= 0:
            raise ConfigError(
                f"model.init_args.preserver_weight must be >= 0 (0 turns the detail preserver "
                f"off), got {preserver_weight}"
            )
        super().__init__(model_path, target=target, lr=lr, **kwargs)

    def configure_losses(self) -> None:
        self.preserver_weight = self.hparams.preserver_weight

    def training_loss(self, batch: TrainingBatch) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.no_grad():
            z_rgb = self.net.encode(self.rgb_signed(batch))
            target = self.normalized_target(batch)
            z_depth = self.net.encode(target.expand(-1, 3, -1, -1))
        b = z_rgb.shape[0]
        latents, targets, tasks = z_rgb, z_depth, task_switch(DEPTH, b)
        if self.preserver_weight > 0:
            # The detail preserver: the same RGB latents again, asked to reconstruct themselves.
            latents = torch.cat([z_rgb, z_rgb])
            targets = torch.cat([z_depth, z_rgb])
            tasks = torch.cat([tasks, task_switch(RGB, b)])
        pred = self.net.x0(latents, tasks)
        parts = lotus_d_loss(
            pred, targets, batch["valid"], self.net.latent_factor, self.preserver_weight
        )
        return parts["loss"], parts
