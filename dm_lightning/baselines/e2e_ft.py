"""E2E-FT (Garcia Martin et al. 2024, "Fine-Tuning Image-Conditional Diffusion Models is
Easier than You Think", arXiv:2409.11355) as a baseline: docs/method.md §8.1.

SD-2's U-Net at timestep 999 with no noise; its output read as a v-prediction and turned into
the x0 latent with SD-2's noise schedule (diffusers' ``DDPMScheduler``), decoded by the frozen
VAE, channel mean, clipped; trained end to end through the decoder with the affine-invariant
L1 loss against the normalised depth.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor

from dm_lightning.baselines.losses import affine_invariant_l1
from dm_lightning.baselines.network import BaselineNetwork
from dm_lightning.baselines.schedule import sd2_noise_schedule
from dm_lightning.baselines.single_step import LAST_TIMESTEP, last_timestep_pass
from dm_lightning.baselines.task import BaselineTask
from dm_lightning.baselines.unet_surgery import widen_conv_in
from dm_lightning.data.batch import TrainingBatch
from dm_lightning.errors import ConfigError


def v_to_x0(v: Tensor, sample: Tensor, alpha_cumprod: float) -> Tensor:
    """The x0 estimate of a v-prediction (docs/method.md §8.1, Eq. 8.2):
    ``sqrt(abar_t) * sample - sqrt(1 - abar_t) * v`` (what diffusers' schedulers compute as
    ``pred_original_sample`` for ``prediction_type="v_prediction"``).

    Args:
        v: (B, 4, h, w) U-Net output.
        sample: x_t, the latent the U-Net denoised, same shape.
        alpha_cumprod: abar_t of the timestep, in (0, 1].
    """
    return alpha_cumprod**0.5 * sample - (1.0 - alpha_cumprod) ** 0.5 * v


class E2EFTNetwork(BaselineNetwork):
    """E2E-FT's network: :meth:`predict_latent` is the x0 latent at timestep 999.

    Args:
        vae, unet, empty_prompt_embedding: as :class:`~dm_lightning.models.depthmaster.
            DepthMaster`; ``unet`` takes 8 channels when ``marigold_input``, else 4.
        marigold_input: the published input, ``concat(z_rgb, 0)`` into a widened ``conv_in``
            with x_t = 0 (from SD-2 or from Marigold's weights); else DepthMaster's, ``z_rgb``
            alone with x_t = ``z_rgb``.
    """

    method = "e2e_ft"
    task = "dm_lightning.E2EFT"

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        empty_prompt_embedding: Tensor,
        marigold_input: bool = False,
    ) -> None:
        # Read by DepthMaster.__init__'s check of the U-Net's input width.
        self.latent_inputs = 2 if marigold_input else 1
        super().__init__(vae, unet, empty_prompt_embedding)
        self.marigold_input = marigold_input
        self.alpha_cumprod = float(sd2_noise_schedule().alphas_cumprod[LAST_TIMESTEP])

    @classmethod
    def from_parts(
        cls,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        embedding: Tensor,
        marigold_input: bool | None = None,
    ) -> E2EFTNetwork:
        """The network from loaded parts; ``marigold_input`` None follows the U-Net (8 input
        channels: Marigold's weights or an 8-channel export), True widens a 4-channel
        ``conv_in`` (:func:`~dm_lightning.baselines.unet_surgery.widen_conv_in`).

        Raises:
            ConfigError: ``marigold_input`` False with an 8-channel U-Net, or a U-Net of
                another input width.
        """
        latent = vae.config.latent_channels
        width = unet.config.in_channels
        if width not in (latent, 2 * latent):
            raise ConfigError(
                f"E2E-FT needs a U-Net with {latent} or {2 * latent} input channels, got {width}"
            )
        if marigold_input is None:
            marigold_input = width == 2 * latent
        elif not marigold_input and width == 2 * latent:
            raise ConfigError(
                f"model.init_args.marigold_input is false but the U-Net takes {width} channels "
                "(Marigold's or an 8-channel E2E-FT export): set it to true or null"
            )
        if marigold_input and width == latent:
            widen_conv_in(unet, 2)
        return cls(vae, unet, embedding, marigold_input=marigold_input)

    def unet_input(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        """(U-Net input, x_t) of an RGB latent (B, 4, h, w): ``concat(z_rgb, 0)`` and 0 with
        ``marigold_input``, else ``z_rgb`` both."""
        if not self.marigold_input:
            return latent, latent
        zeros = torch.zeros_like(latent)
        return torch.cat([latent, zeros], dim=1), zeros

    def predict_latent(self, latent: Tensor) -> Tensor:
        """RGB latent -> x0 depth latent, (B, 4, h, w) both (Eq. 8.1 and 8.2)."""
        unet_input, sample = self.unet_input(latent)
        v = last_timestep_pass(self.unet, self.empty_prompt_embedding, unet_input)
        return v_to_x0(v, sample, self.alpha_cumprod)

    def export_settings(self) -> dict[str, Any]:
        return {"marigold_input": self.marigold_input, "timestep": LAST_TIMESTEP}


class E2EFT(BaselineTask):
    """E2E-FT training: the affine-invariant L1 of the decoded, clipped depth against the
    normalised target (docs/method.md §8.1).

    Args:
        model_path: SD-2 (or Marigold's weights, or an E2E-FT export).
        marigold_input: see :class:`E2EFTNetwork`; None follows the loaded U-Net (SD-2: the
            4-channel RGB-latent input).
        target: depth target; ``depth`` as E2E-FT (the loss is affine-invariant in its space).
        lr: Adam learning rate, 3e-5 as E2E-FT.
        decoder_checkpointing: recompute the frozen VAE decoder's blocks in the backward pass,
            as :class:`~dm_lightning.training.stage2.Stage2`'s switch: the loss is taken after
            the decoder, whose full-resolution activations dominate the memory.
        **kwargs: see :class:`~dm_lightning.training.base.DepthMasterTask`.
    """

    stage_name = "E2EFT"
    default_target = "depth"
    network_class = E2EFTNetwork

    def __init__(
        self,
        model_path: str,
        marigold_input: bool | None = None,
        target: str | None = None,
        lr: float = 3e-5,
        decoder_checkpointing: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_path, target=target, lr=lr, **kwargs)

    def network_options(self) -> dict[str, Any]:
        return {"marigold_input": self.hparams.marigold_input}

    def configure_losses(self) -> None:
        self.depth_loss = affine_invariant_l1

    def training_loss(self, batch: TrainingBatch) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.no_grad():
            z_rgb = self.net.encode(self.rgb_signed(batch))
            target = self.normalized_target(batch)
        # End to end: gradients through the frozen decoder, as stage 2 (docs/method.md §4).
        pred = self.net.decode(self.net.predict_latent(z_rgb)).clamp(-1.0, 1.0)
        loss = self.depth_loss(pred, target, batch["valid"])
        return loss, {"affine_l1": loss, "loss": loss}
