"""Every Markdown table the package writes, pinned byte for byte on fixed inputs: the results
table of ``results.md`` and the model card, the models-by-split table of the recipe and the
ablations, the settings table under ``results.md``, the terminal's aligned table, the card's
training settings and the GPU check's tables, and the row the speed benchmarks print as each is
measured. They all go through one writer; these strings were taken from the builders as they
were before it, so the writer changes none of them."""

from __future__ import annotations

from dm_lightning.evaluation.settings import settings_markdown
from dm_lightning.evaluation.tables import (
    markdown_table,
    metric_splits,
    metrics_table,
    results_table,
    table_row,
    terminal_results_table,
)
from dm_lightning.gpu_check.report import markdown
from dm_lightning.hub.model_card import _training_section
from dm_lightning.hub.training_facts import TrainingFacts
from dm_lightning.models.model_facts import ModelFacts


def test_the_writer_plain_and_aligned():
    rows = [["a", 1.5], ["long name", "x|y"]]
    assert markdown_table(["name", "value"], rows) == [
        "| name | value |",
        "|---|---|",
        "| a | 1.5 |",
        "| long name | x|y |",  # cells are written as given
    ]
    assert markdown_table(["name", "value"], rows, align="lr") == [
        "| name      | value |",
        "|-----------|------:|",
        "| a         |   1.5 |",
        "| long name |   x|y |",
    ]
    assert markdown_table(["only"], []) == ["| only |", "|---|"]


def test_a_streamed_row_is_the_row_of_the_whole_table():
    # a benchmark row as tools/benchmarks/training_step.py printed it with an f-string
    cells = ["stage 1", f"{12.345:.1f}", f"{13.1:.1f}", 4, f"{1.63:.2f}x", "PASS"]
    assert table_row(cells) == "| stage 1 | 12.3 | 13.1 | 4 | 1.63x | PASS |"
    # header + separator once, then one row at a time: the same lines as the whole table
    header, rows = ["stage", "ms", "ms", "n", "ratio", "goal"], [cells, ["stage 2", 1, 2, 3, 4, 5]]
    streamed = [*markdown_table(header, []), *map(table_row, rows)]
    assert streamed == markdown_table(header, rows)


def test_results_table():
    table = results_table(
        {"nyu_test": (0.05123, 0.9712), "mine": None, "kitti": (0.0819, 0.93)},
        {"nyu_test": "nyu", "mine": "mine", "kitti": "kitti"},
        {"nyu_test": 654, "mine": 0, "kitti": 697},
    )
    assert table == (
        "| AbsRel / δ1 (x100) | nyu_test (654) | mine (0) | kitti (697) |\n"
        "|---|---|---|---|\n"
        "| this model | 5.1 / 97.1 | – | 8.2 / 93.0 |\n"
        "| DepthMaster (paper) | 5.0 / 97.2 | – | 8.2 / 93.7 |\n"
        "| Marigold (paper) | 5.5 / 96.4 | – | 9.9 / 91.6 |\n"
        "| Lotus (paper) | 5.3 / 96.7 | – | 9.3 / 92.8 |\n"
    )


def test_metrics_table_of_models_by_split():
    rows = {
        "baseline": {
            "test/nyu/abs_rel": 0.05123,
            "test/nyu/delta1": 0.9712,
            "test/kitti/abs_rel": 0.0819,
            "test/kitti/delta1": 0.93,
            "test/abs_rel": 0.05,  # the headline value: no split
        },
        "no FA": {"test/nyu/abs_rel": 0.06, "test/nyu/delta1": 0.95},
        "failed": None,
    }
    splits = metric_splits({k: v for k, v in rows.items() if v is not None})
    assert splits == ["nyu", "kitti"]
    assert metrics_table(rows, splits) == (
        "| model | nyu AbsRel | nyu δ1 | kitti AbsRel | kitti δ1 |\n"
        "|---|---|---|---|---|\n"
        "| baseline | 5.1 | 97.1 | 8.2 | 93.0 |\n"
        "| no FA | 6.0 | 95.0 | – | – |\n"
        "| failed | – | – | – | – |"
    )


def test_settings_table():
    run = {
        "dm_lightning": "0.1.0",
        "model": "runs/x",
        "target": "sqrt_disparity",
        "fit_space": "sqrt_disparity",
    }
    splits = {
        "nyu": {
            "list_file": "/a/nyu_test.txt",
            "list_sha256": "0123456789abcdef",
            "images": 654,
            "processing_res": 768,
            "crop": "eigen",
            "mask": None,
            "depth_range": [0.001, 10.0],
        },
        "synthetic": {
            "shards": "data/x-{000..003}.tar",
            "processing_res": None,
            "depth_range": [0.5, None],
        },
        "odd": {"layout": "a|b", "images": "", "crop": "garg"},
    }
    assert settings_markdown(run, splits) == (
        "Settings: dm_lightning 0.1.0; model `runs/x` (target sqrt_disparity); fit (alignment) "
        "space **sqrt_disparity**.\n"
        "\n"
        "| benchmark | list | images | processing res | crop | mask | depth range (m) |\n"
        "|---|---|---|---|---|---|---|\n"
        "| nyu | `nyu_test.txt` (sha256 0123456789ab) | 654 | 768 | eigen | – | 0.001 .. 10 |\n"
        "| synthetic | shards `data/x-{000..003}.tar` | – | – | – | – | 0.5 .. ∞ |\n"
        "| odd | a\\|b | – | – | garg | – | – |\n"
    )


def test_terminal_table_aligned():
    metrics = {
        "test/nyu/abs_rel": 0.05123,
        "test/nyu/delta1": 0.97125,
        "test/nyu/num_images": 654.0,
        "test/nyu/skipped_samples": 0.0,
        "test/nyu/skipped_images": 0.0,
        "test/kitti/abs_rel": 0.0819,
        "test/kitti/delta1": 0.9301,
        "test/kitti/num_images": 697.0,
        "test/kitti/skipped_samples": 0.0,
        "test/kitti/skipped_images": 2.0,
    }
    assert terminal_results_table("test", ["nyu", "kitti", "eth3d"], metrics) == (
        "| dataset | images | AbsRel x100 | δ1 x100 | images without valid depth |\n"
        "|---------|-------:|------------:|--------:|---------------------------:|\n"
        "| nyu     |    654 |        5.12 |   97.12 |                          0 |\n"
        "| kitti   |    697 |        8.19 |   93.01 |                          2 |"
    )
    plain = {k: v for k, v in metrics.items() if "skipped" not in k}
    assert terminal_results_table("test", ["kitti", "nyu"], plain) == (
        "| dataset | images | AbsRel x100 | δ1 x100 |\n"
        "|---------|-------:|------------:|--------:|\n"
        "| kitti   |    697 |        8.19 |   93.01 |\n"
        "| nyu     |    654 |        5.12 |   97.12 |"
    )


def test_model_card_settings_table():
    facts = TrainingFacts(
        stage=2,
        model=ModelFacts("sqrt_disparity"),
        global_step=10,
        settings=[("precision", "bf16-mixed"), ("learning rate", 3e-05)],
    )
    assert _training_section(facts).endswith(
        "- Fourier Enhancement block in the U-Net: no.\n"
        "\n"
        "| setting | value |\n"
        "|---|---|\n"
        "| precision | `bf16-mixed` |\n"
        "| learning rate | `3e-05` |\n"
        "\n"
        "The run's config was not found when this card was written.\n"
    )


def test_gpu_check_tables():
    def train_row(checkpointing, largest, capped, batch, speed, memory, tflops):
        return {
            "checkpointing": checkpointing,
            "largest_batch": largest,
            "searched_up_to": 8,
            "search_capped": capped,
            "batch": batch,
            "samples_per_s": speed,
            "peak_memory_gb": memory,
            "tflops": tflops,
        }

    compiled_row = {
        "checkpointing": False,
        "batch": 2,
        "eager_largest_batch": 3,
        "samples_per_s": 1.0,
        "peak_memory_gb": 2.0,
        "tflops": 123.456,
    }
    predict_row = {
        "input": [100, 150],
        "processing_res": 64,
        "working_size": [48, 64],
        "precision": "32",
        "latency_s": 0.01234,
    }
    ddp = {
        "strategy": "DDPStrategy",
        "device": "cpu",
        "backend": "gloo",
        "global_step": 2,
        "exit_code": 0,
        "seconds": 8.5,
    }
    eval_row = {"images": 8, "batch": 4, "precision": "32", "images_per_s": 40.5}
    sections = {
        "train_stage1_32": {
            "ok": True,
            "seconds": 3.25,
            "result": {
                "stage": 1,
                "precision": "bf16-mixed",
                "rows": [
                    train_row(False, 4, True, 4, 12.345, 1.5, 0.01234),
                    train_row(True, 8, False, 6, 10.0, None, None),
                    {"checkpointing": True, "error": "boom"},
                ],
            },
        },
        "compile_stage2_32": {
            "ok": True,
            "seconds": 1.0,
            "result": {
                "stage": 2,
                "precision": "32",
                "unet": "compiled (eager)",
                "rows": [compiled_row],
            },
        },
        "eval": {"ok": True, "seconds": 2.0, "result": {"rows": [eval_row]}},
        "predict": {"ok": True, "seconds": 0.5, "result": {"rows": [predict_row]}},
        "ddp_fit": {"ok": True, "seconds": 9.87, "result": ddp},
        "flops": {"ok": False, "seconds": 0.0, "error": "ValueError: a|b"},
    }
    results = {
        "mode": "smoke",
        "network": "tiny",
        "started": "2025-01-01T00:00:00",
        "device": {"name": "cpu", "torch": "2.5.0", "memory_gib": 80.0, "cuda": "12.4"},
        "plan": {"height": 32, "width": 48},
        "sections": sections,
    }
    assert markdown(results) == (
        "GPU check (smoke): cpu, 80.0 GiB, torch 2.5.0, CUDA 12.4, tiny network, "
        "2025-01-01T00:00:00\n"
        "\n"
        "| stage | precision | U-Net | checkpointing | largest micro-batch at 32x48 | samples/s "
        "| peak memory (GiB) | TFLOP/s (model FLOPs) |\n"
        "|---|---|---|---|---|---|---|---|\n"
        "| 1 | bf16-mixed | eager | off | 4 (of 8, search capped) | 12.35 | 1.50 | 0.0123 |\n"
        "| 1 | bf16-mixed | eager | on | 8 (of 8), timed at 6 | 10.00 | - | - |\n"
        "| 2 | 32 | compiled (eager) | off | timed at 2 (eager's largest: 3) | 1.00 | 2.00 "
        "| 123 |\n"
        "\n"
        "| evaluation at 32x48 (predict + metrics on the device) | precision | images/s |\n"
        "|---|---|---|\n"
        "| 8 images, batch 4 | 32 | 40.50 |\n"
        "\n"
        "| predict, one photo | precision | latency (s, median) |\n"
        "|---|---|---|\n"
        "| 100x150 at long edge 64 (network at 48x64) | 32 | 0.012 |\n"
        "\n"
        "| ddp fit (tiny stage 1, 1 device) | backend | steps | exit code | s |\n"
        "|---|---|---|---|---|\n"
        "| DDPStrategy on cpu | gloo | 2 | 0 | 8.5 |\n"
        "\n"
        "| section | status | s |\n"
        "|---|---|---|\n"
        "| train_stage1_32 | ok | 3.2 |\n"
        "| compile_stage2_32 | ok | 1.0 |\n"
        "| eval | ok | 2.0 |\n"
        "| predict | ok | 0.5 |\n"
        "| ddp_fit | ok | 9.9 |\n"
        "| flops | FAILED: ValueError: a/b | 0.0 |\n"
    )
