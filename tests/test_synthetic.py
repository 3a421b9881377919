"""Tests of the procedural RGB-D generator: exact geometry, determinism and the shard files."""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from dm_lightning.data import synthetic
from dm_lightning.data.schema import decode_sample, quantize_depth
from dm_lightning.data.synthetic import (
    SOURCES,
    Scene,
    generate,
    render_scene,
    sample_seed,
    write_split,
)
from dm_lightning.data.synthetic.geometry import (
    Box,
    Plane,
    Sphere,
    camera_rays,
    look_rotation,
    ray_cast,
    ray_distance_to_depth,
)
from dm_lightning.data.synthetic.scenes import render

REPO = Path(__file__).resolve().parents[1]


def _scene(primitives, origin, rotation, focal, max_depth=1e9) -> Scene:
    return Scene(
        primitives=list(primitives),
        origin=np.asarray(origin, dtype=np.float64),
        rotation=rotation,
        focal=focal,
        min_depth=1e-3,
        max_depth=max_depth,
        light_dir=np.array([0.0, 0.0, 1.0]),
    )


def _read_shards(paths: list[str]) -> list[dict]:
    # webdataset 1.0 never closes the shard files it opens; collect them here, silently, so the
    # tests also pass under -W error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        samples = [decode_sample(raw) for raw in wds.WebDataset(paths, shardshuffle=False)]
        gc.collect()
    return samples


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def test_camera_rays_are_unit_and_centred() -> None:
    dirs = camera_rays(5, 7, focal=4.0)
    np.testing.assert_allclose(np.linalg.norm(dirs, axis=-1), 1.0, atol=1e-12)
    # Odd sizes: the middle pixel centre lies on the principal point, i.e. the optical axis.
    np.testing.assert_array_equal(dirs[2, 3], [0.0, 0.0, 1.0])
    # Pixel (v=0, u=0) goes through ((0.5 - 3.5) / 4, (0.5 - 2.5) / 4, 1).
    expected = np.array([-0.75, -0.5, 1.0])
    np.testing.assert_allclose(dirs[0, 0], expected / np.linalg.norm(expected), atol=1e-12)


def test_look_rotation_is_a_rotation() -> None:
    rot = look_rotation(0.7, -0.2)
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    # Zero roll: the right axis stays horizontal, and "down" points below the horizon.
    assert abs(rot[2, 0]) < 1e-12
    assert rot[2, 1] < 0


@pytest.mark.parametrize("yaw", [0.0, 1.1])
def test_fronto_parallel_wall_has_constant_planar_depth(yaw: float) -> None:
    height, width, focal, distance = 24, 32, 14.0, 3.7
    rot = look_rotation(yaw, 0.0)
    origin = np.array([0.3, -0.2, 1.5])
    forward = rot[:, 2]
    # The wall is perpendicular to the optical axis at `distance` in front of the camera.
    wall = Plane(tuple(forward), float(forward @ origin) + distance)
    dirs = camera_rays(height, width, focal, rot)
    t, index, normals = ray_cast(origin, dirs, [wall])
    depth = ray_distance_to_depth(t, dirs, rot)
    assert (index == 0).all()
    np.testing.assert_allclose(depth, distance, atol=1e-5)
    # The corners are far off-axis, so ray distance and planar depth differ there.
    assert t[0, 0] > distance * 1.3
    np.testing.assert_allclose(normals, np.broadcast_to(-forward, normals.shape), atol=1e-12)

    _, rendered = render(
        _scene([wall], origin, rot, focal), height, width, np.random.default_rng(0)
    )
    assert rendered.dtype == np.float32
    np.testing.assert_allclose(rendered, distance, atol=1e-5)


def test_camera_frame_wall() -> None:
    dirs = camera_rays(9, 12, focal=5.0)
    t, _, _ = ray_cast(np.zeros(3), dirs, [Plane((0, 0, 1), 2.5)])
    np.testing.assert_allclose(ray_distance_to_depth(t, dirs), 2.5, atol=1e-5)


def test_ground_plane_closed_form() -> None:
    height, width, focal, cam_h = 25, 40, 18.0, 1.6
    cy = height / 2
    rot = look_rotation(0.4, 0.0)
    scene = _scene([Plane((0, 0, 1), 0.0)], [2.0, -1.0, cam_h], rot, focal)
    _, depth = render(scene, height, width, np.random.default_rng(0))
    for v in (13, 14, 17, 20, 24):
        expected = focal * cam_h / (v + 0.5 - cy)
        np.testing.assert_allclose(depth[v], expected, rtol=1e-6)
    # Rows 0..11 look above the horizon and row 12 exactly along it: nothing is hit.
    assert (depth[: height // 2 + 1] == 0).all()
    assert (depth[height // 2 + 1 :] > 0).all()


def test_max_depth_marks_far_ground_invalid() -> None:
    height, width, focal, cam_h = 25, 8, 18.0, 1.6
    scene = _scene([Plane((0, 0, 1), 0.0)], [0, 0, cam_h], look_rotation(0, 0), focal, 20.0)
    _, depth = render(scene, height, width, np.random.default_rng(0))
    rows = np.arange(13, height)
    far = focal * cam_h / (rows + 0.5 - height / 2) >= 20.0
    assert far.any() and (~far).any()
    assert (depth[rows[far]] == 0).all()
    assert (depth[rows[~far]] > 0).all()


def test_sphere_straight_ahead() -> None:
    size, focal, distance, radius = 33, 20.0, 6.0, 1.25
    rot = look_rotation(-0.8, 0.15)
    origin = np.array([1.0, 2.0, 1.4])
    center = origin + distance * rot[:, 2]
    dirs = camera_rays(size, size, focal, rot)
    t, index, normals = ray_cast(origin, dirs, [Sphere(tuple(center), radius)])
    depth = ray_distance_to_depth(t, dirs, rot)
    mid = size // 2
    assert depth[mid, mid] == pytest.approx(distance - radius, abs=1e-9)
    np.testing.assert_allclose(normals[mid, mid], -rot[:, 2], atol=1e-9)
    # The sphere subtends atan(r / sqrt(D^2 - r^2)); corners lie outside that cone.
    assert index[mid, mid] == 0 and index[0, 0] == -1 and np.isinf(t[0, 0])
    hit = index == 0
    assert (depth[hit] >= distance - radius - 1e-9).all() and (depth[hit] <= distance).all()


def test_box_slabs_and_nearest_hit() -> None:
    size, focal = 11, 10.0
    rot = look_rotation(0.0, 0.0)
    origin = np.array([0.0, 0.0, 0.0])
    box = Box((4.0, -1.0, -1.0), (5.0, 1.0, 1.0))
    sphere = Sphere((2.0, 0.0, 0.0), 0.5)
    dirs = camera_rays(size, size, focal, rot)
    t, index, normals = ray_cast(origin, dirs, [box, sphere])
    mid = size // 2
    assert index[mid, mid] == 1 and t[mid, mid] == pytest.approx(1.5)
    # Just off the sphere's silhouette the box front face (x = 4) is hit, facing the camera.
    t, index, normals = ray_cast(origin, dirs, [box])
    depth = ray_distance_to_depth(t, dirs, rot)
    assert index[mid, mid] == 0
    np.testing.assert_allclose(depth[index == 0], 4.0, atol=1e-9)
    np.testing.assert_allclose(normals[mid, mid], [-1.0, 0.0, 0.0])
    # From inside, a ray hits the face it leaves through, with the normal facing back at it.
    t_in, n_in = box.intersect(np.array([4.5, 0.0, 0.0]), np.array([[0.0, 1.0, 0.0]]))
    assert t_in[0] == pytest.approx(1.0)
    np.testing.assert_allclose(n_in[0], [0.0, -1.0, 0.0])


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["indoor", "outdoor"])
def test_render_scene_is_deterministic(source: str) -> None:
    rgb1, depth1, meta1 = render_scene(source, 5, 24, 32)
    rgb2, depth2, meta2 = render_scene(source, 5, 24, 32)
    np.testing.assert_array_equal(rgb1, rgb2)
    np.testing.assert_array_equal(depth1, depth2)
    assert meta1 == meta2
    rgb3, depth3, _ = render_scene(source, 6, 24, 32)
    assert not np.array_equal(rgb1, rgb3)
    assert not np.array_equal(depth1, depth3)
    assert rgb1.shape == (24, 32, 3) and rgb1.dtype == np.uint8
    assert depth1.shape == (24, 32) and depth1.dtype == np.float32
    assert meta1["focal"] > 0 and json.dumps(meta1)


@pytest.mark.parametrize("source", ["indoor", "outdoor"])
def test_default_sizes_and_ranges(source: str) -> None:
    cfg = SOURCES[source]
    assert cfg.max_depth / cfg.depth_scale <= 65535
    rgb, depth, _ = render_scene(source, 0)
    assert rgb.shape == (cfg.height, cfg.width, 3)
    valid = depth > 0
    assert (depth[valid] > cfg.min_depth).all() and (depth[valid] < cfg.max_depth).all()
    # The RGB must carry structure, not a flat colour.
    assert rgb.std() > 10


def test_sample_seeds_do_not_overlap() -> None:
    seeds = {
        sample_seed(base, split, i)
        for base in (0, 1)
        for split in ("train", "val", "test")
        for i in range(0, 100_000, 997)
    }
    assert len(seeds) == 2 * 3 * len(range(0, 100_000, 997))
    with pytest.raises(ValueError):
        sample_seed(0, "train", 100_000)
    with pytest.raises(ValueError):
        sample_seed(0, "dev", 0)


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "height", "width"), [("indoor", 24, 32), ("outdoor", 16, 52)])
def test_shard_round_trip(tmp_path: Path, source: str, height: int, width: int) -> None:
    cfg = SOURCES[source]
    scale = cfg.depth_scale
    counts = {"train": 5, "val": 2, "test": 1}
    seen_seeds: dict[str, set[int]] = {}
    for split, num in counts.items():
        paths = write_split(tmp_path, source, split, num, 2, 3, height, width)
        assert [os.path.basename(p) for p in paths] == [
            f"{split}-{i:06d}.tar" for i in range(-(-num // 2))
        ]
        samples = _read_shards(paths)
        assert len(samples) == num
        seen_seeds[split] = set()
        for index, sample in enumerate(samples):
            assert sample["key"] == f"{source}-{split}-{index:06d}"
            assert "." not in sample["key"]
            seed = sample_seed(3, split, index)
            rgb, depth, meta = render_scene(source, seed, height, width)
            np.testing.assert_array_equal(sample["rgb"], rgb)
            decoded_units = np.round(sample["depth"].astype(np.float64) / scale)
            np.testing.assert_array_equal(decoded_units, quantize_depth(depth, scale))
            np.testing.assert_allclose(sample["depth"], depth, atol=scale / 2 + 1e-6)
            info = sample["meta"]
            assert info["source"] == f"synthetic_{source}"
            assert info["depth_scale"] == scale
            assert info["min_depth"] == cfg.min_depth
            assert info["max_depth"] == cfg.max_depth
            assert (info["height"], info["width"]) == (height, width)
            assert info["focal"] == pytest.approx(meta["focal"])
            assert info["seed"] == seed
            seen_seeds[split].add(seed)
            valid = sample["depth"] > 0
            if source == "outdoor":
                # The sky is invalid: the top row looks above every building somewhere.
                assert not valid[0].all()
                assert valid[-1].all()
            else:
                assert valid.mean() >= 0.99
    assert not seen_seeds["train"] & seen_seeds["val"]
    assert not seen_seeds["train"] & seen_seeds["test"]
    assert not seen_seeds["val"] & seen_seeds["test"]


def _load_cli():
    spec = importlib.util.spec_from_file_location(
        "make_synthetic_shards", REPO / "tools" / "make_synthetic_shards.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_shards_and_index(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cli = _load_cli()
    out = tmp_path / "synthetic"
    argv = ["--out", str(out), "--train", "3", "--val", "1", "--test", "1", "--per-shard", "2"]
    assert cli.main([*argv, "--quiet"]) == 0
    assert "index" in capsys.readouterr().out
    index = json.loads((out / "index.json").read_text())
    for source in ("indoor", "outdoor"):
        entry = index["sources"][source]
        assert (entry["height"], entry["width"]) == (
            SOURCES[source].height,
            SOURCES[source].width,
        )
        assert entry["source"] == f"synthetic_{source}"
        assert entry["splits"]["train"]["shards"] == [
            f"{source}/train-000000.tar",
            f"{source}/train-000001.tar",
        ]
        assert entry["splits"]["train"]["shard_sizes"] == [2, 1]
        assert entry["splits"]["val"]["shards"] == [f"{source}/val-000000.tar"]
        for split in ("train", "val", "test"):
            info = entry["splits"][split]
            assert info["samples_per_shard"] == 2
            assert sum(info["shard_sizes"]) == info["num_samples"]
            for name in info["shards"]:
                assert (out / name).is_file()
    assert sorted(p.name for p in (out / "indoor").iterdir()) == [
        "test-000000.tar",
        "train-000000.tar",
        "train-000001.tar",
        "val-000000.tar",
    ]
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "index.json" in capsys.readouterr().out


def test_no_partial_files_and_rerun_skips(tmp_path: Path) -> None:
    counts = {"train": 3, "val": 1, "test": 0}
    first = generate(tmp_path, counts, sources=("indoor",), samples_per_shard=2, progress=False)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert not [p for p in files if p.name.endswith(".tmp")]
    assert sorted(p.name for p in files) == [
        "index.json",
        "train-000000.tar",
        "train-000001.tar",
        "val-000000.tar",
    ]
    assert first["sources"]["indoor"]["train"]["written"] == 2
    assert first["sources"]["indoor"]["test"]["shards"] == []
    assert len(_read_shards(first["sources"]["indoor"]["val"]["shards"])) == 1

    mtimes = {p: p.stat().st_mtime_ns for p in files if p.suffix == ".tar"}
    second = generate(tmp_path, counts, sources=("indoor",), samples_per_shard=2, progress=False)
    assert second["sources"]["indoor"]["train"]["skipped"] == 2
    assert second["sources"]["indoor"]["train"]["written"] == 0
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    # A damaged shard, or one that no longer holds the expected samples, is rewritten; the
    # complete ones are kept.
    val = tmp_path / "indoor" / "val-000000.tar"
    val.write_bytes(val.read_bytes()[:1000])
    counts["train"] = 4
    third = generate(tmp_path, counts, sources=("indoor",), samples_per_shard=2, progress=False)
    assert third["sources"]["indoor"]["val"]["written"] == 1
    assert third["sources"]["indoor"]["train"]["written"] == 1
    shard0 = tmp_path / "indoor" / "train-000000.tar"
    assert shard0.stat().st_mtime_ns == mtimes[shard0]
    train = _read_shards(third["sources"]["indoor"]["train"]["shards"])
    assert [s["key"] for s in train] == [f"indoor-train-{i:06d}" for i in range(4)]
    assert len(_read_shards([str(val)])) == 1
    assert not list(tmp_path.rglob("*.tmp"))


def test_interrupted_write_leaves_no_shard(tmp_path: Path, monkeypatch) -> None:
    real = synthetic.writer.render_scene
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic.writer, "render_scene", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_split(tmp_path, "indoor", "train", 5, 2, 0, 16, 20)
    folder = tmp_path / "indoor"
    # Shard 0 (samples 0-1) completed; shard 1 died on its second sample and left nothing.
    assert sorted(p.name for p in folder.iterdir()) == ["train-000000.tar"]
    done = folder / "train-000000.tar"
    mtime = done.stat().st_mtime_ns

    monkeypatch.setattr(synthetic.writer, "render_scene", real)
    paths = write_split(tmp_path, "indoor", "train", 5, 2, 0, 16, 20)
    assert done.stat().st_mtime_ns == mtime
    assert [s["key"] for s in _read_shards(paths)] == [f"indoor-train-{i:06d}" for i in range(5)]
    assert sorted(p.name for p in folder.iterdir()) == [os.path.basename(p) for p in paths]


def test_generate_rejects_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown source"):
        generate(tmp_path, {"train": 1}, sources=("mars",), progress=False)
    assert not (tmp_path / "mars").exists()
