"""tools/benchmark.py runs end to end at toy sizes (its numbers belong in BENCHMARKS.md; here
only that every path still runs and agrees)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "benchmark.py"), *args],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_eval_benchmark_paths_agree():
    # the tool itself asserts that all three paths agree to 1e-6
    out = run("eval", "--images", "2", "--batch", "2", "--repeats", "1")
    row = out.strip().splitlines()[-1].split("|")
    assert row[1].strip() == "2" and row[-3].strip().endswith("x")


def test_data_benchmark_reads_every_path(tmp_path):
    out = run("data", "--work", str(tmp_path), "--samples", "8", "--batch", "4", "--repeats", "1")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "x |" in line]
    assert [r.split("|")[1].strip() for r in rows] == [
        "real RGB-D frames (480x640)",
        "hypersim-like (480x640)",
        "vkitti-like (352x1216)",
    ]
    assert (tmp_path / "real-480x640" / "real" / "train-000000.tar").is_file()


def rows_of(out: str) -> list[list[str]]:
    """Markdown table rows (cells stripped), header and separator left out."""
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]


def test_step_benchmark_times_both_stages_both_ways(tmp_path):
    out = run(
        "step", "--work", str(tmp_path), "--batch", "1", "--height", "32", "--width", "32",
        "--warmup", "1", "--steps", "2", "--repeats", "1",
    )  # fmt: skip
    rows = rows_of(out)
    assert [r[0] for r in rows] == ["stage 1", "stage 2"]
    for row in rows:
        assert float(row[1]) > 0 and float(row[2]) > 0
        assert row[4].endswith("x") and row[5] in ("PASS", "FAIL")


def test_memory_benchmark_measures_both_ways_and_searches_the_budget(tmp_path):
    out = run(
        "memory", "--work", str(tmp_path), "--model", "tiny", "--batch", "1", "--height", "64",
        "--width", "64", "--budget-mb", "4096", "--max-batch", "1",
    )  # fmt: skip
    rows = rows_of(out)  # comparison row, budget table header, budget row
    compare, budget = rows[0], rows[-1]
    assert compare[0] == "one forward + backward" and compare[1] == "1"
    assert float(compare[2]) > 0 and float(compare[3]) > 0 and compare[5] in ("PASS", "FAIL")
    assert budget[0] == "4096" and budget[1] == "1" and budget[2] == "1"  # fits, capped


def test_scale_benchmark_counts_and_times_both_stages_tiny():
    out = run("scale", "--tiny", "--height", "32", "--width", "32", "--steps", "1")
    rows = rows_of(out)
    parts = {r[0]: r for r in rows if len(r) == 4}
    assert {"U-Net", "FE block", "VAE encoder", "VAE decoder"} <= set(parts)
    stages = {r[0]: r for r in rows if r[0] in ("stage 1", "stage 2")}
    assert set(stages) == {"stage 1", "stage 2"}
    for row in stages.values():
        total, trainable, forward, train = map(float, row[1:5])
        assert 0 < trainable < total and 0 < forward < train
        assert float(row[5]) > 0


def test_predict_benchmark_times_the_three_paths_and_streams_growing_folders(tmp_path):
    out = run(
        "predict", "--work", str(tmp_path), "--model", "tiny", "--images", "1", "--height",
        "32", "--width", "48", "--repeats", "1", "--stream-counts", "2", "5",
        "--stream-size", "16",
    )  # fmt: skip
    rows = rows_of(out)  # overhead rows, stream header, stream rows
    names = ("DepthMasterPipeline", "predict_images", "dm-lightning")
    paths = {r[0]: r for r in rows if r[0].startswith(names)}
    assert set(paths) == {
        "DepthMasterPipeline (diffusers, no files)",
        "predict_images (API)",
        "dm-lightning predict (Trainer + writer)",
    }
    for row in paths.values():
        bare, predict = float(row[1]), float(row[2])
        assert 0 < bare and 0 < predict
        # The ratio is of the unrounded times; the times are printed to 0.1 (an error of up to
        # 0.05 each) and the ratio to 0.001, which bounds how far it may be from their quotient.
        bound = 0.05 * (1 + predict / bare) / (bare - 0.05) + 0.0005
        assert abs(float(row[4].rstrip("x")) - predict / bare) <= bound
        assert row[5] in ("PASS", "FAIL")
    stream = {r[0]: r for r in rows if r[0] in ("2", "5")}
    assert set(stream) == {"2", "5"} and stream["2"][3] == "+0"
    assert all(float(r[2]) >= float(r[1]) > 0 for r in stream.values())  # peak >= before
    # every image of the largest folder was written (three files each)
    assert len(list((tmp_path / "stream-out-5").glob("*_color.png"))) == 5


def test_onnx_suite_is_a_sub_command_with_its_help():
    # Its measurement runs in tests/test_onnx.py on that module's export (an export takes 45 s).
    out = run("onnx", "--help")
    assert "onnxruntime vs PyTorch on the CPU" in out and "--size" in out
