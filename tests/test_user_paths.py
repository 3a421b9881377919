"""README's user paths chained as a user runs them, through the CLI and the tools, on photos of
odd sizes and aspect ratios (257x199 and 199x311, made from tests/data/in_the_wild):

- predict -> tools/metric_depth.py (--reference and --points) -> tools/point_cloud.py
  (--relative and metric); predict refusing to write over its inputs and a bad
  ``processing_res``;
- fit -> export -> test -> predict, with fit's closing summary.

Everything runs in-process (each subprocess costs ~15 s of imports): the installed
``dm-lightning`` script runs README's commands word for word in test_readme_paths.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from helpers import cli_args
from PIL import Image

from dm_lightning.cli import main, silence_lightning_noise
from dm_lightning.inference.metric_depth import relative_to_depth
from dm_lightning.inference.pointcloud import read_ply
from dm_lightning.testing.tiny_model import TINY_PROCESSING_RES

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
WILD = REPO / "tests" / "data" / "in_the_wild"
# name -> (source photo, (width, height)): neither edge a multiple of the VAE factor 8
ODD = {"wide": ("02.jpg", (257, 199)), "tall": ("07.jpg", (199, 311))}


def load_tool(name: str) -> ModuleType:
    """tools/<name>.py as a module (its main(argv) returns the exit status)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def odd_photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("odd_photos")
    for name, (source, size) in ODD.items():
        Image.open(WILD / source).convert("RGB").resize(size).save(root / f"{name}.jpg")
    return root


@pytest.fixture(scope="module")
def predicted(tiny_model, odd_photos, tmp_path_factory) -> Path:
    """README's predict command at the default processing_res, in this process (the installed
    script runs README's predict word for word in test_readme_paths)."""
    out = tmp_path_factory.mktemp("predictions")
    args = [
        "predict", "--config", str(CONFIGS / "predict.yaml"),
        "--model.init_args.model_path", str(tiny_model),
        "--data.init_args.predict", str(odd_photos),
        "--trainer.callbacks.init_args.output_dir", str(out),
        "--data.init_args.num_workers", "0",
    ]  # fmt: skip
    assert main(args) == 0
    return out


def test_predict_outputs_are_in_unit_range_at_the_input_size(predicted):
    for name, (_, (width, height)) in ODD.items():
        pred = np.load(predicted / f"{name}.npy")
        assert pred.shape == (height, width) and pred.dtype == np.float32
        assert pred.min() >= 0.0 and pred.max() <= 1.0, name  # exactly, no tolerance
        assert np.asarray(Image.open(predicted / f"{name}.png")).shape == (height, width)


def test_metric_depth_then_point_clouds(predicted, odd_photos, tmp_path, capsys):
    metric_depth, point_cloud = load_tool("metric_depth"), load_tool("point_cloud")
    pred = np.load(predicted / "wide.npy")
    # A millimetre "sensor" map of the same size: the prediction read as depth between 0.5 m
    # and 10 m, with a hole; the fit recovers it up to the millimetre rounding.
    truth = relative_to_depth(pred, 0.5, 10.0).astype(np.float64)
    units = np.round(truth * 1000).astype(np.uint16)
    units[:20, :20] = 0
    Image.fromarray(units).save(tmp_path / "sensor.png")
    from_map = tmp_path / "wide_metric.npy"
    args = [str(predicted / "wide.npy"), "--out", str(from_map)]
    assert metric_depth.main([*args, "--reference", str(tmp_path / "sensor.png"),
                              "--depth-scale", "0.001"]) == 0  # fmt: skip
    metres = np.load(from_map)
    assert metres.shape == (199, 257)
    np.testing.assert_allclose(metres, truth, rtol=2e-3)  # mm rounding of depths >= 0.5 m
    # Three measured points instead of a map.
    points = [(10, 150), (128, 100), (250, 5)]
    rows = "".join(f"{x},{y},{truth[y, x]:.4f}\n" for x, y in points)
    (tmp_path / "points.csv").write_text("x,y,metres\n" + rows)
    from_points = tmp_path / "wide_points.npy"
    assert metric_depth.main([str(predicted / "wide.npy"), "--out", str(from_points),
                              "--points", str(tmp_path / "points.csv")]) == 0  # fmt: skip
    np.testing.assert_allclose(np.load(from_points), truth, rtol=2e-3)
    # Point clouds: metric, and relative straight from predict's .npy (both photo sizes).
    cloud = tmp_path / "metric.ply"
    assert point_cloud.main([str(odd_photos / "wide.jpg"), str(from_map), "--out", str(cloud)]) == 0
    assert len(read_ply(cloud)[1]) == 199 * 257
    for name, (_, (width, height)) in ODD.items():
        cloud = tmp_path / f"{name}.ply"
        args = [str(odd_photos / f"{name}.jpg"), str(predicted / f"{name}.npy"), "--relative"]
        assert point_cloud.main([*args, "--out", str(cloud)]) == 0, capsys.readouterr().err
        assert len(read_ply(cloud)[1]) == width * height


def test_point_cloud_script_takes_an_older_prediction_with_float_rounding(
    predicted, odd_photos, tmp_path, capsys
):
    """Outputs of predict before the clip-after-resize fix held values down to -5.96e-08; the
    tool accepts what lies within its stated 1e-6 tolerance."""
    old = np.load(predicted / "tall.npy")
    old[old == old.min()] = -5.96e-8
    np.save(tmp_path / "old.npy", old)
    point_cloud = load_tool("point_cloud")
    capsys.readouterr()
    args = [str(odd_photos / "tall.jpg"), str(tmp_path / "old.npy"), "--relative"]
    assert point_cloud.main([*args, "--out", str(tmp_path / "old.ply")]) == 0
    assert f"{199 * 311} points of 311x199 pixels" in capsys.readouterr().out


def test_predict_refuses_output_over_inputs_and_bad_processing_res(
    tiny_model, odd_photos, tmp_path, capsys
):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.open(odd_photos / "wide.jpg").save(folder / "a.png")
    before = (folder / "a.png").read_bytes()
    base = cli_args(
        "predict", [CONFIGS / "predict.yaml"], tiny_model, data__init_args__predict=folder,
        data__init_args__num_workers=0,
    )  # fmt: skip
    capsys.readouterr()
    assert main([*base, "--trainer.callbacks.init_args.output_dir", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dm-lightning: error: predict would write its depth map over the "
                          f"input image {folder / 'a.png'}")  # fmt: skip
    assert "\n" not in err
    assert (folder / "a.png").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]
    for bad in ("0", "-5", "7", "abc"):
        out = ["--trainer.callbacks.init_args.output_dir", str(tmp_path / "out")]
        code = main([*base, "--model.init_args.processing_res", bad, *out])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert err == (
            "dm-lightning: error: model.init_args.processing_res must be a long edge in pixels "
            ">= 8 (the VAE's downsampling factor), 'native' (each image's own size) or null "
            f"(the model's recorded default, else 768); got {int(bad) if bad != 'abc' else bad!r}"
        )
    assert not (tmp_path / "out").exists()


def test_fit_export_test_predict(tiny_model, data_config, odd_photos, tmp_path, capsys):
    """fit (2 steps: fewer than the 3 batches of an epoch, so no validation) -> export (with
    the recorded processing_res) -> test -> predict on the export at its default."""
    runs = tmp_path / "runs"
    fit = cli_args("fit", [CONFIGS / "tiny" / "stage1.yaml", data_config], tiny_model, runs,
                   trainer__max_steps=2)  # fmt: skip
    assert main(fit) == 0
    printed = capsys.readouterr().out
    run = runs / "stage1" / "version_0"
    summary = printed[printed.index("fit finished after 2 optimizer steps") :]
    assert "  final loss: " in summary
    assert (
        "  no validation ran: validation runs every epoch (3 batches per epoch) and this run "
        "ended at step 2 (raise trainer.max_steps or set trainer.val_check_interval); no best "
        "checkpoint by val/abs_rel was written"
    ) in summary
    assert f"  last checkpoint: {run / 'checkpoints' / 'last.ckpt'}" in summary
    assert f"  export: {run / 'export'}\n" in summary
    assert f"  logs: {run}\n" in summary
    assert f"  TensorBoard: tensorboard --logdir {runs / 'stage1'}" in summary
    assert "Epoch 0 · step 2/2" in printed and "v_num" not in printed  # the bar, without it
    meta = json.loads((run / "export" / "dm_lightning.json").read_text())
    assert meta["processing_res"] == TINY_PROCESSING_RES

    test = cli_args("test", [CONFIGS / "tiny" / "eval.yaml", data_config], run / "export",
                    tmp_path / "eval", trainer__limit_test_batches=1)  # fmt: skip
    assert main(test) == 0
    assert "test results:" in capsys.readouterr().out

    out = tmp_path / "pred"
    predict = cli_args(
        "predict", [CONFIGS / "predict.yaml"], run / "export", data__init_args__predict=odd_photos,
        trainer__callbacks__init_args__output_dir=out, data__init_args__num_workers=0,
    )  # fmt: skip
    assert main(predict) == 0
    for name, (_, (width, height)) in ODD.items():
        pred = np.load(out / f"{name}.npy")
        assert pred.shape == (height, width)
        assert pred.min() >= 0.0 and pred.max() <= 1.0


def test_device_banner_lines_are_dropped_and_nothing_else():
    silence_lightning_noise()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")

    def shown(message: str) -> bool:
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, message, (), None)
        return bool(logger.filter(record))

    assert not shown("GPU available: False, used: False")
    assert not shown("GPU available: True (cuda), used: True")
    assert not shown("TPU available: False, using: 0 TPU cores")
    assert shown("GPU available but not used. You can set it by doing `Trainer(accelerator=...)`.")
    assert shown("`Trainer.fit` stopped: `max_steps=2` reached.")
