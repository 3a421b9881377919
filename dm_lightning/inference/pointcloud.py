"""Coloured point clouds from a depth map, an RGB image and pinhole intrinsics.

Camera convention: OpenCV's. Pixel ``(u, v)`` is column ``u``, row ``v``, with pixel centres
at integer coordinates and ``(0, 0)`` the top-left pixel; the 3-D frame has x to the right, y
down and z forward (along the optical axis), in metres. A pixel of depth ``z`` (its distance
along z, as depth maps store it, not along the ray) goes to

    x = (u - cx) z / fx,   y = (v - cy) z / fy,   z = z

Files are binary little-endian PLY with one ``vertex`` element of float32 ``x, y, z`` and
uint8 ``red, green, blue``, which Open3D (``o3d.io.read_point_cloud``), MeshLab, CloudCompare
and Blender read. Open3D and MeshLab show the cloud upside down from their default view
(their y points up): flip it or look from below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dm_lightning.data.photos import read_photo
from dm_lightning.errors import InputFileError, MissingPathError

DEFAULT_FOV = 60.0  # degrees, horizontal: a typical phone / webcam main camera
VERTEX_DTYPE = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
)
# PLY scalar type names (both spellings of the spec) -> numpy little-endian dtypes.
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "<i2", "int16": "<i2", "ushort": "<u2", "uint16": "<u2",
    "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4",
    "float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8",
}  # fmt: skip
_NUMPY_TO_PLY = {"<f4": "float", "|u1": "uchar"}


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels (OpenCV convention, pixel centres at integers)."""

    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(math.isfinite(v) for v in values) or self.fx <= 0 or self.fy <= 0:
            raise InputFileError(
                f"intrinsics need finite fx, fy > 0 and finite cx, cy (pixels), got "
                f"fx={self.fx}, fy={self.fy}, cx={self.cx}, cy={self.cy}"
            )

    @classmethod
    def from_fov(cls, width: int, height: int, fov: float = DEFAULT_FOV) -> Intrinsics:
        """A guess for an image of unknown camera: square pixels, horizontal field of view
        ``fov`` degrees across the image's ``width`` pixels (``fx = fy = width / 2 /
        tan(fov / 2)``) and the principal point at the image centre, ``((width - 1) / 2,
        (height - 1) / 2)``."""
        if not 0.0 < fov < 180.0:
            raise InputFileError(f"field of view must be in (0, 180) degrees, got {fov}")
        if width < 1 or height < 1:
            raise InputFileError(f"image size must be positive, got {width}x{height}")
        f = width / 2.0 / math.tan(math.radians(fov) / 2.0)
        return cls(f, f, (width - 1) / 2.0, (height - 1) / 2.0)


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file (JPEG, PNG, ...) -> (H, W, 3) uint8 RGB, EXIF orientation applied (the
    size and orientation of predict's depth map of it).

    Raises:
        MissingPathError: no such file.
        InputFileError: it does not decode as an image.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"{path}: no such file")
    try:
        return read_photo(path)  # EXIF orientation applied, as predict reads its inputs
    except (OSError, ValueError, SyntaxError) as err:
        raise InputFileError(f"{path}: cannot decode as an image ({err})") from err


def back_project(
    depth: np.ndarray,
    intrinsics: Intrinsics,
    stride: int = 1,
    max_depth: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3-D points of the valid pixels of a depth map.

    Args:
        depth: (H, W) metres (z along the optical axis); pixels that are 0, negative or
            not finite are dropped, and beyond ``max_depth`` if it is given.
        intrinsics: of the depth map's pixel grid.
        stride: keep every ``stride``-th row and column (1 = all pixels).
        max_depth: optional far limit in metres (e.g. to drop the sky).

    Returns:
        ((N, 3) float32 points in the OpenCV camera frame, metres; (N,) rows ``v``; (N,)
        columns ``u``) of the kept pixels, in row-major order.
    """
    if depth.ndim != 2:
        raise InputFileError(f"depth must be (H, W), got shape {depth.shape}")
    if stride < 1:
        raise InputFileError(f"stride must be >= 1, got {stride}")
    depth = np.asarray(depth, dtype=np.float64)
    keep = np.zeros(depth.shape, dtype=bool)
    keep[::stride, ::stride] = True
    keep &= np.isfinite(depth) & (depth > 0)
    if max_depth is not None:
        keep &= depth <= max_depth
    v, u = np.nonzero(keep)
    z = depth[v, u]
    x = (u - intrinsics.cx) * z / intrinsics.fx
    y = (v - intrinsics.cy) * z / intrinsics.fy
    return np.stack([x, y, z], axis=1).astype(np.float32), v, u


def point_cloud(
    depth: np.ndarray,
    rgb: np.ndarray,
    intrinsics: Intrinsics,
    stride: int = 1,
    max_depth: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Coloured points of a depth map and its image.

    Args:
        depth: (H, W) metres, as :func:`back_project`.
        rgb: (H, W, 3) uint8, the same size.
        intrinsics, stride, max_depth: as :func:`back_project`.

    Returns:
        ((N, 3) float32 points, metres; (N, 3) uint8 colours of their pixels).
    """
    if rgb.shape[:2] != depth.shape or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputFileError(
            f"the image is {rgb.shape[0]}x{rgb.shape[1]} (HxW) but the depth map is "
            f"{depth.shape[0]}x{depth.shape[1]}; they must be the same size"
        )
    points, v, u = back_project(depth, intrinsics, stride, max_depth)
    return points, np.asarray(rgb, dtype=np.uint8)[v, u]


def write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray) -> Path:
    """Write a binary little-endian PLY of coloured points.

    Args:
        path: output file (folders are created).
        points: (N, 3) float coordinates (written as float32).
        colors: (N, 3) uint8 RGB.

    Returns:
        ``path``.
    """
    points = np.asarray(points)
    colors = np.asarray(colors)
    if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape:
        raise ValueError(
            f"points and colors must both be (N, 3), got {points.shape} and {colors.shape}"
        )
    vertices = np.empty(len(points), dtype=VERTEX_DTYPE)
    for axis, name in enumerate("xyz"):
        vertices[name] = points[:, axis]
    for channel, name in enumerate(("red", "green", "blue")):
        vertices[name] = colors[:, channel]
    properties = "".join(
        f"property {_NUMPY_TO_PLY[VERTEX_DTYPE[name].str]} {name}\n" for name in VERTEX_DTYPE.names
    )
    header = (
        "ply\n"
        "format binary_little_endian 1.0\n"
        "comment dm_lightning point cloud: metres, OpenCV camera frame (x right, y down, "
        "z forward)\n"
        f"element vertex {len(vertices)}\n"
        f"{properties}"
        "end_header\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertices.tobytes())
    return path


def read_ply(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read the vertices of a binary little-endian PLY (as :func:`write_ply` writes).

    Only the first element may be read (``vertex``) and its properties must be scalars; other
    elements after it are ignored.

    Returns:
        (the header lines without ``end_header``, (N,) structured array of the vertex
        properties, named as in the header).

    Raises:
        ValueError: not a PLY, another format, or a truncated file (naming the file).
    """
    path = Path(path)
    data = path.read_bytes()
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise ValueError(f"{path}: not a PLY file (no 'ply' / 'end_header' lines)")
    header = data[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in header:
        found = next((line for line in header if line.startswith("format")), "no format line")
        raise ValueError(f"{path}: not a binary little-endian PLY ({found!r})")
    count, fields = None, []
    for line in header:
        words = line.split()
        if words[:1] == ["element"]:
            if count is not None:
                break  # only the first element is read
            if words[1] != "vertex":
                raise ValueError(f"{path}: the first element is {words[1]!r}, not 'vertex'")
            count = int(words[2])
        elif words[:1] == ["property"] and count is not None:
            if words[1] == "list" or words[1] not in _PLY_TYPES:
                raise ValueError(f"{path}: unsupported vertex property {line!r}")
            fields.append((words[2], _PLY_TYPES[words[1]]))
    if count is None:
        raise ValueError(f"{path}: no 'element vertex' line in the header")
    dtype = np.dtype(fields)
    body = data[end + len(b"end_header\n") :]
    if len(body) < count * dtype.itemsize:
        raise ValueError(
            f"{path}: truncated: {count} vertices need {count * dtype.itemsize} bytes, "
            f"{len(body)} follow the header"
        )
    return header, np.frombuffer(body, dtype=dtype, count=count)
