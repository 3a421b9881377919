"""Ablation sweeps (dm_lightning.recipes.ablations, tools/run_ablations.py) on the tiny model: a
baseline and a no-gradient-loss row of a one-stage (stage 2) recipe end to end, the table
against the rows' logged test metrics, the chart, a re-run that skips, printed commands, and
which stage an overlay goes to."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml
from helpers import QUIET_RECIPE
from PIL import Image

from dm_lightning.errors import ConfigError
from dm_lightning.recipes.ablations import main, overlay_stages
from dm_lightning.recipes.pipeline import Stage

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
NO_GRADIENT = CONFIGS / "ablations" / "stage2_no_gradient_loss.yaml"


def command(run: Path, data_config: Path, tiny_model: Path, *extra: str) -> list[str]:
    return [
        "--stage2",
        str(CONFIGS / "tiny" / "stage2.yaml"),
        "--data",
        str(data_config),
        "--eval",
        str(CONFIGS / "tiny" / "eval.yaml"),
        "--run",
        str(run),
        "--model-path",
        str(tiny_model),
        "--overlays",
        str(NO_GRADIENT),
        "--in-process",
        "--trainer.max_steps",
        "2",
        *QUIET_RECIPE,
        *extra,
    ]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_config, tiny_model):
    run = tmp_path_factory.mktemp("ablations") / "sweep"
    assert main(command(run, data_config, tiny_model)) == 0
    return run


def test_two_row_sweep_writes_the_table_and_chart_of_the_rows_logged_metrics(sweep):
    logged = {
        row: json.loads(
            (sweep / row / "test-stage2" / "version_0" / "test_metrics.json").read_text()
        )
        for row in ("baseline", "stage2_no_gradient_loss")
    }
    # the overlay reached the row's stage 2, and only that row's
    weights = {
        row: yaml.safe_load((sweep / row / "stage2" / "version_0" / "config.yaml").read_text())[
            "model"
        ]["init_args"]["gradient_weight"]
        for row in logged
    }
    assert weights == {"baseline": 1.0e-3, "stage2_no_gradient_loss": 0.0}

    lines = (sweep / "ablations.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| model |"))
    assert header == (
        "| model | synthetic_indoor AbsRel | synthetic_indoor δ1 "
        "| synthetic_outdoor AbsRel | synthetic_outdoor δ1 |"
    )
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| model")]
    labels = [row.split("|")[1].strip() for row in rows]
    assert labels == ["baseline", "stage2_no_gradient_loss (stage2)"]
    for row, name in zip(rows, logged):
        cells = [float(c) for c in row.strip("|").split("|")[1:]]
        expected = [
            100 * logged[name][f"test/{split}/{metric}"]
            for split in ("synthetic_indoor", "synthetic_outdoor")
            for metric in ("abs_rel", "delta1")
        ]
        assert cells == pytest.approx(expected, abs=0.051)
    # the two rows trained differently, so their numbers differ somewhere
    assert logged["baseline"] != logged["stage2_no_gradient_loss"]

    record = json.loads((sweep / "ablations.json").read_text())
    assert record["baseline"]["overlay"] is None
    assert record["stage2_no_gradient_loss"]["overlay"] == str(NO_GRADIENT)
    assert record["stage2_no_gradient_loss"]["stages"] == ["stage2"]
    assert record["stage2_no_gradient_loss"]["metrics"] == logged["stage2_no_gradient_loss"]

    with Image.open(sweep / "ablations.png") as chart:
        chart.load()
        assert chart.format == "PNG"
        assert 500 <= chart.width <= 2000 and 300 <= chart.height <= 1000
        # not a blank canvas: bars in several colours
        assert len(chart.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 10


def test_rerun_skips_finished_rows(sweep, data_config, tiny_model, capsys):
    table = (sweep / "ablations.md").read_text()
    capsys.readouterr()
    assert main(command(sweep, data_config, tiny_model)) == 0
    out = capsys.readouterr().out
    assert out.count("stage2: finished earlier, skipping") == 2
    assert "dm-lightning fit" not in out and "dm-lightning test" not in out
    assert sorted(p.name for p in (sweep / "baseline" / "stage2").iterdir()) == ["version_0"]
    assert (sweep / "ablations.md").read_text() == table


def test_print_commands_prints_one_command_per_row_and_runs_nothing(
    tmp_path, data_config, tiny_model, capsys
):
    run = tmp_path / "cluster"
    assert main(command(run, data_config, tiny_model, "--print-commands")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    baseline, ablation = (shlex.split(line) for line in lines)
    assert baseline[:2] == ablation[:2] == ["python", "tools/train_depthmaster.py"]
    assert baseline[baseline.index("--run") + 1] == str(run / "baseline")
    assert ablation[ablation.index("--run") + 1] == str(run / "stage2_no_gradient_loss")
    stage2 = ablation.index("--stage2")
    assert ablation[stage2 + 1 : stage2 + 3] == [
        str(CONFIGS / "tiny" / "stage2.yaml"),
        str(NO_GRADIENT),
    ]
    assert str(NO_GRADIENT) not in baseline
    assert "--test.trainer.limit_test_batches" in ablation
    assert not run.exists()


def test_overlays_go_to_the_stages_whose_model_takes_their_keys(tmp_path):
    stages = [
        Stage("stage1", (str(CONFIGS / "tiny" / "stage1.yaml"),)),
        Stage("stage2", (str(CONFIGS / "tiny" / "stage2.yaml"),)),
    ]
    ablations = CONFIGS / "ablations"
    assert overlay_stages(str(ablations / "no_fa.yaml"), stages)[1] == ("stage1",)
    assert overlay_stages(str(CONFIGS / "encoders" / "clip_vitl14.yaml"), stages)[1] == ("stage1",)
    assert overlay_stages(str(NO_GRADIENT), stages)[1] == ("stage2",)
    assert overlay_stages(str(ablations / "target_depth.yaml"), stages)[1] == ("stage1", "stage2")
    assert overlay_stages(f"stage2={ablations / 'target_depth.yaml'}", stages)[1] == ("stage2",)
    with pytest.raises(ConfigError, match="sets model_path, which only the first stage takes"):
        overlay_stages(str(ablations / "one_stage_pixel.yaml"), stages)
    # the one-stage recipe takes it
    assert overlay_stages(str(ablations / "one_stage_pixel.yaml"), stages[1:])[1] == ("stage2",)
    typo = tmp_path / "typo.yaml"
    typo.write_text("model:\n  init_args:\n    gradient_wieght: 0.0\n")
    with pytest.raises(ConfigError, match=r"no stage of the recipe takes .*\['gradient_wieght'\]"):
        overlay_stages(str(typo), stages)
    with pytest.raises(ConfigError, match="no stage 'stage3'"):
        overlay_stages(f"stage3={NO_GRADIENT}", stages)


def test_usage_errors_exit_2_naming_the_file(tmp_path, data_config, capsys):
    missing = tmp_path / "nope.yaml"
    argv = ["--stage2", str(CONFIGS / "tiny" / "stage2.yaml"), "--data", str(data_config)]
    assert main([*argv, "--run", str(tmp_path / "r"), "--overlays", str(missing)]) == 2
    assert f"run_ablations.py: error: overlay {missing}: no such file" in capsys.readouterr().err


README_SWEEP = """\
python tools/run_ablations.py --stage1 configs/stage1.yaml --stage2 configs/stage2.yaml \
    --data configs/data/hypersim_vkitti.yaml --run runs/ablations \
    --overlays configs/ablations/no_fa.yaml configs/encoders/clip_vitl14.yaml \
               configs/ablations/target_depth.yaml configs/ablations/stage2_no_gradient_loss.yaml \
    --print-commands"""


def test_readme_sweep_of_the_paper_recipe_prints_its_five_rows(capsys, monkeypatch):
    # The README's command, on the shipped recipe: only configs are read, nothing runs.
    monkeypatch.chdir(REPO)
    argv = shlex.split(README_SWEEP.replace("\\\n", " "))
    assert argv[:2] == ["python", "tools/run_ablations.py"]
    assert main(argv[2:]) == 0
    printed = [shlex.split(line) for line in capsys.readouterr().out.strip().splitlines()]

    def configs(cmd: list[str], flag: str) -> list[str]:
        start = cmd.index(flag) + 1
        end = next(i for i in range(start, len(cmd)) if cmd[i].startswith("--"))
        return cmd[start:end]

    placed = {
        cmd[cmd.index("--run") + 1]: (configs(cmd, "--stage1")[1:], configs(cmd, "--stage2")[1:])
        for cmd in printed
    }
    assert placed == {
        "runs/ablations/baseline": ([], []),
        "runs/ablations/no_fa": (["configs/ablations/no_fa.yaml"], []),
        "runs/ablations/clip_vitl14": (["configs/encoders/clip_vitl14.yaml"], []),
        "runs/ablations/target_depth": (
            ["configs/ablations/target_depth.yaml"],
            ["configs/ablations/target_depth.yaml"],
        ),
        "runs/ablations/stage2_no_gradient_loss": (
            [],
            ["configs/ablations/stage2_no_gradient_loss.yaml"],
        ),
    }
    assert all(cmd[:2] == ["python", "tools/train_depthmaster.py"] for cmd in printed)


def test_a_row_stopped_by_a_signal_stops_the_sweep(monkeypatch):
    """A pre-empted row (exit 143) must not be followed by the next row, which the scheduler
    would kill half-way; an ordinary failure is marked and the sweep goes on."""
    from dm_lightning.recipes import ablations
    from dm_lightning.recipes.pipeline import Pipeline
    from dm_lightning.recipes.step_runner import PipelineError

    calls = []

    def fake_pipeline(pipeline, title):
        calls.append(title)
        raise PipelineError("stage1 (fit) failed", {"Ablation a": 1, "Ablation b": 143}[title])

    monkeypatch.setattr(ablations, "run_pipeline", fake_pipeline)
    rows = [
        ablations.Row(
            n, None, (), Pipeline((Stage("stage1", ("s1.yaml",)),), "data.yaml", f"runs/{n}")
        )
        for n in ("a", "b", "c")
    ]
    with pytest.raises(PipelineError) as stopped:
        ablations.run_rows(rows)
    assert stopped.value.status == 143
    assert calls == ["Ablation a", "Ablation b"]  # row c never started


def test_collect_writes_the_table_from_finished_rows_without_training(
    sweep, tmp_path, data_config, tiny_model, capsys
):
    """After the printed commands ran elsewhere: --collect reads the rows' results only."""
    table = (sweep / "ablations.md").read_text()
    capsys.readouterr()
    assert main(command(sweep, data_config, tiny_model, "--collect")) == 0
    out = capsys.readouterr().out
    assert "dm-lightning fit" not in out and "dm-lightning test" not in out
    assert (sweep / "ablations.md").read_text() == table
    # rows whose jobs have not finished: missing in the table, nothing trained here
    empty = tmp_path / "pending"
    assert main(command(empty, data_config, tiny_model, "--collect")) == 1
    captured = capsys.readouterr()
    assert "rows without results yet: baseline, stage2_no_gradient_loss" in captured.err
    assert "dm-lightning fit" not in captured.out
    assert not (empty / "baseline").exists()
    # no row has results, so no split is known: the rows are listed without columns
    assert "| model |\n|---|\n| baseline |\n" in (empty / "ablations.md").read_text()
