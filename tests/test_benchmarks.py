"""Tests of the benchmark readers: tiny fixtures in each benchmark's real layout, read from a
folder and from tar archives of it, and the real RGB-D frames of tests/data/real_rgbd.

Expected valid-pixel counts are written out by hand from the fixture construction.
"""

from __future__ import annotations

import logging
import math
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dm_lightning.data.benchmarks import (
    BENCHMARKS,
    DEPTH_DECODERS,
    ETH3D_GT_SHAPE,
    RGBDFolder,
    get_benchmark,
    kitti_eigen_mask,
)
from dm_lightning.data.collate import collate

REAL = Path(__file__).resolve().parent / "data" / "real_rgbd"
LAYOUTS = ["folder", "tar", "tar_nested"]


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _rgb(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    _png(path, rgb)
    return rgb


def _roots(folder: Path, lines: list[str], nested: bool = True) -> dict[str, Path]:
    """The list file, the folder, its tar with ``./`` members and (optionally) its tar with the
    folder's name as the single top-level directory."""
    base = folder.parent
    (base / "list.txt").write_text("\n".join(lines))  # no final newline, like the real lists
    roots = {"list": base / "list.txt", "folder": folder}
    variants = {"tar": "."} | ({"tar_nested": folder.name} if nested else {})
    for variant, arcname in variants.items():
        roots[variant] = base / f"{variant}.tar"
        with tarfile.open(roots[variant], "w") as tar:
            tar.add(folder, arcname=arcname)
    return roots


def _check_format(sample: dict, name: str, shape: tuple[int, int]) -> None:
    assert sample["rgb"].dtype == torch.uint8 and sample["rgb"].shape == (3, *shape)
    assert sample["depth"].dtype == torch.float32 and sample["depth"].shape == (1, *shape)
    assert sample["valid"].dtype == torch.bool and sample["valid"].shape == (1, *shape)
    assert sample["source"] == name and "." not in sample["key"]
    assert isinstance(sample["min_depth"], float) and isinstance(sample["max_depth"], float)


# ------------------------------------------------------------------------------------ NYUv2


@pytest.fixture(scope="module")
def nyu(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nyu") / "nyu_test"
    full = np.full((480, 640), 2000, np.uint16)  # 2 m everywhere
    holes = full.copy()
    holes[100:110, 100:120] = 0  # 200 missing pixels inside the Eigen crop
    holes[200:205, 300:310] = 12000  # 50 pixels at 12 m > max 10 m
    holes[300, 300] = 10000  # exactly 10 m: the range is open
    holes[0:10, :] = 0  # outside the crop (rows < 45): no effect on the count
    lines = []
    for i, depth in enumerate((full, holes), start=1):
        scene = f"test/kitchen_000{i}"
        _rgb(root / scene / f"rgb_000{i}.png", 480, 640, seed=i)
        _png(root / scene / f"depth_000{i}.png", depth)
        lines.append(f"{scene}/rgb_000{i}.png {scene}/depth_000{i}.png {scene}/filled_000{i}.png")
    return _roots(root, lines)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_nyu(nyu, layout):
    ds = get_benchmark("nyu", nyu[layout], list_file=nyu["list"])
    assert len(ds) == 2 and ds.name == "nyu" and ds.processing_res is None
    full, holes = ds[0], ds[1]
    _check_format(full, "nyu", (480, 640))
    assert (full["min_depth"], full["max_depth"]) == (1e-3, 10.0)
    assert full["key"] == "test_kitchen_0001_rgb_0001"
    rgb = np.array(Image.open(nyu["folder"] / "test/kitchen_0001/rgb_0001.png"))
    assert torch.equal(full["rgb"], torch.from_numpy(rgb).permute(2, 0, 1))
    assert torch.all(full["depth"] == 2.0)  # decoded outside the crop too, only marked invalid
    valid = full["valid"][0]
    assert valid.sum() == 426 * 560 == 238560
    assert valid[45:471, 41:601].all() and not valid[:45].any() and not valid[:, 601:].any()
    assert holes["valid"].sum() == 238560 - 200 - 50 - 1
    assert holes["depth"][0, 100, 100] == 0 and holes["depth"][0, 200, 300] == 12.0


def test_tar_reader_in_worker_processes(nyu):
    ds = get_benchmark("nyu", nyu["tar"], list_file=nyu["list"])
    expected = [ds[0]["valid"].sum(), ds[1]["valid"].sum()]  # opens the archive here first
    clone = pickle.loads(pickle.dumps(ds))  # open archive handles are not pickled
    assert clone[1]["key"] == "test_kitchen_0002_rgb_0002"
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    (batch,) = list(loader)
    assert batch["valid"].shape == (2, 1, 480, 640)
    assert batch["valid"].sum(dim=(1, 2, 3)).tolist() == expected


# ------------------------------------------------------------------------------------ KITTI


@pytest.fixture(scope="module")
def kitti(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kitti") / "kitti_eigen_test"
    # Frame A, 375x1242: KB crop top = 375 - 352 = 23, left = (1242 - 1216) // 2 = 13.
    gt_a = np.full((375, 1242), 20 * 256, np.uint16)  # 20 m everywhere
    gt_a[23, 13] = 7 * 256  # first pixel of the KB crop
    rgb_a = np.zeros((375, 1242, 3), np.uint8)
    rgb_a[23, 13] = (255, 0, 0)  # first pixel of the KB crop
    rgb_a[22, 13] = (0, 255, 0)  # cropped away
    # Frame B, 370x1224: top = 18, left = 4; sparse like LiDAR.
    gt_b = np.zeros((370, 1224), np.uint16)
    gt_b[168:178] = 30 * 256  # cropped rows 150:160, inside the Eigen rows 117:321
    gt_b[170, 100:110] = 85 * 256  # 10 pixels beyond 80 m (cropped row 152, cols 96:106)
    gt_b[175, 600] = 80 * 256  # exactly 80 m: the range is open
    gt_b[28, 0:50] = 30 * 256  # cropped row 10: above the Eigen crop
    gt_b[0:18] = 30 * 256  # removed by the KB crop
    rgb_b = np.zeros((370, 1224, 3), np.uint8)
    lines = []
    frames = [("0002", "0000000069", rgb_a, gt_a), ("0036", "0000000005", rgb_b, gt_b)]
    for drive, frame, rgb, gt in frames:
        rgb_rel = f"2011_09_26/2011_09_26_drive_{drive}_sync/image_02/data/{frame}.png"
        gt_rel = f"2011_09_26_drive_{drive}_sync/proj_depth/groundtruth/image_02/{frame}.png"
        _png(root / rgb_rel, rgb)
        _png(root / gt_rel, gt)
        lines.append(f"{rgb_rel} {gt_rel} 721.5377")
    lines.insert(1, "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000072.png None 721.5")
    return _roots(root, lines)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kitti(kitti, layout):
    ds = get_benchmark("kitti", kitti[layout], list_file=kitti["list"])
    assert len(ds) == 2  # the line without GT is skipped
    assert ds.entries[0].extra == ("721.5377",)
    a, b = ds[0], ds[1]
    _check_format(a, "kitti", (352, 1216))
    assert (a["min_depth"], a["max_depth"]) == (1e-5, 80.0)
    assert a["key"] == "2011_09_26_2011_09_26_drive_0002_sync_image_02_data_0000000069"
    assert a["rgb"][:, 0, 0].tolist() == [255, 0, 0] and a["rgb"].sum() == 255
    assert a["depth"][0, 0, 0] == 7.0 and a["depth"][0, 1, 1] == 20.0
    # Eigen crop of 352x1216 (Marigold's int() rounding): rows 117:321, cols 43:1172.
    assert a["valid"].sum() == 204 * 1129 == 230316
    assert a["valid"][0, 117:321, 43:1172].all() and not a["valid"][0, 116].any()
    assert b["valid"].sum() == 10 * 1129 - 10 - 1
    assert b["depth"][0, 152, 96] == 85.0 and not b["valid"][0, 152, 96]
    assert b["depth"][0, 10, 0] == 30.0 and not b["valid"][0, 10].any()


def test_kitti_eigen_rounding_matches_spec_fractions():
    mask = kitti_eigen_mask(352, 1216)
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    # docs/method.md §6's 4-digit fractions give the same bounds at the KB-crop size.
    assert (rows[0], rows[-1] + 1) == (int(0.3324 * 352), int(0.9135 * 352)) == (117, 321)
    assert (cols[0], cols[-1] + 1) == (int(0.0359 * 1216), int(0.9641 * 1216)) == (43, 1172)


# ------------------------------------------------------------------------------------ ETH3D


@pytest.fixture(scope="module")
def eth3d(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eth3d") / "eth3d"
    rgb_rel = "rgb/office/images/dslr_images/DSC_0219.JPG"
    gt_rel = "depth/office_dslr_depth/office/ground_truth_depth/dslr_images/DSC_0219.JPG"
    # The real RGB is 6048x4032 like the GT; a small one checks the resize to GT size.
    rgb = np.empty((8, 12, 3), np.uint8)
    rgb[:] = (10, 20, 30)
    _png(root / rgb_rel, rgb)  # PNG bytes under a .JPG name: PIL reads by content
    gt = np.full(ETH3D_GT_SHAPE, 3.5, "<f4")  # the format fixes 4032x6048 float32
    gt[:100] = np.inf  # 100 * 6048 = 604800 pixels without GT
    gt[1000:1010, 2000:2010] = 0  # 100
    gt[2000, 3000] = np.nan  # 1
    (root / gt_rel).parent.mkdir(parents=True)
    gt.tofile(root / gt_rel)
    return _roots(root, [f"{rgb_rel} {gt_rel}"], nested=False)


@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_eth3d(eth3d, layout):
    ds = get_benchmark("eth3d", eth3d[layout], list_file=eth3d["list"])
    assert ds.processing_res == 756
    sample = ds[0]
    _check_format(sample, "eth3d", ETH3D_GT_SHAPE)
    assert sample["min_depth"] == 1e-5 and sample["max_depth"] == math.inf
    assert sample["valid"].sum() == 4032 * 6048 - 604800 - 100 - 1 == 23780635
    assert sample["depth"][0, 0, 0] == 0 and sample["depth"][0, 2000, 3000] == 0  # inf, NaN
    assert sample["depth"][0, 500, 500] == 3.5
    # RGB upsampled to GT size; bilinear keeps a uniform colour exact.
    assert sample["rgb"][:, ::997, ::1009].reshape(3, -1).unique(dim=1).tolist() == [
        [10],
        [20],
        [30],
    ]


def test_eth3d_wrong_size_names_file(tmp_path):
    (tmp_path / "rgb.JPG").write_bytes(b"")
    (tmp_path / "gt.bin").write_bytes(np.zeros(100, "<f4").tobytes())
    (tmp_path / "list.txt").write_text("rgb.JPG gt.bin\n")
    ds = get_benchmark("eth3d", tmp_path, list_file=tmp_path / "list.txt")
    with pytest.raises(ValueError, match=r"gt\.bin.*4032x6048"):
        ds[0]


# ---------------------------------------------------------------------------------- ScanNet


@pytest.fixture(scope="module")
def scannet(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scannet") / "scannet_val"
    depth = np.full((48, 64), 1500, np.uint16)  # 1.5 m
    depth[0:4] = 0  # 256 missing
    depth[10, 0:8] = 10000  # exactly 10 m: 8 invalid
    depth[11] = 20000  # 20 m: 64 invalid
    _rgb(root / "scene0000_00/color/000000.jpg", 48, 64)
    _png(root / "scene0000_00/depth/000000.png", depth)
    # Colour larger than depth (as in raw ScanNet): resized to the GT size.
    _rgb(root / "scene0000_00/color/000100.jpg", 96, 128)
    _png(root / "scene0000_00/depth/000100.png", np.full((48, 64), 1500, np.uint16))
    lines = [f"scene0000_00/color/{f}.jpg scene0000_00/depth/{f}.png" for f in ("000000", "000100")]
    return _roots(root, lines)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scannet(scannet, layout, caplog):
    ds = get_benchmark("scannet", scannet[layout], list_file=scannet["list"])
    first = ds[0]
    _check_format(first, "scannet", (48, 64))
    assert (first["min_depth"], first["max_depth"]) == (1e-3, 10.0)
    assert first["valid"].sum() == 48 * 64 - 256 - 8 - 64 == 2744
    assert first["depth"][0, 5, 5] == pytest.approx(1.5) and first["depth"][0, 11, 0] == 20.0
    with caplog.at_level(logging.WARNING, logger="dm_lightning.data.benchmarks"):
        second = ds[1]
    _check_format(second, "scannet", (48, 64))
    assert second["valid"].all() and "resizing RGB to the GT size" in caplog.text


# ------------------------------------------------------------------------------------ DIODE


@pytest.fixture(scope="module")
def diode(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("diode") / "diode_val"
    depth = np.full((24, 32, 1), 5.0, np.float32)  # DIODE's (H, W, 1)
    depth[0, 0:4] = 0.3  # below the range but masked valid: kept as is (only predictions clip)
    depth[1, 0:4] = 500.0  # above the range, masked valid: kept as is
    depth[2, 0:4] = np.nan  # 4 invalid although the mask says valid
    depth[3, 0:4] = 0.0  # 4 invalid although the mask says valid
    mask = np.ones((24, 32), np.float32)
    mask[20:24] = 0  # 128 masked out
    lines = []
    flat = np.full((24, 32), 2.0, np.float32)  # (H, W) also occurs
    items = (
        ("indoors/scene_00019/scan_00183/00019_00183_indoors_000_010", depth, mask),
        ("outdoor/scene_00022/scan_00193/00022_00193_outdoor_000_000", flat, mask > -1),
    )
    for stem, d, m in items:
        _rgb(root / f"{stem}.png", 24, 32)
        np.save(root / f"{stem}_depth.npy", d)
        np.save(root / f"{stem}_depth_mask.npy", m)
        lines.append(f"{stem}.png {stem}_depth.npy {stem}_depth_mask.npy")
    return _roots(root, lines)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_diode(diode, layout):
    ds = get_benchmark("diode", diode[layout], list_file=diode["list"])
    assert ds.processing_res == 640
    indoor, outdoor = ds[0], ds[1]
    _check_format(indoor, "diode", (24, 32))
    assert (indoor["min_depth"], indoor["max_depth"]) == (0.6, 350.0)
    depth, valid = indoor["depth"][0], indoor["valid"][0]
    assert valid.sum() == 24 * 32 - 4 - 4 - 128 == 632
    assert depth[0, 0] == pytest.approx(0.3) and valid[0, 0]
    assert depth[1, 0] == 500.0 and valid[1, 0]
    assert depth[2, 0] == 0 and not valid[2, 0] and depth[3, 0] == 0 and not valid[3, 0]
    assert depth[21, 5] == 5.0 and not valid[21, 5]
    assert outdoor["valid"].all() and torch.all(outdoor["depth"] == 2.0)


# ------------------------------------------------------------------ packaged reference lists


@pytest.mark.parametrize(
    ("name", "count"),
    [("nyu", 654), ("kitti", 652), ("eth3d", 454), ("scannet", 800), ("diode", 771)],
)
def test_packaged_lists(tmp_path, name, count):
    ds = get_benchmark(name, tmp_path)  # nothing is read before __getitem__
    assert len(ds) == len(set(ds.keys)) == count
    assert not any("." in key for key in ds.keys)


# --------------------------------------------------------------------------- real RGB-D frames


@pytest.mark.parametrize(
    ("folder", "decode", "lo", "hi", "invalid"),
    [
        ("tum", "tum", 1.46, 9.33, 0.19),
        ("sun", "sun_rgbd", 1.06, 9.87, 0.18),
        ("nyu_raw", "nyu_raw", 1.39, 6.69, None),
    ],
)
def test_real_frames(folder, decode, lo, hi, invalid):
    suffix = {"tum": "png", "sun": "jpg", "nyu_raw": "ppm"}[folder]
    depth_name = "depth.pgm" if folder == "nyu_raw" else "depth.png"
    ds = RGBDFolder(REAL, f"{{key}}/color.{suffix}", f"{{key}}/{depth_name}", decode=decode)
    assert len(ds) == 1
    sample = ds[0]
    _check_format(sample, "rgbd", (480, 640))
    assert sample["key"] == folder
    depth = sample["depth"][sample["valid"]]
    assert depth.min().item() == pytest.approx(lo, abs=0.01)
    assert depth.max().item() == pytest.approx(hi, abs=0.01)
    if invalid is not None:
        assert 1 - sample["valid"].float().mean().item() == pytest.approx(invalid, abs=0.01)


def test_tum_scale_equals_decoder():
    by_scale = RGBDFolder(REAL, "{key}/color.png", "{key}/depth.png", depth_scale=1 / 5000)[0]
    by_name = RGBDFolder(REAL, "{key}/color.png", "{key}/depth.png", decode="tum")[0]
    assert torch.equal(by_scale["depth"], by_name["depth"])


@pytest.mark.parametrize("as_tar", [False, True])
def test_real_redwood(tmp_path, as_tar):
    root = REAL / "redwood_synthetic"
    if as_tar:
        with tarfile.open(tmp_path / "redwood.tar", "w") as tar:
            tar.add(root, arcname="redwood_synthetic")
        root = tmp_path / "redwood.tar"
    ds = RGBDFolder(root, "color/{key}.jpg", "depth/{key}.png", depth_scale=1e-3, max_depth=20.0)
    assert ds.keys == ["00000", "00001", "00002", "00003", "00004"]
    samples = [ds[i] for i in range(len(ds))]
    depth = torch.cat([s["depth"][s["valid"]] for s in samples])
    assert depth.min().item() == pytest.approx(0.95, abs=0.01)
    assert depth.max().item() == pytest.approx(2.70, abs=0.01)
    assert pickle.loads(pickle.dumps(ds))[4]["key"] == "00004"


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_missing_file_is_named(nyu, layout, tmp_path):
    listed = tmp_path / "list.txt"
    listed.write_text("test/kitchen_0009/rgb_0009.png test/kitchen_0009/depth_0009.png\n")
    ds = get_benchmark("nyu", nyu[layout], list_file=listed)
    with pytest.raises(FileNotFoundError, match="test/kitchen_0009/depth_0009.png") as err:
        ds[0]
    assert str(nyu[layout]) in str(err.value) and "expected layout" in str(err.value)


def test_other_errors(tmp_path):
    with pytest.raises(ValueError, match="known: diode, eth3d, kitti, nyu, scannet"):
        get_benchmark("nyuv3", tmp_path)
    assert sorted(BENCHMARKS) == ["diode", "eth3d", "kitti", "nyu", "scannet"]
    with pytest.raises(FileNotFoundError, match="no_such_root"):
        get_benchmark("nyu", tmp_path / "no_such_root")
    (tmp_path / "short.txt").write_text("a.png b.npy\n")
    with pytest.raises(ValueError, match=r"short\.txt:1: expected at least 3"):
        get_benchmark("diode", tmp_path, list_file=tmp_path / "short.txt")
    with pytest.raises(FileNotFoundError, match="depth/00000.pgm"):
        RGBDFolder(REAL / "redwood_synthetic", "color/{key}.jpg", "depth/{key}.pgm", 1e-3)
    with pytest.raises(ValueError, match="exactly one of depth_scale"):
        RGBDFolder(REAL, "{key}/color.png", "{key}/depth.png", 1e-3, decode="tum")
    with pytest.raises(ValueError, match="known: nyu_raw, redwood, sun_rgbd, tum"):
        RGBDFolder(REAL, "{key}/color.png", "{key}/depth.png", decode="kinect")
    assert set(DEPTH_DECODERS) == {"nyu_raw", "redwood", "sun_rgbd", "tum"}
