"""tools/gpu_check.py: the batch-size search on made-up answers, failures and the budget recorded
per section, and the whole CPU smoke run (the same sections as on a GPU) through the script."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dm_lightning.gpu_check import runner, training
from dm_lightning.gpu_check.report import markdown
from dm_lightning.gpu_check.search import largest_batch, oom_probe

REPO = Path(__file__).resolve().parent.parent


def test_search_doubles_then_bisects():
    # Fits up to 37: 1..32 fit, 64 does not; then 48 no, 40 no, 36 yes, 38 no, 37 yes.
    found = largest_batch(lambda n: n <= 37, limit=64)
    assert found.batch == 37
    assert not found.capped
    assert [n for n, _ in found.probes] == [1, 2, 4, 8, 16, 32, 64, 48, 40, 36, 38, 37]
    assert [ok for _, ok in found.probes] == [True] * 6 + [False, False, False, True, False, True]


def test_search_edges():
    assert largest_batch(lambda n: True, limit=24).probes == [
        (1, True), (2, True), (4, True), (8, True), (16, True), (24, True),
    ]  # fmt: skip
    assert largest_batch(lambda n: True, limit=24).batch == 24
    nothing = largest_batch(lambda n: False, limit=24)
    assert (nothing.batch, nothing.probes, nothing.capped) == (0, [(1, False)], False)


def test_search_stops_at_the_time_cap():
    now = [0.0]

    def fits(n: int) -> bool:
        now[0] += 10.0  # each probe takes 10 s
        return n <= 100

    found = largest_batch(fits, limit=128, seconds=25.0, clock=lambda: now[0])
    # Probes end at 10, 20, 30 s; no probe starts after 25 s.
    assert (found.batch, found.capped) == (4, True)
    assert found.probes == [(1, True), (2, True), (4, True)]


def test_out_of_memory_is_a_no_and_other_errors_propagate():
    def step(n: int) -> None:
        if n > 3:
            raise torch.OutOfMemoryError(f"tried {n}")

    assert largest_batch(oom_probe(step, torch.device("cpu")), limit=8).batch == 3

    def broken(n: int) -> None:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        oom_probe(broken, torch.device("cpu"))(1)


class _FakeRunner:
    """A StepRunner stand-in: steps above ``fits_up_to`` run out of memory."""

    device = torch.device("cpu")

    def __init__(self, fits_up_to: int) -> None:
        self.fits_up_to, self.steps = fits_up_to, []

    def step(self, n: int) -> torch.Tensor:
        self.steps.append(n)
        if n > self.fits_up_to:
            raise torch.OutOfMemoryError(f"tried {n}")
        return torch.tensor(1.0)


def test_search_then_timed_steps_and_the_timed_fallback():
    run = _FakeRunner(fits_up_to=3)
    row = training.search_and_time(run, limit=8, search_seconds=60.0, steps=2, train_gflops=5.0)
    # Probes 1, 2, 4 (no), 3; the last probe ran at 3, so no warm-up: 2 timed steps at 3.
    assert run.steps == [1, 2, 4, 3, 3, 3]
    assert (row["largest_batch"], row["batch"], row["first_step_s"]) == (3, 3, None)
    assert row["probes"] == [[1, True], [2, True], [4, False], [3, True]]
    assert row["tflops"] == pytest.approx(row["samples_per_s"] * 5.0 / 1e3)
    # Timed steps that run out of memory at the given size halve it (4 -> 2 -> 1).
    run = _FakeRunner(fits_up_to=1)
    row = training.timed_at_most(run, 4, steps=1, train_gflops=5.0)
    assert row["batch"] == 1 and run.steps == [4, 2, 1, 1]
    with pytest.raises(MemoryError, match="micro-batch 1 does not fit"):
        training.search_and_time(_FakeRunner(0), 8, 60.0, 1, 5.0)


def _tool(monkeypatch):
    """tools/gpu_check.py as a module (its directory on sys.path, as when run as a script)."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    spec = importlib.util.spec_from_file_location("gpu_check_tool", REPO / "tools" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tool_refuses_before_running_anything(tmp_path, monkeypatch, capsys):
    tool = _tool(monkeypatch)
    out = tmp_path / "out"
    assert tool.main(["--smoke", "--out", str(out), "--sections", "flops", "nope"]) == 2
    assert "gpu_check: error: unknown section(s) nope; expected some of flops, ddp_fit" in (
        capsys.readouterr().err
    )
    monkeypatch.setattr(tool, "NEEDED", ("torch", "no_such_module_here", "diffusers"))
    assert tool.main(["--smoke", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "gpu_check: error: missing module(s) no_such_module_here; see the top of" in err
    if not torch.cuda.is_available():
        monkeypatch.setattr(tool, "NEEDED", ())
        assert tool.main(["--out", str(out)]) == 2
        assert "gpu_check: error: no CUDA device" in capsys.readouterr().err
    assert not out.exists()


def _check(tmp_path: Path, budget: float, count_flops) -> runner.GpuCheck:
    plan = runner.smoke_plan()
    plan.threads = None  # leave this pytest process's thread count alone
    plan.budget_seconds = budget
    return runner.GpuCheck(plan, tmp_path, REPO / "configs", {}, count_flops)


def test_a_failing_section_is_recorded_and_the_budget_skips_the_rest(tmp_path):
    def no_flops(network: str, height: int, width: int) -> dict:
        raise ValueError(f"cannot count {network} at {height}x{width}")

    results = _check(tmp_path, 300.0, no_flops).run(("flops",))
    flops = results["sections"]["flops"]
    assert not flops["ok"]
    assert flops["error"] == "ValueError: cannot count tiny at 32x32"
    assert "| flops | FAILED: ValueError: cannot count tiny at 32x32 |" in markdown(results)

    skipped = _check(tmp_path, 0.0, no_flops).run(("flops", "ddp_fit"))["sections"]
    assert list(skipped) == ["flops", "ddp_fit"]
    for name, section in skipped.items():
        assert not section["ok"]
        assert f"budget left; run it alone with --sections {name}" in section["error"]


def test_smoke_run_through_the_script(tmp_path):
    """The CI run: every section on the CPU with the tiny model, exit 0, positive numbers."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "gpu_check.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "gpu_check.json").read_text())
    sections = results["sections"]
    assert list(sections) == list(runner.SECTIONS)
    failed = {name: s["error"] for name, s in sections.items() if not s["ok"]}
    assert not failed
    plan = results["plan"]
    assert results["mode"] == "smoke" and results["device"]["type"] == "cpu"
    for stage in ("stage1", "stage2"):
        assert sections["flops"]["result"][stage]["train_gflops"] > 0
    for name in (*runner.TRAIN_SECTIONS, *runner.COMPILE_SECTIONS):
        rows = sections[name]["result"]["rows"]
        assert [r["checkpointing"] for r in rows] == (
            [False, True] if name in runner.TRAIN_SECTIONS else [False]
        )
        for row in rows:
            # Nothing runs out of memory on the CPU at 32x32: the cap is the answer.
            assert row["batch"] == plan["max_batch"]
            for key in ("samples_per_s", "peak_memory_gb", "tflops", "seconds_per_step"):
                assert row[key] > 0, (name, key, row)
    for row in sections["eval"]["result"]["rows"]:
        assert row["images"] == plan["eval_images"] and row["images_per_s"] > 0
    for row in sections["predict"]["result"]["rows"]:
        assert row["latency_s"] > 0 and row["input"] == list(plan["predict_input"])
    ddp = sections["ddp_fit"]["result"]
    assert (ddp["exit_code"], ddp["backend"], ddp["world_size"]) == (0, "gloo", 1)
    assert ddp["global_step"] == plan["ddp_steps"] and ddp["strategy"] == "DDPStrategy"
    table = (out / "gpu_check.md").read_text()
    for name in runner.SECTIONS:
        assert f"| {name} | ok |" in table
    assert table.count("| eager |") == 6 and table.count("| compiled (eager) |") == 2
    assert "| DDPStrategy on cpu | gloo | 2 | 0 |" in table

    # A row that failed (as a micro-batch of 1 that does not fit on a small GPU would): the
    # other row keeps its line, the status table gives the error.
    section = sections["train_stage1_32"]
    error = "checkpointing False: MemoryError: micro-batch 1 does not fit"
    section["result"]["rows"][0] = {"checkpointing": False, "error": error}
    section.update(ok=False, error=error)
    table = markdown(results)
    assert table.count("| 1 | 32 | eager |") == 1
    assert "| 1 | 32 | eager | on |" in table
    assert f"| train_stage1_32 | FAILED: {error} |" in table
