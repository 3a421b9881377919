"""``DepthMasterPipeline`` from anything dm_lightning loads (exports, the released DepthMaster
folder, SD-2 folders, hub ids, stage ``.ckpt`` files), with dm_lightning's strict loaders.

:meth:`DepthMasterPipeline.from_pretrained` calls :func:`load_pipeline` when dm_lightning is
installed; the pipeline module itself stays free of dm_lightning imports (it ships in exports).
"""

from __future__ import annotations

from pathlib import Path

from dm_lightning.models.depthmaster import DepthMaster
from dm_lightning.models.loading import load_depthmaster
from dm_lightning.models.pipeline_depthmaster import DepthMasterPipeline, EmptyPromptEmbedding


def pipeline_from_network(
    net: DepthMaster, cls: type[DepthMasterPipeline] = DepthMasterPipeline
) -> DepthMasterPipeline:
    """A pipeline sharing ``net``'s VAE and U-Net (no copy), in eval mode, configured with the
    facts the network records (``net.facts``: target, default processing resolution; the
    recipe's ``sqrt_disparity`` and 768 when it records none)."""
    pipe = cls(
        vae=net.vae,
        unet=net.unet,
        empty_prompt=EmptyPromptEmbedding.from_tensor(net.empty_prompt_embedding),
        target=net.facts.target,
        default_processing_resolution=net.facts.processing_res,
    )
    pipe.empty_prompt.to(net.empty_prompt_embedding.device)
    net.eval()
    return pipe


def load_pipeline(
    path: str | Path,
    cls: type[DepthMasterPipeline] = DepthMasterPipeline,
    cache_dir: str | Path | None = None,
) -> DepthMasterPipeline:
    """:func:`~dm_lightning.models.loading.load_depthmaster` of ``path`` as a pipeline, with the
    target and processing resolution recorded with the model (``dm_lightning.json``, a
    checkpoint's hyper-parameters; defaults when none, as for the released model and SD-2).

    Raises:
        MissingPathError, ConfigError: as ``load_depthmaster`` (missing parts, keys that do
            not fit, named).
    """
    return pipeline_from_network(load_depthmaster(path, cache_dir=cache_dir), cls)
