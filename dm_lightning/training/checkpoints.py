"""Lightning checkpoints of the stage tasks: what they record, where the resumable one goes,
how they are read safely, and which stage may resume from which.

Every checkpoint carries a ``dm_lightning`` entry: the task class (``Stage1``, ``Stage2``)
and the non-finite guard's counters. ``--ckpt_path`` resumes the same stage only; stage 2
starts from the stage-1 *export* through ``model_path`` (the checkpoint would restore stage
1's optimizer, step counter and hyper-parameters, and its keys do not fit stage 2).
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dm_lightning.errors import ConfigError

if TYPE_CHECKING:
    import lightning as L

CHECKPOINT_RECORD = "dm_lightning"
LAST_CHECKPOINT = "last.ckpt"


def load_checkpoint_safely(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a checkpoint: tensors and plain containers only,
    never arbitrary pickled code. ``mmap``: map the file instead of reading it whole, so that
    only the tensors used are read (the weights of a 10 GB ``last.ckpt`` that also holds the
    Adam state).

    Raises:
        ConfigError: the file holds other objects (it is refused, not executed).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise ConfigError(
            f"{path}: refused to load, it holds objects other than tensors and plain "
            f"containers (loading it would run pickled code): {str(err).splitlines()[0]}"
        ) from err


def checkpoint_stage(checkpoint: dict[str, Any]) -> str:
    """Task class name of a checkpoint: from our record, else from Lightning's CLI
    ``_class_path``, else from its trained keys; ``unknown`` when none tells."""
    record = checkpoint.get(CHECKPOINT_RECORD) or {}
    if record.get("stage"):
        return str(record["stage"])
    class_path = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if class_path:
        return task_stage(str(class_path))
    state = checkpoint.get("state_dict", {})
    if any(k.startswith("alignment.") for k in state):
        return "Stage1"
    if any(k.startswith("net.unet.fftblock.") for k in state):
        return "Stage2"
    return "unknown"


def task_stage(class_path: str) -> str:
    """``stage_name`` of a task class given by import path (its class name if it has none
    or cannot be imported)."""
    module, _, name = class_path.rpartition(".")
    try:
        return str(getattr(importlib.import_module(module), name).stage_name)
    except (ImportError, AttributeError, ValueError):
        return name


def stage_mismatch_message(stage: str, task: str, path: str | Path = "--ckpt_path") -> str:
    """What to do when a checkpoint of ``stage`` is given to a ``task`` run."""
    text = f"{path} is a {stage} checkpoint, but this run is {task}: --ckpt_path only "
    text += "resumes the same stage"
    if task == "Stage2":
        return text + (
            "; start stage 2 with --model.init_args.model_path <stage-1 run>/export (recorded "
            "in <stage-1 run>/export.json) and no --ckpt_path"
        )
    return text + "; to evaluate or predict, use --model.init_args.model_path <run>/export"


def check_checkpoint_stage(ckpt_path: str | None, model_class_path: str | None) -> None:
    """Refuse, before anything is built, a ``--ckpt_path`` of another stage than the
    configured model class.

    Raises:
        ConfigError: naming both stages and the way to start stage 2.
    """
    if not ckpt_path or not model_class_path or not Path(ckpt_path).is_file():
        return
    stage = checkpoint_stage(load_checkpoint_safely(ckpt_path))
    task = task_stage(model_class_path)
    if stage not in ("unknown", task):
        raise ConfigError(stage_mismatch_message(stage, task, ckpt_path))


def resumable_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where a resumable checkpoint goes: ``last.ckpt`` in the folder of the first
    ``ModelCheckpoint`` that keeps one (so ``--ckpt_path last`` finds it), else in
    ``<run>/checkpoints/``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from dm_lightning.training.run_folder import run_dir

    keepers = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    keepers.sort(key=lambda c: not c.save_last)
    if keepers and keepers[0].dirpath:
        return Path(keepers[0].dirpath) / LAST_CHECKPOINT
    return run_dir(trainer) / "checkpoints" / LAST_CHECKPOINT
