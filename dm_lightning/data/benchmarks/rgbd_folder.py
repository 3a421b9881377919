"""User RGB-D folders (or tars) read as evaluation sets: pairs matched by ``{key}`` patterns."""

from __future__ import annotations

import math
import os
import re
from typing import Any

from dm_lightning.data.benchmarks.base import DepthPairDataset, ListEntry, sample_key
from dm_lightning.data.benchmarks.decoders import DEPTH_DECODERS, DepthDecoder, ScaledDepthDecoder
from dm_lightning.data.store import FileStore


class RGBDFolder(DepthPairDataset):
    """RGB-D pairs of a user's folder (or tar of it), matched by a ``{key}`` in two patterns.

    ``rgb_pattern`` and ``depth_pattern`` are paths relative to ``root`` with one ``{key}``,
    which matches any non-empty text, ``/`` included; every file matching ``rgb_pattern`` is a
    sample and its depth is ``depth_pattern`` with the same key. Examples:
    ``color/{key}.jpg`` + ``depth/{key}.png`` (Redwood, ScanNet), ``{key}/color.png`` +
    ``{key}/depth.png`` (one folder per frame).

    Depth is decoded either as ``raw * depth_scale`` metres with ``raw == invalid_value``
    invalid (integer images, e.g. 16-bit PNG), or by ``decode``: a :data:`DepthDecoder` or the
    name of one in :data:`DEPTH_DECODERS` (``"tum"``, ``"sun_rgbd"``, ``"nyu_raw"``,
    ``"redwood"``) for other encodings. Give exactly one of ``depth_scale`` and ``decode``.

    Args:
        root: folder or tar archive.
        rgb_pattern: RGB path pattern with ``{key}``.
        depth_pattern: depth path pattern with ``{key}``.
        depth_scale: metres per raw unit (1e-3 for millimetre PNGs).
        invalid_value: raw value meaning "no measurement" (with ``depth_scale``).
        min_depth: valid depths are > this (metres, >= 0).
        max_depth: valid depths are < this (metres, may be inf).
        decode: custom decoder (file bytes -> (H, W) metres, 0/non-finite invalid) or its name.
        name: the ``source`` of the samples.
        processing_res: long edge to run the network at (None: native).

    Raises:
        ValueError: bad patterns, both or neither of ``depth_scale``/``decode``, unknown decoder.
        FileNotFoundError: no RGB matches, or an RGB file has no depth counterpart (names it).
    """

    layout = ""

    def __init__(
        self,
        root: str | os.PathLike,
        rgb_pattern: str,
        depth_pattern: str,
        depth_scale: float | None = None,
        invalid_value: int | None = 0,
        min_depth: float = 0.0,
        max_depth: float = math.inf,
        decode: str | DepthDecoder | None = None,
        name: str = "rgbd",
        processing_res: int | None = None,
    ) -> None:
        if (depth_scale is None) == (decode is None):
            raise ValueError(
                "RGBDFolder: give exactly one of depth_scale (metres per raw unit) and decode "
                f"(a function or one of {sorted(DEPTH_DECODERS)}); got depth_scale="
                f"{depth_scale!r}, decode={decode!r}"
            )
        if isinstance(decode, str):
            if decode not in DEPTH_DECODERS:
                raise ValueError(
                    f"unknown depth decoder {decode!r}; known: {', '.join(sorted(DEPTH_DECODERS))}"
                )
            decode = DEPTH_DECODERS[decode]
        if not 0 <= min_depth < max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        self.depth_decoder = decode or ScaledDepthDecoder(depth_scale, invalid_value)
        self.name, self.processing_res = name, processing_res
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.layout = f"{rgb_pattern} with a matching {depth_pattern}"
        rgb_regex = _key_pattern(rgb_pattern)
        _key_pattern(depth_pattern)  # validates it
        store = FileStore(root, layout=self.layout)
        names = store.names()
        matches = [m for m in map(rgb_regex.fullmatch, names) if m]
        if not matches and store.prefix:  # a tar holding the folder itself: look inside it
            stripped = [n[len(store.prefix) :] for n in names if n.startswith(store.prefix)]
            matches = [m for m in map(rgb_regex.fullmatch, stripped) if m]
        entries = []
        for match in matches:
            rel, key = match.string, match.group("key")
            depth_rel = depth_pattern.replace("{key}", key)
            if not store.exists(depth_rel):
                raise FileNotFoundError(
                    f"{store.describe(rel)} has no depth file: {store.describe(depth_rel)} "
                    f"(pattern {depth_pattern!r}) not found"
                )
            entries.append(ListEntry(rel, depth_rel, (key,)))
        if not entries:
            raise FileNotFoundError(f"no file under {store.root} matches {rgb_pattern!r}")
        super().__init__(store, entries)

    def entry_key(self, entry: ListEntry) -> str:
        return sample_key(entry.extra[0])

    def settings(self) -> dict[str, Any]:
        """:meth:`DepthPairDataset.settings` plus ``layout`` (the two patterns) and
        ``decoder`` (the depth decoding)."""
        decoder = getattr(self.depth_decoder, "__name__", None) or repr(self.depth_decoder)
        return {**super().settings(), "layout": self.layout, "decoder": decoder}


def _key_pattern(pattern: str) -> re.Pattern[str]:
    if pattern.count("{key}") != 1:
        raise ValueError(f"pattern {pattern!r} must contain '{{key}}' exactly once")
    before, after = pattern.split("{key}")
    return re.compile(re.escape(before) + "(?P<key>.+)" + re.escape(after))
