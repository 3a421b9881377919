"""NYU Depth v2 benchmark reader (labelled test split, Eigen crop)."""

from __future__ import annotations

import numpy as np

from dm_lightning.data.benchmarks.base import BenchmarkDataset, ListEntry
from dm_lightning.data.benchmarks.decoders import ScaledDepthDecoder
from dm_lightning.data.crops import NYU_EIGEN_CROP


class NYUv2(BenchmarkDataset):
    """NYU Depth v2 labelled test split (654 frames, 480x640), Marigold's archive layout.

    List line: ``test/<scene>/rgb_NNNN.png test/<scene>/depth_NNNN.png
    test/<scene>/filled_NNNN.png`` (the filled depth is not used: evaluation is on the raw
    depth). Depth: uint16 PNG
    millimetres. Valid: 1e-3 < d < 10 m inside the Eigen crop rows 45:471, cols 41:601.
    """

    name = "nyu"
    min_depth, max_depth = 1e-3, 10.0
    layout = "test/<scene>/rgb_NNNN.png and depth_NNNN.png (uint16 mm) per the list"
    depth_decoder = staticmethod(ScaledDepthDecoder(1e-3))
    mask_rule = (
        f"GT strictly inside the depth range, in the Eigen crop rows {NYU_EIGEN_CROP[0].start}:"
        f"{NYU_EIGEN_CROP[0].stop}, cols {NYU_EIGEN_CROP[1].start}:{NYU_EIGEN_CROP[1].stop}"
    )

    def region(self, entry: ListEntry, shape: tuple[int, int]) -> np.ndarray:
        if shape != (480, 640):
            raise ValueError(
                f"{self.store.describe(entry.depth)}: NYUv2 GT is {shape[0]}x{shape[1]}, the "
                "Eigen crop (rows 45:471, cols 41:601) expects 480x640"
            )
        mask = np.zeros(shape, dtype=bool)
        mask[NYU_EIGEN_CROP] = True
        return mask
