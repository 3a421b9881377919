"""The files ``predict`` writes per image, in one place for the ``dm-lightning predict`` writer
(:class:`~dm_lightning.training.callbacks.DepthPredictionWriter`) and the Python API
(:func:`~dm_lightning.inference.api.predict_images`).

For an input with key ``sub/img`` (its path relative to the input folder, suffix dropped; see
:class:`~dm_lightning.data.predict.ImageFolder`), under the output folder:

- ``sub/img.npy``: float32 (H, W), the raw prediction in [0, 1] (1 = near for the disparity
  targets, the default; 1 = far for a model trained on the ``depth`` target);
- ``sub/img.png``: 16-bit grey PNG (H, W), the same map stretched per image to 0..65535
  (min -> 0, max -> 65535; the prediction is affine-invariant, so the stretch loses nothing a
  scale-and-shift fit would not redo, and viewers show the full contrast);
- ``sub/img_color.png``: 8-bit RGB PNG (H, W, 3), the stretched map through matplotlib's
  ``Spectral`` (:func:`~dm_lightning.visualize.colorize_depth`): near red, far blue.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from dm_lightning.errors import ConfigError
from dm_lightning.plurals import count_of
from dm_lightning.visualize import colorize_depth

log = logging.getLogger(__name__)

# Suffixes appended to an image's key; COLOR_SUFFIX is part of the file name, so an input
# whose key is another key plus it would overwrite that key's colour image (ImageFolder
# refuses such inputs).
NPY_SUFFIX = ".npy"
PNG16_SUFFIX = ".png"
COLOR_SUFFIX = "_color.png"
UINT16_MAX = 65535


def output_paths(folder: str | Path, key: str) -> dict[str, Path]:
    """The three files of ``key`` under ``folder``: ``{"npy", "png16", "color"}`` -> path.

    Raises:
        ConfigError: a key that would write outside ``folder`` (absolute, empty or with
            ``..``).
    """
    rel = Path(key)
    if not key or rel.is_absolute() or ".." in rel.parts:
        raise ConfigError(
            f"prediction key {key!r} would write outside {folder}: keys must be relative paths "
            "without '..'"
        )
    base = Path(folder) / rel
    return {
        "npy": base.with_name(base.name + NPY_SUFFIX),
        "png16": base.with_name(base.name + PNG16_SUFFIX),
        "color": base.with_name(base.name + COLOR_SUFFIX),
    }


def refuse_writing_over_inputs(
    folder: str | Path, keys: Sequence[str], inputs: Sequence[str | Path]
) -> None:
    """Raise before anything is written when an output file of ``keys`` under ``folder`` is
    one of the ``inputs`` (the output folder is the input folder and ``a.png`` is an input:
    its 16-bit depth PNG would replace the photo).

    Raises:
        ConfigError: naming the input file and the output folder.
    """
    inputs_by_path = {Path(f).resolve(): Path(f) for f in inputs}
    for key in keys:
        for path in output_paths(folder, key).values():
            hit = inputs_by_path.get(path.resolve())
            if hit is not None:
                raise ConfigError(
                    f"predict would write its depth map over the input image {hit} (output "
                    f"folder {folder}): choose an output folder that holds no input image "
                    f"named <name>{PNG16_SUFFIX} / <name>{COLOR_SUFFIX} / <name>{NPY_SUFFIX}"
                )


def stretch_to_unit(values: np.ndarray) -> np.ndarray:
    """Min-max stretch of a map to [0, 1] (float32); a constant map gives zeros. Non-finite
    values (none from ``DepthMaster.predict``) are treated as the minimum."""
    values = np.nan_to_num(values.astype(np.float32, copy=False), nan=0.0)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def write_depth_outputs(
    folder: str | Path, key: str, depth: np.ndarray | Tensor, near_is_one: bool = True
) -> dict[str, Path]:
    """Write the ``.npy``, 16-bit PNG and colour PNG of one prediction (see the module
    docstring for names and value ranges); folders are created as needed.

    Args:
        folder: output folder.
        key: the image's key, a relative path without suffix (``sub/img``).
        depth: (H, W) or (1, H, W) prediction in [0, 1], as ``DepthMaster.predict`` returns
            per image.
        near_is_one: whether 1 means near (the disparity targets); False (the ``depth``
            target) flips the colours so that near is still red.

    Returns:
        ``{"npy", "png16", "color"}`` -> the written paths.

    Raises:
        ConfigError: a key that would write outside ``folder``, or a map that is not 2-D.
    """
    paths = output_paths(folder, key)
    if isinstance(depth, Tensor):
        depth = depth.detach().float().cpu().numpy()
    values = np.asarray(depth, dtype=np.float32)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2:
        raise ConfigError(
            f"prediction {key!r}: expected an (H, W) or (1, H, W) map, got {values.shape}"
        )
    paths["npy"].parent.mkdir(parents=True, exist_ok=True)
    np.save(paths["npy"], values)
    unit = stretch_to_unit(values)
    # zlib level 1: 2x faster than PIL's default 6 and as small for 16-bit depth (about 2%)
    png16 = Image.fromarray(np.round(unit * UINT16_MAX).astype(np.uint16))
    png16.save(paths["png16"], compress_level=1)
    Image.fromarray(colorize_depth(unit if near_is_one else 1.0 - unit)).save(paths["color"])
    return paths


class BackgroundWriter:
    """:func:`write_depth_outputs` in one background thread, so PNG compression (hundreds of
    ms per megapixel; zlib releases the GIL) overlaps the next forward pass instead of
    following it. At most ``max_pending`` maps wait, so memory stays bounded. Keys are checked
    when submitted; a write error is raised by a later :meth:`submit` or by :meth:`close`.

    Use as a context manager, or call :meth:`close`, which waits for every file.
    """

    def __init__(self, folder: str | Path, near_is_one: bool = True, max_pending: int = 4) -> None:
        self.folder = Path(folder)
        self.near_is_one = near_is_one
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dm_lightning-writer")
        self._pending: deque[Future] = deque()

    def submit(self, key: str, depth: np.ndarray | Tensor) -> None:
        """Queue the files of one (H, W) or (1, H, W) prediction in [0, 1] (a CPU tensor or
        array, not modified afterwards by the caller)."""
        output_paths(self.folder, key)  # a bad key fails here, in the caller's frame
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().result()
        self._pending.append(
            self._pool.submit(write_depth_outputs, self.folder, key, depth, self.near_is_one)
        )

    def close(self) -> None:
        """Wait for every queued write (raising the first error) and stop the thread."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # an error is already on its way: a failed write must not replace it
            self.close()
        except Exception as err:
            log.warning("a depth map write also failed: %s", err)


@dataclass
class PredictionSummary:
    """What a predict run did: ``written`` depth maps (three files each) under ``output_dir``,
    and the ``skipped`` unreadable inputs as ``(path, reason)``."""

    output_dir: Path
    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return summary_line(self.written, len(self.skipped), self.output_dir)


def summary_line(written: int, skipped: int, output_dir: str | Path) -> str:
    """The closing line of every predict run (CLI and API)."""
    wrote, unreadable = count_of(written, "depth map"), count_of(skipped, "unreadable file")
    return f"wrote {wrote} to {output_dir}, skipped {unreadable}"
