"""Metric depth from a relative prediction (dm_lightning.inference.metric_depth,
tools/metric_depth.py).

The predictions are built backwards from a known scale and shift in each alignment space, so
the fit must recover them exactly, from a reference map and from a few CSV points.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dm_lightning.errors import ConfigError, InputFileError, MissingPathError
from dm_lightning.evaluation.alignment import align_prediction
from dm_lightning.evaluation.metrics import DepthMetrics
from dm_lightning.inference.depth_files import (
    KnownPoints,
    load_depth_map,
    load_prediction,
    read_points,
    save_depth,
)
from dm_lightning.inference.metric_depth import apply_fit, metric_from_depth_map, metric_from_points
from dm_lightning.targets import ALIGNMENT_SPACES

REPO = Path(__file__).resolve().parent.parent

# space -> (scale, shift, inverse of s p + t in metres): the prediction p in (0, 1) of GT
# depths in [0.5, 20] m, with 1 = near in the disparity spaces and 1 = far in depth.
CASES = {
    "sqrt_disparity": (1.5, 0.1, lambda v: 1.0 / v**2),
    "disparity": (2.5, 0.02, lambda v: 1.0 / v),
    "depth": (25.0, -1.0, lambda v: v),
}


def make_case(space: str, shape=(24, 32), seed=0):
    """A float32 prediction and the float64 GT it stands for exactly: GT log-uniform in
    [0.5, 20] m, p = (forward(GT) - shift) / scale rounded to float32, and the GT recomputed
    from that p, so ``scale * p + shift`` is GT's value in ``space`` to float64 rounding."""
    scale, shift, inverse = CASES[space]
    rng = np.random.default_rng(seed)
    depth = np.exp(rng.uniform(np.log(0.5), np.log(20.0), shape))
    forward = {"sqrt_disparity": depth**-0.5, "disparity": 1.0 / depth, "depth": depth}[space]
    pred = ((forward - shift) / scale).astype(np.float32)
    assert 0.0 < pred.min() and pred.max() < 1.0
    return pred, inverse(scale * pred.astype(np.float64) + shift)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_spaces_are_the_evaluations():
    assert ALIGNMENT_SPACES == tuple(CASES)
    # One check of the name, with evaluation's message (no config key: a function argument).
    pred, gt = make_case("depth")
    for call in (
        lambda: apply_fit(pred, 1.0, 0.0, space="log"),
        lambda: metric_from_depth_map(pred, gt, space="log"),
        lambda: DepthMetrics(space="log"),
    ):
        with pytest.raises(ConfigError) as err:
            call()
        assert str(err.value) == (
            "unknown alignment space 'log'; expected one of sqrt_disparity, disparity, depth"
        )


@pytest.mark.parametrize("space", list(CASES))
def test_fit_to_reference_map_recovers_scale_shift(space):
    pred, gt = make_case(space)
    scale, shift, _ = CASES[space]
    reference = gt.copy()
    reference[:4] = 0.0  # invalid rows are ignored
    reference[5, :3] = np.nan
    result = metric_from_depth_map(pred, reference, space, min_depth=0.1, max_depth=100.0)
    assert result.scale == pytest.approx(scale, rel=1e-9)
    assert result.shift == pytest.approx(shift, rel=1e-9, abs=1e-10)
    assert result.known == result.fitted == 24 * 32 - 4 * 32 - 3
    # every pixel, the invalid ones included, gets the GT back
    np.testing.assert_allclose(result.depth, gt, rtol=1e-5)
    assert result.depth.dtype == np.float32 and result.depth.shape == (24, 32)
    assert result.abs_rel < 1e-6
    assert result.clamped_near == result.clamped_far == 0
    # the same depth as evaluation's alignment
    aligned = align_prediction(
        torch.from_numpy(pred)[None],
        torch.from_numpy(reference)[None],
        torch.from_numpy(reference > 0)[None],
        space,
    )[0].numpy()
    np.testing.assert_allclose(result.depth, aligned, rtol=1e-6)


@pytest.mark.parametrize("space", list(CASES))
def test_fit_to_csv_points_recovers_scale_shift(space, tmp_path):
    pred, gt = make_case(space)
    scale, shift, _ = CASES[space]
    pixels = [(0, 0), (31, 23), (10, 5), (20, 17)]  # (x, y)
    lines = ["y,metres,x"]  # column order is free
    lines += [f"{y},{float(gt[y, x])!r},{x}" for x, y in pixels]
    points = read_points(write_csv(tmp_path / "points.csv", "\n".join(lines) + "\n"))
    assert points.x.tolist() == [0, 31, 10, 20] and points.y.tolist() == [0, 23, 5, 17]
    assert points.rows.tolist() == [2, 3, 4, 5]
    result = metric_from_points(pred, points, space)
    assert result.scale == pytest.approx(scale, rel=1e-9)
    assert result.shift == pytest.approx(shift, rel=1e-9, abs=1e-10)
    assert result.known == result.fitted == 4
    np.testing.assert_allclose(result.depth, gt, rtol=1e-5)


def test_sky_beyond_the_fit_is_clamped_to_max_depth():
    """A negative shift puts pixels predicted 0 (the sky) at a negative sqrt-disparity: they
    are counted and set to max_depth, not squared into a near depth."""
    gt = np.full((4, 5), 2.0)
    gt[0, 0], gt[1, 1], gt[2, 2] = 1.0, 4.0, 9.0
    # sqrt(1/d) = 2 p - 0.1: p = (1/sqrt(d) + 0.1) / 2
    pred = ((gt**-0.5 + 0.1) / 2.0).astype(np.float64)
    pred[3] = 0.0  # a row of sky: value -0.1
    reference = np.where(pred > 0, gt, 0.0)
    result = metric_from_depth_map(pred, reference, "sqrt_disparity", max_depth=50.0)
    assert result.scale == pytest.approx(2.0) and result.shift == pytest.approx(-0.1)
    assert result.clamped_far == 5 and result.clamped_near == 0
    np.testing.assert_array_equal(result.depth[3], np.float32(50.0))
    np.testing.assert_allclose(result.depth[:3], gt[:3], rtol=1e-6)


def test_apply_fit_clamps_by_hand():
    pred = np.linspace(0.0, 1.0, 11)  # 0, 0.1, ..., 1
    # sqrt space, value 2 p - 0.5 in [-0.5, 1.5]; max 100 m <-> value 0.1 (p < 0.3),
    # min 0.5 m <-> value sqrt(2) = 1.414 (p > 0.957)
    depth, near, far = apply_fit(pred, 2.0, -0.5, "sqrt_disparity", 0.5, 100.0)
    assert (near, far) == (1, 3)
    np.testing.assert_allclose(depth[:3], 100.0)
    np.testing.assert_allclose(depth[-1], 0.5)
    np.testing.assert_allclose(depth[3], 100.0, rtol=1e-5)  # value 0.1 exactly: not clamped
    np.testing.assert_allclose(depth[5], 1.0 / 0.5**2, rtol=1e-6)
    np.testing.assert_allclose(depth[8], 1.0 / 1.1**2, rtol=1e-6)
    # depth space: value 10 p - 2; non-positive depth clamps to min, beyond 5.5 m to max
    depth, near, far = apply_fit(pred, 10.0, -2.0, "depth", 0.5, 5.5)
    assert (near, far) == (3, 3)  # p <= 0.2: <= 0 m; p >= 0.8: >= 6 m
    np.testing.assert_allclose(depth, np.clip(10.0 * pred - 2.0, 0.5, 5.5), rtol=1e-6)


def test_save_depth_writes_npy_and_millimetre_png(tmp_path):
    depth = np.array([[0.5, 1.2344], [65.535, 70.0]], dtype=np.float32)
    npy, png, beyond = save_depth(depth, tmp_path / "sub" / "metric")
    assert npy == tmp_path / "sub" / "metric.npy" and png == tmp_path / "sub" / "metric.png"
    np.testing.assert_array_equal(np.load(npy), depth)
    with Image.open(png) as image:
        units = np.asarray(image)
    assert units.tolist() == [[500, 1234], [65535, 0]]  # 70 m does not fit: 0 = invalid
    assert beyond == 1
    # and the loader reads it back as a reference
    np.testing.assert_allclose(load_depth_map(png, 0.001), [[0.5, 1.234], [65.535, 0.0]])


def test_reference_and_points_errors(tmp_path):
    pred, gt = make_case("sqrt_disparity", shape=(6, 8))
    one = np.zeros_like(gt)
    one[2, 3] = 4.0
    with pytest.raises(InputFileError, match=r"ref\.npy: 1 known depth\(s\) to fit on, need at"):
        metric_from_depth_map(pred, one, source="ref.npy")
    with pytest.raises(InputFileError, match=r"ref\.npy: the reference is 6x7 .* is 6x8"):
        metric_from_depth_map(pred, gt[:, :7], source="ref.npy")
    flat = np.full_like(pred, 0.25)
    with pytest.raises(InputFileError, match="the prediction is 0.25 at all 48 fitted pixels"):
        metric_from_depth_map(flat, gt, source="ref.npy")
    with pytest.raises(InputFileError, match="beyond the sqrt_disparity space's 1000 m"):
        metric_from_depth_map(pred, gt, max_depth=2000.0)
    zero_pred = pred.copy()
    zero_pred[0, :2] = 0.0  # sqrt-disparity fits leave prediction 0 out, as evaluation
    pts = KnownPoints(np.array([0, 1, 5]), np.array([0, 0, 5]), np.ones(3), np.array([2, 3, 4]))
    with pytest.raises(InputFileError, match=r"points: 1 known depth\(s\).*a prediction > 0"):
        metric_from_points(zero_pred, pts)
    assert metric_from_points(zero_pred, pts, "depth").fitted == 3  # depth space keeps them

    csv = write_csv(tmp_path / "pts.csv", "x,y,metres\n1,1,2.0\n\n8,2,3.0\n")
    with pytest.raises(InputFileError, match=r"pts\.csv line 4: pixel x=8, y=2 is outside the 8x6"):
        metric_from_points(pred, read_points(csv))
    bad = [
        ("x,y,depth\n1,1,2\n", r"no column metres in the header row \['x', 'y', 'depth'\]"),
        ("x,y,metres\n1,1,2\n1,abc,3\n", r"line 3: y='abc' is not a number"),
        ("x,y,metres\n1,1,0\n", r"line 2: metres=0.0 is not a depth"),
        ("x,y,metres\n1,1\n", r"line 2: metres=None is not a number"),
    ]
    for text, message in bad:
        with pytest.raises(InputFileError, match=message):
            read_points(write_csv(tmp_path / "bad.csv", text))
    with pytest.raises(MissingPathError, match=r"nothing\.csv: no such file"):
        read_points(tmp_path / "nothing.csv")
    Image.fromarray(np.zeros((6, 8), dtype=np.uint16)).save(tmp_path / "ref.png")
    with pytest.raises(InputFileError, match=r"ref\.png: a PNG depth map needs its depth scale"):
        load_depth_map(tmp_path / "ref.png")
    Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(InputFileError, match=r"rgb\.png: expected a single-channel 16-bit PNG"):
        load_depth_map(tmp_path / "rgb.png", 0.001)
    np.save(tmp_path / "bad.npy", np.array([[np.nan, 0.5]], dtype=np.float32))
    with pytest.raises(InputFileError, match=r"bad\.npy: 1 prediction values are NaN"):
        load_prediction(tmp_path / "bad.npy")
    with pytest.raises(InputFileError, match=r"rgb\.png: expected the float32 \.npy that predict"):
        load_prediction(tmp_path / "rgb.png")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(InputFileError, match=r"cube\.npy: expected a relative prediction of shape"):
        load_prediction(tmp_path / "cube.npy")


def test_metric_depth_tool(tmp_path):
    """The command a user runs: a 16-bit millimetre reference in, metres out; a bad CSV gives
    one error line and exit 2."""
    pred, gt = make_case("sqrt_disparity", shape=(30, 40), seed=3)
    np.save(tmp_path / "photo.npy", pred)
    units = np.round(gt * 1000).astype(np.uint16)
    units[:5] = 0  # no measurement there
    Image.fromarray(units).save(tmp_path / "sensor.png")
    out = tmp_path / "metric" / "photo_metric.npy"
    tool = [sys.executable, str(REPO / "tools" / "metric_depth.py"), str(tmp_path / "photo.npy")]
    run = subprocess.run(
        [*tool, "--reference", str(tmp_path / "sensor.png"), "--depth-scale", "0.001"]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "fit in sqrt_disparity space on 1000 of 1000 valid pixels" in run.stdout
    depth = np.load(out)
    assert depth.shape == (30, 40) and depth.dtype == np.float32
    # the reference is rounded to millimetres: the fit is that close to the GT
    np.testing.assert_allclose(depth, gt, rtol=2e-3)
    with Image.open(out.with_suffix(".png")) as image:
        written = np.asarray(image)
    assert written.dtype == np.uint16
    np.testing.assert_array_equal(written, np.round(depth.astype(np.float64) * 1000))

    csv = write_csv(tmp_path / "points.csv", "x,y,metres\n3,4,2.5\n50,4,3.0\n")
    run = subprocess.run(
        [*tool, "--points", str(csv), "--out", str(tmp_path / "never.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.strip() == (
        f"metric_depth: error: {csv} line 3: pixel x=50, y=4 is outside the 40x30 prediction "
        "(x in 0..39, y in 0..29)"
    )
    assert not (tmp_path / "never.npy").exists()
