"""The DepthMaster network as a plain ``nn.Module`` (docs/method.md §1), usable without Lightning.

RGB -> VAE posterior mean x scaling factor -> U-Net (timestep 1, empty-prompt embedding) ->
depth latent -> VAE decoder -> channel mean. One U-Net pass, no noise, no scheduler. Model
folders are written by :meth:`DepthMaster.save_pretrained` and read by
:func:`~dm_lightning.models.loading.load_depthmaster`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor, nn

from dm_lightning.errors import ConfigError
from dm_lightning.models.model_facts import METADATA_FILE, ModelFacts
from dm_lightning.models.pipeline_depthmaster import (
    LEGACY_EMPTY_PROMPT_FILE,
    DepthMasterPipeline,
    EmptyPromptEmbedding,
    decode_depth,
    denoise,
    encode_rgb,
    latent_factor,
    predict_relative_depth,
)
from dm_lightning.models.resolution import working_size as checked_working_size
from dm_lightning.models.unet_hooks import FFT_ATTRIBUTE, as_depthmaster_unet

# Still written beside model_index.json's empty_prompt/ so older dm_lightning versions read exports.
EMPTY_PROMPT_FILE = LEGACY_EMPTY_PROMPT_FILE


def signed_rgb(rgb: Tensor) -> Tensor:
    """uint8 RGB (B, 3, H, W) in [0, 255] -> float in [-1, 1], the network's input range."""
    return rgb.float() / 127.5 - 1.0


class DepthMaster(nn.Module):
    """Single-step diffusion depth estimator.

    Args:
        vae: SD-2 ``AutoencoderKL`` (frozen by the trainers).
        unet: a ``UNet2DConditionModel`` with 4 input channels; a stock one becomes a
            :class:`~dm_lightning.models.modeling_depthmaster.DepthMasterUNet` (in place), which
            may carry an FE block as ``unet.fftblock`` (see
            :func:`~dm_lightning.models.unet_hooks.attach_fourier_enhancement`).
        empty_prompt_embedding: (1, T, cross_attention_dim) text embedding of ``""``.
    """

    # Latents the U-Net's input concatenates: the RGB latent alone here; Marigold's widened
    # conv_in takes the RGB latent and the noisy depth latent (dm_lightning.baselines).
    latent_inputs = 1
    # Whether predict_latent is one deterministic U-Net pass, what one ONNX graph can hold
    # (dm_lightning.inference.onnx_export); Marigold's sampling from noise is not.
    single_pass = True
    #: What the model records (target, predict's long edge), set by the loaders from its
    #: folder or checkpoint; a network built in memory records nothing (the defaults).
    facts: ModelFacts = ModelFacts()

    def __init__(
        self, vae: AutoencoderKL, unet: UNet2DConditionModel, empty_prompt_embedding: Tensor
    ) -> None:
        super().__init__()
        expected = self.latent_inputs * vae.config.latent_channels
        if unet.config.in_channels != expected:
            raise ConfigError(
                f"U-Net in_channels={unet.config.in_channels} but {type(self).__name__} feeds "
                f"{self.latent_inputs} latent(s) of the VAE's latent_channels="
                f"{vae.config.latent_channels}, {expected} channels"
            )
        emb_dim = empty_prompt_embedding.shape[-1]
        if empty_prompt_embedding.ndim != 3 or emb_dim != unet.config.cross_attention_dim:
            raise ConfigError(
                f"empty-prompt embedding must be (1, T, {unet.config.cross_attention_dim}), "
                f"got {tuple(empty_prompt_embedding.shape)}"
            )
        self.vae = vae
        self.unet = as_depthmaster_unet(unet)
        self._encoder_original: dict[str, Tensor] | None = None  # see cast_frozen_encoder
        # Not persistent: it comes with the model folder, checkpoints need not carry it.
        self.register_buffer("empty_prompt_embedding", empty_prompt_embedding, persistent=False)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell (8 for SD-2), derived from the VAE config."""
        return latent_factor(self.vae)

    def encode(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 4, H/f, W/f) latent = posterior mean x scaling factor,
        in ``image``'s dtype (the VAE encoder may be held in another, see
        :meth:`cast_frozen_encoder`)."""
        return encode_rgb(self.vae, image)

    def cast_frozen_encoder(self, dtype: torch.dtype) -> None:
        """Hold the VAE encoder (and its ``quant_conv``) in ``dtype``, e.g. bf16 under
        bf16-mixed training: it is frozen and runs without gradients, so only memory and
        speed change. The decoder stays fp32: stage 2 back-propagates through it and
        :meth:`predict` decodes in fp32."""
        if self._encoder_original is None:
            # Rounding to bf16 and back would change the frozen weights: keep them for export.
            self._encoder_original = {
                k: v.detach().to("cpu", copy=True)
                for k, v in self._encoder_parts().state_dict().items()
            }
        self._encoder_parts().to(dtype)

    def _encoder_parts(self) -> nn.Module:
        parts = nn.ModuleDict({"encoder": self.vae.encoder})
        if getattr(self.vae, "quant_conv", None) is not None:
            parts["quant_conv"] = self.vae.quant_conv
        return parts

    @contextlib.contextmanager
    def original_vae(self) -> Iterator[AutoencoderKL]:
        """The VAE with its encoder as loaded (undoing :meth:`cast_frozen_encoder` for the
        duration, e.g. to save it)."""
        if self._encoder_original is None:
            yield self.vae
            return
        parts = self._encoder_parts()
        dtype = next(parts.parameters()).dtype
        parts.float().load_state_dict(self._encoder_original)
        try:
            yield self.vae
        finally:
            parts.to(dtype)

    def denoise(self, latent: Tensor) -> Tensor:
        """One U-Net pass at timestep 1: RGB latent -> depth latent, both (B, 4, h, w)."""
        return denoise(self.unet, self.empty_prompt_embedding, latent)

    def decode(self, latent: Tensor) -> Tensor:
        """(B, 4, h, w) depth latent -> (B, 1, h*f, w*f), mean of the 3 decoded channels."""
        return decode_depth(self.vae, latent)

    def forward(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> raw decoded depth (B, 1, H, W), nominally in [-1, 1]."""
        return self.decode(self.predict_latent(self.encode(image)))

    @torch.no_grad()
    def predict(self, image: Tensor, processing_res: int | str | None = None) -> Tensor:
        """Relative depth of an image batch at its own size.

        Args:
            image: (B, 3, H, W), uint8 in [0, 255] or float in [0, 1].
            processing_res: long-edge size to run the network at, an integer >= the VAE factor
                (None or ``"native"`` = native size); the working size is rounded to a
                multiple of the VAE factor.

        Returns:
            (B, 1, H, W) float in [0, 1]; for the default target 1 = near (normalised
            square-root disparity).
        """
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        size = self.working_size(*x.shape[-2:], processing_res)
        # the pipeline's own function (DepthMasterPipeline runs the same): one inference path
        return predict_relative_depth(
            self.vae,
            self.unet,
            self.empty_prompt_embedding,
            x,
            size,
            latent_step=self.predict_latent,
        )

    def predict_latent(self, latent: Tensor) -> Tensor:
        """Inference from the RGB latent to the depth latent, (B, 4, h, w) both: DepthMaster's
        single pass (:meth:`denoise`); the baselines of :mod:`dm_lightning.baselines` override
        it (several DDIM steps for Marigold, a timestep-999 x0 for E2E-FT)."""
        return self.denoise(latent)

    def working_size(
        self, height: int, width: int, processing_res: int | str | None
    ) -> tuple[int, int]:
        """Network input size: long edge scaled to ``processing_res``, rounded to multiples of
        the VAE factor (:func:`~dm_lightning.models.resolution.working_size`).

        Raises:
            ConfigError: ``processing_res`` is not None and not an integer >= the VAE factor.
        """
        return checked_working_size(height, width, processing_res, self.latent_factor)

    def save_pretrained(self, path: str | Path, metadata: dict | None = None) -> Path:
        """Write a diffusers pipeline folder (:class:`~dm_lightning.models.pipeline_depthmaster.
        DepthMasterPipeline`): ``model_index.json`` with the target and processing resolution
        from ``metadata``, ``unet/`` (``fftblock.*`` and the config flag if present), ``vae/``,
        ``empty_prompt/`` and the pipeline's code; plus the empty-prompt embedding file and
        ``dm_lightning.json`` that :func:`~dm_lightning.models.loading.load_depthmaster` reads.

        The facts the network was loaded with (:attr:`facts`) are written unless ``metadata``
        names others: a loaded model saved again keeps its target and resolution."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "fourier_enhancement": hasattr(self.unet, FFT_ATTRIBUTE),
            **self.facts.to_record(),
            **(metadata or {}),
        }
        facts = ModelFacts.from_record(meta)
        embedding = self.empty_prompt_embedding.detach().cpu().contiguous()
        with self.original_vae() as vae:
            DepthMasterPipeline(
                vae,
                self.unet,
                EmptyPromptEmbedding.from_tensor(embedding),
                target=facts.target,
                default_processing_resolution=facts.processing_res,
            ).save_pretrained(path)
        save_file({"embedding": embedding}, str(path / EMPTY_PROMPT_FILE))
        (path / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return path
