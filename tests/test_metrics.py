"""Affine-invariant evaluation (docs/method.md §6) against an independent numpy reference.

Alignment is checked against ``np.linalg.lstsq`` on ``[p, 1]``, metrics against plain numpy on
the valid pixels, and ``DepthMetrics`` against the plain mean over images, in one process and
across two gloo processes.
"""

from __future__ import annotations

import copy
import os
import pickle
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port

from dm_lightning.evaluation.alignment import align_prediction
from dm_lightning.evaluation.metrics import DepthMetrics
from dm_lightning.evaluation.scoring import METRIC_NAMES, evaluate_batch, per_image_metrics
from dm_lightning.testing.reference import NAMES
from dm_lightning.testing.reference import align_image as np_align_image
from dm_lightning.testing.reference import evaluate as np_evaluate
from dm_lightning.testing.reference import mean_over_images as np_mean_over_images
from dm_lightning.testing.reference import metrics as np_metrics
from dm_lightning.testing.reference import to_space as np_to_space

SPACES = ("sqrt_disparity", "disparity", "depth")

# ---------------------------------------------------------------------------------------------
# numpy reference (float64): dm_lightning.testing.reference, independent of
# dm_lightning.evaluation
# ---------------------------------------------------------------------------------------------


def make_batch(rng, fractions, shape=(12, 16)):
    """GT depth log-uniform in [0.5, 20] m; a noisy relative prediction roughly in [0, 1]
    (1 = near; a few far pixels are <= 0, which the disparity-space fits leave out); random
    valid masks with the given per-image fractions; garbage GT outside."""
    b = len(fractions)
    gt = np.exp(rng.uniform(np.log(0.5), np.log(20.0), (b,) + shape))
    s = 1.0 / np.sqrt(gt)
    pred = (s - 0.2) / 1.2 + 0.05 * rng.standard_normal(gt.shape)
    valid = rng.random(gt.shape) < np.asarray(fractions, dtype=np.float64)[:, None, None]
    gt = np.where(valid, gt, rng.choice(np.array([0.0, np.inf, np.nan]), gt.shape))
    return pred.astype(np.float32), gt.astype(np.float32), valid


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def assert_metrics_close(values, ref, rtol=1e-9, atol=1e-12):
    for name in NAMES:
        np.testing.assert_allclose(
            float(values[name]), ref[name], rtol=rtol, atol=atol, err_msg=name
        )


# ---------------------------------------------------------------------------------------------
# align_prediction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("space", SPACES)
def test_align_prediction_matches_lstsq(space):
    rng = np.random.default_rng(0)
    pred, gt, valid = make_batch(rng, [0.8, 0.4, 0.1])
    out = align_prediction(t(pred), t(gt), t(valid), space)
    assert out.dtype == torch.float64
    assert out.shape == pred.shape
    for i in range(3):
        ref = np_align_image(pred[i], gt[i], valid[i], space)
        np.testing.assert_allclose(out[i].numpy(), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("space", "scale", "shift"),
    [("sqrt_disparity", 0.8, 0.3), ("disparity", 0.5, 0.1), ("depth", -12.0, 13.0)],
)
def test_align_prediction_recovers_exact_affine_gt(space, scale, shift):
    rng = np.random.default_rng(1)
    pred = rng.uniform(0.0, 1.0, (2, 8, 9))
    value = scale * pred + shift
    depth = {"sqrt_disparity": 1.0 / value**2, "disparity": 1.0 / value, "depth": value}[space]
    valid = rng.random(pred.shape) < 0.5
    gt = np.where(valid, depth, np.array([0.0, np.inf])[rng.integers(0, 2, pred.shape)])
    out = align_prediction(t(pred), t(gt), t(valid), space).numpy()
    # every pixel, valid or not, follows the same recovered affine map
    np.testing.assert_allclose(out, depth, rtol=1e-9)


@pytest.mark.parametrize("space", ["sqrt_disparity", "disparity"])
def test_align_prediction_disparity_floor(space):
    # fit on three valid pixels where the target value is exactly 2 p - 0.9
    p = np.array([[[0.5, 0.75, 1.0, 0.0, 0.45, 0.46, 0.475]]])
    value = 2.0 * p - 0.9
    valid = np.zeros(p.shape, dtype=bool)
    valid[..., :3] = True
    gt = np.zeros_like(p)  # 0 (invalid) outside the mask
    gt[valid] = 1.0 / value[valid] ** 2 if space == "sqrt_disparity" else 1.0 / value[valid]
    out = align_prediction(t(p), t(gt), t(valid), space).numpy()[0, 0]
    np.testing.assert_allclose(out[:3], gt[0, 0, :3], rtol=1e-9)
    if space == "sqrt_disparity":
        # a = -0.9 -> 1/0.81; a ~ 0 -> 1/1e-3; a = 0.02 -> a^2 = 4e-4 < 1e-3 -> 1000;
        # a = 0.05 -> a^2 = 2.5e-3 -> 400 (the floor is on the squared value, not on a)
        expected = [1.0 / 0.81, 1000.0, 1000.0, 400.0]
    else:
        # a = -0.9, ~0, 0.02 -> 1/1e-3; a = 0.05 -> 20
        expected = [1000.0, 1000.0, 50.0, 20.0]
    np.testing.assert_allclose(out[3:], expected, rtol=1e-9)


# Four pixels with p > 0 whose target value is exactly 2 p + 0.5, and two with p = 0 (GT 1 m,
# off that line); all six valid. One invalid pixel with p = 0 and GT 0 takes no part.
ZERO_PRED_P = np.array([[[0.2, 0.4, 0.6, 0.8, 0.0, 0.0, 0.0]]])
ZERO_PRED_VALID = np.array([[[True] * 6 + [False]]])


def zero_pred_gt(space):
    line = 2.0 * ZERO_PRED_P[0, 0, :4] + 0.5
    on_line = {"sqrt_disparity": 1.0 / line**2, "disparity": 1.0 / line, "depth": line}[space]
    return np.concatenate([on_line, [1.0, 1.0, 0.0]])[None, None]


@pytest.mark.parametrize("space", ["sqrt_disparity", "disparity"])
def test_disparity_space_fit_ignores_zero_predictions_but_metrics_use_them(space):
    gt = zero_pred_gt(space)
    # fitted on the four p > 0 pixels only: s = 2, t = 0.5 exactly, so they are recovered and
    # the p = 0 pixels get value 0.5: depth 1 / 0.5^2 = 4 (sqrt-disparity) or 1 / 0.5 = 2
    zero_depth = {"sqrt_disparity": 4.0, "disparity": 2.0}[space]
    aligned = align_prediction(t(ZERO_PRED_P), t(gt), t(ZERO_PRED_VALID), space).numpy()[0, 0]
    np.testing.assert_allclose(aligned[:4], gt[0, 0, :4], rtol=1e-12)
    np.testing.assert_allclose(aligned[4:], zero_depth, rtol=1e-12)
    np.testing.assert_allclose(
        aligned, np_align_image(ZERO_PRED_P[0], gt[0], ZERO_PRED_VALID[0], space)[0], rtol=1e-12
    )
    # metrics on all six valid pixels: four exact, two with |d - 1| / 1 = zero_depth - 1
    values, has_valid = evaluate_batch(t(ZERO_PRED_P), t(gt), t(ZERO_PRED_VALID), 1e-3, 80.0, space)
    assert has_valid.tolist() == [True]
    assert values["abs_rel"][0].item() == pytest.approx(2 * (zero_depth - 1.0) / 6, rel=1e-12)
    assert values["delta1"][0].item() == pytest.approx(4 / 6, rel=1e-12)
    rmse = np.sqrt(2 * (zero_depth - 1.0) ** 2 / 6)
    assert values["rmse"][0].item() == pytest.approx(rmse, rel=1e-12)
    ref = np_evaluate(ZERO_PRED_P, gt, ZERO_PRED_VALID, 1e-3, 80.0, space)[0]
    assert_metrics_close({k: v[0] for k, v in values.items()}, ref)
    # fitting the zeros too (the old rule) would not recover the four pixels on the line
    (s_all, t_all), *_ = np.linalg.lstsq(
        np.stack([ZERO_PRED_P[0, 0, :6], np.ones(6)], 1),
        np_to_space(gt[0, 0, :6], space),
        rcond=None,
    )
    assert abs(s_all - 2.0) > 0.1 and abs(t_all - 0.5) > 0.1


def test_depth_space_fit_keeps_zero_predictions():
    gt = zero_pred_gt("depth")
    # all six valid pixels fitted: n = 6, sum p = 2, sum g = 8, sum p^2 = 1.2, sum p g = 3.4,
    # det = 6 * 1.2 - 2^2 = 3.2: s = (6 * 3.4 - 2 * 8) / 3.2 = 1.375,
    # t = (1.2 * 8 - 2 * 3.4) / 3.2 = 0.875 (without the zeros it would be s = 2, t = 0.5)
    expected = 1.375 * ZERO_PRED_P[0, 0] + 0.875
    aligned = align_prediction(t(ZERO_PRED_P), t(gt), t(ZERO_PRED_VALID), "depth").numpy()[0, 0]
    np.testing.assert_allclose(aligned, expected, rtol=1e-12)
    np.testing.assert_allclose(
        aligned, np_align_image(ZERO_PRED_P[0], gt[0], ZERO_PRED_VALID[0], "depth")[0], rtol=1e-12
    )
    values, _ = evaluate_batch(t(ZERO_PRED_P), t(gt), t(ZERO_PRED_VALID), 1e-3, 80.0, "depth")
    g = gt[0, 0, :6]
    abs_rel = np.mean(np.abs(expected[:6] - g) / g)
    assert values["abs_rel"][0].item() == pytest.approx(abs_rel, rel=1e-12)
    ref = np_evaluate(ZERO_PRED_P, gt, ZERO_PRED_VALID, 1e-3, 80.0, "depth")[0]
    assert_metrics_close({k: v[0] for k, v in values.items()}, ref)


# ---------------------------------------------------------------------------------------------
# per_image_metrics
# ---------------------------------------------------------------------------------------------


def test_per_image_metrics_match_numpy_on_valid_pixels():
    rng = np.random.default_rng(2)
    gt = np.exp(rng.uniform(np.log(0.5), np.log(20.0), (3, 10, 12)))
    depth = gt * np.exp(0.3 * rng.standard_normal(gt.shape))
    valid = rng.random(gt.shape) < np.array([0.9, 0.5, 0.2])[:, None, None]
    gt_bad = np.where(valid, gt, 0.0)  # zero GT outside the mask must not leak in
    out = per_image_metrics(t(depth), t(gt_bad), t(valid))
    assert set(out) == set(NAMES)
    for i in range(3):
        ref = np_metrics(depth[i][valid[i]], gt[i][valid[i]])
        assert 0.0 < ref["delta1"] < ref["delta2"] < ref["delta3"] <= 1.0
        for name in NAMES:
            assert out[name].shape == (3,)
            np.testing.assert_allclose(out[name][i].item(), ref[name], rtol=1e-12, err_msg=name)


def test_per_image_metrics_hand_worked_strict_deltas():
    # ratios exactly 1.25, 1.25 (g/d), 1.25^2, 1.25^3 and 1 (all exact in binary)
    gt = torch.tensor([[1.0, 5.0, 2.0, 8.0, 3.0, 7.0]], dtype=torch.float64)
    depth = torch.tensor([[1.25, 4.0, 3.125, 15.625, 3.0, 99.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True, True, True, True, False]])
    out = per_image_metrics(depth, gt, valid)
    assert out["delta1"].item() == pytest.approx(1 / 5)
    assert out["delta2"].item() == pytest.approx(3 / 5)
    assert out["delta3"].item() == pytest.approx(4 / 5)
    # |d-g|/g = 0.25, 0.2, 0.5625, 0.953125, 0
    assert out["abs_rel"].item() == pytest.approx((0.25 + 0.2 + 0.5625 + 0.953125) / 5)
    rmse = np.sqrt((0.25**2 + 1.0 + 1.125**2 + 7.625**2) / 5)
    assert out["rmse"].item() == pytest.approx(rmse)


# ---------------------------------------------------------------------------------------------
# evaluate_batch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("space", SPACES)
def test_evaluate_batch_per_image_ranges_and_clipping_order(space):
    rng = np.random.default_rng(3)
    pred, gt, valid = make_batch(rng, [0.9, 0.7, 0.5])
    min_depth = np.array([1e-3, 2.0, 1e-5])
    max_depth = np.array([10.0, 5.0, np.inf])
    values, has_valid = evaluate_batch(
        t(pred[:, None]), t(gt[:, None]), t(valid[:, None]),
        torch.tensor(min_depth), torch.tensor(max_depth), space,
    )  # fmt: skip
    assert has_valid.tolist() == [True, True, True]
    ref = np_evaluate(pred, gt, valid, min_depth, max_depth, space)
    for i in range(3):
        assert_metrics_close({k: v[i] for k, v in values.items()}, ref[i])
    # the clipping really matters for images 0 and 1: without it the numbers differ
    unclipped = np_evaluate(pred, gt, valid, 0.0, np.inf, space)
    for i in (0, 1):
        assert abs(unclipped[i]["abs_rel"] - ref[i]["abs_rel"]) > 1e-4


def test_evaluate_batch_scalar_and_tensor_ranges_agree():
    rng = np.random.default_rng(4)
    pred, gt, valid = make_batch(rng, [0.9, 0.6])
    a, _ = evaluate_batch(t(pred), t(gt), t(valid), 1.0, float("inf"))
    b, _ = evaluate_batch(
        t(pred), t(gt), t(valid), torch.tensor([1.0, 1.0]), torch.tensor([np.inf, np.inf])
    )
    ref = np_evaluate(pred, gt, valid, 1.0, np.inf, "sqrt_disparity")
    for i in range(2):
        assert_metrics_close({k: v[i] for k, v in a.items()}, ref[i])
        assert_metrics_close({k: v[i] for k, v in b.items()}, ref[i])


def test_evaluate_batch_floors_negative_depth_after_clipping():
    # depth-space fit of 10 points at 1 and one at 100: s = 45, t = -12.5, negative at p = 0
    p = np.linspace(0.0, 1.0, 11)[None, None, :]
    gt = np.ones_like(p)
    gt[0, 0, -1] = 100.0
    valid = np.ones(p.shape, dtype=bool)
    aligned = np_align_image(p[0], gt[0], valid[0], "depth")
    assert aligned[0, 0] == pytest.approx(-12.5)
    for lo in (0.0, 1e-3):
        values, _ = evaluate_batch(t(p), t(gt), t(valid), lo, float("inf"), "depth")
        ref = np_evaluate(p, gt, valid, lo, np.inf, "depth")[0]
        assert all(np.isfinite(float(v)) for v in values.values())
        assert_metrics_close({k: v[0] for k, v in values.items()}, ref)
    # with min_depth = 0 the first pixel's depth is the 1e-6 floor: log10 error ~ 6 on it
    values, _ = evaluate_batch(t(p), t(gt), t(valid), 0.0, float("inf"), "depth")
    assert values["log10"][0].item() > 6.0 / 11


@pytest.mark.parametrize("space", SPACES)
def test_evaluate_batch_edge_cases(space):
    rng = np.random.default_rng(5)
    pred, gt, valid = make_batch(rng, [0.8, 0.8, 0.8, 0.8, 0.8])
    gt = np.where(np.isfinite(gt) & (gt > 0), gt, 1.0).astype(np.float32)
    pred[0] = 0.5  # constant prediction
    valid[1] = False  # two valid pixels with different predictions
    valid[1, 2, 3] = valid[1, 7, 11] = True
    assert pred[1, 2, 3] != pred[1, 7, 11]
    valid[2] = False  # a single valid pixel
    valid[2, 4, 4] = True
    valid[3] = False  # no valid pixel at all
    gt[4] = np.where(valid[4], gt[4], rng.choice(np.array([0.0, np.inf, np.nan]), gt[4].shape))
    values, has_valid = evaluate_batch(t(pred), t(gt), t(valid), 1e-3, 80.0, space)
    assert has_valid.tolist() == [True, True, True, False, True]
    ref = np_evaluate(pred, gt, valid, 1e-3, 80.0, space)
    for i in (0, 1, 2, 4):
        row = {k: v[i] for k, v in values.items()}
        assert all(np.isfinite(float(v)) for v in row.values())
        assert_metrics_close(row, ref[i])
    # two (or one) points are fitted exactly
    for i in (1, 2):
        assert values["abs_rel"][i].item() == pytest.approx(0.0, abs=1e-9)
        assert values["delta1"][i].item() == 1.0
    # a constant prediction aligns to one constant depth: the inverse of the mean target value
    g = np_to_space(gt[0][valid[0]].astype(np.float64), space)
    const = {"sqrt_disparity": 1.0 / g.mean() ** 2, "disparity": 1.0 / g.mean()}
    d = const.get(space, g.mean())
    expected = np.mean(np.abs(d - gt[0][valid[0]]) / gt[0][valid[0]])
    assert values["abs_rel"][0].item() == pytest.approx(expected, rel=1e-9)
    # garbage GT outside the mask does not change anything
    clean_gt = np.where(valid[4], gt[4], 3.0)[None]
    clean, _ = evaluate_batch(t(pred[4:]), t(clean_gt), t(valid[4:]), 1e-3, 80.0, space)
    for name in NAMES:
        assert clean[name][0].item() == pytest.approx(values[name][4].item(), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# DepthMetrics
# ---------------------------------------------------------------------------------------------


def metric_batches(seed):
    """Three batches of 2, 3 and 1 images; image 1 of the second batch has no valid pixel."""
    rng = np.random.default_rng(seed)
    batches = []
    for fractions, lo, hi in (
        ([0.9, 0.3], 1e-3, 10.0),
        ([0.6, 0.0, 0.5], np.array([1e-5, 1e-5, 0.7]), np.array([80.0, np.inf, 15.0])),
        ([0.4], 1e-3, np.inf),
    ):
        pred, gt, valid = make_batch(rng, fractions)
        batches.append((pred, gt, valid, lo, hi))
    return batches


def update_with(metric, batch, four_d=False):
    pred, gt, valid, lo, hi = batch
    if four_d:
        pred, gt, valid = pred[:, None], gt[:, None], valid[:, None]
    lo = torch.tensor(lo) if isinstance(lo, np.ndarray) else lo
    hi = torch.tensor(hi) if isinstance(hi, np.ndarray) else hi
    metric.update(t(pred), t(gt), t(valid), lo, hi)


def reference_for(batches, space):
    per_image = []
    for pred, gt, valid, lo, hi in batches:
        per_image += np_evaluate(pred, gt, valid, lo, hi, space)
    return np_mean_over_images(per_image), per_image


@pytest.mark.parametrize("space", SPACES)
def test_depth_metrics_is_plain_mean_over_images(space):
    batches = metric_batches(6)
    metric = DepthMetrics(space=space)
    for k, batch in enumerate(batches):
        update_with(metric, batch, four_d=k == 1)
    out = metric.compute()
    ref, per_image = reference_for(batches, space)
    assert len(per_image) == 6
    assert set(METRIC_NAMES) == set(NAMES)
    for name in NAMES:
        assert np.isfinite(out[name].item())
        np.testing.assert_allclose(out[name].item(), ref[name], rtol=1e-12, atol=1e-14)
    assert int(out["num_images"]) == 5
    assert int(out["skipped_images"]) == 1


def test_depth_metrics_reset():
    batches = metric_batches(7)
    metric = DepthMetrics()
    for batch in batches:
        update_with(metric, batch)
    first = metric.compute()
    assert int(first["num_images"]) == 5
    metric.reset()
    update_with(metric, batches[2])
    out = metric.compute()
    ref, _ = reference_for(batches[2:], "sqrt_disparity")
    for name in NAMES:
        np.testing.assert_allclose(out[name].item(), ref[name], rtol=1e-12, atol=1e-14)
    assert int(out["num_images"]) == 1
    assert int(out["skipped_images"]) == 0


def test_depth_metrics_only_empty_images_gives_no_nan():
    metric = DepthMetrics()
    pred = torch.rand(2, 4, 4)
    metric.update(pred, torch.ones(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool), 1e-3, 10.0)
    out = metric.compute()
    assert int(out["num_images"]) == 0
    assert int(out["skipped_images"]) == 2
    assert all(np.isfinite(out[name].item()) for name in NAMES)


def test_depth_metrics_unknown_space_raises():
    with pytest.raises(ValueError, match="bogus_space"):
        DepthMetrics(space="bogus_space")


# ---------------------------------------------------------------------------------------------
# DDP: two gloo processes give the one-process result
# ---------------------------------------------------------------------------------------------


def ddp_images():
    rng = np.random.default_rng(8)
    pred, gt, valid = make_batch(rng, [0.9, 0.6, 0.3, 0.7, 0.0])  # last image: no valid pixel
    return pred, gt, valid


def _ddp_worker(rank, world_size, port, out_dir):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        pred, gt, valid = ddp_images()
        metric = DepthMetrics()
        if rank == 0:  # three images in two uneven updates
            metric.update(t(pred[:2]), t(gt[:2]), t(valid[:2]), 1e-3, 10.0)
            metric.update(t(pred[2:3]), t(gt[2:3]), t(valid[2:3]), 1e-3, 10.0)
        else:  # two images (one of them empty) in one update
            metric.update(t(pred[3:]), t(gt[3:]), t(valid[3:]), 1e-3, 10.0)
        out = metric.compute()
        torch.save(
            {k: v.detach().double().item() for k, v in out.items()},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_depth_metrics_ddp_two_gloo_processes_match_single_process(tmp_path, monkeypatch):
    port = free_port()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)

    pred, gt, valid = ddp_images()
    single = DepthMetrics()
    single.update(t(pred), t(gt), t(valid), 1e-3, 10.0)
    expected = {k: float(v) for k, v in single.compute().items()}
    ref = np_mean_over_images(np_evaluate(pred, gt, valid, 1e-3, 10.0, "sqrt_disparity"))
    assert expected["num_images"] == 4 and expected["skipped_images"] == 1
    for name in NAMES:
        np.testing.assert_allclose(expected[name], ref[name], rtol=1e-12, atol=1e-14)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=0, abs=1e-12), (rank, key)


def test_single_metric_classes_match_the_collection():
    from dm_lightning.evaluation import metrics as m

    gen = torch.Generator().manual_seed(5)
    gt = torch.rand(3, 12, 10, generator=gen, dtype=torch.float64) * 5 + 0.5
    pred = torch.rand(3, 12, 10, generator=gen, dtype=torch.float64)
    valid = torch.rand(3, 12, 10, generator=gen) > 0.3
    full = m.DepthMetrics()
    full.update(pred, gt, valid, 1e-3, 10.0)
    expected = full.compute()
    classes = (m.AbsRel, m.SqRel, m.RMSE, m.RMSELog, m.Log10, m.Delta1, m.Delta2, m.Delta3)
    for cls in classes:
        one = cls()
        one.update(pred, gt, valid, 1e-3, 10.0)
        assert float(one.compute()) == float(expected[cls.metric_name]), cls.__name__


def test_mismatched_shapes_are_refused_and_column_ranges_accepted():
    rng = np.random.default_rng(9)
    pred, gt, valid = make_batch(rng, [0.9, 0.8])
    with pytest.raises(ValueError, match=r"share one .*\(2, 12, 16\), \(2, 6, 16\)"):
        evaluate_batch(t(pred), t(gt[:, :6]), t(valid[:, :6]), 1e-3, 80.0)
    with pytest.raises(ValueError, match="share one"):
        per_image_metrics(t(pred).double(), t(gt), t(valid[:1]))
    # (B, 1, H, W) prediction with (B, H, W) GT pairs the same pixels; (B, 1) ranges broadcast
    ranges = torch.tensor([[1e-3], [1e-3]], dtype=torch.float64)
    a, _ = evaluate_batch(t(pred[:, None]), t(gt), t(valid), ranges, ranges * 0 + 80.0)
    ref = np_evaluate(pred, gt, valid, 1e-3, 80.0, "sqrt_disparity")
    for i in range(2):
        assert_metrics_close({k: v[i] for k, v in a.items()}, ref[i])


def test_constant_prediction_with_rounding_noise_maps_to_the_mean_target():
    # 0.1 is not exact in binary: det = n sum(p^2) - (sum p)^2 is rounding noise, not signal
    gt = np.exp(np.random.default_rng(10).uniform(0.0, 2.0, (1, 25, 40)))
    pred = np.full(gt.shape, 0.1)
    valid = np.ones(gt.shape, dtype=bool)
    aligned = align_prediction(t(pred), t(gt), t(valid), "sqrt_disparity").numpy()
    expected = 1.0 / np.mean(1.0 / np.sqrt(gt)) ** 2
    np.testing.assert_allclose(aligned, expected, rtol=1e-12)


def test_metrics_of_predictions_that_need_gradients():
    rng = np.random.default_rng(11)
    pred, gt, valid = make_batch(rng, [0.9, 0.7])
    p = t(pred).requires_grad_()
    values, _ = evaluate_batch(p, t(gt), t(valid), 1e-3, 80.0)
    ref = np_evaluate(pred, gt, valid, 1e-3, 80.0, "sqrt_disparity")
    for i in range(2):
        assert_metrics_close({k: v[i] for k, v in values.items()}, ref[i])


def test_update_values_adds_evaluate_batch_output_like_update():
    batches = metric_batches(10)
    scored, direct = DepthMetrics(), DepthMetrics()
    for pred, gt, valid, lo, hi in batches:
        lo = torch.tensor(lo) if isinstance(lo, np.ndarray) else lo
        hi = torch.tensor(hi) if isinstance(hi, np.ndarray) else hi
        direct.update(t(pred), t(gt), t(valid), lo, hi)
        scored.update_values(*evaluate_batch(t(pred), t(gt), t(valid), lo, hi))
    assert scored.update_count == direct.update_count == len(batches)
    expected = direct.compute()
    for clone in (scored, pickle.loads(pickle.dumps(scored)), copy.deepcopy(scored)):
        out = clone.compute()
        assert {k: float(v) for k, v in out.items()} == {k: float(v) for k, v in expected.items()}
    scored.reset()
    scored.update_values(*evaluate_batch(*map(t, batches[0][:3]), batches[0][3], batches[0][4]))
    assert int(scored.compute()["num_images"]) == 2
