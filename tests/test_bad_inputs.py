"""Bad inputs end in one clear line: ``<tool>: error: ...`` naming the file, key or value and
what was expected, exit status 2 for anything found before training, no usage dump and no
traceback (issue 17, point 2). Most cases stop before a model is built, in this process."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import write_raw_tar
from PIL import Image

from dm_lightning.cli import cli_args, main
from dm_lightning.errors import ConfigError, DataError, DiskFullError, StartupDataError

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
TINY = CONFIGS / "tiny"


def error_line(capsys, prefix: str = "dm-lightning") -> str:
    """The one stderr line of a failed command (asserting it is the only one)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prefix}: error: ")]
    assert len(errors) == 1, lines
    assert not any("usage:" in line or "Traceback" in line for line in lines), lines
    return errors[0]


# ---- YAML and config errors ----------------------------------------------------------------


def test_a_tab_in_a_yaml_config_names_the_file_and_line(tmp_path, capsys):
    config = tmp_path / "tabbed.yaml"
    config.write_text("trainer:\n  max_steps: 3\n\tlog_every_n_steps: 1\n")
    assert main(["fit", "--config", str(config)]) == 2
    line = error_line(capsys)
    # What YAML says in between depends on the place of the tab and on the loader (libyaml).
    assert line.startswith(
        f"dm-lightning: error: config file {config}: not valid YAML at line 3, column 1: found "
    )
    assert line.endswith("(a tab: YAML indents with spaces only)")


def test_a_yaml_error_in_a_nested_config_names_that_file(tmp_path, capsys):
    (tmp_path / "inner.yaml").write_text("trainer:\n  max_steps: [3\n")
    outer = tmp_path / "outer.yaml"
    outer.write_text("config: inner.yaml\n")  # relative to outer.yaml's folder
    assert main(["fit", "--config", str(outer)]) == 2
    line = error_line(capsys)
    assert f"config file {tmp_path / 'inner.yaml'}: not valid YAML at line 3, column 1: " in line
    assert line.endswith("(while parsing a flow sequence at line 2)")


def test_a_misspelt_key_names_it_and_the_close_match(tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("trainer:\n  max_stepz: 3\n")
    assert main(["fit", "--config", str(config)]) == 2
    line = error_line(capsys)
    assert "unknown option 'trainer.max_stepz'" in line
    assert "did you mean 'trainer.max_steps'?" in line
    assert main(["fit", "--trainer.max_stepz", "3"]) == 2
    assert "did you mean 'trainer.max_steps'?" in error_line(capsys)


def test_a_value_of_the_wrong_type_names_key_value_and_type(capsys):
    assert main(["fit", "--trainer.max_steps", "abc"]) == 2
    line = error_line(capsys)
    assert line.startswith("dm-lightning: error: --trainer.max_steps: expected int, got 'abc'")


def test_an_unknown_model_option_names_the_class(capsys):
    assert main(["fit", "--model", "Stage2", "--model.lrr", "3"]) == 2
    assert "--model: dm_lightning.Stage2 has no option 'lrr'" in error_line(capsys)


def test_installed_script_yaml_error_is_one_line_exit_2(tmp_path):
    config = tmp_path / "tabbed.yaml"
    config.write_text("trainer:\n\tmax_steps: 3\n")
    exe = Path(sys.executable).parent / "dm-lightning"
    result = subprocess.run(
        [str(exe), "fit", "--config", str(config)], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    expected = f"dm-lightning: error: config file {config}: not valid YAML at line 2"
    assert lines[0].startswith(expected)
    assert lines[0].endswith("(a tab: YAML indents with spaces only)")


# ---- model and trainer options found at start-up -------------------------------------------


def _tiny_fit(stage: str, tiny_model, data_config, save_dir, **overrides) -> list[str]:
    configs = [TINY / f"{stage}.yaml", data_config]
    return cli_args("fit", configs, tiny_model, save_dir, trainer__max_steps=1, **overrides)


@pytest.mark.parametrize("stage, lr", [("stage1", "0"), ("stage2", "-1")])
def test_a_learning_rate_not_above_zero_is_refused_at_start(
    stage, lr, tiny_model, data_config, tmp_path, capsys
):
    args = _tiny_fit(stage, tiny_model, data_config, tmp_path, model__init_args__lr=lr)
    assert main(args) == 2
    line = error_line(capsys)
    assert line == (
        "dm-lightning: error: model.init_args.lr must be a finite number > 0 (Adam's learning "
        f"rate), got {float(lr)}"
    )
    assert not any(tmp_path.rglob("*.ckpt"))


def test_a_save_dir_under_a_regular_file_is_named(tiny_model, data_config, tmp_path, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    assert main(_tiny_fit("stage1", tiny_model, data_config, blocker / "runs")) == 2
    assert error_line(capsys) == (
        f"dm-lightning: error: trainer.logger.init_args.save_dir: {blocker / 'runs'} cannot be "
        f"created: {blocker} is a file, not a folder"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda"])
def test_a_missing_accelerator_names_what_is_available(
    accelerator, tiny_model, data_config, tmp_path, capsys
):
    args = _tiny_fit("stage1", tiny_model, data_config, tmp_path, trainer__accelerator=accelerator)
    assert main(args) == 2
    line = error_line(capsys)
    assert f"trainer.accelerator: '{accelerator}' is not available on this machine" in line
    assert "available: cpu" in line


def test_lightning_misconfiguration_becomes_a_config_error():
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from dm_lightning.cli_errors import lightning_error

    try:
        try:
            raise MisconfigurationException("`devices` selected with `CPUAccelerator` should\n be")
        except MisconfigurationException as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        found = lightning_error(outer)
    assert isinstance(found, ConfigError) and found.exit_code == 2
    assert str(found) == "trainer: `devices` selected with `CPUAccelerator` should be"
    assert lightning_error(ValueError("other")) is None


# ---- data -----------------------------------------------------------------------------------


def _eight_bit_shard(path: Path, size: int = 4, eight_bit: tuple[int, ...] = (0, 1)) -> Path:
    """A shard of two size x size samples ``k0``, ``k1``, schema-valid except that the
    depth.png of those in ``eight_bit`` is 8-bit (mode L)."""
    from dm_lightning.data.schema import encode_sample

    samples = []
    for index in range(2):
        sample = encode_sample(
            f"k{index}", np.zeros((size, size, 3), np.uint8), np.ones((size, size)), source="s",
            depth_scale=1e-3, min_depth=1e-3, max_depth=10.0,
        )  # fmt: skip
        if index in eight_bit:
            png = io.BytesIO()
            depth = np.full((size, size), 200, np.uint8)
            Image.fromarray(depth, mode="L").save(png, format="PNG")
            sample = {**sample, "depth.png": png.getvalue()}
        samples.append(sample)
    return write_raw_tar(path, samples)


def test_an_8_bit_depth_png_stops_the_stream_naming_shard_and_key(tmp_path):
    from dm_lightning.data.schema import DepthFormatError, decode_sample
    from dm_lightning.data.shard_reader import iter_shard
    from dm_lightning.data.streams.skips import SkipCounter, decoded

    shard = str(_eight_bit_shard(tmp_path / "train-000000.tar"))
    raw = next(iter(iter_shard(shard, None)))
    with pytest.raises(DepthFormatError, match=r"depth.png is an 8-bit PNG \(mode L\)"):
        decode_sample(raw)
    counter = SkipCounter("training source 's'")
    with pytest.raises(DataError) as stopped:
        list(decoded(iter(iter_shard(shard, None)), counter))
    assert str(stopped.value).startswith(
        f"training source 's': shard {shard}, sample k0: depth.png is an 8-bit PNG (mode L); "
        "the schema stores depth as 16-bit PNG units"
    )
    assert counter.total == 0  # stopped, not skipped


def test_an_8_bit_depth_png_stops_a_fit_with_one_line(tiny_model, data_config, tmp_path):
    """Through the installed script: a tiny fit whose training shard holds a sample with an
    8-bit depth PNG stops at its first batch with one line naming shard, sample and the
    16-bit format. It is found while batches are read (a DataError, exit 1 as README's exit
    status says), before any step: no checkpoint is written."""
    # k1 is 8-bit; a batch of 2 from a shard of 2 decodes both samples before the first step
    shard = _eight_bit_shard(tmp_path / "train-000000.tar", size=8, eight_bit=(1,))
    config = yaml.safe_load(data_config.read_text())
    config["data"]["init_args"]["train"] = [{"name": "s", "shards": str(shard), "batch_size": 2}]
    eight_bit = tmp_path / "eight_bit.yaml"
    eight_bit.write_text(yaml.safe_dump(config))
    args = _tiny_fit("stage1", tiny_model, eight_bit, tmp_path / "runs")
    args += ["--trainer.enable_progress_bar", "false"]
    exe = Path(sys.executable).parent / "dm-lightning"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(exe), *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600
    )
    assert done.returncode == 1, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("dm-lightning: error: ")]
    assert errors == [
        f"dm-lightning: error: training source 's': shard {shard}, sample k1: depth.png is an "
        "8-bit PNG (mode L); the schema stores depth as 16-bit PNG units (mode I;16, metres = "
        "units x depth_scale): write the shard again with a 16-bit depth map "
        "(tools/convert_*.py do)"
    ], lines
    assert not any("Traceback" in line or "usage:" in line for line in lines), lines
    assert not any((tmp_path / "runs").rglob("*.ckpt"))


def test_empty_shards_found_at_start_up_exit_2(tmp_path):
    from dm_lightning.data.checks import first_sample_meta

    empty = tmp_path / "train-000000.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(StartupDataError) as found:
        first_sample_meta("data.train[s]", [str(empty)])
    assert found.value.exit_code == 2 and isinstance(found.value, DataError)
    assert f"shard {empty} holds no sample (an empty tar)" in str(found.value)


@pytest.mark.parametrize("tool", ["convert_hypersim", "convert_vkitti"])
def test_converters_refuse_an_empty_or_missing_input_and_write_nothing(tool, tmp_path, capsys):
    import runpy

    convert = runpy.run_path(str(REPO / "tools" / f"{tool}.py"))["main"]
    empty, out = tmp_path / "empty", tmp_path / "out"
    empty.mkdir()
    source = tool.removeprefix("convert_")
    with pytest.raises(SystemExit) as exit_info:
        convert([str(empty), "--out", str(out), "--quiet", "--workers", "1"])
    assert exit_info.value.code == 2
    line = error_line(capsys, f"{tool}.py")
    assert "none of the" in line and f"{source} frames of the list has its input files" in line
    assert str(empty) in line
    with pytest.raises(SystemExit) as exit_info:
        convert([str(tmp_path / "nope"), "--out", str(out), "--quiet", "--workers", "1"])
    assert exit_info.value.code == 2
    assert error_line(capsys, f"{tool}.py") == (
        f"{tool}.py: error: input {tmp_path / 'nope'} does not exist; expected a {source} "
        "dataset folder or an uncompressed .tar of one"
    )
    assert not out.exists()


# ---- the pipeline and ablation sweeps check every step first ------------------------------


def _recipe(run: Path, data_config: Path, *extra: str) -> list[str]:
    return [
        "--stage1", str(TINY / "stage1.yaml"), "--stage2", str(TINY / "stage2.yaml"),
        "--data", str(data_config), "--eval", str(TINY / "eval.yaml"), "--run", str(run),
        "--in-process", *extra,
    ]  # fmt: skip


def test_pipeline_checks_every_step_before_stage_1(tmp_path, data_config, capsys):
    from dm_lightning.recipes.pipeline_cli import main as pipeline_main

    run = tmp_path / "run"
    args = _recipe(run, data_config)
    missing = tmp_path / "no_stage2.yaml"
    args[args.index("--stage2") + 1] = str(missing)
    assert pipeline_main(args) == 2
    assert error_line(capsys, "train_depthmaster.py") == (
        f"train_depthmaster.py: error: --stage2 {missing}: no such config file"
    )
    assert pipeline_main(_recipe(run, data_config, "--test.trainer.max_stepz", "1")) == 2
    line = error_line(capsys, "train_depthmaster.py")
    assert line.startswith("train_depthmaster.py: error: test of stage2: unknown option")
    assert "did you mean 'trainer.max_steps'?" in line
    assert pipeline_main(_recipe(run, data_config, "--model-path", str(tmp_path / "nomodel"))) == 2
    assert "--model-path" in error_line(capsys, "train_depthmaster.py")
    assert not run.exists()  # nothing ran


def test_test_input_is_the_first_stage_configs_model(tmp_path, data_config):
    """README's tiny recipe tests ``input`` without --model-path: the input model is the
    first stage's config's model_path (it failed with exit 2 after both stages trained)."""
    from dm_lightning.recipes.pipeline import Pipeline, Stage
    from dm_lightning.recipes.steps import check_pipeline

    pipeline = Pipeline(
        stages=(Stage("stage1", (str(TINY / "stage1.yaml"),)),),
        data=str(data_config),
        run=str(tmp_path / "run"),
        eval_config=str(TINY / "eval.yaml"),
        test=("input", "stage1"),
    )
    configured = yaml.safe_load((TINY / "stage1.yaml").read_text())["model"]["init_args"]
    assert check_pipeline(pipeline) == configured["model_path"]


def test_an_ablation_overlay_with_an_unknown_key_fails_before_any_row(
    tmp_path, data_config, tiny_model, capsys
):
    from dm_lightning.recipes.ablations import main as ablations_main

    overlay = tmp_path / "bad.yaml"
    overlay.write_text("trainer:\n  max_stepz: 3\n")
    run = tmp_path / "sweep"
    args = [
        "--stage2", str(TINY / "stage2.yaml"), "--data", str(data_config),
        "--eval", str(TINY / "eval.yaml"), "--run", str(run), "--model-path", str(tiny_model),
        "--overlays", f"stage2={overlay}", "--in-process",
    ]  # fmt: skip
    assert ablations_main(args) == 2
    line = error_line(capsys, "run_ablations.py")
    assert "stage2 (fit): unknown option 'trainer.max_stepz'" in line
    assert not run.exists()


# ---- a full disk during a save or an export -------------------------------------------------


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_a_checkpoint_save_keeps_the_previous_one(tmp_path, monkeypatch):
    from dm_lightning.training import checkpoint_io
    from dm_lightning.training.checkpoint_io import StreamingCheckpointIO

    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous checkpoint")
    monkeypatch.setattr(checkpoint_io.torch, "save", _disk_full)
    with pytest.raises(DiskFullError) as full:
        StreamingCheckpointIO().save_checkpoint({"state_dict": {}}, target)
    assert str(full.value) == (
        f"the disk is full (no space or quota left) while writing checkpoint {target}; the "
        "previous checkpoint there is intact. Free some space, then run the same command again "
        "(fit: add --ckpt_path last)"
    )
    assert target.read_bytes() == b"previous checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left


def test_a_full_disk_during_an_export_is_one_line_through_the_cli(tmp_path, capsys):
    from dm_lightning.cli_errors import user_error, user_message
    from dm_lightning.training.callbacks import replace_folder

    target = tmp_path / "export"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"previous")

    def write(tmp: Path) -> None:
        tmp.mkdir()
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    try:
        try:
            replace_folder(target, write, "model export")
        except DiskFullError as err:
            raise RuntimeError("Lightning's wrapper") from err
    except RuntimeError as outer:
        found = user_error(outer)
    assert isinstance(found, DiskFullError) and found.exit_code == 1
    assert user_message(found).startswith(
        f"the disk is full (no space or quota left) while writing model export {target}; the "
        "previous model export there is intact."
    )
    assert (target / "model.safetensors").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_a_full_disk_at_the_end_of_fit_is_one_line(
    tiny_model, data_config, tmp_path, monkeypatch, capsys
):
    """The export at the end of a 1-step fit meets a full disk: one line naming the export
    folder, exit status 1 (the run had trained), no half export under the final name."""
    from dm_lightning.models.depthmaster import DepthMaster

    def full_disk(self, path, metadata=None):
        Path(path).mkdir(parents=True)
        (Path(path) / "part.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DepthMaster, "save_pretrained", full_disk)
    args = _tiny_fit("stage1", tiny_model, data_config, tmp_path)
    assert main([*args, "--trainer.enable_progress_bar", "false"]) == 1
    line = error_line(capsys)
    assert line.startswith("dm-lightning: error: the disk is full (no space or quota left) while ")
    assert "model export" in line and "nothing was written there" in line
    assert not [p for p in tmp_path.rglob("export*") if p.is_dir()]  # nor a temporary one
