"""Marigold's training as a sibling of the DepthMaster stages (docs/method.md §8.3).

Per micro-batch: the RGB and the normalised target are encoded by the frozen VAE; each sample
gets a timestep drawn uniformly from the 1000 training timesteps and annealed multi-resolution
noise (:mod:`~dm_lightning.baselines.multires_noise`); the U-Net sees the RGB latent beside the
noisy depth latent and is trained by masked latent MSE against the velocity (v-prediction).
Validation, test, predict, checkpoints and the export are DepthMasterTask's; the network's
``predict`` samples with DDIM (:class:`~dm_lightning.baselines.marigold.MarigoldNetwork`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dm_lightning.baselines.marigold import (
    DEFAULT_ENSEMBLE,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    MarigoldNetwork,
)
from dm_lightning.baselines.multires_noise import annealed_strength, multi_res_noise
from dm_lightning.baselines.task import BaselineTask
from dm_lightning.data.batch import TrainingBatch
from dm_lightning.errors import ConfigError
from dm_lightning.losses import masked_latent_mse
from dm_lightning.models.model_facts import recorded_setting

# Inference settings: hyper-parameter -> default when neither given nor recorded with the model.
INFERENCE_DEFAULTS: dict[str, Any] = {
    "num_inference_steps": DEFAULT_STEPS,
    "ensemble_size": DEFAULT_ENSEMBLE,
    "seed": DEFAULT_SEED,
    "zero_snr": True,
}


class Marigold(BaselineTask):
    """Marigold training: masked latent MSE between the U-Net's output and the velocity target.

    Args:
        model_path: SD-2 (its ``conv_in`` is widened to the 8 channels of RGB latent + depth
            latent) or a Marigold export (loaded as it is).
        target: the depth target; Marigold's is ``depth`` (per-image 2%/98% quantiles to
            [-1, 1], as dm_lightning's targets normalise).
        num_inference_steps, ensemble_size, seed, zero_snr: the network's settings
            (:class:`~dm_lightning.baselines.marigold.MarigoldNetwork`); None: as the model
            folder records them (a Marigold export's ``dm_lightning.json``), else 4, 1, 0 and
            True. ``seed`` also seeds the training noise, mixed with the rank, the optimizer
            step and the micro-batch index, so ranks draw different noise and a run repeats.
        noise_strength: base of the multi-resolution noise's level weights (Marigold: 0.9);
            None trains with plain Gaussian noise.
        annealed_noise: scale ``noise_strength`` by ``t / 1000`` per sample (Marigold: on).
        **kwargs: see :class:`~dm_lightning.training.base.DepthMasterTask`.
    """

    stage_name = "Marigold"
    default_target = "depth"
    network_class = MarigoldNetwork

    def __init__(
        self,
        model_path: str,
        target: str | None = None,
        num_inference_steps: int | None = None,
        ensemble_size: int | None = None,
        seed: int | None = None,
        zero_snr: bool | None = None,
        noise_strength: float | None = 0.9,
        annealed_noise: bool = True,
        **kwargs: Any,
    ) -> None:
        if noise_strength is not None and not (
            isinstance(noise_strength, (int, float)) and 0 <= noise_strength < 1
        ):
            raise ConfigError(
                "model.init_args.noise_strength must be a number in [0, 1) (Marigold: 0.9) or "
                f"null for plain Gaussian noise, got {noise_strength!r}"
            )
        super().__init__(model_path, target=target, **kwargs)
        self._micro_batch = 0  # batch index of the running training step (training_generator)

    def network_options(self) -> dict[str, Any]:
        """The inference settings: given, else recorded with ``model_path``, else defaults."""
        options = {}
        for key, default in INFERENCE_DEFAULTS.items():
            value = self.hparams.get(key)
            if value is None:
                value = recorded_setting(self.hparams.model_path, key)
            options[key] = default if value is None else value
        return options

    def evaluation_settings(self, stage: str = "test") -> dict[str, Any]:
        """DepthMasterTask's, plus the inference settings (:meth:`network_options`: DDIM
        steps, ensemble size, seed, zero SNR), which change the numbers too."""
        return {**super().evaluation_settings(stage), **self.network_options()}

    def configure_losses(self) -> None:
        """Masked latent MSE (the mask of docs/method.md §3, as Marigold's trainer)."""
        self.latent_loss = partial(masked_latent_mse, factor=self.net.latent_factor)

    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self._micro_batch = batch_idx

    def training_generator(self, device: torch.device) -> torch.Generator:
        """The random source of this micro-batch's timesteps and noise, seeded from (seed,
        global rank, optimizer step, batch index): stateless, so a resumed run draws what an
        uninterrupted one would, and no two ranks or micro-batches share noise (Lightning
        seeds every rank's global generator alike)."""
        entropy = [self.net.seed, self.global_rank, self.global_step, self._micro_batch]
        seed = int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])
        return torch.Generator(device=device).manual_seed(seed)

    def draw_noise(self, depth_latent: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Timesteps (B,) uniform over the training timesteps, then noise like
        ``depth_latent``: multi-resolution (annealed per sample) or plain Gaussian."""
        b = depth_latent.shape[0]
        steps = self.net.num_train_timesteps
        device = depth_latent.device
        timesteps = torch.randint(0, steps, (b,), generator=generator, device=device)
        strength = self.hparams.noise_strength
        if strength is None:
            noise = torch.randn(depth_latent.shape, generator=generator, device=device)
        else:
            if self.hparams.annealed_noise:
                strength = annealed_strength(strength, timesteps, steps)
            noise = multi_res_noise(tuple(depth_latent.shape), strength, generator, device)
        return timesteps, noise.to(depth_latent.dtype)

    def training_loss(self, batch: TrainingBatch) -> tuple[Tensor, dict[str, Tensor]]:
        net: MarigoldNetwork = self.net  # type: ignore[assignment]
        with torch.no_grad():
            z_rgb = net.encode(self.rgb_signed(batch))
            z_gt = net.encode(self.normalized_target(batch).expand(-1, 3, -1, -1))
        timesteps, noise = self.draw_noise(z_gt, self.training_generator(z_gt.device))
        noisy, velocity = net.training_pair(z_gt, noise, timesteps)
        pred = net.unet_output(z_rgb, noisy, timesteps)
        loss = self.latent_loss(pred, velocity, batch["valid"])
        return loss, {"v_mse": loss, "loss": loss}
