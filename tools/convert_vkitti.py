"""Convert Virtual KITTI 2 into dm_lightning shards.

Example (from the repository root, with the package installed)::

    python tools/convert_vkitti.py /data/vkitti2 --out shards --workers 8
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dm_lightning.data.sources.cli import converter_parser, run_conversion
from dm_lightning.data.sources.vkitti import convert_vkitti

DESCRIPTION = """\
Convert Virtual KITTI 2 frames into webdataset tar shards in the dm_lightning sample schema
(dm_lightning/data/schema.py), as docs/method.md §5 prescribes.

Input (INPUTS: folders and/or uncompressed .tar files, searched in order, e.g. the release
root, or the release's RGB and depth tars without extracting them):
  ROOT/SceneXX/<variation>/frames/rgb/Camera_N/rgb_NNNNN.jpg
  ROOT/SceneXX/<variation>/frames/depth/Camera_N/depth_NNNNN.png   (uint16 centimetres)

Output:
  OUT/vkitti/<split>-NNNNNN.tar   KITTI benchmark crop 352x1216 (bottom rows, centred
                                  columns), depth kept in centimetres; the sky (65535 =
                                  655.35 m) stays in the file and is invalid by the valid
                                  range (1e-5, 80) m; keys like Scene02-clone-Camera_0-00000
  OUT/index.json                  shard names and sizes per source and split

Frames come from a split list (default: the 20,148 reference training frames, scenes
02/06/18/20; --split val picks scene 01). Missing or unreadable input files are reported
and skipped. Shards are written under a .tmp name and renamed when complete; rerunning the
same command skips complete shards, so an interrupted run can simply be repeated.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    return converter_parser(
        "convert_vkitti.py", DESCRIPTION, "vkitti", default_list="vkitti_<split>"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), convert, print a summary; 0 on success."""
    run_conversion(build_parser().parse_args(argv), convert_vkitti)
    return 0


if __name__ == "__main__":
    sys.exit(main())
