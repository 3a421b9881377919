"""The command lines of the converters: the options and the body that
``tools/convert_hypersim.py`` and ``tools/convert_vkitti.py`` share.

:func:`converter_parser` builds a converter's parser (:func:`add_conversion_arguments`), and
:func:`run_conversion` converts with the options as a
:class:`~dm_lightning.data.sources.frames.ConversionOptions` (which checks them) and prints
:func:`summary_lines`; each tool only adds its dataset's options and names its ``convert_*``
function.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from dm_lightning.data.sources.engine import DEFAULT_PER_SHARD
from dm_lightning.data.sources.frames import ConversionOptions
from dm_lightning.data.splits import available_splits
from dm_lightning.errors import DMLightningError
from dm_lightning.plurals import count_of


def converter_parser(
    prog: str, description: str, source: str, default_list: str
) -> argparse.ArgumentParser:
    """A converter's parser: ``description`` shown verbatim, then the shared options
    (:func:`add_conversion_arguments` with ``source`` and ``default_list``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_conversion_arguments(parser, source, default_list=default_list)
    parser.set_defaults(prog=prog)  # names the tool in run_conversion's error line
    return parser


def add_conversion_arguments(
    parser: argparse.ArgumentParser, source: str, default_list: str
) -> None:
    """Add the options every converter CLI shares to ``parser``; ``source`` selects the shipped
    lists named in the help, ``default_list`` describes the default one."""
    shipped = [name for name in available_splits() if name.startswith(f"{source}_")]
    parser.add_argument(
        "inputs",
        nargs="+",
        help="dataset root folder(s) and/or uncompressed .tar file(s), searched in order",
    )
    parser.add_argument("--out", required=True, help="output root folder (index.json goes here)")
    parser.add_argument(
        "--split", default="train", help="output split name, e.g. train or val (%(default)s)"
    )
    parser.add_argument(
        "--list",
        dest="split_list",
        metavar="LIST",
        help=f"split list: a file (plain or .gz) or a shipped name (default {default_list}; "
        f"shipped: {', '.join(shipped)})",
    )
    parser.add_argument("--limit", type=int, help="convert only the first N frames of the list")
    parser.add_argument(
        "--per-shard",
        type=int,
        default=DEFAULT_PER_SHARD,
        help="samples per shard (%(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="worker processes, one shard each (%(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Human-readable lines of a conversion summary."""
    return [
        f"{summary['source']}/{summary['split']}: {count_of(summary['samples'], 'sample')} of "
        f"{count_of(summary['frames'], 'frame')} in {count_of(len(summary['shards']), 'shard')} "
        f"({summary['written']} written, {summary['skipped']} already complete)",
        f"skipped frames (missing or unreadable input): {summary['skipped_frames']}",
        f"index: {summary['index']}  ({summary['seconds']:.1f} s)",
    ]


def run_conversion(
    args: argparse.Namespace, convert: Callable[..., dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """The converter CLIs' shared body: convert with ``convert(inputs, out, options)`` (plus
    ``extra`` keyword arguments), print the summary; returns it.

    Raises:
        SystemExit: status 2 after one line ``PROG: error: ...`` on stderr, for an input a user
            can fix (a :class:`~dm_lightning.errors.DMLightningError`: e.g. ``--per-shard 0``,
            an input root that does not exist, or none of the list's frames found in it).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    try:
        options = ConversionOptions(
            split=args.split,
            split_list=args.split_list,
            limit=args.limit,
            per_shard=args.per_shard,
            workers=args.workers,
            progress=not args.quiet,
        )
        summary = convert(args.inputs, args.out, options, **extra)
    except DMLightningError as err:
        print(f"{getattr(args, 'prog', 'converter')}: error: {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    print("\n".join(summary_lines(summary)))
    return summary
