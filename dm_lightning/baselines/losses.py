"""The baselines' training losses (docs/method.md §8), one function each: E2E-FT's
affine-invariant L1 and Lotus-D's two latent MSE terms. They compute in fp32 or better
(:func:`~dm_lightning.losses.at_least_fp32`) under any mixed precision."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dm_lightning.losses import at_least_fp32, masked_latent_mse

# A prediction whose variance on the valid pixels is below this fraction of its mean square is
# constant up to rounding (float32 leaves ~1e-14 there): no scale can be fitted to it.
DEGENERATE_VARIANCE = 1e-10


def least_squares_scale_shift(pred: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per image, the ``scale, shift`` minimising ``sum_valid (scale p + shift - t)^2``, in
    closed form and differentiable (docs/method.md §8.1, Eq. 8.3).

    Computed centred, ``scale = cov(p, t) / var(p)``, ``shift = mean t - scale mean p``
    (the normal equations' solution, free of the cancellation of the raw-sum form in fp32).
    A constant prediction (or one valid pixel) keeps scale 1 and shifts by the mean
    difference, the rule of the evaluation's fit
    (:func:`dm_lightning.evaluation.alignment.fit_scale_shift`);
    an image without a valid pixel gets (1, 0).

    Args:
        pred, target: (B, 1, H, W).
        valid: (B, 1, H, W) bool.

    Returns:
        ``scale, shift``, each (B,), in fp32 or better.
    """
    pred, target = at_least_fp32(pred), at_least_fp32(target)
    mask = valid.to(pred.dtype)
    dims = tuple(range(1, pred.ndim))
    count = mask.sum(dims).clamp(min=1.0)
    shape = (-1,) + (1,) * (pred.ndim - 1)
    p_mean = (mask * pred).sum(dims) / count
    t_mean = (mask * target).sum(dims) / count
    dp = mask * (pred - p_mean.view(shape))
    dt = mask * (target - t_mean.view(shape))
    var = (dp * dp).sum(dims)
    solved = var > DEGENERATE_VARIANCE * (mask * pred * pred).sum(dims)
    # A safe denominator: a where() over an inf branch would still send NaN gradients.
    scale = torch.where(solved, (dp * dt).sum(dims) / torch.where(solved, var, 1.0), 1.0)
    return scale, t_mean - scale * p_mean


def affine_invariant_l1(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """E2E-FT's loss: the L1 error after the per-image least-squares scale and shift of the
    prediction to the target (:func:`least_squares_scale_shift`, gradients through the fit),
    averaged over the valid pixels of the batch (docs/method.md §8.1, Eq. 8.4).

    Args:
        pred: (B, 1, H, W) decoded depth, nominally in [-1, 1].
        target: (B, 1, H, W) normalised target in [-1, 1].
        valid: (B, 1, H, W) bool.

    Returns:
        Scalar; 0 (with gradient) when no pixel is valid.
    """
    pred, target = at_least_fp32(pred), at_least_fp32(target)
    scale, shift = least_squares_scale_shift(pred, target, valid)
    shape = (-1,) + (1,) * (pred.ndim - 1)
    error = (scale.view(shape) * pred + shift.view(shape) - target).abs()
    mask = valid.to(error.dtype)
    return (error * mask).sum() / mask.sum().clamp(min=1.0)


def lotus_d_loss(
    pred: Tensor, target: Tensor, pixel_valid: Tensor, factor: int, preserver_weight: float
) -> dict[str, Tensor]:
    """Lotus-D's loss (docs/method.md §8.2, Eq. 8.6): the masked latent MSE of the depth
    prediction plus ``preserver_weight`` x the MSE of the detail preserver's RGB
    reconstruction (every latent element: the RGB latent has no invalid pixel).

    Args:
        pred, target: (B, 4, h, w) depth latents, or (2B, 4, h, w): the B depth latents, then
            the B reconstructed RGB latents and their targets (the doubled batch).
        pixel_valid: (B, 1, h * factor, w * factor) bool validity of the depth.
        factor: the VAE's downsampling factor.
        preserver_weight: weight of the RGB term (used only with a doubled batch).

    Returns:
        ``latent_mse``, with a doubled batch ``rgb_mse``, and ``loss`` (the weighted sum).
    """
    b = pixel_valid.shape[0]
    depth = masked_latent_mse(pred[:b], target[:b], pixel_valid, factor)
    parts = {"latent_mse": depth, "loss": depth}
    if pred.shape[0] == 2 * b:
        rgb = F.mse_loss(at_least_fp32(pred[b:]), at_least_fp32(target[b:]))
        parts.update(rgb_mse=rgb, loss=depth + preserver_weight * rgb)
    return parts
