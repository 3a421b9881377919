"""Evaluation batches: a shard sample as tensors, samples stacked into one batch dict, and the
batch of zero samples.

The sample and batch formats (:class:`~dm_lightning.data.batch.DepthSample`,
:class:`~dm_lightning.data.batch.EvalBatch`, the empty batch) are typed in
:mod:`dm_lightning.data.batch`.
"""

from __future__ import annotations

from typing import Any

import torch

from dm_lightning.data.batch import DepthSample, EvalBatch
from dm_lightning.data.packing import same_size
from dm_lightning.data.schema import depth_range, valid_mask


def sample_to_tensors(sample: dict[str, Any]) -> DepthSample:
    """A decoded schema sample (:func:`~dm_lightning.data.schema.decode_sample`) as a
    :class:`~dm_lightning.data.batch.DepthSample`, with the valid mask of the source's range."""
    meta = sample["meta"]
    depth = torch.from_numpy(sample["depth"]).unsqueeze(0)
    min_depth, max_depth = depth_range(meta)
    valid = torch.from_numpy(valid_mask(sample["depth"], meta)).unsqueeze(0)
    return {
        # A (3, H, W) view of the HWC array: collate's stack makes the one copy.
        "rgb": torch.from_numpy(sample["rgb"]).permute(2, 0, 1),
        "depth": depth,
        "valid": valid,
        "min_depth": min_depth,
        "max_depth": max_depth,
        "source": meta["source"],
        "key": sample["key"],
    }


def empty_batch() -> EvalBatch:
    """The eval batch of zero samples (:mod:`dm_lightning.data.batch`), without
    ``skipped``."""
    return {
        "rgb": torch.zeros((0, 3, 1, 1), dtype=torch.uint8),
        "depth": torch.zeros((0, 1, 1, 1), dtype=torch.float32),
        "valid": torch.zeros((0, 1, 1, 1), dtype=torch.bool),
        "min_depth": torch.zeros(0, dtype=torch.float64),
        "max_depth": torch.zeros(0, dtype=torch.float64),
        "source": [],
        "key": [],
    }


def collate(samples: list[DepthSample]) -> EvalBatch:
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
