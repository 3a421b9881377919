"""EMAWeights: the average of the trained weights, checked against the hand-computed recurrence
through a fit, its export, its checkpoints and a resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import CONFIGS
from helpers import cli_args
from safetensors.torch import load_file

from dm_lightning.cli import run_cli
from dm_lightning.errors import ConfigError
from dm_lightning.models.stage_checkpoint import network_weights
from dm_lightning.training.checkpoints import load_checkpoint_safely
from dm_lightning.training.ema import EMAWeights

PARAM = "net.unet.conv_in.weight"  # a trained weight to follow
SNAPSHOTS: list[torch.Tensor] = []  # the weight at fit start and after every optimizer step


class Snapshots(L.Callback):
    def on_fit_start(self, trainer, pl_module):
        SNAPSHOTS.append(pl_module.get_parameter(PARAM).detach().clone())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        SNAPSHOTS.append(pl_module.get_parameter(PARAM).detach().clone())


def _fit(tiny_model, data_config, tmp_path, steps: int, *extra: str):
    args = cli_args(
        "fit", [CONFIGS / "tiny" / "stage2.yaml", data_config], tiny_model, tmp_path,
        trainer__max_steps=steps, data__init_args__batches_per_epoch=3,
        extra=[
            "--trainer.callbacks+=dm_lightning.EMAWeights",
            "--trainer.callbacks.decay=0.5",
            "--trainer.callbacks+=test_ema.Snapshots",
            *extra,
        ],
    )  # fmt: skip
    return run_cli(args)


def _recurrence(start: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    ema = start.clone()
    for w in weights:
        ema = 0.5 * ema + 0.5 * w
    return ema


def test_ema_follows_the_recurrence_through_export_checkpoints_and_resume(
    tiny_model, data_config, tmp_path
):
    SNAPSHOTS.clear()
    cli = _fit(tiny_model, data_config, tmp_path, 3)
    ema_cb = next(cb for cb in cli.trainer.callbacks if isinstance(cb, EMAWeights))
    assert len(SNAPSHOTS) == 4  # start + 3 optimizer steps (accumulation 1)
    expected = _recurrence(SNAPSHOTS[0], SNAPSHOTS[1:])
    average = dict(zip(ema_cb.names, ema_cb.average))[PARAM]
    torch.testing.assert_close(average, expected, rtol=1e-6, atol=1e-8)
    live = cli.model.get_parameter(PARAM).detach()
    assert torch.equal(live, SNAPSHOTS[-1])  # training goes on with the live weights
    assert not torch.allclose(live, expected)

    run = next((tmp_path / "stage2").glob("version_*"))
    # the export holds the average
    exported = load_file(str(run / "export" / "unet" / "diffusion_pytorch_model.safetensors"))
    torch.testing.assert_close(exported["conv_in.weight"], expected, rtol=1e-6, atol=1e-8)
    # weights-only best (validated at step 3, with the average): the average
    (best,) = run.glob("checkpoints/best-*.ckpt")
    best_state = load_checkpoint_safely(best)["state_dict"]
    torch.testing.assert_close(best_state[PARAM], expected, rtol=1e-6, atol=1e-8)
    # the full last.ckpt: live weights as the model, the average in the callback's state
    last = load_checkpoint_safely(run / "checkpoints" / "last.ckpt")
    assert torch.equal(last["state_dict"][PARAM], SNAPSHOTS[-1])
    (state,) = [v for k, v in last["callbacks"].items() if k.startswith("EMAWeights")]
    assert state["last_step"] == 3
    # what the loaders read of it (one layout, models/stage_checkpoint.py): the average
    network = network_weights(last)
    torch.testing.assert_close(network["unet.conv_in.weight"], expected, rtol=1e-6, atol=1e-8)

    # resume to step 5: the average continues from the saved one
    first = expected
    SNAPSHOTS.clear()
    cli = _fit(tiny_model, data_config, tmp_path, 5, "--ckpt_path", "last")
    assert cli.trainer.global_step == 5 and len(SNAPSHOTS) == 3
    ema_cb = next(cb for cb in cli.trainer.callbacks if isinstance(cb, EMAWeights))
    resumed = dict(zip(ema_cb.names, ema_cb.average))[PARAM]
    torch.testing.assert_close(resumed, _recurrence(first, SNAPSHOTS[1:]), rtol=1e-6, atol=1e-8)


def test_ema_arguments_are_checked():
    with pytest.raises(ConfigError, match=r"decay must be in \[0, 1\), got 1.0"):
        EMAWeights(decay=1.0)
    with pytest.raises(ConfigError, match="start_step must be >= 0"):
        EMAWeights(start_step=-1)
