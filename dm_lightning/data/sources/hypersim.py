"""Hypersim: its frames, its two input layouts and :func:`convert_hypersim`.

Inputs (each may be a folder, or an uncompressed tar whose member names end with the relative
paths below, with any prefix):

* Raw release: ``<root>/<scene>/images/scene_cam_XX_final_hdf5/frame.NNNN.color.hdf5``
  (linear HDR RGB, dataset ``"dataset"``), ``<root>/<scene>/images/scene_cam_XX_geometry_hdf5/
  frame.NNNN.depth_meters.hdf5`` (distance to the camera centre, metres) and
  ``frame.NNNN.render_entity_id.hdf5`` (int, -1 = no geometry). Needs ``h5py``.
* Preprocessed PNG layout (Marigold): ``<root>/<split>/<scene>/rgb_cam_XX_frNNNN.png``
  and ``depth_plane_cam_XX_frNNNN.png`` (uint16 planar depth in millimetres, 0 = invalid).
  ``<root>`` or ``<root>/<split>`` may be given.

Frames come from a split list (:mod:`dm_lightning.data.splits`; by default the reference
training list, 53,885 frames).

Conversion:

* raw: :func:`~dm_lightning.data.sources.raster.tone_map` (the Hypersim reference tone
  mapper), planar depth from the distance
  (:func:`~dm_lightning.data.sources.raster.distance_to_planar_depth`, f = 886.81 px at
  1024 px width), invalid where the entity id is -1 or the depth is not finite;
* both layouts: every raster resized to 480x640 with nearest-exact
  (:func:`~dm_lightning.data.sources.raster.resize_nearest_exact`); depth outside the valid
  range (1e-5, 65) m stored as 0; ``depth_scale`` 1e-3 (millimetres).

Output: ``out_dir/hypersim/<split>-NNNNNN.tar`` keyed ``ai_001_001-cam_00-0000``, with JSON
extras ``split``, ``scene``, ``camera``, ``frame`` and ``focal`` (pixels, at the stored size),
plus ``out_dir/index.json`` (:func:`~dm_lightning.data.sources.frames.convert_frames`).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from dm_lightning.data.sources.frames import (
    DEFAULT_CONVERSION,
    ConversionOptions,
    Frame,
    PathsLike,
    as_paths,
    convert_frames,
    match_entry,
)
from dm_lightning.data.sources.inputs import (
    Blob,
    InputError,
    check_shapes,
    decode_hdf5,
    decode_rgb_and_units,
)
from dm_lightning.data.sources.raster import (
    distance_to_planar_depth,
    resize_nearest_exact,
    tone_map,
)
from dm_lightning.data.sources.spec import HYPERSIM, HYPERSIM_FOCAL, HYPERSIM_FOCAL_WIDTH
from dm_lightning.data.splits import SplitEntry

HYPERSIM_LAYOUTS = ("auto", "raw", "png")

_HYPERSIM_RGB = re.compile(
    r"(?:^|/)(?P<scene>[^/]+)/rgb_cam_(?P<camera>\d+)_fr(?P<frame>\d+)\.png$"
)


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
        match = match_entry(_HYPERSIM_RGB, entry, "'ai_001_001/rgb_cam_00_fr0000.png'")
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
    tone-mapped RGB and planar depth, 480x640 (a :data:`~.inputs.Loader`)."""
    color = decode_hdf5(blobs["color"])
    distance = decode_hdf5(blobs["distance"])
    entity = decode_hdf5(blobs["entity"])
    if color.ndim != 3 or color.shape[2] != 3:
        raise InputError(f"{blobs['color'].where}: expected (H, W, 3), got {color.shape}")
    for role, array in (("distance", distance), ("entity", entity)):
        if array.ndim != 2:
            raise InputError(f"{blobs[role].where}: expected (H, W), got {array.shape}")
    check_shapes({"color": color.shape, "distance": distance.shape, "entity": entity.shape}, blobs)
    valid = entity != -1
    return _hypersim_sample(tone_map(color, valid), distance_to_planar_depth(distance), valid)


def load_hypersim_png(blobs: dict[str, Blob]) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed Hypersim frame (roles ``rgb``: PNG, ``depth``: uint16 millimetre PNG) ->
    RGB and planar depth, 480x640 (a :data:`~.inputs.Loader`)."""
    rgb, units = decode_rgb_and_units(blobs)
    return _hypersim_sample(rgb, units * 1e-3, units > 0)


def detect_hypersim_layout(inputs: Sequence[str | os.PathLike]) -> str:
    """``"raw"`` if an input folder holds ``<scene>/images`` folders (the HDF5 release),
    else ``"png"`` (tars are taken as the preprocessed layout)."""
    for root in inputs:
        root = os.fspath(root)
        if os.path.isdir(root) and glob.glob(os.path.join(glob.escape(root), "*", "images")):
            return "raw"
    return "png"


def convert_hypersim(
    inputs: PathsLike,
    out_dir: str | os.PathLike,
    options: ConversionOptions = DEFAULT_CONVERSION,
    layout: str = "auto",
) -> dict[str, Any]:
    """Convert Hypersim (raw HDF5 release or preprocessed PNGs) into shards.

    Args:
        inputs: dataset root folder(s) and/or uncompressed tar(s) (see the module docstring).
            For the PNG layout a folder ``<root>`` with a ``<root>/<split>`` sub-folder is read
            from that sub-folder.
        out_dir: output root; shards go to ``out_dir/hypersim/<split>-NNNNNN.tar``.
        options: split (also the PNG layout's sub-folder), list (default
            ``hypersim_<split>_filtered``: 53,885 frames for ``train``), limit, frames per
            shard, workers, progress.
        layout: ``"raw"``, ``"png"`` or ``"auto"`` (:func:`detect_hypersim_layout`).

    Returns:
        The summary of :func:`~dm_lightning.data.sources.frames.convert_frames`, plus ``layout``.
    """
    roots = as_paths(inputs)
    if layout not in HYPERSIM_LAYOUTS:
        raise ValueError(f"unknown Hypersim layout {layout!r}, expected one of {HYPERSIM_LAYOUTS}")
    if layout == "auto":
        layout = detect_hypersim_layout(roots)
    split = options.split
    if layout == "png":
        roots = [
            os.path.join(root, split) if os.path.isdir(os.path.join(root, split)) else root
            for root in roots
        ]
    frames = hypersim_frames(options.entries(f"hypersim_{split}_filtered"), layout)
    loader = load_hypersim_raw if layout == "raw" else load_hypersim_png
    summary = convert_frames(frames, roots, out_dir, HYPERSIM, loader, options)
    return {**summary, "layout": layout}
