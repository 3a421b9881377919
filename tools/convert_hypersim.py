"""Convert Hypersim (raw HDF5 release or Marigold's preprocessed PNGs) into dm_lightning shards.

Example (from the repository root, with the package installed)::

    python tools/convert_hypersim.py /data/hypersim --out shards --workers 8
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dm_lightning.data.sources.cli import converter_parser, run_conversion
from dm_lightning.data.sources.hypersim import HYPERSIM_LAYOUTS, convert_hypersim

DESCRIPTION = """\
Convert Hypersim frames into webdataset tar shards in the dm_lightning sample schema
(dm_lightning/data/schema.py), as docs/method.md §5 prescribes.

Input layouts (INPUTS: folders and/or uncompressed .tar files, searched in order):
  raw  the HDF5 release: ROOT/<scene>/images/scene_cam_XX_final_hdf5/frame.NNNN.color.hdf5,
       ROOT/<scene>/images/scene_cam_XX_geometry_hdf5/frame.NNNN.depth_meters.hdf5 and
       frame.NNNN.render_entity_id.hdf5 (needs h5py). Tone mapped like the Hypersim
       reference (90th brightness percentile -> 0.8 after gamma 1/2.2), distance converted
       to planar depth (f = 886.81 px at 1024 px width), entity id -1 -> invalid.
  png  Marigold's preprocessed layout: ROOT/<split>/<scene>/rgb_cam_XX_frNNNN.png and
       depth_plane_cam_XX_frNNNN.png (uint16 mm); ROOT, ROOT/<split> or a tar of either.
  auto raw if an input folder holds <scene>/images folders, else png.

Output:
  OUT/hypersim/<split>-NNNNNN.tar   480x640 (nearest-exact resize of every raster), depth in
                                    millimetres, 0 = invalid or outside (1e-5, 65) m; keys
                                    like ai_001_001-cam_00-0000
  OUT/index.json                    shard names and sizes per source and split

Frames come from a split list (default: the 53,885 filtered training frames; --split val
picks the 7,370 filtered validation frames). Missing or unreadable input files are reported
and skipped. Shards are written under a .tmp name and renamed when complete; rerunning the
same command skips complete shards, so an interrupted run can simply be repeated.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = converter_parser(
        "convert_hypersim.py", DESCRIPTION, "hypersim", default_list="hypersim_<split>_filtered"
    )
    parser.add_argument(
        "--layout",
        choices=HYPERSIM_LAYOUTS,
        default="auto",
        help="input layout (%(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), convert, print a summary; 0 on success."""
    args = build_parser().parse_args(argv)
    summary = run_conversion(args, convert_hypersim, layout=args.layout)
    print(f"layout: {summary['layout']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
