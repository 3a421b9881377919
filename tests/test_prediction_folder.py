"""Evaluating prediction files of any model (PredictionFolder): file formats and their errors,
exact affine predictions in each space and at other resolutions, KITTI's crop, the settings
recorded with results, and ``dm-lightning predict``'s files evaluating to the numbers of
``dm-lightning test`` of the same model, per image."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import yaml
from helpers import cli_args, reference
from PIL import Image

from dm_lightning.cli import main, run_cli
from dm_lightning.data.benchmarks import BenchmarkSpec
from dm_lightning.data.datamodule import BenchmarkDataModule
from dm_lightning.errors import ConfigError, InputFileError
from dm_lightning.evaluation.prediction_files import read_prediction
from dm_lightning.evaluation.prediction_folder import PredictionFolder
from dm_lightning.evaluation.scoring import METRIC_NAMES
from dm_lightning.evaluation.settings import dm_lightning_version
from dm_lightning.hub.eval_results import read_eval_results

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
SCRIPT = Path(sys.executable).parent / "dm-lightning"
U32 = 2.0**-24  # float32 unit roundoff (relative)


def _write_pfm(path: Path, values: np.ndarray, little_endian: bool = True) -> None:
    """A greyscale PFM: header, then float32 rows bottom first."""
    dtype, scale = ("<f4", -1.0) if little_endian else (">f4", 1.0)
    header = f"Pf\n{values.shape[1]} {values.shape[0]}\n{scale}\n".encode()
    path.write_bytes(header + np.flipud(values).astype(dtype).tobytes())


# ---------------------------------------------------------------------------- file formats


def test_formats_read_back(tmp_path):
    values = np.random.default_rng(0).uniform(0.5, 9.0, (5, 7))
    np.save(tmp_path / "a.npy", values.astype(np.float32)[None])  # (1, H, W)
    np.save(tmp_path / "b.npy", values[..., None])  # (H, W, 1) float64: kept float64
    _write_pfm(tmp_path / "c.pfm", values)
    _write_pfm(tmp_path / "d.pfm", values, little_endian=False)
    units = (values * 1000).astype(np.uint16)
    Image.fromarray(units).save(tmp_path / "e.png")
    np.save(tmp_path / "f.npy", units)
    expected32 = values.astype(np.float32)
    for name in ("a.npy", "c.pfm", "d.pfm"):
        read = read_prediction(tmp_path / name)
        assert read.dtype == np.float32 and np.array_equal(read, expected32), name
    assert read_prediction(tmp_path / "b.npy").dtype == np.float64
    assert np.array_equal(read_prediction(tmp_path / "b.npy"), values)
    for name in ("e.png", "f.npy"):  # integers are read exactly, as their units
        assert np.array_equal(read_prediction(tmp_path / name), units.astype(np.float64)), name


def _bad_files(folder: Path) -> dict[str, str]:
    """File name -> the words its error must contain."""
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "grey8.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "rgb.png")
    np.save(folder / "uint8.npy", np.zeros((4, 4), np.uint8))
    np.save(folder / "bool.npy", np.zeros((4, 4), bool))
    nan = np.ones((4, 4), np.float32)
    nan[1, :3] = np.nan
    np.save(folder / "nan.npy", nan)
    np.save(folder / "stack.npy", np.ones((2, 4, 4), np.float32))
    (folder / "colour.pfm").write_bytes(b"PF\n2 2\n-1.0\n" + bytes(48))
    (folder / "short.pfm").write_bytes(b"Pf\n4 4\n-1.0\n" + bytes(8))
    (folder / "broken.npy").write_bytes(b"not an array")
    (folder / "photo.jpg").write_bytes(b"")
    return {
        "grey8.png": "single-channel 16-bit PNG, got mode L",
        "rgb.png": "got mode RGB",
        "uint8.npy": "uint8 values (256 levels) are too coarse",
        "bool.npy": "expected numeric prediction values, got dtype bool",
        "nan.npy": "3 of 16 prediction values are NaN or infinite",
        "stack.npy": "got shape (2, 4, 4)",
        "colour.pfm": "a 3-channel PFM",
        "short.pfm": "truncated",
        "broken.npy": "cannot read as a .npy array",
        "photo.jpg": "unknown prediction format",
    }


def test_bad_files_are_named(tmp_path):
    for name, words in _bad_files(tmp_path).items():
        with pytest.raises(InputFileError) as err:
            read_prediction(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: "), err.value
        assert words in str(err.value), (name, str(err.value))


# --------------------------------------------------------- exact affine predictions (DIODE)

GT_SHAPE = (30, 40)
BORDER = 4  # GT pixels left out (DIODE mask): where a resize's filter is cut by the edge
SPACES = ("depth", "disparity", "sqrt_disparity")
# Prediction sizes: the GT's, twice it (shrunk, antialiased: at an integer factor the filter
# is symmetric about each output pixel, so a plane stays exact) and half (enlarged bilinearly).
SIZES = {"same": GT_SHAPE, "larger": (60, 80), "smaller": (15, 20)}


def _space_value(space: str, shape: tuple[int, int]) -> np.ndarray:
    """A plane in ``space`` sampled at the centres of a ``shape`` grid laid over the GT frame
    (so that every size samples the same plane: bilinear resizing is exact on it away from
    the edges). Spans depths of 2..20 m."""
    lo, hi = sorted(reference.to_space(np.array([2.0, 20.0]), space))
    rows = (np.arange(shape[0]) + 0.5) * GT_SHAPE[0] / shape[0] - 0.5
    cols = (np.arange(shape[1]) + 0.5) * GT_SHAPE[1] / shape[1] - 0.5
    ramp = 0.6 * cols[None, :] / (GT_SHAPE[1] - 1) + 0.4 * rows[:, None] / (GT_SHAPE[0] - 1)
    return lo + (hi - lo) * ramp


def _depth_of(value: np.ndarray, space: str) -> np.ndarray:
    return {"depth": value, "disparity": 1.0 / value, "sqrt_disparity": value**-2.0}[space]


def _diode(root: Path, depth: np.ndarray) -> Path:
    """A one-frame DIODE root (float32 GT, the mask without a border band); returns its list."""
    stem = "indoors/scene_00001/scan_00001/00001_00001_indoors_000_010"
    (root / stem).parent.mkdir(parents=True)
    Image.fromarray(np.zeros((*GT_SHAPE, 3), np.uint8)).save(root / f"{stem}.png")
    np.save(root / f"{stem}_depth.npy", depth.astype(np.float32)[..., None])
    mask = np.zeros(GT_SHAPE, np.float32)
    mask[BORDER:-BORDER, BORDER:-BORDER] = 1
    np.save(root / f"{stem}_depth_mask.npy", mask)
    (root.parent / "list.txt").write_text(f"{stem}.png {stem}_depth.npy {stem}_depth_mask.npy\n")
    return root.parent / "list.txt"


def _evaluate(model: PredictionFolder, specs: dict[str, BenchmarkSpec]) -> dict[str, float]:
    dm = BenchmarkDataModule(specs, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.test(model, dm, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@pytest.mark.parametrize("space", SPACES)
def test_exact_affine_predictions_score_zero_error(tmp_path, space):
    """GT that is a plane in ``space``; predictions 2.5 x plane + 0.3 at three sizes (float64
    .npy, as the stem of the list path) score AbsRel 0 and delta1 1.

    Tolerance: the only inexact inputs are the GT's float32 rounding (relative u = 2^-24 per
    depth, at most u in the fitted space value) and float64 arithmetic (1e-16). A least-squares
    fit of exact affine data perturbed by at most u relative moves each fitted value by a few
    u; back to depth that is at most twice that relative (the square of sqrt-disparity), plus
    the GT's own u: 8u bounds every pixel's relative error, hence AbsRel."""
    depth = _depth_of(_space_value(space, GT_SHAPE), space)
    list_file = _diode(tmp_path / "diode", depth)
    folders = {}
    for name, size in SIZES.items():
        stem = tmp_path / name / "indoors/scene_00001/scan_00001/00001_00001_indoors_000_010"
        stem.parent.mkdir(parents=True)
        np.save(f"{stem}.npy", 2.5 * _space_value(space, size) + 0.3)
        folders[name] = str(tmp_path / name)
    specs = {n: BenchmarkSpec("diode", str(tmp_path / "diode"), str(list_file)) for n in SIZES}
    metrics = _evaluate(PredictionFolder(folders, space), specs)
    for name in SIZES:
        assert metrics[f"test/{name}/num_images"] == 1
        assert metrics[f"test/{name}/abs_rel"] < 8 * U32, (name, metrics[f"test/{name}/abs_rel"])
        assert metrics[f"test/{name}/delta1"] == 1.0


@pytest.mark.parametrize("fit_space", ["disparity", "sqrt_disparity"])
def test_depth_known_up_to_scale_fits_in_another_space(tmp_path, fit_space):
    """Depth known up to a scale (3 x GT, a scale-invariant depth model) converts exactly to
    the disparity spaces (1/x, sqrt): AbsRel 0 there too (tolerance as above); a value <= 0
    cannot be converted and is named."""
    depth = _depth_of(_space_value("depth", GT_SHAPE), "depth")
    list_file = _diode(tmp_path / "diode", depth)
    stem = tmp_path / "pred" / "indoors/scene_00001/scan_00001/00001_00001_indoors_000_010"
    stem.parent.mkdir(parents=True)
    np.save(f"{stem}.npy", 3.0 * depth)
    spec = {"diode": BenchmarkSpec("diode", str(tmp_path / "diode"), str(list_file))}
    model = PredictionFolder(str(tmp_path / "pred"), "depth", fit_space)
    metrics = _evaluate(model, spec)
    assert metrics["test/diode/abs_rel"] < 8 * U32 and metrics["test/diode/delta1"] == 1.0
    bad = 3.0 * depth
    bad[0, :2] = 0.0
    np.save(f"{stem}.npy", bad)
    with pytest.raises(InputFileError, match=r"00_010\.npy: 2 of 1200 values are <= 0"):
        _evaluate(PredictionFolder(str(tmp_path / "pred"), "depth", fit_space), spec)


def test_other_aspect_ratio_is_warned_about(tmp_path):
    """A transposed map is resized like any other size, but said once."""
    list_file = _diode(tmp_path / "diode", np.full(GT_SHAPE, 5.0))
    stem = tmp_path / "pred" / "indoors/scene_00001/scan_00001/00001_00001_indoors_000_010"
    stem.parent.mkdir(parents=True)
    np.save(f"{stem}.npy", np.random.default_rng(0).uniform(1, 2, GT_SHAPE[::-1]))
    spec = {"diode": BenchmarkSpec("diode", str(tmp_path / "diode"), str(list_file))}
    with pytest.warns(UserWarning, match=r"00_010\.npy: the prediction is 40x30 and the ground "):
        _evaluate(PredictionFolder(str(tmp_path / "pred"), "depth"), spec)


def test_space_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"space: unknown space 'metric'; expected one of"):
        PredictionFolder(str(tmp_path), "metric")
    with pytest.raises(ConfigError, match=r"fit_space: unknown space 'log'"):
        PredictionFolder(str(tmp_path), "depth", "log")
    with pytest.raises(ConfigError, match=r"sqrt_disparity space are affine-invariant"):
        PredictionFolder(str(tmp_path), "sqrt_disparity", "depth")
    with pytest.raises(ConfigError, match=r"space is required"):
        PredictionFolder(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"predictions: no folder .*nowhere"):
        PredictionFolder(str(tmp_path / "nowhere"), "depth")


# ------------------------------------------------------------------------------- KITTI crop


def test_uncropped_kitti_prediction_is_cropped_like_the_image(tmp_path):
    """A prediction at the raw 375x1242 frame size is KB-cropped like the image, not resized:
    depth GT in 1/256 m steps (exact in the uint16 PNG), prediction 2 GT + 1 over the whole
    raw frame, so only the right crop scores 0 (exactly: no float32 step on the way)."""
    rng = np.random.default_rng(0)
    units = rng.integers(256, 70 * 256, (375, 1242)).astype(np.uint16)
    root = tmp_path / "kitti"
    rgb = "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png"
    gt = "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png"
    for rel, image in ((rgb, np.zeros((375, 1242, 3), np.uint8)), (gt, units)):
        (root / rel).parent.mkdir(parents=True)
        Image.fromarray(image).save(root / rel)
    (tmp_path / "list.txt").write_text(f"{rgb} {gt} 721.5377\n")
    pred = tmp_path / "pred" / rgb
    pred.parent.mkdir(parents=True)
    np.save(pred.with_suffix(".npy"), 2.0 * units / 256.0 + 1.0)
    spec = {"kitti": BenchmarkSpec("kitti", str(root), str(tmp_path / "list.txt"))}
    metrics = _evaluate(PredictionFolder(str(tmp_path / "pred"), "depth"), spec)
    assert metrics["test/kitti/abs_rel"] < 1e-12 and metrics["test/kitti/delta1"] == 1.0


# ---------------------------------------------- predict's files against test of the model

RES = 64
SPLITS = {"tum": 1, "redwood_synthetic": 5}


@pytest.fixture(scope="module")
def model_runs(tmp_path_factory, tiny_model):
    """configs/eval/real_rgbd.yaml (two of its folders, at 64 px): ``dm-lightning predict``
    and ``test`` of the tiny model, then ``test`` of predict's folder through the installed
    script in a subprocess. Returns the folders: data config, predictions, the two reports."""
    tmp = tmp_path_factory.mktemp("predictions")
    cfg = yaml.safe_load((CONFIGS / "eval" / "real_rgbd.yaml").read_text())
    benchmarks = cfg["data"]["init_args"]["benchmarks"]
    cfg["data"]["init_args"]["benchmarks"] = {n: benchmarks[n] for n in SPLITS}
    for spec in cfg["data"]["init_args"]["benchmarks"].values():
        spec.update(root=str(REPO / spec["root"]), processing_res=RES)
    data = tmp / "data.yaml"
    data.write_text(yaml.safe_dump(cfg, sort_keys=False))
    writer = ["--trainer.callbacks.init_args.output_dir", str(tmp / "pred")]
    predict = cli_args("predict", [CONFIGS / "predict.yaml", data], tiny_model, extra=writer)
    run_cli([*predict, "--trainer.accelerator", "cpu"])
    report = ["--trainer.callbacks+=dm_lightning.EvaluationReport"]
    report += ["--trainer.callbacks.output_dir", str(tmp / "model_report")]
    run_cli(cli_args("test", [CONFIGS / "tiny" / "eval.yaml", data], tiny_model, tmp, extra=report))
    command = cli_args(
        "test",
        [CONFIGS / "eval" / "predictions.yaml", data],
        None,
        tmp / "runs",
        model__init_args__predictions=tmp / "pred",
        model__init_args__space="sqrt_disparity",
        trainer__callbacks__init_args__output_dir=tmp / "folder_report",
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [str(SCRIPT), *command], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reports = {"model": tmp / "model_report", "folder": tmp / "folder_report"}
    return {"data": data, "pred": tmp / "pred", **reports}


def _rows(report: Path, split: str) -> dict[str, dict[str, float]]:
    with open(report / f"per_image_{split}.csv", newline="") as f:
        return {r.pop("key"): {k: float(v) for k, v in r.items()} for r in csv.DictReader(f)}


# 480x640 frames: the most pixels one per-image metric sums.
MAX_PIXELS = 480 * 640


def test_predict_files_evaluate_to_the_numbers_of_test(model_runs):
    """Per image, the same numbers. predict's ``.npy`` holds the very float32 map ``test``
    scored (the same network call on the same input, in the same process), the CSVs write
    floats exactly (repr), and both runs score it with the same float64 code. Only the order
    of its float64 sums may differ (the folder's run is a process of one thread, the model's
    runs in this one, with its thread count): a sum of n terms in another order moves by at
    most n * 2^-53 relative."""
    rel = MAX_PIXELS * 2.0**-53  # 3.4e-11
    for split, count in SPLITS.items():
        ours, model = _rows(model_runs["folder"], split), _rows(model_runs["model"], split)
        assert len(ours) == count and ours.keys() == model.keys(), split
        for key, row in ours.items():
            assert row.keys() == model[key].keys()
            for metric, value in row.items():
                assert value == pytest.approx(model[key][metric], rel=rel, abs=0), (key, metric)


def test_predict_png_evaluates_as_its_units(model_runs, tmp_path):
    """predict's 16-bit PNGs (the map stretched to 0..65535) in their own folder: scored as
    their integer units by the numpy reference of docs/method.md §6 (tolerance: the reader's
    float32 GT against the reference's float64, relative 2^-24 per pixel, 1e-6 bounds it)."""
    for png in model_runs["pred"].glob("*.png"):
        if not png.name.endswith("_color.png"):
            shutil.copy(png, tmp_path / png.name)
    args = ["--model.init_args.predictions", str(tmp_path), "--model.init_args.space"]
    configs = [CONFIGS / "eval" / "predictions.yaml", model_runs["data"]]
    out = ["--trainer.callbacks.init_args.output_dir", str(tmp_path / "report")]
    run_cli(cli_args("test", configs, None, tmp_path, extra=[*args, "sqrt_disparity", *out]))
    real = REPO / "tests" / "data" / "real_rgbd"
    units = np.asarray(Image.open(tmp_path / "tum.png")).astype(np.float64)
    gt = np.asarray(Image.open(real / "tum" / "depth.png")).astype(np.float64) / 5000.0
    expected = reference.evaluate_image(units, gt, gt > 0, 0.0, np.inf)
    row = _rows(tmp_path / "report", "tum")["tum"]
    for name in METRIC_NAMES:
        assert row[name] == pytest.approx(float(expected[name]), rel=1e-6), name


def test_results_record_their_settings(model_runs):
    """results.json holds the settings of both runs and results.md prints them under the
    table; the model card's reader still reads both files."""
    model = json.loads((model_runs["model"] / "results.json").read_text())
    folder = json.loads((model_runs["folder"] / "results.json").read_text())
    version = dm_lightning_version()
    assert model["settings"] == {
        "dm_lightning": version,
        "model": model["model"],
        "target": "sqrt_disparity",
        "fit_space": "sqrt_disparity",
    }
    assert folder["model"] == str(model_runs["pred"])
    assert folder["settings"] == {
        "dm_lightning": version,
        "predictions": str(model_runs["pred"]),
        "prediction_space": "sqrt_disparity",
        "fit_space": "sqrt_disparity",
    }
    for record, res in ((model, RES), (folder, "as predicted")):
        settings = {b["name"]: b["settings"] for b in record["benchmarks"]}
        assert list(settings) == list(SPLITS)
        tum = settings["tum"]
        assert tum["processing_res"] == res and tum["reader"] == "RGBDFolder"
        assert (tum["images"], tum["crop"], tum["depth_range"]) == (1, "none", [0.0, None])
        assert tum["layout"] == "{key}/color.png with a matching {key}/depth.png"
        assert read_eval_results(model_runs["model"]).benchmarks[0].metrics  # still readable
    table = (model_runs["folder"] / "results.md").read_text()
    head, settings_part = table.split("Settings: ")
    assert "| this model |" in head
    assert settings_part.startswith(
        f"dm_lightning {version}; predictions `{model_runs['pred']}` in sqrt_disparity space; "
        "fit (alignment) space **sqrt_disparity**."
    )
    assert (
        "| redwood_synthetic | color/{key}.jpg with a matching depth/{key}.png | 5 | "
        "as predicted | none | GT strictly inside the depth range | 0 .. ∞ |"
    ) in settings_part
    assert f"| tum | {{key}}/color.png with a matching {{key}}/depth.png | 1 | {RES} |" in (
        (model_runs["model"] / "results.md").read_text()
    )


def test_benchmark_list_settings(tmp_path):
    """A benchmark reader records its list file and the list's sha256."""
    list_file = _diode(tmp_path / "diode", np.full(GT_SHAPE, 5.0))
    dm = BenchmarkDataModule({"d": BenchmarkSpec("diode", str(tmp_path / "diode"), str(list_file))})
    settings = dm.eval_dataset("d").settings()
    assert settings["list_file"] == str(list_file)
    assert settings["list_sha256"] == hashlib.sha256(list_file.read_bytes()).hexdigest()
    assert settings["depth_range"] == [0.6, 350.0] and settings["mask"].startswith("the provided")


# --------------------------------------------------------------------------------- errors


def test_missing_predictions_stop_before_evaluating(model_runs, tmp_path, capsys):
    """Exit 2 at set-up, one line naming how many files are missing and the file expected
    (``main`` is the installed script's entry point; the fixture ran the script itself)."""
    for npy in model_runs["pred"].glob("*.npy"):
        if npy.stem not in ("00001", "00003"):
            shutil.copy(npy, tmp_path / npy.name)
    configs = [CONFIGS / "eval" / "predictions.yaml", model_runs["data"]]
    args = cli_args("test", configs, None, tmp_path / "runs")
    args += ["--model.init_args.predictions", str(tmp_path)]
    assert main([*args, "--model.init_args.space", "sqrt_disparity"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dm-lightning: error: 2 of 5 images of split 'redwood_synthetic' have no prediction "
        f"file in {tmp_path}: expected, for color/00001.jpg, {tmp_path}/color/00001.npy (or "
        f"00001.npy, as dm-lightning predict names it; .npy / .pfm / .png each); images "
        f"without one: color/00001.jpg, color/00003.jpg"
    )


def test_bad_file_and_unknown_space_through_the_cli(model_runs, tmp_path, capsys):
    for npy in model_runs["pred"].glob("*.npy"):
        shutil.copy(npy, tmp_path / npy.name)
    np.save(tmp_path / "00002.npy", np.zeros((4, 4), np.uint8))
    configs = [CONFIGS / "eval" / "predictions.yaml", model_runs["data"]]
    base = cli_args("test", configs, None, tmp_path / "runs")
    folder = ["--model.init_args.predictions", str(tmp_path)]
    assert main([*base, *folder, "--model.init_args.space", "sqrt_disparity"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        f"dm-lightning: error: {tmp_path / '00002.npy'}: uint8 values (256 levels) are too "
        "coarse for depth metrics: save float32, or integers of 16 bits or more"
    )
    assert main([*base, *folder, "--model.init_args.space", "inverse_depth"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (
        "dm-lightning: error: model.init_args.space: unknown space 'inverse_depth'; expected "
        "one of sqrt_disparity, disparity, depth"
    )
