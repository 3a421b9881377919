"""Tests of the Hypersim / Virtual KITTI 2 converters on tiny fixtures in the real layouts."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dm_lightning.data.crops import kitti_benchmark_crop
from dm_lightning.data.schema import decode_sample
from dm_lightning.data.shard_reader import iter_shard
from dm_lightning.data.shards import read_shard_keys
from dm_lightning.data.sources import frames
from dm_lightning.data.sources.frames import ConversionOptions
from dm_lightning.data.sources.hypersim import convert_hypersim
from dm_lightning.data.sources.raster import (
    distance_to_planar_depth,
    nearest_exact_indices,
    tone_map,
)
from dm_lightning.data.sources.spec import VKITTI
from dm_lightning.data.sources.vkitti import convert_vkitti
from dm_lightning.data.splits import load_split, read_split_file
from dm_lightning.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# Raw Hypersim fixture: 48x64 frames, so f = 886.81 * 64 / 1024 px.
RAW_H, RAW_W = 48, 64
RAW_FOCAL = 886.81 * RAW_W / 1024
HDR_COLOR = (0.2, 0.4, 0.8)
# Tone mapping of HDR_COLOR by hand: brightness b = 0.3 * 0.2 + 0.59 * 0.4 + 0.11 * 0.8 = 0.384
# is the 90th percentile of a constant image; scale s = 0.8 ** 2.2 / b, so a channel c becomes
# (s * c) ** (1 / 2.2) = 0.8 * (c / b) ** (1 / 2.2):
#   R: 0.8 * (0.2 / 0.384) ** 0.4545 = 0.59472 -> 255 * 0.59472 = 151.65 -> 151 (truncated)
#   G: 0.8 * (0.4 / 0.384) ** 0.4545 = 0.81498 -> 207.82 -> 207
#   B: 0.8 * (0.8 / 0.384) ** 0.4545 = 1.1168 -> clipped to 1 -> 255
TONE_MAPPED = [151, 207, 255]


def _read(paths) -> list[dict]:
    return [decode_sample(raw) for path in paths for raw in iter_shard(path)]


def _write_list(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    # Registered first, as an import would, so dataclasses can resolve the module's names.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# Fixtures in the real layouts
# --------------------------------------------------------------------------------------------


def _write_hdf5(path: Path, array: np.ndarray) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset", data=array)


@pytest.fixture(scope="module")
def hypersim_raw(tmp_path_factory) -> Path:
    """Raw release layout, scene ai_001_001, camera 00, frames 0000-0002 (0002 has no color).

    Frame 0000: HDR_COLOR everywhere, but 100.0 (very bright) where the entity id is -1 (source
    rows 0-7, columns 56-63); distance 10 m everywhere, NaN at source pixel (24, 32).
    Frame 0001: distance 3 m; frame 0002: distance 4 m.
    """
    root = tmp_path_factory.mktemp("hypersim_raw")
    images = root / "ai_001_001" / "images"
    for frame, distance in ((0, 10.0), (1, 3.0), (2, 4.0)):
        color = np.empty((RAW_H, RAW_W, 3), np.float16)
        color[:] = HDR_COLOR
        entity = np.full((RAW_H, RAW_W), 7, np.int32)
        dist = np.full((RAW_H, RAW_W), distance, np.float16)
        if frame == 0:
            entity[0:8, 56:64] = -1
            color[0:8, 56:64] = 100.0
            dist[24, 32] = np.nan
        if frame != 2:
            _write_hdf5(images / f"scene_cam_00_final_hdf5/frame.{frame:04d}.color.hdf5", color)
        geometry = images / "scene_cam_00_geometry_hdf5"
        _write_hdf5(geometry / f"frame.{frame:04d}.depth_meters.hdf5", dist)
        _write_hdf5(geometry / f"frame.{frame:04d}.render_entity_id.hdf5", entity)
    return root


HYPERSIM_LIST = [
    "ai_001_001/rgb_cam_00_fr0000.png ai_001_001/depth_plane_cam_00_fr0000.png",
    "ai_001_001/rgb_cam_00_fr0001.png ai_001_001/depth_plane_cam_00_fr0001.png",
    "ai_001_001/rgb_cam_00_fr0002.png ai_001_001/depth_plane_cam_00_fr0002.png",
]


def _png_frame(frame: int) -> tuple[np.ndarray, np.ndarray]:
    """A 96x128 preprocessed frame: RGB encodes position, depth in mm (0 at (0, 0) = invalid,
    65500 mm = 65.5 m at (1, 1), beyond the 65 m range)."""
    rows, cols = np.mgrid[0:96, 0:128]
    rgb = np.stack([rows * 2, cols * 2, np.full_like(rows, 50 * frame)], axis=2).astype(np.uint8)
    depth = (1000 + 10 * rows + cols + 1000 * frame).astype(np.uint16)
    depth[0, 0] = 0
    depth[1, 1] = 65500
    return rgb, depth


@pytest.fixture(scope="module")
def hypersim_png(tmp_path_factory) -> Path:
    """Preprocessed layout ROOT/train/ai_001_001/{rgb,depth_plane}_cam_00_frNNNN.png, 2 frames,
    plus ROOT.tar holding it under the prefix hypersim_processed/."""
    root = tmp_path_factory.mktemp("hypersim_png")
    scene = root / "train" / "ai_001_001"
    scene.mkdir(parents=True)
    for frame in (0, 1):
        rgb, depth = _png_frame(frame)
        Image.fromarray(rgb).save(scene / f"rgb_cam_00_fr{frame:04d}.png")
        Image.fromarray(depth).save(scene / f"depth_plane_cam_00_fr{frame:04d}.png")
    with tarfile.open(root / "processed.tar", "w") as tar:
        tar.add(root / "train", arcname="hypersim_processed/train")
    return root


VK_H, VK_W = 375, 1242
VKITTI_FRAMES = [
    ("Scene01", "clone", "Camera_0", 0),
    ("Scene01", "clone", "Camera_0", 1),
    ("Scene01", "clone", "Camera_1", 0),
    ("Scene01", "15-deg-left", "Camera_0", 0),
    ("Scene01", "15-deg-left", "Camera_1", 0),
]


def _vkitti_units(seed: int) -> np.ndarray:
    """375x1242 uint16 centimetres encoding position: row * 128 + column % 128 (+ seed); the
    sky (65535) in rows 30-39."""
    rows, cols = np.mgrid[0:VK_H, 0:VK_W]
    units = (rows * 128 + cols % 128 + seed).astype(np.uint16)
    units[30:40] = 65535
    return units


def _vkitti_paths(scene, variation, camera, frame) -> tuple[str, str]:
    base = f"{scene}/{variation}/frames"
    return (
        f"{base}/rgb/{camera}/rgb_{frame:05d}.jpg",
        f"{base}/depth/{camera}/depth_{frame:05d}.png",
    )


@pytest.fixture(scope="module")
def vkitti(tmp_path_factory) -> tuple[Path, Path]:
    """Release layout with the frames of VKITTI_FRAMES, and a list file naming them."""
    root = tmp_path_factory.mktemp("vkitti")
    lines = []
    rng = np.random.default_rng(0)
    for seed, frame in enumerate(VKITTI_FRAMES):
        rgb_path, depth_path = _vkitti_paths(*frame)
        for rel in (rgb_path, depth_path):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
        rgb = rng.integers(0, 256, size=(VK_H // 25, VK_W // 23, 3), dtype=np.uint8)
        Image.fromarray(rgb).resize((VK_W, VK_H)).save(root / rgb_path, quality=90)
        Image.fromarray(_vkitti_units(seed)).save(root / depth_path)
        lines.append(f"{rgb_path} {depth_path}")
    return root, _write_list(root / "list.txt", lines)


# --------------------------------------------------------------------------------------------
# Pixel operations
# --------------------------------------------------------------------------------------------


def test_planar_depth_closed_form() -> None:
    distance = np.full((5, 7), 2.0)
    depth = distance_to_planar_depth(distance, focal=4.0)
    assert depth.dtype == np.float32 and depth.shape == (5, 7)
    # The centre pixel (2, 3) lies on the optical axis: depth = distance.
    assert depth[2, 3] == pytest.approx(2.0, abs=1e-6)
    # Pixel (0, 0): x = 0.5 - 3.5 = -3, y = 0.5 - 2.5 = -2 -> 2 * 4 / sqrt(9 + 4 + 16).
    assert depth[0, 0] == pytest.approx(8 / math.sqrt(29), abs=1e-6)
    assert depth[4, 6] == pytest.approx(8 / math.sqrt(29), abs=1e-6)
    # Default focal: 886.81 px at width 1024, scaled with the width (here 7 px).
    f = 886.81 * 7 / 1024
    assert distance_to_planar_depth(distance)[0, 0] == pytest.approx(
        2 * f / math.sqrt(9 + 4 + f**2), abs=1e-6
    )
    assert np.isnan(distance_to_planar_depth(np.array([[np.nan, 1.0]]))[0, 0])


def test_tone_map_known_values() -> None:
    rgb = np.empty((4, 5, 3))
    rgb[:] = HDR_COLOR
    rgb[0] = 100.0  # a bright row, left out of the percentile by the mask
    valid = np.ones((4, 5), bool)
    valid[0] = False
    out = tone_map(rgb, valid)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[1:], np.broadcast_to(TONE_MAPPED, (3, 5, 3)))
    np.testing.assert_array_equal(out[0], 255)
    # Were the bright row counted, the 90th percentile would be 100: the image turns dark.
    assert tone_map(rgb)[1, 0, 0] < 30
    # No valid pixel: scale 1, so 0.25 -> 255 * 0.25 ** (1 / 2.2) = 135.79 -> 135.
    grey = np.full((2, 2, 3), 0.25)
    np.testing.assert_array_equal(tone_map(grey, np.zeros((2, 2), bool)), 135)
    # A 90th percentile below 1e-4: scale 0 (black), as the reference tone mapper.
    np.testing.assert_array_equal(tone_map(np.full((2, 2, 3), 5e-5)), 0)


def test_nearest_exact_and_kitti_crop() -> None:
    # floor((i + 0.5) * in / out), e.g. 768 -> 480 starts 0, 2, 4, 5 (torch's nearest-exact).
    np.testing.assert_array_equal(nearest_exact_indices(768, 480)[:4], [0, 2, 4, 5])
    np.testing.assert_array_equal(nearest_exact_indices(5, 3), [0, 2, 4])
    np.testing.assert_array_equal(nearest_exact_indices(2, 5), [0, 0, 1, 1, 1])
    rows, cols = np.mgrid[0:VK_H, 0:VK_W]
    crop = kitti_benchmark_crop(rows * 10000 + cols)
    assert crop.shape == (352, 1216)
    assert crop[0, 0] == 23 * 10000 + 13  # top = 375 - 352, left = (1242 - 1216) // 2
    assert crop[-1, -1] == 374 * 10000 + 1228
    with pytest.raises(ValueError, match="cannot crop 352x1216 from an image of 300x1242"):
        kitti_benchmark_crop(np.zeros((300, 1242)))


def test_shipped_split_lists() -> None:
    train = load_split("hypersim_train_filtered")
    assert len(train) == 53_885
    assert train[0].rgb == "ai_001_001/rgb_cam_00_fr0000.png"
    assert train[0].depth == "ai_001_001/depth_plane_cam_00_fr0000.png"
    assert len(load_split("hypersim_val_filtered")) == 7_370
    assert len(load_split("hypersim_val_small_80")) == 80
    vk_train = load_split("vkitti_train")
    assert len(vk_train) == 20_148
    assert {e.rgb.split("/")[0] for e in vk_train} == {"Scene02", "Scene06", "Scene18", "Scene20"}
    assert {e.rgb.split("/")[0] for e in load_split("vkitti_val")} == {"Scene01"}
    with pytest.raises(KeyError, match="no split list 'nyu_train'"):
        load_split("nyu_train")


# --------------------------------------------------------------------------------------------
# Hypersim
# --------------------------------------------------------------------------------------------


def test_hypersim_raw_conversion(hypersim_raw: Path, tmp_path: Path, caplog) -> None:
    split_list = _write_list(tmp_path / "list.txt", HYPERSIM_LIST)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        summary = convert_hypersim(
            hypersim_raw, out, ConversionOptions(split_list=split_list, per_shard=2, progress=False)
        )
    assert summary["layout"] == "raw"
    # Frame 0002 has no color file: skipped, counted, and logged with its path.
    missing = "ai_001_001/images/scene_cam_00_final_hdf5/frame.0002.color.hdf5"
    assert (summary["frames"], summary["samples"], summary["skipped_frames"]) == (3, 2, 1)
    assert len(summary["problems"]) == 1 and missing in summary["problems"][0]
    assert missing in caplog.text
    # Shard 1 would only hold the missing frame: it is not written.
    assert [os.path.basename(p) for p in summary["shards"]] == ["train-000000.tar"]
    assert sorted(os.listdir(out / "hypersim")) == ["train-000000.tar"]

    first, second = _read(summary["shards"])
    assert first["key"] == "ai_001_001-cam_00-0000"
    meta = first["meta"]
    assert (meta["source"], meta["scene"], meta["camera"], meta["frame"]) == (
        "hypersim",
        "ai_001_001",
        "cam_00",
        0,
    )
    assert (meta["height"], meta["width"], meta["depth_scale"]) == (480, 640, 1e-3)
    assert (meta["min_depth"], meta["max_depth"]) == (1e-5, 65.0)
    assert meta["focal"] == pytest.approx(886.81 * 640 / 1024)

    rgb, depth = first["rgb"], first["depth"]
    assert rgb.shape == (480, 640, 3) and depth.shape == (480, 640)
    # Tone mapping ignored the bright invalid block (output rows 0-79, columns 560-639).
    np.testing.assert_array_equal(rgb[100, 100], TONE_MAPPED)
    np.testing.assert_array_equal(rgb[0, 639], [255, 255, 255])
    # Output (0, 0) samples source (0, 0): x = 0.5 - 32, y = 0.5 - 24.
    corner = 10 * RAW_FOCAL / math.sqrt(31.5**2 + 23.5**2 + RAW_FOCAL**2)  # 8.1574 m
    assert depth[0, 0] == pytest.approx(corner, abs=6e-4)  # millimetre units
    assert depth[479, 0] == pytest.approx(corner, abs=6e-4)
    # Source (24, 31): x = -0.5, y = 0.5, almost on the axis -> output (240, 310).
    near_axis = 10 * RAW_FOCAL / math.sqrt(0.5 + RAW_FOCAL**2)
    assert depth[240, 310] == pytest.approx(near_axis, abs=6e-4)
    # Invalid: entity id -1 at source rows 0-7 x columns 56-63 -> output rows 0-79 x columns
    # 560-639; NaN distance at source (24, 32) -> output rows 240-249 x columns 320-329.
    assert (depth[0:80, 560:640] == 0).all()
    assert (depth[240:250, 320:330] == 0).all()
    assert int((depth == 0).sum()) == 80 * 80 + 10 * 10
    assert second["key"] == "ai_001_001-cam_00-0001"
    assert second["depth"][0, 0] == pytest.approx(3 * corner / 10, abs=6e-4)

    index = json.loads((out / "index.json").read_text())
    entry = index["sources"]["hypersim"]
    assert (entry["source"], entry["height"], entry["width"]) == ("hypersim", 480, 640)
    assert entry["splits"]["train"] == {
        "shards": ["hypersim/train-000000.tar"],
        "num_samples": 2,
        "samples_per_shard": 2,
        "shard_sizes": [2],
    }


def test_hypersim_png_folder_and_tar(hypersim_png: Path, tmp_path: Path) -> None:
    split_list = _write_list(tmp_path / "list.txt", HYPERSIM_LIST[:2])
    results = {}
    for name, source in (("folder", hypersim_png), ("tar", hypersim_png / "processed.tar")):
        summary = convert_hypersim(
            source,
            tmp_path / name,
            ConversionOptions(split_list=split_list, per_shard=5, progress=False),
        )
        assert (summary["layout"], summary["samples"], summary["problems"]) == ("png", 2, [])
        results[name] = _read(summary["shards"])
    for folder_sample, tar_sample in zip(results["folder"], results["tar"]):
        assert folder_sample["key"] == tar_sample["key"]
        np.testing.assert_array_equal(folder_sample["rgb"], tar_sample["rgb"])
        np.testing.assert_array_equal(folder_sample["depth"], tar_sample["depth"])
    for frame, sample in enumerate(results["folder"]):
        rgb, units = _png_frame(frame)
        # 96x128 -> 480x640 nearest-exact repeats every source pixel 5x5.
        np.testing.assert_array_equal(sample["rgb"], rgb.repeat(5, 0).repeat(5, 1))
        expected = units.repeat(5, 0).repeat(5, 1).astype(np.float64) / 1000
        expected[expected >= 65] = 0  # 65.5 m at source (1, 1) is outside (1e-5, 65) m
        np.testing.assert_allclose(sample["depth"], expected, atol=1e-6)
        assert (sample["depth"][5:10, 5:10] == 0).all() and (sample["depth"][0:5, 0:5] == 0).all()
        assert sample["depth"][0, 5] == pytest.approx((1000 + 1 + 1000 * frame) / 1000)


# --------------------------------------------------------------------------------------------
# Virtual KITTI 2
# --------------------------------------------------------------------------------------------


def test_vkitti_crop_units_and_sky(vkitti, tmp_path: Path) -> None:
    root, split_list = vkitti
    summary = convert_vkitti(
        root, tmp_path, ConversionOptions(split_list=split_list, per_shard=2, progress=False)
    )
    assert (summary["frames"], summary["samples"], summary["problems"]) == (5, 5, [])
    samples = _read(summary["shards"])
    assert [s["key"] for s in samples] == [
        "Scene01-clone-Camera_0-00000",
        "Scene01-clone-Camera_0-00001",
        "Scene01-clone-Camera_1-00000",
        "Scene01-15-deg-left-Camera_0-00000",
        "Scene01-15-deg-left-Camera_1-00000",
    ]
    for seed, (frame, sample) in enumerate(zip(VKITTI_FRAMES, samples)):
        meta = sample["meta"]
        assert (meta["source"], meta["scene"], meta["variation"], meta["camera"]) == (
            "vkitti",
            *frame[:3],
        )
        assert (meta["height"], meta["width"], meta["depth_scale"]) == (352, 1216, 0.01)
        # Bottom 352 rows (from row 23), columns 13..1228; depth in metres = cm / 100.
        units = _vkitti_units(seed)[23:, 13:1229].astype(np.float64)
        np.testing.assert_allclose(sample["depth"], units / 100, rtol=1e-6)
        assert sample["depth"][0, 0] == pytest.approx((23 * 128 + 13 + seed) / 100)
        rgb_path = root / _vkitti_paths(*frame)[0]
        np.testing.assert_array_equal(
            sample["rgb"], np.asarray(Image.open(rgb_path).convert("RGB"))[23:, 13:1229]
        )
        # After decoding, the range check of the sample's own JSON rejects the sky.
        depth = sample["depth"]
        valid = (depth > meta["min_depth"]) & (depth < meta["max_depth"])
        # Source rows 30-39 (sky, 655.35 m) are crop rows 7-16.
        assert depth[10, 0] == pytest.approx(655.35) and not valid[7:17].any()
        assert valid[0, 0] and valid[6, 0]  # 29.57 m and 36.25 m (+ seed cm)
        assert not valid[-1, 0]  # 374 * 128 + 13 cm = 478.85 m is beyond 80 m


def test_vkitti_unreadable_input_is_skipped(vkitti, tmp_path: Path, caplog) -> None:
    root, split_list = vkitti
    broken = tmp_path / "broken"
    rgb_rel, depth_rel = _vkitti_paths(*VKITTI_FRAMES[1])
    (broken / depth_rel).parent.mkdir(parents=True)
    (broken / depth_rel).write_bytes(b"not a png")
    # The broken folder comes first: its depth file shadows the good one.
    with caplog.at_level(logging.WARNING):
        summary = convert_vkitti(
            [broken, root],
            tmp_path / "out",
            ConversionOptions(split_list=split_list, per_shard=2, progress=False),
        )
    assert (summary["samples"], summary["skipped_frames"]) == (4, 1)
    assert len(summary["problems"]) == 1
    assert str(broken / depth_rel) in summary["problems"][0]
    assert "cannot decode image" in caplog.text
    assert summary["problems"][0].startswith("Scene01-clone-Camera_0-00001")


def test_vkitti_from_tars_of_the_release_root(vkitti, tmp_path: Path) -> None:
    root, split_list = vkitti
    plain, packed = tmp_path / "vkitti.tar", tmp_path / "vkitti.tar.gz"
    for archive, mode in ((plain, "w"), (packed, "w:gz")):
        with tarfile.open(archive, mode) as tar:
            tar.add(root, arcname=".")  # members ./Scene01/...
    options = ConversionOptions(split_list=split_list, limit=2, per_shard=5, progress=False)
    from_folder = convert_vkitti(root, tmp_path / "folder", options)
    from_tar = convert_vkitti(plain, tmp_path / "tar", options)
    assert (from_tar["samples"], from_tar["problems"]) == (2, [])
    assert Path(from_tar["shards"][0]).read_bytes() == Path(from_folder["shards"][0]).read_bytes()
    # Members are read by offset: a compressed tar is refused, with what to do about it.
    with pytest.raises(ValueError, match="is not an uncompressed tar .*repack it"):
        convert_vkitti(packed, tmp_path / "gz", options)


def test_interrupted_conversion_resumes(vkitti, tmp_path: Path, monkeypatch) -> None:
    root, split_list = vkitti
    real = frames.encode_sample
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the second sample of the second shard
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(frames, "encode_sample", flaky)
    folder = tmp_path / "vkitti"
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert_vkitti(
            root, tmp_path, ConversionOptions(split_list=split_list, per_shard=2, progress=False)
        )
    # Shard 0 completed; shard 1 died half-written and left nothing, not even a .tmp file.
    assert sorted(os.listdir(folder)) == ["train-000000.tar"]
    done = folder / "train-000000.tar"
    assert read_shard_keys(done) == {
        "Scene01-clone-Camera_0-00000",
        "Scene01-clone-Camera_0-00001",
    }
    mtime = done.stat().st_mtime_ns

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    calls["n"] = 0
    monkeypatch.setattr(frames, "encode_sample", counting)
    summary = convert_vkitti(
        root, tmp_path, ConversionOptions(split_list=split_list, per_shard=2, progress=False)
    )
    assert (summary["written"], summary["skipped"], summary["samples"]) == (2, 1, 5)
    assert calls["n"] == 3  # only the frames of shards 1 and 2 were converted
    assert done.stat().st_mtime_ns == mtime
    assert sorted(os.listdir(folder)) == [f"train-00000{i}.tar" for i in range(3)]
    assert len(_read(summary["shards"])) == 5


def test_parallel_workers_match_serial(vkitti, tmp_path: Path) -> None:
    root, split_list = vkitti
    serial = convert_vkitti(
        root,
        tmp_path / "a",
        ConversionOptions(split_list=split_list, limit=4, per_shard=2, progress=False),
    )
    parallel = convert_vkitti(
        root,
        tmp_path / "b",
        ConversionOptions(split_list=split_list, limit=4, per_shard=2, workers=2, progress=False),
    )
    assert parallel["written"] == 2 and parallel["samples"] == serial["samples"] == 4
    for a, b in zip(serial["shards"], parallel["shards"]):
        assert Path(a).read_bytes() == Path(b).read_bytes()  # deterministic shards


# --------------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------------


def test_clis_and_inspect(hypersim_png: Path, vkitti, tmp_path: Path, capsys) -> None:
    root, vk_list = vkitti
    hs_list = _write_list(tmp_path / "hs.txt", HYPERSIM_LIST[:2])
    out = tmp_path / "shards"
    common = ["--out", str(out), "--quiet", "--workers", "1"]
    hypersim_cli = _load_tool("convert_hypersim")
    assert hypersim_cli.main([str(hypersim_png), "--list", str(hs_list), *common]) == 0
    assert "hypersim/train: 2 samples of 2 frames in 1 shard" in capsys.readouterr().out
    vkitti_cli = _load_tool("convert_vkitti")
    assert vkitti_cli.main([str(root), "--list", str(vk_list), "--limit", "3", *common]) == 0
    assert "vkitti/train: 3 samples of 3 frames in 1 shard" in capsys.readouterr().out
    # Both sources share one index.
    index = json.loads((out / "index.json").read_text())
    assert sorted(index["sources"]) == ["hypersim", "vkitti"]
    assert index["sources"]["vkitti"]["splits"]["train"]["shard_sizes"] == [3]
    assert (index["sources"]["vkitti"]["height"], index["sources"]["vkitti"]["width"]) == (
        VKITTI.height,
        VKITTI.width,
    )
    assert index["sources"]["hypersim"]["splits"]["train"]["num_samples"] == 2

    inspect = _load_tool("inspect_shards")
    sheet = tmp_path / "sheet.png"
    pattern = str(out / "{hypersim,vkitti}" / "train-*.tar")
    argv = [pattern, "--sheet", str(sheet), "--rows", "3", "--row-height", "40"]
    assert inspect.main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 shards, 5 samples read, 0 corrupt" in printed
    assert "hypersim: 2 samples, 480x640 x2" in printed
    assert "vkitti: 3 samples, 352x1216 x3" in printed
    # Hypersim depths: 1.001 m at source (0, 1) of frame 0 (its (0, 0) and (1, 1) are invalid)
    # to (1000 + 10 * 95 + 127 + 1000) mm at source (95, 127) of frame 1.
    assert "depth min 1.001 /" in printed and "max 3.077 m" in printed
    image = Image.open(sheet)
    # Rows: hypersim, vkitti, hypersim, 40 px high with 4 px gaps; the widest is vkitti's,
    # RGB and depth of round(1216 * 40 / 352) = 138 px each with a 4 px gap.
    assert image.size == (2 * 138 + 4, 3 * 40 + 2 * 4)
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 50

    for cli in (hypersim_cli, vkitti_cli, inspect):
        with pytest.raises(SystemExit):
            cli.main(["--help"])
    assert "index.json" in capsys.readouterr().out
    # Impossible values: one line naming the option, exit 2, nothing written.
    fresh = tmp_path / "fresh"
    with pytest.raises(SystemExit) as stop:
        vkitti_cli.main([str(root), "--out", str(fresh), "--per-shard", "0"])
    assert stop.value.code == 2 and not fresh.exists()
    err = capsys.readouterr().err
    assert err == "convert_vkitti.py: error: per_shard must be an integer >= 1, got 0\n"


@pytest.mark.parametrize(
    ("field", "value"), [("limit", 0), ("per_shard", -1), ("workers", True), ("per_shard", "2")]
)
def test_conversion_options_refuse_impossible_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"^{field} must be an integer >= 1, got {value!r}$"):
        ConversionOptions(**{field: value})


def test_conversion_options_take_the_first_limit_entries_of_their_list(tmp_path: Path) -> None:
    lines = [f"s/{i}/rgb.png s/{i}/depth.png" for i in range(5)]
    listed = _write_list(tmp_path / "l.txt", lines)
    assert [e.rgb for e in ConversionOptions(split_list=listed, limit=2).entries("x")] == [
        "s/0/rgb.png",
        "s/1/rgb.png",
    ]
    assert len(ConversionOptions(split_list=listed).entries("x")) == 5
    # No list given: the source's shipped list for the split.
    assert len(ConversionOptions(limit=3).entries("vkitti_train")) == 3


def test_split_list_file_formats(tmp_path: Path) -> None:
    import gzip

    lines = ["# comment", "", "a/rgb.png a/depth.png 721.5", "b/rgb.png b/depth.png"]
    plain = _write_list(tmp_path / "l.txt", lines)
    packed = tmp_path / "l.txt.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    for path in (plain, packed):
        entries = read_split_file(path)
        assert [(e.rgb, e.depth, e.extra) for e in entries] == [
            ("a/rgb.png", "a/depth.png", ("721.5",)),
            ("b/rgb.png", "b/depth.png", ()),
        ]
    bad = _write_list(tmp_path / "bad.txt", ["only_one_field"])
    with pytest.raises(ValueError, match="bad.txt, line 1"):
        read_split_file(bad)
