"""Fourier Enhancement (FE) block of DepthMaster stage 2 (docs/method.md §4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dm_lightning.errors import ConfigError


class FourierEnhancement(nn.Module):
    """Frequency + spatial refinement of the U-Net mid-block feature.

    Parameter names follow the released DepthMaster U-Net (``fftblock.*``) so its state dict
    loads strictly: ``conv_f2`` filters the amplitude, ``conv_f4`` the phase and ``conv_f3`` is
    the 1x1 output of the frequency branch.

    Args:
        channels: C, the mid-block width (1280 for SD-2).
        groups: GroupNorm groups (8 in the paper).

    Shapes: (B, C, h, w) -> (B, C, h, w), any h, w.
    """

    def __init__(self, channels: int = 1280, groups: int = 8) -> None:
        super().__init__()
        if channels % groups:
            raise ConfigError(f"FE channels {channels} not divisible by GroupNorm groups {groups}")
        self.norm = nn.GroupNorm(groups, channels)
        self.conv_f1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_f2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_f4 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_f3 = nn.Conv2d(channels, channels, 1)
        self.conv_s1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_s2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.fuse = nn.Conv2d(2 * channels, channels, 1)

    def _apply(self, fn, recurse: bool = True):
        # Keep the block's parameters fp32 through any cast (e.g. Lightning's bf16-true), since
        # it computes in fp32; device moves still apply.
        super()._apply(fn, recurse)
        return super()._apply(lambda t: t.float() if t.is_floating_point() else t, recurse)

    def forward(self, feature: Tensor) -> Tensor:
        dtype = feature.dtype
        # torch.fft has no bf16 kernels and fp16 FFTs lose the phase: always compute in fp32.
        with torch.autocast(device_type=feature.device.type, enabled=False):
            x0 = self.norm(feature.float())
            h, w = x0.shape[-2:]
            a = F.silu(self.conv_f1(x0))
            spectrum = torch.fft.rfft2(a, norm="ortho")
            amplitude = F.silu(self.conv_f2(spectrum.abs()))
            phase = F.silu(self.conv_f4(spectrum.angle()))
            spectrum = torch.complex(amplitude * torch.cos(phase), amplitude * torch.sin(phase))
            freq = self.conv_f3(torch.fft.irfft2(spectrum, s=(h, w), norm="ortho") + a)
            spatial = self.conv_s2(F.silu(self.conv_s1(x0))) + x0
            out = self.fuse(torch.cat([spatial, freq], dim=1))
        return out.to(dtype)
