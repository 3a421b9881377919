"""Attach DepthMaster's additions to a stock diffusers ``UNet2DConditionModel`` via hooks.

No U-Net code is copied: a forward hook on a block reads its output (feature taps for Feature
Alignment) or replaces it (the Fourier Enhancement block after the mid block).
"""

from __future__ import annotations

import functools
from typing import Any

from diffusers import UNet2DConditionModel
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from dm_lightning.errors import ConfigError
from dm_lightning.models.fourier import FourierEnhancement

TAP_LOCATIONS = ("mid", "down1", "down2", "down3", "down4")
FFT_ATTRIBUTE = "fftblock"  # the released checkpoint's attribute name


def tap_module(unet: UNet2DConditionModel, location: str) -> nn.Module:
    """The block whose output a tap at ``location`` reads ("mid" or "downK", K from 1)."""
    if location == "mid":
        return unet.mid_block
    if location.startswith("down") and location[4:].isdigit():
        index = int(location[4:]) - 1
        if 0 <= index < len(unet.down_blocks):
            return unet.down_blocks[index]
    raise ConfigError(
        f"unknown feature tap location {location!r}; expected 'mid' or 'down1'.."
        f"'down{len(unet.down_blocks)}'"
    )


def tap_channels(unet: UNet2DConditionModel, location: str) -> int:
    """Channel count of the tapped feature (1280 for SD-2's mid block)."""
    if location == "mid":
        return unet.config.block_out_channels[-1]
    tap_module(unet, location)  # validates the name
    return unet.config.block_out_channels[int(location[4:]) - 1]


class FeatureTap:
    """Records the output of one U-Net block on every forward.

    Down blocks return ``(hidden_states, residuals)``; the tap keeps ``hidden_states``
    (B, C, h, w). Use :meth:`pop` after the forward to take (and clear) the feature.
    """

    def __init__(self, unet: UNet2DConditionModel, location: str = "mid") -> None:
        self.location = location
        self.channels = tap_channels(unet, location)
        self._feature: Tensor | None = None
        self._handle: RemovableHandle = tap_module(unet, location).register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        self._feature = output[0] if isinstance(output, tuple) else output

    def pop(self) -> Tensor:
        if self._feature is None:
            raise RuntimeError(f"feature tap '{self.location}' saw no forward pass")
        feature, self._feature = self._feature, None
        return feature

    def remove(self) -> None:
        self._handle.remove()


def _replace_output(block: nn.Module, module: nn.Module, args: Any, output: Tensor) -> Tensor:
    # A module-level function in a partial (not a lambda) keeps the U-Net picklable, which
    # ddp_spawn and copy.deepcopy need.
    return block(output)


def attach_fourier_enhancement(
    unet: UNet2DConditionModel, block: FourierEnhancement | None = None
) -> FourierEnhancement:
    """Insert an FE block between the mid block and the first up block.

    The block becomes ``unet.fftblock`` (so ``unet.state_dict()`` and ``save_pretrained`` carry
    ``fftblock.*`` keys exactly as the released DepthMaster U-Net does) and a forward hook on
    ``unet.mid_block`` replaces the mid output with ``fftblock(mid_output)``.
    """
    if has_fourier_enhancement(unet):
        raise ValueError("this U-Net already has a Fourier Enhancement block")
    if block is None:
        block = FourierEnhancement(unet.config.block_out_channels[-1])
    unet.add_module(FFT_ATTRIBUTE, block)
    unet.mid_block.register_forward_hook(functools.partial(_replace_output, block))
    return block


def has_fourier_enhancement(unet: nn.Module) -> bool:
    return isinstance(getattr(unet, FFT_ATTRIBUTE, None), FourierEnhancement)
