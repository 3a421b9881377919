"""Nothing lost when a ``fit`` is stopped, nothing damaged when one fails to start:
:class:`ResumableCheckpoint` (pre-emption signals, crashes, the final ``last.ckpt``)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from dm_lightning.errors import TrainingStopped
from dm_lightning.training.checkpoint_io import replaced_on_success
from dm_lightning.training.deferred_signals import deferred_signals
from dm_lightning.training.run_folder import resumable_checkpoint_path


class ResumableCheckpoint(L.Callback):
    """Nothing lost when a ``fit`` is stopped: a resumable ``last.ckpt`` on pre-emption and
    on a crash.

    * SIGTERM (what SLURM and most schedulers send before killing a job): Lightning stops at
      the next batch boundary on every rank; this callback then saves ``last.ckpt`` in the
      folder of the ``ModelCheckpoint`` that keeps one (``<run>/checkpoints/``), and the
      command exits with status 143.
    * SIGUSR1 (SLURM's ``--signal=USR1@<seconds>`` before the time limit): handled as SIGTERM,
      unless Lightning's SLURM auto-requeue owns it (a job under SLURM), which saves
      ``hpc_ckpt_<n>.ckpt`` in the run folder and requeues the job; the requeued job resumes
      from it by itself.
    * Any other exception or Ctrl-C during ``fit`` on a single process: ``last.ckpt`` of the
      weights after the last completed step. (On several ranks a crash is not collective, so
      the periodic ``last.ckpt`` of ``ModelCheckpoint(every_n_train_steps=N)`` covers it.)

    A stop before this process completed an optimizer step (since its start, or since the
    checkpoint it resumed from was restored) saves nothing: a command that failed to start or
    to restore (a weights-only ``--ckpt_path``) leaves the run's ``last.ckpt`` as it was.
    Every save goes to a temporary file renamed into place.

    At the end of ``fit`` (``max_steps``, ``max_epochs``, early stopping) ``last.ckpt`` holds
    the final step: when the periodic save of ``ModelCheckpoint(save_last=True)`` fell
    earlier (``max_steps`` 4 with a save every 3 steps), it is written once more. That save,
    like the crash save, finishes before a SIGTERM or Ctrl-C takes effect.

    Resume with ``--ckpt_path last``: the run continues in the same folder.

    On several ranks the callback replaces Lightning 2.6's SIGTERM handler during training:
    Lightning's handler calls ``dist.broadcast`` inside the signal handler, which pairs with
    the other ranks only if their signals land between the same two collectives; signals a
    fraction of a second apart (what a scheduler sends to several nodes) left both ranks
    waiting forever, with no checkpoint. Here the handler only notes the signal; at each
    training batch start the ranks combine their notes in one all-reduce (MAX) and, if any
    rank got one, all stop at the end of that same batch. A signal during validation takes
    effect at the next training batch.
    """

    def __init__(self) -> None:
        self._previous_usr1: Any = None
        self._previous_term: Any = None
        self._signalled = False
        # global_step when training started in this process (after any restore); None
        # until then, i.e. when the start or the restore failed.
        self._start_step: int | None = None

    def steps_trained(self, trainer: L.Trainer) -> int:
        """Optimizer steps this process completed in the current ``fit`` (0 before training
        started, and when the start or the restore failed)."""
        return 0 if self._start_step is None else trainer.global_step - self._start_step

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._start_step = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        env = trainer._accelerator_connector.cluster_environment
        slurm_owns_usr1 = isinstance(env, SLURMEnvironment) and env.auto_requeue
        if not slurm_owns_usr1 and hasattr(signal, "SIGUSR1"):
            try:
                self._previous_usr1 = signal.signal(signal.SIGUSR1, _forward_to_sigterm)
            except ValueError:  # not the main thread: leave signals alone
                self._previous_usr1 = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step  # after the checkpoint's loops were restored
        # After Lightning installed its own handler (Trainer._run, after on_fit_start).
        if trainer.world_size == 1:
            return
        self._signalled = False
        try:
            self._previous_term = signal.signal(signal.SIGTERM, self._note_signal)
        except ValueError:  # not the main thread
            self._previous_term = None

    def _note_signal(self, signum: int, frame: Any) -> None:
        self._signalled = True  # nothing collective inside a signal handler

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._previous_term is None:
            return
        flag = torch.tensor([int(self._signalled)], device=trainer.strategy.root_device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if bool(flag):
            # Every rank sets it at the same batch; Lightning raises SIGTERMException at its end.
            trainer._signal_connector.received_sigterm = True

    def _restore_sigterm(self) -> None:
        if self._previous_term is not None:
            if signal.getsignal(signal.SIGTERM) == self._note_signal:
                signal.signal(signal.SIGTERM, self._previous_term)
            self._previous_term = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigterm()
        self._save_final_last(trainer)

    def _save_final_last(self, trainer: L.Trainer) -> None:
        """Bring the periodic ``last.ckpt`` to the final step (on every rank: the save is
        collective), through the ``ModelCheckpoint`` that keeps it, so its naming and
        bookkeeping hold; nothing when it is current or when nothing was trained here."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        if self.steps_trained(trainer) <= 0 or trainer.fast_dev_run:
            return
        for keeper in trainer.checkpoint_callbacks:
            if not isinstance(keeper, ModelCheckpoint) or not keeper.save_last:
                continue
            if getattr(keeper, "_last_global_step_saved", None) == trainer.global_step:
                continue  # saved at this very step already
            with deferred_signals("the final save of last.ckpt"):
                keeper._save_last_checkpoint(trainer, keeper._monitor_candidates(trainer))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_sigterm()
        if self._previous_usr1 is not None:
            signal.signal(signal.SIGUSR1, self._previous_usr1)
            self._previous_usr1 = None

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        fn = getattr(trainer.state.fn, "value", trainer.state.fn)
        trained = self.steps_trained(trainer)
        if fn != "fit" or trained <= 0 or isinstance(exception, TrainingStopped):
            # Nothing trained in this process (a failed start or restore: what is in the
            # model now is not a state to keep), or the guard saved already.
            return
        collective = isinstance(exception, SIGTERMException)
        if not collective and trainer.world_size > 1:
            return
        path = resumable_checkpoint_path(trainer)
        try:
            with deferred_signals(f"the save of {path}"):
                self._save(trainer, path)
        except Exception as err:  # the original error matters more: report, don't replace it
            print(f"[dm_lightning] could not save {path}: {err}", file=sys.stderr)
            return
        if trainer.is_global_zero:
            why = "stopped by a signal" if collective else f"{type(exception).__name__}"
            print(
                f"[dm_lightning] {why} at step {trainer.global_step}: resumable checkpoint "
                f"saved to {path} (resume with --ckpt_path last)",
                file=sys.stderr,
            )

    @staticmethod
    def _save(trainer: L.Trainer, path: Path) -> None:
        """Write the full state to ``path`` through a temporary file renamed into place (a
        failed or killed save leaves the previous file). On several ranks rank 0 writes it
        without any collective: every rank holds the same weights and optimizer state under
        DDP, and a barrier would hang if a rank had stopped otherwise (a crash elsewhere)."""
        if trainer.world_size == 1:
            with replaced_on_success(path) as tmp:
                trainer.save_checkpoint(tmp, weights_only=False)
        elif trainer.is_global_zero:
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            with replaced_on_success(path) as tmp:
                trainer.strategy.checkpoint_io.save_checkpoint(checkpoint, tmp)


def _forward_to_sigterm(signum: int, frame: Any) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
