"""DepthMaster's additions to a diffusers U-Net: feature taps (forward hooks reading a block's
output, for Feature Alignment) and the Fourier Enhancement block, which
:class:`~dm_lightning.models.modeling_depthmaster.DepthMasterUNet` carries as a config flag.

No U-Net code is copied: hooks read or replace block outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from diffusers import UNet2DConditionModel
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from dm_lightning.errors import ConfigError
from dm_lightning.models.modeling_depthmaster import (
    FFT_ATTRIBUTE,
    DepthMasterUNet,
    FourierEnhancement,
)

TAP_LOCATIONS = ("mid", "down1", "down2", "down3", "down4")


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
    """Records the output of one U-Net block: on every forward (``always``), or only inside
    :meth:`recording` (``always=False``: the U-Net's other forwards, such as evaluation's, leave
    nothing behind).

    Down blocks return ``(hidden_states, residuals)``; the tap keeps ``hidden_states``
    (B, C, h, w). Use :meth:`pop` after the forward to take (and clear) the feature.
    """

    def __init__(
        self, unet: UNet2DConditionModel, location: str = "mid", always: bool = True
    ) -> None:
        self.location = location
        self.channels = tap_channels(unet, location)
        self._always = self._recording = always
        self._feature: Tensor | None = None
        self._handle: RemovableHandle = tap_module(unet, location).register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._recording:
            self._feature = output[0] if isinstance(output, tuple) else output

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """The tap records the forwards inside the block; a block that raises keeps nothing."""
        self._recording = True
        try:
            yield
        except BaseException:
            self._feature = None
            raise
        finally:
            self._recording = self._always

    def pop(self) -> Tensor:
        if self._feature is None:
            raise RuntimeError(f"feature tap '{self.location}' saw no forward pass")
        feature, self._feature = self._feature, None
        return feature

    def remove(self) -> None:
        self._handle.remove()


def as_depthmaster_unet(unet: UNet2DConditionModel) -> DepthMasterUNet:
    """``unet`` as a :class:`DepthMasterUNet` (itself if it is one).

    A stock ``UNet2DConditionModel`` (built by hand, or loaded by code that predates the class)
    is converted in place, without copying its weights: with ``fourier_enhancement`` off a
    :class:`DepthMasterUNet` holds exactly the stock U-Net's state, only its class and two
    config entries differ.

    Raises:
        TypeError: another subclass of ``UNet2DConditionModel`` (its own behaviour would be lost).
    """
    if isinstance(unet, DepthMasterUNet):
        return unet
    if type(unet) is not UNet2DConditionModel:
        raise TypeError(f"expected a diffusers UNet2DConditionModel, got {type(unet).__name__}")
    unet.__class__ = DepthMasterUNet
    unet.register_to_config(fourier_enhancement=False, fourier_groups=8)
    return unet  # type: ignore[return-value]


def attach_fourier_enhancement(
    unet: UNet2DConditionModel, block: FourierEnhancement | None = None
) -> FourierEnhancement:
    """Insert an FE block between the mid block and the first up block (stage 2).

    The block becomes ``unet.fftblock`` (so ``unet.state_dict()`` and ``save_pretrained`` carry
    ``fftblock.*`` keys exactly as the released DepthMaster U-Net does) and the U-Net's config
    records it (``fourier_enhancement: true``), so a saved U-Net loads with it.
    """
    return as_depthmaster_unet(unet).enable_fourier_enhancement(block)


def has_fourier_enhancement(unet: nn.Module) -> bool:
    return isinstance(getattr(unet, FFT_ATTRIBUTE, None), FourierEnhancement)
