"""Marigold's annealed multi-resolution noise (docs/method.md §8.3).

Marigold trains with noise that has more low-frequency energy than white noise: Gaussian noise
at the latent's size plus Gaussian noise drawn at ever coarser grids, upsampled bilinearly and
weighted by ``strength ** i``, then scaled back to unit standard deviation. "Annealed" makes the
strength of each sample proportional to its timestep, so the last denoising steps see white
noise. This is the ``"original"`` downscale strategy of Marigold's training code, its default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Marigold's trainer draws at most this many levels (the loop also stops at a 1-cell grid).
MAX_LEVELS = 10


def annealed_strength(strength: float, timesteps: Tensor, num_train_timesteps: int) -> Tensor:
    """Per-sample strength of annealed noise: ``strength * t / T`` as a (B, 1, 1, 1) float
    tensor (``t`` the training timesteps (B,), ``T`` the scheduler's number of them)."""
    return (strength * timesteps.float() / num_train_timesteps).view(-1, 1, 1, 1)


def multi_res_noise(
    shape: tuple[int, int, int, int],
    strength: float | Tensor,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Multi-resolution noise of ``shape`` (B, C, H, W), standardised to unit std.

    With ``g_i`` standard normal noise drawn at (B, C, H_i, W_i) and ``up`` a bilinear resize to
    (H, W) (half-pixel centres, as ``torch.nn.Upsample``)::

        noise = g + sum_i up(g_i) * strength ** i        i = 0, 1, ...
        H_0, W_0 = H, W;  H_i = max(1, int(H_{i-1} / r_i ** i))   (the same for W)

    where ``r_i`` is drawn uniformly from [2, 4) per level (one for the whole batch) and the sum
    stops after the first level whose grid has an edge of 1 cell (at most ten levels). Level
    0 is a second full-size draw at weight 1 (``strength ** 0``), as in Marigold's code. The sum
    is divided by its standard deviation over the whole tensor (the micro-batch together, as
    Marigold does), so every batch has std 1 but a sample's own std depends on its neighbours'
    strengths.

    The draws come from ``generator`` in this order: ``g``, then per level ``r_i`` and ``g_i``;
    the tests replay them.

    Args:
        shape: (B, C, H, W) of the noise (the depth latent's).
        strength: the weight base, a float or a (B, 1, 1, 1) tensor (per sample, e.g.
            :func:`annealed_strength`); Marigold's default is 0.9.
        generator: the random source (on ``device``); None: torch's global one.
        device, dtype: of the result.

    Returns:
        (B, C, H, W) tensor of ``dtype`` on ``device``.
    """
    b, c, height, width = shape
    noise = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    if isinstance(strength, Tensor):
        strength = strength.to(noise.device, torch.float32).reshape(-1, 1, 1, 1)
    h, w = height, width
    for i in range(MAX_LEVELS):
        r = torch.rand(1, generator=generator, device=device) * 2 + 2
        # Marigold divides the previous level's size by r ** i (not r): the grid shrinks fast.
        h, w = max(1, int(h / (r**i))), max(1, int(w / (r**i)))
        level = torch.randn((b, c, h, w), generator=generator, device=device)
        up = F.interpolate(level, size=(height, width), mode="bilinear", align_corners=False)
        noise = noise + up * strength**i
        if h == 1 or w == 1:
            break
    return (noise / noise.std()).to(dtype)
