"""Where a run lives, and how a resumed run finds its way back there.

A run folder is the logger's ``<save_dir>/<name>/<version>`` (``trainer.log_dir``): TensorBoard
events, ``checkpoints/``, ``export/`` and ``export.json`` sit together in it. Resuming must
continue in the same folder, not open ``version_<n+1>``, so the CLI pins the logger's version
before the trainer is built:

* ``--ckpt_path last``: the most recently written resumable checkpoint under
  ``<save_dir>/<name>``: a run's ``checkpoints/last.ckpt`` or its SLURM requeue checkpoint
  ``hpc_ckpt_<n>.ckpt`` (which is newer after a requeue: SIGUSR1 wrote it at the time
  limit); the path and the version are both set from it. A config that names the logger's
  version resumes that run's, whichever run was written last.
* ``--ckpt_path <run>/checkpoints/<file>.ckpt``: the version of that run folder, when it sits
  under this config's ``<save_dir>/<name>``; a checkpoint from anywhere else starts a new
  folder.
* Under SLURM (a requeued job reruns the same command with the same job id), the version is
  ``slurm-<job id>`` and ``trainer.default_root_dir`` is that folder, where Lightning's
  requeue handler writes ``hpc_ckpt_<n>.ckpt`` and looks for it on restart. A SLURM job that
  resumes an explicit (or ``last``) checkpoint keeps that run's folder as its
  ``default_root_dir``, so its own requeue checkpoints land there too.

A ``fit`` that fails before it trained a step leaves no trace (:func:`removed_if_start_fails`):
the ``version_N`` folder it created goes, and a resumed run's folder keeps its files as they
were.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dm_lightning.errors import MissingPathError
from dm_lightning.output_folders import run_dir
from dm_lightning.training.checkpoint_io import is_local_path
from dm_lightning.training.checkpoints import LAST_CHECKPOINT

# Lightning's SLURM requeue checkpoints, written into trainer.default_root_dir.
HPC_CHECKPOINTS = "hpc_ckpt_*.ckpt"

if TYPE_CHECKING:
    import lightning as L


def logger_init_args(trainer_config: Any) -> Any | None:
    """The ``init_args`` namespace of a single configured logger with ``save_dir``/``name``
    (TensorBoardLogger, CSVLogger), else None."""
    logger = getattr(trainer_config, "logger", None)
    if isinstance(logger, list):
        logger = logger[0] if len(logger) == 1 else None
    args = getattr(logger, "init_args", None)
    if args is None or getattr(args, "save_dir", None) is None:
        return None
    return args


def experiment_folder(args: Any) -> Path:
    """``<save_dir>/<name>`` of a logger's init args."""
    return Path(args.save_dir) / (args.name or "")


def version_folder(version: int | str) -> str:
    """A logger version's run folder name, as TensorBoard's and CSV's loggers name it: an
    integer ``n`` is ``version_n``, a string is itself."""
    return f"version_{version}" if isinstance(version, int) else str(version)


def latest_resumable(experiment: Path, run: str | None = None) -> Path | None:
    """The most recently written resumable checkpoint under ``experiment`` (in run folder
    ``run`` only, when given): a ``<run>/checkpoints/last.ckpt`` or a SLURM
    ``<run>/hpc_ckpt_<n>.ckpt``; None if there is none."""
    runs = "*" if run is None else glob.escape(run)
    found = [
        *experiment.glob(f"{runs}/checkpoints/{LAST_CHECKPOINT}"),
        *experiment.glob(f"{runs}/{HPC_CHECKPOINTS}"),
    ]
    # The newest file wins: a folder's own mtime does not change when it is rewritten.
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def checkpoint_run(path: Path) -> Path:
    """The run folder of a checkpoint: ``<run>/checkpoints/x.ckpt`` or ``<run>/hpc_ckpt_n.ckpt``."""
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def slurm_job_id() -> str | None:
    """The job id SLURM keeps across requeues (array jobs: ``<job>_<task>``), or None."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def pin_run_folder(config: Any) -> None:
    """Resolve ``ckpt_path`` and pin the logger version of a ``fit`` config in place (see the
    module docstring).

    Raises:
        MissingPathError: ``--ckpt_path last`` with no ``last.ckpt`` under the experiment
            folder, or an explicit checkpoint that does not exist.
    """
    args = logger_init_args(config.trainer)
    ckpt = config.ckpt_path
    if ckpt == "last":
        if args is None:
            return  # no logger folder of ours to search: Lightning's own rule applies
        experiment = experiment_folder(args)
        version = getattr(args, "version", None)
        if version is None:
            found, where = latest_resumable(experiment), f"no run under {experiment}/ has"
        else:  # the run the config names, not whichever was written last
            run = version_folder(version)
            found, where = latest_resumable(experiment, run), f"run {experiment / run} has no"
        if found is None:
            raise MissingPathError(
                f"--ckpt_path last: {where} checkpoints/{LAST_CHECKPOINT} or {HPC_CHECKPOINTS}; "
                "start without --ckpt_path, or give a checkpoint file"
            )
        config.ckpt_path = ckpt = str(found)
    if ckpt is not None and ckpt not in ("hpc", "best", "registry"):
        path = Path(ckpt)
        if not path.is_file():
            raise MissingPathError(f"--ckpt_path {ckpt}: no such checkpoint file")
        run = checkpoint_run(path.resolve())
        if args is not None and run.parent == experiment_folder(args).resolve():
            args.version = run.name
            if slurm_job_id() is not None:
                config.trainer.default_root_dir = str(experiment_folder(args) / run.name)
        return
    job = slurm_job_id()
    if job is not None and args is not None and getattr(args, "version", None) is None:
        args.version = f"slurm-{job}"
        config.trainer.default_root_dir = str(experiment_folder(args) / args.version)


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
    from dm_lightning.training.resumable import ResumableCheckpoint

    for callback in trainer.callbacks:
        if isinstance(callback, ResumableCheckpoint):
            return callback.steps_trained(trainer)
    return trainer.global_step


def resumable_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where a resumable checkpoint goes: ``last.ckpt`` in the folder of the first
    ``ModelCheckpoint`` that keeps one (so ``--ckpt_path last`` finds it), else in
    ``<run>/checkpoints/``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    keepers = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    keepers.sort(key=lambda c: not c.save_last)
    if keepers and keepers[0].dirpath:
        return Path(keepers[0].dirpath) / LAST_CHECKPOINT
    return run_dir(trainer) / "checkpoints" / LAST_CHECKPOINT
