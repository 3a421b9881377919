"""ScanNet benchmark reader (800 sampled validation frames)."""

from __future__ import annotations

from dm_lightning.data.benchmarks.base import BenchmarkDataset
from dm_lightning.data.benchmarks.decoders import ScaledDepthDecoder


class ScanNet(BenchmarkDataset):
    """ScanNet validation, 800 sampled frames (Marigold's ``scannet_val_sampled_800_1``).

    List line: ``<scene>/color/NNNNNN.jpg <scene>/depth/NNNNNN.png``. Depth: uint16 PNG
    millimetres. Valid: 1e-3 < d < 10 m, no crop.
    """

    name = "scannet"
    min_depth, max_depth = 1e-3, 10.0
    layout = "<scene>/color/<frame>.jpg and <scene>/depth/<frame>.png (uint16 mm) per the list"
    depth_decoder = staticmethod(ScaledDepthDecoder(1e-3))
