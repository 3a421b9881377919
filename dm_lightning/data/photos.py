"""Reading a photo the way a viewer shows it: the one reader of ``predict``'s inputs and of the
images point clouds are coloured from, so a depth map and its colours always line up."""

from __future__ import annotations

from pathlib import Path

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
