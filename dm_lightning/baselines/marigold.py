"""Marigold (Ke et al., CVPR 2024) as a baseline: the network (docs/method.md §8.3).

SD-2's U-Net with an 8-channel ``conv_in`` (:func:`~dm_lightning.baselines.unet_surgery.
widen_conv_in`) denoises a depth latent conditioned on the RGB latent it is concatenated
with. Training (:class:`~dm_lightning.baselines.marigold_task.Marigold`) is DDPM with
v-prediction and annealed multi-resolution noise; inference is DDIM with trailing timestep
spacing from seeded Gaussian noise, optionally several members ensembled
(:mod:`~dm_lightning.baselines.ensemble`). The schedule is SD-2's (scaled-linear betas, 1000
steps), by default rescaled to zero terminal SNR as Marigold v1.1 trains and samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from torch import Tensor

from dm_lightning.baselines.ensemble import ensemble_depth
from dm_lightning.baselines.network import BaselineNetwork
from dm_lightning.baselines.schedule import SD2_SCHEDULE
from dm_lightning.baselines.unet_surgery import widen_conv_in
from dm_lightning.errors import ConfigError
from dm_lightning.models.pipeline_depthmaster import predict_relative_depth

DDIM_EXTRAS: dict[str, Any] = dict(set_alpha_to_one=False)

# Defaults of the inference settings (Marigold v1.1's checkpoint: 4 steps, one member).
DEFAULT_STEPS = 4
DEFAULT_ENSEMBLE = 1
DEFAULT_SEED = 0
SCHEDULER_FOLDER = "scheduler"


class MarigoldNetwork(BaselineNetwork):
    """Marigold's network: frozen VAE, 8-channel U-Net, empty-prompt embedding, schedulers.

    Args:
        vae, unet, empty_prompt_embedding: as :class:`~dm_lightning.models.depthmaster.
            DepthMaster`; ``unet`` already takes 2 x 4 channels (see :meth:`from_parts`).
        num_inference_steps: DDIM steps at inference, 1 to the 1000 training timesteps
            (Marigold: 1 to 50; v1.1's default 4, its paper protocol 1 step x 10 members,
            v1.0's 50 x 10).
        ensemble_size: members ensembled per image (1: no ensembling).
        seed: seeds the initial noise of every ``predict`` call (the same numbers each call).
        zero_snr: rescale the betas to zero terminal SNR (Marigold v1.1; v1.0 did not).
    """

    method = "marigold"
    task = "dm_lightning.Marigold"
    latent_inputs = 2
    single_pass = False  # DDIM steps from seeded noise, then an ensemble

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        empty_prompt_embedding: Tensor,
        num_inference_steps: int = DEFAULT_STEPS,
        ensemble_size: int = DEFAULT_ENSEMBLE,
        seed: int = DEFAULT_SEED,
        zero_snr: bool = True,
    ) -> None:
        super().__init__(vae, unet, empty_prompt_embedding)
        schedule = {**SD2_SCHEDULE, "rescale_betas_zero_snr": bool(zero_snr)}
        self.noise_scheduler = DDPMScheduler(**schedule)  # training: add_noise, get_velocity
        self.scheduler = DDIMScheduler(**schedule, **DDIM_EXTRAS)  # inference
        steps = schedule["num_train_timesteps"]
        if not _is_int(num_inference_steps) or not 1 <= num_inference_steps <= steps:
            raise ConfigError(
                f"num_inference_steps must be an integer from 1 to {steps} (the training "
                f"timesteps; Marigold uses 1 to 50), got {num_inference_steps!r}"
            )
        if not _is_int(ensemble_size) or ensemble_size < 1:
            raise ConfigError(f"ensemble_size must be an integer >= 1, got {ensemble_size!r}")
        if not _is_int(seed) or seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
        self.num_inference_steps = num_inference_steps
        self.ensemble_size = ensemble_size
        self.seed = seed
        self.zero_snr = bool(zero_snr)

    @classmethod
    def from_parts(
        cls, vae: AutoencoderKL, unet: UNet2DConditionModel, embedding: Tensor, **options: Any
    ) -> MarigoldNetwork:
        """SD-2's 4-channel U-Net is widened to 8 (weights repeated and halved); a Marigold
        export's 8-channel one is used as it is."""
        if unet.config.in_channels == vae.config.latent_channels:
            widen_conv_in(unet, cls.latent_inputs)
        return cls(vae, unet, embedding, **options)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.noise_scheduler.config.num_train_timesteps)

    def unet_output(self, rgb_latent: Tensor, depth_latent: Tensor, timesteps: Tensor) -> Tensor:
        """The U-Net's velocity for the noisy ``depth_latent`` beside ``rgb_latent`` (both
        (B, 4, h, w), concatenated in that order) at ``timesteps`` ((B,) or a scalar)."""
        b = rgb_latent.shape[0]
        context = self.empty_prompt_embedding.to(rgb_latent.device, rgb_latent.dtype)
        sample = torch.cat([rgb_latent, depth_latent.to(rgb_latent.dtype)], dim=1)
        return self.unet(sample, timesteps, encoder_hidden_states=context.expand(b, -1, -1)).sample

    def training_pair(
        self, depth_latent: Tensor, noise: Tensor, timesteps: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The DDPM forward process and the v-prediction target (diffusers' DDPMScheduler):
        ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` and ``v = sqrt(abar_t) eps -
        sqrt(1 - abar_t) x0``, ``x0`` the clean depth latent, both (B, 4, h, w)."""
        noisy = self.noise_scheduler.add_noise(depth_latent, noise, timesteps)
        return noisy, self.noise_scheduler.get_velocity(depth_latent, noise, timesteps)

    def noise_generator(self, device: torch.device) -> torch.Generator:
        """A generator on ``device`` seeded with :attr:`seed` (a fresh one per predict call)."""
        return torch.Generator(device=device).manual_seed(self.seed)

    def sample(self, rgb_latent: Tensor, noise: Tensor) -> Tensor:
        """DDIM from ``noise`` (the depth latent at the first timestep) to the clean depth
        latent, ``num_inference_steps`` U-Net calls at the trailing timesteps
        (999, 999 - 1000/n, ...); eta 0, so nothing else is random. Both (B, 4, h, w)."""
        self.scheduler.set_timesteps(self.num_inference_steps, device=rgb_latent.device)
        latent = noise.to(rgb_latent.dtype)
        for t in self.scheduler.timesteps:
            velocity = self.unet_output(rgb_latent, latent, t)
            latent = self.scheduler.step(velocity, t, latent).prev_sample
        return latent

    def predict_latent(self, latent: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """RGB latent -> depth latent by :meth:`sample` from Gaussian noise drawn (in fp32)
        from ``generator`` (default :meth:`noise_generator`)."""
        generator = generator or self.noise_generator(latent.device)
        noise = torch.randn(latent.shape, generator=generator, device=latent.device)
        return self.sample(latent, noise)

    def forward(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> raw decoded depth (B, 1, H, W): one seeded sample."""
        return self.decode(self.predict_latent(self.encode(image)))

    @torch.no_grad()
    def predict(self, image: Tensor, processing_res: int | str | None = None) -> Tensor:
        """As :meth:`DepthMaster.predict <dm_lightning.models.depthmaster.DepthMaster.predict>`
        (same resize, encode, fp32 decode, clip), each image sampled ``ensemble_size`` times
        from one generator seeded with :attr:`seed`; members are ensembled at the working size
        (:func:`~dm_lightning.baselines.ensemble.ensemble_depth`: aligned, median, min-max
        normalised) and the result resized back, as Marigold does.

        Returns:
            (B, 1, H, W) float in [0, 1]; for the ``depth`` target 1 = far.
        """
        if self.ensemble_size == 1:
            return super().predict(image, processing_res)
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        h, w = x.shape[-2:]
        size = self.working_size(h, w, processing_res)
        generator = self.noise_generator(self.unet.device)

        def step(latent: Tensor) -> Tensor:
            return self.predict_latent(latent, generator)

        # Members one after another (the memory of a plain predict), each a whole batch.
        members = [
            predict_relative_depth(
                self.vae,
                self.unet,
                self.empty_prompt_embedding,
                x,
                size,
                match_input_resolution=False,
                latent_step=step,
            )
            for _ in range(self.ensemble_size)
        ]
        depth = ensemble_depth(torch.cat(members, dim=1))
        if size != (h, w):
            depth = F.interpolate(
                depth, size=(h, w), mode="bilinear", align_corners=False, antialias=True
            )
        return depth.clamp(0.0, 1.0)  # antialiased bilinear overshoots by float rounding

    def export_settings(self) -> dict[str, Any]:
        return {
            "num_inference_steps": self.num_inference_steps,
            "ensemble_size": self.ensemble_size,
            "seed": self.seed,
            "zero_snr": self.zero_snr,
        }

    def save_pretrained(self, path: str | Path, metadata: dict | None = None) -> Path:
        """:meth:`BaselineNetwork.save_pretrained` plus ``scheduler/`` (the DDIM config
        inference uses, for diffusers' ``MarigoldDepthPipeline``)."""
        path = super().save_pretrained(path, metadata)
        self.scheduler.save_pretrained(path / SCHEDULER_FOLDER)
        return path


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
