"""Pixel operations of the training-set converters, in exact numpy.

* :func:`tone_map`: Hypersim's linear HDR RGB -> uint8, as the Hypersim reference tone mapper;
* :func:`distance_to_planar_depth`: distance to the camera centre -> planar depth (camera z);
* :func:`nearest_exact_indices` / :func:`resize_nearest_exact`: torch's ``nearest-exact``
  resize in integer arithmetic.

The KITTI benchmark crop of the Virtual KITTI conversion is the benchmarks' one,
:func:`dm_lightning.data.crops.kitti_benchmark_crop`.
"""

from __future__ import annotations

import numpy as np

from dm_lightning.data.sources.spec import HYPERSIM_FOCAL, HYPERSIM_FOCAL_WIDTH

TONE_MAP_PERCENTILE = 90.0
TONE_MAP_TARGET = 0.8
"""Brightness of the ``TONE_MAP_PERCENTILE``-th percentile after tone mapping (after gamma)."""
TONE_MAP_GAMMA = 1.0 / 2.2
TONE_MAP_EPS = 1e-4
"""Below this percentile brightness the reference tone mapper uses scale 0 (a black image)."""
BRIGHTNESS_WEIGHTS = (0.3, 0.59, 0.11)
"""CCIR601 YIQ luma weights of R, G, B, as in the Hypersim reference tone mapper."""


def tone_map(rgb: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Linear HDR RGB -> uint8, as the Hypersim reference tone mapper.

    With brightness ``b = 0.3 R + 0.59 G + 0.11 B`` and ``p`` its 90th percentile over the
    valid pixels, the scale ``s = 0.8 ** 2.2 / p`` makes ``(s * p) ** (1 / 2.2) = 0.8``, i.e. the
    percentile is 0.8 *after* gamma. Output ``floor(255 * clip((s * rgb) ** (1 / 2.2), 0, 1))``
    (truncated like the reference, hence like the preprocessed PNGs). ``s = 1`` when no pixel
    is valid; ``s = 0`` (black) when ``p < 1e-4``, as in the reference.

    Args:
        rgb: (H, W, 3) linear radiance, >= 0 (negative values count as 0). Non-finite pixels
            are treated as 0 and left out of the percentile.
        valid: (H, W) bool, pixels that take part in the percentile (Hypersim: entity id != -1);
            None = all.

    Returns:
        (H, W, 3) uint8.
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"tone_map expects (H, W, 3) RGB, got shape {rgb.shape}")
    finite = np.isfinite(rgb).all(axis=2)
    rgb = np.where(finite[..., None], rgb, 0.0)
    mask = finite if valid is None else finite & np.asarray(valid, dtype=bool)
    if not mask.any():
        scale = 1.0
    else:
        brightness = rgb @ np.asarray(BRIGHTNESS_WEIGHTS)
        percentile = float(np.percentile(brightness[mask], TONE_MAP_PERCENTILE))
        if percentile < TONE_MAP_EPS:
            scale = 0.0
        else:
            scale = TONE_MAP_TARGET ** (1.0 / TONE_MAP_GAMMA) / percentile
    mapped = np.clip(np.power(np.maximum(scale * rgb, 0.0), TONE_MAP_GAMMA), 0.0, 1.0)
    return (mapped * 255).astype(np.uint8)


def distance_to_planar_depth(distance: np.ndarray, focal: float | None = None) -> np.ndarray:
    """Distance to the camera centre -> planar depth (camera z), for a centred pinhole.

    ``depth = distance * f / sqrt(x^2 + y^2 + f^2)`` with ``(x, y)`` the pixel centre relative to
    the image centre: ``x = u + 0.5 - W / 2``, ``y = v + 0.5 - H / 2``.

    Args:
        distance: (H, W) metres; NaN/inf stay non-finite.
        focal: pixels; None = Hypersim's, ``886.81 * W / 1024``.

    Returns:
        (H, W) float32 metres.
    """
    distance = np.asarray(distance, dtype=np.float64)
    if distance.ndim != 2:
        raise ValueError(f"distance must be (H, W), got shape {distance.shape}")
    height, width = distance.shape
    if focal is None:
        focal = HYPERSIM_FOCAL * width / HYPERSIM_FOCAL_WIDTH
    x = np.arange(width) + 0.5 - width / 2
    y = np.arange(height) + 0.5 - height / 2
    norm = np.sqrt(x[None, :] ** 2 + y[:, None] ** 2 + focal**2)
    return (distance * (focal / norm)).astype(np.float32)


def nearest_exact_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output index for nearest-exact resizing along one axis.

    ``min(floor((i + 0.5) * size_in / size_out), size_in - 1)``, as torch's
    ``interpolate(mode="nearest-exact")``, in exact integer arithmetic.
    """
    if size_in < 1 or size_out < 1:
        raise ValueError(f"sizes must be >= 1, got {size_in} -> {size_out}")
    out = np.arange(size_out, dtype=np.int64)
    return np.minimum((2 * out + 1) * size_in // (2 * size_out), size_in - 1)


def resize_nearest_exact(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize the first two axes of ``array`` ((H, W) or (H, W, C), any dtype) to
    (height, width) with nearest-exact sampling (:func:`nearest_exact_indices`)."""
    rows = nearest_exact_indices(array.shape[0], height)
    cols = nearest_exact_indices(array.shape[1], width)
    return array[rows[:, None], cols[None, :]]
