"""The crop and resize rules of the benchmarks and sources, one definition each.

* :func:`kitti_benchmark_crop`: the KITTI benchmark (KB) crop, 352x1216, bottom rows and
  horizontally centred columns; used by the KITTI Eigen reader and the Virtual KITTI
  conversion alike.
* :data:`NYU_EIGEN_CROP`: the Eigen evaluation crop of a 480x640 NYUv2 frame.
* :data:`KITTI_EIGEN_FRACTIONS` / :func:`kitti_eigen_mask`: the Eigen evaluation crop of a
  (KB-cropped) KITTI frame, with Marigold's rounding.
* :func:`resize_rgb`: the RGB-to-GT-size resize of the benchmark readers.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

KB_CROP_HEIGHT, KB_CROP_WIDTH = 352, 1216
NYU_EIGEN_CROP = (slice(45, 471), slice(41, 601))
# Marigold/DepthMaster (from BTS) crop fractions, i.e. 123/370, 338/370, 44/1224 and 1180/1224
# of the original Eigen crop; int() truncates: rows 117:321, cols 43:1172 of a 352x1216 KB crop.
KITTI_EIGEN_FRACTIONS = (0.3324324, 0.91351351, 0.0359477, 0.96405229)


def kitti_benchmark_crop(
    array: np.ndarray, height: int = KB_CROP_HEIGHT, width: int = KB_CROP_WIDTH
) -> np.ndarray:
    """KITTI benchmark crop: the bottom ``height`` rows, ``width`` columns centred.

    ``top = H - height``, ``left = (W - width) // 2`` (floor for odd margins: 375x1242 -> rows
    23.., columns 13..; 375x1241 -> columns 12..).

    Args:
        array: (H, W) or (H, W, C), at least height x width.

    Returns:
        A view of shape (height, width[, C]).

    Raises:
        ValueError: the array is smaller than height x width.
    """
    h, w = array.shape[:2]
    if h < height or w < width:
        raise ValueError(
            f"KITTI benchmark crop: cannot crop {height}x{width} from an image of {h}x{w}"
        )
    top, left = h - height, (w - width) // 2
    return array[top:, left : left + width]


def kitti_eigen_mask(height: int, width: int) -> np.ndarray:
    """(H, W) bool Eigen evaluation crop of a (KB-cropped) KITTI frame, Marigold's rounding:
    rows int(0.3324324 H):int(0.91351351 H), cols int(0.0359477 W):int(0.96405229 W)."""
    top, bottom, left, right = KITTI_EIGEN_FRACTIONS
    mask = np.zeros((height, width), dtype=bool)
    mask[int(top * height) : int(bottom * height), int(left * width) : int(right * width)] = True
    return mask


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (h, w, 3) uint8 for ``size = (h, w)``, bilinear (antialiased when
    shrinking: PIL widens the filter support by the scale)."""
    height, width = size
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))
