"""Convert Hypersim and Virtual KITTI 2 into dm_lightning shards (SPEC section 5).

Inputs (each may be a folder, or an uncompressed tar whose member names end with the relative
paths below, with any prefix):

* Hypersim raw release: ``<root>/<scene>/images/scene_cam_XX_final_hdf5/frame.NNNN.color.hdf5``
  (linear HDR RGB, dataset ``"dataset"``), ``<root>/<scene>/images/scene_cam_XX_geometry_hdf5/
  frame.NNNN.depth_meters.hdf5`` (distance to the camera centre, metres) and
  ``frame.NNNN.render_entity_id.hdf5`` (int, -1 = no geometry). Needs ``h5py``.
* Hypersim preprocessed PNG layout (Marigold): ``<root>/<split>/<scene>/rgb_cam_XX_frNNNN.png``
  and ``depth_plane_cam_XX_frNNNN.png`` (uint16 planar depth in millimetres, 0 = invalid).
  ``<root>`` or ``<root>/<split>`` may be given.
* Virtual KITTI 2 release: ``<root>/SceneXX/<variation>/frames/rgb/Camera_N/rgb_NNNNN.jpg`` and
  ``.../frames/depth/Camera_N/depth_NNNNN.png`` (uint16 centimetres, 65535 = sky).

Frames are selected by a split list (:mod:`dm_lightning.data.splits`; by default the
reference training lists, 53,885 Hypersim and 20,148 Virtual KITTI frames).

Conversion:

* Hypersim raw: :func:`tone_map` (the Hypersim reference tone mapper), planar depth from the
  distance (:func:`distance_to_planar_depth`, f = 886.81 px at 1024 px width), invalid where
  the entity id is -1 or the depth is not finite.
* Hypersim (both layouts): every raster resized to 480x640 with nearest-exact
  (:func:`resize_nearest_exact`); depth outside the valid range (1e-5, 65) m stored as 0;
  ``depth_scale`` 1e-3 (millimetres).
* Virtual KITTI: KITTI benchmark crop to 352x1216 (:func:`kitti_benchmark_crop`); depth kept
  in centimetres (``depth_scale`` 0.01), so the sky (655.35 m) stays in the file and is invalid
  by the valid range (1e-5, 80) m when read.

Output: ``out_dir/<source>/<split>-NNNNNN.tar`` (``source`` = ``hypersim`` / ``vkitti``) in the
:mod:`~dm_lightning.data.schema` format, keyed ``ai_001_001-cam_00-0000`` /
``Scene02-clone-Camera_0-00000``, with JSON extras ``split``, ``scene``, ``camera``, ``frame``,
``focal`` (pixels, at the stored size) and, for Virtual KITTI, ``variation``; plus
``out_dir/index.json`` (see :func:`convert_frames`).

Shards are planned from the list alone (shard ``i`` holds list positions
``[i * per_shard, (i + 1) * per_shard)``), converted one process per shard, written atomically
(:func:`~dm_lightning.data.shards.write_shard`) and skipped on a rerun when complete. A frame
whose input file is missing or unreadable is logged (naming the file) and left out.
"""

from __future__ import annotations

import argparse
import glob
import io
import logging
import os
import re
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from dm_lightning.data.schema import encode_sample
from dm_lightning.data.shards import read_shard_keys, shard_names, update_index, write_shard
from dm_lightning.data.splits import SplitEntry, available_splits, load_split, read_split_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSpec:
    """Stored form of one source: name, image size (pixels), valid open depth range (metres)
    and PNG depth scale (metres per uint16 unit)."""

    name: str
    height: int
    width: int
    min_depth: float
    max_depth: float
    depth_scale: float


HYPERSIM = SourceSpec("hypersim", 480, 640, min_depth=1e-5, max_depth=65.0, depth_scale=1e-3)
VKITTI = SourceSpec("vkitti", 352, 1216, min_depth=1e-5, max_depth=80.0, depth_scale=1e-2)

HYPERSIM_FOCAL = 886.81
"""Hypersim focal length in pixels at :data:`HYPERSIM_FOCAL_WIDTH`; it scales with the width."""
HYPERSIM_FOCAL_WIDTH = 1024
VKITTI_FOCAL = 725.0087
"""Virtual KITTI 2 focal length in pixels (both cameras; unchanged by the crop)."""

TONE_MAP_PERCENTILE = 90.0
TONE_MAP_TARGET = 0.8
"""Brightness of the ``TONE_MAP_PERCENTILE``-th percentile after tone mapping (after gamma)."""
TONE_MAP_GAMMA = 1.0 / 2.2
TONE_MAP_EPS = 1e-4
"""Below this percentile brightness the reference tone mapper uses scale 0 (a black image)."""
BRIGHTNESS_WEIGHTS = (0.3, 0.59, 0.11)
"""CCIR601 YIQ luma weights of R, G, B, as in the Hypersim reference tone mapper."""

INDEX_FORMAT = "dm_lightning shards"
DEFAULT_PER_SHARD = 500
HYPERSIM_LAYOUTS = ("auto", "raw", "png")
MAX_LOGGED_PROBLEMS = 50
"""Problems logged one by one per run; later ones are only counted (and kept in the summary)."""


class InputError(Exception):
    """An input file is missing, unreadable or not what its layout promises (message names it)."""


# --------------------------------------------------------------------------------------------
# Pixel operations
# --------------------------------------------------------------------------------------------


def tone_map(rgb: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Linear HDR RGB -> uint8, as the Hypersim reference tone mapper.

    With brightness ``b = 0.3 R + 0.59 G + 0.11 B`` and ``p`` its 90th percentile over the
    valid pixels, the scale ``s = 0.8 ** 2.2 / p`` makes ``(s * p) ** (1 / 2.2) = 0.8``, i.e. the
    percentile is 0.8 *after* gamma. Output ``floor(255 * clip((s * rgb) ** (1 / 2.2), 0, 1))``
    (truncated like the reference, hence like the preprocessed PNGs). ``s = 1`` when no pixel
    is valid; ``s = 0`` (black) when ``p < 1e-4``, as in the reference.

    Args:
        rgb: (H, W, 3) linear radiance, >= 0 (negative values count as 0). Non-finite pixels
            are treated as 0 and left out of the percentile.
        valid: (H, W) bool, pixels that take part in the percentile (Hypersim: entity id != -1);
            None = all.

    Returns:
        (H, W, 3) uint8.
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"tone_map expects (H, W, 3) RGB, got shape {rgb.shape}")
    finite = np.isfinite(rgb).all(axis=2)
    rgb = np.where(finite[..., None], rgb, 0.0)
    mask = finite if valid is None else finite & np.asarray(valid, dtype=bool)
    if not mask.any():
        scale = 1.0
    else:
        brightness = rgb @ np.asarray(BRIGHTNESS_WEIGHTS)
        percentile = float(np.percentile(brightness[mask], TONE_MAP_PERCENTILE))
        if percentile < TONE_MAP_EPS:
            scale = 0.0
        else:
            scale = TONE_MAP_TARGET ** (1.0 / TONE_MAP_GAMMA) / percentile
    mapped = np.clip(np.power(np.maximum(scale * rgb, 0.0), TONE_MAP_GAMMA), 0.0, 1.0)
    return (mapped * 255).astype(np.uint8)


def distance_to_planar_depth(distance: np.ndarray, focal: float | None = None) -> np.ndarray:
    """Distance to the camera centre -> planar depth (camera z), for a centred pinhole.

    ``depth = distance * f / sqrt(x^2 + y^2 + f^2)`` with ``(x, y)`` the pixel centre relative to
    the image centre: ``x = u + 0.5 - W / 2``, ``y = v + 0.5 - H / 2``.

    Args:
        distance: (H, W) metres; NaN/inf stay non-finite.
        focal: pixels; None = Hypersim's, ``886.81 * W / 1024``.

    Returns:
        (H, W) float32 metres.
    """
    distance = np.asarray(distance, dtype=np.float64)
    if distance.ndim != 2:
        raise ValueError(f"distance must be (H, W), got shape {distance.shape}")
    height, width = distance.shape
    if focal is None:
        focal = HYPERSIM_FOCAL * width / HYPERSIM_FOCAL_WIDTH
    x = np.arange(width) + 0.5 - width / 2
    y = np.arange(height) + 0.5 - height / 2
    norm = np.sqrt(x[None, :] ** 2 + y[:, None] ** 2 + focal**2)
    return (distance * (focal / norm)).astype(np.float32)


def nearest_exact_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output index for nearest-exact resizing along one axis.

    ``min(floor((i + 0.5) * size_in / size_out), size_in - 1)``, as torch's
    ``interpolate(mode="nearest-exact")``, in exact integer arithmetic.
    """
    if size_in < 1 or size_out < 1:
        raise ValueError(f"sizes must be >= 1, got {size_in} -> {size_out}")
    out = np.arange(size_out, dtype=np.int64)
    return np.minimum((2 * out + 1) * size_in // (2 * size_out), size_in - 1)


def resize_nearest_exact(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize the first two axes of ``array`` ((H, W) or (H, W, C), any dtype) to
    (height, width) with nearest-exact sampling (:func:`nearest_exact_indices`)."""
    rows = nearest_exact_indices(array.shape[0], height)
    cols = nearest_exact_indices(array.shape[1], width)
    return array[rows[:, None], cols[None, :]]


def kitti_benchmark_crop(array: np.ndarray, height: int = 352, width: int = 1216) -> np.ndarray:
    """KITTI benchmark crop: the bottom ``height`` rows, ``width`` columns centred.

    ``top = H - height``, ``left = (W - width) // 2`` (375x1242 -> rows 23.., columns 13..).

    Args:
        array: (H, W) or (H, W, C), at least height x width.

    Returns:
        A view of shape (height, width[, C]).
    """
    h, w = array.shape[:2]
    if h < height or w < width:
        raise ValueError(f"cannot crop {height}x{width} from an image of {h}x{w}")
    top, left = h - height, (w - width) // 2
    return array[top:, left : left + width]


# --------------------------------------------------------------------------------------------
# Reading input files
# --------------------------------------------------------------------------------------------


class Location(NamedTuple):
    """Where an input file is: a plain file (``offset`` -1) or a member of a tar at
    ``path`` whose data are ``size`` bytes from byte ``offset``."""

    path: str
    offset: int = -1
    size: int = -1
    member: str = ""

    @property
    def where(self) -> str:
        """``path`` or ``path:member``, for messages."""
        return f"{self.path}:{self.member}" if self.offset >= 0 else self.path


class Blob(NamedTuple):
    """Bytes of an input file and its :attr:`Location.where`."""

    data: bytes
    where: str


def resolve_inputs(inputs: Sequence[str], names: Iterable[str]) -> dict[str, Location]:
    """Locate input files given by paths relative to the dataset root.

    Each name is looked for in the inputs in order; the first that has it wins. A folder has
    ``name`` if ``folder/name`` is a file; a tar has it if a member's name equals it or ends
    with ``"/" + name``. Names found nowhere are absent from the result.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: an input file is not an uncompressed tar.
    """
    pending = set(names)
    found: dict[str, Location] = {}
    for root in inputs:
        if os.path.isdir(root):
            for name in sorted(pending):
                path = os.path.join(root, name)
                if os.path.isfile(path):
                    found[name] = Location(path)
        elif os.path.isfile(root):
            found.update(_scan_tar(root, pending))
        else:
            raise FileNotFoundError(f"input {root!r} does not exist (expected a folder or a .tar)")
        pending.difference_update(found)
    return found


def _scan_tar(path: str, names: set[str]) -> dict[str, Location]:
    try:
        # "r:" refuses compressed tars: members are later read by offset, which needs raw bytes.
        tar = tarfile.open(path, "r:")
    except (tarfile.TarError, OSError) as err:
        raise ValueError(
            f"input {path!r} is not an uncompressed tar ({err}); extract it or repack it "
            "without compression"
        ) from err
    found: dict[str, Location] = {}
    with tar:
        for info in tar:
            if not info.isfile():
                continue
            parts = info.name.split("/")
            for start in range(len(parts)):
                suffix = "/".join(parts[start:])
                if suffix in names and suffix not in found:
                    found[suffix] = Location(path, info.offset_data, info.size, info.name)
                    break
    return found


def read_input(location: Location) -> Blob:
    """Bytes of an input file.

    Raises:
        InputError: naming the file, when it cannot be read in full.
    """
    try:
        with open(location.path, "rb") as f:
            if location.offset < 0:
                data = f.read()
            else:
                f.seek(location.offset)
                data = f.read(location.size)
    except OSError as err:
        raise InputError(f"{location.where}: cannot read ({err})") from err
    if location.offset >= 0 and len(data) != location.size:
        raise InputError(f"{location.where}: truncated ({len(data)} of {location.size} bytes)")
    return Blob(data, location.where)


def _decode_rgb(blob: Blob) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(blob.data)) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for bad/truncated files
        raise InputError(f"{blob.where}: cannot decode image ({err})") from err


def _decode_uint16_png(blob: Blob) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(blob.data)) as image:
            mode = image.mode
            units = np.asarray(image)
    except (OSError, ValueError, SyntaxError) as err:
        raise InputError(f"{blob.where}: cannot decode image ({err})") from err
    # PIL opens 16-bit grey PNGs as "I;16" (uint16) or "I" (int32).
    if units.ndim != 2 or units.dtype.kind not in "ui" or units.dtype.itemsize < 2:
        raise InputError(f"{blob.where}: expected a single-channel 16-bit PNG, got mode {mode}")
    return units.astype(np.int64)


def _decode_hdf5(blob: Blob) -> np.ndarray:
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            "reading Hypersim HDF5 files needs h5py: pip install h5py (or dm_lightning[convert])"
        ) from err
    try:
        with h5py.File(io.BytesIO(blob.data), "r") as f:
            return np.asarray(f["dataset"])
    except (OSError, KeyError, ValueError) as err:
        raise InputError(f"{blob.where}: cannot read HDF5 dataset 'dataset' ({err})") from err


# --------------------------------------------------------------------------------------------
# Loaders: input blobs of one frame -> (rgb, depth) at the stored size
# --------------------------------------------------------------------------------------------

Loader = Callable[[dict[str, Blob]], tuple[np.ndarray, np.ndarray]]
"""Blobs of one frame by role -> ``rgb`` (H, W, 3) uint8 and ``depth`` (H, W) metres (0 =
invalid), at the source's stored size; raises :class:`InputError` naming the bad file."""


def _check_shapes(shapes: dict[str, tuple[int, ...]], blobs: dict[str, Blob]) -> None:
    if len({shape[:2] for shape in shapes.values()}) != 1:
        described = ", ".join(f"{blobs[role].where} {shape}" for role, shape in shapes.items())
        raise InputError(f"rasters of one frame differ in size: {described}")


def _hypersim_sample(
    rgb: np.ndarray, depth: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Shared by both Hypersim layouts: zero invalid or out-of-range depth (it could not be
    stored beyond 65.535 m anyway), then resize every raster to 480x640 (nearest-exact)."""
    keep = valid & np.isfinite(depth) & (depth > HYPERSIM.min_depth) & (depth < HYPERSIM.max_depth)
    depth = np.where(keep, depth, 0.0).astype(np.float32)
    return (
        resize_nearest_exact(rgb, HYPERSIM.height, HYPERSIM.width),
        resize_nearest_exact(depth, HYPERSIM.height, HYPERSIM.width),
    )


def load_hypersim_raw(blobs: dict[str, Blob]) -> tuple[np.ndarray, np.ndarray]:
    """Hypersim raw release frame (roles ``color``, ``distance``, ``entity``: HDF5 files) ->
    tone-mapped RGB and planar depth, 480x640 (:data:`Loader`)."""
    color = _decode_hdf5(blobs["color"])
    distance = _decode_hdf5(blobs["distance"])
    entity = _decode_hdf5(blobs["entity"])
    if color.ndim != 3 or color.shape[2] != 3:
        raise InputError(f"{blobs['color'].where}: expected (H, W, 3), got {color.shape}")
    for role, array in (("distance", distance), ("entity", entity)):
        if array.ndim != 2:
            raise InputError(f"{blobs[role].where}: expected (H, W), got {array.shape}")
    _check_shapes({"color": color.shape, "distance": distance.shape, "entity": entity.shape}, blobs)
    valid = entity != -1
    return _hypersim_sample(tone_map(color, valid), distance_to_planar_depth(distance), valid)


def load_hypersim_png(blobs: dict[str, Blob]) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed Hypersim frame (roles ``rgb``: PNG, ``depth``: uint16 millimetre PNG) ->
    RGB and planar depth, 480x640 (:data:`Loader`)."""
    rgb = _decode_rgb(blobs["rgb"])
    units = _decode_uint16_png(blobs["depth"])
    _check_shapes({"rgb": rgb.shape, "depth": units.shape}, blobs)
    return _hypersim_sample(rgb, units * 1e-3, units > 0)


def load_vkitti(blobs: dict[str, Blob]) -> tuple[np.ndarray, np.ndarray]:
    """Virtual KITTI 2 frame (roles ``rgb``: JPEG, ``depth``: uint16 centimetre PNG) -> KITTI
    benchmark crop 352x1216, depth in metres with the sky (655.35 m) kept (:data:`Loader`)."""
    rgb = _decode_rgb(blobs["rgb"])
    units = _decode_uint16_png(blobs["depth"])
    _check_shapes({"rgb": rgb.shape, "depth": units.shape}, blobs)
    if rgb.shape[0] < VKITTI.height or rgb.shape[1] < VKITTI.width:
        raise InputError(
            f"{blobs['rgb'].where}: {rgb.shape[0]}x{rgb.shape[1]} is smaller than the "
            f"{VKITTI.height}x{VKITTI.width} crop"
        )
    crop_rgb = kitti_benchmark_crop(rgb, VKITTI.height, VKITTI.width)
    crop_units = kitti_benchmark_crop(units, VKITTI.height, VKITTI.width)
    return crop_rgb, crop_units * VKITTI.depth_scale


# --------------------------------------------------------------------------------------------
# Frames: what to convert
# --------------------------------------------------------------------------------------------


@dataclass
class Frame:
    """One sample to convert: its key, its input files by role (paths relative to the dataset
    root) and the extra JSON fields of the sample."""

    key: str
    files: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)


_HYPERSIM_RGB = re.compile(
    r"(?:^|/)(?P<scene>[^/]+)/rgb_cam_(?P<camera>\d+)_fr(?P<frame>\d+)\.png$"
)
_VKITTI_RGB = re.compile(
    r"(?:^|/)(?P<scene>Scene\d+)/(?P<variation>[^/]+)/frames/rgb/(?P<camera>Camera_\d+)/"
    r"rgb_(?P<frame>\d+)\.jpg$"
)


def _match(pattern: re.Pattern[str], entry: SplitEntry, expected: str) -> re.Match[str]:
    match = pattern.search(entry.rgb)
    if match is None:
        raise ValueError(f"split list entry {entry.rgb!r}: expected an RGB path like {expected}")
    return match


def hypersim_frames(entries: Sequence[SplitEntry], layout: str) -> list[Frame]:
    """Frames of Hypersim list entries (``<scene>/rgb_cam_XX_frNNNN.png ...``).

    Args:
        entries: split list entries.
        layout: ``"raw"`` (HDF5 release: roles ``color``, ``distance``, ``entity``) or ``"png"``
            (preprocessed: roles ``rgb``, ``depth``, the list's own paths).
    """
    if layout not in ("raw", "png"):
        raise ValueError(f"unknown Hypersim layout {layout!r}, expected 'raw' or 'png'")
    frames = []
    for entry in entries:
        match = _match(_HYPERSIM_RGB, entry, "'ai_001_001/rgb_cam_00_fr0000.png'")
        scene, camera, number = match["scene"], match["camera"], match["frame"]
        if layout == "raw":
            images = f"{scene}/images/scene_cam_{camera}"
            geometry = f"{images}_geometry_hdf5/frame.{number}"
            files = {
                "color": f"{images}_final_hdf5/frame.{number}.color.hdf5",
                "distance": f"{geometry}.depth_meters.hdf5",
                "entity": f"{geometry}.render_entity_id.hdf5",
            }
        else:
            files = {"rgb": entry.rgb, "depth": entry.depth}
        extra = {
            "scene": scene,
            "camera": f"cam_{camera}",
            "frame": int(number),
            "focal": HYPERSIM_FOCAL * HYPERSIM.width / HYPERSIM_FOCAL_WIDTH,
        }
        frames.append(Frame(f"{scene}-cam_{camera}-{number}", files, extra))
    return frames


def vkitti_frames(entries: Sequence[SplitEntry]) -> list[Frame]:
    """Frames of Virtual KITTI 2 list entries
    (``SceneXX/<variation>/frames/rgb/Camera_N/rgb_NNNNN.jpg <depth path>``); roles ``rgb``,
    ``depth``."""
    frames = []
    for entry in entries:
        match = _match(_VKITTI_RGB, entry, "'Scene01/clone/frames/rgb/Camera_0/rgb_00000.jpg'")
        scene, variation, camera, number = (
            match["scene"],
            match["variation"],
            match["camera"],
            match["frame"],
        )
        extra = {
            "scene": scene,
            "variation": variation,
            "camera": camera,
            "frame": int(number),
            "focal": VKITTI_FOCAL,
        }
        key = f"{scene}-{variation}-{camera}-{number}"
        frames.append(Frame(key, {"rgb": entry.rgb, "depth": entry.depth}, extra))
    return frames


def read_entries(split_list: str | os.PathLike | None, default: str) -> list[SplitEntry]:
    """Entries of a list file (plain or .gz), of a shipped list by name, or of ``default``
    (a shipped list name) when ``split_list`` is None."""
    if split_list is None:
        return load_split(default)
    if os.path.isfile(split_list):
        return read_split_file(split_list)
    name = os.fspath(split_list)
    if name in available_splits():
        return load_split(name)
    raise FileNotFoundError(
        f"split list {name!r} is neither a file nor a shipped list "
        f"({', '.join(available_splits())})"
    )


# --------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------


@dataclass
class _ShardTask:
    path: str
    frames: list[Frame]
    locations: dict[str, Location]
    loader: Loader
    spec: SourceSpec
    split: str


class _ShardResult(NamedTuple):
    path: str
    frames: int
    samples: int
    problems: list[str]


def _convert_shard(task: _ShardTask) -> _ShardResult:
    """Convert and write one shard (runs in a worker process)."""
    problems: list[str] = []

    def samples() -> Iterator[dict[str, Any]]:
        for frame in task.frames:
            try:
                blobs = {
                    role: read_input(task.locations[name]) for role, name in frame.files.items()
                }
                rgb, depth = task.loader(blobs)
            except InputError as err:
                problems.append(f"{frame.key}: {err}")
                continue
            yield encode_sample(
                frame.key,
                rgb,
                depth,
                source=task.spec.name,
                depth_scale=task.spec.depth_scale,
                min_depth=task.spec.min_depth,
                max_depth=task.spec.max_depth,
                extra={"split": task.split, **frame.extra},
            )

    count = write_shard(task.path, samples())
    if count == 0 and os.path.exists(task.path):
        os.remove(task.path)  # a stale shard of other frames; this one has none to hold
    return _ShardResult(task.path, len(task.frames), count, problems)


def _run(tasks: list[_ShardTask], workers: int) -> Iterator[_ShardResult]:
    """Results of the shard tasks, in completion order; on an error, pending tasks are
    cancelled, running ones finish, and the error is raised."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _convert_shard(task)
        return
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks))) as pool:
        futures = [pool.submit(_convert_shard, task) for task in tasks]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def convert_frames(
    frames: Sequence[Frame],
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    spec: SourceSpec,
    loader: Loader,
    split: str = "train",
    per_shard: int = DEFAULT_PER_SHARD,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert frames into shards ``out_dir/<spec.name>/<split>-NNNNNN.tar`` and index them.

    Shard ``i`` is planned to hold ``frames[i * per_shard : (i + 1) * per_shard]``, minus the
    frames with a missing input file (logged). A shard whose file already holds exactly those
    keys is skipped; others are converted, one worker process per shard, and written atomically
    (an interrupted run leaves no shard under a final name). Frames with an unreadable input are
    logged and left out; their shard is therefore redone on a rerun. A shard left with no
    sample is not written.

    ``out_dir/index.json`` then gets (other sources and splits are kept)
    ``sources[<spec.name>] = {"source", "height", "width", "min_depth", "max_depth",
    "depth_scale", "splits": {split: {"shards": [paths relative to out_dir], "num_samples",
    "samples_per_shard", "shard_sizes": [samples per shard]}}}``, listing only non-empty
    shards.

    Args:
        frames: what to convert (keys unique).
        inputs: folders and/or uncompressed tars, searched in order (:func:`resolve_inputs`).
        out_dir: output root.
        spec: the source's stored form.
        loader: reads one frame (:data:`Loader`).
        split: split name of the shard files and the index.
        per_shard: frames per shard (>= 1).
        workers: processes; 1 converts in this process.
        progress: tqdm bar on stderr.

    Returns:
        Summary: ``source``, ``split``, ``index`` (path), ``frames`` (planned), ``samples``
        (in the split's shards now), ``skipped_frames`` (``frames - samples``), ``shards``
        (paths of non-empty shards), ``written`` / ``skipped`` (shards converted now / already
        complete), ``problems`` (messages of this run, each naming the file) and ``seconds``.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    start = time.perf_counter()
    if per_shard < 1:
        raise ValueError(f"per_shard must be >= 1, got {per_shard}")
    duplicates = sorted(k for k, n in Counter(frame.key for frame in frames).items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate sample keys in the frame list, e.g. {duplicates[:5]}")
    inputs = _as_paths(inputs)
    folder = os.path.join(os.fspath(out_dir), spec.name)
    os.makedirs(folder, exist_ok=True)

    locations = resolve_inputs(inputs, {name for frame in frames for name in frame.files.values()})
    problems: list[str] = []
    tasks: list[_ShardTask] = []
    counts: dict[str, int] = {}
    paths = [os.path.join(folder, name) for name in shard_names(split, len(frames), per_shard)]
    for index, path in enumerate(paths):
        present = []
        for frame in frames[index * per_shard : (index + 1) * per_shard]:
            missing = [name for name in frame.files.values() if name not in locations]
            if missing:
                problems.append(
                    f"{frame.key}: missing {', '.join(missing)} (not in {', '.join(inputs)})"
                )
            else:
                present.append(frame)
        if present and read_shard_keys(path) == {frame.key for frame in present}:
            counts[path] = len(present)
            continue
        needed = {name: locations[name] for frame in present for name in frame.files.values()}
        tasks.append(_ShardTask(path, present, needed, loader, spec, split))

    written = 0
    bar = tqdm(
        total=len(frames),
        desc=f"{spec.name}/{split}",
        unit="frame",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    with bar, logging_redirect_tqdm():
        for number, problem in enumerate(problems):
            _log_problem(problem, number)
        bar.update(len(frames) - sum(len(task.frames) for task in tasks))
        for result in _run(tasks, workers):
            for problem in result.problems:
                problems.append(problem)
                _log_problem(problem, len(problems) - 1)
            counts[result.path] = result.samples
            written += result.samples > 0
            bar.update(result.frames)
            bar.set_postfix(written=written, problems=len(problems))

    shards = [path for path in paths if counts.get(path, 0) > 0]
    index_path = os.path.join(os.fspath(out_dir), "index.json")
    split_entry = {
        "shards": [os.path.relpath(path, os.fspath(out_dir)) for path in shards],
        "num_samples": sum(counts[path] for path in shards),
        "samples_per_shard": per_shard,
        "shard_sizes": [counts[path] for path in shards],
    }

    def update(sources: dict[str, Any]) -> None:
        entry = sources.get(spec.name)
        entry = dict(entry) if isinstance(entry, dict) else {}
        entry.update(
            source=spec.name,
            height=spec.height,
            width=spec.width,
            min_depth=spec.min_depth,
            max_depth=spec.max_depth,
            depth_scale=spec.depth_scale,
        )
        entry["splits"] = {**entry.get("splits", {}), split: split_entry}
        sources[spec.name] = entry

    update_index(index_path, update, INDEX_FORMAT)
    if len(problems) > MAX_LOGGED_PROBLEMS:
        log.warning("%d problems in all (%d logged)", len(problems), MAX_LOGGED_PROBLEMS)
    return {
        "source": spec.name,
        "split": split,
        "index": index_path,
        "frames": len(frames),
        "samples": split_entry["num_samples"],
        "skipped_frames": len(frames) - split_entry["num_samples"],
        "shards": shards,
        "written": written,
        "skipped": len(shards) - written,
        "problems": problems,
        "seconds": time.perf_counter() - start,
    }


def _as_paths(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    return [os.fspath(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]


def _log_problem(message: str, number: int) -> None:
    if number < MAX_LOGGED_PROBLEMS:
        log.warning("skipped %s", message)


def detect_hypersim_layout(inputs: Sequence[str | os.PathLike]) -> str:
    """``"raw"`` if an input folder holds ``<scene>/images`` folders (the HDF5 release),
    else ``"png"`` (tars are taken as the preprocessed layout)."""
    for root in inputs:
        root = os.fspath(root)
        if os.path.isdir(root) and glob.glob(os.path.join(glob.escape(root), "*", "images")):
            return "raw"
    return "png"


def convert_hypersim(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    split: str = "train",
    split_list: str | os.PathLike | None = None,
    layout: str = "auto",
    limit: int | None = None,
    per_shard: int = DEFAULT_PER_SHARD,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert Hypersim (raw HDF5 release or preprocessed PNGs) into shards.

    Args:
        inputs: dataset root folder(s) and/or uncompressed tar(s) (see the module docstring).
            For the PNG layout a folder ``<root>`` with a ``<root>/<split>`` sub-folder is read
            from that sub-folder.
        out_dir: output root; shards go to ``out_dir/hypersim/<split>-NNNNNN.tar``.
        split: output split name (and the PNG layout's sub-folder).
        split_list: a list file (plain or .gz) or a shipped list name; default
            ``hypersim_<split>_filtered`` (53,885 frames for ``train``).
        layout: ``"raw"``, ``"png"`` or ``"auto"`` (:func:`detect_hypersim_layout`).
        limit: convert only the first ``limit`` frames of the list.
        per_shard, workers, progress: see :func:`convert_frames`.

    Returns:
        The summary of :func:`convert_frames`, plus ``layout``.
    """
    roots = _as_paths(inputs)
    if layout not in HYPERSIM_LAYOUTS:
        raise ValueError(f"unknown Hypersim layout {layout!r}, expected one of {HYPERSIM_LAYOUTS}")
    if layout == "auto":
        layout = detect_hypersim_layout(roots)
    if layout == "png":
        roots = [
            os.path.join(root, split) if os.path.isdir(os.path.join(root, split)) else root
            for root in roots
        ]
    entries = read_entries(split_list, f"hypersim_{split}_filtered")
    frames = hypersim_frames(entries[:limit], layout)
    loader = load_hypersim_raw if layout == "raw" else load_hypersim_png
    summary = convert_frames(
        frames, roots, out_dir, HYPERSIM, loader, split, per_shard, workers, progress
    )
    return {**summary, "layout": layout}


def convert_vkitti(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    split: str = "train",
    split_list: str | os.PathLike | None = None,
    limit: int | None = None,
    per_shard: int = DEFAULT_PER_SHARD,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert Virtual KITTI 2 into shards ``out_dir/vkitti/<split>-NNNNNN.tar``.

    Args:
        inputs: the release root folder (holding ``SceneXX``) and/or uncompressed tars (e.g.
            the release's separate RGB and depth tars).
        split_list: a list file or shipped list name; default ``vkitti_<split>`` (20,148
            frames for ``train``).
        Others: as :func:`convert_hypersim`.
    """
    entries = read_entries(split_list, f"vkitti_{split}")
    frames = vkitti_frames(entries[:limit])
    return convert_frames(
        frames, inputs, out_dir, VKITTI, load_vkitti, split, per_shard, workers, progress
    )


# --------------------------------------------------------------------------------------------
# Command-line helpers shared by tools/convert_hypersim.py and tools/convert_vkitti.py
# --------------------------------------------------------------------------------------------


def add_conversion_arguments(
    parser: argparse.ArgumentParser, source: str, default_list: str
) -> None:
    """Add the options every converter CLI shares to ``parser``; ``source`` selects the shipped
    lists named in the help, ``default_list`` describes the default one."""
    shipped = [name for name in available_splits() if name.startswith(f"{source}_")]
    parser.add_argument(
        "inputs",
        nargs="+",
        help="dataset root folder(s) and/or uncompressed .tar file(s), searched in order",
    )
    parser.add_argument("--out", required=True, help="output root folder (index.json goes here)")
    parser.add_argument(
        "--split", default="train", help="output split name, e.g. train or val (%(default)s)"
    )
    parser.add_argument(
        "--list",
        dest="split_list",
        metavar="LIST",
        help=f"split list: a file (plain or .gz) or a shipped name (default {default_list}; "
        f"shipped: {', '.join(shipped)})",
    )
    parser.add_argument("--limit", type=int, help="convert only the first N frames of the list")
    parser.add_argument(
        "--per-shard",
        type=int,
        default=DEFAULT_PER_SHARD,
        help="samples per shard (%(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="worker processes, one shard each (%(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def check_conversion_arguments(args: argparse.Namespace) -> None:
    """Reject impossible option values with a message (``SystemExit``)."""
    if args.limit is not None and args.limit < 1:
        raise SystemExit(f"--limit must be >= 1, got {args.limit}")
    if args.per_shard < 1:
        raise SystemExit(f"--per-shard must be >= 1, got {args.per_shard}")
    if args.workers < 1:
        raise SystemExit(f"--workers must be >= 1, got {args.workers}")


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Human-readable lines of a conversion summary."""
    return [
        f"{summary['source']}/{summary['split']}: {summary['samples']} samples of "
        f"{summary['frames']} frames in {len(summary['shards'])} shards "
        f"({summary['written']} written, {summary['skipped']} already complete)",
        f"skipped frames (missing or unreadable input): {summary['skipped_frames']}",
        f"index: {summary['index']}  ({summary['seconds']:.1f} s)",
    ]


def run_conversion(
    args: argparse.Namespace, convert: Callable[..., dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """The converter CLIs' shared body: check ``args``, convert with ``convert(...)`` (plus
    ``extra`` keyword arguments), print the summary; returns it."""
    check_conversion_arguments(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    summary = convert(
        args.inputs,
        args.out,
        split=args.split,
        split_list=args.split_list,
        limit=args.limit,
        per_shard=args.per_shard,
        workers=args.workers,
        progress=not args.quiet,
        **extra,
    )
    print("\n".join(summary_lines(summary)))
    return summary
