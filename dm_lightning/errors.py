"""Errors a user can act on.

Every error that comes from a user's input (a config value, a file, a shard, a checkpoint)
derives from :class:`DMLightningError`, and its message names the file, key or value and
what was expected. The ``dm-lightning`` command prints such a message alone, on one line
prefixed ``dm-lightning: error:``, and exits with status 2 (a start-up problem) or 1 (a run
stopped by a guard), instead of a traceback.

The classes also derive from the matching built-in (``ValueError``, ``FileNotFoundError``,
``RuntimeError``), so callers that catch those keep working.

Why a registry: jsonargparse instantiates the model and data classes itself, and when one of
them raises, it re-raises a "Does not validate against any of the Union subtypes" error that
keeps only the text of ours and the whole namespace. :func:`last_error` returns the most
recent :class:`DMLightningError` created in this process, so the CLI can print it instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterator

_last = threading.local()


class DMLightningError(Exception):
    """Base of the errors whose message is all a user needs to see."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        _last.error = self


class ConfigError(DMLightningError, ValueError):
    """A config value, name or combination that cannot work (names the key and the value)."""


class MissingPathError(DMLightningError, FileNotFoundError):
    """A file or folder the config points at does not exist or lacks a required part."""


class DataError(DMLightningError, RuntimeError):
    """Data that cannot be trained or evaluated on: empty or vanished shards, nothing
    decodable, too many bad samples, an eval split with no image (names source and shard)."""

    exit_code = 1


class StartupDataError(DataError):
    """A :class:`DataError` found at start-up, before any step (e.g. a source whose first
    shards are empty or unreadable, or of another schema version): a start-up error a user
    can fix, so exit status 2."""

    exit_code = 2


class TrainingStopped(DMLightningError, RuntimeError):
    """A guard stopped a run (e.g. too many consecutive non-finite steps) after saving a
    checkpoint; the message says where and why."""

    exit_code = 1


class DiskFullError(DMLightningError, OSError):
    """A save or export ran out of disk space or quota (ENOSPC, EDQUOT); the message names
    the file and says what on disk is intact (see :func:`disk_full_as_error`)."""

    exit_code = 1


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` or one in its cause/context chain is an ``OSError`` with errno
    ENOSPC or EDQUOT, or a torch writer error quoting that ``strerror``."""
    texts = tuple(os.strerror(code) for code in _DISK_FULL)
    while error is not None:
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            return True
        if isinstance(error, RuntimeError) and any(t in str(error) for t in texts):
            return True
        error = error.__cause__ or error.__context__
    return False


@contextlib.contextmanager
def disk_full_as_error(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn a full disk (:func:`is_disk_full`) while writing ``what`` at ``path`` through a
    temporary file and a rename into a one-line :class:`DiskFullError`; what existed at
    ``path`` before is intact then (the rename never happened)."""
    existed = os.path.exists(path)
    try:
        yield
    except (OSError, RuntimeError) as err:
        if not is_disk_full(err):
            raise
        kept = f"the previous {what} there is intact" if existed else "nothing was written there"
        raise DiskFullError(
            f"the disk is full (no space or quota left) while writing {what} {path}; {kept}. "
            "Free some space, then run the same command again (fit: add --ckpt_path last)"
        ) from err


def last_error() -> DMLightningError | None:
    """The most recent :class:`DMLightningError` created in this thread, or None."""
    return getattr(_last, "error", None)


def clear_last_error() -> None:
    _last.error = None


class InputFileError(DMLightningError, ValueError):
    """An input file a user named (a prediction, a reference depth map, points, a photo)
    cannot be used; the message names the file (and the CSV row) and what was expected."""
