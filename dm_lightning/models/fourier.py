"""Fourier Enhancement (FE) block of DepthMaster stage 2 (docs/method.md §4)."""

from __future__ import annotations

import math

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
            phase = F.silu(self.conv_f4(spectrum_phase(spectrum, w)))
            spectrum = torch.complex(amplitude * torch.cos(phase), amplitude * torch.sin(phase))
            freq = self.conv_f3(torch.fft.irfft2(spectrum, s=(h, w), norm="ortho") + a)
            spatial = self.conv_s2(F.silu(self.conv_s1(x0))) + x0
            out = self.fuse(torch.cat([spatial, freq], dim=1))
        return out.to(dtype)


def spectrum_phase(spectrum: Tensor, width: int) -> Tensor:
    """``spectrum.angle()`` of an ``rfft2`` of a real (..., h, ``width``) input, in radians in
    (-pi, pi], with the bins that are real by construction given exactly 0 or pi.

    The DC and Nyquist rows and columns' corner bins ((0 or h/2) x (0 or width/2)) are real for
    every real input. PyTorch's FFT gives them an imaginary part of exactly +0, so ``angle`` is
    0 or +pi there. Other FFTs (onnxruntime's DFT) leave float noise of either sign (~1e-7) in
    that imaginary part, and the angle of a negative real bin flips between +pi and -pi (the
    branch cut); the FE block's phase branch then differs by 2 pi there. Choosing those bins'
    phase from the sign of the real part alone, with a shape-derived mask (``torch.where``,
    which no graph optimiser folds away for dynamic sizes), gives every runtime PyTorch's own
    numbers: bit-identical in PyTorch, exact under onnxruntime.

    Args:
        spectrum: (..., h, width // 2 + 1) complex, ``torch.fft.rfft2`` of a real input.
        width: the real input's last size (the column count the spectrum came from).

    Returns:
        (..., h, width // 2 + 1) real phase, the dtype of ``spectrum.real``.
    """
    real = spectrum.real
    h, columns = spectrum.shape[-2:]
    rows = torch.arange(h, device=real.device)
    cols = torch.arange(columns, device=real.device)
    real_rows = (rows == 0) | (rows * 2 == h)
    real_cols = (cols == 0) | (cols * 2 == width)
    real_bins = real_rows[:, None] & real_cols[None, :]
    zero = torch.zeros((), dtype=real.dtype, device=real.device)
    pi = torch.full((), math.pi, dtype=real.dtype, device=real.device)
    return torch.where(real_bins, torch.where(real < 0, pi, zero), spectrum.angle())
