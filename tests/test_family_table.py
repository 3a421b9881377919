"""The single-step family in one ablation table (issue 19): DepthMaster's two-stage recipe plus
E2E-FT, Lotus-D and Marigold rows (baseline configs given as overlays), each trained on the
same synthetic shards with the same trainer settings and tested by the same protocol, on the
tiny model; and the printed commands of the same sweep for the real recipe."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from dm_lightning.recipes.ablations import main, plan_rows
from dm_lightning.recipes.pipeline import Pipeline, Stage

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
TINY_BASELINES = CONFIGS / "tiny" / "baselines"
METHODS = {"e2e_ft": "E2EFT", "lotus_d": "LotusD", "marigold": "Marigold"}


@pytest.fixture(scope="module")
def family(tmp_path_factory, data_config, tiny_model):
    run = tmp_path_factory.mktemp("family") / "sweep"
    argv = [
        "--stage1", str(CONFIGS / "tiny" / "stage1.yaml"),
        "--stage2", str(CONFIGS / "tiny" / "stage2.yaml"),
        "--data", str(data_config),
        "--eval", str(CONFIGS / "tiny" / "eval.yaml"),
        "--run", str(run),
        "--model-path", str(tiny_model),
        "--overlays", *(str(TINY_BASELINES / f"{m}.yaml") for m in METHODS),
        "--in-process",
        "--trainer.max_steps", "2",
        "--trainer.enable_progress_bar", "false",
        "--test.trainer.enable_progress_bar", "false",
        "--test.trainer.limit_test_batches", "1",
    ]  # fmt: skip
    assert main(argv) == 0
    return run


def _test_run(run: Path, row: str, stage: str) -> Path:
    (folder,) = (run / row / f"test-{stage}").glob("version_*")
    return folder


def test_four_rows_one_table_each_method_trained_and_tested_as_itself(family):
    lines = (family / "ablations.md").read_text().splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| model")]
    labels = [row.split("|")[1].strip() for row in rows]
    assert labels == ["baseline", "e2e_ft (E2EFT)", "lotus_d (LotusD)", "marigold (Marigold)"]

    record = json.loads((family / "ablations.json").read_text())
    for (name, task), row in zip(METHODS.items(), rows[1:]):
        # trained by its own task class, once, from the sweep's model path
        (fit_config,) = (family / name / "stage1").glob("version_*/config.yaml")
        fit = yaml.safe_load(fit_config.read_text())
        assert fit["model"]["class_path"] == f"dm_lightning.{task}"
        assert fit["trainer"]["max_steps"] == 2
        export = json.loads((family / name / "stage1" / "version_0" / "export.json").read_text())
        meta = json.loads((Path(export["export"]) / "dm_lightning.json").read_text())
        assert meta["method"] == name and meta["task"] == f"dm_lightning.{task}"
        # tested by the same class, in the target space it was trained in
        test_run = _test_run(family, name, "stage1")
        tested = yaml.safe_load((test_run / "config.yaml").read_text())["model"]
        assert tested["class_path"] == f"dm_lightning.{task}"
        assert tested["init_args"]["target"] in (None, meta["target"])
        logged = json.loads((test_run / "test_metrics.json").read_text())
        assert record[name]["method"] == f"dm_lightning.{task}"
        assert record[name]["metrics"] == logged
        cells = [float(c) for c in row.strip("|").split("|")[1:]]
        expected = [
            100 * logged[f"test/{split}/{metric}"]
            for split in ("synthetic_indoor", "synthetic_outdoor")
            for metric in ("abs_rel", "delta1")
        ]
        assert cells == pytest.approx(expected, abs=0.051)  # the table rounds to 0.1
    # DepthMaster's row is its two-stage recipe, tested as DepthMaster
    assert sorted(p.name for p in (family / "baseline").iterdir() if p.is_dir()) == [
        "stage1",
        "stage2",
        "test-stage2",
    ]
    metrics = [record[row]["metrics"] for row in ("baseline", *METHODS)]
    assert all(m is not None for m in metrics)
    assert len({json.dumps(m, sort_keys=True) for m in metrics}) == 4  # four different models


def test_a_finished_family_sweep_is_skipped_on_rerun(family, data_config, tiny_model, capsys):
    table = (family / "ablations.md").read_text()
    argv = [
        "--stage1", str(CONFIGS / "tiny" / "stage1.yaml"),
        "--stage2", str(CONFIGS / "tiny" / "stage2.yaml"),
        "--data", str(data_config), "--eval", str(CONFIGS / "tiny" / "eval.yaml"),
        "--run", str(family), "--model-path", str(tiny_model),
        "--overlays", *(str(TINY_BASELINES / f"{m}.yaml") for m in METHODS),
        "--in-process", "--trainer.max_steps", "2",
        "--test.trainer.limit_test_batches", "1",
    ]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "dm-lightning fit" not in out and "dm-lightning test" not in out
    assert out.count("finished earlier, skipping") == 5  # 2 DepthMaster stages + 3 methods
    assert (family / "ablations.md").read_text() == table


def test_readme_family_sweep_prints_one_command_per_method(capsys, monkeypatch):
    """The README's command for the real recipe: one tools/train_depthmaster.py command per
    row, a method row being its config alone as the first stage; nothing runs."""
    monkeypatch.chdir(REPO)
    readme = (REPO / "README.md").read_text()
    first_line = "python tools/run_ablations.py --stage1 configs/stage1.yaml \\\n    --stage2"
    start = readme.index(first_line)
    command = readme[start : readme.index("```", start)].strip()
    assert "configs/baselines/marigold.yaml" in command
    argv = shlex.split(command.replace("\\\n", " "))
    assert main([*argv[2:], "--print-commands"]) == 0
    printed = [shlex.split(line) for line in capsys.readouterr().out.strip().splitlines()]
    firsts = {
        cmd[cmd.index("--run") + 1]: cmd[cmd.index("--stage1") + 1 : cmd.index("--data")]
        for cmd in printed
    }
    assert firsts == {
        "runs/family/baseline": ["configs/stage1.yaml", "--stage2", "configs/stage2.yaml"],
        "runs/family/e2e_ft": ["configs/baselines/e2e_ft.yaml"],
        "runs/family/lotus_d": ["configs/baselines/lotus_d.yaml"],
        "runs/family/marigold": ["configs/baselines/marigold.yaml"],
    }


def test_a_method_row_takes_the_sweep_options_but_not_the_stages_own():
    recipe = Pipeline(
        stages=(
            Stage("stage1", (str(CONFIGS / "stage1.yaml"),), ("--model.init_args.fa_weight", "2")),
            Stage("stage2", (str(CONFIGS / "stage2.yaml"),)),
        ),
        data="data.yaml",
        run="runs/x",
        fit_args=("--trainer.devices", "4"),
    )
    baseline, e2e = plan_rows(recipe, [str(CONFIGS / "baselines" / "e2e_ft.yaml")], "runs/x")
    assert [s.name for s in baseline.pipeline.stages] == ["stage1", "stage2"]
    assert e2e.method == "dm_lightning.E2EFT"
    (stage,) = e2e.pipeline.stages
    assert stage == Stage("stage1", (str(CONFIGS / "baselines" / "e2e_ft.yaml"),))
    assert e2e.pipeline.fit_args == ("--trainer.devices", "4")
    assert e2e.pipeline.run == "runs/x/e2e_ft"
