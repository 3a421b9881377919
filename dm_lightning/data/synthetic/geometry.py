"""The ray caster of the synthetic generator: primitives, camera rays, nearest hits, in numpy.

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

HIT_EPS = 1e-6
"""Smallest accepted ray parameter (metres), so a ray never re-hits the surface it starts on."""

TEXTURES = ("plain", "checker", "stripes", "windows")
"""The textures a :class:`Material` may have."""

Hits = tuple[np.ndarray, np.ndarray]
"""What a primitive's ``intersect`` returns: ray parameters (N,) and unit normals (N, 3)."""


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
        if self.texture not in TEXTURES:
            raise ValueError(f"unknown texture {self.texture!r}, expected one of {TEXTURES}")


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

    def intersect(self, origin: np.ndarray, directions: np.ndarray) -> Hits:
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

    def intersect(self, origin: np.ndarray, directions: np.ndarray) -> Hits:
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

    def intersect(self, origin: np.ndarray, directions: np.ndarray) -> Hits:
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
