"""What E2E-FT and Lotus-D share (docs/method.md §8): one U-Net pass at SD-2's last training
timestep, conditioned on the empty prompt, from no noise."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import Tensor

# SD-2's num_train_timesteps - 1: the timestep of pure noise, at which both methods run their
# single step (E2E-FT: "the first denoising step" of a trailing schedule).
LAST_TIMESTEP = 999


def last_timestep_pass(
    unet: UNet2DConditionModel,
    empty_prompt: Tensor,
    sample: Tensor,
    class_labels: Tensor | None = None,
) -> Tensor:
    """The U-Net's output for ``sample`` (B, C_in, h, w) at timestep :data:`LAST_TIMESTEP`,
    conditioned on the (1, T, D) empty-prompt embedding and, for a U-Net with a class
    embedding, ``class_labels`` (B, n); (B, 4, h, w), read by the caller's parameterisation."""
    b = sample.shape[0]
    context = empty_prompt.to(sample.device, sample.dtype).expand(b, -1, -1)
    timestep = torch.full((b,), LAST_TIMESTEP, device=sample.device, dtype=torch.long)
    if class_labels is not None:
        class_labels = class_labels.to(sample.device, sample.dtype)
    return unet(sample, timestep, encoder_hidden_states=context, class_labels=class_labels).sample
