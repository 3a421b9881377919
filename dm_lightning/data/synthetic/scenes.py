"""Procedural scenes of the synthetic generator and their rendering (shading, sky, fog).

Two sources imitate the two real ones DepthMaster is trained on (their stored form, size and
depth range: :data:`SOURCES`, :class:`~dm_lightning.data.sources.spec.SourceSpec` objects):

* ``indoor`` (stands in for Hypersim): a closed room (floor, ceiling, four walls) with a few boxes
  and spheres on the floor, 4:3 images, every pixel valid, depth up to ~12 m (range 20 m).
* ``outdoor`` (stands in for Virtual KITTI): a street with box buildings on both sides, box cars
  and sphere trees, a camera 1.5 m above the road, wide images; the sky and anything beyond
  80 m are invalid (depth 0).

Everything is deterministic given the seed of :func:`render_scene` (``np.random.default_rng``);
geometry conventions as in :mod:`~dm_lightning.data.synthetic.geometry`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dm_lightning.data.sources.spec import SYNTHETIC_INDOOR, SYNTHETIC_OUTDOOR, SourceSpec
from dm_lightning.data.synthetic.geometry import (
    TEXTURES,
    Box,
    Material,
    Plane,
    Primitive,
    Sphere,
    camera_rays,
    look_rotation,
    ray_cast,
    ray_distance_to_depth,
)

SOURCES: dict[str, SourceSpec] = {"indoor": SYNTHETIC_INDOOR, "outdoor": SYNTHETIC_OUTDOOR}
"""Per source: default image size (pixels), valid open depth range, PNG depth scale (metres)
and the ``source`` label of its samples (``synthetic_indoor`` / ``synthetic_outdoor``)."""


@dataclass
class Scene:
    """Everything :func:`render` needs.

    Attributes:
        primitives: the geometry; nearest hit wins.
        origin: (3,) camera centre, world metres.
        rotation: (3, 3) camera-to-world matrix.
        focal: focal length in pixels.
        min_depth, max_depth: valid open planar-depth range in metres; outside it depth is 0.
        light_dir: (3,) unit vector towards the directional light.
        ambient: share of light that reaches every surface, in [0, 1].
        fog_distance: metres over which fog reaches 63 %; ``None`` disables fog.
        fog_color, sky_horizon, sky_zenith: RGB in [0, 1].
    """

    primitives: list[Primitive]
    origin: np.ndarray
    rotation: np.ndarray
    focal: float
    min_depth: float
    max_depth: float
    light_dir: np.ndarray
    ambient: float = 0.35
    fog_distance: float | None = None
    fog_color: tuple[float, float, float] = (0.8, 0.82, 0.85)
    sky_horizon: tuple[float, float, float] = (0.85, 0.88, 0.92)
    sky_zenith: tuple[float, float, float] = (0.35, 0.55, 0.85)


def render(
    scene: Scene, height: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Ray cast and shade a scene.

    Args:
        scene: the scene.
        height, width: image size in pixels.
        rng: source of the texture noise (consumed deterministically).

    Returns:
        ``rgb``: (H, W, 3) uint8; ``depth``: (H, W) float32 planar depth in metres, 0 where
        nothing is hit or the depth falls outside ``(scene.min_depth, scene.max_depth)``.
    """
    dirs = camera_rays(height, width, scene.focal, scene.rotation)
    t, index, normals = ray_cast(scene.origin, dirs, scene.primitives)
    depth = ray_distance_to_depth(t, dirs, scene.rotation)
    valid = np.isfinite(depth) & (depth > scene.min_depth) & (depth < scene.max_depth)
    depth = np.where(valid, depth, 0.0).astype(np.float32)
    rgb = _shade(scene, dirs, t, index, normals, rng)
    return rgb, depth


def _shade(
    scene: Scene,
    dirs: np.ndarray,
    t: np.ndarray,
    index: np.ndarray,
    normals: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    elevation = np.clip(dirs[..., 2], 0.0, 1.0) ** 0.6
    horizon = np.asarray(scene.sky_horizon)
    zenith = np.asarray(scene.sky_zenith)
    image = horizon + (zenith - horizon) * elevation[..., None]

    hit = index >= 0
    idx = index[hit]
    d = dirs[hit]
    dist = t[hit]
    n = normals[hit]
    points = scene.origin + dist[:, None] * d
    # Sample textures slightly inside the surface so faces lying on a cell boundary do not
    # flicker between two cells.
    inner = points - 1e-4 * n

    mats = [p.material for p in scene.primitives]
    colors = np.array([m.color for m in mats], dtype=np.float64)[idx]
    scales = np.array([m.texture_scale for m in mats], dtype=np.float64)[idx]
    contrast = np.array([m.contrast for m in mats], dtype=np.float64)[idx]
    kinds = np.array([TEXTURES.index(m.texture) for m in mats], dtype=np.int64)[idx]

    q = inner / scales[:, None]
    checker = np.floor(q).sum(axis=1) % 2
    stripes = np.floor(q[:, 2]) % 2
    # On a vertical face one of x, y is constant, so x + y runs along the face.
    across = np.mod(q[:, 0] + q[:, 1], 1.0)
    up = np.mod(q[:, 2] / 1.2, 1.0)
    windows = (
        (np.abs(n[:, 2]) < 0.5) & (across > 0.25) & (across < 0.75) & (up > 0.3) & (up < 0.75)
    ).astype(np.float64)
    dark = np.select(
        [kinds == 1, kinds == 2, kinds == 3], [checker, stripes, windows * 2.2], default=0.0
    )
    texture = np.clip(1.0 - contrast * dark, 0.05, 1.0)

    # Smooth world-space variation, so large surfaces are not perfectly flat-coloured.
    waves = rng.normal(size=(3, 3)) * 1.5
    phases = rng.uniform(0, 2 * np.pi, size=3)
    mottle = 1.0 + 0.05 * np.sin(inner @ waves.T + phases).sum(axis=1)

    lambert = np.clip(n @ scene.light_dir, 0.0, None)
    shading = scene.ambient + (1.0 - scene.ambient) * lambert
    color = colors * (texture * mottle * shading)[:, None]
    if scene.fog_distance is not None:
        fog = 1.0 - np.exp(-dist / scene.fog_distance)
        color = color * (1.0 - fog[:, None]) + np.asarray(scene.fog_color) * fog[:, None]
    image[hit] = color

    image = image + rng.normal(scale=1.5 / 255.0, size=image.shape)
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _focal_from_hfov(width: int, hfov_deg: float) -> float:
    return (width / 2) / math.tan(math.radians(hfov_deg) / 2)


def _muted_color(rng: np.random.Generator, lo: float = 0.35, hi: float = 0.85) -> tuple:
    base = rng.uniform(lo, hi)
    tint = rng.uniform(-0.12, 0.12, size=3)
    return tuple(float(c) for c in np.clip(base + tint, 0.05, 1.0))


def make_indoor_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    """A random room (4-8 m x 4-8 m, 2.5-3.5 m high) seen from inside, with 2-6 boxes and
    spheres standing on the floor; camera 1.2-1.8 m high, random yaw, pitch -15..+5 deg,
    horizontal field of view 55-75 deg."""
    size_x, size_y = rng.uniform(4.0, 8.0, size=2)
    room_h = rng.uniform(2.5, 3.5)
    floor = Material(_muted_color(rng, 0.3, 0.6), "checker", rng.uniform(0.4, 0.8), 0.3)
    ceiling = Material(_muted_color(rng, 0.75, 0.95), "plain")
    wall_tex = "stripes" if rng.random() < 0.5 else "plain"
    wall_colors = [_muted_color(rng, 0.5, 0.9) for _ in range(4)]
    primitives: list[Primitive] = [
        Plane((0, 0, 1), 0.0, floor),
        Plane((0, 0, 1), room_h, ceiling),
        Plane((1, 0, 0), 0.0, Material(wall_colors[0], wall_tex, 0.3, 0.12)),
        Plane((1, 0, 0), size_x, Material(wall_colors[1], wall_tex, 0.3, 0.12)),
        Plane((0, 1, 0), 0.0, Material(wall_colors[2], wall_tex, 0.3, 0.12)),
        Plane((0, 1, 0), size_y, Material(wall_colors[3], wall_tex, 0.3, 0.12)),
    ]

    margin = 0.5
    room = np.array([size_x, size_y])
    # Aim at a point far across the room, so that no view is filled by a wall at arm's length.
    for _attempt in range(50):
        cam_xy = rng.uniform(margin, room - margin)
        target = rng.uniform(0.0, room)
        if np.linalg.norm(target - cam_xy) > 0.5 * room.max():
            break
    yaw = math.atan2(target[1] - cam_xy[1], target[0] - cam_xy[0])
    cam_z = rng.uniform(1.2, 1.8)
    # Objects stay clear of the camera so that no image is filled by one surface at 0 m.
    clearance = 0.8
    footprints: list[tuple[np.ndarray, float]] = []
    for _ in range(int(rng.integers(2, 8))):
        for _attempt in range(10):
            is_sphere = rng.random() < 0.4
            half = rng.uniform(0.2, 0.6) if is_sphere else rng.uniform(0.15, 0.6)
            # Most objects go into the field of view; the rest anywhere in the room.
            if rng.random() < 0.75:
                angle = yaw + rng.uniform(-0.6, 0.6)
                center = cam_xy + rng.uniform(1.2, 5.0) * np.array([np.cos(angle), np.sin(angle)])
            else:
                center = rng.uniform(0.0, room)
            if np.any(center < half) or np.any(center > room - half):
                continue
            if np.linalg.norm(center - cam_xy) < clearance + half * 1.5:
                continue
            if any(np.linalg.norm(center - c) < half + h for c, h in footprints):
                continue
            mat = Material(
                _saturated_color(rng),
                str(rng.choice(["plain", "checker"])),
                rng.uniform(0.1, 0.3),
                0.25,
            )
            if is_sphere:
                primitives.append(Sphere((*center, half), half, mat))
            else:
                extent = rng.uniform(0.6, 1.0, size=2) * half
                top = rng.uniform(0.3, 1.5)
                primitives.append(Box((*(center - extent), 0.0), (*(center + extent), top), mat))
            footprints.append((center, half * 1.42))
            break

    pitch = math.radians(rng.uniform(-15.0, 5.0))
    light = np.array([*rng.normal(scale=0.5, size=2), 1.0])
    return Scene(
        primitives=primitives,
        origin=np.array([*cam_xy, cam_z]),
        rotation=look_rotation(yaw, pitch),
        focal=_focal_from_hfov(width, rng.uniform(55.0, 75.0)),
        min_depth=SOURCES["indoor"].min_depth,
        max_depth=SOURCES["indoor"].max_depth,
        light_dir=light / np.linalg.norm(light),
        ambient=0.45,
        fog_distance=40.0,
        fog_color=(0.75, 0.72, 0.68),
    )


def _saturated_color(rng: np.random.Generator) -> tuple:
    color = rng.uniform(0.1, 0.9, size=3)
    color[rng.integers(3)] = rng.uniform(0.7, 1.0)
    return tuple(float(c) for c in color)


def make_outdoor_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    """A random street along world ``+x``: road plane, raised sidewalks, box buildings
    (6-28 m high) lining both sides up to ~160 m ahead, box cars, sphere trees; camera
    1.45-1.75 m above the road, yaw within +-8 deg of the street, pitch -3..+2 deg, horizontal
    field of view 75-85 deg (KITTI-like)."""
    road_half = rng.uniform(4.0, 7.0)
    walk = rng.uniform(2.0, 3.5)
    grey = rng.uniform(0.25, 0.4)
    road = Material(
        tuple(float(c) for c in grey + rng.uniform(-0.03, 0.03, 3)), "checker", 2.0, 0.08
    )
    walk_mat = Material(_muted_color(rng, 0.55, 0.7), "checker", 0.6, 0.15)
    primitives: list[Primitive] = [Plane((0, 0, 1), 0.0, road)]
    for side in (-1.0, 1.0):
        y0, y1 = sorted((side * road_half, side * (road_half + walk)))
        primitives.append(Box((-30.0, y0, 0.0), (250.0, y1, 0.15), walk_mat))

    for side in (-1.0, 1.0):
        x = rng.uniform(-25.0, -10.0)
        while x < 160.0:
            length = rng.uniform(6.0, 20.0)
            near = road_half + walk + rng.uniform(0.0, 2.0)
            far = near + rng.uniform(8.0, 16.0)
            y0, y1 = sorted((side * near, side * far))
            mat = Material(_muted_color(rng), "windows", rng.uniform(2.5, 3.5), 0.35)
            primitives.append(Box((x, y0, 0.0), (x + length, y1, rng.uniform(6.0, 28.0)), mat))
            x += length + (rng.uniform(1.0, 5.0) if rng.random() < 0.3 else 0.0)

    lanes = (-road_half + 1.3, road_half - 1.3)
    car_xs: dict[float, list[float]] = {lanes[0]: [], lanes[1]: []}
    for _ in range(int(rng.integers(2, 8))):
        lane = lanes[int(rng.integers(2))]
        x = rng.uniform(6.0, 70.0)
        if any(abs(x - other) < 6.0 for other in car_xs[lane]):
            continue
        car_xs[lane].append(x)
        mat = Material(_saturated_color(rng), "plain")
        primitives.append(Box((x - 2.1, lane - 0.9, 0.2), (x + 2.1, lane + 0.9, 0.95), mat))
        primitives.append(Box((x - 1.2, lane - 0.8, 0.95), (x + 0.9, lane + 0.8, 1.5), mat))

    leaf = Material((0.2, 0.45, 0.15), "checker", 0.5, 0.2)
    trunk = Material((0.35, 0.25, 0.15), "plain")
    for side in (-1.0, 1.0):
        y = side * (road_half + walk * 0.5)
        for x in np.cumsum(rng.uniform(8.0, 25.0, size=int(rng.integers(0, 6)))):
            radius = rng.uniform(1.2, 2.2)
            primitives.append(Sphere((float(x), y, 2.5 + radius), radius, leaf))
            primitives.append(Box((x - 0.15, y - 0.15, 0.0), (x + 0.15, y + 0.15, 2.6), trunk))

    cam = np.array([0.0, rng.uniform(-0.5, 0.5) * road_half, rng.uniform(1.45, 1.75)])
    yaw = math.radians(rng.uniform(-8.0, 8.0))
    pitch = math.radians(rng.uniform(-3.0, 2.0))
    sun_az = rng.uniform(-np.pi, np.pi)
    sun_el = math.radians(rng.uniform(25.0, 60.0))
    light = np.array(
        [math.cos(sun_el) * math.cos(sun_az), math.cos(sun_el) * math.sin(sun_az), math.sin(sun_el)]
    )
    horizon = tuple(float(c) for c in np.clip(rng.normal([0.85, 0.88, 0.92], 0.03), 0, 1))
    return Scene(
        primitives=primitives,
        origin=cam,
        rotation=look_rotation(yaw, pitch),
        focal=_focal_from_hfov(width, rng.uniform(75.0, 85.0)),
        min_depth=SOURCES["outdoor"].min_depth,
        max_depth=SOURCES["outdoor"].max_depth,
        light_dir=light,
        ambient=0.35,
        fog_distance=150.0,
        fog_color=horizon,
        sky_horizon=horizon,
        sky_zenith=tuple(float(c) for c in np.clip(rng.normal([0.3, 0.5, 0.85], 0.04), 0, 1)),
    )


_SCENE_MAKERS = {"indoor": make_indoor_scene, "outdoor": make_outdoor_scene}


def render_scene(
    source: str, seed: int, height: int | None = None, width: int | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Render one random scene of a source; deterministic in ``(source, seed, height, width)``.

    Args:
        source: ``"indoor"`` or ``"outdoor"`` (keys of :data:`SOURCES`).
        seed: non-negative integer seed for ``np.random.default_rng``.
        height, width: image size in pixels; ``None`` uses the source's default. The field of
            view does not depend on the size, so the focal length scales with ``width``.

    Returns:
        ``rgb``: (H, W, 3) uint8; ``depth``: (H, W) float32 planar depth in metres, 0 = invalid
        (sky, or outside the source's ``(min_depth, max_depth)``); ``meta``: JSON-serialisable
        dict with ``focal`` (pixels), ``cx``/``cy`` (pixels), ``seed``, ``camera_position``
        (world metres), ``yaw_deg``, ``pitch_deg`` and ``num_primitives``.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}, expected one of {sorted(SOURCES)}")
    height = SOURCES[source].height if height is None else int(height)
    width = SOURCES[source].width if width is None else int(width)
    rng = np.random.default_rng(seed)
    scene = _SCENE_MAKERS[source](rng, height, width)
    rgb, depth = render(scene, height, width, rng)
    forward = scene.rotation[:, 2]
    meta = {
        "focal": float(scene.focal),
        "cx": width / 2,
        "cy": height / 2,
        "seed": int(seed),
        "camera_position": [float(c) for c in scene.origin],
        "yaw_deg": math.degrees(math.atan2(forward[1], forward[0])),
        "pitch_deg": math.degrees(math.asin(float(np.clip(forward[2], -1.0, 1.0)))),
        "num_primitives": len(scene.primitives),
    }
    return rgb, depth, meta
