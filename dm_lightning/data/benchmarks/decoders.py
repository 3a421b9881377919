"""Depth (and RGB) file decoders of the benchmark readers: file bytes -> arrays.

A :data:`DepthDecoder` maps file bytes to (H, W) float32 metres, 0 or non-finite meaning "no
measurement". Integer images are read by :class:`ScaledDepthDecoder` (metres = raw x scale);
the other encodings (SUN RGB-D's rotated millimetres, NYU's raw Kinect PGM, ETH3D's headerless
float32 raster, DIODE's ``.npy``) have their own function. :data:`DEPTH_DECODERS` names the
ready-made sensor decoders that :class:`~dm_lightning.data.benchmarks.RGBDFolder` accepts by
name.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import numpy as np
from PIL import Image

DepthDecoder = Callable[[bytes], np.ndarray]
"""File bytes -> (H, W) float32 metres; 0 or non-finite = no measurement."""


def decode_rgb(data: bytes) -> np.ndarray:
    """Image file bytes -> (H, W, 3) uint8 RGB."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def decode_single_channel(data: bytes) -> np.ndarray:
    """Single-channel image bytes (e.g. 16-bit PNG) -> (H, W) integer array of its raw values.

    Raises:
        ValueError: the image has several channels.
    """
    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"expected a single-channel depth image, got shape {array.shape}")
    return array


class ScaledDepthDecoder:
    """Decoder of integer depth images (e.g. 16-bit PNG): metres = raw value x ``scale``.

    A class rather than a closure so that datasets holding one pickle into spawned workers.

    Args:
        scale: metres per unit (1e-3 for millimetres, 1/256 for KITTI, 1/5000 for TUM).
        invalid_value: raw value that means "no measurement" (None: every value is a depth).
    """

    def __init__(self, scale: float, invalid_value: int | None = 0) -> None:
        if not scale > 0:
            raise ValueError(f"depth scale must be > 0 metres per unit, got {scale!r}")
        self.scale, self.invalid_value = float(scale), invalid_value

    def __call__(self, data: bytes) -> np.ndarray:
        """File bytes -> (H, W) float32 metres, 0 where the raw value is ``invalid_value``."""
        raw = decode_single_channel(data)
        depth = raw.astype(np.float64) * self.scale
        if self.invalid_value is not None:
            depth[raw == self.invalid_value] = 0.0
        return depth.astype(np.float32)

    def __repr__(self) -> str:
        return f"ScaledDepthDecoder(scale={self.scale!r}, invalid_value={self.invalid_value!r})"


decode_tum = ScaledDepthDecoder(1 / 5000)
"""TUM RGB-D depth PNG: uint16 / 5000 -> metres, 0 = invalid."""

decode_redwood = ScaledDepthDecoder(1e-3)
"""Redwood / ICL-NUIM depth PNG: uint16 millimetres, 0 = invalid."""


def decode_sun_rgbd(data: bytes) -> np.ndarray:
    """SUN RGB-D depth PNG -> (H, W) float32 metres, 0 = invalid.

    SUN RGB-D stores millimetres rotated left by 3 bits within 16 bits:
    ``mm = ((v >> 3) | (v << 13)) & 0xFFFF``.
    """
    raw = decode_single_channel(data).astype(np.uint32)  # room for the << 13
    millimetres = ((raw >> 3) | (raw << 13)) & 0xFFFF
    return (millimetres.astype(np.float64) / 1000.0).astype(np.float32)


NYU_RAW_INVALID = 2047
_PGM_HEADER = re.compile(rb"P5\s+(\d+)\s+(\d+)\s+(\d+)\s")


def decode_nyu_raw(data: bytes) -> np.ndarray:
    """NYU Depth v2 raw Kinect frame (``.pgm``) -> (H, W) float32 metres, 0 = invalid.

    The file is a binary PGM whose 16-bit samples are **little-endian** raw disparities (the
    PGM standard says big-endian, so generic readers byte-swap them). Depth =
    351.3 / (1092.5 - v); v = 2047 (and any v >= 1092.5, which has no positive depth) is
    invalid. Header comments are not supported (the NYU dumps have none).

    Raises:
        ValueError: not a 16-bit binary PGM, or too few samples.
    """
    header = _PGM_HEADER.match(data)
    if header is None:
        raise ValueError("expected a binary PGM ('P5 <width> <height> <maxval>') header")
    width, height, maxval = map(int, header.groups())
    if maxval < 256:
        raise ValueError(f"expected 16-bit PGM samples (maxval >= 256), got maxval {maxval}")
    if len(data) - header.end() < 2 * width * height:
        raise ValueError(f"PGM of {width}x{height} 16-bit samples is truncated")
    raw = np.frombuffer(data, dtype="<u2", count=width * height, offset=header.end())
    raw = raw.reshape(height, width).astype(np.float64)
    measured = (raw != NYU_RAW_INVALID) & (raw < 1092.5)
    depth = np.zeros_like(raw)
    depth[measured] = 351.3 / (1092.5 - raw[measured])
    return depth.astype(np.float32)


ETH3D_GT_SHAPE = (4032, 6048)


def decode_eth3d(data: bytes) -> np.ndarray:
    """ETH3D ground truth -> (4032, 6048) float32 metres, inf = invalid (read-only view).

    The file is a headerless little-endian float32 raster of 4032 x 6048 (H x W) whatever its
    name says (the standard archive keeps the ``.JPG`` name); inf marks pixels without GT. The
    readers zero non-finite values once, later: a copy here would cost ~0.5 s per frame.

    Raises:
        ValueError: the size is not 4032 * 6048 * 4 bytes.
    """
    expected = ETH3D_GT_SHAPE[0] * ETH3D_GT_SHAPE[1] * 4
    if len(data) != expected:
        raise ValueError(
            f"expected a raw float32 raster of {ETH3D_GT_SHAPE[0]}x{ETH3D_GT_SHAPE[1]} "
            f"({expected} bytes), got {len(data)} bytes"
        )
    return np.frombuffer(data, dtype="<f4").reshape(ETH3D_GT_SHAPE)


def decode_npy(data: bytes) -> np.ndarray:
    """``.npy`` bytes -> its array with singleton axes removed (DIODE's (H, W, 1) -> (H, W))."""
    return np.load(io.BytesIO(data), allow_pickle=False).squeeze()


DEPTH_DECODERS: dict[str, DepthDecoder] = {
    "tum": decode_tum,
    "sun_rgbd": decode_sun_rgbd,
    "nyu_raw": decode_nyu_raw,
    "redwood": decode_redwood,
}
"""Ready-made decoders of real sensor encodings, by name (``RGBDFolder(decode="tum")``)."""
