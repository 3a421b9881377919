"""The non-finite guard of the training tasks (docs/method.md §4: NaN losses were reported on
the original stage 2), as a mixin of :class:`~dm_lightning.training.base.DepthMasterTask`.

A non-finite gradient norm skips the optimizer step without moving anything; after
``max_nonfinite_steps`` such steps in a row the run saves a resumable checkpoint and stops
(:class:`~dm_lightning.errors.TrainingStopped`). The counts travel in the task's checkpoint
record (:meth:`NonFiniteGuard.nonfinite_record`, :meth:`NonFiniteGuard.restore_nonfinite`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dm_lightning.errors import ConfigError, TrainingStopped
from dm_lightning.plurals import count_of
from dm_lightning.training.run_folder import resumable_checkpoint_path


class NonFiniteGuard:
    """Mixin of a LightningModule whose hyper-parameters hold ``max_nonfinite_steps``
    (consecutive bad optimizer steps before the run stops; None never stops).

    Attributes:
        nonfinite_steps: optimizer steps skipped so far (kept in checkpoints).
        nonfinite_consecutive: skipped in a row up to now.
    """

    def init_nonfinite_guard(self, max_nonfinite_steps: int | None) -> None:
        """Check ``max_nonfinite_steps`` and start the counts (called by ``__init__``).

        Raises:
            ConfigError: ``max_nonfinite_steps`` < 1.
        """
        if max_nonfinite_steps is not None and max_nonfinite_steps < 1:
            raise ConfigError(
                f"model.init_args.max_nonfinite_steps must be >= 1 or null, got "
                f"{max_nonfinite_steps}"
            )
        # Skipped optimizer steps (all, and in a row now); kept in checkpoints.
        self.nonfinite_steps = 0
        self.nonfinite_consecutive = 0
        self._loss_parts: dict[str, Tensor] = {}

    def guard_loss(self, loss: Tensor, parts: dict[str, Tensor]) -> Tensor:
        """Log the loss terms and keep them for the non-finite guard's message.

        Nothing is checked here, so the step never waits on the host: a non-finite loss
        gives non-finite gradients, which :meth:`on_before_optimizer_step` finds once per
        optimizer step (after DDP's all-reduce, so every rank takes the same decision).
        """
        for name, value in parts.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name == "loss")
        self._loss_parts = {name: value.detach() for name, value in parts.items()}
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The non-finite guard.

        A non-finite gradient norm skips the step without moving anything: every gradient is
        set to None, which ``torch.optim.Adam`` treats as "no gradient", so neither the
        weights nor the moments nor Adam's step count change. The step still counts as an
        optimizer step for Lightning (schedule and ``max_steps``) and is counted in
        ``train/nonfinite_steps``. After ``max_nonfinite_steps`` consecutive bad steps the
        run saves a checkpoint and stops (:meth:`on_train_batch_end`).
        """
        # The optimizer's own list: walking every module (VAE, encoder) costs ~3 ms a step.
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        if bool(torch.isfinite(norm)):  # one host sync per optimizer step
            self.nonfinite_consecutive = 0
        else:
            for p in params:
                p.grad = None
            self.nonfinite_steps += 1
            self.nonfinite_consecutive += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), on_step=True)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        limit = self.hparams.max_nonfinite_steps
        if limit is None or self.nonfinite_consecutive < limit:
            return
        # Every rank saw the same all-reduced gradients, so all stop here together and the
        # (collective) checkpoint save is safe. The weights are those of the last good step.
        path = resumable_checkpoint_path(self.trainer)
        self.trainer.save_checkpoint(path, weights_only=False)  # full state, to resume
        terms = ", ".join(f"{k}={float(v):.6g}" for k, v in self._loss_parts.items())
        in_a_row = count_of(self.nonfinite_consecutive, "consecutive optimizer step")
        raise TrainingStopped(
            f"{in_a_row} with a non-finite loss "
            f"or gradient (max_nonfinite_steps={limit}), the last at step "
            f"{self.trainer.global_step} (loss terms of its last micro-batch: {terms}); no "
            f"weight was changed by them. Checkpoint saved to {path}: fix the cause (learning "
            "rate, data, precision), then resume with --ckpt_path last"
        )

    def nonfinite_record(self) -> dict[str, int]:
        """The counts a checkpoint keeps."""
        return {
            "nonfinite_steps": self.nonfinite_steps,
            "nonfinite_consecutive": self.nonfinite_consecutive,
        }

    def restore_nonfinite(self, record: dict[str, Any]) -> None:
        """The counts from a checkpoint's record."""
        self.nonfinite_steps = int(record.get("nonfinite_steps", 0))
        # The run in a row starts anew: a resume after the guard's stop would otherwise stop
        # again before its first step.
        self.nonfinite_consecutive = 0
