"""Training batches written straight from decoded PNG arrays into one buffer per raster.

PNG decoding is the one cost a data-loading worker cannot avoid (about 14 ms per 480x640
sample here). Everything else it does is packed into a single pass per raster and sample,
written directly into the batch tensors:

- RGB: the decoded (H, W, 3) array is copied (flipped if drawn) into a (B, H, W, 3) uint8
  buffer; the batch holds its (B, 3, H, W) channels-last view, so no transposing copy is made
  on the CPU (the model's first ``.float()`` on the device keeps or fixes the layout for free).
- depth: uint16 PNG units are scaled to float32 metres on the way into the (B, 1, H, W) buffer.
- valid: ``min_depth < depth < max_depth`` of the source, compared in float32 as
  :func:`~dm_lightning.data.schema.valid_mask` does, into a (B, 1, H, W) bool buffer.

Inside a DataLoader worker the buffers are allocated in shared memory, as torch's
``default_collate`` does, so handing the batch to the main process copies nothing.
Normalised training targets are not built here: the LightningModule builds them on the
training device.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import get_worker_info


def batch_buffer(shape: Sequence[int], dtype: torch.dtype) -> Tensor:
    """An uninitialised tensor, in shared memory when called in a DataLoader worker (the
    batch then crosses to the main process without a copy)."""
    if get_worker_info() is None:
        return torch.empty(tuple(shape), dtype=dtype)
    numel = math.prod(shape)
    storage = torch.UntypedStorage._new_shared(numel * torch.empty(0, dtype=dtype).element_size())
    return torch.empty(0, dtype=dtype).set_(storage, 0, tuple(shape))


def _read_only_tensor(array: np.ndarray) -> Tensor:
    """A tensor view of a (possibly read-only) array that is only read from; torch warns about
    read-only arrays because writes through the view would be undefined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def pack_training_batch(samples: list[dict[str, Any]], flips: Sequence[bool]) -> dict[str, Any]:
    """Stack decoded samples into a training batch, flipping the drawn ones.

    Args:
        samples: from :func:`~dm_lightning.data.schema.decode_sample` with
            ``depth_as_units=True``: ``rgb`` (H, W, 3) uint8, ``depth_units`` (H, W) integer
            PNG units, ``meta`` (with ``depth_scale`` metres per unit, ``min_depth``,
            ``max_depth``), ``key``; all of one resolution.
        flips: per sample, whether to flip RGB, depth and mask left-right together.

    Returns:
        ``rgb`` (B, 3, H, W) uint8 (channels-last strides), ``depth`` (B, 1, H, W) float32
        metres (0 where not measured), ``valid`` (B, 1, H, W) bool, ``min_depth`` /
        ``max_depth`` (B,) float64 metres (inf = unbounded), ``source`` and ``key`` lists.

    Raises:
        ValueError: samples differ in resolution (naming their keys).
    """
    shapes = {s["rgb"].shape for s in samples}
    if len(shapes) != 1:
        raise ValueError(
            f"samples of one batch differ in size {sorted(shapes)} "
            f"(keys {[s['key'] for s in samples]}): give each resolution its own source"
        )
    (shape,) = shapes
    height, width = shape[:2]
    b = len(samples)
    rgb = batch_buffer((b, height, width, 3), torch.uint8)
    depth = batch_buffer((b, 1, height, width), torch.float32)
    valid = batch_buffer((b, 1, height, width), torch.bool)
    rgb_np, depth_np, valid_np = rgb.numpy(), depth.numpy(), valid.numpy()
    lows, highs = [], []
    for i, (sample, flip) in enumerate(zip(samples, flips)):
        meta = sample["meta"]
        image, units = sample["rgb"], sample["depth_units"]
        if flip:
            # torch's flip kernel is ~10x numpy's strided copy of 3-byte pixels.
            rgb[i].copy_(_read_only_tensor(image).flip(1))
            units = units[:, ::-1]
        else:
            np.copyto(rgb_np[i], image)
        d = depth_np[i, 0]
        np.multiply(units, np.float32(meta["depth_scale"]), out=d)
        low = float(meta["min_depth"])
        high = math.inf if meta.get("max_depth") is None else float(meta["max_depth"])
        # Python floats compare in float32 against the float32 depth (NEP 50), exactly as
        # schema.valid_mask does; depth from integer units is always finite.
        np.greater(d, low, out=valid_np[i, 0])
        valid_np[i, 0] &= d < high
        lows.append(low)
        highs.append(high)
    return {
        "rgb": rgb.permute(0, 3, 1, 2),
        "depth": depth,
        "valid": valid,
        "min_depth": torch.tensor(lows, dtype=torch.float64),
        "max_depth": torch.tensor(highs, dtype=torch.float64),
        "source": [s["meta"]["source"] for s in samples],
        "key": [s["key"] for s in samples],
    }
