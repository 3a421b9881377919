"""The one sample schema of every dm_lightning shard.

Every writer (the synthetic generator, the Hypersim and Virtual KITTI converters) calls
:func:`encode_sample` and every reader calls :func:`decode_sample`, so this file is the single
place that defines what a shard holds.

A shard is a plain tar file (``tar tf`` lists it). One sample is a group of members sharing a
key; keys contain no dots, because webdataset splits the extension at the first dot:

=============  ==============================================================================
member         content
=============  ==============================================================================
``rgb.png``    RGB image, uint8, H x W x 3 (``rgb.jpg`` is also accepted when reading)
``depth.png``  depth, single-channel **uint16** PNG; metres = value x ``depth_scale``;
               0 = no measurement (invalid)
``json``       UTF-8 JSON object:
               ``source`` (str, e.g. "hypersim", "vkitti", "synthetic_indoor"),
               ``depth_scale`` (float, metres per PNG unit, e.g. 0.001 for millimetres),
               ``min_depth`` / ``max_depth`` (float, metres: the source's valid open range),
               ``height`` / ``width`` (int, pixels), and optional extras (``focal`` in pixels,
               ``scene``, ...)
=============  ==============================================================================

Depth is decoded here, never with webdataset's generic image decoders, which silently reduce
16-bit PNGs to 8 bits.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
from PIL import Image

SCHEMA_KEYS = ("rgb.png", "depth.png", "json")
UINT16_MAX = 65535


class CorruptSampleError(ValueError):
    """A shard member is missing or cannot be decoded; the message names the shard and key."""


def quantize_depth(depth: np.ndarray, depth_scale: float) -> np.ndarray:
    """Metric depth -> uint16 PNG units.

    Args:
        depth: (H, W) metres; 0, negative, NaN or inf mark invalid pixels.
        depth_scale: metres per unit (> 0).

    Returns:
        (H, W) uint16, ``round(depth / depth_scale)``, 0 where invalid.

    Raises:
        ValueError: a valid depth does not fit in 16 bits at this scale.
    """
    if not depth_scale > 0:
        raise ValueError(f"depth_scale must be > 0 metres per unit, got {depth_scale!r}")
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth) & (depth > 0)
    units = np.zeros(depth.shape, dtype=np.float64)
    units[valid] = np.round(depth[valid] / depth_scale)
    if units.max(initial=0) > UINT16_MAX:
        raise ValueError(
            f"depth {depth[valid].max():.3f} m does not fit in uint16 at depth_scale={depth_scale} "
            f"(max {UINT16_MAX * depth_scale:.3f} m); use a larger depth_scale or mark it invalid"
        )
    return units.astype(np.uint16)


def encode_sample(
    key: str,
    rgb: np.ndarray,
    depth: np.ndarray,
    *,
    source: str,
    depth_scale: float,
    min_depth: float,
    max_depth: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build one webdataset sample (a dict for ``webdataset.TarWriter.write``).

    Args:
        key: sample key, unique within the shard, without dots.
        rgb: (H, W, 3) uint8.
        depth: (H, W) metres, invalid pixels 0/NaN/inf (stored as 0).
        source: data source name.
        depth_scale: metres per uint16 unit.
        min_depth, max_depth: valid open range of the source, metres.
        extra: further JSON fields (must be JSON-serialisable).
    """
    if "." in key:
        raise ValueError(f"sample key {key!r} contains a dot; webdataset would split it")
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"sample {key}: rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if depth.shape != rgb.shape[:2]:
        raise ValueError(f"sample {key}: depth shape {depth.shape} != rgb shape {rgb.shape[:2]}")
    units = quantize_depth(depth, depth_scale)
    reserved = {"source", "depth_scale", "min_depth", "max_depth", "height", "width"}
    clash = reserved & set(extra or {})
    if clash:
        raise ValueError(
            f"sample {key}: extra fields {sorted(clash)} would overwrite schema fields"
        )
    meta = {
        "source": source,
        "depth_scale": float(depth_scale),
        "min_depth": float(min_depth),
        "max_depth": float(max_depth) if math.isfinite(max_depth) else None,
        "height": int(rgb.shape[0]),
        "width": int(rgb.shape[1]),
        **(extra or {}),
    }
    return {
        "__key__": key,
        "rgb.png": _png_bytes(Image.fromarray(rgb, mode="RGB")),
        "depth.png": _png_bytes(Image.fromarray(units)),
        "json": json.dumps(meta).encode("utf-8"),
    }


def decode_sample(sample: dict[str, Any], depth_as_units: bool = False) -> dict[str, Any]:
    """Decode a raw webdataset sample (bytes per member) written by :func:`encode_sample`.

    Args:
        sample: raw sample, bytes per member plus ``__key__`` / ``__url__``.
        depth_as_units: return the read-only decoded arrays as they come out of the PNG
            decoder (``rgb`` and ``depth_units``, the integer PNG values) instead of a writable
            RGB copy and float metres; the training stream's batch packing
            (:mod:`dm_lightning.data.packing`) converts them in its one copy.

    Returns:
        dict with ``key`` (str), ``rgb`` ((H, W, 3) uint8), ``depth`` ((H, W) float32 metres,
        0 = invalid) or, with ``depth_as_units``, ``depth_units`` ((H, W) integer units),
        ``meta`` (the JSON dict; ``max_depth`` None means unbounded).

    Raises:
        CorruptSampleError: naming the shard (``__url__``) and key.
    """
    key = sample.get("__key__", "?")
    where = f"shard {sample.get('__url__', '?')}, sample {key}"
    try:
        meta = json.loads(sample["json"])
        rgb_bytes = sample.get("rgb.png", sample.get("rgb.jpg"))
        if rgb_bytes is None:
            raise KeyError("rgb.png")
        image = Image.open(io.BytesIO(rgb_bytes))
        image = image if image.mode == "RGB" else image.convert("RGB")
        # np.array makes the one writable copy; np.asarray wraps the decoder's bytes.
        rgb = np.asarray(image) if depth_as_units else np.array(image)
        depth_img = Image.open(io.BytesIO(sample["depth.png"]))
        units = np.asarray(depth_img)
        if units.dtype not in (np.uint16, np.int32, np.uint8) or units.ndim != 2:
            raise ValueError(f"depth.png must be single-channel 16-bit, got mode {depth_img.mode}")
        scale = float(meta["depth_scale"])
        if not scale > 0:
            raise ValueError(f"depth_scale must be > 0 metres per unit, got {scale!r}")
    except KeyError as err:
        raise CorruptSampleError(f"{where}: missing member or JSON field {err}") from err
    except Exception as err:  # PIL/JSON errors on truncated or corrupt bytes
        raise CorruptSampleError(f"{where}: cannot decode ({type(err).__name__}: {err})") from err
    if units.shape != rgb.shape[:2]:
        raise CorruptSampleError(f"{where}: depth {units.shape} and rgb {rgb.shape[:2]} differ")
    if depth_as_units:
        return {"key": key, "rgb": rgb, "depth_units": units, "meta": meta}
    depth = units.astype(np.float32) * np.float32(scale)
    return {"key": key, "rgb": rgb, "depth": depth, "meta": meta}


def valid_mask(depth: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Valid pixels of a decoded sample: finite and inside the source's open range
    ``(min_depth, max_depth)`` metres (``max_depth`` None = unbounded). (H, W) bool."""
    max_depth = math.inf if meta.get("max_depth") is None else float(meta["max_depth"])
    return np.isfinite(depth) & (depth > float(meta["min_depth"])) & (depth < max_depth)


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
