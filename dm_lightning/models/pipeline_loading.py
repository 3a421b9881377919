"""``DepthMasterPipeline`` from anything dm_lightning loads (exports, the released DepthMaster
folder, SD-2 folders, hub ids, stage ``.ckpt`` files), with dm_lightning's strict loaders.

:meth:`DepthMasterPipeline.from_pretrained` calls :func:`load_pipeline` when dm_lightning is
installed; the pipeline module itself stays free of dm_lightning imports (it ships in exports).
"""

from __future__ import annotations

from pathlib import Path

from dm_lightning.models.depthmaster import DepthMaster
from dm_lightning.models.loading import (
    is_checkpoint_path,
    load_depthmaster,
    network_from_checkpoint,
    read_checkpoint,
    recorded_processing_res,
    recorded_target,
    resolve_model_path,
)
from dm_lightning.models.pipeline_depthmaster import (
    DEFAULT_PROCESSING_RESOLUTION,
    DEFAULT_TARGET,
    DepthMasterPipeline,
    EmptyPromptEmbedding,
)


def pipeline_from_network(
    net: DepthMaster,
    target: str | None = None,
    processing_res: int | None = None,
    cls: type[DepthMasterPipeline] = DepthMasterPipeline,
) -> DepthMasterPipeline:
    """A pipeline sharing ``net``'s VAE and U-Net (no copy), in eval mode.

    Args:
        target: the model's training target (None: the recipe's ``sqrt_disparity``).
        processing_res: default long edge in pixels (None: 768).
    """
    pipe = cls(
        vae=net.vae,
        unet=net.unet,
        empty_prompt=EmptyPromptEmbedding.from_tensor(net.empty_prompt_embedding),
        target=target or DEFAULT_TARGET,
        default_processing_resolution=processing_res or DEFAULT_PROCESSING_RESOLUTION,
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
    if is_checkpoint_path(path):
        checkpoint = read_checkpoint(path)
        target = (checkpoint.get("hyper_parameters") or {}).get("target")
        net = network_from_checkpoint(checkpoint, path, cache_dir)
        del checkpoint  # the weights now live in net
        res = recorded_processing_res(path)
    else:
        folder = resolve_model_path(path)
        net = load_depthmaster(folder, cache_dir=cache_dir)
        target, res = recorded_target(folder), recorded_processing_res(folder)
    return pipeline_from_network(net, target, res, cls)
