"""Readers of the zero-shot evaluation benchmarks (SPEC section 6) and of user RGB-D folders.

Every reader is a map-style :class:`torch.utils.data.Dataset` whose items are the batch samples
of :mod:`dm_lightning.data.datamodule` (so :func:`~dm_lightning.data.datamodule.collate` stacks
them)::

    rgb        (3, H, W) uint8
    depth      (1, H, W) float32 metres, 0 where there is no measurement
    valid      (1, H, W) bool: finite & min_depth < depth < max_depth & the benchmark's crop/mask
    min_depth  float, metres
    max_depth  float, metres (math.inf allowed)
    source     str, the benchmark name
    key        str, unique within the dataset, no dots (webdataset splits extensions at dots)

and every reader has ``name``, ``processing_res`` (long edge the network runs at, None = the
native size) and ``len()``.

Data come from the benchmarks' standard evaluation archives (the Marigold/DepthMaster ones)
given as an extracted folder **or** as the ``.tar`` of that folder (``tar -C root -cf x.tar .``
or ``tar -C parent -cf x.tar root``: a single top-level folder is looked through). A reference
list (``splits/eval/<name>.txt``, one sample per line, whitespace-separated paths relative to the
root) names the files; see each reader for its line format.

Sizes: the ground truth is authoritative, because metrics are computed at GT size. Benchmark
crops (KITTI's KB crop) apply to RGB and GT alike; if the RGB still differs in size from the GT,
it is resized to the GT size (bilinear, antialiased) so that one sample has one H x W. The
standard archives have equal sizes, so this only happens with other copies (e.g. raw ScanNet
colour at 1296x968).
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dm_lightning.data.crops import (
    NYU_EIGEN_CROP,
    kitti_benchmark_crop,
    kitti_eigen_mask,
    resize_rgb,
)
from dm_lightning.data.store import FileStore

log = logging.getLogger(__name__)

EVAL_LIST_DIR = Path(__file__).resolve().parent / "splits" / "eval"

DepthDecoder = Callable[[bytes], np.ndarray]
"""File bytes -> (H, W) float32 metres; 0 or non-finite = no measurement."""


# --------------------------------------------------------------------------------------------
# Reference lists


@dataclass(frozen=True)
class ListEntry:
    """One sample of a reference list: RGB and depth paths relative to the root, then extras."""

    rgb: str
    depth: str
    extra: tuple[str, ...] = ()


def read_list(path: str | os.PathLike, min_fields: int = 2) -> list[ListEntry]:
    """Parse a reference list: one sample per line, whitespace-separated fields.

    Blank lines and lines starting with ``#`` are skipped, and so are lines whose depth field
    is ``None`` (KITTI Eigen test frames without projected ground truth).

    Raises:
        FileNotFoundError: the list does not exist.
        ValueError: a line has fewer than ``min_fields`` fields (names file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference list {path} not found")
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < min_fields:
            raise ValueError(
                f"{path}:{number}: expected at least {min_fields} whitespace-separated fields "
                f"(rgb path, depth path, ...), got {line!r}"
            )
        if fields[1] == "None":
            continue
        entries.append(ListEntry(fields[0], fields[1], tuple(fields[2:])))
    return entries


def sample_key(rel_path: str) -> str:
    """A sample key from a relative path: suffix dropped, anything but ``[A-Za-z0-9_-]`` -> _.

    ``test/kitchen_0004/rgb_0001.png`` -> ``test_kitchen_0004_rgb_0001``.
    """
    stem = rel_path.rsplit(".", 1)[0] if "." in rel_path.rsplit("/", 1)[-1] else rel_path
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem)


# --------------------------------------------------------------------------------------------
# Decoders


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


# --------------------------------------------------------------------------------------------
# Datasets


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
        valid = (depth > self.min_depth) & (depth < self.max_depth)
        region = self.region(entry, depth.shape)
        return valid if region is None else valid & region

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Sample ``index``: ``rgb`` (3, H, W) uint8, ``depth`` (1, H, W) float32 metres (0 = no
        measurement), ``valid`` (1, H, W) bool, ``min_depth``/``max_depth`` (float, metres),
        ``source`` and ``key``; H x W is the GT size after the benchmark crop."""
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
    """A benchmark of SPEC section 6 read through its reference list.

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


class NYUv2(BenchmarkDataset):
    """NYU Depth v2 labelled test split (654 frames, 480x640), Marigold's archive layout.

    List line: ``test/<scene>/rgb_NNNN.png test/<scene>/depth_NNNN.png
    test/<scene>/filled_NNNN.png`` (the filled depth is not used: evaluation is on the raw
    depth). Depth: uint16 PNG
    millimetres. Valid: 1e-3 < d < 10 m inside the Eigen crop rows 45:471, cols 41:601.
    """

    name = "nyu"
    min_depth, max_depth = 1e-3, 10.0
    layout = "test/<scene>/rgb_NNNN.png and depth_NNNN.png (uint16 mm) per the list"
    depth_decoder = staticmethod(ScaledDepthDecoder(1e-3))

    def region(self, entry: ListEntry, shape: tuple[int, int]) -> np.ndarray:
        if shape != (480, 640):
            raise ValueError(
                f"{self.store.describe(entry.depth)}: NYUv2 GT is {shape[0]}x{shape[1]}, the "
                "Eigen crop (rows 45:471, cols 41:601) expects 480x640"
            )
        mask = np.zeros(shape, dtype=bool)
        mask[NYU_EIGEN_CROP] = True
        return mask


class KITTIEigen(BenchmarkDataset):
    """KITTI Eigen test split with projected GT (652 of 697 list lines have GT).

    List line: ``<date>/<drive>/image_02/data/<frame>.png <drive>/proj_depth/groundtruth/
    image_02/<frame>.png <focal px>``; lines with depth ``None`` are skipped; the focal length
    stays in ``entries[i].extra``. Depth: uint16 PNG / 256 m, 0 = no LiDAR point. RGB and GT
    are KB-cropped to 352x1216; valid: 1e-5 < d < 80 m inside the Eigen crop of the KB crop
    (rows 117:321, cols 43:1172, see :func:`kitti_eigen_mask`).
    """

    name = "kitti"
    min_depth, max_depth = 1e-5, 80.0
    layout = (
        "<date>/<drive>/image_02/data/<frame>.png and "
        "<drive>/proj_depth/groundtruth/image_02/<frame>.png (uint16 / 256) per the list"
    )
    depth_decoder = staticmethod(ScaledDepthDecoder(1 / 256))

    def crop(self, image: np.ndarray, rel: str) -> np.ndarray:
        try:
            return kitti_benchmark_crop(image)
        except ValueError as err:
            raise ValueError(f"{self.store.describe(rel)}: {err}") from err

    def region(self, entry: ListEntry, shape: tuple[int, int]) -> np.ndarray:
        return kitti_eigen_mask(*shape)


class ETH3D(BenchmarkDataset):
    """ETH3D high-res multi-view DSLR frames (454), run at 756 px long edge.

    List line: ``rgb/<scene>/images/dslr_images/DSC_NNNN.JPG depth/<scene>_dslr_depth/<scene>/
    ground_truth_depth/dslr_images/DSC_NNNN.JPG`` (the depth "JPG" is a raw float32 raster,
    see :func:`decode_eth3d`). Valid: 1e-5 < d < inf. RGB of another size than the 4032x6048 GT
    is resized to it.
    """

    name = "eth3d"
    min_depth, max_depth = 1e-5, math.inf
    processing_res = 756
    layout = (
        "rgb/<scene>/images/dslr_images/<image>.JPG and depth/<scene>_dslr_depth/<scene>/"
        "ground_truth_depth/dslr_images/<image>.JPG (raw float32 4032x6048) per the list"
    )
    depth_decoder = staticmethod(decode_eth3d)


class ScanNet(BenchmarkDataset):
    """ScanNet validation, 800 sampled frames (Marigold's ``scannet_val_sampled_800_1``).

    List line: ``<scene>/color/NNNNNN.jpg <scene>/depth/NNNNNN.png``. Depth: uint16 PNG
    millimetres. Valid: 1e-3 < d < 10 m, no crop.
    """

    name = "scannet"
    min_depth, max_depth = 1e-3, 10.0
    layout = "<scene>/color/<frame>.jpg and <scene>/depth/<frame>.png (uint16 mm) per the list"
    depth_decoder = staticmethod(ScaledDepthDecoder(1e-3))


class DIODE(BenchmarkDataset):
    """DIODE validation, indoor and outdoor (771 frames), run at 640 px long edge.

    List line: ``<split>/scene_N/scan_N/<name>.png <...>/<name>_depth.npy
    <...>/<name>_depth_mask.npy``. Depth: float32 metres, (H, W) or (H, W, 1). Valid: the
    provided mask and a finite depth > 0, **not** re-derived from the range. The [0.6, 350] m
    range clips predictions only (as the reference evaluation does); ground truth is not
    clipped.
    """

    name = "diode"
    min_depth, max_depth = 0.6, 350.0
    processing_res = 640
    min_fields = 3
    layout = (
        "{indoors,outdoor}/scene_N/scan_N/<name>.png, <name>_depth.npy and "
        "<name>_depth_mask.npy per the list"
    )
    depth_decoder = staticmethod(decode_npy)

    def valid_mask(self, entry: ListEntry, depth: np.ndarray) -> np.ndarray:
        rel = entry.extra[0]
        try:
            mask = decode_npy(self.store.read(rel))
        except ValueError as err:
            raise ValueError(
                f"{self.store.describe(rel)}: cannot decode DIODE mask: {err}"
            ) from err
        if mask.shape != depth.shape:
            raise ValueError(
                f"{self.store.describe(rel)}: mask {mask.shape} does not match depth {depth.shape}"
            )
        return mask.astype(bool) & (depth > 0)


class RGBDFolder(DepthPairDataset):
    """RGB-D pairs of a user's folder (or tar of it), matched by a ``{key}`` in two patterns.

    ``rgb_pattern`` and ``depth_pattern`` are paths relative to ``root`` with one ``{key}``,
    which matches any non-empty text, ``/`` included; every file matching ``rgb_pattern`` is a
    sample and its depth is ``depth_pattern`` with the same key. Examples:
    ``color/{key}.jpg`` + ``depth/{key}.png`` (Redwood, ScanNet), ``{key}/color.png`` +
    ``{key}/depth.png`` (one folder per frame).

    Depth is decoded either as ``raw * depth_scale`` metres with ``raw == invalid_value``
    invalid (integer images, e.g. 16-bit PNG), or by ``decode``: a :data:`DepthDecoder` or the
    name of one in :data:`DEPTH_DECODERS` (``"tum"``, ``"sun_rgbd"``, ``"nyu_raw"``,
    ``"redwood"``) for other encodings. Give exactly one of ``depth_scale`` and ``decode``.

    Args:
        root: folder or tar archive.
        rgb_pattern: RGB path pattern with ``{key}``.
        depth_pattern: depth path pattern with ``{key}``.
        depth_scale: metres per raw unit (1e-3 for millimetre PNGs).
        invalid_value: raw value meaning "no measurement" (with ``depth_scale``).
        min_depth: valid depths are > this (metres, >= 0).
        max_depth: valid depths are < this (metres, may be inf).
        decode: custom decoder (file bytes -> (H, W) metres, 0/non-finite invalid) or its name.
        name: the ``source`` of the samples.
        processing_res: long edge to run the network at (None: native).

    Raises:
        ValueError: bad patterns, both or neither of ``depth_scale``/``decode``, unknown decoder.
        FileNotFoundError: no RGB matches, or an RGB file has no depth counterpart (names it).
    """

    layout = ""

    def __init__(
        self,
        root: str | os.PathLike,
        rgb_pattern: str,
        depth_pattern: str,
        depth_scale: float | None = None,
        invalid_value: int | None = 0,
        min_depth: float = 0.0,
        max_depth: float = math.inf,
        decode: str | DepthDecoder | None = None,
        name: str = "rgbd",
        processing_res: int | None = None,
    ) -> None:
        if (depth_scale is None) == (decode is None):
            raise ValueError(
                "RGBDFolder: give exactly one of depth_scale (metres per raw unit) and decode "
                f"(a function or one of {sorted(DEPTH_DECODERS)}); got depth_scale="
                f"{depth_scale!r}, decode={decode!r}"
            )
        if isinstance(decode, str):
            if decode not in DEPTH_DECODERS:
                raise ValueError(
                    f"unknown depth decoder {decode!r}; known: {', '.join(sorted(DEPTH_DECODERS))}"
                )
            decode = DEPTH_DECODERS[decode]
        if not 0 <= min_depth < max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        self.depth_decoder = decode or ScaledDepthDecoder(depth_scale, invalid_value)
        self.name, self.processing_res = name, processing_res
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.layout = f"{rgb_pattern} with a matching {depth_pattern}"
        rgb_regex = _key_pattern(rgb_pattern)
        _key_pattern(depth_pattern)  # validates it
        store = FileStore(root, layout=self.layout)
        names = store.names()
        matches = [m for m in map(rgb_regex.fullmatch, names) if m]
        if not matches and store.prefix:  # a tar holding the folder itself: look inside it
            stripped = [n[len(store.prefix) :] for n in names if n.startswith(store.prefix)]
            matches = [m for m in map(rgb_regex.fullmatch, stripped) if m]
        entries = []
        for match in matches:
            rel, key = match.string, match.group("key")
            depth_rel = depth_pattern.replace("{key}", key)
            if not store.exists(depth_rel):
                raise FileNotFoundError(
                    f"{store.describe(rel)} has no depth file: {store.describe(depth_rel)} "
                    f"(pattern {depth_pattern!r}) not found"
                )
            entries.append(ListEntry(rel, depth_rel, (key,)))
        if not entries:
            raise FileNotFoundError(f"no file under {store.root} matches {rgb_pattern!r}")
        super().__init__(store, entries)

    def entry_key(self, entry: ListEntry) -> str:
        return sample_key(entry.extra[0])


def _key_pattern(pattern: str) -> re.Pattern[str]:
    if pattern.count("{key}") != 1:
        raise ValueError(f"pattern {pattern!r} must contain '{{key}}' exactly once")
    before, after = pattern.split("{key}")
    return re.compile(re.escape(before) + "(?P<key>.+)" + re.escape(after))


BENCHMARKS: dict[str, type[BenchmarkDataset]] = {
    cls.name: cls for cls in (NYUv2, KITTIEigen, ETH3D, ScanNet, DIODE)
}
"""Benchmark readers by name: nyu, kitti, eth3d, scannet, diode."""


def get_benchmark(name: str, root: str | os.PathLike, **kwargs: Any) -> BenchmarkDataset:
    """The reader of benchmark ``name`` on ``root`` (a folder or tar); ``kwargs`` go to it
    (e.g. ``list_file=``).

    Raises:
        ValueError: unknown name (lists the known ones).
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    return BENCHMARKS[name](root, **kwargs)
