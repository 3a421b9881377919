"""Inference in bf16 / fp16 (dm_lightning.inference.precision) and batches of images of mixed
sizes (dm_lightning.inference.batching) against fp32 and batch size 1."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import batched_rounding_atol
from PIL import Image

from dm_lightning import load_depthmaster, predict_images
from dm_lightning.errors import ConfigError
from dm_lightning.inference.batching import predict_batch
from dm_lightning.inference.precision import cast_for_inference, inference_dtype
from dm_lightning.models.unet_hooks import attach_fourier_enhancement
from dm_lightning.testing.tiny_model import make_tiny_depthmaster

REPO = Path(__file__).resolve().parent.parent
WILD = REPO / "tests" / "data" / "in_the_wild"


def half_path_layers(net) -> int:
    """Convolutions and linear layers the half-precision path runs in sequence-ish (U-Net and
    VAE encoder): each rounds its output to the half dtype once."""
    kinds = (torch.nn.Conv2d, torch.nn.Linear)
    return sum(isinstance(m, kinds) for part in (net.unet, net.vae.encoder) for m in part.modules())


@pytest.mark.parametrize("name, mantissa_bits", [("bf16", 8), ("fp16", 11)])
def test_half_precision_matches_fp32_within_its_rounding(name, mantissa_bits):
    """Tolerance from the format: unit roundoff u = 2^-p (p = 8 significant bits for bf16,
    11 for fp16). Each of the L layers held in half precision rounds its output with relative
    error <= u on activations of order 1 (GroupNorm keeps them so), and the decode (fp32)
    maps the latent to [0, 1] with a gain of order 1. Worst case the errors add: max error
    <= L * u; as independent roundings they add in quadrature: RMS error <= sqrt(L) * u."""
    torch.manual_seed(0)
    net = make_tiny_depthmaster(0).eval()
    attach_fourier_enhancement(net.unet)
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        ref = net.predict(x, None)
        half = cast_for_inference(copy.deepcopy(net), inference_dtype(name))
        out = half.predict(x, None)
    dtype = inference_dtype(name)
    assert half.unet.conv_in.weight.dtype == half.vae.encoder.conv_in.weight.dtype == dtype
    # The decode and the FE block stay fp32, as in training.
    assert half.vae.decoder.conv_in.weight.dtype == torch.float32
    assert {p.dtype for p in half.unet.fftblock.parameters()} == {torch.float32}
    assert out.dtype == torch.float32 and 0.0 <= float(out.min()) <= float(out.max()) <= 1.0
    u, layers = 2.0**-mantissa_bits, half_path_layers(net)
    error = (out - ref).abs()
    assert float(error.max()) <= layers * u
    assert float(error.pow(2).mean().sqrt()) <= math.sqrt(layers) * u
    assert float(error.max()) > 0  # it did run in half precision


def test_inference_dtype_is_checked():
    assert inference_dtype(None) is None and inference_dtype("fp32") is torch.float32
    with pytest.raises(ConfigError, match=r"dtype must be one of fp32, bf16, fp16 .*'float8'"):
        inference_dtype("float8")


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """Five photos of four sizes: two pairs share a working size at 64 px, one is alone."""
    folder = tmp_path_factory.mktemp("mixed")
    photo = Image.open(WILD / "06.jpg")
    for name, size in {
        "a": (96, 64), "b": (97, 65), "c": (64, 96), "d": (64, 96), "e": (120, 40),
    }.items():  # fmt: skip
        photo.resize(size).save(folder / f"{name}.png")
    return folder


def test_mixed_size_batches_equal_batch_size_one(tiny_model, mixed_folder, tmp_path):
    """Batch size 4 over images of mixed sizes gives the maps of batch size 1, up to float32
    rounding of batched convolutions (helpers.batched_rounding_atol: 2.6e-5 for the tiny
    model)."""
    net = load_depthmaster(tiny_model).eval()
    atol = batched_rounding_atol(net)
    predict_images(net, mixed_folder, tmp_path / "one", 64, batch_size=1, progress=False)
    predict_images(net, mixed_folder, tmp_path / "four", 64, batch_size=4, progress=False)
    for name in "abcde":
        one = np.load(tmp_path / "one" / f"{name}.npy")
        four = np.load(tmp_path / "four" / f"{name}.npy")
        size = Image.open(mixed_folder / f"{name}.png").size
        assert one.shape == four.shape == size[::-1]
        np.testing.assert_allclose(four, one, rtol=0, atol=atol)
    # The grouping: images of one working size run as one batch (two groups of two here).
    images = [
        torch.from_numpy(np.asarray(Image.open(mixed_folder / f"{n}.png")).copy()).permute(2, 0, 1)
        for n in "abcd"
    ]
    calls: list[tuple[int, ...]] = []
    original = net.predict

    def spy(x, res=None):
        calls.append(tuple(x.shape))
        return original(x, res)

    net.predict = spy  # type: ignore[method-assign]
    with torch.inference_mode():
        out = predict_batch(net, images, 64)
    assert sorted(calls) == [(2, 3, 40, 64), (2, 3, 64, 40)]
    assert [tuple(d.shape) for d in out] == [(1, 64, 96), (1, 65, 97), (1, 96, 64), (1, 96, 64)]
