"""The common benchmark reader: (RGB, depth) file pairs of a folder or tar, read through a
reference list, as evaluation samples.

:class:`DepthPairDataset` reads, crops, resizes and masks one pair per item (the sample format
is in :mod:`dm_lightning.data.benchmarks`); :class:`BenchmarkDataset` adds the reference list
(``splits/eval/<name>.txt`` or a user's, :func:`resolve_list_file`), parsed by
:func:`read_list` with the one list parser of :mod:`dm_lightning.data.splits`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dm_lightning.data.batch import DepthSample
from dm_lightning.data.benchmarks.decoders import DepthDecoder, decode_rgb
from dm_lightning.data.crops import resize_rgb
from dm_lightning.data.schema import in_depth_range
from dm_lightning.data.splits import ListLineError, SplitEntry, read_split_file
from dm_lightning.data.store import FileStore

log = logging.getLogger(__name__)

EVAL_LIST_DIR = Path(__file__).resolve().parent.parent / "splits" / "eval"

ListEntry = SplitEntry
"""One sample of a reference list: ``rgb`` and ``depth`` paths relative to the root, then
``extra`` fields (the :class:`~dm_lightning.data.splits.SplitEntry` of every list file)."""


def read_list(path: str | os.PathLike, min_fields: int = 2) -> list[ListEntry]:
    """Parse a reference list: one sample per line, whitespace-separated fields
    (:func:`~dm_lightning.data.splits.read_split_file`).

    Blank lines and lines starting with ``#`` are skipped, and so are lines whose depth field
    is ``None`` (KITTI Eigen test frames without projected ground truth).

    Raises:
        FileNotFoundError: the list does not exist.
        ValueError: a line has fewer than ``min_fields`` fields (names file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference list {path} not found")
    try:
        entries = read_split_file(path, min_fields)
    except ListLineError as err:
        raise ValueError(
            f"{path}:{err.number}: expected at least {min_fields} whitespace-separated fields "
            f"(rgb path, depth path, ...), got {err.line!r}"
        ) from None
    return [entry for entry in entries if entry.depth != "None"]


def sample_key(rel_path: str) -> str:
    """A sample key from a relative path: suffix dropped, anything but ``[A-Za-z0-9_-]`` -> _.

    ``test/kitchen_0004/rgb_0001.png`` -> ``test_kitchen_0004_rgb_0001``.
    """
    stem = rel_path.rsplit(".", 1)[0] if "." in rel_path.rsplit("/", 1)[-1] else rel_path
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem)


class DepthPairDataset(Dataset):
    """Common reader of (RGB, depth) file pairs under a folder or tar root.

    Subclasses set the class attributes and may override :meth:`crop` (applied to RGB and GT),
    :meth:`region` (evaluation crop) and :meth:`valid_mask`.

    Args:
        root: dataset folder or tar of it (or a :class:`FileStore` of it).
        entries: the samples, paths relative to ``root``.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: two entries give the same key.
    """

    name: str = ""
    min_depth: float = 0.0
    max_depth: float = math.inf
    processing_res: int | None = None
    layout: str = ""
    depth_decoder: DepthDecoder
    #: The crop of RGB and GT (:meth:`crop`) and the evaluated pixels (:meth:`valid_mask`)
    #: in words, recorded with every result (:meth:`settings`).
    crop_rule: str = "none"
    mask_rule: str = "GT strictly inside the depth range"

    def __init__(self, root: str | os.PathLike | FileStore, entries: Sequence[ListEntry]) -> None:
        super().__init__()
        self.store = root if isinstance(root, FileStore) else FileStore(root, layout=self.layout)
        self.entries = list(entries)
        self.keys = [self.entry_key(e) for e in self.entries]
        repeated = [key for key, n in Counter(self.keys).items() if n > 1]
        if repeated:
            raise ValueError(f"{self.name}: several samples share the keys {repeated[:5]}")
        self._warned_resize = False

    def entry_key(self, entry: ListEntry) -> str:
        """The sample key of an entry (from its RGB path)."""
        return sample_key(entry.rgb)

    def __len__(self) -> int:
        return len(self.entries)

    def settings(self) -> dict[str, Any]:
        """What this reader evaluates, recorded with results so that two numbers can be
        compared: ``reader`` (class name), ``root``, ``images`` (samples), ``crop`` and
        ``mask`` (:attr:`crop_rule`, :attr:`mask_rule`), ``depth_range`` ([min, max] metres,
        None for no bound; aligned predictions are clipped to it)."""
        bound = [None if math.isinf(x) else x for x in (self.min_depth, self.max_depth)]
        return {
            "reader": type(self).__name__,
            "root": str(self.store.root.resolve()),
            "images": len(self),
            "crop": self.crop_rule,
            "mask": self.mask_rule,
            "depth_range": bound,
        }

    def read_depth(self, entry: ListEntry) -> np.ndarray:
        """(H, W) float32 metres of an entry, as decoded (before crops).

        Raises:
            FileNotFoundError: the depth file is missing (names it).
            ValueError: it cannot be decoded (names it and the reason).
        """
        data = self.store.read(entry.depth)
        try:
            depth = self.depth_decoder(data)
        except (ValueError, OSError) as err:
            raise ValueError(
                f"{self.store.describe(entry.depth)}: cannot decode {self.name} depth: {err}"
            ) from err
        if depth.ndim != 2:
            raise ValueError(
                f"{self.store.describe(entry.depth)}: expected (H, W) depth, got {depth.shape}"
            )
        return depth

    def read_rgb(self, entry: ListEntry) -> np.ndarray:
        """(H, W, 3) uint8 RGB of an entry (before crops)."""
        data = self.store.read(entry.rgb)
        try:
            return decode_rgb(data)
        except OSError as err:
            raise ValueError(f"{self.store.describe(entry.rgb)}: cannot decode RGB: {err}") from err

    def crop(self, image: np.ndarray, rel: str) -> np.ndarray:
        """Crop applied to RGB (H, W, 3) and GT (H, W) alike before anything else (none)."""
        return image

    def region(self, entry: ListEntry, shape: tuple[int, int]) -> np.ndarray | None:
        """(H, W) bool evaluation region of the GT-size frame (None: the whole frame)."""
        return None

    def valid_mask(self, entry: ListEntry, depth: np.ndarray) -> np.ndarray:
        """(H, W) bool: min_depth < depth < max_depth inside :meth:`region`.

        ``depth`` is already 0 wherever it is not a finite positive measurement.
        """
        valid = in_depth_range(depth, self.min_depth, self.max_depth)
        region = self.region(entry, depth.shape)
        return valid if region is None else valid & region

    def __getitem__(self, index: int) -> DepthSample:
        """Sample ``index`` (:class:`~dm_lightning.data.batch.DepthSample`); H x W is the GT
        size after the benchmark crop."""
        entry = self.entries[index]
        depth = self.crop(self.read_depth(entry), entry.depth)
        rgb = self.crop(self.read_rgb(entry), entry.rgb)
        if rgb.shape[:2] != depth.shape:
            if not self._warned_resize:
                log.warning(
                    "%s: RGB %s is %dx%d, GT is %dx%d: resizing RGB to the GT size "
                    "(metrics are computed at GT size; further mismatches are not logged)",
                    self.name,
                    entry.rgb,
                    *rgb.shape[:2],
                    *depth.shape,
                )
                self._warned_resize = True
            rgb = resize_rgb(rgb, depth.shape)
        # 0 = no measurement; `> 0` already drops NaN and -inf.
        measured = (depth > 0) & (depth < np.inf)
        depth = np.where(measured, depth, np.float32(0)).astype(np.float32, copy=False)
        valid = self.valid_mask(entry, depth)
        return {
            "rgb": torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
            "depth": torch.from_numpy(depth).unsqueeze(0),
            "valid": torch.from_numpy(valid).unsqueeze(0),
            "min_depth": float(self.min_depth),
            "max_depth": float(self.max_depth),
            "source": self.name,
            "key": self.keys[index],
        }


def resolve_list_file(list_file: str | os.PathLike | None, default: str) -> Path:
    """A list file path: as given if it exists, else a packaged list of that name."""
    if list_file is None:
        return EVAL_LIST_DIR / f"{default}.txt"
    path = Path(list_file)
    packaged = EVAL_LIST_DIR / f"{path.name.removesuffix('.txt')}.txt"
    if not path.exists() and path.parent == Path(".") and packaged.is_file():
        return packaged
    return path


class BenchmarkDataset(DepthPairDataset):
    """A benchmark of docs/method.md §6 read through its reference list.

    Args:
        root: the benchmark's evaluation folder, or the tar of it.
        list_file: reference list: a file, or the name of a packaged list in ``splits/eval/``
            (e.g. ``nyu_train_100``, ``kitti_val_100``); default ``splits/eval/<name>.txt``.
    """

    min_fields: int = 2

    def __init__(self, root: str | os.PathLike, list_file: str | os.PathLike | None = None) -> None:
        list_path = resolve_list_file(list_file, self.name)
        self.list_file = list_path
        super().__init__(root, read_list(list_path, self.min_fields))

    def settings(self) -> dict[str, Any]:
        """:meth:`DepthPairDataset.settings` plus the reference list: ``list_file`` (its
        path) and ``list_sha256`` (of its bytes: the same list under any path)."""
        digest = hashlib.sha256(Path(self.list_file).read_bytes()).hexdigest()
        return {**super().settings(), "list_file": str(self.list_file), "list_sha256": digest}
