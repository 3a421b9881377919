"""The DepthMaster network as a plain ``nn.Module`` (SPEC section 1), usable without Lightning.

RGB -> VAE posterior mean x scaling factor -> U-Net (timestep 1, empty-prompt embedding) ->
depth latent -> VAE decoder -> channel mean. One U-Net pass, no noise, no scheduler.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor, nn

from dm_lightning.models.unet_hooks import FFT_ATTRIBUTE, attach_fourier_enhancement

log = logging.getLogger(__name__)

EMPTY_PROMPT_FILE = "empty_prompt_embedding.safetensors"
METADATA_FILE = "dm_lightning.json"
UNET_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class DepthMaster(nn.Module):
    """Single-step diffusion depth estimator.

    Args:
        vae: SD-2 ``AutoencoderKL`` (frozen by the trainers).
        unet: stock ``UNet2DConditionModel`` with 4 input channels, optionally carrying an FE
            block as ``unet.fftblock`` (see :func:`attach_fourier_enhancement`).
        empty_prompt_embedding: (1, T, cross_attention_dim) text embedding of ``""``.
    """

    def __init__(
        self, vae: AutoencoderKL, unet: UNet2DConditionModel, empty_prompt_embedding: Tensor
    ) -> None:
        super().__init__()
        if unet.config.in_channels != vae.config.latent_channels:
            raise ValueError(
                f"U-Net in_channels={unet.config.in_channels} but the VAE has "
                f"latent_channels={vae.config.latent_channels}: DepthMaster feeds the RGB "
                "latent alone"
            )
        emb_dim = empty_prompt_embedding.shape[-1]
        if empty_prompt_embedding.ndim != 3 or emb_dim != unet.config.cross_attention_dim:
            raise ValueError(
                f"empty-prompt embedding must be (1, T, {unet.config.cross_attention_dim}), "
                f"got {tuple(empty_prompt_embedding.shape)}"
            )
        self.vae = vae
        self.unet = unet
        # Not persistent: it comes with the model folder, checkpoints need not carry it.
        self.register_buffer("empty_prompt_embedding", empty_prompt_embedding, persistent=False)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_factor(self) -> int:
        """Pixels per latent cell (8 for SD-2), derived from the VAE config."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 4, H/f, W/f) latent = posterior mean x scaling factor."""
        return self.vae.encode(image).latent_dist.mean * self.scaling_factor

    def denoise(self, latent: Tensor) -> Tensor:
        """One U-Net pass at timestep 1: RGB latent -> depth latent, both (B, 4, h, w)."""
        b = latent.shape[0]
        context = self.empty_prompt_embedding.to(latent.dtype).expand(b, -1, -1)
        timestep = torch.ones(b, device=latent.device, dtype=torch.long)
        return self.unet(latent, timestep, encoder_hidden_states=context).sample

    def decode(self, latent: Tensor) -> Tensor:
        """(B, 4, h, w) depth latent -> (B, 1, h*f, w*f), mean of the 3 decoded channels."""
        return self.vae.decode(latent / self.scaling_factor).sample.mean(dim=1, keepdim=True)

    def forward(self, image: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> raw decoded depth (B, 1, H, W), nominally in [-1, 1]."""
        return self.decode(self.denoise(self.encode(image)))

    @torch.no_grad()
    def predict(self, image: Tensor, processing_res: int | None = None) -> Tensor:
        """Relative depth of an image batch at its own size.

        Args:
            image: (B, 3, H, W), uint8 in [0, 255] or float in [0, 1].
            processing_res: long-edge size to run the network at (None = native size); the
                working size is rounded to a multiple of the VAE factor.

        Returns:
            (B, 1, H, W) float in [0, 1]; for the default target 1 = near (normalised
            square-root disparity).
        """
        x = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        h, w = x.shape[-2:]
        size = self.working_size(h, w, processing_res)
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        param = next(self.unet.parameters())
        latent = self.denoise(self.encode(x.to(param.device, param.dtype) * 2.0 - 1.0))
        # Decode in fp32 even under bf16 autocast: bf16's step (~0.004) on [-1, 1] would move
        # aligned depth by over 1% at far range.
        with torch.autocast(device_type=latent.device.type, enabled=False):
            raw = self.decode(latent.float()).clamp(-1.0, 1.0)  # clip before resizing (SPEC)
        if size != (h, w):
            raw = F.interpolate(
                raw, size=(h, w), mode="bilinear", align_corners=False, antialias=True
            )
        return (raw + 1.0) / 2.0

    def working_size(self, height: int, width: int, processing_res: int | None) -> tuple[int, int]:
        """Network input size: long edge scaled to ``processing_res``, rounded to multiples of
        the VAE factor."""
        scale = 1.0 if processing_res is None else processing_res / max(height, width)
        f = self.latent_factor
        return (max(f, round(height * scale / f) * f), max(f, round(width * scale / f) * f))

    def save_pretrained(self, path: str | Path, metadata: dict | None = None) -> Path:
        """Write a diffusers-layout folder: ``unet/`` (with ``fftblock.*`` if present), ``vae/``,
        the empty-prompt embedding and ``dm_lightning.json``; :func:`load_depthmaster` reads it."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(path / "unet", safe_serialization=True)
        self.vae.save_pretrained(path / "vae", safe_serialization=True)
        save_file(
            {"embedding": self.empty_prompt_embedding.detach().cpu().contiguous()},
            str(path / EMPTY_PROMPT_FILE),
        )
        meta = {"fourier_enhancement": hasattr(self.unet, FFT_ATTRIBUTE), **(metadata or {})}
        (path / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return path


def resolve_model_path(path_or_id: str, subfolders: tuple[str, ...] = ("vae", "unet")) -> Path:
    """A local folder as is; otherwise a Hugging Face hub id, fetched (once) into the HF cache.

    Raises:
        FileNotFoundError: neither a local folder nor a reachable hub repository.
    """
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        return local
    if local.is_absolute() or path_or_id.startswith(".") or path_or_id.count("/") != 1:
        raise FileNotFoundError(
            f"model folder not found: {path_or_id} (expected a diffusers folder with vae/ and "
            f"unet/, or a hub id like 'stabilityai/stable-diffusion-2')"
        )
    from huggingface_hub import snapshot_download

    patterns = [f"{s}/*" for s in subfolders] + [EMPTY_PROMPT_FILE, METADATA_FILE, "*.json"]
    patterns += ["text_encoder/*", "tokenizer/*"]
    try:
        return Path(snapshot_download(path_or_id, allow_patterns=patterns))
    except Exception as err:
        raise FileNotFoundError(f"cannot fetch model {path_or_id!r} from the hub: {err}") from err


def load_unet(folder: str | Path) -> UNet2DConditionModel:
    """Load a U-Net folder (``config.json`` + weights), attaching the FE block when the weights
    carry ``fftblock.*`` keys (the released DepthMaster model, our stage-2 exports).

    Stock folders go through ``UNet2DConditionModel.from_pretrained``; FE folders are loaded
    strictly, so a missing or unexpected key is an error.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no U-Net config.json in {folder}")
    weights = next((folder / n for n in UNET_WEIGHT_FILES if (folder / n).is_file()), None)
    state = _read_state_dict(weights) if weights is not None else None
    if state is None or not any(k.startswith(FFT_ATTRIBUTE + ".") for k in state):
        return UNet2DConditionModel.from_pretrained(folder)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder))
    attach_fourier_enhancement(unet)
    unet.load_state_dict(state, strict=True)
    return unet


def load_empty_prompt_embedding(folder: Path, cache_dir: str | Path | None = None) -> Tensor:
    """The (1, 2, D) embedding of the empty prompt.

    Read from ``empty_prompt_embedding.safetensors`` in the folder, else from the cache, else
    computed once from ``text_encoder/`` + ``tokenizer/`` (needs ``pip install
    dm_lightning[text]``) and cached, so the text encoder is never kept in memory.
    """
    from safetensors.torch import load_file, save_file

    own = folder / EMPTY_PROMPT_FILE
    if own.is_file():
        return load_file(str(own))["embedding"]
    cache_root = Path(cache_dir or Path.home() / ".cache" / "dm_lightning" / "empty_prompt")
    cached = cache_root / (str(folder.resolve()).strip("/").replace("/", "--") + ".safetensors")
    if cached.is_file():
        return load_file(str(cached))["embedding"]
    if not (folder / "text_encoder").is_dir() or not (folder / "tokenizer").is_dir():
        raise FileNotFoundError(
            f"{folder} has neither {EMPTY_PROMPT_FILE} nor text_encoder/ + tokenizer/ to compute "
            "the empty-prompt embedding from"
        )
    embedding = compute_empty_prompt_embedding(folder)
    cache_root.mkdir(parents=True, exist_ok=True)
    save_file({"embedding": embedding.contiguous()}, str(cached))
    log.info("cached the empty-prompt embedding of %s at %s", folder, cached)
    return embedding


def compute_empty_prompt_embedding(folder: Path) -> Tensor:
    """CLIP text-encoder output for ``""`` tokenised without padding: (1, 2, D) for SD-2."""
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as err:
        raise ImportError(
            "computing the empty-prompt embedding needs transformers: "
            "pip install 'dm_lightning[text]'"
        ) from err
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    ids = tokenizer("", padding="do_not_pad", return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids)[0].float().cpu()


def load_depthmaster(
    path: str,
    unet_path: str | None = None,
    cache_dir: str | Path | None = None,
) -> DepthMaster:
    """Build :class:`DepthMaster` from a diffusers-layout folder or hub id.

    Args:
        path: folder (or hub id) with ``vae/`` and ``unet/``: SD-2 base weights, the released
            DepthMaster model, or a dm_lightning export.
        unet_path: a U-Net folder to use instead of ``path/unet`` (e.g. a stage-1 export).
        cache_dir: where a computed empty-prompt embedding is cached.
    """
    folder = resolve_model_path(path)
    for sub in ("vae", "unet"):
        if not (folder / sub).is_dir():
            raise FileNotFoundError(f"model folder {folder} has no {sub}/ subfolder")
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    unet = load_unet(Path(unet_path) if unet_path else folder / "unet")
    embedding = load_empty_prompt_embedding(folder, cache_dir)
    return DepthMaster(vae, unet, embedding)


def _read_state_dict(weights: Path) -> dict[str, Tensor]:
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(weights))
    return torch.load(weights, map_location="cpu", weights_only=True)
