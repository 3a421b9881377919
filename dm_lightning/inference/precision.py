"""Half-precision inference: hold the U-Net and the VAE encoder in bf16 / fp16 while the VAE
decoder and the Fourier Enhancement block stay fp32, as in mixed-precision training
(:func:`cast_for_inference`).

Why these parts: the U-Net and the encoder carry the compute and the memory; the decode runs
in fp32 (:meth:`~dm_lightning.models.depthmaster.DepthMaster.predict` decodes the latent in
fp32: bf16's step of ~0.004 on [-1, 1] would move aligned far depth by over 1 %), and the FE
block keeps fp32 parameters and computes in fp32 (``torch.fft`` has no bf16 kernels and fp16
FFTs lose the phase; :class:`~dm_lightning.models.fourier.FourierEnhancement`). Both halves
run on the CPU as well as on GPUs (torch 2.14: bf16 and fp16 convolutions have CPU kernels).
"""

from __future__ import annotations

import torch

from dm_lightning.errors import ConfigError
from dm_lightning.models.depthmaster import DepthMaster

#: Names accepted by ``--model.init_args.inference_dtype`` and ``predict_images(dtype=...)``.
INFERENCE_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def inference_dtype(value: str | torch.dtype | None, where: str = "dtype") -> torch.dtype | None:
    """The torch dtype for an inference-dtype option (None = leave the model as loaded).

    Raises:
        ConfigError: anything but ``fp32``, ``bf16``, ``fp16`` (or those torch dtypes).
    """
    if value is None:
        return None
    if isinstance(value, torch.dtype) and value in INFERENCE_DTYPES.values():
        return value
    if isinstance(value, str) and value in INFERENCE_DTYPES:
        return INFERENCE_DTYPES[value]
    raise ConfigError(
        f"{where} must be one of {', '.join(INFERENCE_DTYPES)} (or null: as loaded), got {value!r}"
    )


def cast_for_inference(net: DepthMaster, dtype: torch.dtype | None) -> DepthMaster:
    """Hold ``net``'s U-Net and VAE encoder in ``dtype`` for inference (in place; returns
    ``net``); the VAE decoder and the FE block stay fp32. None leaves the model as it is.

    The encoder's fp32 weights are kept by
    :meth:`~dm_lightning.models.depthmaster.DepthMaster.cast_frozen_encoder`, so a later
    export still writes the VAE as loaded.
    """
    if dtype is None:
        return net
    # nn.Module.to, not diffusers' ModelMixin.to: the latter warns on every dtype cast that
    # some modules "should be kept in float32" even when its list of them is empty. The FE
    # block, a child of the U-Net, keeps itself fp32 (FourierEnhancement._apply).
    torch.nn.Module.to(net.unet, dtype)
    net.cast_frozen_encoder(dtype)
    return net
