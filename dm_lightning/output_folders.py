"""Where a run's outputs go: its log folder and the folders callbacks write into, checked
writable before any work (used by training's callbacks and evaluation's report alike)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from dm_lightning.errors import ConfigError

if TYPE_CHECKING:
    import lightning as L


def run_dir(trainer: L.Trainer) -> Path:
    """The run's log folder (``trainer.log_dir``), falling back to ``default_root_dir``.

    Under DDP ``trainer.log_dir`` is a collective: call it on every rank (callbacks resolve
    their folders in ``setup``), never from rank 0 alone.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def output_folder(trainer: L.Trainer, configured: str | None, default_name: str) -> Path:
    """A callback's output folder: the configured one, else ``<run dir>/<default_name>``."""
    return Path(configured) if configured else run_dir(trainer) / default_name


def check_writable_folder(folder: Path, what: str) -> None:
    """Create ``folder`` and write and remove a probe file in it, or raise :class:`ConfigError`
    naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"{what} {folder} cannot be created: {err.strerror or err}"
            + (" (a file of that name exists)" if folder.is_file() else "")
        ) from err
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dm_lightning_probe_"):
            pass
    except OSError as err:
        raise ConfigError(f"{what} {folder} is not writable: {err.strerror or err}") from err
