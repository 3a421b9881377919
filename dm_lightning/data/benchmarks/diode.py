"""DIODE benchmark reader (indoor and outdoor validation, provided validity masks)."""

from __future__ import annotations

import numpy as np

from dm_lightning.data.benchmarks.base import BenchmarkDataset, ListEntry
from dm_lightning.data.benchmarks.decoders import decode_npy


class DIODE(BenchmarkDataset):
    """DIODE validation, indoor and outdoor (771 frames), run at 640 px long edge.

    List line: ``<split>/scene_N/scan_N/<name>.png <...>/<name>_depth.npy
    <...>/<name>_depth_mask.npy``. Depth: float32 metres, (H, W) or (H, W, 1). Valid: the
    provided mask and a finite depth > 0, **not** re-derived from the range. The [0.6, 350] m
    range clips predictions only (as the reference evaluation does); ground truth is not
    clipped.
    """

    name = "diode"
    min_depth, max_depth = 0.6, 350.0
    processing_res = 640
    min_fields = 3
    layout = (
        "{indoors,outdoor}/scene_N/scan_N/<name>.png, <name>_depth.npy and "
        "<name>_depth_mask.npy per the list"
    )
    depth_decoder = staticmethod(decode_npy)
    mask_rule = "the provided <name>_depth_mask.npy and d > 0 (the range clips predictions only)"

    def valid_mask(self, entry: ListEntry, depth: np.ndarray) -> np.ndarray:
        rel = entry.extra[0]
        try:
            mask = decode_npy(self.store.read(rel))
        except ValueError as err:
            raise ValueError(
                f"{self.store.describe(rel)}: cannot decode DIODE mask: {err}"
            ) from err
        if mask.shape != depth.shape:
            raise ValueError(
                f"{self.store.describe(rel)}: mask {mask.shape} does not match depth {depth.shape}"
            )
        return mask.astype(bool) & (depth > 0)
