"""Reference split lists shipped with the package, and the parser shared by every list file
(training split lists here, the benchmark reference lists of ``splits/eval/`` too).

A list file has one frame per line: whitespace-separated paths relative to the dataset root,
RGB first, depth second, then optional further fields (a mask path, a focal length in pixels,
...). Blank lines and lines starting with ``#`` are ignored. Files may be plain text or gzip
(``.gz``); the long training lists are stored gzip-compressed to keep the repository small.

Shipped lists (``name``: origin, frames):

* ``hypersim_train_filtered``: Marigold's ``filename_list_train_filtered.txt``, 53,885 frames
* ``hypersim_val_filtered``: ``filename_list_val_filtered.txt``, 7,370 frames
* ``hypersim_val_small_80``: ``filename_list_val_filtered_small_80.txt``, 80 frames
* ``vkitti_train``: scenes 02/06/18/20, six variations, both cameras, 20,148 frames
* ``vkitti_val``: scene 01, 5,364 frames

Hypersim lines are ``<scene>/rgb_cam_XX_frNNNN.png <scene>/depth_plane_cam_XX_frNNNN.png``
(relative to a split folder of the preprocessed PNG layout); Virtual KITTI 2 lines are
``SceneXX/<variation>/frames/rgb/Camera_N/rgb_NNNNN.jpg
SceneXX/<variation>/frames/depth/Camera_N/depth_NNNNN.png``.
"""

from __future__ import annotations

import gzip
import os
from importlib import resources
from typing import NamedTuple

_SUFFIXES = (".txt.gz", ".txt")


class SplitEntry(NamedTuple):
    """One line of a split list: paths relative to the dataset root, plus any further fields."""

    rgb: str
    depth: str
    extra: tuple[str, ...] = ()


class ListLineError(ValueError):
    """A list line with fewer fields than needed; ``origin``, ``number`` (1-based), ``line``
    and ``min_fields`` say which and why (callers may word their own message from them)."""

    def __init__(self, origin: str, number: int, line: str, min_fields: int = 2) -> None:
        expected = (
            "'<rgb path> <depth path> [...]'"
            if min_fields <= 2
            else f"at least {min_fields} fields '<rgb path> <depth path> ...'"
        )
        super().__init__(f"{origin}, line {number}: expected {expected}, got {line!r}")
        self.origin, self.number, self.line, self.min_fields = origin, number, line, min_fields

    def __reduce__(self) -> tuple[type, tuple[str, int, str, int]]:
        return type(self), (self.origin, self.number, self.line, self.min_fields)


def parse_split_lines(text: str, origin: str = "<string>", min_fields: int = 2) -> list[SplitEntry]:
    """Parse the text of a list file.

    Args:
        text: file content.
        origin: file name used in error messages.
        min_fields: fields a line needs (>= 2: RGB and depth paths, then e.g. a mask path).

    Raises:
        ListLineError: a ``ValueError`` naming ``origin`` and the line number, when a line has
            fewer than ``min_fields`` fields.
    """
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) < max(min_fields, 2):
            raise ListLineError(origin, number, line, min_fields)
        entries.append(SplitEntry(fields[0], fields[1], tuple(fields[2:])))
    return entries


def read_split_file(path: str | os.PathLike, min_fields: int = 2) -> list[SplitEntry]:
    """Parse a list file on disk, plain or gzip-compressed (by the ``.gz`` suffix)."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return parse_split_lines(f.read(), path, min_fields)


def available_splits() -> list[str]:
    """Names accepted by :func:`load_split` (sub-folders as ``folder/name``), sorted."""
    names = []

    def walk(folder, prefix: str) -> None:
        for item in folder.iterdir():
            if item.is_dir() and not item.name.startswith(("_", ".")):
                walk(item, f"{prefix}{item.name}/")
                continue
            for suffix in _SUFFIXES:
                if item.name.endswith(suffix):
                    names.append(prefix + item.name[: -len(suffix)])
                    break

    walk(resources.files(__name__), "")
    return sorted(names)


def load_split(name: str) -> list[SplitEntry]:
    """Entries of a shipped list, e.g. ``load_split("hypersim_train_filtered")``.

    Raises:
        KeyError: naming the list and the available ones, when no such list is shipped.
    """
    root = resources.files(__name__)
    for suffix in _SUFFIXES:
        item = root.joinpath(*f"{name}{suffix}".split("/"))
        if item.is_file():
            data = item.read_bytes()
            if suffix.endswith(".gz"):
                data = gzip.decompress(data)
            return parse_split_lines(data.decode("utf-8"), f"{name}{suffix}")
    raise KeyError(f"no split list {name!r} in {__name__}; available: {available_splits()}")
