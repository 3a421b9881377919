"""Checkpoint files written straight to disk.

Lightning's ``TorchCheckpointIO`` (2.6) serialises a checkpoint into an in-memory buffer and
then writes the buffer, so saving needs host RAM for the whole file, twice over while the
buffer is copied out: at SD-2 size a stage-1 ``last.ckpt`` is about 10.5 GB, i.e. some 21 GB of
RAM on rank 0 at every save (it killed a 24 GB machine). :class:`StreamingCheckpointIO` lets
``torch.save`` stream into a temporary file beside the target and renames it into place: the
same atomicity (a kill leaves the old file or the new one, never half of one), no buffer.
Object-store URLs (``s3://``...) keep Lightning's path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dm_lightning import atomic
from dm_lightning.errors import disk_full_as_error


def is_local_path(path: str | os.PathLike) -> bool:
    """A plain file-system path (no ``scheme://`` URL)."""
    text = os.fspath(path)
    return "://" not in text or text.startswith("file://")


@contextlib.contextmanager
def replaced_on_success(path: str | os.PathLike) -> Iterator[str]:
    """A temporary sibling path of the local file ``path`` to write; when the block succeeds
    it replaces ``path`` by rename, when it fails it is removed and ``path`` is untouched
    (whatever checkpoint IO wrote it). An object-store URL is yielded as it is."""
    if not is_local_path(path):
        yield os.fspath(path)
        return
    with atomic.replaced_on_success(os.fspath(path).removeprefix("file://")) as tmp:
        yield str(tmp)


class StreamingCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves stream to disk instead of through RAM (used by
    every ``dm-lightning`` command unless ``--trainer.plugins`` names another)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None or not is_local_path(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(os.fspath(path).removeprefix("file://"))
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic.replaced_on_success(target) as tmp:
            with disk_full_as_error(target, "checkpoint"), open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                atomic.synced(f)  # on disk before it replaces the previous checkpoint
