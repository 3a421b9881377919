"""What a user sees on the terminal: no Lightning noise (adverts, deprecation and length
warnings, the frozen modules' eval-mode notice, the best checkpoint's missing monitor), one
results table per evaluation, progress bars with their totals, and help that names the
model's arguments. The installed ``dm-lightning`` runs in two subprocesses (a test and a
short fit), the way a user runs it."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from helpers import cli_args

from dm_lightning.cli import main
from dm_lightning.data.collate import collate, sample_to_tensors
from dm_lightning.data.datamodule import DepthDataModule
from dm_lightning.data.streams import ShardSamples
from dm_lightning.data.synthetic import generate
from dm_lightning.errors import DataError
from dm_lightning.evaluation.tables import terminal_results_table
from dm_lightning.training.base import DepthMasterTask

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
SCRIPT = Path(sys.executable).parent / "dm-lightning"

# What Lightning printed on every call before (issue 12), and must not any more.
NOISE = (
    "Tip:",  # litlogger / litmodels adverts
    "LeafSpec",  # torch pytree deprecation, from Lightning
    "__len__",  # "Your `IterableDataset` has `__len__` defined"
    "in eval mode",  # "Found N module(s) in eval mode" (the frozen VAE and encoder)
    "Epoch 0/-2",  # the rich bar's epoch total under max_steps
    "could not find the monitored key",  # best-checkpoint monitor before any validation
    "DataLoader 0",  # Lightning's per-dataloader test table
    "/--",  # a progress bar without a total
)


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory) -> list[str]:
    """10 indoor test samples in shards of 3, 3, 3 and 1 (index.json written with them)."""
    out = tmp_path_factory.mktemp("uneven")
    generate(out, counts={"test": 10}, sources=["indoor"], samples_per_shard=3, progress=False)
    return sorted(str(p) for p in (out / "indoor").glob("test-*.tar"))


def _batches_of_reader(dataset: ShardSamples, rank, world, worker, workers) -> list[dict]:
    dataset.reader = lambda: (rank, world, worker, workers)
    return list(dataset)


@pytest.mark.parametrize("batch_size", [2, 4])
def test_eval_stream_length_is_each_ranks_batch_count(uneven_shards, batch_size):
    dm = DepthDataModule(test={"indoor": uneven_shards[0].replace("000000", "*")})
    loader = dm._eval_loader("test", "indoor", dm.test_splits["indoor"])
    dataset = loader.dataset
    assert dataset.sizes == [3, 3, 3, 1]  # read from index.json
    dataset.batch_size = batch_size
    for world in (1, 2, 3, 5):
        for workers in (1, 2):
            keys = []
            for rank in range(world):
                dataset.rank_world, dataset.loader_workers = (rank, world), workers
                batches = [
                    b
                    for w in range(workers)
                    for b in _batches_of_reader(dataset, rank, world, w, workers)
                ]
                assert len(dataset) == len(batches), (world, workers, rank)
                keys += [k for b in batches for k in b["key"]]
            assert len(keys) == len(set(keys)) == 10  # exactly once over ranks and workers
    # By hand, batch 2 on 2 ranks: rank 0 reads shards 0 and 2 (6 samples: 3 batches), rank 1
    # shards 1 and 3 (4 samples: 2 batches).
    dataset.batch_size, dataset.loader_workers = 2, 1
    dataset.rank_world = (0, 2)
    assert len(dataset) == 3
    dataset.rank_world = (1, 2)
    assert len(dataset) == 2
    # 5 ranks, 4 shards: rank 4 has none and yields one empty batch, so that it runs the
    # evaluation loop (and its synchronised epoch end) with the others; not for predict.
    dataset.rank_world = (4, 5)
    assert len(dataset) == 1
    (empty,) = _batches_of_reader(dataset, 4, 5, 0, 1)
    assert empty["key"] == [] and empty["rgb"].shape[0] == 0
    dataset.idle_batch = False
    assert len(dataset) == 0 and _batches_of_reader(dataset, 4, 5, 0, 1) == []


def test_eval_loader_length_with_worker_processes(uneven_shards):
    """The DataLoader Lightning sees: 2 workers read shards {0, 2} (6 samples: 2 batches of
    4) and {1, 3} (4 samples: 1 batch), so 3 batches, and all 3 arrive."""
    dm = DepthDataModule(
        test={"indoor": uneven_shards[0].replace("000000", "*")}, eval_batch_size=4, num_workers=2
    )
    (loader,) = dm.test_dataloader()
    assert len(loader) == 3
    batches = list(loader)
    assert len(batches) == 3 and sum(len(b["key"]) for b in batches) == 10
    # predict over the test splits has no length: on more ranks than shards a length of 0
    # would make Lightning refuse the loader (or skip the loop and hang the writer's reduce)
    (predict,) = dm.predict_dataloader()
    with pytest.raises(TypeError, match="no index.json"):
        len(predict)
    assert sum(len(b["key"]) for b in predict) == 10


def test_stale_index_stops_instead_of_dropping_batches(uneven_shards):
    dataset = ShardSamples(
        uneven_shards, 2, sample_to_tensors, collate, "data.test[indoor]", sizes=[2, 3, 3, 1]
    )
    with pytest.raises(DataError, match=r"holds more samples than the 2 its index.json lists"):
        list(dataset)
    unknown = ShardSamples(uneven_shards, 2, sample_to_tensors, collate, "data.test[indoor]")
    with pytest.raises(TypeError, match="no index.json"):
        len(unknown)  # Lightning's has_len: no total, the stream is read to its end
    assert sum(len(b["key"]) for b in unknown) == 10


def test_results_table_rows_and_skip_columns():
    metrics = {
        "test/nyu/abs_rel": 0.05123,
        "test/nyu/delta1": 0.97251,
        "test/nyu/num_images": 654.0,
        "test/nyu/skipped_samples": 0.0,
        "test/nyu/skipped_images": 0.0,
        "test/kitti/abs_rel": 0.0819,
        "test/kitti/delta1": 0.937,
        "test/kitti/num_images": 652.0,
        "test/kitti/skipped_samples": 0.0,
        "test/kitti/skipped_images": 0.0,
    }
    assert terminal_results_table("test", ["nyu", "kitti"], metrics).splitlines() == [
        "| dataset | images | AbsRel x100 | δ1 x100 |",
        "|---------|-------:|------------:|--------:|",
        "| nyu     |    654 |        5.12 |   97.25 |",
        "| kitti   |    652 |        8.19 |   93.70 |",
    ]
    metrics["test/kitti/skipped_samples"] = 3.0
    lines = terminal_results_table("test", ["nyu", "kitti"], metrics).splitlines()
    assert lines[0] == "| dataset | images | AbsRel x100 | δ1 x100 | unreadable samples |"
    assert lines[3].endswith("|                  3 |")
    assert terminal_results_table("val", ["nyu"], metrics) is None  # nothing logged for val


def test_help_names_the_model_arguments(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--help"])
    assert exit_.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "dm-lightning fit --model.help Stage1" in printed
    model_help = printed.split("for any subclass of EvaluationTask.", 1)[1]
    known = model_help.split("known subclasses: ", 1)[1].split(")", 1)[0].split(", ")
    # every task the CLI evaluates, the network's stages and baselines and prediction folders
    for task in ("DepthMasterTask", "Stage1", "Stage2", "E2EFT", "LotusD", "Marigold"):
        assert f"dm_lightning.{task}" in known, known
    assert "dm_lightning.PredictionFolder" in known, known
    for args, expected in [
        (["--model.help", "Stage1"], ["--model.fa_location FA_LOCATION", "--model.lr LR"]),
        (["--model.help", "Stage2"], ["--model.fourier {true,false}", "--model.lr LR"]),
        (["--data.help", "DepthDataModule"], ["--data.eval_batch_size EVAL_BATCH_SIZE"]),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(["fit", *args])
        assert exit_.value.code == 0
        printed = capsys.readouterr().out
        assert all(text in printed for text in expected), (args, printed[-2000:])


def test_stray_eval_modules_are_named(tiny_model):
    task = DepthMasterTask(model_path=str(tiny_model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task.warn_stray_eval_modules()  # only the frozen VAE is in eval mode: nothing to say
    task.net.unet.conv_in.eval()
    with pytest.warns(UserWarning, match=r"1 module\(s\) outside .*: net\.unet\.conv_in$"):
        task.warn_stray_eval_modules()


def _run(*args: str) -> str:
    """The installed script with warnings at their defaults; its stdout + stderr."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS" and "SLURM" not in k}
    done = subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "OMP_NUM_THREADS": "1"},
        cwd=REPO,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    return output


def _absent(output: str) -> None:
    found = [noise for noise in NOISE if noise in output]
    assert not found, f"{found} in:\n{output}"


def test_test_prints_one_results_table(tiny_model, data_config, tmp_path):
    report = tmp_path / "report"
    extra = ["--trainer.callbacks+=dm_lightning.EvaluationReport"]
    extra += ["--trainer.callbacks.output_dir", str(report)]
    configs = [CONFIGS / "tiny" / "eval.yaml", data_config]
    output = _run(*cli_args("test", configs, tiny_model, tmp_path, extra=extra))
    _absent(output)
    # Each split is one test shard of 8 samples, read in batches of 4: 2 batches.
    assert re.search(r"Testing .* 2/2 ", output), output
    assert output.count("| dataset ") == 1  # one table; the report's is in its results.md
    assert f"evaluation report (per-image CSVs, results.md) in {report}" in output
    table = output[output.index("test results:") :].splitlines()[1:5]
    assert table[0] == "| dataset           | images | AbsRel x100 | δ1 x100 |"
    for line, split in zip(table[2:], ["synthetic_indoor", "synthetic_outdoor"]):
        with open(report / f"per_image_{split}.csv") as f:
            rows = list(csv.DictReader(f))
        abs_rel = sum(float(r["abs_rel"]) for r in rows) / len(rows)
        delta1 = sum(float(r["delta1"]) for r in rows) / len(rows)
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells == [split, str(len(rows)), f"{100 * abs_rel:.2f}", f"{100 * delta1:.2f}"]
        assert len(rows) == 8


def test_short_fit_reads_well(tiny_model, data_config, tmp_path):
    """A fit that stops (max_steps 1) before its first validation (3 batches per epoch); its
    summary counts in words that agree with the number (1 optimizer step, 3 batches)."""
    configs = [CONFIGS / "tiny" / "stage1.yaml", data_config]
    output = _run(*cli_args("fit", configs, tiny_model, tmp_path, trainer__max_steps=1))
    _absent(output)
    assert "Epoch 0 · step 1/1" in output
    assert "fit finished after 1 optimizer step\n" in output
    assert (
        "validation runs every epoch (3 batches per epoch) and this run ended at step 1 " in output
    )
    assert "exported Stage1 model" in output
    checkpoints = tmp_path / "stage1" / "version_0" / "checkpoints"
    assert not list(checkpoints.glob("best-*.ckpt"))  # nothing to rank by yet
