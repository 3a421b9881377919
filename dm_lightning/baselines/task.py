"""The baselines' LightningModule base: a sibling of the DepthMaster stages that builds the
method's network instead of DepthMaster's; training loss per method (subclasses)."""

from __future__ import annotations

from typing import Any, ClassVar

from dm_lightning.baselines.network import BaselineNetwork
from dm_lightning.errors import ConfigError
from dm_lightning.inference.onnx_runtime import is_onnx_path
from dm_lightning.models.loading import check_method, load_model_parts
from dm_lightning.models.model_facts import (
    is_checkpoint_path,
    recorded_facts,
    recorded_method,
)
from dm_lightning.training.base import DepthMasterTask


class BaselineTask(DepthMasterTask):
    """Base of the baseline tasks. Subclasses set :attr:`network_class` (and ``stage_name``),
    pass their network's options in :meth:`network_options` and define ``training_loss``.

    ``model_path`` is SD-2 (the U-Net is reshaped for the method by the network's
    ``from_parts``) or an export of the same method (loaded as it is); the rest of the
    arguments are :class:`~dm_lightning.training.base.DepthMasterTask`'s.
    """

    network_class: ClassVar[type[BaselineNetwork]] = BaselineNetwork

    def network_options(self) -> dict[str, Any]:
        """Keyword arguments of ``network_class.from_parts`` from the hyper-parameters."""
        return {}

    def configure_models(self) -> None:
        path = str(self.hparams.model_path)
        name = type(self).__name__
        if is_checkpoint_path(path) or is_onnx_path(path):
            raise ConfigError(
                f"model.init_args.model_path {path}: {name} starts from a model folder (SD-2 or "
                f"an export of {name}); continue a run with --ckpt_path instead"
            )
        # SD-2 (no method recorded) or this method's own export; anything else is refused.
        method = self.network_class.method
        if recorded_method(path) not in (None, method):
            check_method(path, f"dm_lightning.{name}", method)
        vae, unet, embedding = load_model_parts(path, self.hparams.unet_path)
        self.net = self.network_class.from_parts(vae, unet, embedding, **self.network_options())
        self.net.facts = recorded_facts(path)  # as load_depthmaster's
        self.net.vae.requires_grad_(False).eval()
        self.net.unet.train()
