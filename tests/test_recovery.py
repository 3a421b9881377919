"""What a user meets through the installed ``dm-lightning`` script: exit codes, pre-emption
(SIGTERM), a hard kill (SIGKILL) and a SLURM requeue (SIGUSR1) mid-fit, each resumed with one
command to the same final step in the same run folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import cli_args

from dm_lightning.training.checkpoints import load_checkpoint_safely

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
SCRIPT = Path(sys.executable).parent / "dm-lightning"
FINAL_STEP = 24


@pytest.fixture(scope="module")
def fit_config(tmp_path_factory, data_config) -> Path:
    """configs/tiny/stage1.yaml with last.ckpt every 2 steps and no validation during fit."""
    cfg = yaml.safe_load((CONFIGS / "tiny" / "stage1.yaml").read_text())
    trainer = cfg["trainer"]
    trainer.update(max_steps=FINAL_STEP, check_val_every_n_epoch=1000, enable_progress_bar=False)
    for callback in trainer["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            args = callback["init_args"]
            if args.get("save_last"):
                args["every_n_train_steps"] = 2
    path = tmp_path_factory.mktemp("recovery") / "stage1.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _command(fit_config, data_config, tiny_model, root, *extra) -> list[str]:
    configs = [fit_config, data_config]
    return [str(SCRIPT), *cli_args("fit", configs, tiny_model, root, extra=extra)]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}


def _run(command, env=None, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env or _env(), cwd=REPO
    )


def _interrupt_after_checkpoint(command, checkpoint: Path, signum: int, env=None):
    """Start a fit, wait for its first periodic ``checkpoint``, send ``signum``; returns the
    finished process and its output."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env or _env(), cwd=REPO,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while not checkpoint.is_file():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "no periodic checkpoint within 180 s"
        time.sleep(0.05)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    return process, output


@pytest.fixture(scope="module")
def short_fit(fit_config, data_config, tiny_model, tmp_path_factory):
    """A 2-step stage-1 fit through the installed script: (root, completed process)."""
    root = tmp_path_factory.mktemp("short")
    done = _run(_command(fit_config, data_config, tiny_model, root, "--trainer.max_steps=2"))
    return root, done


def test_fit_then_python_m_exit_zero(short_fit, data_config, tmp_path):
    root, done = short_fit
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LightningCLI object" not in done.stdout + done.stderr
    export = root / "stage1" / "version_0" / "export"
    assert (export / "unet" / "config.json").is_file()
    # No temporary or previous export folder left beside it.
    assert sorted(p.name for p in export.parent.iterdir() if "export" in p.name) == [
        "export", "export.json",
    ]  # fmt: skip
    configs = [CONFIGS / "tiny" / "eval.yaml", data_config]
    tested = _run(
        [sys.executable, "-m", "dm_lightning", *cli_args("test", configs, export, tmp_path)]
    )
    assert tested.returncode == 0, tested.stderr[-3000:]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_interrupted_fit_resumes_in_the_same_run_folder(
    signum, fit_config, data_config, tiny_model, tmp_path
):
    run = tmp_path / "stage1" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    command = _command(fit_config, data_config, tiny_model, tmp_path)
    process, output = _interrupt_after_checkpoint(command, last, signum)
    if signum == signal.SIGTERM:
        # A clean stop at the next batch boundary: checkpoint saved, status 128 + 15.
        assert process.returncode == 143, output[-3000:]
        assert "resumable checkpoint saved to" in output and "Traceback" not in output
    else:
        assert process.returncode == -signal.SIGKILL
    stopped_at = load_checkpoint_safely(last)["global_step"]
    assert 2 <= stopped_at < FINAL_STEP
    assert not (run / "export").exists()  # interrupted runs do not export

    resumed = _run([*command, "--ckpt_path", "last"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # its own checkpoints are expected in the folder it resumes in: no warning about them
    assert "exists and is not empty" not in resumed.stderr + resumed.stdout
    assert sorted(p.name for p in (tmp_path / "stage1").iterdir()) == ["version_0"]
    final = load_checkpoint_safely(last)
    assert final["global_step"] == FINAL_STEP
    # Schedule position and optimizer came back: Adam counted every step, the LR scheduler
    # sits at the final step.
    assert final["lr_schedulers"][0]["last_epoch"] == FINAL_STEP
    assert float(final["optimizer_states"][0]["state"][0]["step"]) == FINAL_STEP
    assert (run / "export" / "unet" / "config.json").is_file()
    assert len(list(run.glob("events.out.tfevents.*"))) == 2  # both parts log here


def test_slurm_requeue_resumes_from_the_hpc_checkpoint(
    fit_config, data_config, tiny_model, tmp_path
):
    """Under SLURM, SIGUSR1 is Lightning's: it saves hpc_ckpt_<n>.ckpt in the run folder
    (slurm-<job id>) and calls ``scontrol requeue <job id>``; the requeued job (same command,
    same job id) resumes from it by itself."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    env = _env(
        PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242", SLURM_NTASKS="1",
        SLURM_JOB_NAME="depthmaster", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_NODEID="0",
    )  # fmt: skip
    run = tmp_path / "stage1" / "slurm-4242"
    command = _command(fit_config, data_config, tiny_model, tmp_path)
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO
    )
    deadline = time.monotonic() + 180
    while not (run / "checkpoints" / "last.ckpt").is_file():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGUSR1)
    while not calls.is_file():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.kill()  # what SLURM does to a requeued job
    process.communicate(timeout=60)
    assert calls.read_text().split() == ["requeue", "4242"]
    (hpc,) = run.glob("hpc_ckpt_*.ckpt")
    assert 2 <= load_checkpoint_safely(hpc)["global_step"] < FINAL_STEP

    requeued = _run(command, env=env)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert "Restored all states from the checkpoint" in requeued.stdout + requeued.stderr
    assert sorted(p.name for p in (tmp_path / "stage1").iterdir()) == ["slurm-4242"]
    assert load_checkpoint_safely(run / "checkpoints" / "last.ckpt")["global_step"] == FINAL_STEP


def test_user_errors_are_one_line_with_status_2(short_fit, data_config, tiny_model, tmp_path):
    configs = [CONFIGS / "tiny" / "stage2.yaml", data_config]
    stage2 = [str(SCRIPT), *cli_args("fit", configs, tiny_model, tmp_path)]
    missing = _run([str(SCRIPT), *cli_args("fit", configs, tmp_path / "nope")])
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr and "Namespace(" not in missing.stderr
    (line,) = [x for x in missing.stderr.splitlines() if x.startswith("dm-lightning: error:")]
    assert str(tmp_path / "nope") in line and "not found" in line

    # A stage-1 checkpoint given to stage 2: refused before anything is built, with the way.
    ckpt = short_fit[0] / "stage1" / "version_0" / "checkpoints" / "last.ckpt"
    wrong = _run([*stage2, "--ckpt_path", str(ckpt)])
    assert wrong.returncode == 2
    assert "Traceback" not in wrong.stderr
    assert f"{ckpt} is a Stage1 checkpoint, but this run is Stage2" in wrong.stderr
    assert "--model.init_args.model_path <stage-1 run>/export" in wrong.stderr


def _fit_config(save_dir: Path, ckpt_path: str, version: int | str | None = None):
    from jsonargparse import Namespace

    logger = Namespace(init_args=Namespace(save_dir=str(save_dir), name="stage1", version=version))
    return Namespace(trainer=Namespace(logger=logger, default_root_dir=None), ckpt_path=ckpt_path)


def test_ckpt_path_last_under_slurm_takes_the_newer_requeue_checkpoint(tmp_path, monkeypatch):
    """A job resubmitted with --ckpt_path last (RESUME=1) after a requeue must pick the
    hpc_ckpt SIGUSR1 wrote at the time limit when it is newer than the periodic last.ckpt,
    and keep that run folder as default_root_dir so its own requeue checkpoints land there."""
    from dm_lightning.training.run_folder import pin_run_folder

    run = tmp_path / "stage1" / "slurm-77"
    (run / "checkpoints").mkdir(parents=True)
    last, hpc = run / "checkpoints" / "last.ckpt", run / "hpc_ckpt_1.ckpt"
    for i, path in enumerate((last, hpc)):
        path.write_bytes(b"x")
        os.utime(path, (1000 + i, 1000 + i))
    monkeypatch.setenv("SLURM_JOB_ID", "99")  # a new job resuming the old run
    config = _fit_config(tmp_path, "last")
    pin_run_folder(config)
    assert config.ckpt_path == str(hpc)
    assert config.trainer.logger.init_args.version == "slurm-77"
    assert config.trainer.default_root_dir == str(run)
    # the periodic checkpoint is newer (no requeue since): it wins
    os.utime(last, (2000, 2000))
    config = _fit_config(tmp_path, "last")
    pin_run_folder(config)
    assert config.ckpt_path == str(last)
    # outside SLURM the default_root_dir is left alone
    monkeypatch.delenv("SLURM_JOB_ID")
    config = _fit_config(tmp_path, "last")
    pin_run_folder(config)
    assert config.trainer.default_root_dir is None


def test_ckpt_path_last_resumes_the_run_the_config_names(tmp_path):
    """--ckpt_path last with the logger's version set takes that run's last.ckpt even when
    another run's was written later, and says so when that run has none."""
    from dm_lightning.errors import MissingPathError
    from dm_lightning.training.run_folder import pin_run_folder

    lasts = {}
    for i, name in enumerate(("version_0", "version_1", "ablation-a")):
        (tmp_path / "stage1" / name / "checkpoints").mkdir(parents=True)
        lasts[name] = tmp_path / "stage1" / name / "checkpoints" / "last.ckpt"
        lasts[name].write_bytes(b"x")
        os.utime(lasts[name], (1000 - i, 1000 - i))  # version_0 written last
    # No version named: the newest run's.
    config = _fit_config(tmp_path, "last")
    pin_run_folder(config)
    assert (config.ckpt_path, config.trainer.logger.init_args.version) == (
        str(lasts["version_0"]),
        "version_0",
    )
    # A version named, as an integer (TensorBoard's version_<n>) or a folder name.
    for version, name in ((1, "version_1"), ("ablation-a", "ablation-a")):
        config = _fit_config(tmp_path, "last", version)
        pin_run_folder(config)
        assert (config.ckpt_path, config.trainer.logger.init_args.version) == (
            str(lasts[name]),
            name,
        )
    run = tmp_path / "stage1" / "version_2"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(MissingPathError) as err:
        pin_run_folder(_fit_config(tmp_path, "last", 2))
    assert str(err.value) == (
        f"--ckpt_path last: run {run} has no checkpoints/last.ckpt or hpc_ckpt_*.ckpt; start "
        "without --ckpt_path, or give a checkpoint file"
    )
