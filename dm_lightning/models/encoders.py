"""Frozen external encoders for Feature Alignment (docs/method.md §3).

Any encoder plugs in by subclassing :class:`AlignmentEncoder`: it owns its input preparation
(normalisation, resizing) and returns patch tokens on a grid. :class:`TimmEncoder` covers
DINOv2, CLIP, MAE and any other timm ViT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dm_lightning.errors import ConfigError, MissingPathError
from dm_lightning.models.state_dicts import (
    describe_keys,
    load_state_dict_file,
    shape_mismatches,
)

# timm names that are resolved by timm itself (hub or local folders), not its model registry.
TIMM_SOURCE_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")


class AlignmentEncoder(nn.Module):
    """Interface of a Feature Alignment encoder.

    Subclasses set ``embed_dim`` (D, the token width) and implement :meth:`encode`. The module is
    frozen and kept in eval mode; it runs during training only, under ``torch.no_grad``.
    """

    embed_dim: int

    def encode(self, rgb: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Patch tokens of an image batch.

        Args:
            rgb: (B, 3, H, W) float in [0, 1].

        Returns:
            tokens (B, h * w, D) in row-major grid order, patch tokens only (no class or
            register tokens); and the grid size (h, w).
        """
        raise NotImplementedError

    def forward(self, rgb: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """:meth:`encode` without gradients, the image cast to the encoder's weight dtype
        (bf16 when the task holds frozen modules in the compute dtype) and the tokens
        returned in fp32 for the alignment loss."""
        weight = next((p for p in self.parameters() if p.is_floating_point()), None)
        if weight is not None:
            rgb = rgb.to(weight.dtype)
        with torch.no_grad():
            tokens, grid = self.encode(rgb)
        return tokens.float(), grid

    def freeze(self) -> AlignmentEncoder:
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> AlignmentEncoder:
        # Frozen encoders stay in eval mode (dropout, drop-path off) whatever the trainer asks.
        return super().train(False)


class TimmEncoder(AlignmentEncoder):
    """A timm ViT as alignment encoder.

    Args:
        model_name: timm model name, e.g. ``vit_large_patch14_dinov2``,
            ``vit_large_patch14_clip_224``, ``vit_large_patch16_224.mae``.
        weights: local checkpoint file (timm/safetensors, Meta's DINOv2 layout, or a
            Depth-Anything-V2 checkpoint with the encoder under ``pretrained.``), or None to
            keep the random initialisation (tests, tiny configs).
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``depth``, ``embed_dim`` for
            tiny test encoders).
        input_scale: resize factor applied to the image before the encoder (0.875 puts a /14
            patch grid at latent/2 for SD-2's /8 VAE).
        signed_input: reproduce the original code, which applied the encoder's mean/std to the
            image in [-1, 1] instead of [0, 1].

    Raises:
        ConfigError: ``model_name`` is not a timm model (close names are suggested), timm
            rejects ``model_kwargs``, the model is not a ViT with patch tokens, or
            ``model_kwargs["embed_dim"]`` is not the width of the tokens the model returns.
        MissingPathError: ``weights`` does not exist (checked before the model is built).
    """

    def __init__(
        self,
        model_name: str = "vit_large_patch14_dinov2",
        weights: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        input_scale: float = 0.875,
        signed_input: bool = False,
    ) -> None:
        super().__init__()
        import timm

        check_timm_model_name(model_name)
        if weights is not None and not Path(weights).expanduser().is_file():
            raise MissingPathError(
                f"encoder weights file not found: {weights} (encoder.init_args.weights of "
                f"{model_name})"
            )
        kwargs = {"dynamic_img_size": True, "num_classes": 0, **(model_kwargs or {})}
        try:
            self.model = timm.create_model(model_name, pretrained=False, **kwargs)
        except TypeError as err:  # an argument the model class does not take
            raise ConfigError(
                f"timm model {model_name} does not accept encoder model_kwargs "
                f"{model_kwargs}: {err}"
            ) from err
        if not hasattr(self.model, "patch_embed"):
            raise ConfigError(
                f"timm model {model_name} ({type(self.model).__name__}) has no patch_embed: "
                "TimmEncoder needs a ViT that returns patch tokens"
            )
        width = int(getattr(self.model, "num_features", self.model.embed_dim))
        declared = (model_kwargs or {}).get("embed_dim")
        if declared is not None and int(declared) != width:
            raise ConfigError(
                f"encoder {model_name}: model_kwargs.embed_dim={declared} but the timm model "
                f"returns tokens of width {width}; the projector is sized from the token width"
            )
        if weights is not None:
            load_encoder_weights(self.model, Path(weights).expanduser())
        cfg = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        patch = self.model.patch_embed.patch_size
        self.patch_size = (int(patch[0]), int(patch[1]))
        self.embed_dim = width
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 1))
        self.input_scale = input_scale
        self.signed_input = signed_input
        self.freeze()

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Encoder input size: ``input_scale`` x image size, rounded to whole patches."""
        ph, pw = self.patch_size
        return (
            max(ph, round(height * self.input_scale / ph) * ph),
            max(pw, round(width * self.input_scale / pw) * pw),
        )

    def encode(self, rgb: Tensor) -> tuple[Tensor, tuple[int, int]]:
        x = rgb * 2.0 - 1.0 if self.signed_input else rgb
        x = (x - self.mean) / self.std
        size = self.input_size(*rgb.shape[-2:])
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False)
        tokens = self.model.forward_features(x)[:, self.num_prefix_tokens :]
        grid = (size[0] // self.patch_size[0], size[1] // self.patch_size[1])
        return tokens, grid


def check_timm_model_name(model_name: str) -> None:
    """Raise :class:`ConfigError` naming ``model_name`` (with close timm names) unless timm
    knows it; ``hf-hub:`` and ``local-dir:`` names are left to timm."""
    import difflib

    import timm

    if model_name.startswith(TIMM_SOURCE_PREFIXES) or timm.is_model(model_name):
        return
    close = difflib.get_close_matches(model_name.split(".")[0], timm.list_models(), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models('vit_*')"
    raise ConfigError(
        f"unknown timm encoder model_name {model_name!r}: {hint} (TimmEncoder takes timm "
        "ViT names such as vit_large_patch14_dinov2)"
    )


def load_encoder_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local encoder checkpoint into a timm ViT, whatever its key layout.

    Accepts safetensors or torch files holding a state dict (optionally under ``model`` or
    ``state_dict``). Depth-Anything-V2 checkpoints keep the encoder under ``pretrained.``;
    Meta's DINOv2 layout is converted by timm's own checkpoint filter.

    Raises:
        MissingPathError: the file does not exist.
        ConfigError: weights for the model's parameters are missing or have other shapes, or
            the file is not a plain state dict (pickled objects are refused, not run).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"encoder weights file not found: {path}")
    state = load_state_dict_file(path, "encoder weights")
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), dict):
            state = state[key]
    if any(k.startswith("pretrained.") for k in state):
        state = {
            k[len("pretrained.") :]: v for k, v in state.items() if k.startswith("pretrained.")
        }
    filter_fn = getattr(
        __import__(type(model).__module__, fromlist=["_"]), "checkpoint_filter_fn", None
    )
    if filter_fn is not None:
        state = filter_fn(state, model)
    shapes = shape_mismatches(state, model.state_dict())
    if shapes:
        raise ConfigError(
            f"encoder weights {path} do not fit {type(model).__name__} (check model_name and "
            f"model_kwargs): {shapes}"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("head")]
    if missing:
        raise ConfigError(
            f"encoder weights {path} do not fit {type(model).__name__}: "
            f"{describe_keys(missing, result.unexpected_keys)}"
        )
