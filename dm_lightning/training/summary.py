"""The few lines ``dm-lightning fit`` ends with (:func:`fit_summary`): final loss, the last
validation (or why there was none, and that no best checkpoint was ranked therefore), where the
checkpoints, the export and the logs are, and the TensorBoard command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from dm_lightning.data.contract import depth_data
from dm_lightning.evaluation.keys import parse_metric_key
from dm_lightning.plurals import count_of
from dm_lightning.training.callbacks import ExportDepthMaster

#: Per-split validation values shown (the evaluation logs ``val/<split>/<metric>``).
SHOWN_METRICS = ("abs_rel", "delta1")


def fit_summary(trainer: L.Trainer, log_dir: str | None) -> str:
    """The closing summary of a finished ``fit`` (print it on global rank 0 only).

    ``log_dir`` is ``trainer.log_dir``, resolved by the caller on every rank: under DDP it is a
    collective (a broadcast), which rank 0 alone would wait on forever, or fail on once the
    other ranks have exited.

    Values come from ``trainer.callback_metrics`` (the latest logged: the last step's
    ``train/loss``, the last validation's ``val/<split>/<metric>``) and the callbacks'
    recorded paths; lines without anything to say are left out.
    """
    metrics = trainer.callback_metrics
    steps = count_of(trainer.global_step, "optimizer step")
    lines = [f"fit finished after {steps}" + _stop_reason(trainer)]
    loss = metrics.get("train/loss")
    if loss is not None:
        lines.append(f"  final loss: {float(loss):.4g}")
    validation = _validation_line(metrics)
    lines.append(f"  last validation: {validation}" if validation else _no_validation(trainer))
    shown: set[str] = set()
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        path = callback.last_model_path
        if path and path not in shown and Path(path).is_file():
            shown.add(path)
            lines.append(f"  last checkpoint: {path} (resume: --ckpt_path last)")
        if callback.monitor and callback.best_model_path:
            score = callback.best_model_score
            ranked = f"{callback.monitor} {float(score):.4g}" if score is not None else ""
            lines.append(f"  best checkpoint: {callback.best_model_path} ({ranked})")
    for callback in trainer.callbacks:
        if isinstance(callback, ExportDepthMaster) and callback.exported is not None:
            lines.append(f"  export: {callback.exported}")
    if log_dir:
        lines.append(f"  logs: {log_dir}")
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            lines.append(f"  TensorBoard: tensorboard --logdir {logger.root_dir}")
    return "\n".join(lines)


def _stop_reason(trainer: L.Trainer) -> str:
    if trainer.interrupted:
        return " (interrupted)"
    if trainer.should_stop and not _reached_max(trainer):
        return " (stopped early)"
    return ""


def _reached_max(trainer: L.Trainer) -> bool:
    max_steps, max_epochs = trainer.max_steps, trainer.max_epochs
    return (max_steps not in (None, -1) and trainer.global_step >= max_steps) or (
        max_epochs not in (None, -1) and trainer.current_epoch >= max_epochs
    )


def _validation_line(metrics: dict[str, Any]) -> str:
    """``<split> abs_rel 0.1234 delta1 0.8765; ...`` of the last validation, or ""."""
    splits: dict[str, list[str]] = {}
    for name, value in metrics.items():
        key = parse_metric_key(name)
        if key and key.stage == "val" and key.metric in SHOWN_METRICS:
            splits.setdefault(key.split, []).append(f"{key.metric} {float(value):.4f}")
    return "; ".join(f"{split} {' '.join(values)}" for split, values in splits.items())


def _no_validation(trainer: L.Trainer) -> str:
    """The line saying that no validation ran in this fit, why, and what that leaves out."""
    data = depth_data(trainer.datamodule)
    names = data.val_names if data else None
    if trainer.limit_val_batches == 0 or (names is not None and not names):
        why = "there is no validation data (data.val, trainer.limit_val_batches)"
    else:
        every = trainer.val_check_batch
        epochs = trainer.check_val_every_n_epoch or 1
        when = f"every {epochs} epochs" if epochs > 1 else "every epoch"
        if isinstance(every, int) and every < trainer.num_training_batches:
            when = f"every {count_of(every, 'training batch', 'training batches')}"
        per_epoch = count_of(trainer.num_training_batches, "batch", "batches")
        why = (
            f"validation runs {when} ({per_epoch} per epoch) and "
            f"this run ended at step {trainer.global_step} (raise trainer.max_steps or set "
            "trainer.val_check_interval)"
        )
    ranked = [c.monitor for c in trainer.checkpoint_callbacks if getattr(c, "monitor", None)]
    left_out = f"; no best checkpoint by {', '.join(ranked)} was written" if ranked else ""
    return f"  no validation ran: {why}{left_out}"
