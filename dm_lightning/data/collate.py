"""Evaluation batches: samples stacked into one batch dict, and the batch of zero samples.

Batches are dicts: ``rgb`` (B, 3, H, W) uint8, ``depth`` (B, 1, H, W) float32 metres,
``valid`` (B, 1, H, W) bool, ``min_depth``/``max_depth`` (B,) float64 metres, ``source`` and
``key`` (lists of str); the streams add ``skipped``. (The long edge a split runs at is not in
its batches: the LightningModule asks ``DepthDataModule.processing_res`` once per loader.)

**Empty eval batches.** A validation/test reader (a rank's worker) whose shards held no
readable sample but whose skips must still be reported yields one batch of zero samples
(:func:`empty_batch`): ``rgb`` (0, 3, 1, 1) uint8, ``depth`` (0, 1, 1, 1) float32, ``valid``
(0, 1, 1, 1) bool, ``min_depth``/``max_depth`` (0,) float64, ``source`` and ``key`` ``[]``, and
``skipped`` > 0. A consumer counts its skips and evaluates nothing. Training batches are never
empty.
"""

from __future__ import annotations

from typing import Any

import torch

from dm_lightning.data.packing import same_size


def empty_batch() -> dict[str, Any]:
    """The eval batch of zero samples (see the module docstring), without ``skipped``."""
    return {
        "rgb": torch.zeros((0, 3, 1, 1), dtype=torch.uint8),
        "depth": torch.zeros((0, 1, 1, 1), dtype=torch.float32),
        "valid": torch.zeros((0, 1, 1, 1), dtype=torch.bool),
        "min_depth": torch.zeros(0, dtype=torch.float64),
        "max_depth": torch.zeros(0, dtype=torch.float64),
        "source": [],
        "key": [],
    }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack same-size samples (no sample: :func:`empty_batch`); raise naming the keys if
    resolutions differ."""
    if not samples:
        return empty_batch()
    same_size([s["rgb"].shape for s in samples], [s["key"] for s in samples])
    out: dict[str, Any] = {
        k: torch.stack([s[k] for s in samples]) for k in ("rgb", "depth", "valid")
    }
    for k in ("min_depth", "max_depth"):
        out[k] = torch.tensor([s[k] for s in samples], dtype=torch.float64)
    for k in ("source", "key"):
        out[k] = [s[k] for s in samples]
    return out
