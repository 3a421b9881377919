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

A ``fit`` that fails before it trained a step leaves no trace:
:func:`~dm_lightning.training.failed_start.removed_if_start_fails`.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dm_lightning.errors import MissingPathError
from dm_lightning.output_folders import run_dir
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
