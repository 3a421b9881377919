"""Procedural RGB-D scenes with exact metric depth, rendered by ray casting in pure numpy.

The generator needs no downloads: it is the data of the tests, the demo and the tiny configs.
Two sources imitate the two real ones DepthMaster is trained on:

* ``indoor`` (stands in for Hypersim): a closed room (floor, ceiling, four walls) with a few boxes
  and spheres on the floor, 4:3 images, every pixel valid, depth up to ~12 m (range 20 m).
* ``outdoor`` (stands in for Virtual KITTI): a street with box buildings on both sides, box cars
  and sphere trees, a camera 1.5 m above the road, wide images; the sky and anything beyond
  80 m are invalid (depth 0).

Conventions (all lengths in metres, angles in radians unless a name says ``_deg``):

* World frame: right-handed, ``z`` up; the ground/floor is the plane ``z = 0``.
* Camera frame: OpenCV (``x`` right, ``y`` down, ``z`` forward along the optical axis).
  A ``rotation`` is the (3, 3) camera-to-world matrix whose columns are the camera's right,
  down and forward axes in world coordinates (see :func:`look_rotation`).
* Pinhole camera with square pixels: focal length ``focal`` in pixels, principal point at the
  image centre ``(cx, cy) = (W / 2, H / 2)``, pixel ``(u, v)`` has its centre at
  ``(u + 0.5, v + 0.5)``.
* Depth is **planar** depth (the camera-frame ``z`` of the hit point), not the distance along
  the ray; :func:`ray_distance_to_depth` converts one into the other.

Everything is deterministic given the seed of :func:`render_scene` (``np.random.default_rng``),
and the shards written by :func:`write_split` / :func:`generate` follow
:mod:`dm_lightning.data.schema`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dm_lightning.data.schema import encode_sample
from dm_lightning.data.shards import read_shard_keys, shard_names, update_index, write_shard

SOURCES: dict[str, dict[str, Any]] = {
    # 1 mm units: 65.535 m fit in uint16, far beyond the 20 m range.
    "indoor": dict(height=96, width=128, min_depth=1e-3, max_depth=20.0, depth_scale=1e-3),
    # 2 mm units (1/500 m): 131.07 m fit in uint16, above the 80 m range.
    "outdoor": dict(height=64, width=208, min_depth=1e-3, max_depth=80.0, depth_scale=2e-3),
}
"""Per source: default image size (pixels), valid open depth range and PNG depth scale (metres)."""

SOURCE_NAMES: dict[str, str] = {"indoor": "synthetic_indoor", "outdoor": "synthetic_outdoor"}
"""The ``source`` string written into each sample's JSON."""

SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
MAX_SAMPLES_PER_SPLIT = 100_000
"""Seeds of different splits are ``MAX_SAMPLES_PER_SPLIT`` apart, so a split may not exceed it."""

INDEX_FORMAT = "dm_lightning synthetic shards"
"""The ``format`` field of the ``index.json`` written by :func:`generate`."""

HIT_EPS = 1e-6
"""Smallest accepted ray parameter (metres), so a ray never re-hits the surface it starts on."""

_TEXTURES = ("plain", "checker", "stripes", "windows")


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Material:
    """Surface appearance.

    Attributes:
        color: base RGB reflectance, three floats in [0, 1].
        texture: one of ``"plain"``, ``"checker"`` (3-D checkerboard in world coordinates),
            ``"stripes"`` (horizontal bands, i.e. along world ``z``) or ``"windows"`` (a grid of
            dark window panes on vertical faces).
        texture_scale: period of the texture in metres.
        contrast: how much darker the dark texture cells are, in [0, 1].
    """

    color: tuple[float, float, float] = (0.7, 0.7, 0.7)
    texture: str = "plain"
    texture_scale: float = 1.0
    contrast: float = 0.25

    def __post_init__(self) -> None:
        if self.texture not in _TEXTURES:
            raise ValueError(f"unknown texture {self.texture!r}, expected one of {_TEXTURES}")


class _Rays:
    """Rays from one origin, with per-axis contiguous copies so that the distance-only tests
    run on 1-D arrays (reductions over a length-3 axis are several times slower in numpy)."""

    def __init__(self, origin: np.ndarray, directions: np.ndarray) -> None:
        self.origin = origin
        self.directions = directions
        self.axes = tuple(np.ascontiguousarray(directions[:, a]) for a in range(3))
        self._inverse: tuple[np.ndarray, ...] | None = None

    @property
    def inverse(self) -> tuple[np.ndarray, ...]:
        if self._inverse is None:
            # A tiny signed stand-in for exactly-axis-parallel components keeps 0 * inf out of
            # the slab arithmetic; it yields huge finite parameters, the correct limit.
            self._inverse = tuple(
                1.0 / np.where(np.abs(d) < 1e-12, np.copysign(1e-12, d), d) for d in self.axes
            )
        return self._inverse


@dataclass(frozen=True)
class Plane:
    """Infinite plane ``{p : normal . p = offset}``; ``normal`` is a (3,) vector (any length > 0,
    normalised on use), ``offset`` is in metres along the unit normal."""

    normal: tuple[float, float, float]
    offset: float
    material: Material = field(default_factory=Material)

    def intersect(
        self, origin: np.ndarray, directions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ray parameters (N,) (``inf`` = no hit) and unit normals (N, 3) facing the ray, for
        rays from ``origin`` (3,) along unit ``directions`` (N, 3)."""
        t = self._distance(_Rays(np.asarray(origin, dtype=np.float64), directions))
        n = np.asarray(self.normal, dtype=np.float64)
        n = n / np.linalg.norm(n)
        normals = np.where((directions @ n < 0)[:, None], n, -n)
        return t, normals

    def _distance(self, rays: _Rays) -> np.ndarray:
        n = np.asarray(self.normal, dtype=np.float64)
        norm = np.linalg.norm(n)
        n = n / norm
        denom = rays.directions @ n
        num = self.offset / norm - float(n @ rays.origin)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = num / denom
        return np.where((denom != 0) & (t > HIT_EPS), t, np.inf)


@dataclass(frozen=True)
class Box:
    """Axis-aligned box with corners ``lo`` and ``hi`` ((3,) world coordinates, metres,
    ``lo < hi`` componentwise), intersected with the slab method."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    material: Material = field(default_factory=Material)

    def intersect(
        self, origin: np.ndarray, directions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ray parameters (N,) (``inf`` = no hit) and unit normals (N, 3) facing the ray, for
        rays from ``origin`` (3,) along unit ``directions`` (N, 3).

        A ray starting inside the box hits the face it leaves through.
        """
        rays = _Rays(np.asarray(origin, dtype=np.float64), directions)
        near, far = self._slabs(rays)
        t_near = np.stack(near, axis=1)
        t_far = np.stack(far, axis=1)
        t_enter = t_near.max(axis=1)
        t_exit = t_far.min(axis=1)
        entering = t_enter > HIT_EPS
        hit = (t_exit >= t_enter) & (t_exit > HIT_EPS)
        t = np.where(hit, np.where(entering, t_enter, t_exit), np.inf)
        axis = np.where(entering, t_near.argmax(axis=1), t_far.argmin(axis=1))
        rows = np.arange(len(directions))
        inverse = np.stack(rays.inverse, axis=1)
        normals = np.zeros((len(directions), 3))
        normals[rows, axis] = -np.sign(inverse[rows, axis])
        return t, normals

    def _slabs(self, rays: _Rays) -> tuple[list[np.ndarray], list[np.ndarray]]:
        near, far = [], []
        for a in range(3):
            t1 = (self.lo[a] - rays.origin[a]) * rays.inverse[a]
            t2 = (self.hi[a] - rays.origin[a]) * rays.inverse[a]
            near.append(np.minimum(t1, t2))
            far.append(np.maximum(t1, t2))
        return near, far

    def _distance(self, rays: _Rays) -> np.ndarray:
        near, far = self._slabs(rays)
        t_enter = np.maximum(np.maximum(near[0], near[1]), near[2])
        t_exit = np.minimum(np.minimum(far[0], far[1]), far[2])
        t = np.where(t_enter > HIT_EPS, t_enter, t_exit)
        return np.where((t_exit >= t_enter) & (t_exit > HIT_EPS), t, np.inf)


@dataclass(frozen=True)
class Sphere:
    """Sphere with ``center`` ((3,) world coordinates, metres) and ``radius`` (metres, > 0)."""

    center: tuple[float, float, float]
    radius: float
    material: Material = field(default_factory=Material)

    def intersect(
        self, origin: np.ndarray, directions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Ray parameters (N,) (``inf`` = no hit) and unit normals (N, 3) facing the ray, for
        rays from ``origin`` (3,) along unit ``directions`` (N, 3) (the quadratic assumes
        ``|d| = 1``)."""
        origin = np.asarray(origin, dtype=np.float64)
        t = self._distance(_Rays(origin, directions))
        points = origin + np.where(np.isfinite(t), t, 0.0)[:, None] * directions
        normals = (points - np.asarray(self.center)) / self.radius
        facing = np.sum(normals * directions, axis=1) > 0
        normals[facing] *= -1
        return t, normals

    def _distance(self, rays: _Rays) -> np.ndarray:
        oc = rays.origin - np.asarray(self.center, dtype=np.float64)
        b = rays.directions @ oc
        disc = b * b - (float(oc @ oc) - self.radius**2)
        root = np.sqrt(np.maximum(disc, 0.0))
        t_near = -b - root
        t = np.where(t_near > HIT_EPS, t_near, -b + root)
        return np.where((disc >= 0) & (t > HIT_EPS), t, np.inf)


Primitive = Plane | Box | Sphere


def look_rotation(yaw: float, pitch: float) -> np.ndarray:
    """Camera-to-world rotation of a camera with no roll.

    Args:
        yaw: heading in radians, counter-clockwise about world ``z`` from the ``+x`` axis
            (``yaw = 0`` looks along ``+x``, ``pi / 2`` along ``+y``).
        pitch: elevation of the optical axis in radians, positive looks up; ``|pitch| < 89 deg``.

    Returns:
        (3, 3) float64 matrix with columns (right, down, forward) in world coordinates, so a
        camera-frame direction ``d_cam`` maps to ``R @ d_cam`` in the world.
    """
    if abs(pitch) >= math.radians(89.0):
        raise ValueError(f"pitch {math.degrees(pitch):.1f} deg is too close to vertical")
    forward = np.array(
        [math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)]
    )
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward], axis=1)


def camera_rays(
    height: int, width: int, focal: float, rotation: np.ndarray | None = None
) -> np.ndarray:
    """Unit ray directions through the pixel centres of a pinhole camera.

    Args:
        height, width: image size in pixels.
        focal: focal length in pixels (same for x and y).
        rotation: (3, 3) camera-to-world matrix (:func:`look_rotation`); ``None`` returns the
            directions in the camera frame (x right, y down, z forward).

    Returns:
        (H, W, 3) float64 unit vectors; pixel ``(v, u)`` goes through camera-frame point
        ``((u + 0.5 - W / 2) / focal, (v + 0.5 - H / 2) / focal, 1)``.
    """
    x = (np.arange(width, dtype=np.float64) + 0.5 - width / 2) / focal
    y = (np.arange(height, dtype=np.float64) + 0.5 - height / 2) / focal
    dirs = np.empty((height, width, 3), dtype=np.float64)
    dirs[..., 0] = x[None, :]
    dirs[..., 1] = y[:, None]
    dirs[..., 2] = 1.0
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    if rotation is not None:
        dirs = dirs @ np.asarray(rotation, dtype=np.float64).T
    return dirs


def ray_cast(
    origin: np.ndarray | Sequence[float], directions: np.ndarray, primitives: Sequence[Primitive]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of rays from one origin against a list of primitives.

    Args:
        origin: (3,) ray origin, world metres.
        directions: (..., 3) unit ray directions in the world frame.
        primitives: :class:`Plane`, :class:`Box` and :class:`Sphere` objects.

    Returns:
        ``t``: (...,) float64 distance along the ray in metres, ``inf`` where nothing is hit;
        ``hit_index``: (...,) int64 index into ``primitives``, -1 where nothing is hit;
        ``normals``: (..., 3) float64 unit surface normals facing the ray origin (so
        ``normal . direction <= 0``), zero where nothing is hit.
    """
    origin = np.asarray(origin, dtype=np.float64).reshape(3)
    directions = np.asarray(directions, dtype=np.float64)
    shape = directions.shape[:-1]
    flat = directions.reshape(-1, 3)
    rays = _Rays(origin, flat)
    t_best = np.full(len(flat), np.inf)
    index = np.full(len(flat), -1, dtype=np.int64)
    for i, prim in enumerate(primitives):
        t = prim._distance(rays)
        closer = t < t_best
        t_best[closer] = t[closer]
        index[closer] = i
    # Normals only for the rays each primitive won: a small subset for most primitives.
    normals = np.zeros_like(flat)
    for i in np.unique(index[index >= 0]):
        won = index == i
        normals[won] = primitives[i].intersect(origin, flat[won])[1]
    return t_best.reshape(shape), index.reshape(shape), normals.reshape(*shape, 3)


def ray_distance_to_depth(
    t: np.ndarray, directions: np.ndarray, rotation: np.ndarray | None = None
) -> np.ndarray:
    """Convert distance along the ray into planar depth (camera-frame ``z``).

    Args:
        t: (...,) distances in metres (``inf`` stays ``inf``).
        directions: (..., 3) the unit ray directions ``t`` was measured along.
        rotation: (3, 3) camera-to-world matrix if ``directions`` are in the world frame,
            ``None`` if they are in the camera frame.

    Returns:
        (...,) float64 planar depth in metres: ``t * cos(angle between ray and optical axis)``.
    """
    axis = np.array([0.0, 0.0, 1.0]) if rotation is None else np.asarray(rotation)[:, 2]
    return np.asarray(t, dtype=np.float64) * (np.asarray(directions) @ axis)


# --------------------------------------------------------------------------------------------
# Scenes and shading
# --------------------------------------------------------------------------------------------


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
    kinds = np.array([_TEXTURES.index(m.texture) for m in mats], dtype=np.int64)[idx]

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
        min_depth=SOURCES["indoor"]["min_depth"],
        max_depth=SOURCES["indoor"]["max_depth"],
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
        min_depth=SOURCES["outdoor"]["min_depth"],
        max_depth=SOURCES["outdoor"]["max_depth"],
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
    height = SOURCES[source]["height"] if height is None else int(height)
    width = SOURCES[source]["width"] if width is None else int(width)
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


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


def sample_seed(base_seed: int, split: str, index: int) -> int:
    """Seed of sample ``index`` of ``split``; distinct for every (base_seed >= 0, split, index)
    with ``0 <= index < MAX_SAMPLES_PER_SPLIT``, so splits never share a scene."""
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}, expected one of {sorted(SPLIT_IDS)}")
    if not 0 <= index < MAX_SAMPLES_PER_SPLIT:
        raise ValueError(f"sample index {index} outside [0, {MAX_SAMPLES_PER_SPLIT})")
    if base_seed < 0:
        raise ValueError(f"base_seed must be >= 0, got {base_seed}")
    return base_seed * 1_000_003 + SPLIT_IDS[split] * MAX_SAMPLES_PER_SPLIT + index


def write_split(
    out_dir: str | os.PathLike,
    source: str,
    split: str,
    num_samples: int,
    samples_per_shard: int,
    base_seed: int,
    height: int | None = None,
    width: int | None = None,
    progress: bool = False,
) -> list[str]:
    """Render and write one split of one source as tar shards.

    Writes ``out_dir/<source>/<split>-NNNNNN.tar`` holding samples keyed
    ``<source>-<split>-NNNNNN`` (global sample index, no dots) in the
    :mod:`~dm_lightning.data.schema` format. Each shard is written under a temporary name
    unique to the process (``<name>.<pid>-<random>.tmp``) and renamed when complete, so an
    interrupted run never leaves a truncated shard under a final name, and processes that
    generate the same folder at once (e.g. several ranks) cannot corrupt each other's shards
    (they write byte-identical files). A shard that already exists with exactly the expected
    sample keys is skipped; one with other keys (e.g. written with another ``num_samples`` or
    ``samples_per_shard``) or an unreadable one is rewritten. Existing shards are not checked
    against ``base_seed`` or the image size: delete the folder to regenerate with others.
    Only a killed process (SIGKILL, power loss) leaves a ``*.tmp`` file behind; it is safe to
    delete when no generator is running.

    Args:
        out_dir: root output folder (created if missing).
        source: ``"indoor"`` or ``"outdoor"``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_samples: samples in the split (``< MAX_SAMPLES_PER_SPLIT``).
        samples_per_shard: samples per shard; the last shard may hold fewer.
        base_seed: dataset seed; sample seeds come from :func:`sample_seed`.
        height, width: image size in pixels, ``None`` = the source's default.
        progress: show a tqdm bar on stderr.

    Returns:
        Paths of all shards of the split (written now or already present), in order.
    """
    return _write_split(
        out_dir, source, split, num_samples, samples_per_shard, base_seed, height, width, progress
    )[0]


def _write_split(
    out_dir: str | os.PathLike,
    source: str,
    split: str,
    num_samples: int,
    samples_per_shard: int,
    base_seed: int,
    height: int | None,
    width: int | None,
    progress: bool,
) -> tuple[list[str], int]:
    """:func:`write_split`, also returning the number of shards written now."""
    from tqdm import tqdm

    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}, expected one of {sorted(SOURCES)}")
    sample_seed(base_seed, split, 0)  # validates split and base_seed early
    if num_samples > MAX_SAMPLES_PER_SPLIT:
        raise ValueError(f"at most {MAX_SAMPLES_PER_SPLIT} samples per split, got {num_samples}")
    folder = os.path.join(os.fspath(out_dir), source)
    os.makedirs(folder, exist_ok=True)
    names = shard_names(split, num_samples, samples_per_shard)
    paths = [os.path.join(folder, name) for name in names]
    bar = tqdm(
        total=num_samples,
        desc=f"{source}/{split}",
        unit="sample",
        file=sys.stderr,
        disable=not progress,
        leave=False,
    )
    written = 0
    with bar:
        for shard, path in enumerate(paths):
            indices = range(
                shard * samples_per_shard, min((shard + 1) * samples_per_shard, num_samples)
            )
            keys = [f"{source}-{split}-{index:06d}" for index in indices]
            if read_shard_keys(path) == set(keys):
                bar.update(len(indices))
                continue
            samples = _render_samples(source, split, indices, keys, base_seed, height, width, bar)
            write_shard(path, samples)
            written += 1
    return paths, written


def _render_samples(
    source: str,
    split: str,
    indices: Sequence[int],
    keys: Sequence[str],
    base_seed: int,
    height: int | None,
    width: int | None,
    bar: Any,
) -> Iterator[dict[str, Any]]:
    """Encoded samples of one shard; advances the progress ``bar`` by one per sample."""
    cfg = SOURCES[source]
    for index, key in zip(indices, keys):
        rgb, depth, meta = render_scene(source, sample_seed(base_seed, split, index), height, width)
        yield encode_sample(
            key,
            rgb,
            depth,
            source=SOURCE_NAMES[source],
            depth_scale=cfg["depth_scale"],
            min_depth=cfg["min_depth"],
            max_depth=cfg["max_depth"],
            extra={"split": split, **meta},
        )
        bar.update(1)


def generate(
    out_dir: str | os.PathLike,
    counts: dict[str, int] | None = None,
    sources: Iterable[str] = ("indoor", "outdoor"),
    samples_per_shard: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the synthetic dataset: every split of every source, plus ``out_dir/index.json``.

    Args:
        out_dir: root folder; shards go to ``out_dir/<source>/<split>-NNNNNN.tar``.
        counts: samples per split, default ``{"train": 256, "val": 32, "test": 32}``.
        sources: subset of :data:`SOURCES`.
        samples_per_shard: samples per shard (the last shard of a split may hold fewer).
        seed: dataset seed (>= 0); a different seed gives a disjoint set of scenes.
        progress: show tqdm bars on stderr.

    Returns:
        Summary: ``out_dir``, ``index`` (path of index.json), ``seconds`` (wall time) and
        ``sources`` mapping source -> split -> ``{"shards": [paths], "num_samples",
        "written", "skipped"}`` (numbers of shards written now / already complete, see
        :func:`write_split`).

    ``index.json`` maps ``sources`` -> source -> ``{"source", "height", "width", "min_depth",
    "max_depth", "depth_scale", "seed", "splits": {split: {"shards": [names relative to
    out_dir], "num_samples", "samples_per_shard", "shard_sizes": [samples per shard]}}}``.
    Entries of other sources already in an existing index.json are kept.
    """
    counts = {"train": 256, "val": 32, "test": 32} if counts is None else dict(counts)
    sources = list(sources)
    for source in sources:
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}, expected one of {sorted(SOURCES)}")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    summary: dict[str, Any] = {"out_dir": out_dir, "sources": {}}
    index_entries: dict[str, Any] = {}
    for source in sources:
        cfg = SOURCES[source]
        summary["sources"][source] = {}
        splits: dict[str, Any] = {}
        for split, num in counts.items():
            names = shard_names(split, num, samples_per_shard)
            paths, written = _write_split(
                out_dir, source, split, num, samples_per_shard, seed, None, None, progress
            )
            summary["sources"][source][split] = {
                "shards": paths,
                "num_samples": num,
                "written": written,
                "skipped": len(paths) - written,
            }
            splits[split] = {
                "shards": [f"{source}/{n}" for n in names],
                "num_samples": num,
                "samples_per_shard": samples_per_shard,
                "shard_sizes": [
                    min(samples_per_shard, num - i * samples_per_shard) for i in range(len(names))
                ],
            }
        index_entries[source] = {
            "source": SOURCE_NAMES[source],
            "height": cfg["height"],
            "width": cfg["width"],
            "min_depth": cfg["min_depth"],
            "max_depth": cfg["max_depth"],
            "depth_scale": cfg["depth_scale"],
            "seed": seed,
            "splits": splits,
        }
    index_path = os.path.join(out_dir, "index.json")
    update_index(index_path, lambda known: known.update(index_entries), INDEX_FORMAT)
    summary["index"] = index_path
    summary["seconds"] = time.perf_counter() - start
    return summary
