"""From a split list to shards: the frames of a training set and their conversion.

A :class:`Frame` is one sample to convert: its key, its input files by role and its extra
JSON fields; the per-dataset modules (:mod:`~dm_lightning.data.sources.hypersim`,
:mod:`~dm_lightning.data.sources.vkitti`) turn split-list entries (:func:`read_entries`) into
frames. :func:`convert_frames` locates every input file, hands the frames to the shard engine
(:func:`~dm_lightning.data.sources.engine.write_shards`) with the dataset's loader, and
records the split in ``index.json``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dm_lightning.data.schema import encode_sample
from dm_lightning.data.sources.engine import (
    DEFAULT_PER_SHARD,
    check_unique_keys,
    record_split,
    write_shards,
)
from dm_lightning.data.sources.inputs import Loader, Location, read_input, resolve_inputs
from dm_lightning.data.sources.spec import SourceSpec
from dm_lightning.data.splits import SplitEntry, available_splits, load_split, read_split_file
from dm_lightning.errors import ConfigError, MissingPathError

INDEX_FORMAT = "dm_lightning shards"
"""The ``format`` field of the ``index.json`` the converters write."""

PathsLike = str | os.PathLike | Sequence[str | os.PathLike]
"""One input path or several."""


@dataclass
class Frame:
    """One sample to convert: its key, its input files by role (paths relative to the dataset
    root) and the extra JSON fields of the sample."""

    key: str
    files: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict)


def read_entries(split_list: str | os.PathLike | None, default: str) -> list[SplitEntry]:
    """Entries of a list file (plain or .gz), of a shipped list by name, or of ``default``
    (a shipped list name) when ``split_list`` is None."""
    if split_list is None:
        return load_split(default)
    if os.path.isfile(split_list):
        return read_split_file(split_list)
    name = os.fspath(split_list)
    if name in available_splits():
        return load_split(name)
    raise FileNotFoundError(
        f"split list {name!r} is neither a file nor a shipped list "
        f"({', '.join(available_splits())})"
    )


@dataclass(frozen=True)
class ConversionOptions:
    """How a converter writes one split: the options every ``convert_*`` function takes.

    Attributes:
        split: output split name (shard file names and index entry; Hypersim's PNG layout also
            reads its sub-folder of that name).
        split_list: a list file (plain or .gz) or a shipped list name; None: the source's own
            list for ``split`` (e.g. ``vkitti_train``).
        limit: convert only the first ``limit`` frames of the list; None: all.
        per_shard: frames per shard.
        workers: processes, one shard each; 1 converts in this process.
        progress: tqdm bar on stderr.

    Raises:
        ConfigError: ``limit``, ``per_shard`` or ``workers`` not an integer >= 1.
    """

    split: str = "train"
    split_list: str | os.PathLike | None = None
    limit: int | None = None
    per_shard: int = DEFAULT_PER_SHARD
    workers: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("limit", "per_shard", "workers"):
            value = getattr(self, name)
            if value is None and name == "limit":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")

    def entries(self, default_list: str) -> list[SplitEntry]:
        """The first ``limit`` entries of ``split_list``, else of shipped list
        ``default_list`` (:func:`read_entries`)."""
        return read_entries(self.split_list, default_list)[: self.limit]


DEFAULT_CONVERSION = ConversionOptions()
"""The options' defaults: the ``train`` split from the source's own list, all of it."""


def match_entry(pattern: re.Pattern[str], entry: SplitEntry, expected: str) -> re.Match[str]:
    """The match of ``pattern`` in an entry's RGB path (``ValueError`` quoting ``expected``
    when there is none)."""
    match = pattern.search(entry.rgb)
    if match is None:
        raise ValueError(f"split list entry {entry.rgb!r}: expected an RGB path like {expected}")
    return match


class _Located(NamedTuple):
    """A frame and where its input files are (only the ones found), the engine's item."""

    frame: Frame
    locations: dict[str, Location]

    @property
    def key(self) -> str:
        return self.frame.key


@dataclass(frozen=True)
class _FrameMaker:
    """Reads and encodes one located frame (picklable, for the engine's worker processes)."""

    loader: Loader
    spec: SourceSpec
    split: str

    def __call__(self, item: _Located) -> dict[str, Any]:
        frame = item.frame
        blobs = {role: read_input(item.locations[name]) for role, name in frame.files.items()}
        rgb, depth = self.loader(blobs)
        return encode_sample(
            frame.key,
            rgb,
            depth,
            source=self.spec.label,
            depth_scale=self.spec.depth_scale,
            min_depth=self.spec.min_depth,
            max_depth=self.spec.max_depth,
            extra={"split": self.split, **frame.extra},
        )


def convert_frames(
    frames: Sequence[Frame],
    inputs: PathsLike,
    out_dir: str | os.PathLike,
    spec: SourceSpec,
    loader: Loader,
    options: ConversionOptions = DEFAULT_CONVERSION,
) -> dict[str, Any]:
    """Convert frames into shards ``out_dir/<spec.name>/<split>-NNNNNN.tar`` and index them.

    Shard ``i`` is planned to hold ``frames[i * per_shard : (i + 1) * per_shard]``, minus the
    frames with a missing input file (logged). A shard whose file already holds exactly those
    keys is skipped; others are converted, one worker process per shard, and written atomically
    (an interrupted run leaves no shard under a final name). Frames with an unreadable input are
    logged and left out; their shard is therefore redone on a rerun. A shard left with no
    sample is not written (:func:`~dm_lightning.data.sources.engine.write_shards`).

    ``out_dir/index.json`` then gets (other sources and splits are kept)
    ``sources[<spec.name>] = {"source", "height", "width", "min_depth", "max_depth",
    "depth_scale", "splits": {split: {"shards": [paths relative to out_dir], "num_samples",
    "samples_per_shard", "shard_sizes": [samples per shard]}}}``, listing only non-empty
    shards (:func:`~dm_lightning.data.sources.engine.record_split`).

    Args:
        frames: what to convert (keys unique).
        inputs: folders and/or uncompressed tars, searched in order (:func:`resolve_inputs`).
        out_dir: output root.
        spec: the source's stored form.
        loader: reads one frame (:data:`~dm_lightning.data.sources.inputs.Loader`).
        options: split name, frames per shard, workers, progress (its list and limit have
            already chosen ``frames``).

    Returns:
        Summary: ``source``, ``split``, ``index`` (path), ``frames`` (planned), ``samples``
        (in the split's shards now), ``skipped_frames`` (``frames - samples``), ``shards``
        (paths of non-empty shards), ``written`` / ``skipped`` (shards converted now / already
        complete), ``problems`` (messages of this run, each naming the file) and ``seconds``.
    """
    start = time.perf_counter()
    split = options.split
    check_unique_keys(frame.key for frame in frames)
    roots = as_paths(inputs)
    for root in roots:
        if not os.path.exists(root):
            raise MissingPathError(
                f"input {root} does not exist; expected a {spec.name} dataset folder or an "
                "uncompressed .tar of one"
            )
    found = resolve_inputs(roots, {name for frame in frames for name in frame.files.values()})
    located = [
        _Located(frame, {name: found[name] for name in frame.files.values() if name in found})
        for frame in frames
    ]
    if frames and not any(len(item.locations) == len(item.frame.files) for item in located):
        # Nothing to convert: a wrong folder, layout or split. Checked before anything is
        # written, so no empty shard folder or index.json of no shards is left behind.
        example = next(iter(frames[0].files.values()), "?")
        raise MissingPathError(
            f"none of the {len(frames)} {spec.name} frames of the list has its input files in "
            f"{', '.join(roots)} (e.g. {example} not found): check the input folder, --split "
            "and the layout"
        )
    folder = os.path.join(os.fspath(out_dir), spec.name)
    os.makedirs(folder, exist_ok=True)

    def check(item: _Located) -> str | None:
        missing = [name for name in item.frame.files.values() if name not in item.locations]
        if not missing:
            return None
        return f"{item.key}: missing {', '.join(missing)} (not in {', '.join(roots)})"

    result = write_shards(
        folder,
        split,
        located,
        options.per_shard,
        _FrameMaker(loader, spec, split),
        check=check,
        workers=options.workers,
        progress=options.progress,
        desc=f"{spec.name}/{split}",
        unit="frame",
    )
    index_path = record_split(out_dir, spec, split, result, INDEX_FORMAT)
    return {
        "source": spec.name,
        "split": split,
        "index": index_path,
        "frames": len(frames),
        "samples": result.num_samples,
        "skipped_frames": len(frames) - result.num_samples,
        "shards": result.shards,
        "written": result.written,
        "skipped": result.skipped,
        "problems": result.problems,
        "seconds": time.perf_counter() - start,
    }


def as_paths(inputs: PathsLike) -> list[str]:
    """One path or several -> a list of ``str`` paths."""
    return [os.fspath(p) for p in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)]
