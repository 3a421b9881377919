"""The non-finite guard: a bad step moves nothing (weights, Adam moments, Adam's step count),
is counted, and too many in a row save a checkpoint and stop the run with the loss terms."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from helpers import cli_args

from dm_lightning import Stage2, load_depthmaster
from dm_lightning.data.datamodule import DepthDataModule
from dm_lightning.data.train_source import TrainSource
from dm_lightning.errors import TrainingStopped
from dm_lightning.training.checkpoints import CHECKPOINT_RECORD, load_checkpoint_safely


class PoisonedStage2(Stage2):
    """Stage 2 whose target is NaN at the optimizer steps in ``poisoned`` (so the pixel loss,
    the loss and every gradient of that step are NaN)."""

    poisoned: set[int] = set()

    def normalized_target(self, batch):
        target = super().normalized_target(batch)
        if self.trainer.global_step in self.poisoned:
            target = target * float("nan")
        return target


class Snapshots(L.Callback):
    """Weights and Adam state after every optimizer step."""

    def __init__(self) -> None:
        self.after: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        optimizer = trainer.optimizers[0]
        self.after.append(
            {
                "weights": {n: p.detach().clone() for n, p in pl_module.named_parameters()
                            if p.requires_grad},
                "adam": copy.deepcopy(optimizer.state_dict()["state"]),
                "nonfinite": pl_module.nonfinite_steps,
            }
        )  # fmt: skip


def _fit(model, shards, root, steps, callbacks=()):
    source = TrainSource("indoor", str(shards / "indoor" / "train-*.tar"), batch_size=2)
    data = DepthDataModule(train=[source], batches_per_epoch=8, num_workers=0, shuffle_buffer=2)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=root, callbacks=list(callbacks),
        enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=data)
    return trainer


def test_nonfinite_step_moves_nothing_and_is_counted(tiny_model, shards, tmp_path):
    model = PoisonedStage2(str(tiny_model), fourier=False, lr=1e-3, warmup_steps=1)
    model.poisoned = {1}
    snaps = Snapshots()
    trainer = _fit(model, shards, tmp_path, steps=3, callbacks=[snaps])
    assert trainer.global_step == 3
    first, skipped, third = snaps.after
    # The poisoned step changed no weight and no Adam moment, and Adam did not count it.
    for name, value in first["weights"].items():
        assert torch.equal(value, skipped["weights"][name]), name
    for index, state in first["adam"].items():
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], skipped["adam"][index][key]), (index, key)
    assert float(first["adam"][0]["step"]) == 1.0
    # The next step trains again, and the counter kept the one bad step.
    assert any(not torch.equal(v, third["weights"][n]) for n, v in skipped["weights"].items())
    assert float(third["adam"][0]["step"]) == 2.0
    assert [s["nonfinite"] for s in snaps.after] == [0, 1, 1]
    assert model.nonfinite_consecutive == 0
    assert float(trainer.callback_metrics["train/nonfinite_steps"]) == 1.0


def test_consecutive_nonfinite_steps_save_and_stop(tiny_model, shards, tmp_path):
    model = PoisonedStage2(str(tiny_model), fourier=False, max_nonfinite_steps=3)
    model.poisoned = set(range(100))
    with pytest.raises(TrainingStopped) as info:
        _fit(model, shards, tmp_path, steps=10)
    message = str(info.value)
    assert "3 consecutive optimizer steps" in message
    assert "the last at step 3" in message
    assert "pixel_mse=nan" in message and "loss=nan" in message and "gradient=" in message
    path = tmp_path / "checkpoints" / "last.ckpt"
    assert str(path) in message
    checkpoint = load_checkpoint_safely(path)
    assert checkpoint["global_step"] == 3
    assert checkpoint[CHECKPOINT_RECORD] == {
        "stage": "Stage2", "nonfinite_steps": 3, "nonfinite_consecutive": 3,
    }  # fmt: skip
    # The total comes back with the checkpoint; the run in a row starts anew on resume.
    fresh = PoisonedStage2(str(tiny_model), fourier=False)
    fresh.on_load_checkpoint(checkpoint)
    assert (fresh.nonfinite_steps, fresh.nonfinite_consecutive) == (3, 0)


def test_max_nonfinite_steps_must_be_positive(tiny_model):
    with pytest.raises(ValueError, match="max_nonfinite_steps must be >= 1 or null, got 0"):
        Stage2(str(tiny_model), max_nonfinite_steps=0)


def test_export_folder_is_replaced_atomically(tmp_path):
    from dm_lightning.training.callbacks import replace_folder

    target = tmp_path / "export"

    def write(folder, text):
        folder.mkdir()
        (folder / "a.txt").write_text(text)

    replace_folder(target, lambda tmp: write(tmp, "first"))
    assert (target / "a.txt").read_text() == "first"

    def crash(tmp):
        write(tmp, "half")
        raise KeyboardInterrupt  # a kill in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        replace_folder(target, crash)
    # The complete previous export is still there, and nothing half-written beside it.
    assert (target / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]
    replace_folder(target, lambda tmp: write(tmp, "second"))
    assert (target / "a.txt").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_unwritable_export_folder_fails_at_setup(tiny_model, shards, tmp_path):
    from dm_lightning import ExportDepthMaster
    from dm_lightning.errors import ConfigError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    model = Stage2(str(tiny_model), fourier=False)
    source = TrainSource("indoor", str(shards / "indoor" / "train-*.tar"), batch_size=2)
    data = DepthDataModule(train=[source], batches_per_epoch=2, num_workers=0, shuffle_buffer=2)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, callbacks=[ExportDepthMaster(str(blocker / "export"))],
    )  # fmt: skip
    with pytest.raises(ConfigError, match=f"export folder's parent {blocker} cannot be created"):
        trainer.fit(model, datamodule=data)
    assert trainer.global_step == 0


def test_training_resolution_must_fit_the_vae_factor(tiny_model, tmp_path):
    import numpy as np

    from dm_lightning.data.schema import encode_sample
    from dm_lightning.data.shards import write_shard
    from dm_lightning.errors import ConfigError

    rng = np.random.default_rng(0)
    samples = [
        encode_sample(
            f"odd{i}",
            rng.integers(0, 255, (60, 68, 3), dtype=np.uint8),
            rng.uniform(1.0, 5.0, (60, 68)),
            source="odd",
            depth_scale=0.001,
            min_depth=0.1,
            max_depth=10.0,
        )  # fmt: skip
        for i in range(2)
    ]
    write_shard(tmp_path / "odd-000000.tar", samples)
    source = TrainSource("odd", str(tmp_path / "odd-*.tar"), batch_size=2)
    data = DepthDataModule(train=[source], batches_per_epoch=2, num_workers=0, shuffle_buffer=1)
    model = Stage2(str(tiny_model), fourier=False)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"data.train\[odd\]: samples are 60x68 pixels, not a "):
        trainer.fit(model, datamodule=data)
    assert trainer.global_step == 0


def test_worker_errors_print_their_own_message_only():
    from torch._utils import ExceptionWrapper

    from dm_lightning.cli_errors import user_error, user_message
    from dm_lightning.errors import DataError

    try:
        raise DataError("source 'x': shard a.tar does not exist any more")
    except DataError:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as info:
        wrapper.reraise()
    assert "Original Traceback" in str(info.value)
    found = user_error(info.value)
    assert user_message(found) == "source 'x': shard a.tar does not exist any more"


def test_stream_loader_keeps_its_data_position(shards):
    source = TrainSource("indoor", str(shards / "indoor" / "train-*.tar"), batch_size=2)
    data = DepthDataModule(train=[source], batches_per_epoch=2, num_workers=0, shuffle_buffer=2)
    loader = data.train_dataloader()
    for _ in range(3):  # three epochs
        keys = [batch["key"] for batch in loader]
    assert loader.state_dict() == {"epoch": 2, "seed": 0}
    fresh = data.train_dataloader()
    fresh.load_state_dict(loader.state_dict())
    assert [batch["key"] for batch in fresh] == keys  # epoch 2 again, same draws


def test_eval_split_without_a_readable_sample_fails(tiny_model, shards, tmp_path):
    """Five samples whose PNGs are corrupt: counted, then an error, never abs_rel 0.0 over 0
    images."""
    import numpy as np

    from dm_lightning import DepthMasterTask
    from dm_lightning.data.schema import encode_sample
    from dm_lightning.data.shards import write_shard
    from dm_lightning.errors import DataError

    rng = np.random.default_rng(0)
    samples = []
    for i in range(5):
        sample = encode_sample(
            f"bad{i}", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
            rng.uniform(1.0, 5.0, (16, 16)), source="broken", depth_scale=0.001,
            min_depth=0.1, max_depth=10.0,
        )  # fmt: skip
        sample["rgb.png"] = b"\x89PNG\r\n\x1a\n not an image"
        samples.append(sample)
    path = tmp_path / "test-000000.tar"
    write_shard(path, samples)
    data = DepthDataModule(
        test={"broken": str(path), "good": str(shards / "indoor" / "test-*.tar")}, num_workers=0
    )
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(DataError) as info, pytest.warns(UserWarning, match="bad0"):
        trainer.test(DepthMasterTask(str(tiny_model)), datamodule=data)
    assert str(info.value).startswith(
        "test split 'broken': no image was evaluated (5 samples could not be read, 0 had no "
        "valid depth pixel)"
    )


CLI_ERRORS = {
    "target": (
        ["--model.init_args.target", "sqrt_disp"],
        "unknown depth target 'sqrt_disp'; expected one of depth, disparity",
    ),
    "eval_alignment": (
        ["--model.init_args.eval_alignment", "dept"],
        "model.init_args.eval_alignment: unknown space 'dept'",
    ),
    "shards": (
        ["--data.init_args.test", "{nope: /nonexistent/test-*.tar}"],
        "no shard files match '/nonexistent/test-*.tar'",
    ),
}


@pytest.mark.parametrize("case", sorted(CLI_ERRORS))
def test_startup_errors_are_one_short_line(case, tiny_model, data_config, tmp_path, capsys):
    from dm_lightning.cli import main

    extra, expected = CLI_ERRORS[case]
    configs = ["configs/tiny/eval.yaml", data_config]
    args = cli_args("test", configs, tiny_model, tmp_path, extra=extra)
    assert main(args) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("dm-lightning: error:")]
    assert expected in line, err
    assert "Traceback" not in err and "Namespace(" not in err and "Union subtypes" not in err


def test_export_and_writer_know_a_depthmaster_task_from_another_module(tiny_model, tmp_path):
    """ExportDepthMaster names what it needs; the prediction writer reads another
    LightningModule's maps as the recipe's target (1 = near) and a task's by its model."""
    from dm_lightning.training.callbacks import ExportDepthMaster, exported_task, written_target

    with pytest.raises(TypeError) as err:
        exported_task(L.LightningModule())
    assert str(err.value) == (
        "ExportDepthMaster exports a DepthMasterTask's network (Stage1, Stage2, a baseline); "
        "got LightningModule"
    )
    assert written_target(L.LightningModule()) is None
    # The export says so when fit sets up, before any step (the trainer is not even read).
    with pytest.raises(TypeError, match="exports a DepthMasterTask's network"):
        ExportDepthMaster().setup(None, L.LightningModule(), "fit")  # type: ignore[arg-type]
    depth = load_depthmaster(tiny_model).save_pretrained(tmp_path / "depth", {"target": "depth"})
    task = Stage2(str(depth), fourier=False)
    assert exported_task(task) is task and written_target(task) == "depth"
    # A target given against the model's record: the task reads the output as told (with a
    # warning), the writer's colours follow what the model was trained on.
    told = Stage2(str(depth), fourier=False, target="disparity")
    assert (told.target.name, written_target(told)) == ("disparity", "depth")
