"""The recipe in one command (dm_lightning.recipes.pipeline, tools/train_depthmaster.py) on the tiny
model and the synthetic test shards: both stages, the hand-over, the test, the results table,
skipping a finished run and resuming an interrupted stage 2 in its own version folder."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import QUIET_RECIPE

from dm_lightning.recipes.pipeline import Pipeline, Stage, read_results
from dm_lightning.recipes.pipeline_cli import main, pipeline_command, split_overrides

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "tiny"
QUIET = QUIET_RECIPE


def command(run: Path, data_config: Path, tiny_model: Path, *extra: str) -> list[str]:
    return [
        "--stage1",
        str(TINY / "stage1.yaml"),
        "--stage2",
        str(TINY / "stage2.yaml"),
        "--data",
        str(data_config),
        "--eval",
        str(TINY / "eval.yaml"),
        "--run",
        str(run),
        "--model-path",
        str(tiny_model),
        "--in-process",
        "--trainer.max_steps",
        "2",
        *QUIET,
        *extra,
    ]


def folders(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.glob("*/version_*"))


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory, data_config, tiny_model):
    """One full two-stage run (2 optimizer steps per stage) plus the test of stage 2."""
    run = tmp_path_factory.mktemp("recipe") / "run"
    assert main(command(run, data_config, tiny_model)) == 0
    return run


def test_full_run_writes_both_exports_the_test_and_the_table_in_one_folder(recipe_run, data_config):
    run = recipe_run
    assert folders(run) == ["stage1/version_0", "stage2/version_0", "test-stage2/version_0"]
    exports = {}
    for stage in ("stage1", "stage2"):
        record = json.loads((run / stage / "version_0" / "export.json").read_text())
        assert record["global_step"] == 2
        assert Path(record["export"]) == (run / stage / "version_0" / "export").resolve()
        assert (Path(record["export"]) / "unet" / "config.json").is_file()
        exports[stage] = record["export"]
    # stage 2 started from the stage-1 export, not from its config's placeholder
    stage2 = yaml.safe_load((run / "stage2" / "version_0" / "config.yaml").read_text())
    assert stage2["model"]["init_args"]["model_path"] == exports["stage1"]
    assert json.loads((Path(exports["stage2"]) / "dm_lightning.json").read_text())[
        "fourier_enhancement"
    ]

    logged = json.loads((run / "test-stage2" / "version_0" / "test_metrics.json").read_text())
    results = read_results(run)
    assert list(results) == ["stage2"]
    assert results["stage2"]["model"] == exports["stage2"]
    assert results["stage2"]["global_step"] == 2
    assert results["stage2"]["metrics"] == logged
    assert logged["test/synthetic_indoor/num_images"] == 4.0
    assert logged["test/synthetic_outdoor/num_images"] == 4.0

    table = (run / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| stage2 |"))
    cells = [float(c) for c in row.strip("|").split("|")[1:]]
    expected = [
        round(100 * logged[f"test/{split}/{metric}"], 1)
        for split in ("synthetic_indoor", "synthetic_outdoor")
        for metric in ("abs_rel", "delta1")
    ]
    assert cells == pytest.approx(expected, abs=0.051)
    assert "| model | synthetic_indoor AbsRel | synthetic_indoor δ1 |" in table
    assert str(data_config) in table


def test_rerun_skips_finished_stages_and_the_test(recipe_run, data_config, tiny_model, capsys):
    before = folders(recipe_run)
    results = (recipe_run / "results.json").read_text()
    capsys.readouterr()
    assert main(command(recipe_run, data_config, tiny_model)) == 0
    out = capsys.readouterr().out
    assert "stage1: finished earlier, skipping" in out
    assert "stage2: finished earlier, skipping" in out
    assert "test of stage2: done earlier, skipping" in out
    assert "dm-lightning fit" not in out and "dm-lightning test" not in out
    assert folders(recipe_run) == before
    assert (recipe_run / "results.json").read_text() == results


def test_interrupted_stage2_resumes_in_its_version_folder(
    recipe_run, data_config, tiny_model, capsys, tmp_path
):
    # A stage 2 stopped after its last.ckpt (step 2) and before its export: as after a kill.
    version = recipe_run / "stage2" / "version_0"
    shutil.rmtree(version / "export")
    (version / "export.json").unlink()
    assert (version / "checkpoints" / "last.ckpt").is_file()
    # The tests this time on another data config: the indoor test split alone.
    indoor = tmp_path / "indoor_test.yaml"
    config = yaml.safe_load(data_config.read_text())
    del config["data"]["init_args"]["test"]["synthetic_outdoor"]
    indoor.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    # ... and the stage is asked to go on to step 3 (the same command with a longer stage 2)
    extra = ["--stage2.trainer.max_steps", "3", "--test-data", str(indoor)]
    assert main(command(recipe_run, data_config, tiny_model, *extra)) == 0
    out = capsys.readouterr().out
    assert "stage1: finished earlier, skipping" in out
    assert (
        f"stage2: interrupted earlier, resuming from {version / 'checkpoints' / 'last.ckpt'}" in out
    )
    assert re.search(r"dm-lightning fit .*--trainer.max_steps 3 --ckpt_path last", out)
    assert folders(recipe_run) == [
        "stage1/version_0",
        "stage2/version_0",
        "test-stage2/version_0",
        "test-stage2/version_1",
    ]
    record = json.loads((version / "export.json").read_text())
    assert record["global_step"] == 3
    assert (version / "export" / "unet" / "config.json").is_file()
    # the new export was tested again (its step differs from the recorded one), on --test-data
    tested = read_results(recipe_run)["stage2"]
    assert tested["global_step"] == 3
    assert tested["metrics"]["test/synthetic_indoor/num_images"] == 4.0
    assert not [key for key in tested["metrics"] if "synthetic_outdoor" in key]
    assert f"test splits of `{indoor}`" in (recipe_run / "results.md").read_text()


def test_overrides_are_sorted_by_stage_and_the_command_round_trips():
    groups = split_overrides(
        [
            "--trainer.devices",
            "4",
            "--stage1.trainer.max_steps=100",
            "--stage2.model.init_args.lr",
            "1e-5",
            "--test.trainer.devices",
            "1",
            "--trainer.callbacks+=x.Y",
        ]
    )
    assert groups == {
        "fit": ["--trainer.devices", "4", "--trainer.callbacks+=x.Y"],
        "stage1": ["--trainer.max_steps=100"],
        "stage2": ["--model.init_args.lr", "1e-5"],
        "test": ["--trainer.devices", "1"],
    }
    pipeline = Pipeline(
        stages=(
            Stage("stage1", ("s1.yaml", "o.yaml"), ("--trainer.max_steps", "5")),
            Stage("stage2", ("s2.yaml",)),
        ),
        data="d.yaml",
        run="runs/x",
        eval_config="e.yaml",
        model_path="m",
        fit_args=("--trainer.devices", "4"),
        test_args=("--trainer.devices", "1"),
        test=("input", "stage2"),
        test_data="benchmarks.yaml",
    )
    cmd = pipeline_command(pipeline)
    assert cmd[:2] == ["python", "tools/train_depthmaster.py"]
    assert "--stage1.trainer.max_steps" in cmd and "--test.trainer.devices" in cmd
    import argparse

    from dm_lightning.recipes.pipeline_cli import add_recipe_arguments, recipe_from_args

    parser = argparse.ArgumentParser()
    add_recipe_arguments(parser)
    parser.add_argument("--run")
    parser.add_argument("--test", nargs="+")
    args, rest = parser.parse_known_args(cmd[2:])
    assert recipe_from_args(args, rest, args.run) == pipeline


def test_a_failing_stage_is_named_with_its_exit_status(tmp_path, data_config, capfd):
    # The default: each step is a `python -m dm_lightning` child; its status is the tool's.
    # The options parse (checked before stage 1), the model folder is only opened by the child.
    missing = tmp_path / "no_such_model"
    run = tmp_path / "run"
    stage1 = ["--stage1", str(TINY / "stage1.yaml"), "--eval", str(TINY / "eval.yaml")]
    args = [*stage1, "--data", str(data_config), "--run", str(run)]
    assert main([*args, "--stage1.model.init_args.model_path", str(missing)]) == 2
    captured = capfd.readouterr()
    assert str(missing) in captured.err  # the child's own message
    assert "[pipeline] stage1: training into" in captured.out
    last = captured.err.strip().splitlines()[-1]
    assert last == (
        "train_depthmaster.py: error: stage1 (fit) failed (exit status 2); fix it and run the "
        "same command again (finished stages are skipped, an interrupted one resumes)."
    )
    assert not (run / "stage1").exists()
    assert main(["--data", str(data_config), "--run", str(run)]) == 2
    assert "give --stage1 CONFIG and/or --stage2 CONFIG" in capfd.readouterr().err


def test_tool_help_exits_zero():
    tool = [sys.executable, str(REPO / "tools" / "train_depthmaster.py")]
    shown = subprocess.run([*tool, "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    for option in ("--stage1 CONFIG", "--stage2 CONFIG", "--data CONFIG", "--run RUN"):
        assert option in shown.stdout
    assert "--stage1.KEY VALUE" in shown.stdout


def test_child_killed_by_a_signal_reports_128_plus_the_signal(monkeypatch):
    """Popen reports a child killed by SIGKILL (out of memory) as -9; the pipeline reports it
    as a shell does, 137, so it reads as "killed by a signal", not as an ordinary failure."""
    from dm_lightning.recipes import step_runner

    class Killed:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def wait(self) -> int:
            return -9

    monkeypatch.setattr(step_runner.subprocess, "Popen", Killed)
    assert step_runner.run_child(["fit"]) == 137
