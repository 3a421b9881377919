"""Depth targets, training losses and the LR schedule against independent numpy references.

docs/method.md §2 (targets), §3 (latent MSE, feature alignment, schedule) and §4 (pixel MSE, L_h).
Every expected value is computed here in plain numpy (or written out by hand), never by the
code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dm_lightning.losses import (
    directional_gradients,
    feature_alignment_cosine,
    feature_alignment_kl,
    gradient_loss,
    inverted_huber,
    latent_valid_mask,
    masked_latent_mse,
    masked_mse,
)
from dm_lightning.targets import Depth, Disparity, SqrtDisparity, get_target
from dm_lightning.training.schedule import warmup_exponential_decay

# ---------------------------------------------------------------------------------------------
# numpy references
# ---------------------------------------------------------------------------------------------

NP_FORWARD = {
    "sqrt_disparity": lambda d: np.sqrt(1.0 / d),
    "disparity": lambda d: 1.0 / d,
    "depth": lambda d: d,
}

TARGET_CASES = [
    pytest.param(SqrtDisparity, "sqrt_disparity", id="sqrt_disparity"),
    pytest.param(Disparity, "disparity", id="disparity"),
    pytest.param(Depth, "depth", id="depth"),
]


def np_normalize(depth, valid, space, lower=0.02, upper=0.98):
    """docs/method.md §2: per-image quantile normalisation of the target on valid pixels,
    -1 elsewhere."""
    out = np.full(depth.shape, -1.0)
    for i in range(depth.shape[0]):
        m = valid[i]
        if not m.any():
            continue
        s = NP_FORWARD[space](depth[i][m].astype(np.float64))
        lo, hi = np.quantile(s, [lower, upper])  # default method: linear interpolation
        out[i][m] = np.clip(2.0 * (s - lo) / (hi - lo) - 1.0, -1.0, 1.0)
    return out


def np_block_all(valid, factor):
    """(B, 1, H, W) bool -> (B, 1, H/f, W/f): True where every pixel of the block is True."""
    b, c, h, w = valid.shape
    return valid.reshape(b, c, h // factor, factor, w // factor, factor).all(axis=(3, 5))


def np_masked_mse(pred, target, valid):
    m = np.broadcast_to(valid, pred.shape).astype(np.float64)
    return float((m * (pred.astype(np.float64) - target) ** 2).sum() / m.sum())


def np_directional(x):
    """x: (..., H, W) -> dict of the four (..., H-1, W-1) differences (docs/method.md §4 /
    docstring), each anchored at the bottom-right pixel (i+1, j+1) of its 2x2 cell, as the
    released code."""
    x = x.astype(np.float64)
    h, w = x.shape[-2:]
    out = {k: np.zeros(x.shape[:-2] + (h - 1, w - 1)) for k in ("dx", "dy", "d45", "d135")}
    for i in range(h - 1):
        for j in range(w - 1):
            out["dx"][..., i, j] = x[..., i + 1, j + 1] - x[..., i + 1, j]
            out["dy"][..., i, j] = x[..., i + 1, j + 1] - x[..., i, j + 1]
            out["d45"][..., i, j] = x[..., i + 1, j + 1] - x[..., i, j]
            out["d135"][..., i, j] = x[..., i + 1, j] - x[..., i, j + 1]
    return out


def np_berhu(e, delta):
    a = np.abs(e)
    return np.where(a <= delta, delta * a, (e**2 + delta**2) / 2.0)


def np_gradient_loss(pred, target, valid, delta=0.2):
    m = valid.astype(np.float64)
    gp = np_directional(pred * m)
    gt = np_directional(target * m)
    errors = np.stack([gp[k] - gt[k] for k in ("dx", "dy", "d45", "d135")])
    return float(np_berhu(errors, delta).mean())


def np_log_softmax(x):
    x = x.astype(np.float64)
    z = x - x.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_kl(unet, enc):
    lp_u = np_log_softmax(unet)
    lp_e = np_log_softmax(enc)
    return float((np.exp(lp_e) * (lp_e - lp_u)).mean())


def np_cosine(unet, enc):
    u = unet.astype(np.float64)
    e = enc.astype(np.float64)
    cos = (u * e).sum(-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(e, axis=-1))
    return float(1.0 - cos.mean())


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


# ---------------------------------------------------------------------------------------------
# targets (docs/method.md §2)
# ---------------------------------------------------------------------------------------------


def random_depth_batch(rng, fractions, shape=(24, 32)):
    """Log-uniform depth in [0.5, 80] m; invalid pixels hold garbage (0, inf, nan, negative)."""
    b = len(fractions)
    depth = np.exp(rng.uniform(np.log(0.5), np.log(80.0), (b, 1) + shape)).astype(np.float32)
    valid = rng.random((b, 1) + shape) < np.asarray(fractions)[:, None, None, None]
    garbage = rng.choice(np.array([0.0, np.inf, np.nan, -3.0], dtype=np.float32), depth.shape)
    depth = np.where(valid, depth, garbage).astype(np.float32)
    return depth, valid


@pytest.mark.parametrize(("cls", "space"), TARGET_CASES)
def test_normalize_matches_numpy_quantiles(cls, space):
    rng = np.random.default_rng(0)
    depth, valid = random_depth_batch(rng, [0.9, 0.5, 0.1])
    assert all(valid[i].sum() > 20 for i in range(3))
    out = cls().normalize(t(depth), t(valid)).numpy()
    ref = np_normalize(depth, valid, space)
    assert out.shape == depth.shape
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5)
    assert (out[~valid] == -1.0).all()
    assert out.min() >= -1.0 and out.max() <= 1.0
    for i in range(3):
        v = out[i][valid[i]]
        # the extreme valid values lie beyond the 2%/98% quantiles, so they are clipped exactly
        assert v.min() == -1.0 and v.max() == 1.0
        # about 96% of the valid pixels lie strictly inside (-1, 1)
        inside = ((v > -1.0) & (v < 1.0)).mean()
        assert 0.85 < inside < 0.99


def test_normalize_custom_quantiles_match_numpy():
    rng = np.random.default_rng(1)
    depth, valid = random_depth_batch(rng, [0.7, 0.3])
    out = SqrtDisparity(0.1, 0.9).normalize(t(depth), t(valid)).numpy()
    np.testing.assert_allclose(
        out, np_normalize(depth, valid, "sqrt_disparity", 0.1, 0.9), rtol=0, atol=2e-5
    )


@pytest.mark.parametrize(("cls", "space"), TARGET_CASES)
def test_normalize_image_without_valid_pixel_stays_minus_one(cls, space):
    rng = np.random.default_rng(2)
    depth, valid = random_depth_batch(rng, [0.6, 0.0, 0.4])
    assert not valid[1].any()
    out = cls().normalize(t(depth), t(valid)).numpy()
    assert (out[1] == -1.0).all()
    # the other images are normalised on their own, unaffected by the empty one
    np.testing.assert_allclose(out, np_normalize(depth, valid, space), rtol=0, atol=2e-5)
    alone = cls().normalize(t(depth[2:]), t(valid[2:])).numpy()
    np.testing.assert_array_equal(out[2:], alone)


@pytest.mark.parametrize(("cls", "space"), TARGET_CASES)
def test_normalize_is_per_image_scale_invariant(cls, space):
    rng = np.random.default_rng(3)
    depth, valid = random_depth_batch(rng, [0.8, 0.5, 0.3])
    depth = np.where(valid, depth, 1.0).astype(np.float32)
    scales = np.array([0.1, 3.7, 42.0], dtype=np.float32)[:, None, None, None]
    a = cls().normalize(t(depth), t(valid)).numpy()
    b = cls().normalize(t(depth * scales), t(valid)).numpy()
    np.testing.assert_allclose(a, b, rtol=0, atol=2e-5)


@pytest.mark.parametrize(("cls", "space"), TARGET_CASES)
def test_forward_and_inverse_round_trip(cls, space):
    rng = np.random.default_rng(4)
    d = np.exp(rng.uniform(np.log(1e-2), np.log(1e3), (2, 1, 5, 6)))
    target = cls()
    value = target.forward(t(d))
    np.testing.assert_allclose(value.numpy(), NP_FORWARD[space](d), rtol=1e-12)
    np.testing.assert_allclose(target.inverse(value).numpy(), d, rtol=1e-12)


def test_sqrt_disparity_hand_values():
    d = torch.tensor([0.25, 1.0, 4.0, 100.0], dtype=torch.float64)
    np.testing.assert_allclose(SqrtDisparity().forward(d).numpy(), [2.0, 1.0, 0.5, 0.1])
    np.testing.assert_allclose(
        SqrtDisparity().inverse(torch.tensor([2.0, 0.5], dtype=torch.float64)).numpy(),
        [0.25, 4.0],
    )


# ---------------------------------------------------------------------------------------------
# latent mask and masked MSE (docs/method.md §3, §4)
# ---------------------------------------------------------------------------------------------


def test_latent_valid_mask_hand_worked_16x16():
    valid = torch.ones(2, 1, 16, 16, dtype=torch.bool)
    # image 0: one invalid pixel at row 7, col 8 (last row of block-row 0, first col of
    # block-col 1) and the whole bottom-left block invalid
    valid[0, 0, 7, 8] = False
    valid[0, 0, 8:16, 0:8] = False
    # image 1: only the very last pixel invalid
    valid[1, 0, 15, 15] = False
    out = latent_valid_mask(valid, 8)
    assert out.shape == (2, 1, 2, 2)
    assert out.dtype == torch.bool
    expected = torch.tensor([[[[True, False], [False, True]]], [[[True, True], [True, False]]]])
    assert torch.equal(out, expected)


@pytest.mark.parametrize("factor", [4, 8])
def test_latent_valid_mask_matches_numpy_block_all(factor):
    rng = np.random.default_rng(5)
    # ~1% invalid pixels: with 64 pixels per 8x8 block, roughly half the cells stay valid
    valid = rng.random((3, 1, 32, 48)) > 0.01
    out = latent_valid_mask(t(valid), factor).numpy()
    ref = np_block_all(valid, factor)
    assert 0 < ref.sum() < ref.size
    np.testing.assert_array_equal(out, ref)


def test_masked_mse_matches_numpy_with_channel_broadcast():
    rng = np.random.default_rng(6)
    pred = rng.standard_normal((2, 3, 8, 10)).astype(np.float32)
    target = rng.standard_normal((2, 3, 8, 10)).astype(np.float32)
    valid = rng.random((2, 1, 8, 10)) < 0.6
    out = masked_mse(t(pred), t(target), t(valid))
    assert out.ndim == 0
    assert out.item() == pytest.approx(np_masked_mse(pred, target, valid), rel=1e-5)


def test_masked_mse_counts_every_channel_of_a_valid_cell():
    pred = torch.zeros(1, 4, 2, 2)
    target = torch.full((1, 4, 2, 2), 100.0)  # huge errors everywhere ...
    target[0, :, 0, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # ... except the only valid cell
    valid = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    valid[0, 0, 0, 1] = True
    # (1 + 4 + 9 + 16) / 4 elements
    assert masked_mse(pred, target, valid).item() == pytest.approx(7.5)


def test_masked_latent_mse_matches_numpy():
    rng = np.random.default_rng(7)
    pred = rng.standard_normal((2, 4, 4, 6)).astype(np.float32)
    target = rng.standard_normal((2, 4, 4, 6)).astype(np.float32)
    pixel_valid = rng.random((2, 1, 32, 48)) > 0.01
    latent = np_block_all(pixel_valid, 8)
    assert 0 < latent.sum() < latent.size
    out = masked_latent_mse(t(pred), t(target), t(pixel_valid), 8)
    assert out.item() == pytest.approx(np_masked_mse(pred, target, latent), rel=1e-5)


def test_masked_latent_mse_hand_worked():
    # one latent cell fully valid, its neighbour missing a single pixel
    pred = torch.zeros(1, 4, 1, 2)
    target = torch.zeros(1, 4, 1, 2)
    target[0, :, 0, 0] = torch.tensor([1.0, 1.0, 2.0, 2.0])
    target[0, :, 0, 1] = 50.0
    pixel_valid = torch.ones(1, 1, 8, 16, dtype=torch.bool)
    pixel_valid[0, 0, 4, 12] = False
    # (1 + 1 + 4 + 4) / 4 channels of the single valid cell
    out = masked_latent_mse(pred, target, pixel_valid, 8)
    assert out.item() == pytest.approx(2.5)


def test_masked_losses_without_valid_element_are_zero_and_differentiable():
    pred = torch.randn(2, 4, 2, 3, requires_grad=True)
    target = torch.randn(2, 4, 2, 3)
    loss = masked_mse(pred, target, torch.zeros(2, 1, 2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and torch.equal(pred.grad, torch.zeros_like(pred))

    pred.grad = None
    # every 8x8 block has one invalid pixel -> no valid latent cell
    pixel_valid = torch.ones(2, 1, 16, 24, dtype=torch.bool)
    pixel_valid[:, :, ::8, ::8] = False
    loss = masked_latent_mse(pred, target, pixel_valid, 8)
    assert loss.item() == 0.0
    loss.backward()
    assert pred.grad is not None and torch.equal(pred.grad, torch.zeros_like(pred))


# ---------------------------------------------------------------------------------------------
# inverted Huber and the multi-directional gradient loss (docs/method.md §4)
# ---------------------------------------------------------------------------------------------


def test_inverted_huber_hand_values():
    e = torch.tensor([0.0, 0.1, -0.1, 0.2, -0.2, 0.5, -1.0], dtype=torch.float64)
    # |e| <= 0.2: 0.2 |e|;  else (e^2 + 0.04) / 2
    expected = [0.0, 0.02, 0.02, 0.04, 0.04, 0.145, 0.52]
    np.testing.assert_allclose(inverted_huber(e, 0.2).numpy(), expected, rtol=1e-12, atol=1e-15)
    # continuity at |e| = delta from both sides
    eps = 1e-7
    near = torch.tensor([0.2 - eps, 0.2 + eps], dtype=torch.float64)
    lo, hi = inverted_huber(near, 0.2).tolist()
    assert abs(lo - 0.04) < 1e-7 and abs(hi - 0.04) < 1e-7


def test_inverted_huber_default_delta_and_other_delta():
    e = torch.tensor([0.1, 0.5, -2.0], dtype=torch.float64)
    np.testing.assert_allclose(inverted_huber(e).numpy(), [0.02, 0.145, 2.02], rtol=1e-12)
    # delta = 1: 1*|e| inside, (e^2 + 1) / 2 outside
    np.testing.assert_allclose(inverted_huber(e, 1.0).numpy(), [0.1, 0.5, 2.5], rtol=1e-12)


def test_directional_gradients_hand_written_3x3():
    x = torch.tensor([[1.0, 4.0, 9.0], [2.0, 8.0, 3.0], [7.0, 5.0, 6.0]]).reshape(1, 1, 3, 3)
    out = directional_gradients(x)
    assert out.shape == (4, 1, 1, 2, 2)
    # Bottom-right anchor, as the released code. A top-left anchor (x[i, j+1] - x[i, j] and
    # x[i+1, j] - x[i, j]) would give dx [[3, 5], [6, -5]] and dy [[1, 4], [5, -3]] here.
    # dx = x[i+1, j+1] - x[i+1, j]  (rows 1 and 2)
    dx = [[6.0, -5.0], [-2.0, 1.0]]
    # dy = x[i+1, j+1] - x[i, j+1]  (columns 1 and 2)
    dy = [[4.0, -6.0], [-3.0, 3.0]]
    # d45 = x[i+1, j+1] - x[i, j]
    d45 = [[7.0, -1.0], [3.0, -2.0]]
    # d135 = x[i+1, j] - x[i, j+1]
    d135 = [[-2.0, -1.0], [-1.0, 2.0]]
    for k, expected in enumerate([dx, dy, d45, d135]):
        np.testing.assert_array_equal(out[k, 0, 0].numpy(), np.array(expected))


def test_gradient_loss_hand_values_bottom_right_anchor():
    # One pixel of 0.1 on a 3x3 zero map, GT zero, all valid: 4 x 2 x 2 = 16 differences.
    # The bottom-right pixel is the anchor of its cell, so dx, dy and d45 all see it (d135 does
    # not): 3 differences of 0.1, berHu 0.2 * 0.1 = 0.02 each. The top-left pixel is seen only
    # by d45. (A top-left anchor gives the reverse: 1 and 3 differences.)
    target = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    valid = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    for corner, hits in (((2, 2), 3), ((0, 0), 1)):
        pred = target.clone()
        pred[0, 0, corner[0], corner[1]] = 0.1
        out = gradient_loss(pred, target, valid).item()
        assert out == pytest.approx(hits * 0.02 / 16, rel=1e-12), corner


def test_directional_gradients_random_matches_numpy():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 5, 7))
    out = directional_gradients(t(x)).numpy()
    assert out.shape == (4, 2, 3, 4, 6)
    ref = np_directional(x)
    for k, name in enumerate(("dx", "dy", "d45", "d135")):
        np.testing.assert_allclose(out[k], ref[name], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("delta", [0.2, 0.5])
def test_gradient_loss_matches_numpy(delta):
    rng = np.random.default_rng(9)
    pred = rng.uniform(-1, 1, (2, 1, 9, 11)).astype(np.float32)
    target = rng.uniform(-1, 1, (2, 1, 9, 11)).astype(np.float32)
    valid = rng.random((2, 1, 9, 11)) < 0.7
    out = gradient_loss(t(pred), t(target), t(valid), delta)
    ref = np_gradient_loss(pred, target, valid, delta)
    # without the mask the value would differ: the test really exercises the zeroing
    assert abs(ref - np_gradient_loss(pred, target, np.ones_like(valid), delta)) > 1e-3
    assert out.ndim == 0
    assert out.item() == pytest.approx(ref, rel=1e-5)


def test_gradient_loss_ignores_invalid_pixels_and_uses_default_delta():
    rng = np.random.default_rng(10)
    target = rng.uniform(-1, 1, (1, 1, 6, 6)).astype(np.float32)
    valid = rng.random((1, 1, 6, 6)) < 0.5
    pred = np.where(valid, target, rng.uniform(-1, 1, target.shape)).astype(np.float32)
    assert gradient_loss(t(pred), t(target), t(valid)).item() == pytest.approx(0.0, abs=1e-8)
    shifted = (pred + 0.3 * valid).astype(np.float32)
    out = gradient_loss(t(shifted), t(target), t(valid)).item()
    assert out == pytest.approx(np_gradient_loss(shifted, target, valid, 0.2), rel=1e-5)
    assert out > 0.0


# ---------------------------------------------------------------------------------------------
# feature alignment (docs/method.md §3)
# ---------------------------------------------------------------------------------------------


def test_feature_alignment_kl_matches_numpy():
    rng = np.random.default_rng(11)
    unet = (3.0 * rng.standard_normal((2, 6, 16))).astype(np.float32)
    enc = (3.0 * rng.standard_normal((2, 6, 16))).astype(np.float32)
    out = feature_alignment_kl(t(unet), t(enc)).item()
    ref = np_kl(unet, enc)
    assert out == pytest.approx(ref, rel=1e-5)
    # equivalently: per-token KL sum, divided by D, averaged over the B*N tokens
    lp_u, lp_e = np_log_softmax(unet), np_log_softmax(enc)
    per_token = (np.exp(lp_e) * (lp_e - lp_u)).sum(-1)
    assert out == pytest.approx(per_token.mean() / 16, rel=1e-5)
    assert out > 0.01


def test_feature_alignment_kl_direction_is_kl_enc_to_unet():
    # KL is asymmetric: swapping the arguments must change the value here
    enc = torch.tensor([[[4.0, 0.0, 0.0, 0.0]]])
    unet = torch.tensor([[[0.0, 0.0, 0.0, 0.0]]])
    p = np.exp([4.0, 0, 0, 0]) / np.exp([4.0, 0, 0, 0]).sum()
    expected = float((p * (np.log(p) - np.log(0.25))).sum() / 4)
    assert feature_alignment_kl(unet, enc).item() == pytest.approx(expected, rel=1e-5)
    reverse = float((0.25 * (np.log(0.25) - np.log(p))).sum() / 4)
    assert abs(expected - reverse) > 0.05
    assert feature_alignment_kl(enc, unet).item() == pytest.approx(reverse, rel=1e-5)


def test_feature_alignment_kl_zero_for_identical_and_shift_invariant():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 5, 8, generator=g)
    y = torch.randn(2, 5, 8, generator=g)
    assert feature_alignment_kl(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)
    c1 = 10.0 * torch.randn(2, 5, 1, generator=g)
    c2 = 10.0 * torch.randn(2, 5, 1, generator=g)
    base = feature_alignment_kl(x, y).item()
    assert base > 0.01
    assert feature_alignment_kl(x + c1, y + c2).item() == pytest.approx(base, rel=1e-4)
    assert feature_alignment_kl(x + c1, x).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_alignment_cosine_matches_numpy():
    rng = np.random.default_rng(13)
    unet = rng.standard_normal((2, 6, 16)).astype(np.float32)
    enc = rng.standard_normal((2, 6, 16)).astype(np.float32)
    out = feature_alignment_cosine(t(unet), t(enc)).item()
    assert out == pytest.approx(np_cosine(unet, enc), rel=1e-5)
    x = t(unet)
    assert feature_alignment_cosine(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert feature_alignment_cosine(x, -x).item() == pytest.approx(2.0, abs=1e-6)
    scale = torch.rand(2, 6, 1) + 0.5  # positive per-token scaling does not change the cosine
    assert feature_alignment_cosine(x * scale, t(enc)).item() == pytest.approx(out, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# learning-rate schedule (docs/method.md §3)
# ---------------------------------------------------------------------------------------------


def test_schedule_reference_points():
    f = warmup_exponential_decay
    assert f(0, 100, 25_000, 0.01) == 0.0
    assert f(50, 100, 25_000, 0.01) == pytest.approx(0.5, abs=1e-12)
    assert f(100, 100, 25_000, 0.01) == pytest.approx(1.0, abs=1e-12)
    assert f(25_000, 100, 25_000, 0.01) == pytest.approx(0.01, rel=1e-12)
    # halfway (in steps) through the decay is halfway in log space: sqrt(0.01) = 0.1
    assert f(12_550, 100, 25_000, 0.01) == pytest.approx(0.1, rel=1e-12)
    # defaults are the reference recipe
    assert f(50) == pytest.approx(0.5, abs=1e-12)
    assert f(12_550) == pytest.approx(0.1, rel=1e-12)
    assert f(25_000) == pytest.approx(0.01, rel=1e-12)


def test_schedule_warmup_is_linear_and_decay_is_exponential():
    for step in range(100):
        assert warmup_exponential_decay(step, 100, 25_000, 0.01) == pytest.approx(step / 100)
    for step in (100, 1000, 7777, 20_000, 24_999):
        expected = math.exp(math.log(0.01) * (step - 100) / 24_900)
        assert warmup_exponential_decay(step, 100, 25_000, 0.01) == pytest.approx(expected)
    # other parameters: 10 warm-up steps, decay to 0.5 at step 110
    assert warmup_exponential_decay(5, 10, 110, 0.5) == pytest.approx(0.5)
    assert warmup_exponential_decay(60, 10, 110, 0.5) == pytest.approx(0.5**0.5)
    assert warmup_exponential_decay(110, 10, 110, 0.5) == pytest.approx(0.5)


def test_schedule_monotone_after_warmup_and_constant_after_decay():
    values = [warmup_exponential_decay(s, 100, 25_000, 0.01) for s in range(100, 25_001, 50)]
    assert all(b < a for a, b in zip(values[:-1], values[1:]))
    after = [warmup_exponential_decay(s, 100, 25_000, 0.01) for s in (25_000, 25_001, 30_000)]
    assert after == pytest.approx([0.01, 0.01, 0.01], rel=1e-12)
    # warm-up increases
    warm = [warmup_exponential_decay(s, 100, 25_000, 0.01) for s in range(0, 101)]
    assert all(b > a for a, b in zip(warm[:-1], warm[1:]))


@pytest.mark.parametrize(("warmup", "decay"), [(100, 100), (100, 50), (0, 0)])
def test_schedule_rejects_decay_not_after_warmup(warmup, decay):
    with pytest.raises(ValueError):
        warmup_exponential_decay(10, warmup, decay, 0.01)


@pytest.mark.parametrize("name", ["sqrt_disparity", "disparity", "depth"])
def test_batched_normalisation_equals_per_image_quantiles(name):
    # normalize() works on the whole batch (no per-image host sync); each image must still get
    # exactly the quantiles of its own valid values, and an image without one stays at -1.
    target = get_target(name)
    gen = torch.Generator().manual_seed(3)
    depth = torch.rand(3, 1, 24, 32, generator=gen) * 20 + 0.1
    depth[0, 0, :4] = 3.0  # ties
    valid = torch.rand(3, 1, 24, 32, generator=gen) > 0.4
    valid[2] = False
    out = target.normalize(depth, valid)
    for i in range(2):
        v = target.forward(depth[i][valid[i]])
        lo, hi = torch.quantile(v, torch.tensor([0.02, 0.98]))
        ref = torch.clamp(2.0 * (target.forward(depth[i]) - lo) / (hi - lo) - 1.0, -1.0, 1.0)
        assert torch.equal(out[i][valid[i]], ref[valid[i]])
        assert bool((out[i][~valid[i]] == -1).all())
    assert bool((out[2] == -1).all())
