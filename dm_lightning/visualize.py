"""Colour for depth maps: one place that turns values into RGB, for the colourised PNGs of
``predict`` and the TensorBoard panels of training, so both show depth the same way.

Depth uses matplotlib's ``Spectral`` (as Marigold and Lotus show theirs): near warm (red),
far cool (blue). Errors use ``inferno`` (dark = small, bright = large). Both are fixed maps; a
fixed value range (``vmin``/``vmax``) makes images of different runs comparable.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

DEPTH_COLORMAP = "Spectral"
ERROR_COLORMAP = "inferno"
# Pixels with no value (invalid ground truth, NaN) are drawn in this colour.
INVALID_RGB = (0, 0, 0)


def colorize(
    values: np.ndarray | Tensor,
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = DEPTH_COLORMAP,
    invalid: np.ndarray | Tensor | None = None,
) -> np.ndarray:
    """Map values to colours of a matplotlib colormap.

    Args:
        values: (H, W) or (1, H, W) array or tensor, any float range.
        vmin, vmax: the values drawn at the colormap's two ends (values outside are clipped);
            ``vmax`` must exceed ``vmin``.
        cmap: matplotlib colormap name.
        invalid: optional (H, W) boolean mask of pixels to draw as :data:`INVALID_RGB`;
            non-finite values are drawn so too.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    from matplotlib import colormaps

    if vmax <= vmin:
        raise ValueError(f"colorize: vmax ({vmax}) must be larger than vmin ({vmin})")
    array = _as_numpy(values)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"colorize: expected an (H, W) map, got shape {array.shape}")
    bad = ~np.isfinite(array)
    if invalid is not None:
        mask = _as_numpy(invalid).astype(bool)
        bad |= mask[0] if mask.ndim == 3 else mask
    scaled = np.clip((np.nan_to_num(array) - vmin) / (vmax - vmin), 0.0, 1.0)
    rgb = colormaps[cmap](scaled, bytes=True)[..., :3]
    rgb[bad] = INVALID_RGB
    return np.ascontiguousarray(rgb)


def colorize_depth(
    near: np.ndarray | Tensor, invalid: np.ndarray | Tensor | None = None
) -> np.ndarray:
    """Relative depth in [0, 1] with 1 = near (what ``predict`` returns for the default
    target) -> (H, W, 3) uint8, near red, far blue, over the fixed range [0, 1]."""
    # Spectral runs red -> blue, so colour the "farness" 1 - near.
    return colorize(1.0 - _as_numpy(near), 0.0, 1.0, DEPTH_COLORMAP, invalid)


def depth_panel(
    rgb: np.ndarray | Tensor,
    near_gt: np.ndarray | Tensor,
    near_pred: np.ndarray | Tensor,
    valid: np.ndarray | Tensor,
    error_max: float = 0.2,
) -> np.ndarray:
    """One comparison row: RGB | ground truth | prediction | error, tiles side by side.

    Ground truth and prediction are drawn as :func:`colorize_depth` (fixed range [0, 1],
    1 = near); the error ``|near_pred - near_gt|`` with :data:`ERROR_COLORMAP` over the fixed
    range [0, ``error_max``]. Invalid ground-truth pixels are black in the ground-truth and
    error tiles.

    Args:
        rgb: (3, H, W) or (H, W, 3) uint8 image.
        near_gt, near_pred: (H, W) or (1, H, W) values in [0, 1], 1 = near, in one space.
        valid: (H, W) or (1, H, W) bool, the valid ground-truth pixels.
        error_max: the error drawn brightest.

    Returns:
        (H, 4 W, 3) uint8 RGB.
    """
    image = _as_numpy(rgb)
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    gt = _as_numpy(near_gt).reshape(image.shape[:2])
    pred = _as_numpy(near_pred).reshape(image.shape[:2])
    invalid = ~_as_numpy(valid).astype(bool).reshape(image.shape[:2])
    tiles = [
        image.astype(np.uint8),
        colorize_depth(gt, invalid),
        colorize_depth(pred),
        colorize(np.abs(pred - gt), 0.0, error_max, ERROR_COLORMAP, invalid),
    ]
    return np.ascontiguousarray(np.concatenate(tiles, axis=1))


def _as_numpy(values: np.ndarray | Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32) if values.dtype != bool else values
