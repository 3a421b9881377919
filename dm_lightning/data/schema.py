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
               ``schema_version`` (int, :data:`SCHEMA_VERSION`; absent in shards written
               before it existed, which are read as version 1),
               ``source`` (non-empty str, e.g. "hypersim", "vkitti", "synthetic_indoor"),
               ``depth_scale`` (finite float > 0, metres per PNG unit, e.g. 0.001 for mm),
               ``min_depth`` / ``max_depth`` (metres: the source's valid open range;
               ``min_depth`` finite >= 0, ``max_depth`` finite > ``min_depth`` or null =
               unbounded), ``height`` / ``width`` (int > 0, pixels, those of both PNGs), and
               optional extras (``focal`` in pixels, ``scene``, ...)
=============  ==============================================================================

:func:`decode_sample` checks every one of these fields (and that both PNGs decode to the
stated size) and raises :class:`CorruptSampleError` naming the shard, key, field and value;
:func:`encode_sample` refuses to write a sample that would fail these checks.

Depth is decoded here, never with webdataset's generic image decoders, which silently reduce
16-bit PNGs to 8 bits.
"""

from __future__ import annotations

import io
import json
import math
import struct
import zlib
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

import numpy as np
from PIL import Image

SCHEMA_KEYS = ("rgb.png", "depth.png", "json")
UINT16_MAX = 65535

SCHEMA_VERSION = 1
"""The ``schema_version`` :func:`encode_sample` writes and :func:`decode_sample` reads."""

RESERVED_FIELDS = (
    "schema_version",
    "source",
    "depth_scale",
    "min_depth",
    "max_depth",
    "height",
    "width",
)
"""JSON fields of the schema (``extra`` fields of :func:`encode_sample` may not reuse them)."""

# What PIL, zlib and the JSON parser raise on truncated or corrupt bytes (UnidentifiedImageError
# and truncation are OSErrors, a bad PNG chunk a SyntaxError, JSON and UTF-8 errors ValueErrors).
DECODE_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    SyntaxError,
    zlib.error,
    struct.error,
    Image.DecompressionBombError,
)


class CorruptSampleError(ValueError):
    """A shard member is missing or cannot be decoded; the message names the shard and key,
    and ``shard`` / ``key`` hold them (None when unknown)."""

    def __init__(self, message: str, shard: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.shard = shard
        self.key = key


class SchemaVersionError(CorruptSampleError):
    """A sample written with another ``schema_version`` than this reader's."""


class DepthFormatError(CorruptSampleError):
    """``depth.png`` is an 8-bit PNG: a writer that broke the schema (16-bit units), not a
    damaged sample. Read as depth it would be 0-255 units (0-0.255 m at the usual scale), so
    the streams stop on it instead of skipping (see ``streams.skips.SkipCounter``)."""


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
    clash = set(RESERVED_FIELDS) & set(extra or {})
    if clash:
        raise ValueError(
            f"sample {key}: extra fields {sorted(clash)} would overwrite schema fields"
        )
    meta = {
        "schema_version": SCHEMA_VERSION,
        "source": source,
        "depth_scale": float(depth_scale),
        "min_depth": float(min_depth),
        "max_depth": float(max_depth) if math.isfinite(max_depth) else None,
        "height": int(rgb.shape[0]),
        "width": int(rgb.shape[1]),
        **(extra or {}),
    }
    try:
        check_meta(meta)
    except CorruptSampleError as err:
        raise ValueError(f"sample {key}: {err}") from None
    return {
        "__key__": key,
        "rgb.png": _png_bytes(Image.fromarray(rgb, mode="RGB")),
        "depth.png": _png_bytes(Image.fromarray(units)),
        "json": json.dumps(meta).encode("utf-8"),
    }


def decode_sample(sample: dict[str, Any], depth_as_units: bool = False) -> dict[str, Any]:
    """Decode a raw webdataset sample (bytes per member) written by :func:`encode_sample`.

    The JSON is parsed and checked first (:func:`decode_meta`), so a sample with bad fields
    costs no PNG decode.

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
        CorruptSampleError: naming the shard (``__url__``), key and, for a bad JSON field, the
            field and its value; :class:`SchemaVersionError` for another schema version.
    """
    key = sample.get("__key__", "?")
    shard = sample.get("__url__", "?")
    where = f"shard {shard}, sample {key}"
    meta = decode_meta(sample)
    rgb_bytes = sample.get("rgb.png", sample.get("rgb.jpg"))
    for member, data in (("rgb.png", rgb_bytes), ("depth.png", sample.get("depth.png"))):
        if data is None:
            raise CorruptSampleError(f"{where}: missing member {member!r}", shard, key)
    try:
        image = Image.open(io.BytesIO(rgb_bytes))
        image = image if image.mode == "RGB" else image.convert("RGB")
        # np.array makes the one writable copy; np.asarray wraps the decoder's bytes.
        rgb = np.asarray(image) if depth_as_units else np.array(image)
        depth_img = Image.open(io.BytesIO(sample["depth.png"]))
        units = np.asarray(depth_img)
    except DECODE_ERRORS as err:
        raise CorruptSampleError(
            f"{where}: cannot decode ({type(err).__name__}: {err})", shard, key
        ) from err
    if units.dtype == np.uint8 and units.ndim == 2:
        raise DepthFormatError(
            f"{where}: depth.png is an 8-bit PNG (mode {depth_img.mode}); the schema stores "
            "depth as 16-bit PNG units (mode I;16, metres = units x depth_scale): write the "
            "shard again with a 16-bit depth map (tools/convert_*.py do)",
            shard,
            key,
        )
    if units.dtype not in (np.uint16, np.int32) or units.ndim != 2:
        raise CorruptSampleError(
            f"{where}: depth.png must be single-channel 16-bit, got mode {depth_img.mode}",
            shard,
            key,
        )
    if units.shape != rgb.shape[:2]:
        raise CorruptSampleError(
            f"{where}: depth {units.shape} and rgb {rgb.shape[:2]} differ", shard, key
        )
    if units.shape != (meta["height"], meta["width"]):
        raise CorruptSampleError(
            f"{where}: the PNGs are {units.shape[0]}x{units.shape[1]} but the JSON says "
            f"height x width = {meta['height']}x{meta['width']}",
            shard,
            key,
        )
    if depth_as_units:
        return {"key": key, "rgb": rgb, "depth_units": units, "meta": meta}
    depth = units.astype(np.float32) * np.float32(meta["depth_scale"])
    return {"key": key, "rgb": rgb, "depth": depth, "meta": meta}


def decode_meta(sample: dict[str, Any]) -> dict[str, Any]:
    """The checked JSON dict of a raw sample (no PNG is decoded).

    A missing ``schema_version`` is read as 1 (shards written before the field existed) and
    set in the returned dict.

    Raises:
        CorruptSampleError: no or unparsable JSON, or a field violating the schema table
            (naming shard, key, field and value); :class:`SchemaVersionError` for another
            ``schema_version``.
    """
    key = sample.get("__key__", "?")
    shard = sample.get("__url__", "?")
    where = f"shard {shard}, sample {key}"
    if "json" not in sample:
        raise CorruptSampleError(f"{where}: missing member 'json'", shard, key)
    try:
        meta = json.loads(sample["json"])
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise CorruptSampleError(
            f"{where}: cannot parse the JSON ({type(err).__name__}: {err})", shard, key
        ) from err
    try:
        check_meta(meta)
    except SchemaVersionError as err:
        raise SchemaVersionError(f"{where}: {err}", shard, key) from None
    except CorruptSampleError as err:
        raise CorruptSampleError(f"{where}: {err}", shard, key) from None
    meta.setdefault("schema_version", 1)
    return meta


def check_meta(meta: Any) -> None:
    """Check a sample's JSON against the schema table (see the module docstring).

    Raises:
        CorruptSampleError: naming the field, its value and what was expected (the caller
            adds the shard and key); :class:`SchemaVersionError` for another version.
    """
    if not isinstance(meta, dict):
        raise CorruptSampleError(f"the JSON is a {type(meta).__name__}, expected an object")
    version = meta.get("schema_version", 1)
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise SchemaVersionError(
            f"schema_version {version!r}, but this dm_lightning reads schema version "
            f"{SCHEMA_VERSION} (shards written by another dm_lightning: rewrite them with this "
            "version's converters, or use the version that wrote them)"
        )
    for field in ("source", "depth_scale", "min_depth", "max_depth", "height", "width"):
        if field not in meta:
            raise CorruptSampleError(f"missing JSON field {field!r}")
    source = meta["source"]
    if not isinstance(source, str) or not source:
        raise CorruptSampleError(f"JSON field 'source' = {source!r}, expected a non-empty string")
    _number(meta, "depth_scale", lambda v: v > 0, "a finite number > 0 (metres per unit)")
    low = _number(meta, "min_depth", lambda v: v >= 0, "a finite number >= 0 (metres)")
    if meta["max_depth"] is not None:
        high = _number(
            meta, "max_depth", lambda v: True, "a finite number (metres), or null = unbounded"
        )
        if not low < high:
            raise CorruptSampleError(
                f"JSON fields min_depth = {low!r} >= max_depth = {high!r}: expected "
                "min_depth < max_depth (no depth could be valid)"
            )
    for field in ("height", "width"):
        value = meta[field]
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
            raise CorruptSampleError(
                f"JSON field {field!r} = {value!r}, expected an integer >= 1 (pixels)"
            )


def _number(meta: dict[str, Any], field: str, ok: Callable[[float], bool], expected: str) -> float:
    """``meta[field]`` as a float, if it is a finite real number for which ``ok`` holds."""
    value = meta[field]
    real = isinstance(value, Real) and not isinstance(value, bool)
    if not (real and math.isfinite(value) and ok(float(value))):
        raise CorruptSampleError(f"JSON field {field!r} = {value!r}, expected {expected}")
    return float(value)


def depth_range(meta: dict[str, Any]) -> tuple[float, float]:
    """``(min_depth, max_depth)`` metres of a sample's JSON (``max_depth`` None -> inf)."""
    high = meta.get("max_depth")
    return float(meta["min_depth"]), math.inf if high is None else float(high)


def in_depth_range(depth: Any, low: Any, high: Any) -> Any:
    """The one valid-depth rule: ``low < depth < high``, for numpy arrays and torch tensors
    alike (bool of ``depth``'s shape; bounds broadcast). NaN and +-inf depths fail it with
    finite bounds, and with ``high`` inf too, so no separate finiteness test is needed.
    Compared in ``depth``'s precision (float32 for decoded depth, as the bounds are cast)."""
    return (depth > low) & (depth < high)


def valid_mask(depth: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Valid pixels of a decoded sample: inside the source's open range ``(min_depth,
    max_depth)`` metres (``max_depth`` None = unbounded), hence finite. (H, W) bool."""
    return in_depth_range(depth, *depth_range(meta))


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
