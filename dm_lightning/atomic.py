"""Atomic writes, the one rule every writer follows (shards, checkpoints, model exports).

A file or folder is written under a temporary sibling name that no other process or call uses
(``.<name>.<pid>-<random>.tmp``) and renamed over the target only when complete, so a kill at
any moment leaves the previous complete target or the new one, never half of one; at worst a
hidden ``*.tmp`` (or ``*.old``) sibling stays behind, safe to delete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def temporary_sibling(target: str | os.PathLike, suffix: str = "tmp") -> Path:
    """``.<name>.<pid>-<random>.<suffix>`` beside ``target``: unique to this process and call."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.{suffix}")


def synced(stream: BinaryIO) -> None:
    """Flush ``stream`` and fsync its file: on disk before the rename makes it the target."""
    stream.flush()
    os.fsync(stream.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def replaced_on_success(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling path of ``target`` for the block to write (a file or a folder).

    When the block succeeds, what it wrote replaces ``target`` by rename (a folder's previous
    version is moved aside first and removed after, since a rename cannot replace a non-empty
    folder); when it wrote nothing, ``target`` is left as it was. When the block fails, the
    temporary path is removed and ``target`` is untouched.
    """
    target = Path(target)
    tmp = temporary_sibling(target)
    old = temporary_sibling(target, "old")
    try:
        yield tmp
        if tmp.exists() or tmp.is_symlink():
            if tmp.is_dir() and (target.exists() or target.is_symlink()):
                os.replace(target, old)
            os.replace(tmp, target)
    finally:
        _remove(tmp)
        _remove(old)
