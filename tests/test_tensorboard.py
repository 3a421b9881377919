"""What a training run shows in TensorBoard: a tiny stage-1 fit through the shipped config
(with its TrainingMonitor and LearningRateMonitor), read back with TensorBoard's own reader."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from helpers import cli_args
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dm_lightning.cli import run_cli
from dm_lightning.errors import ConfigError
from dm_lightning.targets import get_target
from dm_lightning.training.monitor import TrainingMonitor, eval_mode, near_values
from dm_lightning.visualize import colorize_depth, depth_panel

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
STEPS, EVERY, SAMPLES = 6, 2, 2  # 3 batches per epoch: validation after steps 3 and 6


def _monitor_args(config: dict) -> dict:
    callbacks = config["trainer"]["callbacks"]
    return next(c for c in callbacks if c["class_path"] == "dm_lightning.TrainingMonitor")[
        "init_args"
    ]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model, data_config):
    """configs/tiny/stage1.yaml with panels every 2 steps (shipped: 50), 6 steps."""
    tmp = tmp_path_factory.mktemp("tensorboard")
    config = yaml.safe_load((CONFIGS / "tiny" / "stage1.yaml").read_text())
    assert _monitor_args(config) == {"every_n_steps": 50, "num_samples": SAMPLES}
    _monitor_args(config)["every_n_steps"] = EVERY
    stage1 = tmp / "stage1.yaml"
    stage1.write_text(yaml.safe_dump(config))
    args = cli_args(
        "fit",
        [stage1, data_config],
        tiny_model,
        tmp / "runs",
        trainer__max_steps=STEPS,
        trainer__log_every_n_steps=EVERY,
        trainer__limit_val_batches=1,  # 4 images per split: the panel needs the first 2
    )
    cli = run_cli(args)
    events = EventAccumulator(cli.trainer.log_dir, size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return cli, events


def _steps(events: EventAccumulator, kind: str, tag: str) -> list[int]:
    return [e.step for e in (events.Scalars(tag) if kind == "scalars" else events.Images(tag))]


def test_scalars_of_a_run_are_in_the_event_file(run):
    cli, events = run
    tags = set(events.Tags()["scalars"])
    for tag in (
        "train/loss",
        "train/latent_mse",
        "train/fa",
        "lr-Adam",
        "train/grad_norm",
        "train/samples_per_sec",
        "train/skipped_samples",
        "train/nonfinite_steps",
        "val/abs_rel",
        "val/synthetic_indoor/abs_rel",
        "val/synthetic_outdoor/delta1",
    ):
        assert tag in tags, (tag, sorted(tags))
    # Throughput once per logging interval (log_every_n_steps = 2), positive and finite.
    rates = events.Scalars("train/samples_per_sec")
    assert [r.step for r in rates] == [1, 3, 5]  # after optimizer steps 2, 4, 6
    assert all(0 < r.value < 1e5 for r in rates)
    # The schedule's warm-up (20 steps from 0) shows in the learning rate.
    lrs = [s.value for s in events.Scalars("lr-Adam")]
    assert len(lrs) >= 2 and lrs == sorted(lrs) and lrs[-1] < 1e-3
    assert [s.value for s in events.Scalars("train/nonfinite_steps")][-1] == 0.0


def test_panels_at_the_expected_steps_and_sizes(run):
    cli, events = run
    images = set(events.Tags()["images"])
    assert images == {"panels/train", "panels/val/synthetic_indoor", "panels/val/synthetic_outdoor"}
    # Lightning's step numbers: optimizer steps completed before the batch (see
    # monitor.logged_step): after steps 2, 4, 6 -> 1, 3, 5.
    assert _steps(events, "images", "panels/train") == [1, 3, 5]
    # Validation ends each epoch of 3 batches; none at the sanity check (disabled anyway).
    for split in ("synthetic_indoor", "synthetic_outdoor"):
        assert _steps(events, "images", f"panels/val/{split}") == [2, 5]


def test_scalars_and_panels_of_one_step_share_its_number(run):
    """What the task logs (loss, validation metrics), Lightning's LearningRateMonitor and
    TrainingMonitor's panels and throughput agree on the step number (they differed by one)."""
    _, events = run
    train = _steps(events, "scalars", "train/loss")
    assert train == [1, 3, 5]  # log_every_n_steps 2
    assert _steps(events, "scalars", "train/samples_per_sec") == train
    assert _steps(events, "images", "panels/train") == train
    assert set(train) <= set(_steps(events, "scalars", "lr-Adam"))
    val = _steps(events, "scalars", "val/abs_rel")
    assert val == [2, 5]
    for split in ("synthetic_indoor", "synthetic_outdoor"):
        assert _steps(events, "scalars", f"val/{split}/abs_rel") == val
        assert _steps(events, "images", f"panels/val/{split}") == val
    # Two samples as rows, four tiles side by side: indoor 96x128, outdoor 64x208 samples.
    for split, (h, w) in {"synthetic_indoor": (96, 128), "synthetic_outdoor": (64, 208)}.items():
        for image in events.Images(f"panels/val/{split}"):
            assert (image.height, image.width) == (SAMPLES * h, 4 * w), split
    train = events.Images("panels/train")[0]
    assert (train.height, train.width) in {(SAMPLES * 96, 4 * 128), (SAMPLES * 64, 4 * 208)}


def test_tensorboard_inspect_lists_the_panels_and_scalars(run):
    """The terminal check a user runs on a run folder (README): `tensorboard --inspect`."""
    cli, _ = run
    tensorboard = Path(sys.executable).parent / "tensorboard"
    result = subprocess.run(
        [str(tensorboard), "--inspect", "--logdir", cli.trainer.log_dir],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split()
    for tag in ("panels/train", "panels/val/synthetic_outdoor", "train/samples_per_sec", "lr-Adam"):
        assert tag in listed, result.stdout


def test_val_panel_shows_the_fixed_samples_with_black_invalid_pixels(run):
    cli, events = run
    h, w = 64, 208  # outdoor samples: the sky has no depth
    first, last = events.Images("panels/val/synthetic_outdoor")
    panel = np.asarray(Image.open(io.BytesIO(last.encoded_image_string)).convert("RGB"))
    assert panel.shape == (SAMPLES * h, 4 * w, 3)
    # The RGB tiles are the split's first samples, as the evaluation loader gives them.
    batch = next(iter(cli.datamodule.val_dataloader()[1]))
    rgb = batch["rgb"][:SAMPLES].permute(0, 2, 3, 1).numpy()
    assert np.array_equal(panel[:, :w], np.concatenate(list(rgb), axis=0))
    # The same samples and ground truth at every validation (only the prediction changes).
    before = np.asarray(Image.open(io.BytesIO(first.encoded_image_string)).convert("RGB"))
    assert np.array_equal(before[:, : 2 * w], panel[:, : 2 * w])
    # Invalid ground truth is black in the GT and error tiles; valid pixels are coloured.
    valid = batch["valid"][:SAMPLES, 0].numpy().reshape(SAMPLES * h, w)
    assert 0.05 < (~valid).mean() < 0.95
    gt_tile, error_tile = panel[:, w : 2 * w], panel[:, 3 * w :]
    assert (gt_tile[~valid] == 0).all() and (error_tile[~valid] == 0).all()
    assert (gt_tile[valid].max(axis=-1) > 0).mean() > 0.99
    # The GT tile is the training target ((normalize + 1) / 2, the 2%/98% quantiles of the
    # sample) coloured with the fixed depth colormap.
    target = get_target("sqrt_disparity")
    depth, ok = batch["depth"][:1], batch["valid"][:1]
    expected = colorize_depth((target.normalize(depth, ok)[0, 0] + 1) / 2, invalid=~ok[0, 0])
    assert np.abs(gt_tile[:h].astype(int) - expected.astype(int)).max() <= 1


def test_panel_of_a_perfect_prediction_has_no_error():
    target = get_target("sqrt_disparity")
    depth = torch.linspace(1.0, 10.0, 12).view(3, 4)
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[0, 0] = False
    near_gt, near_pred = near_values(target, depth, valid, depth.clone())
    # Depth target: 1 = far in its own normalisation, reversed here so near stays high.
    near_depth, _ = near_values(get_target("depth"), depth, valid, depth)
    assert near_gt[0, 1] > near_gt[2, 3] and near_depth[0, 1] > near_depth[2, 3]
    rgb = torch.randint(0, 256, (3, 3, 4), dtype=torch.uint8)
    panel = depth_panel(rgb, near_gt, near_pred, valid, error_max=0.2)
    assert panel.shape == (3, 16, 3) and panel.dtype == np.uint8
    assert np.array_equal(panel[:, :4], rgb.permute(1, 2, 0).numpy())
    assert np.array_equal(panel[:, 4:8][valid.numpy()], panel[:, 8:12][valid.numpy()])
    error = panel[:, 12:]
    assert error[0, 0].tolist() == [0, 0, 0]  # invalid
    # Zero error is inferno's darkest colour everywhere else.
    from matplotlib import colormaps

    darkest = colormaps["inferno"](0.0, bytes=True)[:3]
    assert (error[valid.numpy()] == np.array(darkest, dtype=np.uint8)).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_steps": 0}, "init_args.every_n_steps must be an integer >= 1, got 0"),
        ({"num_samples": 1.5}, "init_args.num_samples must be an integer >= 1, got 1.5"),
        ({"error_max": 0.0}, "init_args.error_max must be > 0, got 0.0"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainingMonitor(**kwargs)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_samples_per_sec_counts_all_ranks_and_leaves_validation_out(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("dm_lightning.training.monitor.time.perf_counter", clock)
    written: list[tuple[dict, int]] = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: written.append((metrics, step)))
    trainer = SimpleNamespace(
        is_global_zero=True, global_step=0, log_every_n_steps=2, world_size=2, loggers=[logger]
    )
    monitor = TrainingMonitor(every_n_steps=100)
    batch = {"rgb": torch.zeros(3, 8, 8, 3, dtype=torch.uint8)}

    def step(start: float, end: float) -> None:
        clock.now = start
        monitor.on_train_batch_start(trainer, None, batch, 0)
        clock.now, trainer.global_step = end, trainer.global_step + 1
        monitor.on_train_batch_end(trainer, None, None, batch, 0)

    monitor.on_train_start(trainer, None)
    step(10.0, 11.0)
    assert written == []  # step 1: not a logging step
    step(11.0, 12.0)
    # 2 batches x 3 samples x 2 ranks in 2 s (from the first batch's start).
    assert written == [({"train/samples_per_sec": 6.0}, 2)]
    clock.now = 13.0
    monitor.on_validation_start(trainer, None)
    clock.now = 20.0
    monitor.on_validation_end(trainer, None)
    step(20.0, 21.0)
    step(21.0, 22.0)
    # 12 samples in 10 s of wall time, 7 of them validation.
    assert written[1] == ({"train/samples_per_sec": 4.0}, 4)


def test_eval_mode_puts_each_module_back_in_its_own_mode():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(), torch.nn.Linear(2, 2))
    net[2].eval()  # a frozen part kept in eval mode
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net.modules()] == [True, True, True, False]


def test_train_panel_draws_the_first_sample_as_the_loss_saw_it(tiny_model):
    """A packed batch (flipped first sample, a hole in its depth), finished as the DataModule
    hands it to the callbacks, through the real tiny network: the panel's RGB tile is the
    flipped image, its GT and error tiles are black on the flipped hole; nothing is drawn on
    other steps."""
    from dm_lightning.data.datamodule import DepthDataModule
    from dm_lightning.data.packing import pack_training_batch
    from dm_lightning.models.loading import load_depthmaster

    rng = np.random.default_rng(0)
    h, w = 32, 48
    units = rng.integers(1000, 20000, (h, w)).astype(np.uint16)
    units[:, :10] = 0  # no depth on the left edge: on the right once flipped
    samples = [
        {
            "rgb": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "depth_units": units,
            "meta": {"depth_scale": 0.001, "min_depth": 0.1, "max_depth": 80.0, "source": "s"},
            "key": f"k{i}",
        }
        for i in range(2)
    ]
    batch = DepthDataModule().on_after_batch_transfer(
        pack_training_batch(samples, [True, False]), 0
    )
    images: list[tuple[str, np.ndarray, int]] = []
    writer = SimpleNamespace(add_image=lambda tag, img, step, **_: images.append((tag, img, step)))
    net = load_depthmaster(str(tiny_model))
    net.unet.train()  # as in training; the VAE stays in eval mode
    module = SimpleNamespace(
        net=net,
        target=get_target("sqrt_disparity"),
        eval_alignment="sqrt_disparity",
        device=torch.device("cpu"),
    )
    trainer = SimpleNamespace(
        is_global_zero=True,
        global_step=3,
        log_every_n_steps=1000,
        world_size=1,
        loggers=[],
        precision_plugin=SimpleNamespace(forward_context=contextlib.nullcontext),
    )
    monitor = TrainingMonitor(every_n_steps=4, num_samples=1)
    monitor._writers = [writer]
    monitor.on_train_start(trainer, module)
    monitor.on_train_batch_end(trainer, module, None, batch, 0)
    assert images == []  # step 3
    trainer.global_step = 4
    monitor.on_train_batch_end(trainer, module, None, batch, 0)
    monitor.on_train_batch_end(trainer, module, None, batch, 1)  # same step, accumulating
    [(tag, panel, step)] = images
    assert (tag, step, panel.shape) == ("panels/train", 4, (h, 4 * w, 3))
    assert np.array_equal(panel[:, :w], samples[0]["rgb"][:, ::-1])
    hole = np.zeros((h, w), dtype=bool)
    hole[:, -10:] = True
    for tile in (panel[:, w : 2 * w], panel[:, 3 * w :]):
        assert (tile[hole] == 0).all() and (tile[~hole].max(axis=-1) > 0).all()
    # The network's modes are back as they were (the U-Net trains, the VAE stays frozen).
    assert net.unet.training and not net.vae.training
