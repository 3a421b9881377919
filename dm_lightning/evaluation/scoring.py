"""Scoring of the evaluation protocol (docs/method.md §6): align, clip and compute the eight
metrics of each image of a batch. Pure tensor math in float64; the torchmetrics classes that
sum these over images and ranks are :mod:`dm_lightning.evaluation.metrics`.

Order of operations per image, exactly as docs/method.md §6 states: least-squares scale and
shift of the prediction to the ground truth in the alignment space
(:mod:`dm_lightning.evaluation.alignment`), fitted on the valid pixels with finite GT > 0 and,
in the sqrt-disparity and disparity spaces, prediction > 0 (as the released evaluation; see
``DepthTarget.fit_needs_positive_prediction``); back to depth, clip to the dataset range and to
>= 1e-6, then metrics on all valid pixels; the reported value is the plain mean over images.

Two implementations of that protocol behind :func:`evaluate_batch`: on the CPU it works image by
image on the gathered valid pixels (fastest there, and the numbers the project publishes); on
any other device it scores the whole batch at once with masks and never waits on the host (the
dense path; :data:`evaluate_batch_dense` takes it on any device).
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch
from torch import Tensor

from dm_lightning.evaluation.alignment import (
    check_shapes,
    drop_channel,
    fit_image,
    fit_scale_shift_dense,
    row_dot,
    valid_index,
    valid_pixels,
)
from dm_lightning.targets import DEFAULT_SPACE, DepthTarget, get_target

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")
DEPTH_FLOOR = 1e-6
Bound = Tensor | float  # a depth range bound in metres: a number, or a tensor of 1 or B values


def _metrics_of_pixels(depth: Tensor, gt: Tensor) -> Tensor:
    """The 8 metrics (in METRIC_NAMES order, a (8,) float64 tensor) of 1-D float64 predicted /
    GT depth of the valid pixels of one image; all 0 for no pixel. Sums are dot products and
    counts (single passes without temporaries), which is where the speed over the
    straightforward form comes from. ``max(d/g, g/d) < t`` is counted as ``1/t < d/g < t``,
    the same strict condition."""
    n = depth.numel()
    if n == 0:
        return depth.new_zeros(len(METRIC_NAMES))
    # Each temporary is reused in place once its last reader is done (fewer 2 MB allocations).
    diff = depth - gt
    rel = diff / gt
    sq_rel, rmse2 = torch.dot(diff, rel), torch.dot(diff, diff)
    abs_rel = rel.abs_().sum()
    ratio = torch.div(depth, gt, out=diff)
    counts = _counts_within(ratio)
    log_ratio = ratio.log_()
    rmse_log2 = torch.dot(log_ratio, log_ratio)
    log10 = log_ratio.abs_().sum() / math.log(10.0)
    sums = torch.stack([abs_rel, sq_rel, rmse2, rmse_log2, log10])
    out = torch.cat([sums, counts]) / n
    out[2:4] = out[2:4].sqrt()
    return out


def _counts_within(ratio: Tensor) -> Tensor:
    """(3,) float64 numbers of ``1/1.25^k < ratio < 1.25^k`` for k = 1, 2, 3."""
    bounds = [(1.0 / 1.25**k, 1.25**k) for k in (1, 2, 3)]
    if ratio.device.type == "cpu":
        # torch's CPU comparison kernels are ~6x slower than numpy's on float64 vectors.
        r = ratio.numpy()
        counts = [np.count_nonzero((r > low) & (r < high)) for low, high in bounds]
        return torch.tensor(counts, dtype=torch.float64)
    return torch.stack(
        [torch.count_nonzero((ratio > low) & (ratio < high)) for low, high in bounds]
    ).double()


def _stack_rows(rows: list[Tensor], like: Tensor) -> dict[str, Tensor]:
    if not rows:
        return {name: like.new_zeros((0,), dtype=torch.float64) for name in METRIC_NAMES}
    return dict(zip(METRIC_NAMES, torch.stack(rows).T))


def per_image_metrics(depth: Tensor, gt: Tensor, valid: Tensor) -> dict[str, Tensor]:
    """The 8 standard metrics of each image, computed on its valid pixels.

    Args:
        depth: (B, H, W) predicted metric depth (> 0).
        gt: (B, H, W) ground truth, metres.
        valid: (B, H, W) bool.

    Returns:
        name -> (B,) float64; delta thresholds are strict (``max(d/g, g/d) < 1.25^k``); images
        without a valid pixel get 0.
    """
    check_shapes(depth, gt, valid)
    rows = []
    for i in range(depth.shape[0]):
        index = valid_index(valid[i])
        rows.append(_metrics_of_pixels(valid_pixels(depth[i], index), valid_pixels(gt[i], index)))
    return _stack_rows(rows, depth)


#: What scoring a batch returns: name -> (B,) float64 per-image metrics (``METRIC_NAMES``, on
#: the prediction's device; all 0 for an image without a valid pixel) and (B,) bool, which
#: images had at least one valid pixel.
Scores = tuple[dict[str, Tensor], Tensor]


def evaluate_batch(
    pred: Tensor,
    gt: Tensor,
    valid: Tensor,
    min_depth: Bound,
    max_depth: Bound,
    space: str = DEFAULT_SPACE,
    dense: bool | None = None,
) -> Scores:
    """Align, clip and score a batch.

    Two paths, one protocol: image by image on the gathered valid pixels
    (:func:`_score_per_image`: the fastest on the CPU, and the numbers the project publishes,
    but it waits on the host several times per image), or the whole batch at once with masks
    (:func:`_score_dense`: no device->host sync, for accelerators). They give the same outputs
    to rounding.

    Args:
        pred: (B, 1, H, W) or (B, H, W) relative prediction (any float dtype).
        gt: same shape, metres.
        valid: same shape, bool (range, crop and dataset masks already applied). Valid
            pixels are fitted only where the GT is finite and > 0 (and, in the sqrt-disparity
            and disparity spaces, the prediction > 0, as the released evaluation), but all
            are scored: a valid pixel with GT 0 or inf makes its image's metrics inf/NaN.
        min_depth, max_depth: dataset range, Python numbers or tensors of 1 or B values (inf
            allowed; on any device: the dense path copies a CPU tensor over without blocking).
        space: alignment space, see
            :func:`~dm_lightning.evaluation.alignment.align_prediction`.
        dense: the path: None (default) per image on the CPU and dense on any other device;
            True dense on any device (:data:`evaluate_batch_dense`); False per image.

    Returns:
        :data:`Scores`: (per-image metrics, (B,) bool: which images had a valid pixel).
    """
    if dense is None:
        dense = pred.device.type != "cpu"
    pred, gt, valid = drop_channel(pred, gt, valid)
    check_shapes(pred, gt, valid)
    target = get_target(space)
    score = _score_dense if dense else _score_per_image
    return score(pred, gt, valid, min_depth, max_depth, target)


#: :func:`evaluate_batch` on the dense path on any device, the CPU included (for testing: there
#: the per-image path is 4-6x faster).
evaluate_batch_dense = partial(evaluate_batch, dense=True)


def _score_per_image(
    pred: Tensor, gt: Tensor, valid: Tensor, min_depth: Bound, max_depth: Bound, target: DepthTarget
) -> Scores:
    """:func:`evaluate_batch` image by image, on the valid pixels only (gathered once): the
    fit, the inverse, the clips and the metrics are then a few passes over 1-D float64
    vectors, with no masked full-image temporaries. ``pred``, ``gt``, ``valid``: (B, H, W)."""
    b = pred.shape[0]
    # Python floats: clamp with scalar bounds is several times faster than with tensor bounds.
    lo = torch.as_tensor(min_depth, dtype=torch.float64).reshape(-1).expand(b).tolist()
    hi = torch.as_tensor(max_depth, dtype=torch.float64).reshape(-1).expand(b).tolist()
    rows, counts = [], []
    for i in range(b):
        p, g, scale, shift = fit_image(pred[i], gt[i], valid[i], target)
        counts.append(p.numel())
        depth = target.inverse(p.mul(scale).add_(shift))
        # then one clamp equals range clip + floor, in the order of docs/method.md §6
        if hi[i] >= DEPTH_FLOOR:
            depth = depth.clamp_(min=max(lo[i], DEPTH_FLOOR), max=hi[i])
        else:
            depth = depth.clamp_(min=lo[i], max=hi[i]).clamp_(min=DEPTH_FLOOR)
        rows.append(_metrics_of_pixels(depth, g))
    has_valid = torch.tensor(counts, device=pred.device) > 0
    return _stack_rows(rows, pred), has_valid


# ---------------------------------------------------------------------------------------------
# Dense path: the whole batch at once, for accelerators (no device->host sync)
# ---------------------------------------------------------------------------------------------


def _dense_bounds(value: Bound, b: int, device: torch.device) -> Tensor:
    """(B,) float64 range bound (metres, inf allowed) on ``device`` from a Python number or a
    tensor of 1 or B values on any device. A CPU tensor is copied with ``non_blocking=True``:
    a host->device copy, which does not make the host wait for the device's queued work."""
    if isinstance(value, (int, float)):
        # a fill kernel, not a copy: nothing to wait for
        return torch.full((b,), float(value), dtype=torch.float64, device=device)
    tensor = torch.as_tensor(value)
    flat = tensor.reshape(-1)
    if flat.numel() not in (1, b):  # shape metadata only: no sync
        raise ValueError(
            f"min_depth / max_depth must be a number or hold 1 or {b} (batch size) values, "
            f"got shape {tuple(tensor.shape)}"
        )
    return flat.to(device=device, non_blocking=True).double().expand(b)


def _clip_dense(depth: Tensor, min_depth: Tensor, max_depth: Tensor) -> Tensor:
    """Clip (B, N) float64 depth in place to each image's range, then to >= 1e-6 (metres),
    with (B,) float64 bounds (inf allowed): docs/method.md §6's order, the same values as
    :func:`_score_per_image`'s two branches. Where ``hi >= 1e-6`` that path clamps once
    to [max(lo, 1e-6), hi]; clamping to [lo, hi] and then flooring gives the same, since the
    floor only raises values below 1e-6 <= hi to 1e-6, which the single clamp does too (and a
    range with lo > hi gives hi either way). NaN depth stays NaN in both."""
    depth = depth.clamp_(min=min_depth[:, None], max=max_depth[:, None])
    return depth.clamp_(min=DEPTH_FLOOR)


def _metrics_dense(depth: Tensor, gt: Tensor, valid: Tensor) -> Tensor:
    """(B, 8) float64 metrics (METRIC_NAMES order) of :func:`_metrics_of_pixels`, per row of
    (B, N) float64 predicted / GT depth (metres) on the True pixels of (B, N) bool ``valid``;
    rows without a valid pixel are all 0.

    Pixels out of the mask are scored as a 1 m prediction of 1 m GT: zero error, log ratio 0,
    so they add exact zeros to every sum whatever their GT (0, inf, NaN) was, while a valid
    pixel's inf/NaN is kept, as on the CPU path; only the delta counts need the mask itself
    (ratio 1 is within every threshold).
    """
    n = valid.sum(dim=1, dtype=torch.float64)
    d = torch.where(valid, depth, 1.0)
    g = torch.where(valid, gt, 1.0)
    # The same operations, in the same order, as _metrics_of_pixels, on rows.
    diff = d - g
    rel = diff / g
    sq_rel, rmse2 = row_dot(diff, rel), row_dot(diff, diff)
    abs_rel = rel.abs_().sum(dim=1)
    ratio = torch.div(d, g, out=diff)
    counts = [
        ((ratio > 1.0 / 1.25**k) & (ratio < 1.25**k) & valid).sum(dim=1, dtype=torch.float64)
        for k in (1, 2, 3)
    ]
    log_ratio = ratio.log_()
    rmse_log2 = row_dot(log_ratio, log_ratio)
    log10 = log_ratio.abs_().sum(dim=1) / math.log(10.0)
    sums = torch.stack([abs_rel, sq_rel, rmse2, rmse_log2, log10, *counts], dim=1)
    # Rows without a valid pixel have all sums exactly 0: 0 / 1 keeps them 0.
    out = sums / n.clamp(min=1.0)[:, None]
    out[:, 2:4] = out[:, 2:4].sqrt()
    return out


def _score_dense(
    pred: Tensor, gt: Tensor, valid: Tensor, min_depth: Bound, max_depth: Bound, target: DepthTarget
) -> Scores:
    """:func:`evaluate_batch` for accelerators: the whole (B, H, W) batch at once, with no
    device->host sync (no Python loop over images, ``.tolist()``, ``.item()``, ``bool()``,
    ``nonzero`` or boolean indexing), so a GPU never waits on the host while scoring.

    The same outputs as :func:`_score_per_image`, to rounding: the sums are grouped
    differently (relative differences up to ~1e-12 seen at 480x640; the inf/NaN metrics of
    images with a valid GT of 0 or inf are the same). Each image is a (H*W,) row of a (B, H*W)
    float64 batch: the fit uses masked sums and the degenerate rule through ``torch.where``,
    the metrics masked sums over the valid pixels. Works on any device, the CPU included.

    Memory: up to about seven (B, H*W) float64 temporaries alive at a time, 8 bytes x B x H x W
    each (~20 MB at B = 8, 480x640, so ~140 MB at the peak): meant for eval batches of 1-8 at
    that size; score larger batches in chunks.
    """
    b, device = pred.shape[0], pred.device
    pixels = math.prod(pred.shape[1:])  # not reshape(b, -1): that fails for b = 0
    # Metrics are not differentiable. .double() may return the caller's float64 tensor itself,
    # so nothing below writes into p or g.
    p = pred.detach().reshape(b, pixels).double()
    g = gt.detach().reshape(b, pixels).double()
    mask = valid.reshape(b, pixels).bool()
    scale, shift = fit_scale_shift_dense(p, g, mask, target)
    depth = target.inverse(p * scale[:, None] + shift[:, None])
    depth = _clip_dense(
        depth, _dense_bounds(min_depth, b, device), _dense_bounds(max_depth, b, device)
    )
    out = _metrics_dense(depth, g, mask)
    has_valid = mask.any(dim=1)
    return dict(zip(METRIC_NAMES, out.T)), has_valid
