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

import threading

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


class TrainingStopped(DMLightningError, RuntimeError):
    """A guard stopped a run (e.g. too many consecutive non-finite steps) after saving a
    checkpoint; the message says where and why."""

    exit_code = 1


def last_error() -> DMLightningError | None:
    """The most recent :class:`DMLightningError` created in this thread, or None."""
    return getattr(_last, "error", None)


def clear_last_error() -> None:
    _last.error = None
