"""The alignment of the evaluation protocol (docs/method.md §6): the per-image least-squares
scale and shift of a relative prediction to the ground truth in an alignment space, and the
pixels it is fitted on.

The fit uses the valid pixels with finite GT > 0 and, in the sqrt-disparity and disparity
spaces, prediction > 0 (as the released evaluation; see
``DepthTarget.fit_needs_positive_prediction``). Two forms of the one fit: image by image on the
gathered valid pixels (:func:`fit_image`, for the CPU path of
:func:`~dm_lightning.evaluation.scoring.evaluate_batch`), and for a whole batch at once from
masked sums (:func:`fit_scale_shift_dense`, for the accelerator path). Pure torch, float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from dm_lightning.targets import DEFAULT_SPACE, DepthTarget, get_target


def fit_scale_shift(pred: Tensor, target_value: Tensor) -> tuple[float, float]:
    """Least-squares ``scale, shift`` minimising ``sum((scale p + shift - g)^2)``.

    Args:
        pred: (N,) float64 predictions of the fitted pixels.
        target_value: (N,) float64 ground truth in the alignment space, same pixels.

    Returns:
        (scale, shift) as Python floats (one device sync for the four sums). A degenerate
        system (constant prediction, one pixel) keeps scale 1 and shifts by the mean
        difference, i.e. maps a constant prediction to the mean target value; no pixel at all
        gives (1, 0).
    """
    n = pred.numel()
    sums = torch.stack(
        [pred.sum(), target_value.sum(), torch.dot(pred, pred), torch.dot(pred, target_value)]
    )
    sp, sg, spp, spg = sums.tolist()
    # det = n * sum((p - mean p)^2) >= 0; relative to n * sum(p^2) it is rounding noise
    # (~n * 1e-16) for a constant prediction, which must not be solved as if it were signal.
    det = n * spp - sp * sp
    if det > 1e-9 * n * spp:
        return (n * spg - sp * sg) / det, (spp * sg - sp * spg) / det
    return 1.0, (sg - sp) / max(n, 1)


def _fit_pixels(pred: Tensor, gt: Tensor, require_positive_pred: bool) -> tuple[Tensor, Tensor]:
    """The pixels of 1-D valid ``pred`` / ``gt`` (float64) to fit on: finite, positive ground
    truth and, if ``require_positive_pred`` (the disparity spaces, as the released
    evaluation), prediction > 0. Usually that is all of them, and the copy is skipped then."""
    if gt.numel() == 0:
        return pred, gt
    low, high = torch.aminmax(gt)
    every = (low > 0) & (high < math.inf)  # NaN fails both comparisons too
    if require_positive_pred:
        every &= pred.amin() > 0  # amin propagates NaN, which fails too
    if bool(every):  # one device sync
        return pred, gt
    fit = torch.isfinite(gt) & (gt > 0)
    if require_positive_pred:
        fit &= pred > 0
    return pred[fit], gt[fit]


def valid_index(valid: Tensor) -> Tensor:
    """Flat indices of the True pixels of one (H, W) mask."""
    flat = valid.reshape(-1)
    if flat.device.type == "cpu":
        # torch's CPU nonzero takes ~2 ms on a 480x640 mask, numpy's ~0.3 ms.
        return torch.from_numpy(np.flatnonzero(flat.numpy()))
    return flat.nonzero().squeeze(1)


def valid_pixels(image: Tensor, index: Tensor) -> Tensor:
    """1-D float64 copy of the pixels of one (H, W) image at flat ``index`` (index_select
    is one pass, and several times faster than boolean indexing on the CPU)."""
    # Metrics are not differentiable; detaching also lets the CPU path use numpy views.
    return image.detach().reshape(-1).index_select(0, index).double()


def check_shapes(pred: Tensor, gt: Tensor, valid: Tensor) -> None:
    """Pixels are picked by flat index, so mismatched shapes would silently pair the wrong
    pixels: refuse them."""
    if not pred.shape == gt.shape == valid.shape or pred.ndim < 2:
        raise ValueError(
            f"pred, gt and valid must share one (B, H, W) shape (or (B, 1, H, W)), got "
            f"{tuple(pred.shape)}, {tuple(gt.shape)}, {tuple(valid.shape)}"
        )


def drop_channel(*images: Tensor) -> tuple[Tensor, ...]:
    """(B, 1, H, W) tensors as (B, H, W); any other shape unchanged."""
    return tuple(x[:, 0] if x.ndim == 4 and x.shape[1] == 1 else x for x in images)


def fit_image(
    pred: Tensor, gt: Tensor, valid: Tensor, target: DepthTarget
) -> tuple[Tensor, Tensor, float, float]:
    """One (H, W) image: its valid pixels as 1-D float64 prediction and GT (all of them, for
    the metrics), and the scale and shift fitted in ``target``'s space on those of them with
    finite GT > 0 and, if ``target.fit_needs_positive_prediction``, prediction > 0."""
    index = valid_index(valid)
    p, g = valid_pixels(pred, index), valid_pixels(gt, index)
    p_fit, g_fit = _fit_pixels(p, g, target.fit_needs_positive_prediction)
    return p, g, *fit_scale_shift(p_fit, target.forward(g_fit))


def align_prediction(pred: Tensor, gt: Tensor, valid: Tensor, space: str = DEFAULT_SPACE) -> Tensor:
    """Per-image least-squares scale/shift alignment, returned as depth (float64).

    Args:
        pred: (B, H, W) relative prediction (e.g. in [0, 1]).
        gt: (B, H, W) ground-truth depth, metres.
        valid: (B, H, W) bool, valid ground-truth pixels.
        space: ``sqrt_disparity`` (DepthMaster: fit ``s p + t ~ sqrt(1/d)``, depth =
            ``1 / max((s p + t)^2, 1e-3)``), ``disparity`` (fit to ``1/d``, depth =
            ``1 / max(s p + t, 1e-3)``) or ``depth`` (fit to ``d``). The fit uses the valid
            pixels with finite GT > 0; in the two disparity spaces also only those with
            ``p > 0``, as the released evaluation (the depth-space fit keeps them).

    Returns:
        (B, H, W) float64 aligned depth of every pixel (not yet range-clipped); images
        without a pixel to fit get the plain prediction mapped through the space's inverse.
    """
    check_shapes(pred, gt, valid)
    target = get_target(space)
    out = torch.empty(pred.shape, dtype=torch.float64, device=pred.device)
    for i in range(pred.shape[0]):
        _, _, scale, shift = fit_image(pred[i], gt[i], valid[i], target)
        out[i] = target.inverse(scale * pred[i].double() + shift)
    return out


def fit_alignment(
    pred: Tensor, gt: Tensor, valid: Tensor, space: str = DEFAULT_SPACE
) -> tuple[float, float, Tensor]:
    """The scale and shift evaluation fits to one image, for callers that need the numbers
    themselves (:mod:`dm_lightning.inference.metric_depth` turns relative predictions into metres).

    Args:
        pred: relative prediction, any shape (e.g. (H, W), or (N,) values at known points).
        gt: depth in metres, same shape.
        valid: bool, same shape; the fit then keeps, like evaluation, only the pixels with
            finite GT > 0 and, in the two disparity spaces, prediction > 0.
        space: alignment space, see :func:`align_prediction`.

    Returns:
        ``(scale, shift, fitted)``: ``scale * pred + shift`` approximates the GT in ``space``
        (same numbers as :func:`align_prediction`, same degenerate rule as
        :func:`fit_scale_shift`); ``fitted`` holds the (N,) float64 predictions the fit used.
    """
    if not pred.shape == gt.shape == valid.shape:
        raise ValueError(
            f"pred, gt and valid must share one shape, got "
            f"{tuple(pred.shape)}, {tuple(gt.shape)}, {tuple(valid.shape)}"
        )
    target = get_target(space)
    index = valid_index(valid)
    p_fit, g_fit = _fit_pixels(
        valid_pixels(pred, index),
        valid_pixels(gt, index),
        target.fit_needs_positive_prediction,
    )
    return (*fit_scale_shift(p_fit, target.forward(g_fit)), p_fit)


def row_dot(a: Tensor, b: Tensor) -> Tensor:
    """(B,) row-wise dot products of two (B, N) float64 tensors."""
    return torch.linalg.vecdot(a, b)


def fit_scale_shift_dense(
    p: Tensor, g: Tensor, valid: Tensor, target: DepthTarget
) -> tuple[Tensor, Tensor]:
    """Per-image ``scale, shift``, each (B,) float64, of :func:`fit_scale_shift` on the pixels
    :func:`_fit_pixels` picks (valid, finite GT > 0 and, if
    ``target.fit_needs_positive_prediction``, prediction > 0), from masked sums of the (B, N)
    float64 prediction ``p`` and GT depth ``g`` (metres) and (B, N) bool ``valid``.

    The degenerate rule is the same, branch for branch, as ``torch.where``: solved where
    ``det > 1e-9 n spp``, else scale 1 and shift the mean difference; no fit pixel gives (1, 0).
    """
    fit = valid & torch.isfinite(g) & (g > 0)
    if target.fit_needs_positive_prediction:
        fit &= p > 0  # NaN fails too, as in _fit_pixels
    # Pixels out of the fit are 0 in every sum. Their GT (0, inf, NaN) is swapped for 1 before
    # the transform and their prediction zeroed, so that no inf/NaN of theirs reaches a sum
    # (0 * inf would); a NaN prediction of a fitted pixel is kept, as the CPU path keeps it.
    value = torch.where(fit, target.forward(torch.where(fit, g, 1.0)), 0.0)
    pf = torch.where(fit, p, 0.0)
    n = fit.sum(dim=1, dtype=torch.float64)
    sp, sg = pf.sum(dim=1), value.sum(dim=1)
    spp, spg = row_dot(pf, pf), row_dot(pf, value)
    det = n * spp - sp * sp
    # The rejected branch may divide by a zero det: torch.where discards its inf/NaN.
    solved = det > 1e-9 * n * spp
    scale = torch.where(solved, (n * spg - sp * sg) / det, 1.0)
    shift = torch.where(solved, (spp * sg - sp * spg) / det, (sg - sp) / n.clamp(min=1.0))
    return scale, shift
