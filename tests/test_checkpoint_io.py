"""Checkpoints stream to disk: every dm-lightning command saves through StreamingCheckpointIO,
never through Lightning's in-memory buffer (which needs twice the file's size in RAM)."""

from __future__ import annotations

import lightning.fabric.utilities.cloud_io as cloud_io
import torch
from conftest import CONFIGS
from helpers import cli_args

from dm_lightning.cli import run_cli
from dm_lightning.training.checkpoint_io import StreamingCheckpointIO
from dm_lightning.training.checkpoints import load_checkpoint_safely


def test_fit_checkpoints_stream_to_disk(tiny_model, data_config, tmp_path, monkeypatch):
    def buffered(*args, **kwargs):
        raise AssertionError("a checkpoint went through Lightning's in-memory buffer")

    monkeypatch.setattr(cloud_io, "_atomic_save", buffered)
    monkeypatch.setattr("lightning.fabric.plugins.io.torch_io._atomic_save", buffered)
    args = cli_args(
        "fit", [CONFIGS / "tiny" / "stage2.yaml", data_config], tiny_model, tmp_path,
        trainer__max_steps=2, trainer__limit_val_batches=0,
    )  # fmt: skip
    cli = run_cli(args)
    assert isinstance(cli.trainer.strategy.checkpoint_io, StreamingCheckpointIO)
    path = tmp_path / "ckpt" / "step.ckpt"
    cli.trainer.save_checkpoint(path)
    state = load_checkpoint_safely(path)
    assert state["global_step"] == 2
    live = cli.model.state_dict()
    assert all(torch.equal(v, live[k]) for k, v in state["state_dict"].items())
    assert [p.name for p in path.parent.iterdir()] == ["step.ckpt"]  # no temporary left


def test_a_failed_save_leaves_the_previous_file(tmp_path):
    io = StreamingCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    try:
        io.save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    except RuntimeError:
        pass
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
