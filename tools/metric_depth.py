"""Metric depth (metres) from a relative prediction and known depths (see ``--help`` for
examples)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from dm_lightning.inference.depth_files import (
    DEFAULT_PNG_SCALE,
    load_depth_map,
    load_prediction,
    read_points,
    save_depth,
)
from dm_lightning.inference.metric_depth import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MIN_DEPTH,
    DEFAULT_SPACE,
    metric_from_depth_map,
    metric_from_points,
)
from dm_lightning.plurals import count_of
from dm_lightning.targets import ALIGNMENT_SPACES
from dm_lightning.tool_cli import run_tool, tool_parser

PROG = "metric_depth"
DESCRIPTION = """\
Turn a relative prediction (the float32 .npy of `dm-lightning predict`, in [0, 1]; values
within 1e-6 outside [0, 1], float rounding, are clipped onto it) into metric depth. Its
scale and shift are fitted to known depths, by least squares in the alignment space, with
the evaluation's own code (docs/method.md §6): a reference depth map of the same size (a
depth sensor, LiDAR; 0 / invalid pixels are ignored) or a few measured points. Writes OUT
(float32 metres) and OUT with .png (16-bit, --png-scale metres per unit, 0 = beyond its
range).

Points CSV: a header row with the columns x, y, metres (any order); x is the pixel column,
y the row, 0-based from the top-left pixel; at least 2 points at different distances.

  x,y,metres
  512,700,1.8
  300,420,4.2
  900,150,11.5

In the disparity spaces the fitted shift can put far pixels at infinite depth: those are
clamped to --max-depth (near ones to --min-depth) and counted in the summary.
"""
EPILOG = """\
examples:
  python tools/metric_depth.py out/photo.npy --reference sensor.png --depth-scale 0.001 \\
      --out out/photo_metric.npy
  python tools/metric_depth.py out/photo.npy --reference lidar.npy --out out/photo_metric.npy
  python tools/metric_depth.py out/photo.npy --points points.csv --out out/photo_metric.npy
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = tool_parser(PROG, DESCRIPTION, EPILOG)
    parser.add_argument("prediction", metavar="PRED.npy", help="relative prediction (H, W)")
    known = parser.add_mutually_exclusive_group(required=True)
    known.add_argument(
        "--reference",
        metavar="REF",
        help="reference depth map of the same size: .npy of metres or 16-bit .png",
    )
    known.add_argument("--points", metavar="CSV", help="known depths: CSV of x, y, metres")
    parser.add_argument(
        "--depth-scale",
        type=float,
        metavar="M",
        help="metres per unit of the reference (needed for a PNG: 0.001 = millimetres)",
    )
    parser.add_argument(
        "--out",
        metavar="OUT.npy",
        help="metric depth to write (default: PRED_metric.npy next to the prediction)",
    )
    parser.add_argument(
        "--space",
        choices=ALIGNMENT_SPACES,
        default=DEFAULT_SPACE,
        help="alignment space, as evaluation's (default: %(default)s, DepthMaster's target)",
    )
    parser.add_argument(
        "--min-depth",
        type=float,
        default=DEFAULT_MIN_DEPTH,
        metavar="M",
        help="nearer depths are clamped to this (default: %(default)g m)",
    )
    parser.add_argument(
        "--max-depth",
        type=float,
        default=DEFAULT_MAX_DEPTH,
        metavar="M",
        help="farther (and infinite) depths are clamped to this (default: %(default)g m, the "
        "evaluation's disparity floor)",
    )
    parser.add_argument(
        "--png-scale",
        type=float,
        default=DEFAULT_PNG_SCALE,
        metavar="M",
        help="metres per unit of the 16-bit PNG (default: %(default)g, millimetres)",
    )
    return parser


def run(args: argparse.Namespace) -> None:
    """Fit, write and print the summary; raises DMLightningError on bad input."""
    pred = load_prediction(args.prediction)
    if args.reference is not None:
        reference = load_depth_map(args.reference, args.depth_scale)
        result = metric_from_depth_map(
            pred, reference, args.space, args.min_depth, args.max_depth, source=args.reference
        )
        what = f"{result.fitted} of {result.known} valid pixels of {args.reference}"
    else:
        points = read_points(args.points)
        result = metric_from_points(pred, points, args.space, args.min_depth, args.max_depth)
        what = f"{result.fitted} of {result.known} points of {args.points}"
    out = args.out or str(args.prediction).removesuffix(".npy") + "_metric.npy"
    npy, png, beyond = save_depth(result.depth, out, args.png_scale)
    depth = result.depth
    print(
        f"fit in {result.space} space on {what}: scale {result.scale:.6g}, shift {result.shift:.6g}"
    )
    print(f"AbsRel on the known depths: {100 * result.abs_rel:.2f} (x100)")
    far = count_of(result.clamped_far, "pixel")
    print(
        f"depth {depth.min():.3f} .. {depth.max():.3f} m (median {np.median(depth):.3f} m); "
        f"clamped: {far} to --max-depth {result.max_depth:g} m, "
        f"{result.clamped_near} to --min-depth {result.min_depth:g} m"
    )
    print(f"wrote {npy} (float32 metres)")
    note = (
        f"; {count_of(beyond, 'pixel')} beyond {65535 * args.png_scale:g} m written as 0"
        if beyond
        else ""
    )
    print(f"wrote {png} (uint16, {args.png_scale:g} m per unit{note})")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run; 0 on success, 2 on bad input (one
    line ``metric_depth: error: ...`` on stderr)."""
    return run_tool(PROG, build_parser(), run, argv)[0]


if __name__ == "__main__":
    sys.exit(main())
