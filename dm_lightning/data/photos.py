"""Reading image files: a photo the way a viewer shows it (the one reader of ``predict``'s
inputs and of the images point clouds are coloured from, so a depth map and its colours always
line up), and a 16-bit depth PNG (the one decoder of the dataset converters and of the metric
depth helper's reference maps)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps


def read_photo(path: str | Path) -> np.ndarray:
    """An image file (JPEG, PNG, ...) -> (H, W, 3) uint8 RGB, EXIF orientation applied.

    Phones store portrait photos landscape plus an EXIF rotation; applying it gives the size
    and orientation a viewer shows (and ``predict`` writes its depth maps in).

    Raises:
        Whatever PIL raises for a file it cannot decode (OSError, SyntaxError, ValueError, ...).
    """
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


class ImageDecodeError(ValueError):
    """An image file that does not decode, or not to what was expected; the message says which
    (the caller adds the file's name)."""


def read_uint16_png(source: str | Path | BinaryIO) -> np.ndarray:
    """A single-channel 16-bit PNG (a path or an open binary file) -> (H, W) integer units
    (uint16, or int32 as PIL opens some: ``I;16`` / ``I``).

    Raises:
        ImageDecodeError: it does not decode, or is not 16-bit grey (names its mode).
    """
    try:
        with Image.open(source) as image:
            mode = image.mode
            units = np.asarray(image)
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageDecodeError(f"cannot decode image ({err})") from err
    if units.ndim != 2 or units.dtype.kind not in "ui" or units.dtype.itemsize < 2:
        raise ImageDecodeError(f"expected a single-channel 16-bit PNG, got mode {mode}")
    return units
