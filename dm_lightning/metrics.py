"""Affine-invariant depth evaluation (SPEC section 6).

Functional core (pure tensor math, float64) plus a thin torchmetrics ``Metric`` that keeps
sums and an image count with ``dist_reduce_fx="sum"``, so N ranks give the one-process result.

Order of operations per image, exactly as SPEC.md states: least-squares scale and shift of the
prediction to the ground truth in the alignment space (on valid pixels), back to depth, clip to
the dataset range and to >= 1e-6, then metrics on valid pixels; the reported value is the plain
mean over images.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from dm_lightning.targets import TARGETS, get_target

ALIGNMENT_SPACES = tuple(TARGETS)  # sqrt_disparity, disparity, depth
METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")
DEPTH_FLOOR = 1e-6


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
            ``1 / max(s p + t, 1e-3)``) or ``depth`` (fit to ``d``).

    Returns:
        (B, H, W) float64 aligned depth (not yet range-clipped); images without valid pixels
        get the plain prediction mapped through the space's inverse.
    """
    target = get_target(space)
    p = pred.double()
    g_depth = gt.double()
    fit = valid & torch.isfinite(g_depth) & (g_depth > 0)
    g = torch.where(fit, target.forward(torch.where(fit, g_depth, torch.ones_like(g_depth))), 0.0)
    pm = torch.where(fit, p, 0.0)  # g is already 0 outside the fit mask
    n = fit.sum(dim=(-2, -1)).double()
    sp = pm.sum(dim=(-2, -1))
    spp = pm.square().sum(dim=(-2, -1))
    sg = g.sum(dim=(-2, -1))
    spg = (pm * g).sum(dim=(-2, -1))
    det = n * spp - sp * sp
    ok = det.abs() > 1e-12
    safe_det = torch.where(ok, det, torch.ones_like(det))
    scale = torch.where(ok, (n * spg - sp * sg) / safe_det, torch.ones_like(det))
    # A constant prediction leaves only the shift: the mean of the target.
    shift = torch.where(
        ok, (spp * sg - sp * spg) / safe_det, sg / n.clamp(min=1) - sp / n.clamp(min=1)
    )
    return target.inverse(scale[:, None, None] * p + shift[:, None, None])


def per_image_metrics(depth: Tensor, gt: Tensor, valid: Tensor) -> dict[str, Tensor]:
    """The 8 standard metrics of each image, computed on its valid pixels.

    Args:
        depth: (B, H, W) predicted metric depth (> 0).
        gt: (B, H, W) ground truth, metres.
        valid: (B, H, W) bool.

    Returns:
        name -> (B,) float64; delta thresholds are strict (``max(d/g, g/d) < 1.25^k``).
    """
    n = valid.sum(dim=(-2, -1)).clamp(min=1).double()
    # Invalid pixels get d = g = 1: they add exactly 0 to every error sum below, so only the
    # delta counts need the mask (and no per-metric multiplication by it is needed).
    d = torch.where(valid, depth.double(), 1.0)
    g = torch.where(valid, gt.double(), 1.0)
    diff = d - g
    sq = diff.square()
    log_diff = d.log() - g.log()
    r = d / g
    ratio = torch.maximum(r, 1.0 / r)

    def mean(x: Tensor) -> Tensor:
        return x.sum(dim=(-2, -1)) / n

    def fraction_below(threshold: float) -> Tensor:
        return ((ratio < threshold) & valid).sum(dim=(-2, -1)) / n

    return {
        "abs_rel": mean(diff.abs() / g),
        "sq_rel": mean(sq / g),
        "rmse": mean(sq).sqrt(),
        "rmse_log": mean(log_diff.square()).sqrt(),
        "log10": mean(log_diff.abs()) / math.log(10.0),
        "delta1": fraction_below(1.25),
        "delta2": fraction_below(1.25**2),
        "delta3": fraction_below(1.25**3),
    }


def evaluate_batch(
    pred: Tensor,
    gt: Tensor,
    valid: Tensor,
    min_depth: Tensor | float,
    max_depth: Tensor | float,
    space: str = "sqrt_disparity",
) -> tuple[dict[str, Tensor], Tensor]:
    """Align, clip and score a batch.

    Args:
        pred: (B, 1, H, W) or (B, H, W) relative prediction.
        gt: same shape, metres.
        valid: same shape, bool (range, crop and dataset masks already applied).
        min_depth, max_depth: dataset range, scalars or (B,) tensors (inf allowed).
        space: alignment space, see :func:`align_prediction`.

    Returns:
        (per-image metrics, (B,) bool: which images had at least one valid pixel).
    """
    if pred.ndim == 4:
        pred, gt, valid = pred[:, 0], gt[:, 0], valid[:, 0]
    aligned = align_prediction(pred, gt, valid, space)
    lo = torch.as_tensor(min_depth, dtype=torch.float64, device=aligned.device).reshape(-1, 1, 1)
    hi = torch.as_tensor(max_depth, dtype=torch.float64, device=aligned.device).reshape(-1, 1, 1)
    depth = torch.minimum(torch.maximum(aligned, lo), hi).clamp(min=DEPTH_FLOOR)
    has_valid = valid.flatten(1).any(dim=1)
    return per_image_metrics(depth, gt, valid), has_valid


class DepthMetrics(Metric):
    """Mean over images of the 8 standard depth metrics after per-image alignment.

    ``update(pred, gt, valid, min_depth, max_depth)``; ``compute()`` returns name -> scalar
    (fractions, not x100) plus ``num_images`` and ``skipped_images`` (no valid pixel; skipped,
    never NaN).
    """

    full_state_update = False
    higher_is_better = None

    def __init__(self, space: str = "sqrt_disparity", **kwargs) -> None:
        super().__init__(**kwargs)
        if space not in ALIGNMENT_SPACES:
            raise ValueError(
                f"unknown alignment space {space!r}; expected one of {ALIGNMENT_SPACES}"
            )
        self.space = space
        for name in METRIC_NAMES:
            self.add_state(name, torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_images", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("skipped_images", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, *batch: Any) -> None:
        """Add a batch: ``update(pred, gt, valid, min_depth, max_depth)`` (see
        :func:`evaluate_batch`), or ``update(values, has_valid)`` with :func:`evaluate_batch`'s
        output, for callers that also keep the per-image values and must not compute twice."""
        if len(batch) == 2 and isinstance(batch[0], dict):
            values, has_valid = batch
        else:
            values, has_valid = evaluate_batch(*batch, space=self.space)
        for name in METRIC_NAMES:
            setattr(self, name, getattr(self, name) + values[name][has_valid].sum())
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
