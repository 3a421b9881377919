"""An independent float64 numpy implementation of the evaluation protocol (docs/method.md §6),
for checking the fast path (:mod:`dm_lightning.evaluation.scoring`) in the tests and in
``tools/benchmark.py eval``. Not used by training or evaluation.

Per image: least squares of ``s * p + t`` to the ground truth in the alignment space, on the
valid pixels with finite GT > 0 and, in the two disparity spaces, prediction > 0 (as the
released evaluation); back to depth; clip to the dataset range and to >= 1e-6; the 8 metrics on
all valid pixels (also those left out of the fit); then the plain mean over images. Written
pixel by pixel with ``np.linalg.lstsq`` and nothing else: it imports nothing from
:mod:`dm_lightning.evaluation` on purpose, so that the two can disagree.
"""

from __future__ import annotations

import numpy as np

NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "delta1", "delta2", "delta3")


def to_space(depth: np.ndarray, space: str) -> np.ndarray:
    """Metric depth in the alignment space: ``sqrt_disparity``, ``disparity`` or ``depth``."""
    if space == "sqrt_disparity":
        return np.sqrt(1.0 / depth)
    if space == "disparity":
        return 1.0 / depth
    return depth


def align_image(
    p: np.ndarray, gt: np.ndarray, valid: np.ndarray, space: str = "sqrt_disparity"
) -> np.ndarray:
    """One image: fit ``s * p + t`` to the GT in ``space`` (on valid pixels with finite g > 0
    and, in the two disparity spaces, p > 0), then back to depth on every pixel
    (sqrt-disparity: 1 / max(a^2, 1e-3); disparity: 1 / max(a, 1e-3); depth: a)."""
    p = p.astype(np.float64)
    gt = gt.astype(np.float64)
    with np.errstate(invalid="ignore"):
        fit = valid & np.isfinite(gt) & (gt > 0)
    if space != "depth":
        fit &= p > 0
    a_mat = np.stack([p[fit], np.ones(fit.sum())], axis=1)
    (s, t), *_ = np.linalg.lstsq(a_mat, to_space(gt[fit], space), rcond=None)
    a = s * p + t
    if space == "sqrt_disparity":
        return 1.0 / np.maximum(a**2, 1e-3)
    if space == "disparity":
        return 1.0 / np.maximum(a, 1e-3)
    return a


def metrics(d: np.ndarray, g: np.ndarray) -> dict[str, float]:
    """The 8 metrics (fractions, not x100) on 1-D arrays of valid predicted / GT depth."""
    d = d.astype(np.float64)
    g = g.astype(np.float64)
    ratio = np.maximum(d / g, g / d)
    return {
        "abs_rel": np.mean(np.abs(d - g) / g),
        "sq_rel": np.mean((d - g) ** 2 / g),
        "rmse": np.sqrt(np.mean((d - g) ** 2)),
        "rmse_log": np.sqrt(np.mean((np.log(d) - np.log(g)) ** 2)),
        "log10": np.mean(np.abs(np.log10(d) - np.log10(g))),
        "delta1": np.mean(ratio < 1.25),
        "delta2": np.mean(ratio < 1.25**2),
        "delta3": np.mean(ratio < 1.25**3),
    }


def evaluate_image(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray,
    min_depth: float,
    max_depth: float,
    space: str = "sqrt_disparity",
) -> dict[str, float] | None:
    """One (H, W) image: align, clip to [min_depth, max_depth] and to >= 1e-6, metrics on all
    valid pixels; None if no pixel is valid."""
    if not valid.any():
        return None
    aligned = align_image(pred, gt, valid, space)
    depth = np.maximum(np.minimum(np.maximum(aligned, min_depth), max_depth), 1e-6)
    return metrics(depth[valid], gt[valid])


def evaluate(pred, gt, valid, min_depth, max_depth, space="sqrt_disparity") -> list:
    """A (B, H, W) batch: :func:`evaluate_image` per image; ``min_depth`` / ``max_depth`` are
    scalars or one value per image."""
    b = pred.shape[0]
    lo = np.broadcast_to(np.asarray(min_depth, dtype=np.float64), (b,))
    hi = np.broadcast_to(np.asarray(max_depth, dtype=np.float64), (b,))
    return [evaluate_image(pred[i], gt[i], valid[i], lo[i], hi[i], space) for i in range(b)]


def mean_over_images(per_image: list) -> dict[str, float]:
    """Plain mean over the images that had a valid pixel (the None entries are left out)."""
    kept = [m for m in per_image if m is not None]
    return {k: float(np.mean([m[k] for m in kept])) for k in NAMES}
