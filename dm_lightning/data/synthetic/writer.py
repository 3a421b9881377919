"""Writing the synthetic dataset as shards: :func:`write_split` (one source, one split) and
:func:`generate` (every split of every source, plus ``index.json``).

The shards are written by the converters' engine
(:func:`~dm_lightning.data.sources.engine.write_shards`: resumable, atomic, one task per
shard) and follow :mod:`dm_lightning.data.schema`; each sample is one scene of
:func:`~dm_lightning.data.synthetic.scenes.render_scene`, seeded by :func:`sample_seed`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from dm_lightning.data.schema import encode_sample
from dm_lightning.data.shards import update_index
from dm_lightning.data.sources.engine import (
    SplitResult,
    source_entry,
    split_entry,
    write_shards,
)
from dm_lightning.data.synthetic.scenes import SOURCES, render_scene

SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
MAX_SAMPLES_PER_SPLIT = 100_000
"""Seeds of different splits are ``MAX_SAMPLES_PER_SPLIT`` apart, so a split may not exceed it."""

INDEX_FORMAT = "dm_lightning synthetic shards"
"""The ``format`` field of the ``index.json`` written by :func:`generate`."""


def sample_seed(base_seed: int, split: str, index: int) -> int:
    """Seed of sample ``index`` of ``split``; distinct for every (base_seed >= 0, split, index)
    with ``0 <= index < MAX_SAMPLES_PER_SPLIT``, so splits never share a scene."""
    if split not in SPLIT_IDS:
        raise ValueError(f"unknown split {split!r}, expected one of {sorted(SPLIT_IDS)}")
    if not 0 <= index < MAX_SAMPLES_PER_SPLIT:
        raise ValueError(f"sample index {index} outside [0, {MAX_SAMPLES_PER_SPLIT})")
    if base_seed < 0:
        raise ValueError(f"base_seed must be >= 0, got {base_seed}")
    return base_seed * 1_000_003 + SPLIT_IDS[split] * MAX_SAMPLES_PER_SPLIT + index


class _Item(NamedTuple):
    """One sample to render: its key and its index in the split."""

    key: str
    index: int


@dataclass(frozen=True)
class _Renderer:
    """Renders and encodes one sample of a split (the engine's ``make``)."""

    source: str
    split: str
    base_seed: int
    height: int | None
    width: int | None

    def __call__(self, item: _Item) -> dict[str, Any]:
        seed = sample_seed(self.base_seed, self.split, item.index)
        rgb, depth, meta = render_scene(self.source, seed, self.height, self.width)
        spec = SOURCES[self.source]
        return encode_sample(
            item.key,
            rgb,
            depth,
            source=spec.label,
            depth_scale=spec.depth_scale,
            min_depth=spec.min_depth,
            max_depth=spec.max_depth,
            extra={"split": self.split, **meta},
        )


def write_split(
    out_dir: str | os.PathLike,
    source: str,
    split: str,
    num_samples: int,
    samples_per_shard: int,
    base_seed: int,
    height: int | None = None,
    width: int | None = None,
    progress: bool = False,
) -> list[str]:
    """Render and write one split of one source as tar shards.

    Writes ``out_dir/<source>/<split>-NNNNNN.tar`` holding samples keyed
    ``<source>-<split>-NNNNNN`` (global sample index, no dots) in the
    :mod:`~dm_lightning.data.schema` format. Each shard is written under a temporary
    name unique to the process (``.<name>.<pid>-<random>.tmp``, :mod:`dm_lightning.atomic`)
    and renamed when complete, so an interrupted run never leaves a truncated shard under a
    final name, and processes that generate the same folder at once (e.g. several ranks)
    cannot corrupt each other's shards (they write byte-identical files).
    A shard that already exists with exactly the expected sample keys is skipped; one with
    other keys (e.g. written with another ``num_samples`` or
    ``samples_per_shard``) or an unreadable one is rewritten. Existing shards are not checked
    against ``base_seed`` or the image size: delete the folder to regenerate with others.
    Only a killed process (SIGKILL, power loss) leaves a ``*.tmp`` file behind; it is safe to
    delete when no generator is running.

    Args:
        out_dir: root output folder (created if missing).
        source: ``"indoor"`` or ``"outdoor"``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_samples: samples in the split (``< MAX_SAMPLES_PER_SPLIT``).
        samples_per_shard: samples per shard; the last shard may hold fewer.
        base_seed: dataset seed; sample seeds come from :func:`sample_seed`.
        height, width: image size in pixels, ``None`` = the source's default.
        progress: show a tqdm bar on stderr.

    Returns:
        Paths of all shards of the split (written now or already present), in order.
    """
    renderer = _Renderer(source, split, base_seed, height, width)
    return _write(out_dir, renderer, num_samples, samples_per_shard, progress).shards


def _write(
    out_dir: str | os.PathLike,
    renderer: _Renderer,
    num_samples: int,
    samples_per_shard: int,
    progress: bool,
) -> SplitResult:
    """:func:`write_split` of ``renderer``'s source and split, returning the engine's result
    (shards written now, sizes)."""
    source, split = renderer.source, renderer.split
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}, expected one of {sorted(SOURCES)}")
    sample_seed(renderer.base_seed, split, 0)  # validates split and base_seed early
    if num_samples > MAX_SAMPLES_PER_SPLIT:
        raise ValueError(f"at most {MAX_SAMPLES_PER_SPLIT} samples per split, got {num_samples}")
    items = [_Item(f"{source}-{split}-{index:06d}", index) for index in range(num_samples)]
    return write_shards(
        os.path.join(os.fspath(out_dir), source),
        split,
        items,
        samples_per_shard,
        renderer,
        progress=progress,
        desc=f"{source}/{split}",
        unit="sample",
        leave=False,
    )


def generate(
    out_dir: str | os.PathLike,
    counts: dict[str, int] | None = None,
    sources: Iterable[str] = ("indoor", "outdoor"),
    samples_per_shard: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the synthetic dataset: every split of every source, plus ``out_dir/index.json``.

    Args:
        out_dir: root folder; shards go to ``out_dir/<source>/<split>-NNNNNN.tar``.
        counts: samples per split, default ``{"train": 256, "val": 32, "test": 32}``.
        sources: subset of :data:`~dm_lightning.data.synthetic.scenes.SOURCES`.
        samples_per_shard: samples per shard (the last shard of a split may hold fewer).
        seed: dataset seed (>= 0); a different seed gives a disjoint set of scenes.
        progress: show tqdm bars on stderr.

    Returns:
        Summary: ``out_dir``, ``index`` (path of index.json), ``seconds`` (wall time) and
        ``sources`` mapping source -> split -> ``{"shards": [paths], "num_samples",
        "written", "skipped"}`` (numbers of shards written now / already complete, see
        :func:`write_split`).

    ``index.json`` maps ``sources`` -> source -> ``{"source", "height", "width", "min_depth",
    "max_depth", "depth_scale", "seed", "splits": {split: {"shards": [names relative to
    out_dir], "num_samples", "samples_per_shard", "shard_sizes": [samples per shard]}}}``
    (:func:`~dm_lightning.data.sources.engine.source_entry`). The entries of the sources
    written are replaced; those of other sources already in an existing index.json are kept.
    """
    counts = {"train": 256, "val": 32, "test": 32} if counts is None else dict(counts)
    sources = list(sources)
    for source in sources:
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}, expected one of {sorted(SOURCES)}")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    summary: dict[str, Any] = {"out_dir": out_dir, "sources": {}}
    index_entries: dict[str, Any] = {}
    for source in sources:
        summary["sources"][source] = {}
        splits: dict[str, Any] = {}
        for split, num in counts.items():
            renderer = _Renderer(source, split, seed, height=None, width=None)
            result = _write(out_dir, renderer, num, samples_per_shard, progress)
            summary["sources"][source][split] = {
                "shards": result.shards,
                "num_samples": num,
                "written": result.written,
                "skipped": result.skipped,
            }
            splits[split] = split_entry(out_dir, result)
        index_entries[source] = source_entry(SOURCES[source], splits, seed=seed)
    index_path = os.path.join(out_dir, "index.json")
    update_index(index_path, lambda known: known.update(index_entries), INDEX_FORMAT)
    summary["index"] = index_path
    summary["seconds"] = time.perf_counter() - start
    return summary
