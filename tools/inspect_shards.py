"""Summarise dm_lightning shards and draw a contact sheet, to see that converted data is right.

Example (from the repository root, with the package installed)::

    python tools/inspect_shards.py 'shards/hypersim/train-*.tar' \\
        'shards/vkitti/train-{000000..000003}.tar' --sheet sheet.png --rows 8
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from dm_lightning.data.schema import CorruptSampleError, decode_sample, valid_mask
from dm_lightning.data.shard_paths import expand_shard_patterns
from dm_lightning.data.shard_reader import iter_shard
from dm_lightning.plurals import count_of
from dm_lightning.tool_cli import tool_parser

DESCRIPTION = """\
Read shards in the dm_lightning sample schema and print, per source: the number of samples,
the resolution(s), the fraction of valid depth pixels (inside the source's valid range from
each sample's JSON) and the minimum / median / maximum valid depth in metres (the median is
taken over up to 2048 evenly strided valid pixels per sample). Writes a contact sheet PNG:
one row per sample, RGB next to its colour-mapped inverse depth (near = bright, invalid =
grey), rows taken in turn from each source.

PATTERNS are shard files, globs ('shards/hypersim/train-*.tar', quote them) or brace ranges
('shards/vkitti/train-{000000..000009}.tar').
"""

MEDIAN_SAMPLES_PER_IMAGE = 2048
_GAP = 4
_INVALID = (128, 128, 128)
# Anchors of matplotlib's "magma" colour map (dark purple -> light yellow), sampled evenly.
_MAGMA = np.array(
    [
        (0, 0, 4),
        (28, 16, 68),
        (79, 18, 123),
        (129, 37, 129),
        (181, 54, 122),
        (229, 80, 100),
        (251, 135, 97),
        (254, 194, 135),
        (252, 253, 191),
    ],
    dtype=np.float64,
)


@dataclass
class SourceStats:
    """Running statistics of one source; depths in metres."""

    samples: int = 0
    resolutions: Counter = field(default_factory=Counter)
    pixels: int = 0
    valid_pixels: int = 0
    min_depth: float = math.inf
    max_depth: float = -math.inf
    strided: list[np.ndarray] = field(default_factory=list)

    def add(self, depth: np.ndarray, valid: np.ndarray) -> None:
        """Account for one (H, W) depth map and its valid mask."""
        self.samples += 1
        self.resolutions[depth.shape] += 1
        self.pixels += depth.size
        values = depth[valid]
        self.valid_pixels += values.size
        if values.size:
            self.min_depth = min(self.min_depth, float(values.min()))
            self.max_depth = max(self.max_depth, float(values.max()))
            step = max(1, values.size // MEDIAN_SAMPLES_PER_IMAGE)
            self.strided.append(values[::step])

    def line(self, source: str) -> str:
        """One summary line, e.g. ``hypersim: 4 samples, 480x640 x4, valid 97.3%, ...``."""
        sizes = ", ".join(f"{h}x{w} x{n}" for (h, w), n in sorted(self.resolutions.items()))
        valid = self.valid_pixels / self.pixels if self.pixels else 0.0
        text = f"{source}: {count_of(self.samples, 'sample')}, {sizes}, valid {100 * valid:.1f}%"
        if not self.strided:
            return text + ", no valid depth"
        median = float(np.median(np.concatenate(self.strided)))
        return (
            f"{text}, depth min {self.min_depth:.3f} / median {median:.3f} / "
            f"max {self.max_depth:.3f} m"
        )


def colorize_inverse_depth(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) uint8: inverse depth between its 2nd and 98th percentile
    over valid pixels, mapped with magma (near = bright); invalid pixels grey, which magma
    never produces."""
    out = np.full((*depth.shape, 3), _INVALID, dtype=np.uint8)
    if not valid.any():
        return out
    inverse = 1.0 / depth[valid]
    low, high = np.percentile(inverse, [2, 98])
    t = np.clip((inverse - low) / max(high - low, 1e-12), 0.0, 1.0)
    anchors = np.linspace(0.0, 1.0, len(_MAGMA))
    out[valid] = np.stack([np.interp(t, anchors, _MAGMA[:, c]) for c in range(3)], axis=1).astype(
        np.uint8
    )
    return out


def contact_row(
    rgb: np.ndarray, depth: np.ndarray, valid: np.ndarray, label: str, height: int
) -> Image.Image:
    """One contact-sheet row (PIL image): RGB, a gap, the coloured inverse depth, scaled to
    ``height`` pixels, with ``label`` written in the top-left corner."""
    width = max(1, round(rgb.shape[1] * height / rgb.shape[0]))
    left = Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR)
    right = Image.fromarray(colorize_inverse_depth(depth, valid)).resize(
        (width, height), Image.Resampling.NEAREST
    )
    row = Image.new("RGB", (2 * width + _GAP, height), (32, 32, 32))
    row.paste(left, (0, 0))
    row.paste(right, (width + _GAP, 0))
    draw = ImageDraw.Draw(row)
    draw.rectangle((0, 0, 6 * len(label) + 6, 14), fill=(0, 0, 0))
    draw.text((3, 2), label, fill=(255, 255, 255))
    return row


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = tool_parser("inspect_shards.py", DESCRIPTION)
    parser.add_argument("patterns", nargs="+", help="shard files, globs or brace ranges")
    parser.add_argument(
        "--sheet", default="contact_sheet.png", help="contact sheet PNG to write (%(default)s)"
    )
    parser.add_argument("--rows", type=int, default=8, help="samples on the sheet (%(default)s)")
    parser.add_argument(
        "--row-height", type=int, default=160, help="sheet row height in pixels (%(default)s)"
    )
    parser.add_argument(
        "--max-samples", type=int, help="read at most this many samples (default: all)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), print statistics, write the sheet.

    Returns 0, or 1 when no sample could be read.
    """
    args = build_parser().parse_args(argv)
    if args.rows < 1 or args.row_height < 8:
        raise SystemExit("--rows must be >= 1 and --row-height >= 8")
    try:
        paths = expand_shard_patterns(args.patterns)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from err
    stats: dict[str, SourceStats] = {}
    rows: dict[str, list[Image.Image]] = {}
    corrupt = read = 0
    for path in paths:
        for raw in iter_shard(path):
            if args.max_samples is not None and read >= args.max_samples:
                break
            read += 1
            try:
                sample = decode_sample(raw)
            except CorruptSampleError as err:
                print(f"corrupt: {err}", file=sys.stderr)
                corrupt += 1
                continue
            source = str(sample["meta"].get("source", "?"))
            valid = valid_mask(sample["depth"], sample["meta"])
            stats.setdefault(source, SourceStats()).add(sample["depth"], valid)
            kept = rows.setdefault(source, [])
            if len(kept) < args.rows:
                label = f"{source} {sample['key']}"
                kept.append(
                    contact_row(sample["rgb"], sample["depth"], valid, label, args.row_height)
                )
    print(f"{count_of(len(paths), 'shard')}, {count_of(read, 'sample')} read, {corrupt} corrupt")
    for source in sorted(stats):
        print(stats[source].line(source))
    if not stats:
        return 1
    # Take rows in turn from each source, so every source appears on the sheet.
    chosen = []
    for index in range(args.rows):
        for source in sorted(rows):
            if index < len(rows[source]) and len(chosen) < args.rows:
                chosen.append(rows[source][index])
    sheet = Image.new(
        "RGB",
        (max(row.width for row in chosen), len(chosen) * (args.row_height + _GAP) - _GAP),
        (32, 32, 32),
    )
    for number, row in enumerate(chosen):
        sheet.paste(row, (0, number * (args.row_height + _GAP)))
    sheet.save(args.sheet)
    print(f"contact sheet: {args.sheet} ({count_of(len(chosen), 'row')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
