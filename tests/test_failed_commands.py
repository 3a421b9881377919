"""A failed command never damages a run: a bad ``--ckpt_path``, a failed restore, a missing
shard or model folder, a start that fails in setup leave every file of an existing run
byte-identical and no new ``version_N`` folder; ``last.ckpt`` of a finished fit holds its
final step; the final export finishes before a signal takes effect. And the user's path
through the CLI: fit -> a bad resume -> a good resume.

One stage-1 run (4 steps, ``last.ckpt`` every 3, validation after step 3, so a weights-only
``best-step=3.ckpt``) is trained once per module; each test works on a copy of it."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS, REPO
from helpers import cli_args

from dm_lightning.cli import main
from dm_lightning.training.checkpoints import load_checkpoint_safely
from dm_lightning.training.deferred_signals import deferred_signals

SCRIPT = Path(sys.executable).parent / "dm-lightning"
FINAL_STEP = 4  # periodic last.ckpt every 3 steps: the end of fit must save step 4 itself


@pytest.fixture(scope="module")
def fit_config(tmp_path_factory) -> Path:
    """configs/tiny/stage1.yaml: 4 steps, periodic last.ckpt every 3, no progress bar."""
    cfg = yaml.safe_load((CONFIGS / "tiny" / "stage1.yaml").read_text())
    cfg["trainer"].update(max_steps=FINAL_STEP, enable_progress_bar=False)
    for callback in cfg["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ModelCheckpoint"):
            if callback["init_args"].get("save_last"):
                callback["init_args"]["every_n_train_steps"] = 3
    path = tmp_path_factory.mktemp("failed_commands") / "stage1.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def trained(fit_config, data_config, tiny_model, tmp_path_factory) -> Path:
    """The save_dir of one finished 4-step run, ``<root>/stage1/version_0``."""
    root = tmp_path_factory.mktemp("trained")
    assert main(cli_args("fit", [fit_config, data_config], tiny_model, root)) == 0
    return root


@pytest.fixture
def root(trained, tmp_path) -> Path:
    """A private copy of the trained save_dir."""
    copy = tmp_path / "runs"
    shutil.copytree(trained, copy)
    return copy


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    (line,) = [x for x in stderr.splitlines() if x.startswith("dm-lightning: error:")]
    return line


def _fit(fit_config, data_config, model, root, *extra: str) -> int:
    return main(cli_args("fit", [fit_config, data_config], model, root, extra=extra))


def test_last_ckpt_of_a_finished_fit_holds_the_final_step(trained):
    checkpoints = trained / "stage1" / "version_0" / "checkpoints"
    last = load_checkpoint_safely(checkpoints / "last.ckpt")
    assert last["global_step"] == FINAL_STEP
    assert float(last["optimizer_states"][0]["state"][0]["step"]) == FINAL_STEP
    assert last["lr_schedulers"][0]["last_epoch"] == FINAL_STEP
    assert (checkpoints / "best-step=3.ckpt").is_file()
    assert not list(checkpoints.glob(".*tmp*"))  # no temporary file left


@pytest.mark.parametrize("stop", ["max_epochs", "early_stop"])
def test_last_ckpt_holds_the_final_step_however_fit_ends(
    stop, fit_config, data_config, tiny_model, tmp_path, capsys
):
    """An epoch is 3 batches and last.ckpt is saved every 2 steps, so the periodic save falls
    at step 2 and fit ends at step 3: after max_epochs 1, and after an early stop at the
    first validation (end of epoch 1, max_epochs 3). The summary says how fit ended, with the
    last validation and the best checkpoint it ranked."""
    cfg = yaml.safe_load(fit_config.read_text())
    cfg["trainer"].update(max_steps=-1, max_epochs=1 if stop == "max_epochs" else 3)
    for callback in cfg["trainer"]["callbacks"]:
        if callback.get("init_args", {}).get("save_last"):
            callback["init_args"]["every_n_train_steps"] = 2
    if stop == "early_stop":  # any abs_rel below 1e9 stops
        early = {"monitor": "val/abs_rel", "stopping_threshold": 1e9, "patience": 10}
        stopper = "lightning.pytorch.callbacks.EarlyStopping"
        cfg["trainer"]["callbacks"].append({"class_path": stopper, "init_args": early})
    config = tmp_path / f"{stop}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert _fit(config, data_config, tiny_model, tmp_path / "runs") == 0
    checkpoints = tmp_path / "runs" / "stage1" / "version_0" / "checkpoints"
    last = load_checkpoint_safely(checkpoints / "last.ckpt")
    assert last["global_step"] == 3
    assert float(last["optimizer_states"][0]["state"][0]["step"]) == 3
    summary = capsys.readouterr().out
    ended = " (stopped early)" if stop == "early_stop" else ""
    assert f"fit finished after 3 optimizer steps{ended}\n" in summary
    (validation,) = [x for x in summary.splitlines() if x.startswith("  last validation: ")]
    number = r"\d+\.\d{4}"
    splits = [
        rf"{split} abs_rel {number} delta1 {number}"
        for split in ("synthetic_indoor", "synthetic_outdoor")
    ]
    assert re.fullmatch(rf"  last validation: {'; '.join(splits)}", validation), validation
    best = checkpoints / "best-step=3.ckpt"  # ranked at the one validation, after step 3
    assert best.is_file() and f"  best checkpoint: {best} (val/abs_rel " in summary


def _weights_only(run: Path) -> Path:
    return run / "checkpoints" / "best-step=3.ckpt"


def _truncated(run: Path) -> Path:
    data = (run / "checkpoints" / "last.ckpt").read_bytes()
    path = run / "checkpoints" / "copy.ckpt"
    path.write_bytes(data[: len(data) // 2])
    return path


def _text(run: Path) -> Path:
    path = run / "notes.ckpt"
    path.write_text("global_step: 4\n")
    return path


def _random(run: Path) -> Path:
    path = run / "random.ckpt"
    path.write_bytes(bytes(range(256)) * 16)
    return path


@pytest.mark.parametrize(
    "make, words",
    [
        (_weights_only, ["holds weights only", "resuming needs the run's last.ckpt",
                         "--model.init_args.model_path {path} without --ckpt_path"]),
        (_truncated, ["is truncated or damaged"]),
        (_text, ["is not a PyTorch checkpoint"]),
        (_random, ["is not a PyTorch checkpoint"]),
    ],
    ids=["weights-only", "truncated", "text", "random"],
)  # fmt: skip
def test_a_ckpt_path_that_cannot_resume_is_one_line_and_changes_nothing(
    make, words, root, fit_config, data_config, tiny_model, capsys, monkeypatch
):
    path = make(root / "stage1" / "version_0")
    before = _hashes(root)
    loads = _spy_on_torch_load(monkeypatch)
    code = _fit(fit_config, data_config, tiny_model, root, "--ckpt_path", str(path))
    line = _error_line(capsys.readouterr().err)
    assert code == 2
    assert str(path) in line
    for text in words:
        assert text.format(path=path) in line
    assert "pickled code" not in line and "weights_only=False" not in line
    assert _hashes(root) == before  # every file as it was, no new file or version folder
    # the file was only ever mapped, never read whole
    assert all(mmap for file, mmap in loads if Path(file) == path)


def _spy_on_torch_load(monkeypatch) -> list[tuple[str, bool]]:
    """(file, mmap) of every torch.load from now on."""
    loads: list[tuple[str, bool]] = []
    load = torch.load

    def spy(f, *args, **kwargs):
        loads.append((str(getattr(f, "name", f)), bool(kwargs.get("mmap"))))  # path or file
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return loads


def test_another_stage_and_bad_inputs_change_nothing(
    root, fit_config, data_config, tiny_model, tmp_path, capsys
):
    before = _hashes(root)
    last = root / "stage1" / "version_0" / "checkpoints" / "last.ckpt"
    # a stage-1 checkpoint given to stage 2
    stage2 = [CONFIGS / "tiny" / "stage2.yaml", data_config]
    code = main(cli_args("fit", stage2, tiny_model, root, extra=["--ckpt_path", str(last)]))
    assert code == 2
    assert f"{last} is a Stage1 checkpoint" in _error_line(capsys.readouterr().err)
    # a resume whose data lost a shard
    data = yaml.safe_load(data_config.read_text())
    data["data"]["init_args"]["train"][0]["shards"] = str(tmp_path / "gone-{000000..000001}.tar")
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump(data))
    assert _fit(fit_config, missing, tiny_model, root, "--ckpt_path", "last") == 2
    assert "no shard files match" in _error_line(capsys.readouterr().err)
    # a new run beside it from a model folder that is not there
    assert _fit(fit_config, data_config, tmp_path / "nope", root) == 2
    assert f"{tmp_path / 'nope'} not found" in _error_line(capsys.readouterr().err)
    assert _hashes(root) == before
    assert sorted(p.name for p in root.iterdir()) == ["stage1"]  # no stage2/ folder


def test_a_failed_restore_leaves_last_ckpt_alone(
    root, fit_config, data_config, tiny_model, monkeypatch
):
    """Past the up-front check (bypassed here), Lightning fails the restore of a weights-only
    checkpoint after loading its weights and loop position: the crash save must not write
    that half-restored trainer over last.ckpt, since this process trained no step."""
    monkeypatch.setattr("dm_lightning.cli.check_checkpoint_stage", lambda *args: None)
    run = root / "stage1" / "version_0"
    before = _hashes(root)
    with pytest.raises(KeyError, match="contains only the model"):
        _fit(fit_config, data_config, tiny_model, root, "--ckpt_path", str(_weights_only(run)))
    assert _hashes(root) == before  # also no TensorBoard file of the failed start


def test_a_failed_start_leaves_no_version_folder(
    root, fit_config, data_config, tiny_model, tmp_path, capsys
):
    """A start that fails in setup, after the logger made ``version_1``, removes it; in a
    save_dir of its own, the experiment folder too. The resumed run's folder stays."""
    (tmp_path / "a-file").write_text("")
    cfg = yaml.safe_load(fit_config.read_text())
    for callback in cfg["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ExportDepthMaster"):
            callback["init_args"] = {"dirpath": str(tmp_path / "a-file" / "export")}
    bad = tmp_path / "bad-export.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    before = _hashes(root)
    assert _fit(bad, data_config, tiny_model, root) == 2
    assert "cannot be created" in _error_line(capsys.readouterr().err)
    assert sorted(p.name for p in (root / "stage1").iterdir()) == ["version_0"]
    assert _hashes(root) == before
    fresh = tmp_path / "fresh"
    assert _fit(bad, data_config, tiny_model, fresh) == 2
    assert not (fresh / "stage1").exists()


def test_fit_then_a_bad_resume_then_a_good_resume(
    root, fit_config, data_config, tiny_model, capsys, monkeypatch
):
    """The user's path: a fit stopped at max_steps, a resume from the weights-only best
    checkpoint through the installed script (exit 2, one line, nothing changed), then
    ``--ckpt_path last`` to a larger max_steps, which continues the same run. A SIGTERM
    arriving in the middle of its export takes effect only once the export is complete."""
    run = root / "stage1" / "version_0"
    best = _weights_only(run)
    before = _hashes(root)
    command = [str(SCRIPT), *cli_args("fit", [fit_config, data_config], tiny_model, root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    bad = subprocess.run(
        [*command, "--ckpt_path", str(best)],
        capture_output=True, text=True, timeout=240, env=env, cwd=REPO,
    )  # fmt: skip
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert "holds weights only" in _error_line(bad.stderr)
    assert _hashes(root) == before

    # The good resume; its export gets a SIGTERM half-way (weights written, card and rename not).
    from dm_lightning.models.depthmaster import DepthMaster

    seen: list[list[str]] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: seen.append(_export_leftovers(run)))
    save_pretrained = DepthMaster.save_pretrained

    def interrupted(self, path, metadata=None):
        # once the weights are in the temporary folder, before the model card and the rename
        written = save_pretrained(self, path, metadata)
        signal.raise_signal(signal.SIGTERM)
        return written

    monkeypatch.setattr(DepthMaster, "save_pretrained", interrupted)
    loads = _spy_on_torch_load(monkeypatch)
    try:
        code = _fit(fit_config, data_config, tiny_model, root, "--ckpt_path", "last",
                    "--trainer.max_steps", "6")  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == 0
    # last.ckpt read whole once, by the restore; the check before it only mapped it
    last_loads = [mmap for file, mmap in loads if file.endswith("last.ckpt")]
    assert last_loads[0] and last_loads.count(False) == 1
    assert seen == [[]]  # delivered once, after the export: no temporary folder by then
    assert "SIGTERM received during the export to" in capsys.readouterr().err
    assert (run / "export" / "unet" / "config.json").is_file()
    assert _export_leftovers(run) == []
    last = load_checkpoint_safely(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 6
    assert float(last["optimizer_states"][0]["state"][0]["step"]) == 6  # Adam continued
    assert sorted(p.name for p in (root / "stage1").iterdir()) == ["version_0"]
    assert len(list(run.glob("events.out.tfevents.*"))) == 2
    # config.yaml is the resumed command's, written once it trained a step
    assert yaml.safe_load((run / "config.yaml").read_text())["ckpt_path"].endswith("last.ckpt")


def _export_leftovers(run: Path) -> list[str]:
    """The temporary siblings of ``export/`` (atomic.temporary_sibling: ``.export.<pid>-<hex>.tmp``
    while it is written, ``.export.<pid>-<hex>.old`` while it replaces the previous one)."""
    return sorted(p.name for p in run.iterdir() if p.name.startswith(".export."))


def test_deferred_signals_hold_a_signal_until_the_block_is_done(capsys):
    calls: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        with deferred_signals("a test write"):
            # raise_signal, not os.kill(getpid()): it is delivered to this thread before the
            # call returns; a process-directed kill may be taken by another thread and reach
            # the Python handler a little later.
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
            torch.zeros(1000).sum()  # bytecode on: a pending handler would run here
            assert calls == []
        assert calls == [signal.SIGTERM]  # once, to the previous handler
        assert "SIGTERM received during a test write" in capsys.readouterr().err
        assert signal.getsignal(signal.SIGTERM) is not None
        with deferred_signals("nothing"):
            pass
        assert calls == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ctrl_c_during_a_deferred_write_interrupts_after_it():
    # Python's own Ctrl-C handler, whatever this process inherited: a shell starts background
    # jobs (`pytest ... &`) with SIGINT ignored, and an ignored SIGINT interrupts nothing.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    done = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with deferred_signals("a test write"):
                signal.raise_signal(signal.SIGINT)
                done.append(True)
        assert done == [True]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_unreadable_checkpoints_are_named_in_one_line(tiny_model, tmp_path):
    """What --ckpt_path and a .ckpt model_path are read with."""
    from dm_lightning.errors import ConfigError
    from dm_lightning.models.loading import load_depthmaster_checkpoint
    from dm_lightning.training.checkpoints import load_checkpoint_safely

    (tmp_path / "empty.ckpt").write_bytes(b"")
    (tmp_path / "text.ckpt").write_text("not a checkpoint\n")
    (tmp_path / "random.ckpt").write_bytes(bytes(range(7, 256)) * 8)
    (tmp_path / "pickle.ckpt").write_bytes(b"\x80\x02" + bytes(range(256)) * 8)
    torch.save({"step": 1}, tmp_path / "full.ckpt")
    data = (tmp_path / "full.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    for name, words in [
        ("empty", "is not a PyTorch checkpoint: it is empty"),
        ("text", "is not a PyTorch checkpoint"),
        ("random", "is not a PyTorch checkpoint"),
        ("pickle", "is not a readable PyTorch checkpoint"),
        ("cut", "is truncated or damaged"),
    ]:
        for mmap in (True, False):
            with pytest.raises(ConfigError) as raised:
                load_checkpoint_safely(tmp_path / f"{name}.ckpt", mmap=mmap)
            text = str(raised.value)
            assert text.startswith(f"{tmp_path / name}.ckpt") and words in text, text
            assert "\n" not in text
    # a random file given as model_path: the same one line, no torch mmap message
    with pytest.raises(ConfigError, match=r"random.ckpt is not a PyTorch checkpoint"):
        load_depthmaster_checkpoint(tmp_path / "random.ckpt")
    # a legacy (pre-zip) checkpoint cannot be mapped: it is read whole instead
    torch.save({"step": 2}, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    assert load_checkpoint_safely(tmp_path / "legacy.ckpt", mmap=True) == {"step": 2}
