"""A coloured PLY point cloud of an image and its depth map (see ``--help`` for examples)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dm_lightning.errors import InputFileError
from dm_lightning.inference.depth_files import load_depth_map, load_prediction
from dm_lightning.inference.metric_depth import DEFAULT_SPACE, relative_to_depth
from dm_lightning.inference.pointcloud import (
    DEFAULT_FOV,
    Intrinsics,
    load_rgb,
    point_cloud,
    write_ply,
)
from dm_lightning.targets import ALIGNMENT_SPACES
from dm_lightning.tool_cli import run_tool, tool_parser

PROG = "point_cloud"
DESCRIPTION = """\
Back-project every valid pixel of a depth map (metres; 0, negative and non-finite pixels are
dropped) through pinhole intrinsics and write a coloured binary little-endian PLY (float32
x, y, z in metres; uint8 red, green, blue from IMAGE), readable by Open3D, MeshLab and
CloudCompare. Frame: OpenCV camera, x right, y down, z forward (viewers with y up show it
upside down until flipped).

Intrinsics: --intrinsics fx fy cx cy in pixels of the depth map, or a guess from a
horizontal field of view (--fov, default 60 degrees; principal point at the image centre).

DEPTH.npy is metric depth (tools/metric_depth.py writes it; a 16-bit PNG works too with
--depth-scale). With --relative it is a relative prediction of `dm-lightning predict`
instead, in [0, 1] (values within 1e-6 outside it, float rounding, are clipped onto it;
others are refused), mapped to depths between --near and --far by inverting the model's
target: for sqrt_disparity (the default), sqrt(1/depth) runs linearly from sqrt(1/far) at 0
to sqrt(1/near) at 1 (for --space depth, 1 = far). The shape is then plausible, not
measured: fit known depths (tools/metric_depth.py) for metres.
"""
EPILOG = """\
examples:
  python tools/point_cloud.py photo.jpg out/photo_metric.npy --out photo.ply
  python tools/point_cloud.py photo.jpg out/photo_metric.npy --out photo.ply \\
      --intrinsics 1400 1400 511.5 405 --stride 2 --max-depth 20
  python tools/point_cloud.py photo.jpg out/photo.npy --out photo.ply --relative \\
      --near 0.5 --far 10 --fov 70
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = tool_parser(PROG, DESCRIPTION, EPILOG)
    parser.add_argument("image", metavar="IMAGE", help="RGB image (JPEG, PNG, ...)")
    parser.add_argument("depth", metavar="DEPTH.npy", help="depth map of the same size")
    parser.add_argument("--out", required=True, metavar="CLOUD.ply", help="PLY file to write")
    camera = parser.add_mutually_exclusive_group()
    camera.add_argument(
        "--fov",
        type=float,
        default=DEFAULT_FOV,
        metavar="DEG",
        help="horizontal field of view guess, degrees (default: %(default)g)",
    )
    camera.add_argument(
        "--intrinsics",
        type=float,
        nargs=4,
        metavar=("FX", "FY", "CX", "CY"),
        help="pinhole intrinsics in pixels (OpenCV convention: pixel centres at integers)",
    )
    parser.add_argument(
        "--stride", type=int, default=1, help="keep every N-th row and column (default: 1)"
    )
    parser.add_argument(
        "--max-depth", type=float, metavar="M", help="drop points farther than this (metres)"
    )
    parser.add_argument(
        "--depth-scale", type=float, metavar="M", help="metres per unit of a 16-bit PNG depth"
    )
    relative = parser.add_argument_group("relative predictions")
    relative.add_argument(
        "--relative",
        action="store_true",
        help=(
            "DEPTH.npy is a relative prediction in [0, 1] (1e-6 tolerance): map it to "
            "--near .. --far"
        ),
    )
    relative.add_argument(
        "--near",
        type=float,
        default=0.5,
        metavar="M",
        help="assumed nearest depth (default: %(default)g m)",
    )
    relative.add_argument(
        "--far",
        type=float,
        default=10.0,
        metavar="M",
        help="assumed farthest depth (default: %(default)g m)",
    )
    relative.add_argument(
        "--space",
        choices=ALIGNMENT_SPACES,
        default=DEFAULT_SPACE,
        help="the model's target (default: %(default)s)",
    )
    return parser


def run(args: argparse.Namespace) -> None:
    """Read, back-project, write and print the summary; raises DMLightningError on bad
    input."""
    rgb = load_rgb(args.image)
    if args.relative:
        depth = relative_to_depth(load_prediction(args.depth), args.near, args.far, args.space)
    else:
        depth = load_depth_map(args.depth, args.depth_scale)
    height, width = depth.shape
    if rgb.shape[:2] != depth.shape:
        raise InputFileError(
            f"{args.image} is {rgb.shape[1]}x{rgb.shape[0]} pixels (WxH) but {args.depth} is "
            f"{width}x{height}; the depth map must be of the image's size"
        )
    if args.intrinsics is not None:
        intrinsics = Intrinsics(*args.intrinsics)
        source = "given"
    else:
        intrinsics = Intrinsics.from_fov(width, height, args.fov)
        source = f"guessed from a {args.fov:g} degree horizontal field of view"
    points, colors = point_cloud(depth, rgb, intrinsics, args.stride, args.max_depth)
    path = write_ply(args.out, points, colors)
    print(
        f"intrinsics ({source}): fx {intrinsics.fx:.2f}, fy {intrinsics.fy:.2f}, "
        f"cx {intrinsics.cx:.2f}, cy {intrinsics.cy:.2f} px"
    )
    print(
        f"wrote {path}: {len(points)} points of {height}x{width} pixels "
        f"(stride {args.stride}; OpenCV camera frame: x right, y down, z forward, metres)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run; 0 on success, 2 on bad input (one
    line ``point_cloud: error: ...`` on stderr)."""
    return run_tool(PROG, build_parser(), run, argv)[0]


if __name__ == "__main__":
    sys.exit(main())
