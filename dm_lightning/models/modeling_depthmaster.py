"""The model components of DepthMaster's diffusers pipeline: ``DepthMasterUNet`` (SD-2's U-Net
with the optional Fourier Enhancement block as a config flag) and ``EmptyPromptEmbedding``.

Self-contained like :mod:`dm_lightning.models.pipeline_depthmaster` (torch and diffusers only):
exports carry a copy of this file in ``unet/`` and ``empty_prompt/`` (``model_index.json`` names
``["modeling_depthmaster", class]``) and beside the pipeline file, which imports it.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import Tensor, nn

MODULE_NAME = Path(__file__).stem  # the file's name inside an export, for model_index.json
FFT_ATTRIBUTE = "fftblock"  # the released checkpoint's attribute name


class FourierEnhancement(nn.Module):
    """Frequency + spatial refinement of the U-Net mid-block feature (docs/method.md §4).

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
            raise ValueError(f"FE channels {channels} not divisible by GroupNorm groups {groups}")
        self.norm = nn.GroupNorm(groups, channels)
        self.conv_f1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_f2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_f4 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_f3 = nn.Conv2d(channels, channels, 1)
        self.conv_s1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_s2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.fuse = nn.Conv2d(2 * channels, channels, 1)

    def _apply(self, fn, recurse: bool = True):
        # Keep the block's parameters fp32 through any cast (e.g. Lightning's bf16-true, a
        # pipeline's torch_dtype), since it computes in fp32; device moves still apply. A cast
        # away from fp32 is not applied at all: casting and casting back would leave the
        # weights rounded to the half format.
        def keep_fp32(t: Tensor) -> Tensor:
            out = fn(t)
            if not t.is_floating_point() or out.dtype == torch.float32:
                return out
            return t.to(device=out.device, dtype=torch.float32, copy=True)

        return super()._apply(keep_fp32, recurse)

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


def _replace_output(block: nn.Module, module: nn.Module, args: Any, output: Tensor) -> Tensor:
    # A module-level function in a partial (not a lambda) keeps the U-Net picklable, which
    # ddp_spawn and copy.deepcopy need.
    return block(output)


class DepthMasterUNet(UNet2DConditionModel):
    """SD-2's ``UNet2DConditionModel`` with DepthMaster's optional FE block after the mid block.

    The config adds ``fourier_enhancement`` (bool) and ``fourier_groups`` (GroupNorm groups of
    the block; its width is the mid block's, ``block_out_channels[-1]``), so ``save_pretrained``
    / ``from_pretrained`` round-trip the block. With the flag off it is the stock U-Net. The
    block is ``self.fftblock`` (the released weights' names) and replaces the mid block's output
    through a forward hook the class installs itself, so no diffusers U-Net code is copied.
    """

    # diffusers' from_pretrained(..., torch_dtype=half) reads these weights as fp32 from the
    # file: the block computes in fp32, and its own _apply does not run on that load path
    # (fp16/bf16 weights there made the block's fp32 convolutions fail on their dtype).
    _keep_in_fp32_modules = [FFT_ATTRIBUTE]

    def __init__(self, *, fourier_enhancement: bool = False, fourier_groups: int = 8, **config):
        super().__init__(**config)
        self.register_to_config(fourier_enhancement=False, fourier_groups=fourier_groups)
        if fourier_enhancement:
            self.enable_fourier_enhancement()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """diffusers' ``from_pretrained``, with the weights copied into memory of their own."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info
        # Tensors memory-mapped from a safetensors file can sit at unaligned addresses, which
        # sends CPU kernels down another path (float32 results differ by ~1e-6): own copies
        # make a folder give the same numbers however it is loaded.
        with torch.no_grad():
            for tensor in itertools.chain(model.parameters(), model.buffers()):
                tensor.data = tensor.data.clone()
        return loaded

    def enable_fourier_enhancement(
        self, block: FourierEnhancement | None = None
    ) -> FourierEnhancement:
        """Insert an FE block (a new one by default) and record it in the config."""
        if isinstance(getattr(self, FFT_ATTRIBUTE, None), FourierEnhancement):
            raise ValueError("this U-Net already has a Fourier Enhancement block")
        if block is None:
            block = FourierEnhancement(
                self.config.block_out_channels[-1], self.config.fourier_groups
            )
        self.add_module(FFT_ATTRIBUTE, block)
        self.mid_block.register_forward_hook(functools.partial(_replace_output, block))
        self.register_to_config(fourier_enhancement=True, fourier_groups=block.norm.num_groups)
        return block


# diffusers reads a model's config keys from its __init__ signature: declare the stock U-Net's
# keys plus ours, so from_config passes them all through **config.
_stock = [p for p in inspect.signature(UNet2DConditionModel.__init__).parameters.values()]
DepthMasterUNet.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    _stock
    + [
        inspect.Parameter("fourier_enhancement", inspect.Parameter.KEYWORD_ONLY, default=False),
        inspect.Parameter("fourier_groups", inspect.Parameter.KEYWORD_ONLY, default=8),
    ]
)


class EmptyPromptEmbedding(ModelMixin, ConfigMixin):
    """The (1, tokens, dim) text embedding of ``""`` the U-Net is conditioned on, as a
    diffusers component (``empty_prompt/`` in a model folder), so no text encoder is needed."""

    @register_to_config
    def __init__(self, tokens: int = 2, dim: int = 1024) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(1, tokens, dim), requires_grad=False)

    @classmethod
    def from_tensor(cls, embedding: Tensor) -> EmptyPromptEmbedding:
        module = cls(tokens=embedding.shape[1], dim=embedding.shape[2])
        module.embedding.data.copy_(embedding.detach().float().cpu())
        return module
