"""Writing and checking shard files and their ``index.json``, shared by every shard writer.

A shard is a plain (uncompressed) tar of samples in the :mod:`~dm_lightning.data.schema`
format. The helpers here make writes safe to interrupt and to repeat:

* :func:`write_shard` writes under a temporary name unique to the process and renames the file
  when it is complete, so a final name never holds a truncated shard, and processes writing
  the same shard at once cannot corrupt each other's file;
* :func:`read_shard_keys` tells whether a shard on disk is complete (a readable tar whose
  samples all have every schema member), so a rerun can skip it;
* :func:`update_index` rewrites ``index.json`` atomically, under a lock on its folder;
  :func:`indexed_sample_count` and :func:`indexed_shard_sizes` read the sample counts back.

Members are named ``<key>.<member>`` (webdataset's convention), sorted within a sample, with
USTAR headers, a fixed mtime, mode 0444 and owner "bigdata", so identical samples give
byte-identical shards. Reading shards: :mod:`dm_lightning.data.shard_reader`; shard patterns
and URLs: :mod:`dm_lightning.data.shard_paths`.

This module avoids importing torch (which webdataset pulls in), so the converters and the
inspection tool start fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from dm_lightning import atomic
from dm_lightning.data.schema import SCHEMA_KEYS
from dm_lightning.data.shard_paths import is_shard_url

TAR_MTIME = 1_700_000_000.0
"""Member mtime of every shard, so that identical samples give byte-identical files."""


def shard_names(split: str, num_samples: int, samples_per_shard: int) -> list[str]:
    """File names ``<split>-000000.tar``, ... of a split with ``num_samples`` samples."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    count = -(-num_samples // samples_per_shard)
    return [f"{split}-{i:06d}.tar" for i in range(count)]


def read_shard_keys(path: str | os.PathLike) -> set[str] | None:
    """Sample keys of a complete shard.

    Returns:
        The set of keys (empty for an empty tar) when ``path`` is a readable tar whose members
        are exactly the :data:`~dm_lightning.data.schema.SCHEMA_KEYS` members of each key;
        ``None`` when the file is missing, unreadable, or holds other or incomplete members.
    """
    if not os.path.exists(path):
        return None
    try:
        with tarfile.open(path) as tar:
            names = tar.getnames()
    except (OSError, tarfile.TarError):
        return None
    members: dict[str, set[str]] = {}
    for name in names:
        key, _, member = name.partition(".")
        members.setdefault(key, set()).add(member)
    if any(found != set(SCHEMA_KEYS) for found in members.values()):
        return None
    if len(names) != len(members) * len(SCHEMA_KEYS):  # a member written twice
        return None
    return set(members)


def write_shard(
    path: str | os.PathLike, samples: Iterable[dict[str, Any]], mtime: float = TAR_MTIME
) -> int:
    """Write samples (dicts from :func:`~dm_lightning.data.schema.encode_sample`) as a tar.

    The file is written under a temporary name (:mod:`dm_lightning.atomic`) and renamed to ``path``
    once complete and synced. If ``samples`` raises (or the process is interrupted), the temporary
    file is removed and ``path`` is left as it was. If ``samples`` yields nothing, no file is
    created (and an existing ``path`` is left as it was).

    Returns:
        The number of samples written.
    """
    count = 0
    with atomic.replaced_on_success(path) as tmp:
        with open(tmp, "wb") as stream:
            # USTAR: no per-member PAX headers (webdataset.TarWriter writes PAX for its float
            # mtime); every webdataset and tar reader accepts both.
            with tarfile.open(fileobj=stream, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
                for sample in samples:
                    _add_sample(tar, sample, mtime)
                    count += 1
            atomic.synced(stream)
        if not count:
            tmp.unlink()  # nothing written: no file, an existing one left as it was
    return count


def _add_sample(tar: tarfile.TarFile, sample: dict[str, Any], mtime: float) -> None:
    key = sample["__key__"]
    for member in sorted(k for k in sample if not k.startswith("_")):
        data = sample[member]
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"sample {key}: member {member} is {type(data).__name__}, not bytes")
        info = tarfile.TarInfo(f"{key}.{member}")
        info.size = len(data)
        info.mtime = mtime
        info.mode = 0o444
        info.uname = info.gname = "bigdata"
        tar.addfile(info, io.BytesIO(data))


def indexed_sample_count(urls: Sequence[str]) -> int | None:
    """Samples in ``urls`` according to the ``index.json`` written with them (looked up in
    each shard's folder and its parent), or None if any shard is not in an index or is a
    URL (:func:`is_shard_url`: nothing local to look in)."""
    sizes = indexed_shard_sizes(urls)
    return None if sizes is None else sum(sizes)


def indexed_shard_sizes(urls: Sequence[str]) -> list[int] | None:
    """Per-shard sample counts of ``urls`` (same order) from their ``index.json`` files, each
    index read once; None as in :func:`indexed_sample_count`."""
    sizes = []
    indexes: dict[str, dict[str, int]] = {}
    for url in urls:
        if is_shard_url(url):
            return None
        path = os.path.abspath(url)
        count = None
        for folder in (os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
            if folder not in indexes:
                indexes[folder] = _shard_sizes(os.path.join(folder, "index.json"))
            count = indexes[folder].get(os.path.relpath(path, folder))
            if count is not None:
                break
        if count is None:
            return None
        sizes.append(count)
    return sizes


def _shard_sizes(index_path: str) -> dict[str, int]:
    """Relative shard path -> sample count of one ``index.json`` ({} if absent/unreadable)."""
    try:
        with open(index_path) as f:
            sources = json.load(f).get("sources", {})
    except (OSError, ValueError):
        return {}
    sizes: dict[str, int] = {}
    for source in sources.values():
        for split in source.get("splits", {}).values():
            sizes.update(zip(split.get("shards", []), split.get("shard_sizes", [])))
    return sizes


def update_index(
    path: str | os.PathLike, update: Callable[[dict[str, Any]], None], label: str
) -> dict[str, Any]:
    """Read-modify-write ``index.json`` atomically.

    ``update`` receives the ``sources`` mapping of the existing index (empty if there is no
    index or it is unreadable) and changes it in place. The folder is locked meanwhile (where
    ``fcntl`` exists), so writers of different sources into one folder keep each other's
    entries.

    Args:
        path: the index file.
        update: edits the ``sources`` mapping.
        label: the index's ``format`` field.

    Returns:
        The index written: ``{"format": label, "sources": {...}}``.
    """
    path = os.fspath(path)
    with _folder_lock(os.path.dirname(os.path.abspath(path))):
        sources: dict[str, Any] = {}
        if os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    sources = dict(json.load(f).get("sources", {}))
            except (OSError, ValueError, AttributeError, TypeError):
                sources = {}  # an unreadable index is rebuilt from what this writer knows
        update(sources)
        index = {"format": label, "sources": sources}
        with atomic.replaced_on_success(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
            f.write("\n")
    return index


@contextlib.contextmanager
def _folder_lock(folder: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, concurrent writers may lose an entry
        yield
        return
    # A lock on the folder itself leaves no lock file behind.
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
