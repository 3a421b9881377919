"""README's user paths, run as a user runs them: the commands are taken from README's ``bash``
blocks word for word and executed in order in a folder laid out like a clone after ``make demo``
(``configs/``, ``tools/``, ``shards/synthetic``, ``shards/tiny-sd2``), with the assets a user
would bring made by the test (``path/to/images`` with photos of odd sizes and aspect ratios,
``photo.jpg``, ``sensor.png``, ``points.csv``). Training commands get a tiny budget appended
(``--trainer.max_steps 2``, no loader worker); nothing else is changed.

The path: the one-command tiny recipe (fit -> export -> test of three models), the stage-by-stage
commands, ``test`` of the stage-2 export, ``predict`` of a folder through the installed script,
metric depth from a reference map and from points, point clouds from the metric and the
relative prediction, a fit with README's own alignment encoder, the shard check
(``tools/inspect_shards.py``), the ablation sweep's ``--print-commands``, every help example
and the model card of the recipe's export with its test results. Not run here: the ONNX export
(slow; tests/test_onnx.py exports and runs it), ``tensorboard`` and ``push_to_hub.py``
(network), and the full-size, multi-GPU and real-dataset commands.
"""

from __future__ import annotations

import os
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_readme import readme_commands

from dm_lightning.cli import main as cli_main
from dm_lightning.inference.pointcloud import read_ply

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO / "tests" / "data" / "in_the_wild"
SCRIPT = Path(sys.executable).with_name("dm-lightning")
# Appended to every training command: a tiny budget on the 2-core CI machines.
FIT_BUDGET = ["--trainer.max_steps", "2", "--data.init_args.num_workers", "0"]
# The odd sizes (W, H) of the photos in path/to/images: none a multiple of the VAE factor.
SIZES = {"photo.jpg": (257, 199), "sub/tall.jpg": (199, 311), "wide.png": (301, 97)}


def readme_code(language: str) -> list[str]:
    """README's fenced blocks of ``language``, in order."""
    import re

    text = (REPO / "README.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def without_env(words: list[str]) -> list[str]:
    """A command without its leading ``VAR=value`` assignments."""
    while words and "=" in words[0] and not words[0].startswith("-"):
        words = words[1:]
    return words


def find(*prefix: str) -> list[str]:
    """The one README command whose words (after any ``VAR=value``) start with ``prefix``."""
    found = [w for w in readme_commands() if without_env(w)[: len(prefix)] == list(prefix)]
    assert len(found) == 1, f"README should have one command starting {shlex.join(prefix)}"
    return found[0]


def containing(*words: str) -> list[list[str]]:
    """README's commands that contain every one of ``words``."""
    return [c for c in readme_commands() if all(w in c for w in words)]


@pytest.fixture(scope="module")
def world(shards, tiny_model, tmp_path_factory) -> Path:
    """A working folder laid out like the repository after ``make demo``, plus a user's files."""
    root = tmp_path_factory.mktemp("readme_world")
    for name in ("configs", "tools", "tests"):
        (root / name).symlink_to(REPO / name)
    (root / "shards").mkdir()
    (root / "shards" / "synthetic").symlink_to(shards)
    (root / "shards" / "tiny-sd2").symlink_to(tiny_model)
    images = root / "path" / "to" / "images"
    sources = sorted(PHOTOS.glob("*.jpg"))
    for (name, size), source in zip(SIZES.items(), sources):
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        Image.open(source).convert("RGB").resize(size).save(images / name)
    (root / "photo.jpg").write_bytes((images / "photo.jpg").read_bytes())
    # A user's known depths for photo.jpg: a sensor map (16-bit millimetres, a hole) and points.
    w, h = SIZES["photo.jpg"]
    metres = np.linspace(1.0, 6.0, w)[None, :] * np.ones((h, 1))
    sensor = np.round(metres * 1000).astype(np.uint16)
    sensor[:20, :30] = 0
    Image.fromarray(sensor).save(root / "sensor.png")
    (root / "points.csv").write_text("x,y,metres\n10,20,1.2\n128,100,3.5\n250,190,5.9\n")
    return root


def run_tool(words: list[str]) -> int:
    """``python tools/X.py ARGS`` in this process: the tool's own ``main(argv)``."""
    assert words[0] in ("python", "python3") and words[1].startswith("tools/"), words
    namespace = runpy.run_path(words[1], run_name="readme_tool")
    return namespace["main"](words[2:])


def run_cli(words: list[str], *extra: str) -> int:
    assert words[0] == "dm-lightning", words
    return cli_main([*words[1:], *extra])


@pytest.fixture(scope="module")
def recipe(world):
    """README's one-command tiny recipe, in this process, with the tiny budget."""
    (words,) = containing("tools/train_depthmaster.py", "configs/tiny/stage1.yaml")
    old = os.getcwd()
    os.chdir(world)
    try:
        code = run_tool([*words, "--in-process", *FIT_BUDGET])
    finally:
        os.chdir(old)
    return code


def test_the_tiny_recipe_runs_as_printed(recipe, world):
    assert recipe == 0
    run = world / "runs" / "tiny"
    for stage in ("stage1", "stage2"):
        assert (run / stage / "version_0" / "export" / "unet").is_dir()
    results = (run / "results.md").read_text()
    assert "synthetic_indoor" in results and "synthetic_outdoor" in results


def test_stage_by_stage_then_test(recipe, world, monkeypatch, capsys):
    monkeypatch.chdir(world)
    stage1, stage2 = containing("--trainer.logger.init_args.version", "by_hand")
    assert "configs/tiny/stage1.yaml" in stage1 and "configs/tiny/stage2.yaml" in stage2
    assert run_cli(stage1, *FIT_BUDGET) == 0
    assert run_cli(stage2, *FIT_BUDGET) == 0
    assert (world / "runs/tiny/stage2/by_hand/export/unet").is_dir()
    # README's test command of the recipe's stage-2 export prints the results table
    (test,) = [c for c in containing("test", "configs/tiny/eval.yaml") if c[0] == "dm-lightning"]
    capsys.readouterr()
    assert run_cli(test) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| synthetic_")]
    assert len(table) == 2, out
    # README's example table has the same header and rows as this output
    readme = (REPO / "README.md").read_text()
    assert "| dataset           | images | AbsRel x100 | δ1 x100 |" in out
    assert "| dataset           | images | AbsRel x100 | δ1 x100 |" in readme


def test_predict_metric_depth_and_point_clouds(recipe, world, monkeypatch):
    monkeypatch.chdir(world)
    (predict,) = [c for c in containing("predictions/") if c[:2] == ["dm-lightning", "predict"]]
    # the installed script, as a user types it
    done = subprocess.run([str(SCRIPT), *predict[1:]], capture_output=True, text=True, cwd=world)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wrote 3 depth maps to predictions" in done.stdout + done.stderr
    for banner in ("GPU available", "TPU available"):
        assert banner not in done.stdout + done.stderr
    for name, (w, h) in SIZES.items():
        depth = np.load(world / "predictions" / Path(name).with_suffix(".npy"))
        assert depth.shape == (h, w) and depth.dtype == np.float32
        assert 0.0 <= depth.min() and depth.max() <= 1.0  # exactly the documented range
    assert (world / "path/to/images/photo.jpg").read_bytes() == (world / "photo.jpg").read_bytes()

    reference, points = (find("python", "tools/metric_depth.py", "predictions/photo.npy", flag)
                         for flag in ("--reference", "--points"))  # fmt: skip
    assert run_tool(reference) == 0
    from_reference = np.load(world / "predictions/photo_metric.npy")
    assert from_reference.shape == SIZES["photo.jpg"][::-1]
    assert run_tool(points) == 0
    metric = np.load(world / "predictions/photo_metric.npy")
    assert np.isfinite(metric).all() and metric.min() > 0

    metric_cloud, relative_cloud = containing("tools/point_cloud.py")
    assert run_tool(metric_cloud) == 0
    _, vertices = read_ply(world / "photo.ply")
    assert len(vertices) > 0 and float(vertices["z"].max()) <= 20.0  # --max-depth 20
    assert run_tool(relative_cloud) == 0
    _, vertices = read_ply(world / "photo.ply")
    w, h = SIZES["photo.jpg"]
    assert len(vertices) == len(range(0, h, 4)) * len(range(0, w, 4))  # --stride 4
    # --relative --near 0.5 --far 10: depths between the assumed bounds (float32 rounding)
    assert 0.5 * (1 - 1e-6) <= float(vertices["z"].min())
    assert float(vertices["z"].max()) <= 10 * (1 + 1e-6)


def test_own_alignment_encoder(recipe, world, monkeypatch):
    monkeypatch.chdir(world)
    python, yaml_block = readme_code("python"), readme_code("yaml")
    module = next(b for b in python if b.startswith("# my_encoders.py"))
    config = next(b for b in yaml_block if b.startswith("# configs/encoders/my_encoder.yaml"))
    (world / "my_encoders.py").write_text(module)
    user_configs = world / "user_configs"
    user_configs.mkdir()
    (user_configs / "my_encoder.yaml").write_text(config)
    (words,) = containing("configs/encoders/my_encoder.yaml")
    assert words[0] == "PYTHONPATH=." and without_env(words)[:2] == ["dm-lightning", "fit"]
    args = [
        w.replace("configs/encoders/my_encoder.yaml", str(user_configs / "my_encoder.yaml"))
        for w in without_env(words)[1:]
    ]
    monkeypatch.syspath_prepend(str(world))  # what PYTHONPATH=. does
    assert cli_main([*args, *FIT_BUDGET]) == 0


def test_large_photos_and_diffusers_snippet(recipe, world, monkeypatch):
    """README's tiled / bf16 / batched predict command, then its diffusers snippet, which loads
    the recipe's stage-2 export with diffusers alone (trust_remote_code) and writes its files."""
    monkeypatch.chdir(world)
    (tiled,) = containing("--model.init_args.tile_size")
    assert run_cli(tiled, "--data.init_args.num_workers", "0") == 0
    for name, (w, h) in SIZES.items():
        depth = np.load(world / "depth" / Path(name).with_suffix(".npy"))
        assert depth.shape == (h, w) and 0.0 <= depth.min() and depth.max() <= 1.0
    (snippet,) = [b for b in readme_code("python") if "DiffusionPipeline" in b]
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    out = scope["out"]
    assert out.prediction.shape == (1, *SIZES["photo.jpg"][::-1], 1)
    assert out.target == "sqrt_disparity" and out.near_is_one
    assert 0.0 <= out.prediction.min() and out.prediction.max() <= 1.0
    assert Image.open(world / "depth_color.png").size == SIZES["photo.jpg"]
    assert Image.open(world / "depth16.png").size == SIZES["photo.jpg"]


def test_inspect_shards_as_printed(world, monkeypatch, capsys):
    """README's shard check, on shards at README's path: the synthetic indoor shards stand in
    for a user's converted Hypersim (same schema; 16 train samples in 2 shards)."""
    monkeypatch.chdir(world)
    hypersim = world / "shards" / "hypersim"
    if not hypersim.exists():
        hypersim.symlink_to(world / "shards" / "synthetic" / "indoor")
    words = find("python", "tools/inspect_shards.py")
    assert words[2] == "shards/hypersim/train-*.tar"  # quoted in README: the tool expands it
    capsys.readouterr()
    assert run_tool(words) == 0
    out = capsys.readouterr().out
    assert "2 shards, 16 samples read, 0 corrupt" in out
    assert "synthetic_indoor: 16 samples, 96x128 x16, valid " in out
    # the sheet: 8 rows (the default --rows) of 160 pixels (--row-height) with 4-pixel gaps
    assert "contact sheet: sheet.png (8 rows)" in out
    assert Image.open(world / "sheet.png").height == 8 * 160 + 7 * 4


def test_run_ablations_print_commands_as_printed(world, monkeypatch, capsys):
    """README's ablation sweep with --print-commands: one tools/train_depthmaster.py command
    per row (the baseline, then each overlay on the stages that take its keys); nothing runs
    and nothing is written."""
    monkeypatch.chdir(world)
    (words,) = containing("tools/run_ablations.py", "--print-commands")
    capsys.readouterr()
    assert run_tool(words) == 0
    lines = capsys.readouterr().out.splitlines()
    overlays = words[words.index("--overlays") + 1 : words.index("--print-commands")]
    rows = ["baseline"] + [Path(o).stem for o in overlays]
    assert len(lines) == len(rows) == 5, lines
    for line, row in zip(lines, rows):
        printed = shlex.split(line)
        assert printed[:2] == ["python", "tools/train_depthmaster.py"], line
        assert printed[printed.index("--run") + 1] == f"runs/ablations/{row}"
    # target_depth.yaml is added to both stages, stage2_no_gradient_loss.yaml to stage 2 only
    target = shlex.split(lines[rows.index("target_depth")])
    assert target.count("configs/ablations/target_depth.yaml") == 2
    gradient = shlex.split(lines[rows.index("stage2_no_gradient_loss")])
    stage2 = gradient[gradient.index("--stage2") + 1 : gradient.index("--data")]
    assert stage2 == ["configs/stage2.yaml", "configs/ablations/stage2_no_gradient_loss.yaml"]
    assert not (world / "runs" / "ablations").exists()


def readme_help_commands() -> list[list[str]]:
    """README's help examples: the ``bash``-block commands with ``--help`` or ``--X.help``,
    and the inline ones (`` `dm-lightning --help` ``); ``tools/<tool>.py`` stands for every
    tool."""
    import re

    text = (REPO / "README.md").read_text()
    inline = re.findall(r"`((?:dm-lightning|python tools/)[^`]*--help)`", text)
    commands = [c for c in readme_commands() if any(w.endswith("help") for w in c)]
    for words in map(shlex.split, inline):
        if words[1] == "tools/<tool>.py":
            tools = sorted(p.name for p in (REPO / "tools").glob("*.py"))
            commands += [[words[0], f"tools/{tool}", *words[2:]] for tool in tools]
        elif words not in commands:
            commands.append(words)
    return commands


def test_help_examples_as_printed(world, monkeypatch, capsys):
    """Every help example of README exits 0 with a usage text; a stage's own arguments are
    listed by ``--model.help <class>`` and not by ``fit --help``, as README says."""
    monkeypatch.chdir(world)
    monkeypatch.syspath_prepend(str(REPO / "tools"))  # what `python tools/X.py` puts first
    commands = readme_help_commands()
    shown = {}
    for words in commands:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            if words[0] == "dm-lightning":
                run_cli(words)
            else:
                monkeypatch.setattr(sys, "argv", words[1:])
                runpy.run_path(words[1], run_name="__main__")
        assert exit_info.value.code in (0, None), words
        out = capsys.readouterr().out
        assert "usage:" in out, words
        shown[shlex.join(words)] = out
    cli = ["--help", "fit --help", "fit --model.help Stage1", "fit --data.help DepthDataModule"]
    tools = [f"python tools/{p.name} --help" for p in (REPO / "tools").glob("*.py")]
    assert set(shown) == {f"dm-lightning {c}" for c in cli} | set(tools)
    assert "--model.fa_location" in shown["dm-lightning fit --model.help Stage1"]
    assert "fa_location" not in shown["dm-lightning fit --help"]
    assert "--data.batches_per_epoch" in shown["dm-lightning fit --data.help DepthDataModule"]


def test_model_card_of_the_recipe_export_as_printed(recipe, world, monkeypatch, capsys):
    """README's model card command after README's test command with the EvaluationReport
    callback (as README's text asks; version 0, as the card command names): the card of the
    recipe's stage-2 export gets the results of that test."""
    import json

    from huggingface_hub import ModelCard

    monkeypatch.chdir(world)
    (test,) = [c for c in containing("test", "configs/tiny/eval.yaml") if c[0] == "dm-lightning"]
    report = ["--trainer.callbacks+=dm_lightning.EvaluationReport"]
    assert run_cli(test, *report, "--trainer.logger.init_args.version", "0") == 0
    (command,) = containing("tools/model_card.py")
    evaluation = command[command.index("--results") + 1]
    assert evaluation == "runs/tiny/test/version_0/evaluation"
    assert run_tool(command) == 0
    export = world / "runs/tiny/stage2/version_0/export"
    results = json.loads((world / evaluation / "results.json").read_text())
    card = ModelCard.load(export / "README.md")
    data = card.data
    values = {(r.dataset_type, r.metric_type): r.metric_value for r in data.eval_results}
    # The settings that produced them come along: the report's fit space, each split's row.
    fit_space = results["settings"]["fit_space"]
    assert f"fit (alignment) space **{fit_space}**" in card.text
    for benchmark in results["benchmarks"]:
        assert f"\n| {benchmark['name']} | " in card.text.split("Settings: ")[1]
    benchmarks = [b for b in results["benchmarks"] if b["num_images"]]
    assert len(benchmarks) == 2 and len(values) == 4
    for benchmark in benchmarks:
        for metric in ("abs_rel", "delta1"):
            expected = round(100 * benchmark["metrics"][metric], 2)
            assert values[(benchmark["name"], metric)] == expected, (benchmark, metric)
