"""Depth files of the metric-depth and point-cloud paths: reading a relative prediction
(``dm-lightning predict``'s float32 ``.npy``), a reference depth map (``.npy`` metres or 16-bit
PNG units) and known points (a CSV of ``x, y, metres``), and writing metric depth (``.npy``
metres plus a 16-bit PNG). Every bad file raises :class:`~dm_lightning.errors.InputFileError`
naming it (and the CSV line); the fit to metres is :mod:`dm_lightning.inference.metric_depth`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dm_lightning.data.photos import ImageDecodeError, read_uint16_png
from dm_lightning.data.schema import UINT16_MAX, quantize_depth
from dm_lightning.errors import InputFileError, MissingPathError

DEFAULT_PNG_SCALE = 1e-3  # metres per PNG unit: millimetres, up to 65.535 m
POINT_COLUMNS = ("x", "y", "metres")


@dataclass(frozen=True)
class KnownPoints:
    """Known depths at pixels, read from a CSV by :func:`read_points`.

    ``x`` (column) and ``y`` (row) are (N,) int64 0-based pixel indices, ``metres`` (N,)
    float64 depths > 0, ``rows`` (N,) the CSV line numbers (for messages).
    """

    x: np.ndarray
    y: np.ndarray
    metres: np.ndarray
    rows: np.ndarray
    source: str = "points"


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"{path}: no such file")
    return path


def _as_image(array: np.ndarray, path: Path, what: str) -> np.ndarray:
    """``array`` as (H, W): leading axes of size 1 ((1, H, W), (1, 1, H, W)) are dropped."""
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or min(array.shape) < 1:
        raise InputFileError(f"{path}: expected a {what} of shape (H, W), got {array.shape}")
    return array


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputFileError(f"{path}: cannot read as a .npy array ({err})") from err
    if array.dtype.kind not in "fiu":
        raise InputFileError(f"{path}: expected a numeric {what}, got dtype {array.dtype}")
    return _as_image(array, path, what)


def load_prediction(path: str | Path) -> np.ndarray:
    """A relative prediction ``.npy`` (as ``dm-lightning predict`` writes) -> (H, W) float32;
    values within :data:`RANGE_TOLERANCE` (1e-6) outside [0, 1] (float rounding, as older
    ``predict`` outputs have) are clipped onto [0, 1], others are kept.

    Raises:
        MissingPathError: no such file.
        InputFileError: not an ``.npy``, not a 2-D numeric array (leading axes of size 1 are
            accepted), or values that are not finite.
    """
    path = _existing(path)
    if path.suffix.lower() != ".npy":
        raise InputFileError(
            f"{path}: expected the float32 .npy that predict writes (its 16-bit .png is "
            "stretched per image, so its values are not the prediction's)"
        )
    pred = _load_npy(path, "relative prediction").astype(np.float32)
    if not np.isfinite(pred).all():
        bad = int(np.count_nonzero(~np.isfinite(pred)))
        raise InputFileError(f"{path}: {bad} prediction values are NaN or infinite")
    return clip_rounding(pred)


#: How far outside [0, 1] a prediction value may lie and still count as rounding of [0, 1]:
#: older ``predict`` outputs were resized after their clip, and antialiased bilinear resizing
#: overshoots by float32 rounding (about 6e-8); 1e-6 is over ten float32 steps at 1.
RANGE_TOLERANCE = 1e-6


def clip_rounding(pred: np.ndarray) -> np.ndarray:
    """``pred`` with values within :data:`RANGE_TOLERANCE` outside [0, 1] clipped onto 0 / 1;
    values farther outside are kept as they are (callers that need [0, 1] refuse them)."""
    low, high = -RANGE_TOLERANCE, 1.0 + RANGE_TOLERANCE
    pred = np.where((pred < 0.0) & (pred >= low), 0.0, pred)
    return np.where((pred > 1.0) & (pred <= high), 1.0, pred).astype(np.float32)


def load_depth_map(path: str | Path, depth_scale: float | None = None) -> np.ndarray:
    """A depth map -> (H, W) float64 metres; 0, negative and non-finite values stay invalid.

    Args:
        path: ``.npy`` of metres, or a single-channel 16-bit ``.png`` of units.
        depth_scale: metres per unit; required for a PNG (e.g. 0.001 for millimetres), and
            multiplies an ``.npy``'s values if given.

    Raises:
        MissingPathError: no such file.
        InputFileError: another file type, a PNG without ``depth_scale`` or not 16-bit grey,
            a bad ``depth_scale``.
    """
    path = _existing(path)
    if depth_scale is not None and not (math.isfinite(depth_scale) and depth_scale > 0):
        raise InputFileError(f"{path}: depth scale must be > 0 metres per unit, got {depth_scale}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        depth = _load_npy(path, "depth map").astype(np.float64)
        return depth * depth_scale if depth_scale is not None else depth
    if suffix != ".png":
        raise InputFileError(f"{path}: expected a depth map as .npy (metres) or 16-bit .png")
    if depth_scale is None:
        raise InputFileError(
            f"{path}: a PNG depth map needs its depth scale in metres per unit "
            "(e.g. 0.001 for millimetres)"
        )
    try:
        units = read_uint16_png(path)
    except ImageDecodeError as err:
        raise InputFileError(f"{path}: {err}") from err
    return units.astype(np.float64) * depth_scale


def read_points(path: str | Path) -> KnownPoints:
    """Known depths from a CSV with a header row naming the columns ``x``, ``y`` and ``metres``
    (any order, other columns ignored; ``meters`` also accepted).

    ``x`` is the pixel column and ``y`` the row, 0-based from the top-left pixel; non-integer
    values round to the nearest pixel. Blank lines are skipped.

    Raises:
        MissingPathError: no such file.
        InputFileError: a missing column, or a row whose value is not a number or whose depth
            is not finite and > 0 (naming the file, the line and the value).
    """
    path = _existing(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            header = {name.strip().lower(): name for name in reader.fieldnames or () if name}
            if "meters" in header and "metres" not in header:
                header["metres"] = header["meters"]
            missing = [name for name in POINT_COLUMNS if name not in header]
            if missing:
                raise InputFileError(
                    f"{path}: no column {', '.join(missing)} in the header row "
                    f"{list(reader.fieldnames or [])}; expected the columns x, y, metres"
                )
            values: list[tuple[float, float, float, int]] = []
            for row in reader:
                if not any((cell or "").strip() for cell in row.values() if isinstance(cell, str)):
                    continue
                line = reader.line_num
                numbers = []
                for name in POINT_COLUMNS:
                    cell = row.get(header[name])
                    try:
                        numbers.append(float(cell))
                    except (TypeError, ValueError):
                        raise InputFileError(
                            f"{path} line {line}: {name}={cell!r} is not a number"
                        ) from None
                x, y, metres = numbers
                if not (math.isfinite(x) and math.isfinite(y)):
                    raise InputFileError(f"{path} line {line}: pixel x={x}, y={y} is not finite")
                if not (math.isfinite(metres) and metres > 0):
                    raise InputFileError(
                        f"{path} line {line}: metres={metres} is not a depth (need finite > 0)"
                    )
                values.append((x, y, metres, line))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputFileError(f"{path}: cannot read as CSV ({err})") from err
    table = np.array(values, dtype=np.float64).reshape(-1, 4)
    return KnownPoints(
        x=np.rint(table[:, 0]).astype(np.int64),
        y=np.rint(table[:, 1]).astype(np.int64),
        metres=table[:, 2],
        rows=table[:, 3].astype(np.int64),
        source=str(path),
    )


def save_depth(
    depth: np.ndarray, out: str | Path, png_scale: float | None = DEFAULT_PNG_SCALE
) -> tuple[Path, Path | None, int]:
    """Write metric depth as a float32 ``.npy`` (metres) and a 16-bit PNG next to it.

    Args:
        depth: (H, W) metres.
        out: the ``.npy`` path (``.npy`` is appended if missing); the PNG gets its stem.
        png_scale: metres per PNG unit (default 0.001: millimetres, up to 65.535 m); None
            writes no PNG.

    Returns:
        (npy path, PNG path or None, number of pixels beyond ``65535 * png_scale`` metres,
        written as 0 in the PNG: 0 is the invalid value of depth PNGs).
    """
    out = Path(out)
    if out.suffix.lower() != ".npy":
        out = out.with_name(out.name + ".npy")
    out.parent.mkdir(parents=True, exist_ok=True)
    depth = np.asarray(depth, dtype=np.float32)
    np.save(out, depth)
    if png_scale is None:
        return out, None, 0
    if not (math.isfinite(png_scale) and png_scale > 0):
        raise InputFileError(f"PNG scale must be > 0 metres per unit, got {png_scale}")
    beyond = np.rint(depth.astype(np.float64) / png_scale) > UINT16_MAX
    units = quantize_depth(np.where(beyond, 0.0, depth), png_scale)
    png = out.with_suffix(".png")
    Image.fromarray(units).save(png)
    return out, png, int(beyond.sum())
