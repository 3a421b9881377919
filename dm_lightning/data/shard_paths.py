"""Shard lists of the configs: brace patterns, globs and URLs read through a command
(:func:`expand_shard_patterns`, :func:`shard_url_scheme`, :func:`is_shard_url`).

This module avoids importing torch (which webdataset pulls in) until a URL is met, so the
converters and the inspection tool start fast.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence

from dm_lightning.errors import ConfigError, MissingPathError

# "scheme:" then "//" or not; a one-letter scheme is a Windows drive, not a URL.
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):(//)?")


def shard_url_scheme(pattern: str) -> str | None:
    """The scheme of a shard URL that webdataset opens by a command: ``pipe`` for
    ``pipe:CMD``, ``http`` for ``http://...``; None for a local path (``file://`` URLs
    included, handled as paths).

    Raises:
        ConfigError: a ``scheme://`` URL that webdataset's ``gopen`` does not open (e.g.
            ``s3://``), with the ``pipe:`` way of reading it.
    """
    match = _URL_SCHEME.match(pattern)
    if match is None:
        return None
    scheme = match.group(1).lower()
    if scheme == "file" or (scheme != "pipe" and not match.group(2)):
        return None
    from webdataset.gopen import gopen_schemes  # here: webdataset imports torch

    if scheme not in gopen_schemes:
        others = sorted(s for s in gopen_schemes if s != "pipe" and not s.startswith("_"))
        opened = ", ".join(["pipe:CMD", *(f"{s}://" for s in others)])
        if scheme == "s3":
            example = f"pipe:aws s3 cp {pattern} -"
        else:
            example = f"pipe:<a command that writes {pattern} to stdout>"
        raise ConfigError(
            f"webdataset opens no {scheme}:// URLs (it opens {opened}): read such shards "
            f"through a command, e.g. {example!r}"
        )
    return scheme


def expand_shard_patterns(patterns: str | Sequence[str], key: str = "shards") -> list[str]:
    """Shards of brace patterns (``train-{000000..000009}.tar``) and globs, in order (each
    glob sorted), without duplicates.

    Local patterns give the existing files they match. A URL that webdataset opens through
    a command (``pipe:aws s3 cp s3://bucket/train-000000.tar -``, ``https://...``; see
    :func:`shard_url_scheme`) is brace-expanded and kept as written, in order: it is neither
    globbed nor checked for existence (only reading it tells).

    Args:
        patterns: one pattern or several.
        key: the config key the patterns come from, named in the error (e.g.
            ``data.train[hypersim].shards``).

    Raises:
        MissingPathError: (a ``FileNotFoundError``) naming the key and the local pattern that
            matches no existing file.
        ConfigError: naming the key and a URL scheme that webdataset does not open.
    """
    from braceexpand import braceexpand

    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    found: dict[str, None] = {}
    for pattern in patterns:
        try:
            remote = shard_url_scheme(pattern) is not None
        except ConfigError as err:
            raise ConfigError(f"{key}: {pattern!r}: {err}") from None
        if remote:
            found.update(dict.fromkeys(braceexpand(pattern)))
            continue
        matches = []
        for part in braceexpand(_local_path(pattern)):
            if glob.has_magic(part):
                matches.extend(sorted(glob.glob(part)))
            elif os.path.isfile(part):
                matches.append(part)
        if not matches:
            raise MissingPathError(f"{key}: no shard files match {pattern!r}")
        found.update(dict.fromkeys(matches))
    return list(found)


def _local_path(pattern: str) -> str:
    """``pattern`` without a ``file://`` prefix."""
    if pattern.lower().startswith("file:"):
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        return url2pathname(urlparse(pattern).path)
    return pattern


def is_shard_url(url: str) -> bool:
    """A shard read through a command (``pipe:``, ``http(s)://``, ...), not a local file."""
    try:
        return shard_url_scheme(url) is not None
    except ConfigError:
        return True
