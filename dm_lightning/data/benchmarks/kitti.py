"""KITTI Eigen benchmark reader (projected GT, KB crop, Eigen evaluation crop)."""

from __future__ import annotations

import numpy as np

from dm_lightning.data.benchmarks.base import BenchmarkDataset, ListEntry
from dm_lightning.data.benchmarks.decoders import ScaledDepthDecoder
from dm_lightning.data.crops import (
    KB_CROP_HEIGHT,
    KB_CROP_WIDTH,
    KITTI_EIGEN_FRACTIONS,
    kitti_benchmark_crop,
    kitti_eigen_mask,
)


class KITTIEigen(BenchmarkDataset):
    """KITTI Eigen test split with projected GT (652 of 697 list lines have GT).

    List line: ``<date>/<drive>/image_02/data/<frame>.png <drive>/proj_depth/groundtruth/
    image_02/<frame>.png <focal px>``; lines with depth ``None`` are skipped; the focal length
    stays in ``entries[i].extra``. Depth: uint16 PNG / 256 m, 0 = no LiDAR point. RGB and GT
    are KB-cropped to 352x1216; valid: 1e-5 < d < 80 m inside the Eigen crop of the KB crop
    (rows 117:321, cols 43:1172, see :func:`kitti_eigen_mask`).
    """

    name = "kitti"
    min_depth, max_depth = 1e-5, 80.0
    layout = (
        "<date>/<drive>/image_02/data/<frame>.png and "
        "<drive>/proj_depth/groundtruth/image_02/<frame>.png (uint16 / 256) per the list"
    )
    depth_decoder = staticmethod(ScaledDepthDecoder(1 / 256))
    crop_rule = f"KB crop {KB_CROP_HEIGHT}x{KB_CROP_WIDTH} (bottom rows, centred columns)"
    mask_rule = (
        "GT strictly inside the depth range, in the Eigen crop rows int({} H):int({} H), "
        "cols int({} W):int({} W)"
    ).format(*KITTI_EIGEN_FRACTIONS)

    def crop(self, image: np.ndarray, rel: str) -> np.ndarray:
        try:
            return kitti_benchmark_crop(image)
        except ValueError as err:
            raise ValueError(f"{self.store.describe(rel)}: {err}") from err

    def region(self, entry: ListEntry, shape: tuple[int, int]) -> np.ndarray:
        return kitti_eigen_mask(*shape)
