"""Coloured PLY point clouds (dm_lightning.inference.pointcloud, tools/point_cloud.py) of a real
photo (tests/data/in_the_wild/06.jpg, 1024x811), read back by parsing the file."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dm_lightning.errors import InputFileError
from dm_lightning.inference.depth_files import save_depth
from dm_lightning.inference.metric_depth import relative_to_depth
from dm_lightning.inference.pointcloud import (
    Intrinsics,
    back_project,
    load_rgb,
    point_cloud,
    read_ply,
    write_ply,
)

REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO / "tests" / "data" / "in_the_wild" / "06.jpg"


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rgb = load_rgb(PHOTO)
    assert rgb.shape == (811, 1024, 3) and rgb.dtype == np.uint8
    return rgb


def ramp_depth(shape) -> np.ndarray:
    """Depth 1 .. ~3 m growing with the row and column, with invalid pixels of every kind."""
    h, w = shape
    v, u = np.mgrid[0:h, 0:w]
    depth = (1.0 + 0.001 * u + 0.002 * v).astype(np.float32)
    depth[0, :] = 0.0
    depth[:, -1] = np.nan
    depth[10, 10:20] = np.inf
    depth[20, 5:8] = -1.0
    return depth


def test_fov_guess():
    k = Intrinsics.from_fov(1024, 811, 60.0)
    assert k.fx == k.fy == pytest.approx(512.0 / math.tan(math.radians(30.0)))
    assert k.fx == pytest.approx(886.810, abs=1e-3)
    assert (k.cx, k.cy) == (511.5, 405.0)
    assert Intrinsics.from_fov(100, 50, 90.0).fx == pytest.approx(50.0)
    with pytest.raises(InputFileError, match=r"field of view must be in \(0, 180\) degrees"):
        Intrinsics.from_fov(100, 50, 180.0)
    with pytest.raises(InputFileError, match="fx=-1"):
        Intrinsics(-1.0, 1.0, 0.0, 0.0)


def test_ply_of_a_photo_read_back(photo, tmp_path):
    depth = ramp_depth(photo.shape[:2])
    k = Intrinsics(fx=800.0, fy=640.0, cx=512.0, cy=400.0)
    points, colors = point_cloud(depth, photo, k)
    path = write_ply(tmp_path / "cloud.ply", points, colors)
    header, vertices = read_ply(path)

    valid = np.isfinite(depth) & (depth > 0)
    n = int(valid.sum())
    assert n == 811 * 1024 - 1024 - 810 - 10 - 3
    assert header == [
        "ply",
        "format binary_little_endian 1.0",
        "comment dm_lightning point cloud: metres, OpenCV camera frame (x right, y down, "
        "z forward)",
        f"element vertex {n}",
        "property float x",
        "property float y",
        "property float z",
        "property uchar red",
        "property uchar green",
        "property uchar blue",
    ]
    header_bytes = len("\n".join([*header, "end_header"]).encode()) + 1
    assert path.stat().st_size == header_bytes + n * 15  # 3 float32 + 3 uint8, packed
    assert len(vertices) == n

    # pixel (u, v) = (100, 50): z = 1 + 0.1 + 0.1 = 1.2, x = (100 - 512) 1.2 / 800,
    # y = (50 - 400) 1.2 / 640; vertices are in row-major pixel order
    i = int(valid[:50].sum() + valid[50, :100].sum())
    assert vertices["z"][i] == pytest.approx(1.2, rel=1e-6)
    assert vertices["x"][i] == pytest.approx(-0.618, rel=1e-5)
    assert vertices["y"][i] == pytest.approx(-0.65625, rel=1e-5)
    assert tuple(vertices[c][i] for c in ("red", "green", "blue")) == tuple(photo[50, 100])
    # the principal point (512, 400) lies on the optical axis
    i = int(valid[:400].sum() + valid[400, :512].sum())
    assert (vertices["x"][i], vertices["y"][i]) == (0.0, 0.0)
    assert vertices["z"][i] == pytest.approx(1.0 + 0.512 + 0.8, rel=1e-6)
    # every colour is its pixel's
    rgb = np.stack([vertices["red"], vertices["green"], vertices["blue"]], axis=1)
    np.testing.assert_array_equal(rgb, photo[valid])
    np.testing.assert_array_equal(vertices["z"], depth[valid])


def test_stride_and_max_depth(photo):
    depth = ramp_depth(photo.shape[:2])
    k = Intrinsics.from_fov(1024, 811)
    points, v, u = back_project(depth, k, stride=4)
    valid = np.isfinite(depth) & (depth > 0)
    assert len(points) == int(valid[::4, ::4].sum())
    assert (v % 4 == 0).all() and (u % 4 == 0).all()
    points, _, _ = back_project(depth, k, max_depth=2.0)
    assert len(points) == int((valid & (depth <= 2.0)).sum()) and points[:, 2].max() <= 2.0
    with pytest.raises(InputFileError, match=r"the image is 811x1024 \(HxW\) but the depth map"):
        point_cloud(depth[:-1], photo, k)


def test_relative_to_depth_by_hand():
    pred = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    # sqrt(1/d) from sqrt(1/10) at 0 to sqrt(1/0.5) at 1
    mid = 1.0 / ((math.sqrt(1 / 10) + math.sqrt(1 / 0.5)) / 2) ** 2
    np.testing.assert_allclose(relative_to_depth(pred, 0.5, 10.0), [[10.0, mid, 0.5]], rtol=1e-6)
    mid = 1.0 / ((1 / 10 + 1 / 0.5) / 2)
    np.testing.assert_allclose(
        relative_to_depth(pred, 0.5, 10.0, "disparity"), [[10.0, mid, 0.5]], rtol=1e-6
    )
    # the depth target has 1 = far
    np.testing.assert_allclose(relative_to_depth(pred, 0.5, 10.0, "depth"), [[0.5, 5.25, 10.0]])
    with pytest.raises(InputFileError, match=r"must be in \[0, 1\].*got values in \[0, 1.5\]"):
        relative_to_depth(pred * 1.5, 0.5, 10.0)
    with pytest.raises(InputFileError, match="need 0 < min depth < max depth"):
        relative_to_depth(pred, 10.0, 0.5)


def test_point_cloud_tool(photo, tmp_path):
    """The command a user runs on a relative prediction: near / far bounds, a FOV guess and a
    stride."""
    h, w = photo.shape[:2]
    pred = np.tile(np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None], (1, w))  # near below
    np.save(tmp_path / "06.npy", pred)
    out = tmp_path / "clouds" / "06.ply"
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "point_cloud.py"), str(PHOTO)]
        + [str(tmp_path / "06.npy"), "--out", str(out), "--relative", "--near", "0.5"]
        + ["--far", "10", "--fov", "70", "--stride", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    f = 512.0 / math.tan(math.radians(35.0))
    assert f"fx {f:.2f}, fy {f:.2f}, cx 511.50, cy 405.00 px" in run.stdout
    header, vertices = read_ply(out)
    n = math.ceil(h / 4) * math.ceil(w / 4)
    assert f"element vertex {n}" in header and len(vertices) == n
    assert f"wrote {out}: {n} points" in run.stdout
    assert vertices["z"][0] == pytest.approx(10.0) and vertices["z"][-1] == pytest.approx(
        1.0 / (math.sqrt(0.1) + (808 / 810) * (math.sqrt(2.0) - math.sqrt(0.1))) ** 2, rel=1e-5
    )
    # the first vertex is pixel (0, 0): x = (0 - 511.5) 10 / f
    assert vertices["x"][0] == pytest.approx(-511.5 * 10.0 / f, rel=1e-5)
    assert tuple(vertices[c][0] for c in ("red", "green", "blue")) == tuple(photo[0, 0])


def test_point_cloud_tool_on_metric_depth(photo, tmp_path):
    """Metric depth as tools/metric_depth.py writes it, given intrinsics and a far limit."""
    depth = ramp_depth(photo.shape[:2])
    depth[600:] = 1000.0  # the sky, clamped to metric_depth's --max-depth
    npy, _, _ = save_depth(depth, tmp_path / "06_metric.npy")
    out = tmp_path / "06.ply"
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "point_cloud.py"), str(PHOTO), str(npy)]
        + ["--out", str(out), "--intrinsics", "800", "640", "512", "400", "--max-depth", "20"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "intrinsics (given): fx 800.00, fy 640.00, cx 512.00, cy 400.00 px" in run.stdout
    _, vertices = read_ply(out)
    valid = np.isfinite(depth) & (depth > 0) & (depth <= 20.0)
    assert len(vertices) == int(valid[:600].sum()) == int(valid.sum())
    # pixel (100, 50) is the same point as in test_ply_of_a_photo_read_back
    i = int(valid[:50].sum() + valid[50, :100].sum())
    xyz = [vertices[c][i] for c in "xyz"]
    np.testing.assert_allclose(xyz, [-0.618, -0.65625, 1.2], rtol=1e-5)


def test_read_ply_refuses_other_files(tmp_path):
    ascii_ply = tmp_path / "ascii.ply"
    ascii_ply.write_text(
        "ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n"
    )
    with pytest.raises(ValueError, match=r"ascii\.ply: not a binary little-endian PLY"):
        read_ply(ascii_ply)
    path = write_ply(tmp_path / "two.ply", np.ones((2, 3)), np.zeros((2, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"two\.ply: truncated: 2 vertices need 30 bytes, 29"):
        read_ply(path)


def test_predict_then_metric_depth_then_point_cloud(tiny_model, tmp_path):
    """The chain on a real model output: predict's .npy (tiny random model) through assumed
    near / far depths, the metric fit recovering that map from the depths, and the cloud."""
    from dm_lightning.inference.api import predict_images
    from dm_lightning.inference.depth_files import load_prediction
    from dm_lightning.inference.metric_depth import metric_from_depth_map

    predict_images(tiny_model, PHOTO, tmp_path, processing_res=64, device="cpu", progress=False)
    pred = load_prediction(tmp_path / "06.npy")
    assert pred.shape == (811, 1024) and 0.0 <= pred.min() < pred.max() <= 1.0
    depth = relative_to_depth(pred, 0.5, 10.0)
    assert 0.5 <= depth.min() and depth.max() <= 10.0
    # sqrt(1/depth) is affine in pred: the fit finds that map's scale and shift
    result = metric_from_depth_map(pred, depth.astype(np.float64))
    a, b = math.sqrt(1 / 10.0), math.sqrt(1 / 0.5)
    assert (result.scale, result.shift) == (pytest.approx(b - a, rel=1e-5), pytest.approx(a))
    np.testing.assert_allclose(result.depth, depth, rtol=1e-4)
    points, colors = point_cloud(result.depth, load_rgb(PHOTO), Intrinsics.from_fov(1024, 811))
    assert len(points) == 811 * 1024 and colors.dtype == np.uint8


def test_colours_come_from_the_photo_as_predict_reads_it(tmp_path):
    """A phone photo stored landscape with "rotate 90" in EXIF: predict's depth map is
    portrait, so the colours must be read portrait too, pixel for pixel."""
    from PIL import Image

    stored = np.asarray(Image.open(PHOTO).convert("RGB").resize((48, 30)))  # 30 x 48
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = tmp_path / "phone.png"  # PNG: lossless, so pixels compare exactly
    Image.fromarray(stored).save(rotated, exif=exif)
    rgb = load_rgb(rotated)
    assert rgb.shape == (48, 30, 3)
    assert np.array_equal(rgb, np.rot90(stored, k=-1))  # clockwise
    depth = np.ones((48, 30), dtype=np.float32)
    _, colors = point_cloud(depth, rgb, Intrinsics.from_fov(30, 48))
    assert np.array_equal(colors, rgb.reshape(-1, 3))
