"""What the baselines' networks share: SD-2's frozen VAE, a U-Net, the empty-prompt embedding,
and DepthMaster's inference around the method's own latent step (:meth:`predict_latent`).

An export is a diffusers-layout folder (``vae/``, ``unet/``, the empty-prompt embedding) whose
``dm_lightning.json`` records the method and the task class that loads it, so ``dm-lightning
test --model <task> --model.init_args.model_path <export>`` evaluates it and DepthMaster's
loader refuses it with that hint (:func:`~dm_lightning.models.loading.check_method`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from torch import Tensor

from dm_lightning.models.depthmaster import EMPTY_PROMPT_FILE, DepthMaster
from dm_lightning.models.model_facts import METADATA_FILE


class BaselineNetwork(DepthMaster):
    """A network of the single-step family; subclasses set :attr:`method` and :attr:`task`,
    override :meth:`predict_latent` (inference, RGB latent -> depth latent) and record their
    settings in :meth:`export_settings`.

    Built from loaded parts (:func:`~dm_lightning.models.loading.load_model_parts`), the U-Net
    already in the method's shape (a subclass's ``from_parts`` does the surgery on SD-2's).
    """

    method: ClassVar[str] = ""
    task: ClassVar[str] = ""

    @classmethod
    def from_parts(
        cls, vae: AutoencoderKL, unet: UNet2DConditionModel, embedding: Tensor, **options: Any
    ) -> BaselineNetwork:
        """The network from loaded parts: SD-2's U-Net reshaped for the method where needed
        (an export of the method is already in shape), ``options`` its settings."""
        return cls(vae, unet, embedding, **options)

    def export_settings(self) -> dict[str, Any]:
        """The method's inference settings, written to ``dm_lightning.json``."""
        return {}

    def save_pretrained(self, path: str | Path, metadata: dict | None = None) -> Path:
        """Write ``vae/``, ``unet/`` (diffusers' ``save_pretrained``), the empty-prompt
        embedding and ``dm_lightning.json`` (``metadata`` plus ``method``, ``task`` and
        :meth:`export_settings`; the loaded :attr:`facts` unless ``metadata`` names others).
        No DepthMaster pipeline code: its inference is not this."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with self.original_vae() as vae:
            vae.save_pretrained(path / "vae")
        self.unet.save_pretrained(path / "unet")
        embedding = self.empty_prompt_embedding.detach().cpu().contiguous()
        save_file({"embedding": embedding}, str(path / EMPTY_PROMPT_FILE))
        meta = {
            **self.facts.to_record(),
            **(metadata or {}),
            "method": self.method,
            "task": self.task,
            **self.export_settings(),
        }
        (path / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return path
