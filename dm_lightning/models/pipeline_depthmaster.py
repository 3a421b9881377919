"""DepthMaster as a diffusers pipeline: ``DepthMasterPipeline`` and the one inference function
every dm_lightning path runs (:func:`predict_relative_depth`).

Self-contained on purpose: this file imports only torch, numpy, PIL, diffusers and its siblings
:mod:`~dm_lightning.models.modeling_depthmaster` (the U-Net and empty-prompt components) and
:mod:`~dm_lightning.models.tiling_depthmaster` (tiled prediction and the ``working_size``
rule), because :meth:`DepthMasterPipeline.save_pretrained` copies all three into every exported
model folder, where ``diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)``
loads them without dm_lightning (``model_index.json`` names ``["pipeline_depthmaster",
"DepthMasterPipeline"]``). dm_lightning's own predict paths import it from here: one implementation.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor
from diffusers.utils import BaseOutput
from torch import Tensor, nn

# relative, so that diffusers copies the file beside this one when it loads an export's copy
from .modeling_depthmaster import MODULE_NAME as MODELING_MODULE
from .modeling_depthmaster import DepthMasterUNet, EmptyPromptEmbedding
from .tiling_depthmaster import predict_tiled, working_size

# The tiling code's module, shipped beside this one (it imports nothing from this file).
TILING_MODULE = "tiling_depthmaster"

MODULE_NAME = Path(__file__).stem  # the file's name inside an export, for model_index.json
EMPTY_PROMPT_FOLDER = "empty_prompt"
LEGACY_EMPTY_PROMPT_FILE = "empty_prompt_embedding.safetensors"  # exports before model_index
#: The training target and predict's long edge (pixels) of a model that records none: the
#: recipe's (the released model, SD-2 base weights). dm_lightning reads them from here.
DEFAULT_TARGET = "sqrt_disparity"
DEFAULT_PROCESSING_RES = 768


def near_is_one(target: str | None) -> bool:
    """Whether 1 means near in a prediction of ``target``'s space: every target but ``depth``
    (None, a model that records none, is read as :data:`DEFAULT_TARGET`)."""
    return target != "depth"


def latent_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell (8 for SD-2), derived from the VAE config."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def encode_rgb(vae: AutoencoderKL, image: Tensor) -> Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 4, H/f, W/f) latent = posterior mean x scaling factor, in
    ``image``'s dtype (the encoder may be held in another, e.g. bf16 under mixed training)."""
    latent = vae.encode(image.to(vae.encoder.conv_in.weight.dtype)).latent_dist.mean
    return latent.to(image.dtype) * float(vae.config.scaling_factor)


def denoise(unet: UNet2DConditionModel, empty_prompt: Tensor, latent: Tensor) -> Tensor:
    """One U-Net pass at timestep 1: RGB latent -> depth latent, both (B, 4, h, w)."""
    b = latent.shape[0]
    context = empty_prompt.to(latent.device, latent.dtype).expand(b, -1, -1)
    timestep = torch.ones(b, device=latent.device, dtype=torch.long)
    return unet(latent, timestep, encoder_hidden_states=context).sample


def decode_depth(vae: AutoencoderKL, latent: Tensor) -> Tensor:
    """(B, 4, h, w) depth latent -> (B, 1, h*f, w*f), mean of the 3 decoded channels."""
    return vae.decode(latent / float(vae.config.scaling_factor)).sample.mean(dim=1, keepdim=True)


def resize_bilinear(image: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, C, H, W) float -> (B, C, *size): bilinear, ``align_corners=False``, antialiased
    (when shrinking, the filter widens with the scale). The one resize of the inference path,
    both ways: the RGB to the working size and the prediction back to the input's size (the
    evaluation protocol's resize to the ground truth, docs/method.md §6)."""
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def predict_relative_depth(
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
    empty_prompt: Tensor,
    image: Tensor,
    size: tuple[int, int],
    match_input_resolution: bool = True,
    latent_step: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """The inference path of DepthMaster (docs/method.md §1), shared by every caller.

    Args:
        image: (B, 3, H, W) float in [0, 1].
        size: (height, width) the network runs at, multiples of the VAE factor
            (:func:`~dm_lightning.models.tiling_depthmaster.working_size`).
        match_input_resolution: resize the prediction back to (H, W); else it stays at ``size``.
        latent_step: RGB latent -> depth latent; default DepthMaster's single U-Net pass
            (:func:`denoise`). The single-step family's baselines (E2E-FT, Lotus-D, Marigold)
            pass their own and share the rest: resize, encode, fp32 decode, clip, resize back.

    Returns:
        (B, 1, H, W) (or ``size``) float32 in [0, 1] exactly; 1 = near for the disparity targets.
    """
    # One memory layout whatever the caller's (an HWC array's permute is channels-last): CPU
    # kernels sum in another order for another layout, and every path must agree exactly.
    x = image.float().contiguous()
    h, w = x.shape[-2:]
    if size != (h, w):
        x = resize_bilinear(x, size)
    param = next(unet.parameters())
    if latent_step is None:
        latent_step = functools.partial(denoise, unet, empty_prompt)
    latent = latent_step(encode_rgb(vae, x.to(param.device, param.dtype) * 2.0 - 1.0))
    # Decode in fp32 under autocast too: bf16's step (~0.004) on [-1, 1] would move aligned
    # depth by over 1% at far range. Clip before resizing (docs/method.md §1).
    with torch.autocast(device_type=latent.device.type, enabled=False):
        dtype = vae.decoder.conv_in.weight.dtype
        raw = decode_depth(vae, latent.float().to(dtype)).float().clamp(-1.0, 1.0)
    if match_input_resolution and size != (h, w):
        raw = resize_bilinear(raw, (h, w))
    # Clip again after the resize: antialiased bilinear overshoots its input range by float
    # rounding (-6e-8 below 0), and [0, 1] is promised exactly.
    return ((raw + 1.0) / 2.0).clamp(0.0, 1.0)


class DepthMasterImageProcessor(MarigoldImageProcessor):
    """diffusers' ``MarigoldImageProcessor`` (input loading, ``visualize_depth``) with a 16-bit
    PNG export that works with Pillow 13 (diffusers 0.42 passes ``mode="I;16"``, which it
    refuses for uint16 arrays) and rounds, as ``dm-lightning predict`` does."""

    @staticmethod
    def export_depth_to_16bit_png(
        depth: np.ndarray | Tensor | list, val_min: float = 0.0, val_max: float = 1.0
    ) -> list[PIL.Image.Image]:
        """(N, H, W, 1) array, (N, 1, H, W) tensor or list of (H, W) maps -> 16-bit grey PNG
        images, ``val_min`` -> 0 and ``val_max`` -> 65535."""
        if isinstance(depth, (np.ndarray, Tensor)):
            depth = MarigoldImageProcessor.expand_tensor_or_array(depth)
            if isinstance(depth, np.ndarray):
                depth = MarigoldImageProcessor.numpy_to_pt(depth)  # [N,H,W,1] -> [N,1,H,W]
            depth = [d[0] for d in depth]
        images = []
        for values in depth:
            values = values.cpu().numpy() if torch.is_tensor(values) else np.asarray(values)
            unit = np.clip((values.astype(np.float64) - val_min) / (val_max - val_min), 0, 1)
            images.append(PIL.Image.fromarray(np.round(unit * 65535).astype(np.uint16)))
        return images


@dataclass
class DepthMasterDepthOutput(BaseOutput):
    """Output of :class:`DepthMasterPipeline`.

    Args:
        prediction: relative depth in [0, 1], (N, H, W, 1) ``np.ndarray`` or (N, 1, H, W)
            ``torch.Tensor`` (diffusers' Marigold convention), scale and shift unknown.
        target: the space it is in: ``sqrt_disparity`` (the recipe), ``disparity`` or ``depth``.
        near_is_one: whether 1 means near (True for the disparity targets).
    """

    prediction: np.ndarray | torch.Tensor
    target: str
    near_is_one: bool


class DepthMasterPipeline(DiffusionPipeline):
    """Single-step diffusion depth (DepthMaster): encode, one U-Net pass, decode; no scheduler.

    Components: ``vae`` (``AutoencoderKL``), ``unet`` (:class:`DepthMasterUNet`) and
    ``empty_prompt`` (:class:`EmptyPromptEmbedding`). Config: ``target`` (the prediction's
    space) and ``default_processing_resolution`` (long edge in pixels; 0 = native size).
    ``image_processor`` (:class:`DepthMasterImageProcessor`, diffusers' Marigold one) turns
    ``prediction`` into images: ``visualize_depth``, ``export_depth_to_16bit_png``.
    """

    model_cpu_offload_seq = "unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        empty_prompt: EmptyPromptEmbedding,
        target: str = DEFAULT_TARGET,
        default_processing_resolution: int = DEFAULT_PROCESSING_RES,
    ) -> None:
        super().__init__()
        self.register_modules(vae=vae, unet=unet, empty_prompt=empty_prompt)
        self.register_to_config(
            target=target, default_processing_resolution=default_processing_resolution
        )
        self.image_processor = DepthMasterImageProcessor(vae_scale_factor=latent_factor(vae))

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | np.ndarray | Tensor | list,
        processing_resolution: int | None = None,
        match_input_resolution: bool = True,
        batch_size: int = 1,
        output_type: str = "np",
        tile_size: int | None = None,
        tile_overlap: int | None = None,
    ) -> DepthMasterDepthOutput:
        """Relative depth of one image or a list of images of one size.

        Args:
            image: PIL image, (H, W, 3) / (N, H, W, 3) array or (3, H, W) / (N, 3, H, W)
                tensor, uint8 or float in [0, 1]; or a list of them.
            processing_resolution: long edge (pixels, >= the VAE factor) the network runs at;
                0 = each image's own size; None = ``config.default_processing_resolution``.
            match_input_resolution: return the prediction at the input size (else at the
                processing size).
            batch_size: images per forward pass.
            output_type: ``"np"`` or ``"pt"``.
            tile_size: None (default): one pass per image. Else tiled high-resolution depth
                (``tiling_depthmaster.predict_tiled``, shipped beside this file): a global
                pass at the processing resolution plus overlapping ``tile_size`` tiles at the
                image's own pixels, each aligned to the global pass and blended; one tile on
                the device at a time; needs a processing resolution in pixels (not 0); the
                output is at the input size.
            tile_overlap: least overlap of neighbouring tiles in pixels (default a quarter
                tile).
        """
        res = self.config.default_processing_resolution
        res = res if processing_resolution is None else processing_resolution
        factor = latent_factor(self.vae)
        if not isinstance(res, int) or isinstance(res, bool) or (res != 0 and res < factor):
            raise ValueError(
                f"processing_resolution must be 0 (native) or an integer >= {factor}, got {res!r}"
            )
        if batch_size < 1 or output_type not in ("np", "pt"):
            raise ValueError(
                f"need batch_size >= 1 and output_type 'np' or 'pt', got {batch_size}, "
                f"{output_type!r}"
            )
        images = image if isinstance(image, list) else [image]
        loaded = [self.image_processor.load_image_canonical(i) for i in images]  # (n, 3, H, W)
        if len({tuple(t.shape[-2:]) for t in loaded}) > 1:
            sizes = [tuple(t.shape[-2:]) for t in loaded]
            raise ValueError(f"images of one call must share one size, got {sizes}")
        x = torch.cat(loaded)
        self.image_processor.check_image_values_range(x)
        self._decoder_in_fp32()
        size = working_size(*x.shape[-2:], res or None, factor)
        embedding = self.empty_prompt.embedding
        if tile_size is not None:
            # the network on one tile, or on the global pass's working-size image
            def network(tile: Tensor) -> Tensor:  # at its own size, a multiple of the factor
                tile = tile.to(self._execution_device)
                return predict_relative_depth(
                    self.vae, self.unet, embedding, tile, tuple(tile.shape[-2:]), True
                )

            prediction = torch.cat(
                [
                    predict_tiled(network, one, res, tile_size, tile_overlap, factor)
                    for one in x.split(1)
                ]
            )
            return self._output(prediction, output_type)
        prediction = torch.cat(
            [
                predict_relative_depth(
                    self.vae,
                    self.unet,
                    embedding,
                    chunk.to(self._execution_device),
                    size,
                    match_input_resolution,
                )
                for chunk in x.split(batch_size)
            ]
        )
        return self._output(prediction, output_type)

    def _decoder_in_fp32(self) -> None:
        """Put the VAE's ``post_quant_conv`` and ``decoder`` back in fp32 after a cast of the
        whole pipeline (diffusers' ``from_pretrained(..., torch_dtype=...)``, ``pipe.to``): the
        decode runs in fp32 as in training, with the weights as that cast rounded them."""
        for module in (self.vae.post_quant_conv, self.vae.decoder):
            if module is not None and any(p.dtype != torch.float32 for p in module.parameters()):
                nn.Module.to(module, dtype=torch.float32)

    def _output(self, prediction: Tensor, output_type: str) -> DepthMasterDepthOutput:
        """(N, 1, H, W) prediction -> the output dataclass in ``output_type``."""
        if output_type == "np":
            prediction = self.image_processor.pt_to_numpy(prediction.cpu())
        target = self.config.target
        return DepthMasterDepthOutput(
            prediction=prediction, target=target, near_is_one=near_is_one(target)
        )

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """diffusers' ``save_pretrained``, then the code: this file, ``modeling_depthmaster.py``
        and ``tiling_depthmaster.py`` beside ``model_index.json``, the modeling file also in
        ``unet/`` and ``empty_prompt/``, named there as ``[file, class]``, so
        ``DiffusionPipeline.from_pretrained(folder,
        trust_remote_code=True)`` needs no dm_lightning."""
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        index = json.loads((folder / "model_index.json").read_text())
        index["_class_name"] = [MODULE_NAME, type(self).__name__]
        modeling = inspect.getfile(DepthMasterUNet)
        shutil.copyfile(__file__, folder / f"{MODULE_NAME}.py")
        shutil.copyfile(modeling, folder / f"{MODELING_MODULE}.py")
        tiling = Path(__file__).with_name(f"{TILING_MODULE}.py")
        shutil.copyfile(tiling, folder / f"{TILING_MODULE}.py")
        for name in ("unet", "empty_prompt"):
            component = getattr(self, name)
            if isinstance(component, (DepthMasterUNet, EmptyPromptEmbedding)):
                index[name] = [MODELING_MODULE, type(component).__name__]
                shutil.copyfile(modeling, folder / name / f"{MODELING_MODULE}.py")
        (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        torch_dtype: torch.dtype | None = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> DepthMasterPipeline:
        """A DepthMaster pipeline from a folder or hub id, weights checked strictly.

        With dm_lightning installed, anything its ``load_depthmaster`` reads (exports, the
        released DepthMaster folder, SD-2 folders, ``.ckpt`` files); without it, a folder
        written by :meth:`save_pretrained`.

        ``torch_dtype`` or ``dtype`` (e.g. ``torch.bfloat16``) holds the U-Net and VAE encoder
        in it; decoder and FE block stay fp32, as ``predict_images(dtype=...)`` holds them.
        """
        if torch_dtype is not None and dtype is not None and torch_dtype != dtype:
            raise ValueError(f"got torch_dtype={torch_dtype} and dtype={dtype}: pass one")
        dtype = dtype or torch_dtype
        try:
            loading = importlib.import_module("dm_lightning.models.pipeline_loading")
        except ImportError:
            pipe = cls._from_export(str(pretrained_model_name_or_path), **kwargs)
        else:
            pipe = loading.load_pipeline(pretrained_model_name_or_path, cls, **kwargs)
        if dtype is not None:
            # nn.Module.to: the same cast as ModelMixin.to without its warning about modules to
            # keep in fp32 (the FE block keeps itself fp32; the empty prompt is cast per call).
            for module in (pipe.unet, pipe.vae.encoder, pipe.vae.quant_conv):
                if module is not None:  # quant_conv: None in VAEs without one
                    nn.Module.to(module, dtype=dtype)
        return pipe

    @classmethod
    def _from_export(cls, path: str, **kwargs: Any) -> DepthMasterPipeline:
        """A folder (or hub repository) written by :meth:`save_pretrained`, each component's
        weights checked against its config (diffusers alone only logs keys that do not fit)."""
        folder = Path(path).expanduser()
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(path, **kwargs))
        index_file = folder / "model_index.json"
        index = json.loads(index_file.read_text()) if index_file.is_file() else {}
        vae = _load_strictly(AutoencoderKL, folder / "vae")
        unet = _load_strictly(DepthMasterUNet, folder / "unet")
        if (folder / EMPTY_PROMPT_FOLDER).is_dir():
            empty_prompt = _load_strictly(EmptyPromptEmbedding, folder / EMPTY_PROMPT_FOLDER)
        else:  # an export written before model_index.json
            from safetensors.torch import load_file

            tensor = load_file(str(folder / LEGACY_EMPTY_PROMPT_FILE))["embedding"]
            empty_prompt = EmptyPromptEmbedding.from_tensor(tensor)
        config = {k: index[k] for k in ("target", "default_processing_resolution") if k in index}
        return cls(vae, unet, empty_prompt, **config)


def _load_strictly(model_class: type, folder: Path) -> Any:
    """``model_class.from_pretrained(folder)``; weights that do not fit its config raise."""
    model, info = model_class.from_pretrained(folder, output_loading_info=True)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys") and v}
    if bad:
        raise ValueError(f"weights in {folder} do not match its config.json: {bad}")
    return model
