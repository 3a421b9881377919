"""Affine-invariant depth evaluation (docs/method.md §6).

Functional core (pure tensor math, float64) plus a thin torchmetrics ``Metric`` that keeps
sums and an image count with ``dist_reduce_fx="sum"``, so N ranks give the one-process result.

Order of operations per image, exactly as docs/method.md §6 states: least-squares scale and
shift of the prediction to the ground truth in the alignment space, fitted on the valid pixels
with finite GT > 0 and, in the sqrt-disparity and disparity spaces, prediction > 0 (as the
released evaluation; see ``DepthTarget.fit_needs_positive_prediction``); back to depth, clip to the
dataset range and to >= 1e-6, then metrics on all valid pixels; the reported value is the
plain mean over images.

Two implementations of that protocol: on the CPU, :func:`evaluate_batch` works image by image on
the gathered valid pixels (fastest there, and the numbers the project publishes); on any other
device it calls :func:`evaluate_batch_dense`, which scores the whole batch at once with masks
and never waits on the host.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from dm_lightning.targets import DepthTarget, check_alignment_space, get_target

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")
DEPTH_FLOOR = 1e-6


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


def _valid_index(valid: Tensor) -> Tensor:
    """Flat indices of the True pixels of one (H, W) mask."""
    flat = valid.reshape(-1)
    if flat.device.type == "cpu":
        # torch's CPU nonzero takes ~2 ms on a 480x640 mask, numpy's ~0.3 ms.
        return torch.from_numpy(np.flatnonzero(flat.numpy()))
    return flat.nonzero().squeeze(1)


def _valid_pixels(image: Tensor, index: Tensor) -> Tensor:
    """1-D float64 copy of the pixels of one (H, W) image at flat ``index`` (index_select
    is one pass, and several times faster than boolean indexing on the CPU)."""
    # Metrics are not differentiable; detaching also lets the CPU path use numpy views.
    return image.detach().reshape(-1).index_select(0, index).double()


def _check_shapes(pred: Tensor, gt: Tensor, valid: Tensor) -> None:
    """Pixels are picked by flat index, so mismatched shapes would silently pair the wrong
    pixels: refuse them."""
    if not pred.shape == gt.shape == valid.shape or pred.ndim < 2:
        raise ValueError(
            f"pred, gt and valid must share one (B, H, W) shape (or (B, 1, H, W)), got "
            f"{tuple(pred.shape)}, {tuple(gt.shape)}, {tuple(valid.shape)}"
        )


def _drop_channel(*images: Tensor) -> tuple[Tensor, ...]:
    """(B, 1, H, W) tensors as (B, H, W); any other shape unchanged."""
    return tuple(x[:, 0] if x.ndim == 4 and x.shape[1] == 1 else x for x in images)


def _fit_image(
    pred: Tensor, gt: Tensor, valid: Tensor, target: DepthTarget
) -> tuple[Tensor, Tensor, float, float]:
    """One (H, W) image: its valid pixels as 1-D float64 prediction and GT (all of them, for
    the metrics), and the scale and shift fitted in ``target``'s space on those of them with
    finite GT > 0 and, if ``target.fit_needs_positive_prediction``, prediction > 0."""
    index = _valid_index(valid)
    p, g = _valid_pixels(pred, index), _valid_pixels(gt, index)
    p_fit, g_fit = _fit_pixels(p, g, target.fit_needs_positive_prediction)
    return p, g, *fit_scale_shift(p_fit, target.forward(g_fit))


def align_prediction(
    pred: Tensor, gt: Tensor, valid: Tensor, space: str = "sqrt_disparity"
) -> Tensor:
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
    _check_shapes(pred, gt, valid)
    target = get_target(space)
    out = torch.empty(pred.shape, dtype=torch.float64, device=pred.device)
    for i in range(pred.shape[0]):
        _, _, scale, shift = _fit_image(pred[i], gt[i], valid[i], target)
        out[i] = target.inverse(scale * pred[i].double() + shift)
    return out


def fit_alignment(
    pred: Tensor, gt: Tensor, valid: Tensor, space: str = "sqrt_disparity"
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
    index = _valid_index(valid)
    p_fit, g_fit = _fit_pixels(
        _valid_pixels(pred, index),
        _valid_pixels(gt, index),
        target.fit_needs_positive_prediction,
    )
    return (*fit_scale_shift(p_fit, target.forward(g_fit)), p_fit)


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
    _check_shapes(depth, gt, valid)
    rows = []
    for i in range(depth.shape[0]):
        index = _valid_index(valid[i])
        rows.append(_metrics_of_pixels(_valid_pixels(depth[i], index), _valid_pixels(gt[i], index)))
    return _stack_rows(rows, depth)


def evaluate_batch(
    pred: Tensor,
    gt: Tensor,
    valid: Tensor,
    min_depth: Tensor | float,
    max_depth: Tensor | float,
    space: str = "sqrt_disparity",
) -> tuple[dict[str, Tensor], Tensor]:
    """Align, clip and score a batch.

    On the CPU it works image by image on the valid pixels only (gathered once): the fit, the
    inverse, the clips and the metrics are then a few passes over 1-D float64 vectors, with no
    masked full-image temporaries. That path waits on the host several times per image, so on
    any other device the batch goes to :func:`evaluate_batch_dense` instead (same protocol,
    same outputs, no device->host sync).

    Args:
        pred: (B, 1, H, W) or (B, H, W) relative prediction.
        gt: same shape, metres.
        valid: same shape, bool (range, crop and dataset masks already applied). Valid
            pixels are fitted only where the GT is finite and > 0 (and, in the sqrt-disparity
            and disparity spaces, the prediction > 0, as the released evaluation), but all
            are scored: a valid pixel with GT 0 or inf makes its image's metrics inf/NaN.
        min_depth, max_depth: dataset range, scalars or (B,) tensors (inf allowed).
        space: alignment space, see :func:`align_prediction`.

    Returns:
        (per-image metrics, (B,) bool: which images had at least one valid pixel).
    """
    if pred.device.type != "cpu":
        return evaluate_batch_dense(pred, gt, valid, min_depth, max_depth, space)
    pred, gt, valid = _drop_channel(pred, gt, valid)
    _check_shapes(pred, gt, valid)
    target = get_target(space)
    b = pred.shape[0]
    # Python floats: clamp with scalar bounds is several times faster than with tensor bounds.
    lo = torch.as_tensor(min_depth, dtype=torch.float64).reshape(-1).expand(b).tolist()
    hi = torch.as_tensor(max_depth, dtype=torch.float64).reshape(-1).expand(b).tolist()
    rows, counts = [], []
    for i in range(b):
        p, g, scale, shift = _fit_image(pred[i], gt[i], valid[i], target)
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


def _dense_bounds(value: Tensor | float, b: int, device: torch.device) -> Tensor:
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


def _row_sum_of_products(a: Tensor, b: Tensor) -> Tensor:
    """(B,) row-wise dot products of two (B, N) float64 tensors."""
    return torch.linalg.vecdot(a, b)


def _fit_scale_shift_dense(
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
    spp, spg = _row_sum_of_products(pf, pf), _row_sum_of_products(pf, value)
    det = n * spp - sp * sp
    # The rejected branch may divide by a zero det: torch.where discards its inf/NaN.
    solved = det > 1e-9 * n * spp
    scale = torch.where(solved, (n * spg - sp * sg) / det, 1.0)
    shift = torch.where(solved, (spp * sg - sp * spg) / det, (sg - sp) / n.clamp(min=1.0))
    return scale, shift


def _clip_dense(depth: Tensor, min_depth: Tensor, max_depth: Tensor) -> Tensor:
    """Clip (B, N) float64 depth in place to each image's range, then to >= 1e-6 (metres),
    with (B,) float64 bounds (inf allowed): docs/method.md §6's order, the same values as
    :func:`evaluate_batch`'s two per-image branches. Where ``hi >= 1e-6`` that path clamps once
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
    sq_rel, rmse2 = _row_sum_of_products(diff, rel), _row_sum_of_products(diff, diff)
    abs_rel = rel.abs_().sum(dim=1)
    ratio = torch.div(d, g, out=diff)
    counts = [
        ((ratio > 1.0 / 1.25**k) & (ratio < 1.25**k) & valid).sum(dim=1, dtype=torch.float64)
        for k in (1, 2, 3)
    ]
    log_ratio = ratio.log_()
    rmse_log2 = _row_sum_of_products(log_ratio, log_ratio)
    log10 = log_ratio.abs_().sum(dim=1) / math.log(10.0)
    sums = torch.stack([abs_rel, sq_rel, rmse2, rmse_log2, log10, *counts], dim=1)
    # Rows without a valid pixel have all sums exactly 0: 0 / 1 keeps them 0.
    out = sums / n.clamp(min=1.0)[:, None]
    out[:, 2:4] = out[:, 2:4].sqrt()
    return out


def evaluate_batch_dense(
    pred: Tensor,
    gt: Tensor,
    valid: Tensor,
    min_depth: Tensor | float,
    max_depth: Tensor | float,
    space: str = "sqrt_disparity",
) -> tuple[dict[str, Tensor], Tensor]:
    """:func:`evaluate_batch` for accelerators: the whole batch at once, with no device->host
    sync (no Python loop over images, ``.tolist()``, ``.item()``, ``bool()``, ``nonzero`` or
    boolean indexing), so a GPU never waits on the host while scoring.

    Same protocol, arguments and outputs as :func:`evaluate_batch`, to rounding: the sums are
    grouped differently (relative differences up to ~1e-12 seen at 480x640; the inf/NaN
    metrics of images with a valid GT of 0 or inf are the same). Each image is a (H*W,) row
    of a (B, H*W) float64 batch: the fit uses masked sums and the degenerate rule through
    ``torch.where``, the metrics masked sums over the valid pixels. Works on any device, the
    CPU included (for testing: there the per-image path is 4-6x faster).

    Memory: up to about seven (B, H*W) float64 temporaries alive at a time, 8 bytes x B x H x W
    each (~20 MB at B = 8, 480x640, so ~140 MB at the peak): meant for eval batches of 1-8 at
    that size; score larger batches in chunks.

    Args:
        pred: (B, 1, H, W) or (B, H, W) relative prediction (any float dtype).
        gt: same shape, metres.
        valid: same shape, bool.
        min_depth, max_depth: dataset range, Python numbers or tensors of 1 or B values (inf
            allowed; on any device: a CPU tensor is copied over without blocking).
        space: alignment space, see :func:`align_prediction`.

    Returns:
        (name -> (B,) float64 per-image metrics on ``pred``'s device, (B,) bool: which images
        had at least one valid pixel); images without one get all-zero metrics.
    """
    pred, gt, valid = _drop_channel(pred, gt, valid)
    _check_shapes(pred, gt, valid)
    target = get_target(space)
    b, device = pred.shape[0], pred.device
    pixels = math.prod(pred.shape[1:])  # not reshape(b, -1): that fails for b = 0
    # Metrics are not differentiable. .double() may return the caller's float64 tensor itself,
    # so nothing below writes into p or g.
    p = pred.detach().reshape(b, pixels).double()
    g = gt.detach().reshape(b, pixels).double()
    mask = valid.reshape(b, pixels).bool()
    scale, shift = _fit_scale_shift_dense(p, g, mask, target)
    depth = target.inverse(p * scale[:, None] + shift[:, None])
    depth = _clip_dense(
        depth, _dense_bounds(min_depth, b, device), _dense_bounds(max_depth, b, device)
    )
    out = _metrics_dense(depth, g, mask)
    has_valid = mask.any(dim=1)
    return dict(zip(METRIC_NAMES, out.T)), has_valid


def _sum_where(values: Tensor, keep: Tensor) -> Tensor:
    """Sum of the (B,) ``values`` where the (B,) bool ``keep`` is True, as a 0-d tensor.

    On the CPU by boolean indexing, which costs no sync there and keeps the sums bit-identical
    to earlier releases (torch's vectorised sum groups terms by position, so zeros in place of
    the left-out images would change the last bits); elsewhere with ``torch.where``, since
    boolean indexing makes the host wait for the device to learn the output size.
    """
    if values.device.type == "cpu":
        return values[keep].sum()
    return torch.where(keep, values, 0.0).sum()


class DepthMetrics(Metric):
    """Mean over images of the 8 standard depth metrics after per-image alignment.

    ``update(pred, gt, valid, min_depth, max_depth)`` scores a batch; ``update_values(values,
    has_valid)`` adds :func:`evaluate_batch`'s output (for callers that also keep the per-image
    values and must not compute them twice). ``compute()`` returns name -> scalar (fractions,
    not x100) plus ``num_images`` and ``skipped_images`` (no valid pixel; skipped, never NaN).
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, space: str = "sqrt_disparity", **kwargs) -> None:
        super().__init__(**kwargs)
        self.space = check_alignment_space(space)
        for name in METRIC_NAMES:
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_images", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped_images", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        # Wrapped as torchmetrics wraps update (update count, cached compute() cleared).
        self.update_values = self._wrap_update(self.update_values)

    def update(
        self,
        pred: Tensor,
        gt: Tensor,
        valid: Tensor,
        min_depth: Tensor | float,
        max_depth: Tensor | float,
    ) -> None:
        """Score a batch and add it (arguments as :func:`evaluate_batch`)."""
        self._add(*evaluate_batch(pred, gt, valid, min_depth, max_depth, self.space))

    def update_values(self, values: dict[str, Tensor], has_valid: Tensor) -> None:
        """Add a batch already scored by :func:`evaluate_batch` (its two outputs)."""
        self._add(values, has_valid)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("update_values", None)  # a closure; re-wrapped on load
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.update_values = self._wrap_update(self.update_values)

    def _add(self, values: dict[str, Tensor], has_valid: Tensor) -> None:
        for name in METRIC_NAMES:
            setattr(self, name, getattr(self, name) + _sum_where(values[name], has_valid))
        self.num_images += has_valid.sum()
        self.skipped_images += (~has_valid).sum()

    def compute(self) -> dict[str, Tensor]:
        n = self.num_images.clamp(min=1).double()
        out = {name: getattr(self, name) / n for name in METRIC_NAMES}
        out["num_images"] = self.num_images
        out["skipped_images"] = self.skipped_images
        return out


class _OneDepthMetric(DepthMetrics):
    """One of :class:`DepthMetrics`' values; use DepthMetrics itself for several (one
    alignment per image serves all eight)."""

    metric_name = ""

    def compute(self) -> Tensor:
        return super().compute()[self.metric_name]


class AbsRel(_OneDepthMetric):
    """Mean over images of ``mean(|d - g| / g)``."""

    metric_name = "abs_rel"


class SqRel(_OneDepthMetric):
    """Mean over images of ``mean((d - g)^2 / g)``."""

    metric_name = "sq_rel"


class RMSE(_OneDepthMetric):
    """Mean over images of ``sqrt(mean((d - g)^2))``, metres."""

    metric_name = "rmse"


class RMSELog(_OneDepthMetric):
    """Mean over images of ``sqrt(mean((ln d - ln g)^2))``."""

    metric_name = "rmse_log"


class Log10(_OneDepthMetric):
    """Mean over images of ``mean(|log10 d - log10 g|)``."""

    metric_name = "log10"


class Delta1(_OneDepthMetric):
    """Mean over images of the fraction with ``max(d/g, g/d) < 1.25``."""

    metric_name = "delta1"


class Delta2(_OneDepthMetric):
    """Mean over images of the fraction with ``max(d/g, g/d) < 1.25^2``."""

    metric_name = "delta2"


class Delta3(_OneDepthMetric):
    """Mean over images of the fraction with ``max(d/g, g/d) < 1.25^3``."""

    metric_name = "delta3"
