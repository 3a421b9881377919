"""Metric depth from a relative prediction and a few known depths.

A prediction of ``dm-lightning predict`` (a float32 (H, W) ``.npy`` in [0, 1]; for the default
target 1 = near, the normalised square-root disparity) is known only up to a scale and a shift
in its target's space (docs/method.md §2). Given depths in metres for some of its pixels, a
reference depth map (a depth sensor, LiDAR) or a few measured points (a CSV of ``x, y,
metres``), this module fits that scale and shift with the evaluation's own alignment
(:func:`dm_lightning.evaluation.alignment.fit_alignment`, docs/method.md §6: same pixels, same
least squares, same spaces) and maps every pixel to metres.

The aligned value ``s p + t`` can leave the range a depth can have: in the disparity spaces the
shift can make far pixels' disparity 0 or negative (infinite depth), in the depth space depth
can go <= 0. Such pixels are clamped to ``[min_depth, max_depth]`` and counted; everywhere else
the depth equals :func:`dm_lightning.evaluation.alignment.align_prediction`'s.

:func:`relative_to_depth` is the other way to metres, without known depths: the prediction's
ends stand for assumed near and far depths (for point clouds of a relative prediction). The files
read and written on the way are :mod:`dm_lightning.inference.depth_files`'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dm_lightning.errors import InputFileError
from dm_lightning.evaluation.alignment import fit_alignment
from dm_lightning.inference.depth_files import RANGE_TOLERANCE, KnownPoints, clip_rounding
from dm_lightning.targets import (
    DEFAULT_SPACE,
    MIN_DISPARITY,
    DepthTarget,
    check_alignment_space,
    get_target,
)

DEFAULT_MIN_DEPTH = 1e-3  # metres
#: metres: the far end of the evaluation's disparity floor (1 / 1e-3), docs/method.md §6
DEFAULT_MAX_DEPTH = 1.0 / MIN_DISPARITY


@dataclass(frozen=True)
class MetricDepth:
    """A relative prediction fitted to known depths.

    Attributes:
        depth: (H, W) float32 metres, every pixel in ``[min_depth, max_depth]``.
        scale, shift: ``scale * pred + shift`` approximates the known depths in ``space``.
        space: alignment space (``sqrt_disparity``, ``disparity`` or ``depth``).
        known: number of known depths given (valid reference pixels or CSV points).
        fitted: how many of them the fit used (in the disparity spaces, evaluation leaves
            pixels with prediction <= 0 out).
        abs_rel: mean ``|depth - known| / known`` over the known depths (fraction).
        clamped_near, clamped_far: pixels whose aligned depth fell below ``min_depth`` /
            beyond ``max_depth`` (or was not positive / infinite) and were clamped.
    """

    depth: np.ndarray
    scale: float
    shift: float
    space: str
    known: int
    fitted: int
    abs_rel: float
    clamped_near: int
    clamped_far: int
    min_depth: float
    max_depth: float


# ---------------------------------------------------------------------------------------------
# Fitting and mapping to metres
# ---------------------------------------------------------------------------------------------


def _check_range(space: str, min_depth: float, max_depth: float) -> None:
    if not (math.isfinite(min_depth) and math.isfinite(max_depth) and 0 < min_depth < max_depth):
        raise InputFileError(
            f"need 0 < min depth < max depth (finite, metres), got {min_depth}, {max_depth}"
        )
    # The disparity spaces' inverse floors disparity at 1e-3 (docs/method.md §6): a larger
    # max depth could not be reached.
    if space != "depth" and max_depth > DEFAULT_MAX_DEPTH:
        raise InputFileError(
            f"max depth {max_depth} m is beyond the {space} space's {DEFAULT_MAX_DEPTH:g} m "
            f"(the evaluation's disparity floor {MIN_DISPARITY})"
        )


def _fit(pred: np.ndarray, known: np.ndarray, space: str, source: str) -> tuple[float, float, int]:
    """Scale, shift and number of fitted values of ``pred`` to the ``known`` metres (same
    shape; 0 / non-finite = unknown), with the evaluation's fit."""
    p, g = torch.from_numpy(np.ascontiguousarray(pred)), torch.from_numpy(known)
    valid = torch.from_numpy(np.isfinite(known) & (known > 0))
    scale, shift, fitted = fit_alignment(p, g, valid, space)
    need = "finite depth > 0" + (
        " and a prediction > 0" if get_target(space).fit_needs_positive_prediction else ""
    )
    if fitted.numel() < 2:
        raise InputFileError(
            f"{source}: {fitted.numel()} known depth(s) to fit on, need at least 2 "
            f"(with {need}, as evaluation fits in the {space} space)"
        )
    low, high = torch.aminmax(fitted)
    if low == high:
        raise InputFileError(
            f"{source}: the prediction is {float(low):g} at all {fitted.numel()} fitted "
            "pixels, so no scale can be fitted; give depths of pixels at different distances"
        )
    return scale, shift, fitted.numel()


def _target_value(target: DepthTarget, depth: float) -> float:
    """``target``'s (un-normalised) value of one depth in metres."""
    return float(target.forward(torch.tensor(depth, dtype=torch.float64)))


def apply_fit(
    pred: np.ndarray,
    scale: float,
    shift: float,
    space: str = DEFAULT_SPACE,
    min_depth: float = DEFAULT_MIN_DEPTH,
    max_depth: float = DEFAULT_MAX_DEPTH,
) -> tuple[np.ndarray, int, int]:
    """Depth of ``scale * pred + shift`` in ``space``, clamped to ``[min_depth, max_depth]``.

    Args:
        pred: (H, W) relative prediction.
        scale, shift: from a fit in ``space``.
        space: alignment space.
        min_depth, max_depth: metres, 0 < min < max (<= 1000 m in the disparity spaces).

    Returns:
        ((H, W) float32 metres, number of pixels clamped to ``min_depth``, to ``max_depth``).
        The clamp is applied in the space itself (to ``[forward(max), forward(min)]`` for the
        disparity spaces), so a negative sqrt-disparity counts as beyond ``max_depth``
        instead of being squared into a positive one. Unclamped pixels get exactly
        :func:`~dm_lightning.evaluation.alignment.align_prediction`'s depth.
    """
    check_alignment_space(space)
    _check_range(space, min_depth, max_depth)
    target = get_target(space)
    value = torch.from_numpy(np.asarray(pred, dtype=np.float64)) * scale + shift
    at_min, at_max = _target_value(target, min_depth), _target_value(target, max_depth)
    low, high = min(at_min, at_max), max(at_min, at_max)
    # value < low is "beyond max_depth" in a decreasing space (disparity), "below min_depth"
    # in an increasing one (depth); NaN would fail both comparisons, but pred is finite.
    below, above = int((value < low).sum()), int((value > high).sum())
    near, far = (above, below) if at_min > at_max else (below, above)
    depth = target.inverse(value.clamp(low, high))
    # The inverse's own floor and rounding may land a hair outside the range.
    depth = depth.clamp(min_depth, max_depth)
    return depth.float().numpy(), near, far


def _abs_rel(depth: np.ndarray, known: np.ndarray) -> float:
    return float(np.mean(np.abs(depth.astype(np.float64) - known) / known))


def metric_from_depth_map(
    pred: np.ndarray,
    reference: np.ndarray,
    space: str = DEFAULT_SPACE,
    min_depth: float = DEFAULT_MIN_DEPTH,
    max_depth: float = DEFAULT_MAX_DEPTH,
    source: str = "reference",
) -> MetricDepth:
    """Fit ``pred`` to a reference depth map and map it to metres.

    Args:
        pred: (H, W) relative prediction.
        reference: (H, W) metres; 0, negative and non-finite pixels are ignored.
        space, min_depth, max_depth: see :func:`apply_fit`.
        source: name of the reference in messages (its file).

    Raises:
        InputFileError: shapes differ, fewer than 2 pixels to fit on, a constant prediction
            on them, or bad options.
    """
    check_alignment_space(space)
    _check_range(space, min_depth, max_depth)
    if pred.shape != reference.shape:
        raise InputFileError(
            f"{source}: the reference is {reference.shape[0]}x{reference.shape[1]} (HxW) but "
            f"the prediction is {pred.shape[0]}x{pred.shape[1]}; they must be the same size"
        )
    reference = np.asarray(reference, dtype=np.float64)
    scale, shift, fitted = _fit(pred, reference, space, source)
    depth, near, far = apply_fit(pred, scale, shift, space, min_depth, max_depth)
    known = np.isfinite(reference) & (reference > 0)
    abs_rel = _abs_rel(depth[known], reference[known])
    return MetricDepth(
        depth=depth,
        scale=scale,
        shift=shift,
        space=space,
        known=int(known.sum()),
        fitted=fitted,
        abs_rel=abs_rel,
        clamped_near=near,
        clamped_far=far,
        min_depth=min_depth,
        max_depth=max_depth,
    )


def metric_from_points(
    pred: np.ndarray,
    points: KnownPoints,
    space: str = DEFAULT_SPACE,
    min_depth: float = DEFAULT_MIN_DEPTH,
    max_depth: float = DEFAULT_MAX_DEPTH,
) -> MetricDepth:
    """Fit ``pred`` to known depths at a few pixels and map it to metres.

    Args:
        pred: (H, W) relative prediction.
        points: from :func:`~dm_lightning.inference.depth_files.read_points` (or built by hand).
        space, min_depth, max_depth: see :func:`apply_fit`.

    Raises:
        InputFileError: a point outside the image (naming its CSV line), fewer than 2 points
            to fit on, the same prediction at all of them, or bad options.
    """
    check_alignment_space(space)
    _check_range(space, min_depth, max_depth)
    h, w = pred.shape
    outside = (points.x < 0) | (points.x >= w) | (points.y < 0) | (points.y >= h)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise InputFileError(
            f"{points.source} line {points.rows[i]}: pixel x={points.x[i]}, y={points.y[i]} is "
            f"outside the {w}x{h} prediction (x in 0..{w - 1}, y in 0..{h - 1})"
        )
    values = pred[points.y, points.x]
    scale, shift, fitted = _fit(values, points.metres, space, points.source)
    depth, near, far = apply_fit(pred, scale, shift, space, min_depth, max_depth)
    return MetricDepth(
        depth=depth,
        scale=scale,
        shift=shift,
        space=space,
        known=len(points.metres),
        fitted=fitted,
        abs_rel=_abs_rel(depth[points.y, points.x], points.metres),
        clamped_near=near,
        clamped_far=far,
        min_depth=min_depth,
        max_depth=max_depth,
    )


def relative_to_depth(
    pred: np.ndarray, near: float, far: float, space: str = DEFAULT_SPACE
) -> np.ndarray:
    """Depth of a relative prediction whose ends stand for assumed ``near`` and ``far`` depths.

    The prediction is the target normalised to [0, 1] between its values at the two ends, so
    this inverts that with the target's own :meth:`~dm_lightning.targets.DepthTarget.inverse`:
    for ``sqrt_disparity``, ``depth = 1 / v^2`` with ``v = sqrt(1/far) + p (sqrt(1/near) -
    sqrt(1/far))`` (1 = near); for ``disparity`` the same with ``1/d``; for ``depth``,
    ``near + p (far - near)`` (1 = far, that target's convention). Training maps each image's
    2% and 98% target quantiles to the ends, so ``near`` / ``far`` are best set to about the
    scene's 2nd and 98th percentile depths.

    Args:
        pred: (H, W) relative prediction in [0, 1]; values within
            :data:`~dm_lightning.inference.depth_files.RANGE_TOLERANCE` outside are clipped
            onto it.
        near, far: metres, 0 < near < far (far <= 1000 m in the disparity spaces).
        space: the target the model was trained with (``sqrt_disparity`` by default).

    Returns:
        (H, W) float32 metres in [near, far].
    """
    check_alignment_space(space)
    _check_range(space, near, far)
    pred = clip_rounding(np.asarray(pred))
    low, high = float(pred.min(initial=0.0)), float(pred.max(initial=1.0))
    if low < 0.0 or high > 1.0:
        raise InputFileError(
            f"a relative prediction must be in [0, 1] (within {RANGE_TOLERANCE:g}) to map to "
            f"near / far depths, got values in [{low:g}, {high:g}]"
        )
    target = get_target(space)
    at_near, at_far = _target_value(target, near), _target_value(target, far)
    # p = 0 is the smaller target value: far for the disparity spaces, near for depth.
    start, end = min(at_near, at_far), max(at_near, at_far)
    value = torch.from_numpy(pred.astype(np.float64)) * (end - start) + start
    return target.inverse(value).clamp(near, far).float().numpy()
