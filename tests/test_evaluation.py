"""Benchmark evaluation: the exactly-once sampler, BenchmarkDataModule, per-image results and
the EvaluationReport, end to end through the CLI on the real RGB-D frames of
tests/data/real_rgbd (a random tiny model: numbers are poor but deterministic, so they are
checked against an independent numpy recomputation, not for quality)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from helpers import cli_args, reference
from PIL import Image
from torch.utils.data import DataLoader

from dm_lightning.cli import run_cli as main
from dm_lightning.data.benchmarks import BenchmarkSpec, RankShardSampler
from dm_lightning.data.datamodule import BenchmarkDataModule, DepthDataModule
from dm_lightning.evaluation.keys import MetricKey, metric_key, parse_metric_key
from dm_lightning.evaluation.scoring import METRIC_NAMES, evaluate_batch
from dm_lightning.evaluation.tables import PAPER_RESULTS

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
REAL = REPO / "tests" / "data" / "real_rgbd"
FRAMES = {"tum": 1, "sun": 1, "nyu_raw": 1, "redwood_synthetic": 5}
# Low resolution keeps the CPU run short; the metrics are computed at the 480x640 GT size.
RES = 64


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("length", [0, 1, 5, 7])
def test_sampler_covers_every_index_exactly_once(world, length):
    dataset = range(length)
    per_rank = [list(RankShardSampler(dataset, world, rank)) for rank in range(world)]
    assert sorted(i for indices in per_rank for i in indices) == list(range(length))
    assert [len(RankShardSampler(dataset, world, r)) for r in range(world)] == list(
        map(len, per_rank)
    )


def test_lightning_keeps_the_sampler_in_ddp():
    """Lightning 2.6 swaps in a padded DistributedSampler(Wrapper) unless the sampler already is
    a DistributedSampler: ours must be left alone, a plain one is replaced (the check is live)."""
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False
    )
    connector = trainer._data_connector
    ours = DataLoader(range(5), sampler=RankShardSampler(range(5), 2, 1))
    assert not connector._requires_distributed_sampler(ours)
    assert connector._requires_distributed_sampler(DataLoader(range(5)))


def _tum_spec(processing_res: int | None) -> BenchmarkSpec:
    options = {"rgb_pattern": "{key}/color.png", "depth_pattern": "{key}/depth.png"}
    return BenchmarkSpec(
        "rgbd_folder", str(REAL), None, processing_res, {**options, "decode": "tum"}
    )


def test_metric_keys_are_built_and_parsed_in_one_place():
    assert metric_key("test", "nyu", "abs_rel") == "test/nyu/abs_rel"
    assert metric_key("val", None, "delta1") == "val/delta1"  # the first split's headline
    assert parse_metric_key("test/nyu/abs_rel") == MetricKey("test", "nyu", "abs_rel")
    assert parse_metric_key("test/nyu/abs_rel").split == "nyu"
    for other in ("val/abs_rel", "train/loss", "test/a/b/c"):
        assert parse_metric_key(other) is None


def test_spec_resolution_defaults_and_errors(tmp_path):
    (tmp_path / "list.txt").write_text("a/x.png a/x_depth.npy a/x_depth_mask.npy\n")
    dm = BenchmarkDataModule(
        {
            "diode": BenchmarkSpec("diode", str(tmp_path), str(tmp_path / "list.txt")),
            "diode_256": {
                "kind": "diode",
                "root": str(tmp_path),
                "processing_res": 256,
                "list_file": str(tmp_path / "list.txt"),
            },
            "tum": _tum_spec(None),
        }
    )
    assert dm.test_names == dm.val_names == ["diode", "diode_256", "tum"]
    assert [dm.processing_res(n) for n in dm.test_names] == [640, 256, None]
    assert dm.eval_dataset("tum")[0]["source"] == "tum"  # an rgbd_folder is named by its key
    with pytest.raises(ValueError, match=r"benchmarks.x.kind: unknown kind 'nyuv2'.*rgbd_folder"):
        BenchmarkDataModule({"x": BenchmarkSpec("nyuv2", str(tmp_path))}).setup("test")
    with pytest.raises(ValueError, match="benchmarks.t: list_file='l.txt' is not used"):
        spec = BenchmarkSpec("rgbd_folder", str(REAL), "l.txt")
        BenchmarkDataModule({"t": spec}).setup("test")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, tiny_model):
    """configs/eval/real_rgbd.yaml with absolute roots, run through `dm-lightning test`."""
    tmp = tmp_path_factory.mktemp("eval")
    cfg = yaml.safe_load((CONFIGS / "eval" / "real_rgbd.yaml").read_text())
    for spec in cfg["data"]["init_args"]["benchmarks"].values():
        spec["root"] = str(REPO / spec["root"])
        spec["processing_res"] = RES
    (tmp / "data.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    configs = [CONFIGS / "tiny" / "eval.yaml", tmp / "data.yaml"]
    report = ["--trainer.callbacks+=dm_lightning.evaluation.report.EvaluationReport"]
    report += ["--trainer.callbacks.output_dir", str(tmp / "report")]
    cli = main(cli_args("test", configs, tiny_model, tmp, extra=report))
    return cli, tmp / "report"


def test_cli_logs_every_frame_and_writes_the_report(cli_run):
    cli, report = cli_run
    metrics = cli.trainer.callback_metrics
    for name, count in FRAMES.items():
        assert float(metrics[f"test/{name}/num_images"]) == count
        with open(report / f"per_image_{name}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == count
        assert list(rows[0]) == ["key", *METRIC_NAMES]
        mean = np.mean([float(r["abs_rel"]) for r in rows])
        assert mean == pytest.approx(float(metrics[f"test/{name}/abs_rel"]), rel=1e-6)

    # One frame recomputed independently: the model's predict + numpy alignment and metrics.
    rgb = np.asarray(Image.open(REAL / "tum" / "color.png").convert("RGB"))
    gt = np.asarray(Image.open(REAL / "tum" / "depth.png")).astype(np.float64) / 5000.0
    with torch.no_grad():
        image = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None]
        pred = cli.model.net.eval().predict(image, RES)[0, 0].numpy()
    # sqrt-disparity fit on valid (gt > 0) pixels with prediction > 0, no range clip
    ref = reference.evaluate_image(pred, gt, gt > 0, 0.0, np.inf)
    abs_rel, delta1 = float(ref["abs_rel"]), float(ref["delta1"])
    with open(report / "per_image_tum.csv", newline="") as f:
        (row,) = csv.DictReader(f)
    assert row["key"] == "tum"
    # The reader stores GT as float32 metres, this recomputation keeps float64.
    assert float(row["abs_rel"]) == pytest.approx(abs_rel, rel=1e-6)
    assert float(row["delta1"]) == pytest.approx(delta1, rel=1e-6)

    table = (report / "results.md").read_text()
    header = "| AbsRel / δ1 (x100) | tum (1) | sun (1) | nyu_raw (1) | redwood_synthetic (5) |"
    assert header in table
    assert f"| this model | {abs_rel * 100:.1f} / {delta1 * 100:.1f} |" in table
    for method in PAPER_RESULTS:
        assert f"| {method} | – | – | – | – |" in table
    # results.json (read by the model card): the logged numbers, every split, in order.
    record = json.loads((report / "results.json").read_text())
    assert record["model"] == str(cli.model.hparams.model_path)
    assert [(b["name"], b["kind"], b["num_images"]) for b in record["benchmarks"]] == [
        (name, "rgbd_folder", count) for name, count in FRAMES.items()
    ]
    for bench in record["benchmarks"]:
        assert bench["metrics"] == {
            m: float(metrics[f"test/{bench['name']}/{m}"]) for m in METRIC_NAMES
        }


def test_spec_processing_res_is_honoured(cli_run):
    """Two specs of one frame at 32 and 64 px give the metrics of predict() at 32 and 64."""
    model = cli_run[0].model
    dm = BenchmarkDataModule({"tum64": _tum_spec(64), "tum32": _tum_spec(32)}, num_workers=0)
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).test(model, dm)
    # resolved once per loader by the task, not carried in the batches
    assert model.loader_processing_res["test"] == [64, 32]
    assert "processing_res" not in next(iter(dm.test_dataloader()[1]))
    sample = dm.eval_dataset("tum32")[0]
    batch = {k: sample[k][None] for k in ("rgb", "depth", "valid")}
    for name, res in (("tum64", 64), ("tum32", 32)):
        with torch.no_grad():
            pred = model.net.predict(batch["rgb"], res)
        values, _ = evaluate_batch(pred, batch["depth"], batch["valid"], 0.0, float("inf"))
        (row,) = model.per_image_results[name]
        assert row == {"key": "tum", **{m: float(values[m][0]) for m in METRIC_NAMES}}
    assert model.per_image_results["tum64"] != model.per_image_results["tum32"]


def test_fit_validation_mixes_shard_splits_and_benchmark_subsets(shards):
    """DepthDataModule.val takes shard patterns and benchmark specs side by side."""
    from dm_lightning.data.benchmarks import resolve_list_file

    dm = DepthDataModule(
        val={"synthetic": str(shards / "indoor" / "val-*.tar"), "tum": _tum_spec(48)},
        eval_batch_size=4,
        num_workers=0,
    )
    assert dm.val_names == ["synthetic", "tum"]
    synthetic, tum = dm.val_dataloader()
    assert sum(b["rgb"].shape[0] for b in synthetic) == 8
    (batch,) = list(tum)
    assert "processing_res" not in batch and batch["source"] == ["tum"]
    assert dm.processing_res("tum", "val") == 48 and dm.processing_res("synthetic", "val") is None
    # shard splits run at the model's processing_res, benchmarks at their own
    assert dm.processing_res("synthetic", "val", 96) == 96
    assert dm.processing_res("tum", "val", 96) == 48
    # Packaged 100-image subsets resolve by name.
    for name in ("nyu_train_100", "kitti_val_100"):
        lines = resolve_list_file(name, "nyu").read_text().split("\n")
        assert len([line for line in lines if line.strip()]) == 100
