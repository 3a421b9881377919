"""The frozen parts of a training task and what follows from them, as a mixin of
:class:`~dm_lightning.training.base.DepthMasterTask`.

The VAE (``net.vae``) and stage 1's alignment encoder (``encoder``) are not trained: they are
rebuilt from the model folder at start-up, so checkpoints leave them out and a load adds them
back (:meth:`FrozenParts.drop_frozen`, :meth:`FrozenParts.add_frozen`); they stay in eval mode
on purpose (:meth:`FrozenParts.warn_stray_eval_modules` names any other module found so); and
under a mixed precision they may be held in its compute dtype
(:meth:`FrozenParts.cast_frozen_modules`, ``model.init_args.cast_frozen``).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn

# Frozen parts: rebuilt from the model folder at start-up, so checkpoints leave them out.
FROZEN_PREFIXES = ("net.vae.", "encoder.")
# Lightning precision -> the compute dtype the frozen modules may be held in (cast_frozen).
MIXED_PRECISION_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class FrozenParts:
    """Mixin of a LightningModule holding a DepthMaster ``net`` (and, in stage 1, an alignment
    ``encoder``) whose state-dict keys start with :data:`FROZEN_PREFIXES` for its frozen parts.
    """

    def cast_frozen_modules(self, precision: str) -> None:
        """Hold the frozen VAE encoder and alignment encoder (if any) in the compute dtype of
        ``precision`` (a Lightning precision string); nothing at full precision."""
        dtype = MIXED_PRECISION_DTYPES.get(precision)
        if dtype is None:
            rank_zero_warn(
                f"model.init_args.cast_frozen is set but trainer.precision is {precision!r}: "
                f"the frozen modules stay fp32 (cast_frozen acts under "
                f"{' or '.join(MIXED_PRECISION_DTYPES)})"
            )
            return
        self.net.cast_frozen_encoder(dtype)
        encoder = getattr(self, "encoder", None)
        if encoder is not None:
            encoder.to(dtype)

    def warn_stray_eval_modules(self) -> None:
        """Warn about modules in eval mode at the start of training other than the frozen
        VAE and encoder (which are on purpose; the CLI silences Lightning's notice that
        counts them all), naming a few."""
        stray = [
            name
            for name, module in self.named_modules()
            if not module.training and not f"{name}.".startswith(FROZEN_PREFIXES)
        ]
        if stray:
            rank_zero_warn(
                f"{len(stray)} module(s) outside the frozen VAE and encoder are in eval mode at "
                f"the start of training (dropout and normalisation statistics then behave as at "
                f"inference): {', '.join(stray[:5])}{', ...' if len(stray) > 5 else ''}"
            )

    def drop_frozen(self, state: dict[str, Any]) -> None:
        """Remove the frozen parts from a checkpoint's ``state`` (in place)."""
        for k in [k for k in state if k.startswith(FROZEN_PREFIXES)]:
            del state[k]

    def add_frozen(self, state: dict[str, Any]) -> None:
        """Add this task's own frozen tensors that a checkpoint's ``state`` leaves out (in
        place), so that a strict load finds every key."""
        own = self.state_dict()
        for k, v in own.items():
            if k.startswith(FROZEN_PREFIXES) and k not in state:
                state[k] = v
