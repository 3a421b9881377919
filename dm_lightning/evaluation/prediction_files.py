"""Depth prediction files of any model, found and read for evaluation.

:class:`~dm_lightning.evaluation.prediction_folder.PredictionFolder` evaluates a folder of them:
one file per image of a benchmark list, in one of these formats (first found wins, in this
order, so that ``dm-lightning predict``'s exact ``.npy`` is read rather than its stretched
16-bit ``.png``):

- ``.npy``: a float (16, 32 or 64 bit) or integer (16 bit or wider) array, (H, W) or with axes
  of size 1 around it ((1, H, W), (H, W, 1));
- ``.pfm``: a greyscale (``Pf``) Portable Float Map, either byte order;
- ``.png``: single-channel 16-bit grey (its raw units).

8-bit images and arrays (256 levels, too coarse for depth metrics), several channels, and NaN
or infinite values are refused with the file's name. Where a file is looked for is
:func:`prediction_candidates`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from dm_lightning.data.photos import ImageDecodeError, read_uint16_png
from dm_lightning.errors import InputFileError

#: Suffixes of prediction files, in the order they are looked for.
PREDICTION_SUFFIXES = (".npy", ".pfm", ".png")
_PFM_HEADER = re.compile(rb"(P[Ff])\s+(\d+)\s+(\d+)\s+([-+0-9.eE]+)\s")


def prediction_candidates(folder: str | Path, rel_path: str | None, key: str) -> list[Path]:
    """The paths the prediction of one image may have under ``folder``, in the order they are
    tried: the image's path in the benchmark list with its suffix swapped
    (``test/kitchen_0004/rgb_0001.png`` -> ``test/kitchen_0004/rgb_0001.npy``), then its sample
    key (``test_kitchen_0004_rgb_0001.npy``: what ``dm-lightning predict`` writes over a
    benchmark), each with every suffix of :data:`PREDICTION_SUFFIXES`.

    Args:
        folder: the prediction folder.
        rel_path: the image's path relative to the benchmark root (None: by key only, e.g. a
            shard sample).
        key: the sample key (:func:`~dm_lightning.data.benchmarks.sample_key`).
    """
    folder = Path(folder)
    stems = [] if rel_path is None else [str(Path(rel_path).with_suffix(""))]
    stems += [key] if key not in stems else []
    return [folder / f"{stem}{suffix}" for stem in stems for suffix in PREDICTION_SUFFIXES]


def find_prediction(folder: str | Path, rel_path: str | None, key: str) -> Path | None:
    """The first existing file of :func:`prediction_candidates`, or None."""
    return next((p for p in prediction_candidates(folder, rel_path, key) if p.is_file()), None)


def read_prediction(path: str | Path) -> np.ndarray:
    """A prediction file -> (H, W) float32 (float files of up to 32 bits) or float64 (64-bit
    floats and integers, exactly) values, as stored: no range or sign is assumed.

    Raises:
        InputFileError: an unknown suffix, a file that does not decode, an 8-bit image or
            array, not one channel, not 2-D after dropping axes of size 1, empty, or with NaN
            or infinite values; the message names the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputFileError(f"{path}: cannot read as a .npy array ({err})") from err
    elif suffix == ".pfm":
        array = read_pfm(path)
    elif suffix == ".png":
        try:
            array = read_uint16_png(path)
        except ImageDecodeError as err:
            raise InputFileError(
                f"{path}: {err}; a PNG prediction must be 16-bit grey (8 bits are 256 levels, "
                "too coarse for depth metrics): save float32 .npy, .pfm or 16-bit PNG"
            ) from err
    else:
        raise InputFileError(
            f"{path}: unknown prediction format; expected {', '.join(PREDICTION_SUFFIXES)}"
        )
    return _checked(array, path)


def _checked(array: np.ndarray, path: Path) -> np.ndarray:
    """``array`` as (H, W) float32/float64 with finite values, or an error naming ``path``."""
    kind, bits = array.dtype.kind, 8 * array.dtype.itemsize
    if kind not in "fiu":
        raise InputFileError(f"{path}: expected numeric prediction values, got dtype {array.dtype}")
    if kind in "iu" and bits < 16:
        raise InputFileError(
            f"{path}: {array.dtype} values (256 levels) are too coarse for depth metrics: "
            "save float32, or integers of 16 bits or more"
        )
    shape = array.shape
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2 or array.size == 0:
        raise InputFileError(
            f"{path}: expected one (H, W) prediction map (axes of size 1 around it allowed), "
            f"got shape {shape}"
        )
    exact = np.float32 if kind == "f" and bits <= 32 else np.float64
    array = array.astype(exact, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise InputFileError(f"{path}: {bad} of {array.size} prediction values are NaN or infinite")
    return array


def read_pfm(path: str | Path) -> np.ndarray:
    """A greyscale Portable Float Map (``Pf``) -> (H, W) float32, top row first (the file
    stores the bottom row first; a negative scale means little-endian).

    Raises:
        InputFileError: not a PFM, a colour (``PF``) map, or truncated data.
    """
    path = Path(path)
    data = path.read_bytes()
    header = _PFM_HEADER.match(data)
    if header is None:
        raise InputFileError(f"{path}: not a PFM file (expected a 'Pf <width> <height> <scale>')")
    kind, width, height, scale = header.groups()
    if kind == b"PF":
        raise InputFileError(f"{path}: a 3-channel PFM ('PF'); expected one channel ('Pf')")
    width, height = int(width), int(height)
    try:
        little_endian = float(scale) < 0
    except ValueError:
        raise InputFileError(f"{path}: PFM scale {scale!r} is not a number") from None
    count = width * height
    if len(data) - header.end() < 4 * count:
        raise InputFileError(f"{path}: PFM of {width}x{height} float32 values is truncated")
    values = np.frombuffer(data, "<f4" if little_endian else ">f4", count, header.end())
    return np.flipud(values.reshape(height, width)).astype(np.float32)
