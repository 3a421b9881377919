"""ETH3D benchmark reader (high-res multi-view DSLR frames, raw float32 GT)."""

from __future__ import annotations

import math

from dm_lightning.data.benchmarks.base import BenchmarkDataset
from dm_lightning.data.benchmarks.decoders import decode_eth3d


class ETH3D(BenchmarkDataset):
    """ETH3D high-res multi-view DSLR frames (454), run at 756 px long edge.

    List line: ``rgb/<scene>/images/dslr_images/DSC_NNNN.JPG depth/<scene>_dslr_depth/<scene>/
    ground_truth_depth/dslr_images/DSC_NNNN.JPG`` (the depth "JPG" is a raw float32 raster,
    see :func:`decode_eth3d`). Valid: 1e-5 < d < inf. RGB of another size than the 4032x6048 GT
    is resized to it.
    """

    name = "eth3d"
    min_depth, max_depth = 1e-5, math.inf
    processing_res = 756
    layout = (
        "rgb/<scene>/images/dslr_images/<image>.JPG and depth/<scene>_dslr_depth/<scene>/"
        "ground_truth_depth/dslr_images/<image>.JPG (raw float32 4032x6048) per the list"
    )
    depth_decoder = staticmethod(decode_eth3d)
