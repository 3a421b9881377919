"""Write the procedural synthetic RGB-D dataset as webdataset tar shards.

Example (from the repository root, with the package installed)::

    python tools/make_synthetic_shards.py --out shards/synthetic --train 256 --val 32 --test 32
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dm_lightning.data.synthetic import SOURCES, generate
from dm_lightning.plurals import count_of
from dm_lightning.tool_cli import tool_parser

DESCRIPTION = """\
Render procedural scenes with exact metric depth (numpy ray casting, no downloads) and write
them as webdataset tar shards in the dm_lightning sample schema (dm_lightning/data/schema.py):

  OUT/indoor/{train,val,test}-NNNNNN.tar    rooms with boxes and spheres, 96x128,
                                            depth in (0.001, 20) m, stored in 1 mm units
  OUT/outdoor/{train,val,test}-NNNNNN.tar   streets with buildings, cars, trees, 64x208,
                                            depth in (0.001, 80) m, stored in 2 mm units,
                                            sky and anything beyond 80 m = 0 (invalid)
  OUT/index.json                            shard names, samples per shard, image sizes,
                                            depth ranges and scales per source and split

Each sample holds rgb.png, depth.png (uint16) and json (source, depth_scale, ranges, size,
focal in pixels, seed). Splits use disjoint seeds. Shards are written under a .tmp name and
renamed when complete; existing shards are skipped, so an interrupted run can simply be
repeated (delete OUT to regenerate with other settings).
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = tool_parser("make_synthetic_shards.py", DESCRIPTION)
    parser.add_argument("--out", default="shards/synthetic", help="output folder (%(default)s)")
    parser.add_argument("--train", type=int, default=256, help="train samples per source")
    parser.add_argument("--val", type=int, default=32, help="validation samples per source")
    parser.add_argument("--test", type=int, default=32, help="test samples per source")
    parser.add_argument("--per-shard", type=int, default=64, help="samples per shard (%(default)s)")
    parser.add_argument(
        "--seed", type=int, default=0, help="dataset seed >= 0; other seeds give other scenes"
    )
    parser.add_argument(
        "--sources",
        nargs="+",
        choices=sorted(SOURCES),
        default=["indoor", "outdoor"],
        help="sources to write (default: indoor outdoor)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), generate the shards, print a summary."""
    args = build_parser().parse_args(argv)
    for name in ("train", "val", "test"):
        if getattr(args, name) < 0:
            raise SystemExit(f"--{name} must be >= 0")
    if args.per_shard < 1:
        raise SystemExit("--per-shard must be >= 1")
    if args.seed < 0:
        raise SystemExit("--seed must be >= 0")
    summary = generate(
        args.out,
        counts={"train": args.train, "val": args.val, "test": args.test},
        sources=args.sources,
        samples_per_shard=args.per_shard,
        seed=args.seed,
        progress=not args.quiet,
    )
    for source, splits in summary["sources"].items():
        for split, info in splits.items():
            samples = count_of(info["num_samples"], "sample")
            shards = count_of(len(info["shards"]), "shard")
            print(
                f"{source}/{split}: {samples} in {shards} "
                f"({info['written']} written, {info['skipped']} already present)"
            )
    print(f"index: {summary['index']}  ({summary['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
