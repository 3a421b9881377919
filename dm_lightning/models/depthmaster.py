"""The DepthMaster network as a plain ``nn.Module`` (SPEC section 1), usable without Lightning.

RGB -> VAE posterior mean x scaling factor -> U-Net (timestep 1, empty-prompt embedding) ->
depth latent -> VAE decoder -> channel mean. One U-Net pass, no noise, no scheduler.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor, nn

from dm_lightning.errors import ConfigError, MissingPathError
from dm_lightning.models.state_dicts import SHOWN_KEYS, describe_keys, load_state_dict_file
from dm_lightning.models.unet_hooks import FFT_ATTRIBUTE, attach_fourier_enhancement

log = logging.getLogger(__name__)

EMPTY_PROMPT_FILE = "empty_prompt_embedding.safetensors"
METADATA_FILE = "dm_lightning.json"
# Weight files of a diffusers model folder (unet/, vae/), in the order diffusers prefers them.
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def signed_rgb(rgb: Tensor) -> Tensor:
    """uint8 RGB (B, 3, H, W) in [0, 255] -> float in [-1, 1], the network's input range."""
    return rgb.float() / 127.5 - 1.0


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
            raise ConfigError(
                f"U-Net in_channels={unet.config.in_channels} but the VAE has "
                f"latent_channels={vae.config.latent_channels}: DepthMaster feeds the RGB "
                "latent alone"
            )
        emb_dim = empty_prompt_embedding.shape[-1]
        if empty_prompt_embedding.ndim != 3 or emb_dim != unet.config.cross_attention_dim:
            raise ConfigError(
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


HUB_PREFIX = "hf://"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_model_path(
    path_or_id: str | Path, subfolders: tuple[str, ...] = ("vae", "unet")
) -> Path:
    """A local model folder, or a Hugging Face hub repository fetched (once) into the HF cache.

    Which one a value names:

    - ``hf://owner/name`` always names a hub repository;
    - an existing folder is used as it is;
    - otherwise the value is a hub id only if it has the form ``owner/name``, does not start
      with ``.``, ``/`` or ``~``, and its first component (``owner``) is not an existing local
      folder. So ``runs/export`` while ``runs/`` exists is a missing local folder (a typo, or a
      run that has not exported yet), never fetched: write ``hf://runs/export`` for a hub
      repository of that name.

    A :class:`~pathlib.Path` is always a local folder.

    Raises:
        MissingPathError: a local folder that does not exist, or a hub repository that cannot
            be fetched.
        ConfigError: an ``hf://`` value that is not of the form ``hf://owner/name``.
    """
    if isinstance(path_or_id, Path):
        if not path_or_id.expanduser().is_dir():
            raise MissingPathError(f"model folder {path_or_id} not found")
        return path_or_id.expanduser()
    if path_or_id.startswith(HUB_PREFIX):
        repo = path_or_id[len(HUB_PREFIX) :]
        if not _HUB_ID.fullmatch(repo):
            raise ConfigError(
                f"model path {path_or_id!r}: expected hf://owner/name (a Hugging Face hub "
                "repository id)"
            )
        return _fetch_from_hub(repo, subfolders)
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise MissingPathError(
            f"model path {path_or_id} is a file; expected a folder with vae/ and unet/"
        )
    first = path_or_id.split("/", 1)[0]
    looks_local = path_or_id.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(path_or_id)
    if not looks_local and Path(first).is_dir():
        raise MissingPathError(
            f"model folder {path_or_id} not found; {first}/ exists, so this is taken for a local "
            f"path; use {HUB_PREFIX}{path_or_id} for a hub repository"
        )
    if looks_local:
        raise MissingPathError(
            f"model folder {path_or_id} not found (expected a diffusers folder with vae/ and "
            f"unet/, a hub id like stabilityai/stable-diffusion-2, or {HUB_PREFIX}owner/name)"
        )
    return _fetch_from_hub(path_or_id, subfolders)


def _fetch_from_hub(repo: str, subfolders: tuple[str, ...]) -> Path:
    from huggingface_hub import snapshot_download

    patterns = [f"{s}/*" for s in subfolders] + [EMPTY_PROMPT_FILE, METADATA_FILE, "*.json"]
    patterns += ["text_encoder/*", "tokenizer/*"]
    try:
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MissingPathError(
            f"cannot fetch model {repo!r} from the Hugging Face hub: {reason}"
        ) from err


def load_unet(folder: str | Path) -> UNet2DConditionModel:
    """Load a U-Net folder (``config.json`` + weights), attaching the FE block when the weights
    carry ``fftblock.*`` keys (the released DepthMaster model, our stage-2 exports).

    Both paths are strict: stock folders go through ``UNet2DConditionModel.from_pretrained``
    (which only logs keys that do not fit; here they are an error), FE folders through
    ``load_state_dict``.

    Raises:
        MissingPathError: the folder, its ``config.json`` or its weights file is missing.
        ConfigError: the weights do not match the config (lists missing and unexpected keys),
            or the weights file is not a plain state dict.
    """
    folder = Path(folder)
    weights = _model_folder_files(folder, "U-Net")
    if weights is None:  # sharded: diffusers reads the index
        return _from_pretrained_strict(UNet2DConditionModel, folder, "U-Net")
    state = None
    if weights.suffix == ".safetensors":
        keys = _safetensors_keys(weights)
    else:
        state = load_state_dict_file(weights, "U-Net weights")
        keys = list(state)
    if not any(k.startswith(FFT_ATTRIBUTE + ".") for k in keys):
        return _from_pretrained_strict(UNet2DConditionModel, folder, "U-Net")
    if state is None:
        state = load_state_dict_file(weights, "U-Net weights")
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder))
    attach_fourier_enhancement(unet)
    _load_state_dict_strict(unet, state, weights)
    return unet


def _model_folder_files(folder: Path, what: str) -> Path | None:
    """Check a diffusers model folder: ``config.json`` and a weights file (returned; None for
    a sharded checkpoint)."""
    if not folder.is_dir():
        raise MissingPathError(f"{what} folder not found: {folder}")
    if not (folder / "config.json").is_file():
        raise MissingPathError(
            f"{what} folder {folder} has no config.json (expected a diffusers model folder: "
            f"config.json + {WEIGHT_FILES[0]})"
        )
    weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None and not any((folder / f"{n}.index.json").is_file() for n in WEIGHT_FILES):
        raise MissingPathError(
            f"{what} folder {folder} has no weights file (expected {' or '.join(WEIGHT_FILES)})"
        )
    return weights


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as err:  # SafetensorError: not a safetensors file, truncated header
        raise ConfigError(f"weights {path} are not a readable safetensors file: {err}") from err


def _from_pretrained_strict(cls: type, folder: Path, what: str) -> Any:
    """``cls.from_pretrained(folder)``, with keys that do not fit the config as an error."""
    try:
        model, info = cls.from_pretrained(folder, output_loading_info=True)
    except ValueError as err:  # a weight of another shape than the config's
        raise ConfigError(f"{what} weights in {folder} do not fit its config.json: {err}") from err
    mismatch = describe_keys(info["missing_keys"], info["unexpected_keys"])
    if mismatch:
        raise ConfigError(f"{what} weights in {folder} do not match its config.json: {mismatch}")
    return model


def _load_state_dict_strict(module: nn.Module, state: dict[str, Tensor], weights: Path) -> None:
    """``load_state_dict(strict=True)`` whose mismatches are a :class:`ConfigError` listing the
    keys (and shapes)."""
    own = module.state_dict()
    mismatch = describe_keys(set(own) - set(state), set(state) - set(own))
    if mismatch:
        raise ConfigError(
            f"U-Net weights {weights} do not match {weights.parent / 'config.json'} plus the FE "
            f"block: {mismatch}"
        )
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sorted(state.items())
        if tuple(v.shape) != tuple(own[k].shape)
    ]
    if shapes:
        more = f" and {len(shapes) - SHOWN_KEYS} more" if len(shapes) > SHOWN_KEYS else ""
        raise ConfigError(
            f"U-Net weights {weights} do not fit {weights.parent / 'config.json'}: "
            f"{len(shapes)} shapes differ {shapes[:SHOWN_KEYS]}{more}"
        )
    module.load_state_dict(state, strict=True)


def load_empty_prompt_embedding(folder: Path, cache_dir: str | Path | None = None) -> Tensor:
    """The (1, 2, D) embedding of the empty prompt.

    Read from ``empty_prompt_embedding.safetensors`` in the folder, else from the cache, else
    computed once from ``text_encoder/`` + ``tokenizer/`` (needs ``pip install
    dm_lightning[text]``) and cached, so the text encoder is never kept in memory.
    """
    from safetensors.torch import save_file

    own = folder / EMPTY_PROMPT_FILE
    if own.is_file():
        return _embedding_from(own)
    cache_root = Path(cache_dir or Path.home() / ".cache" / "dm_lightning" / "empty_prompt")
    cached = cache_root / (str(folder.resolve()).strip("/").replace("/", "--") + ".safetensors")
    if cached.is_file():
        return _embedding_from(cached)
    if not (folder / "text_encoder").is_dir() or not (folder / "tokenizer").is_dir():
        raise MissingPathError(
            f"{folder} has neither {EMPTY_PROMPT_FILE} nor text_encoder/ + tokenizer/ to compute "
            "the empty-prompt embedding from"
        )
    embedding = compute_empty_prompt_embedding(folder)
    cache_root.mkdir(parents=True, exist_ok=True)
    save_file({"embedding": embedding.contiguous()}, str(cached))
    log.info("cached the empty-prompt embedding of %s at %s", folder, cached)
    return embedding


def _embedding_from(path: Path) -> Tensor:
    state = load_state_dict_file(path, "empty-prompt embedding")
    if "embedding" not in state:
        raise ConfigError(
            f"empty-prompt embedding file {path} has no 'embedding' tensor (keys: "
            f"{sorted(state)[:SHOWN_KEYS]})"
        )
    return state["embedding"]


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
    path: str | Path,
    unet_path: str | None = None,
    cache_dir: str | Path | None = None,
) -> DepthMaster:
    """Build :class:`DepthMaster` from a diffusers-layout folder or hub id.

    Args:
        path: folder (or hub id) with ``vae/`` and ``unet/``: SD-2 base weights, the released
            DepthMaster model, or a dm_lightning export.
        unet_path: a U-Net folder to use instead of ``path/unet`` (e.g. a stage-1 export).
        cache_dir: where a computed empty-prompt embedding is cached.

    Raises:
        MissingPathError: the folder (see :func:`resolve_model_path` for what is a hub id), its
            ``vae/`` or ``unet/``, a ``config.json`` or weights file, or the empty-prompt
            embedding (and the text encoder to compute it) is missing.
        ConfigError: weights that do not match their config (the keys are listed), or a
            weights file that is not a plain state dict.
    """
    folder = resolve_model_path(path)
    where = str(folder) if str(folder) == str(path) else f"{path} ({folder})"
    for sub in ("vae",) if unet_path else ("vae", "unet"):
        if not (folder / sub).is_dir():
            raise MissingPathError(
                f"model folder {where} has no {sub}/ subfolder (expected a diffusers layout "
                "with vae/ and unet/)"
            )
    _model_folder_files(folder / "vae", "VAE")
    vae = _from_pretrained_strict(AutoencoderKL, folder / "vae", "VAE")
    unet = load_unet(Path(unet_path).expanduser() if unet_path else folder / "unet")
    embedding = load_empty_prompt_embedding(folder, cache_dir)
    return DepthMaster(vae, unet, embedding)
