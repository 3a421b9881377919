"""Lightning checkpoints of the stage tasks: what they record, where the resumable one goes,
how they are read safely, and which stage may resume from which.

Every checkpoint carries a ``dm_lightning`` entry: the task class (``Stage1``, ``Stage2``)
and the non-finite guard's counters. ``--ckpt_path`` resumes the same stage only; stage 2
starts from the stage-1 *export* through ``model_path`` (the checkpoint would restore stage
1's optimizer, step counter and hyper-parameters, and its keys do not fit stage 2).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from dm_lightning.errors import ConfigError
from dm_lightning.models.state_dicts import load_torch_file

CHECKPOINT_RECORD = "dm_lightning"
LAST_CHECKPOINT = "last.ckpt"


def load_checkpoint_safely(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint read by the one safe loader
    (:func:`~dm_lightning.models.state_dicts.load_torch_file`: weights only, memory-mapped
    when ``mmap``; one-line :class:`ConfigError` naming the file otherwise)."""
    return load_torch_file(path, mmap=mmap)


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


# What Lightning needs to resume a fit beyond the weights (a save_weights_only checkpoint,
# such as the configs' best-*.ckpt, has neither).
RESUME_KEYS = ("optimizer_states", "loops")


def weights_only_message(path: str | Path) -> str:
    """What to do when a weights-only checkpoint is given to ``fit --ckpt_path``."""
    return (
        f"--ckpt_path {path} holds weights only (no optimizer state or loop position), so a "
        f"fit cannot resume from it: resuming needs the run's last.ckpt (--ckpt_path last); "
        f"to start a new run from its weights, use --model.init_args.model_path {path} "
        f"without --ckpt_path"
    )


def check_checkpoint_stage(
    ckpt_path: str | None, model_class_path: str | None, resume: bool = False
) -> dict[str, Any] | None:
    """Refuse, before anything is built, a ``--ckpt_path`` that cannot serve: a file that is
    not a readable PyTorch checkpoint, a checkpoint of another stage than the configured model
    class, and with ``resume`` (``fit``) a weights-only checkpoint. The file is mapped, not
    read whole: a 10 GB ``last.ckpt`` costs the pickled record only.

    Returns:
        the checkpoint (its tensors mapped), or None when ``ckpt_path`` is not a file (a
        keyword such as ``last`` or ``best``, or nothing).

    Raises:
        ConfigError: naming the file and what to do (for another stage, the way to start
            stage 2; for weights only, ``--ckpt_path last`` or ``model_path``).
    """
    if not ckpt_path or not Path(ckpt_path).is_file():
        return None
    checkpoint = load_checkpoint_safely(ckpt_path, mmap=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(
            f"--ckpt_path {ckpt_path} is not a Lightning checkpoint: it has no state_dict"
        )
    if model_class_path:
        stage = checkpoint_stage(checkpoint)
        task = task_stage(model_class_path)
        if stage not in ("unknown", task):
            raise ConfigError(stage_mismatch_message(stage, task, ckpt_path))
    if resume and not all(key in checkpoint for key in RESUME_KEYS):
        raise ConfigError(weights_only_message(ckpt_path))
    return checkpoint
