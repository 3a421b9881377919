"""Loading DepthMaster model folders: local diffusers-layout folders or hub repositories.

:func:`load_depthmaster` builds a :class:`~dm_lightning.models.depthmaster.DepthMaster` from
``vae/`` and ``unet/`` (an ``fftblock.*`` U-Net included) and the empty-prompt embedding
(computed once from the text encoder and cached when a folder lacks it). Every mismatch of
weights and config is a :class:`~dm_lightning.errors.ConfigError` naming the keys; every
missing part a :class:`~dm_lightning.errors.MissingPathError`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch import Tensor, nn

from dm_lightning.errors import ConfigError, MissingPathError
from dm_lightning.models.depthmaster import EMPTY_PROMPT_FILE, DepthMaster
from dm_lightning.models.model_facts import (
    is_checkpoint_path,
    recorded_facts,
    recorded_method,
    recorded_task,
)
from dm_lightning.models.model_paths import resolve_model_path
from dm_lightning.models.modeling_depthmaster import DepthMasterUNet
from dm_lightning.models.stage_checkpoint import network_weights, read_checkpoint
from dm_lightning.models.state_dicts import (
    SHOWN_KEYS,
    describe_keys,
    load_state_dict_file,
    shape_mismatches,
)
from dm_lightning.models.unet_hooks import FFT_ATTRIBUTE, attach_fourier_enhancement

log = logging.getLogger(__name__)

# Weight files of a diffusers model folder (unet/, vae/), in the order diffusers prefers them.
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def load_unet(folder: str | Path) -> DepthMasterUNet:
    """Load a U-Net folder (``config.json`` + weights) as a ``DepthMasterUNet``, its FE block on
    when the weights carry ``fftblock.*`` keys (the released model's stock config omits it).

    Both paths are strict: stock folders go through ``DepthMasterUNet.from_pretrained``
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
        return _from_pretrained_strict(DepthMasterUNet, folder, "U-Net")
    state = None
    if weights.suffix == ".safetensors":
        keys = _safetensors_keys(weights)
    else:
        state = load_state_dict_file(weights, "U-Net weights")
        keys = list(state)
    if not any(k.startswith(FFT_ATTRIBUTE + ".") for k in keys):
        return _from_pretrained_strict(DepthMasterUNet, folder, "U-Net")
    state = load_state_dict_file(weights, "U-Net weights") if state is None else state
    config = {**DepthMasterUNet.load_config(folder), "fourier_enhancement": True}
    unet = DepthMasterUNet.from_config(config)
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
    shapes = shape_mismatches(state, own)
    if shapes:
        raise ConfigError(
            f"U-Net weights {weights} do not fit {weights.parent / 'config.json'}: {shapes}"
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
    """Build :class:`DepthMaster` from a diffusers-layout folder, a hub id, or a Lightning
    checkpoint (``.ckpt``) of a stage run, with the facts the model records as ``net.facts``
    (:func:`~dm_lightning.models.model_facts.recorded_facts`: target, predict's long edge).

    Args:
        path: folder (or hub id) with ``vae/`` and ``unet/``: SD-2 base weights, the released
            DepthMaster model, or a dm_lightning export; or a ``.ckpt`` file of ``Stage1`` /
            ``Stage2`` (see :func:`load_depthmaster_checkpoint`).
        unet_path: a U-Net folder to use instead of ``path/unet`` (e.g. a stage-1 export);
            not with a checkpoint, which holds its U-Net.
        cache_dir: where a computed empty-prompt embedding is cached.

    Raises:
        MissingPathError: the folder (see :func:`~dm_lightning.models.model_paths.
            resolve_model_path` for what is a hub id), its ``vae/`` or ``unet/``, a
            ``config.json`` or weights file, or the empty-prompt embedding (and the text
            encoder to compute it) is missing.
        ConfigError: weights that do not match their config (the keys are listed), or a
            weights file that is not a plain state dict.
    """
    if is_checkpoint_path(path):
        if unet_path:
            raise ConfigError(
                f"unet_path {unet_path} cannot be combined with the checkpoint {path}: the "
                "checkpoint holds its own U-Net"
            )
        return load_depthmaster_checkpoint(path, cache_dir)
    folder = resolve_model_path(path)
    check_method(path, "dm_lightning.DepthMasterTask (DepthMaster)", folder=folder)
    net = DepthMaster(*_load_parts(path, folder, unet_path, cache_dir))
    net.facts = recorded_facts(folder)
    return net


def load_model_parts(
    path: str | Path,
    unet_path: str | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[AutoencoderKL, DepthMasterUNet, Tensor]:
    """The VAE, the U-Net (``unet_path`` or ``path/unet``) and the empty-prompt embedding
    (1, T, D) of a diffusers-layout folder or hub id, each loaded strictly; what
    :class:`DepthMaster` and the baselines (:mod:`dm_lightning.baselines`) are built from.
    Raises as :func:`load_depthmaster`."""
    return _load_parts(path, resolve_model_path(path), unet_path, cache_dir)


def _load_parts(
    path: str | Path, folder: Path, unet_path: str | None, cache_dir: str | Path | None
) -> tuple[AutoencoderKL, DepthMasterUNet, Tensor]:
    """:func:`load_model_parts` of ``path``, resolved to the local ``folder``."""
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
    return vae, unet, embedding


def check_method(
    path: str | Path, wanted: str, method: str | None = None, folder: Path | None = None
) -> None:
    """Refuse a model folder that records another method (``dm_lightning.json``'s ``method``
    and ``task``, written by the baselines' exports) than ``method`` (None: DepthMaster,
    whose exports record no method): its network needs its own task class. ``folder``: the
    local folder ``path`` resolved to (a hub id's), read instead of ``path``."""
    recorded = recorded_method(folder or path)
    if recorded != method:
        task = recorded_task(folder or path) or "its own task class"
        raise ConfigError(
            f"model folder {path} holds a model of the {recorded or 'DepthMaster'} method, not "
            f"one for "
            f"{wanted}: load it with --model {task if recorded else 'dm_lightning.DepthMasterTask'}"
        )


def load_depthmaster_checkpoint(
    path: str | Path, cache_dir: str | Path | None = None
) -> DepthMaster:
    """The network of a ``Stage1`` / ``Stage2`` Lightning checkpoint (``last.ckpt``,
    ``best-*.ckpt``, a signal's resumable checkpoint), with the facts it records.

    Checkpoints leave the frozen VAE out, so the network is built from the checkpoint's
    ``model_path`` (and ``unet_path``) hyper-parameters, which must still exist, with an FE
    block when the checkpoint's network weights have ``unet.fftblock.*``; then those weights
    are loaded (:func:`~dm_lightning.models.stage_checkpoint.network_weights`: a full
    checkpoint of an EMA run gives the averaged weights, what the export would hold). The file
    is memory-mapped with ``weights_only=True``
    (:func:`~dm_lightning.models.stage_checkpoint.read_checkpoint`).

    Raises:
        MissingPathError: no file at ``path``, or the checkpoint's ``model_path`` is gone.
        ConfigError: a file that is not a dm_lightning stage checkpoint (no ``state_dict`` or
            ``model_path``), holds pickled objects, or whose ``net.*`` weights do not fit the
            network built from its ``model_path`` (the keys are listed).
    """
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    base = hparams.get("model_path")
    if not isinstance(checkpoint.get("state_dict"), dict) or not base:
        raise ConfigError(
            f"checkpoint {path} has no state_dict and model_path hyper-parameter: expected a "
            "checkpoint of a dm_lightning stage run (Stage1, Stage2)"
        )
    try:
        net = load_depthmaster(base, hparams.get("unet_path"), cache_dir)
    except MissingPathError as err:
        raise MissingPathError(
            f"checkpoint {path} needs its model_path {base} (checkpoints leave out the frozen "
            f"VAE and the empty-prompt embedding, which come from there): {err}"
        ) from err
    state = network_weights(checkpoint)
    del checkpoint  # the weights now live in state (mapped), then in net
    if any(k.startswith(f"unet.{FFT_ATTRIBUTE}.") for k in state) and not hasattr(
        net.unet, FFT_ATTRIBUTE
    ):
        attach_fourier_enhancement(net.unet)
    own = net.state_dict()
    # the frozen VAE is the one of model_path; everything else must come from the checkpoint
    missing = [k for k in own if k not in state and not k.startswith("vae.")]
    detail = describe_keys(missing, set(state) - set(own)) or shape_mismatches(state, own)
    if detail:
        raise ConfigError(
            f"checkpoint {path}: its net.* weights do not fit the network built from its "
            f"model_path {base}: {detail}"
        )
    net.load_state_dict(state, strict=False)
    net.facts = recorded_facts(path)
    return net
