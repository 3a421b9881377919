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
