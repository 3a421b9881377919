"""Inputs of ``predict``: the images of a folder, a glob or one file (:class:`ImageFolder`),
batched with their unreadable files named (:func:`collate_predict`)."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from dm_lightning.data.photos import read_photo
from dm_lightning.errors import ConfigError, MissingPathError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".bmp", ".tif", ".tiff", ".webp")


class ImageFolder(Dataset):
    """Images for ``predict``: every image file under a folder (searched recursively), a glob
    (``**`` recurses) or one file.

    Files are listed once, sorted by relative path, so the order is the same on every run and
    rank; hidden files and folders (name starting with ``.``) are left out. A sample's ``key``
    is its path relative to the folder (for a glob: to its leading folders without wildcards)
    without the suffix, ``/``-separated: ``<folder>/sub/img.jpg`` has key ``sub/img``, so
    :class:`~dm_lightning.training.callbacks.DepthPredictionWriter` writes
    ``<output_dir>/sub/img.npy``, ``img.png`` and ``img_color.png``, mirroring the input
    layout.

    A sample (``__getitem__``) is a dict: ``rgb`` (3, H, W) uint8, as a viewer shows the image
    (EXIF orientation applied: H and W of a rotated phone photo are swapped against its stored
    pixels), or None when the file cannot be decoded (truncated, not an image) or is over
    :data:`~dm_lightning.data.photos.MAX_PHOTO_PIXELS` (64 megapixels); ``key``
    (str); ``path`` (str); ``error`` (None, or the decoder's reason). Nothing is raised or
    logged for an unreadable file.

    A batch (:func:`collate_predict`, what ``predict_step`` receives) is a dict:

    - ``rgb``: (B, 3, H, W) uint8 of the B readable images when they share one size, a list
      of B (3, H_i, W_i) uint8 when they do not
      (:func:`~dm_lightning.inference.batching.predict_batch` runs both), or None when none
      is readable;
    - ``key``: list of the B keys of the readable images, in the order of ``rgb``;
    - ``skipped_files``: list of ``(path, reason)`` for the unreadable files of the batch
      (usually empty).

    ``predict_step`` must return ``{"key": batch["key"], "depth": (B, 1, H, W) float in
    [0, 1]}`` (or a list of B (1, H_i, W_i)), and for a batch with ``rgb`` None
    ``{"key": [], "depth": None, "skipped_files": batch["skipped_files"]}`` without running
    the network.
    ``DepthPredictionWriter`` writes the readable ones and counts and names ``skipped_files``.

    Raises:
        MissingPathError: no folder or file at ``path`` (or nothing matches the glob), or no
            image (``IMAGE_SUFFIXES``) in it.
        ConfigError: two files map to one key (e.g. ``a.png`` and ``a.jpg``), or a file's key
            is another's plus ``_color`` (``a.png`` and ``a_color.png``: output names clash).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.root, files = _list_predict_files(path)
        images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise MissingPathError(
                f"no images ({', '.join(IMAGE_SUFFIXES)}) found at {path} (data.predict)"
            )
        keyed = sorted((f.relative_to(self.root).with_suffix("").as_posix(), f) for f in images)
        self.keys = [k for k, _ in keyed]
        self.files = [f for _, f in keyed]
        clashes = sorted({k for k, n in zip(self.keys, self.keys[1:]) if k == n})
        if clashes:
            names = [str(f) for k, f in keyed if k in clashes[:3]]
            raise ConfigError(
                f"{len(clashes)} output keys of data.predict {path} are shared by files with "
                f"different suffixes, e.g. {names}: their depth maps would overwrite each other"
            )
        # <key>_color.png is an output file name too (dm_lightning.inference.outputs).
        known = set(self.keys)
        colour = [f for k, f in keyed if k.endswith("_color") and k[: -len("_color")] in known]
        if colour:
            raise ConfigError(
                f"data.predict {path}: {colour[0]} would write {colour[0].stem}.png where the "
                f"colour image of {colour[0].stem[: -len('_color')]} goes: rename it"
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, key = self.files[index], self.keys[index]
        try:
            rgb = read_photo(path)  # EXIF orientation applied: the size a viewer shows
        except Exception as err:  # any decoder failure: PIL raises OSError, SyntaxError, ...
            reason = f"{type(err).__name__}: {err}"
            return {"rgb": None, "key": key, "path": str(path), "error": reason}
        rgb = torch.from_numpy(rgb.copy()).permute(2, 0, 1)
        return {"rgb": rgb, "key": key, "path": str(path), "error": None}


def _list_predict_files(path: str) -> tuple[Path, list[Path]]:
    """(root the keys are relative to, files): a folder recursively, a glob, or one file."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p, [f for f in p.rglob("*") if f.is_file() and not _hidden(f.relative_to(p))]
    if p.is_file():
        return p.parent, [p]
    if not glob.has_magic(path):
        raise MissingPathError(f"predict folder or file not found: {path} (data.predict)")
    parts = p.parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    files = [Path(f) for f in glob.glob(str(p), recursive=True)]
    files = [f for f in files if f.is_file() and not _hidden(f.relative_to(root))]
    if not files:
        raise MissingPathError(f"no files match {path} (data.predict)")
    return root, files


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def collate_predict(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch of :class:`ImageFolder` samples (contract in its docstring): the readable images
    stacked when they share one size, else a list of them; the unreadable ones as
    ``skipped_files``. Module-level so that spawned workers can pickle it."""
    readable = [s for s in samples if s["rgb"] is not None]
    images = [s["rgb"] for s in readable]
    if len({tuple(image.shape) for image in images}) > 1:
        rgb: torch.Tensor | list[torch.Tensor] | None = images  # mixed sizes: kept apart
    else:
        rgb = torch.stack(images) if images else None
    return {
        "rgb": rgb,
        "key": [s["key"] for s in readable],
        "skipped_files": [(s["path"], s["error"]) for s in samples if s["rgb"] is None],
    }
