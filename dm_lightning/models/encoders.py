"""Frozen external encoders for Feature Alignment (SPEC section 3).

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
        with torch.no_grad():
            return self.encode(rgb)

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

        kwargs = {"dynamic_img_size": True, "num_classes": 0, **(model_kwargs or {})}
        self.model = timm.create_model(model_name, pretrained=False, **kwargs)
        if weights is not None:
            load_encoder_weights(self.model, weights)
        cfg = self.model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        patch = self.model.patch_embed.patch_size
        self.patch_size = (int(patch[0]), int(patch[1]))
        self.embed_dim = int(self.model.embed_dim)
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


def load_encoder_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local encoder checkpoint into a timm ViT, whatever its key layout.

    Accepts safetensors or torch files holding a state dict (optionally under ``model`` or
    ``state_dict``). Depth-Anything-V2 checkpoints keep the encoder under ``pretrained.``;
    Meta's DINOv2 layout is converted by timm's own checkpoint filter.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: weights for the model's parameters are missing or have other shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
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
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("head")]
    if missing:
        raise ValueError(
            f"encoder weights {path} do not fit {type(model).__name__}: missing {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''} (unexpected: {result.unexpected_keys[:8]})"
        )
