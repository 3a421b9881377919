"""Fourier Enhancement (FE) block of DepthMaster stage 2 (docs/method.md §4).

It lives in :mod:`dm_lightning.models.modeling_depthmaster`, the self-contained module an export
ships to diffusers users; this is its historical import path.
"""

from dm_lightning.models.modeling_depthmaster import FourierEnhancement, spectrum_phase

__all__ = ["FourierEnhancement", "spectrum_phase"]
