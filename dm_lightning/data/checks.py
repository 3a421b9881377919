"""Config and start-up checks of the data layer, shared by the DataModule and the streams.

Config values are checked when the DataModule and its streams are built
(:func:`check_batch_size`, :func:`check_probabilities`, :func:`check_bad_fraction`; each raises
a :class:`~dm_lightning.errors.ConfigError` naming the config key), and shards before any step
(:func:`first_sample_meta`: the first readable sample of a source or split has this
dm_lightning's schema version).
"""

from __future__ import annotations

import contextlib
import math
from numbers import Integral
from typing import Any

from dm_lightning.data.schema import CorruptSampleError, SchemaVersionError, decode_meta
from dm_lightning.data.shard_paths import is_shard_url
from dm_lightning.data.shard_reader import ShardReadError, iter_shard
from dm_lightning.errors import ConfigError, StartupDataError

FIRST_SAMPLE_SHARDS = 4
"""Shards :func:`first_sample_meta` looks through for a source's first readable sample."""


def check_batch_size(value: Any, what: str) -> None:
    """Raise :class:`~dm_lightning.errors.ConfigError` unless ``value`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ConfigError(f"{what} must be an integer >= 1, got {value!r}")


def check_probabilities(
    names: list[str],
    probabilities: list[float],
    key: str = "data.train",
    allow_zero_sum: bool = False,
) -> None:
    """Raise :class:`~dm_lightning.errors.ConfigError` unless every mixing probability is a
    finite number >= 0 and (unless ``allow_zero_sum``) their sum is positive; ``key`` is the
    config key named in the message."""
    for name, p in zip(names, probabilities):
        number = isinstance(p, (int, float)) and not isinstance(p, bool)
        if not (number and math.isfinite(p) and p >= 0):
            raise ConfigError(f"{key}[{name}].probability must be a finite number >= 0, got {p!r}")
    if not allow_zero_sum and not sum(probabilities) > 0:
        raise ConfigError(
            f"{key}: the probabilities {dict(zip(names, probabilities))} sum to "
            f"{sum(probabilities)!r}; at least one source needs a probability > 0"
        )


def check_bad_fraction(value: Any, what: str) -> None:
    """Raise :class:`~dm_lightning.errors.ConfigError` unless ``value`` is in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{what} must be a fraction in [0, 1] (1 = never stop), got {value!r}")


def first_sample_meta(key: str, urls: list[str]) -> dict[str, Any]:
    """The checked JSON of the first sample with a readable one among the first
    :data:`FIRST_SAMPLE_SHARDS` shards of ``urls``; ``key`` (e.g. ``data.train[hypersim]``)
    is named in errors.

    Works on every shard :func:`~dm_lightning.data.shard_paths.expand_shard_patterns` lists:
    local files and URLs read through a command (``pipe:CMD``, ``http(s)://`` through curl).
    A shard is read only up to its first good sample; a URL's command is then stopped.

    Raises:
        StartupDataError: (exit status 2) shards of another schema version, or no readable
            sample in those shards (naming the key, the shards and why; for URLs whose
            command failed, the command and its exit status).
    """
    problems: list[str] = []
    looked = urls[:FIRST_SAMPLE_SHARDS]
    failed_urls = 0
    for url in looked:
        read = 0
        try:
            with contextlib.closing(iter_shard(url, _raise)) as samples:
                for raw in samples:
                    read += 1
                    try:
                        meta = decode_meta(raw)
                    except SchemaVersionError as err:
                        raise StartupDataError(f"{key}: {err}") from err
                    except CorruptSampleError as err:
                        problems.append(str(err))
                        continue
                    return meta
        except (ShardReadError, CorruptSampleError) as err:  # unreadable; duplicate member
            problems.append(str(err))
            failed_urls += isinstance(err, ShardReadError) and is_shard_url(url)
            continue
        if read == 0:
            problems.append(f"shard {url} holds no sample (an empty tar)")
    shown = "; ".join(problems[:3])
    if failed_urls == len(looked):
        raise StartupDataError(
            f"{key}: cannot read its first {len(looked)} shard(s) {looked}: {shown}. A "
            "pipe:CMD shard is the output of the shell command CMD (http(s):// ones are read "
            "with curl): run the command by hand (`CMD | tar t`) to see why it fails"
        )
    raise StartupDataError(
        f"{key}: no sample with a readable JSON in its first {len(looked)} shard(s) "
        f"{looked}: {shown}. Expected shards written by this "
        "dm_lightning's converters (tools/inspect_shards.py shows what they hold)"
    )


def _raise(error: Exception) -> None:
    """:func:`~dm_lightning.data.shard_reader.iter_shard` handler: a shard's read errors raised as
    :class:`~dm_lightning.data.shard_reader.ShardReadError` (its message says what failed)."""
    raise error
