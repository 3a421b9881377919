"""DepthMaster's training losses (docs/method.md §3 and §4), one small function each."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def at_least_fp32(x: Tensor) -> Tensor:
    """``x`` in fp32 if it is in a lower precision (bf16 / fp16 from an autocast forward),
    else unchanged: the losses compute in fp32 or better under any mixed precision, since
    bf16's 8-bit mantissa would round away the small errors of a converging model."""
    return x.float() if x.is_floating_point() and x.element_size() < 4 else x


def latent_valid_mask(valid: Tensor, factor: int) -> Tensor:
    """Latent-resolution validity: a latent cell is valid only if all its pixels are.

    ``latent_valid = 1 - maxpool_{factor x factor}(1 - valid)``.

    Args:
        valid: (B, 1, H, W) bool pixel mask; H and W divisible by ``factor``.
        factor: the VAE's spatial downsampling factor (8 for SD-2).

    Returns:
        (B, 1, H / factor, W / factor) bool.
    """
    invalid = (~valid).float()
    return F.max_pool2d(invalid, kernel_size=factor, stride=factor) < 0.5


def masked_mse(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean squared error over valid elements: ``sum(m (p - t)^2) / sum(m)``.

    Args:
        pred, target: (B, C, H, W).
        valid: (B, 1, H, W) bool, broadcast over the C channels (so every channel of a valid
            position counts once).

    Returns:
        Scalar; 0 (with gradient) when no element is valid.
    """
    pred, target = at_least_fp32(pred), at_least_fp32(target)
    mask = valid.expand_as(pred).to(pred.dtype)
    return ((pred - target).square() * mask).sum() / mask.sum().clamp(min=1.0)


def masked_latent_mse(pred: Tensor, target: Tensor, pixel_valid: Tensor, factor: int) -> Tensor:
    """Stage-1 loss: :func:`masked_mse` on latents with :func:`latent_valid_mask`.

    Args:
        pred, target: (B, 4, h, w) latents.
        pixel_valid: (B, 1, h * factor, w * factor) bool.
        factor: VAE downsampling factor.
    """
    return masked_mse(pred, target, latent_valid_mask(pixel_valid, factor))


def inverted_huber(error: Tensor, delta: float = 0.2) -> Tensor:
    """Element-wise inverted Huber (berHu): ``delta |e|`` if ``|e| <= delta`` else
    ``(e^2 + delta^2) / 2`` (continuous at ``|e| = delta``)."""
    abs_e = error.abs()
    return torch.where(abs_e <= delta, delta * abs_e, (error.square() + delta**2) / 2.0)


def directional_gradients(x: Tensor) -> Tensor:
    """Differences along x, y, 45 and 135 degrees on the (H-1) x (W-1) grid.

    Every difference lives in one 2x2 cell and is anchored at the cell's bottom-right pixel
    ``x[..., 1:, 1:]``, as the released code takes them (the anchor decides which rows and
    columns each direction sees, so it changes the loss value):
    ``dx = x[..., 1:, 1:] - x[..., 1:, :-1]``, ``dy = x[..., 1:, 1:] - x[..., :-1, 1:]``,
    ``d45 = x[..., 1:, 1:] - x[..., :-1, :-1]``, ``d135 = x[..., 1:, :-1] - x[..., :-1, 1:]``.
    For output pixel (i, j), i.e. the cell with rows i, i+1 and columns j, j+1:
    ``dx = x[i+1, j+1] - x[i+1, j]``, ``dy = x[i+1, j+1] - x[i, j+1]``,
    ``d45 = x[i+1, j+1] - x[i, j]``, ``d135 = x[i+1, j] - x[i, j+1]``.
    (Signs are immaterial to :func:`gradient_loss`, which applies the symmetric inverted Huber
    to prediction-minus-GT differences.)

    Args:
        x: (B, C, H, W).

    Returns:
        (4, B, C, H-1, W-1), in the order dx, dy, d45, d135.
    """
    anchor = x[..., 1:, 1:]  # bottom-right pixel of each 2x2 cell, as the released code
    return torch.stack(
        [
            anchor - x[..., 1:, :-1],
            anchor - x[..., :-1, 1:],
            anchor - x[..., :-1, :-1],
            x[..., 1:, :-1] - x[..., :-1, 1:],
        ]
    )


def gradient_loss(pred: Tensor, target: Tensor, valid: Tensor, delta: float = 0.2) -> Tensor:
    """Weighted multi-directional gradient loss L_h (docs/method.md §4).

    Invalid pixels of both maps are zeroed, the four directional differences of
    :func:`directional_gradients` are taken, and the inverted Huber of (prediction - GT)
    differences is averaged over all elements.

    Args:
        pred, target: (B, 1, H, W) normalised depth in [-1, 1].
        valid: (B, 1, H, W) bool.
        delta: inverted-Huber threshold.
    """
    pred, target = at_least_fp32(pred), at_least_fp32(target)
    mask = valid.to(pred.dtype)
    error = directional_gradients(pred * mask) - directional_gradients(target * mask)
    return inverted_huber(error, delta).mean()


def feature_alignment_kl(unet_tokens: Tensor, encoder_tokens: Tensor) -> Tensor:
    """Paper's L_fa: ``KL(softmax(enc) || softmax(unet))`` over the feature dimension,
    averaged element-wise over B x N x D.

    Args:
        unet_tokens: (B, N, D) projected U-Net features.
        encoder_tokens: (B, N, D) frozen encoder features.
    """
    log_p_unet = F.log_softmax(unet_tokens.float(), dim=-1)
    log_p_enc = F.log_softmax(encoder_tokens.float(), dim=-1)
    return (log_p_enc.exp() * (log_p_enc - log_p_unet)).mean()


def feature_alignment_cosine(unet_tokens: Tensor, encoder_tokens: Tensor) -> Tensor:
    """Ablation option: ``1 - cos(unet, enc)`` per token, averaged over B x N."""
    return 1.0 - F.cosine_similarity(unet_tokens.float(), encoder_tokens.float(), dim=-1).mean()
