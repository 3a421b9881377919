"""Exponential moving average of the trained weights (optional, off unless the callback is
added: ``--trainer.callbacks+=dm_lightning.EMAWeights``).

Only the trained parameters are averaged (U-Net, FA projector or FE block): the frozen VAE and
encoder never change, so unlike Lightning's ``EMAWeightAveraging`` (which deep-copies the whole
LightningModule) this holds one extra copy of the trained weights and nothing else. The update
is one fused ``lerp`` over all of them per optimizer step, on the device, with no host sync.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch import Tensor

from dm_lightning.errors import ConfigError
from dm_lightning.models.stage_checkpoint import EMA_AVERAGE, EMA_NAMES, EMA_STATE_PREFIX


class EMAWeights(L.Callback):
    """``ema <- ema + (1 - decay) (weights - ema)`` after every optimizer step.

    What uses the average:

    - validation during ``fit`` runs with the EMA weights (so ``val/abs_rel`` and the best
      checkpoints judge what will be exported), training continues with the live ones;
    - weights-only checkpoints (``best-*.ckpt``) hold the EMA weights;
    - the export (:class:`~dm_lightning.training.callbacks.ExportDepthMaster`) writes them;
    - full checkpoints (``last.ckpt``) keep the live weights as the model state and the
      average in this callback's state, so a resume continues both; the loaders read that
      state by its layout in :mod:`dm_lightning.models.stage_checkpoint`.

    Args:
        decay: weight of the old average per optimizer step, in [0, 1) (0.9999 averages over
            about 10k steps, the length of a stage here; 0.999 over about 1k).
        start_step: optimizer steps before averaging starts (the average follows the weights
            until then).
    """

    def __init__(self, decay: float = 0.9999, start_step: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMAWeights: decay must be in [0, 1), got {decay!r}")
        if start_step < 0:
            raise ConfigError(f"EMAWeights: start_step must be >= 0, got {start_step!r}")
        self.decay = decay
        self.start_step = start_step
        self.names: list[str] = []
        self.average: list[Tensor] = []
        self._params: list[torch.nn.Parameter] = []
        self._last_step = -1
        self._loaded: dict[str, Any] | None = None
        self._validation: contextlib.AbstractContextManager | None = None

    @property
    def state_key(self) -> str:
        return f"{EMA_STATE_PREFIX}{{decay={self.decay}, start_step={self.start_step}}}"

    # ---- life cycle -----------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        named = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the strategy moved the model (and a resume restored our state): the average
        # lives beside the weights, on their device.
        if self._loaded is not None:
            saved = dict(zip(self._loaded[EMA_NAMES], self._loaded[EMA_AVERAGE]))
            missing = [n for n in self.names if n not in saved]
            if missing:
                raise ConfigError(
                    f"EMAWeights: the checkpoint's average lacks {len(missing)} trained "
                    f"parameters (e.g. {missing[0]}); it was written for another model"
                )
            self.average = [saved[n].to(p.device, p.dtype) for n, p in self._named()]
            self._last_step = int(self._loaded["last_step"])
            self._loaded = None
        elif not self.average:
            self.average = [p.detach().clone() for p in self._params]
            self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._last_step:  # an accumulating micro-batch: no optimizer step yet
            return
        self._last_step = step
        live = [p.detach() for p in self._params]
        if step <= self.start_step:
            torch._foreach_copy_(self.average, live)
        else:
            torch._foreach_lerp_(self.average, live, 1.0 - self.decay)

    # ---- validation and export with the average --------------------------------------------
    @contextlib.contextmanager
    def averaged(self) -> Iterator[None]:
        """The model holds the EMA weights inside the block, its live weights after it."""
        if not self.average:
            yield
            return
        live = [p.detach().clone() for p in self._params]
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in self._params], self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self._params], live)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and self.average:
            self._validation = self.averaged()
            self._validation.__enter__()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        validation = self._validation
        if validation is not None:
            self._validation = None
            validation.__exit__(None, None, None)

    # ---- checkpoints ----------------------------------------------------------------------
    def put_average(self, state: dict[str, Tensor]) -> None:
        """Replace the trained weights in a checkpoint's ``state_dict`` by the average.

        Called by the task's ``on_save_checkpoint`` for weights-only checkpoints (Lightning
        calls no callback hook for those): such a checkpoint is an artefact to evaluate. A
        full one keeps the live weights (resume) and the average in :meth:`state_dict`.
        """
        for name, value in zip(self.names, self.average):
            if name in state:
                state[name] = value.detach().clone()

    def state_dict(self) -> dict[str, Any]:
        return {EMA_NAMES: self.names, EMA_AVERAGE: self.average, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict

    def _named(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        return zip(self.names, self._params)


def ema_callback(trainer: L.Trainer) -> EMAWeights | None:
    """The trainer's :class:`EMAWeights` callback, if it has one."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, EMAWeights)), None)
