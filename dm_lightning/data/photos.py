"""Reading image files: a photo the way a viewer shows it (the one reader of ``predict``'s
inputs and of the images point clouds are coloured from, so a depth map and its colours always
line up), and a 16-bit depth PNG (the one decoder of the dataset converters and of the metric
depth helper's reference maps)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

#: The most pixels a photo may have (64 megapixels, e.g. 9237x6928; 9238x6928 is 864 over):
#: larger ones are refused before they are decoded. At this size predict holds about 3 GB of
#: pixel arrays (uint8 photo, float copies, depth at input size) whatever its processing
#: resolution; PIL's own guard only warns from 89 megapixels and refuses from 179.
MAX_PHOTO_PIXELS = 64_000_000


class ImageDecodeError(ValueError):
    """An image file that does not decode, or not to what was expected; the message says which
    (the caller adds the file's name)."""


class PhotoTooLargeError(ImageDecodeError):
    """A photo over :data:`MAX_PHOTO_PIXELS`, refused before its pixels are decoded."""


def read_photo(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """An image file (JPEG, PNG, ...) -> (H, W, 3) uint8 RGB, EXIF orientation applied.

    Phones store portrait photos landscape plus an EXIF rotation; applying it gives the size
    and orientation a viewer shows (and ``predict`` writes its depth maps in).

    Raises:
        PhotoTooLargeError: more than ``max_pixels`` pixels (default
            :data:`MAX_PHOTO_PIXELS`); only the header has been read. The message says the
            size and the limit (the caller adds the file's name).
        Whatever PIL raises for a file it cannot decode (OSError, SyntaxError, ValueError, ...).
    """
    with warnings.catch_warnings():
        # Our limit is lower and says what to do; PIL's own warning would only add noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except Image.DecompressionBombError as err:
            raise PhotoTooLargeError(str(err)) from err
    limit = MAX_PHOTO_PIXELS if max_pixels is None else max_pixels
    with image:
        width, height = image.size
        if width * height > limit:
            # Exact counts: a size just over the limit would round to the limit itself.
            raise PhotoTooLargeError(
                f"{width}x{height} = {width * height:,} pixels, over the limit of {limit:,}: "
                "downscale it first (e.g. to a 4000-pixel long edge)"
            )
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


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
