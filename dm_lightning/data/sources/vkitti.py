"""Virtual KITTI 2: its frames, its loader and :func:`convert_vkitti`.

Input: the release, ``<root>/SceneXX/<variation>/frames/rgb/Camera_N/rgb_NNNNN.jpg`` and
``.../frames/depth/Camera_N/depth_NNNNN.png`` (uint16 centimetres, 65535 = sky), as folders
and/or uncompressed tars (e.g. the release's separate RGB and depth tars). Frames come from a
split list (by default the reference training list, 20,148 frames).

Conversion: KITTI benchmark crop to 352x1216
(:func:`~dm_lightning.data.crops.kitti_benchmark_crop`); depth kept in centimetres
(``depth_scale`` 0.01), so the sky (655.35 m) stays in the file and is invalid by the valid
range (1e-5, 80) m when read.

Output: ``out_dir/vkitti/<split>-NNNNNN.tar`` keyed ``Scene02-clone-Camera_0-00000``, with JSON
extras ``split``, ``scene``, ``variation``, ``camera``, ``frame`` and ``focal``, plus
``out_dir/index.json`` (:func:`~dm_lightning.data.sources.frames.convert_frames`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from dm_lightning.data.crops import kitti_benchmark_crop
from dm_lightning.data.sources.frames import (
    DEFAULT_CONVERSION,
    ConversionOptions,
    Frame,
    PathsLike,
    convert_frames,
    match_entry,
)
from dm_lightning.data.sources.inputs import (
    Blob,
    InputError,
    decode_rgb_and_units,
)
from dm_lightning.data.sources.spec import VKITTI, VKITTI_FOCAL
from dm_lightning.data.splits import SplitEntry

_VKITTI_RGB = re.compile(
    r"(?:^|/)(?P<scene>Scene\d+)/(?P<variation>[^/]+)/frames/rgb/(?P<camera>Camera_\d+)/"
    r"rgb_(?P<frame>\d+)\.jpg$"
)


def vkitti_frames(entries: Sequence[SplitEntry]) -> list[Frame]:
    """Frames of Virtual KITTI 2 list entries
    (``SceneXX/<variation>/frames/rgb/Camera_N/rgb_NNNNN.jpg <depth path>``); roles ``rgb``,
    ``depth``."""
    frames = []
    for entry in entries:
        match = match_entry(_VKITTI_RGB, entry, "'Scene01/clone/frames/rgb/Camera_0/rgb_00000.jpg'")
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


def load_vkitti(blobs: dict[str, Blob]) -> tuple[np.ndarray, np.ndarray]:
    """Virtual KITTI 2 frame (roles ``rgb``: JPEG, ``depth``: uint16 centimetre PNG) -> KITTI
    benchmark crop 352x1216, depth in metres with the sky (655.35 m) kept (a
    :data:`~.inputs.Loader`)."""
    rgb, units = decode_rgb_and_units(blobs)
    if rgb.shape[0] < VKITTI.height or rgb.shape[1] < VKITTI.width:
        raise InputError(
            f"{blobs['rgb'].where}: {rgb.shape[0]}x{rgb.shape[1]} is smaller than the "
            f"{VKITTI.height}x{VKITTI.width} crop"
        )
    crop_rgb = kitti_benchmark_crop(rgb, VKITTI.height, VKITTI.width)
    crop_units = kitti_benchmark_crop(units, VKITTI.height, VKITTI.width)
    return crop_rgb, crop_units * VKITTI.depth_scale


def convert_vkitti(
    inputs: PathsLike,
    out_dir: str | os.PathLike,
    options: ConversionOptions = DEFAULT_CONVERSION,
) -> dict[str, Any]:
    """Convert Virtual KITTI 2 into shards ``out_dir/vkitti/<split>-NNNNNN.tar``.

    Args:
        inputs: the release root folder (holding ``SceneXX``) and/or uncompressed tars (e.g.
            the release's separate RGB and depth tars).
        out_dir: output root (``index.json`` goes here).
        options: split, list (default ``vkitti_<split>``: 20,148 frames for ``train``), limit,
            frames per shard, workers, progress.

    Returns:
        The summary of :func:`~dm_lightning.data.sources.frames.convert_frames`.
    """
    frames = vkitti_frames(options.entries(f"vkitti_{options.split}"))
    return convert_frames(frames, inputs, out_dir, VKITTI, load_vkitti, options)
