"""A ``fit`` that fails before it trained a step leaves no trace
(:func:`removed_if_start_fails`): the ``version_N`` folder it created goes, and a resumed
run's folder keeps its files as they were."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dm_lightning.training.checkpoint_io import is_local_path
from dm_lightning.training.resumable import ResumableCheckpoint

if TYPE_CHECKING:
    import lightning as L

# What a fit that failed before its first step may have put in a run folder it created.
FAILED_START_FILES = ("config.yaml", "hparams.yaml", "events.out.tfevents.*")


@contextlib.contextmanager
def removed_if_start_fails(trainer: L.Trainer) -> Iterator[None]:
    """Run a ``fit``; if it raises before this process trained a step, remove the run folder
    (and the experiment folder) that this process created, when it holds nothing but what a
    start writes (:data:`FAILED_START_FILES`, empty folders), so a failed start leaves no
    empty ``version_N`` behind. A folder that existed before (a resumed run) keeps every file
    it had; only the TensorBoard event files this process added to it are removed.

    Only a logger with ``root_dir``/``log_dir`` (TensorBoard, CSV) is handled, on global rank
    0; the listing taken before the fit is of ``<save_dir>/<name>``, which resolves no version.
    """
    logger = trainer.logger
    root = getattr(logger, "root_dir", None)
    if root is None or not is_local_path(root):
        yield
        return
    root = Path(root)
    root_existed = root.is_dir()
    before = {entry.name for entry in root.iterdir()} if root_existed else set()
    events = {}  # run folder name -> its event files before the fit
    for name in before:
        if (root / name).is_dir():
            events[name] = {p.name for p in (root / name).glob(FAILED_START_FILES[-1])}
    try:
        yield
    except BaseException:
        if trainer.is_global_zero and _steps_trained(trainer) == 0:
            _clean_failed_start(Path(logger.log_dir), root, root_existed, events)
        raise


def _clean_failed_start(
    run: Path, root: Path, root_existed: bool, events: dict[str, set[str]]
) -> None:
    if run.parent != root or not run.is_dir():
        return  # a sub_dir layout, or nothing was created
    if run.name in events:  # an existing run: only the event files this process added go
        for path in run.glob(FAILED_START_FILES[-1]):
            if path.name not in events[run.name]:
                path.unlink(missing_ok=True)
        return
    files = [p for p in run.rglob("*") if not p.is_dir()]
    if any(not any(f.match(pattern) for pattern in FAILED_START_FILES) for f in files):
        return  # something else is in it: not ours to remove
    shutil.rmtree(run, ignore_errors=True)
    if not root_existed:
        with contextlib.suppress(OSError):  # another run may have started in it meanwhile
            root.rmdir()


def _steps_trained(trainer: L.Trainer) -> int:
    """Optimizer steps this process trained in its ``fit``: as counted by a
    :class:`~dm_lightning.training.resumable.ResumableCheckpoint`, else ``global_step``."""
    for callback in trainer.callbacks:
        if isinstance(callback, ResumableCheckpoint):
            return callback.steps_trained(trainer)
    return trainer.global_step
