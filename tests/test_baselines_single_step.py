"""The single-step baselines E2E-FT and Lotus-D (dm_lightning.baselines, docs/method.md §8):
their losses against hand-computed numbers and independent numpy versions, E2E-FT's
v -> x0 step and 8-channel input, Lotus-D's task switcher and doubled batch, and each trained
by ``dm-lightning fit`` of its tiny config, its export evaluated by ``dm-lightning test`` with
the task class it records (per-image metrics = the reloaded network's predictions through the
numpy protocol) and refused by DepthMaster's task."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import CONFIGS, REPO
from helpers import cli_args, reference

from dm_lightning.baselines.e2e_ft import E2EFT, E2EFTNetwork, v_to_x0
from dm_lightning.baselines.losses import affine_invariant_l1, lotus_d_loss
from dm_lightning.baselines.lotus import DEPTH, RGB, LotusD, task_switch
from dm_lightning.baselines.schedule import sd2_noise_schedule
from dm_lightning.baselines.single_step import LAST_TIMESTEP
from dm_lightning.baselines.unet_surgery import add_task_switcher, widen_conv_in
from dm_lightning.cli import main
from dm_lightning.data.datamodule import DepthDataModule
from dm_lightning.errors import ConfigError
from dm_lightning.models.loading import load_unet
from dm_lightning.testing.tiny_model import make_tiny_depthmaster

SCRIPT = Path(sys.executable).parent / "dm-lightning"
EPS32 = float(torch.finfo(torch.float32).eps)


# ---- E2E-FT's affine-invariant L1 ------------------------------------------------------------
def numpy_affine_invariant_l1(pred, target, valid) -> float:
    """Per image ``np.linalg.lstsq`` of [p, 1] to t on the valid pixels, then the mean absolute
    residual over all valid pixels of the batch; float64."""
    errors = []
    for p, t, m in zip(pred, target, valid):
        p, t = p[m].astype(np.float64), t[m].astype(np.float64)
        if p.size == 0:
            continue
        (s, c), *_ = np.linalg.lstsq(np.stack([p, np.ones_like(p)], 1), t, rcond=None)
        errors.append(np.abs(s * p + c - t))
    return float(np.concatenate(errors).mean())


def test_affine_invariant_l1_hand_computed_with_a_masked_pixel_and_a_constant_prediction():
    # image 0: p = 0 1 2 3, t = 1 1 3 3: cov 4, var 5 -> scale 0.8, shift 2 - 0.8 * 1.5 = 0.8;
    # fitted 0.8 1.6 2.4 3.2, |residuals| 0.2 0.6 0.6 0.2 (sum 1.6). A fifth, masked pixel
    # (p = 100, t = -50) would change everything if it counted.
    # image 1: a constant prediction cannot be scaled: shift by the mean difference,
    # fitted 3 3 3 3 against t = 0 2 4 6, |residuals| 3 1 1 3 (sum 8).
    pred = torch.tensor([[0.0, 1, 2, 3, 100], [1, 1, 1, 1, 1]]).view(2, 1, 1, 5)
    target = torch.tensor([[1.0, 1, 3, 3, -50], [0, 2, 4, 6, 9]]).view(2, 1, 1, 5)
    valid = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]], dtype=torch.bool).view(2, 1, 1, 5)
    pred.requires_grad_(True)
    loss = affine_invariant_l1(pred, target, valid)
    # float32 sums of a few values up to 6: a few eps of that
    assert float(loss.detach()) == pytest.approx((1.6 + 8.0) / 8, abs=16 * EPS32 * 6)
    loss.backward()
    assert torch.isfinite(pred.grad).all()  # the constant image's fit divides by no zero
    assert float(pred.grad[:, :, :, 4].abs().max()) == 0.0  # the masked pixel plays no part


def test_affine_invariant_l1_is_zero_for_an_affine_prediction_and_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(3, 1, 8, 12, generator=gen) * 2 - 1
    valid = torch.rand(3, 1, 8, 12, generator=gen) > 0.3
    garbage = torch.where(valid, 0.0, 1e3)  # invalid pixels far off the affine map
    loss = affine_invariant_l1((target - 3.0) / 2.0 + garbage, target, valid)
    # float32 rounding of the fitted values, a few eps of their magnitude (|t| <= 1, |p| <= 2)
    assert float(loss) <= 16 * EPS32 * 2

    pred = torch.rand(3, 1, 8, 12, generator=gen, dtype=torch.float64)
    target = target.double()
    valid[2] = False  # an image without a valid pixel counts for nothing
    expected = numpy_affine_invariant_l1(pred.numpy(), target.numpy(), valid.numpy())
    assert float(affine_invariant_l1(pred, target, valid)) == pytest.approx(expected, rel=1e-12)
    none = torch.zeros_like(valid)
    assert float(affine_invariant_l1(pred, target, none)) == 0.0


# ---- Lotus-D's loss ------------------------------------------------------------------------
def numpy_lotus_d_loss(pred, target, valid, factor, weight) -> float:
    """Latent MSE where every pixel of a cell is valid (reshape, not max-pool), plus
    ``weight`` x the plain MSE of the second half."""
    b, _, h, w = valid.shape
    cells = valid.reshape(b, 1, h // factor, factor, w // factor, factor).all(axis=(3, 5))
    mask = np.broadcast_to(cells, pred[:b].shape)
    depth = ((pred[:b] - target[:b]) ** 2)[mask].mean()
    return float(depth + weight * ((pred[b:] - target[b:]) ** 2).mean())


def test_lotus_d_loss_hand_computed_and_against_numpy():
    # One image, latent 1 x 2 at factor 2. Cell 0's 2 x 2 pixels are valid, cell 1 has one
    # invalid pixel: only cell 0's 4 channels count, errors 1 2 0 1 -> MSE 6 / 4 = 1.5 (cell 1's
    # error of 10 ignored). The RGB half errs by 0.5 everywhere: MSE 0.25, weight 2.
    pred = torch.zeros(2, 4, 1, 2)
    target = torch.zeros(2, 4, 1, 2)
    pred[0, :, 0, 0] = torch.tensor([1.0, 2.0, 0.0, -1.0])
    pred[0, :, 0, 1] = 10.0
    pred[1] = 0.5
    valid = torch.ones(1, 1, 2, 4, dtype=torch.bool)
    valid[0, 0, 1, 3] = False
    parts = lotus_d_loss(pred, target, valid, factor=2, preserver_weight=2.0)
    assert float(parts["latent_mse"]) == pytest.approx(1.5)
    assert float(parts["rgb_mse"]) == pytest.approx(0.25)
    assert float(parts["loss"]) == pytest.approx(1.5 + 2.0 * 0.25)
    # without the doubled batch: the depth term alone
    alone = lotus_d_loss(pred[:1], target[:1], valid, factor=2, preserver_weight=2.0)
    assert set(alone) == {"latent_mse", "loss"} and float(alone["loss"]) == pytest.approx(1.5)

    gen = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 6, 4, 4, 6, generator=gen, dtype=torch.float64)
    valid = torch.rand(3, 1, 32, 48, generator=gen) > 0.02
    parts = lotus_d_loss(pred, target, valid, factor=8, preserver_weight=0.7)
    expected = numpy_lotus_d_loss(pred.numpy(), target.numpy(), valid.numpy(), 8, 0.7)
    assert float(parts["loss"]) == pytest.approx(expected, rel=1e-12)


# ---- E2E-FT's network --------------------------------------------------------------------
def test_v_to_x0_uses_sd2_alphas_and_the_formula():
    # SD-2's scaled_linear betas, recomputed in float64: abar_999 = prod(1 - beta_i)
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    abar = float(np.prod(1.0 - betas))
    assert abar == pytest.approx(0.0046601, abs=1e-7)
    scheduled = float(sd2_noise_schedule().alphas_cumprod[LAST_TIMESTEP])
    # diffusers' float32 cumulative product of 1000 factors: at most ~1000 roundings of eps
    assert scheduled == pytest.approx(abar, rel=1000 * EPS32)
    # abar = 0.25: x0 = 0.5 * 2 - sqrt(0.75) * 1 = 0.1339746
    x0 = v_to_x0(torch.tensor([1.0]), torch.tensor([2.0]), 0.25)
    assert float(x0) == pytest.approx(1.0 - math.sqrt(0.75), abs=4 * EPS32)


@pytest.mark.parametrize("marigold_input", [False, True])
def test_e2e_ft_latent_is_the_x0_of_the_unet_output_at_999(marigold_input):
    base = make_tiny_depthmaster(0)
    net = E2EFTNetwork.from_parts(
        base.vae, copy.deepcopy(base.unet), base.empty_prompt_embedding, marigold_input
    ).eval()
    z = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(2))
    x_t = torch.zeros_like(z) if marigold_input else z
    unet_in = torch.cat([z, x_t], 1) if marigold_input else z
    context = base.empty_prompt_embedding.expand(2, -1, -1)
    with torch.no_grad():
        v = net.unet(unet_in, torch.full((2,), 999), encoder_hidden_states=context).sample
        latent = net.predict_latent(z)
    abar = net.alpha_cumprod
    expected = math.sqrt(abar) * x_t - math.sqrt(1 - abar) * v
    torch.testing.assert_close(latent, expected, rtol=0, atol=4 * EPS32 * float(v.abs().max()))


def test_widened_conv_in_gives_on_z_z_what_the_original_gave_on_z(tmp_path):
    unet = make_tiny_depthmaster(0).unet
    old = copy.deepcopy(unet.conv_in)
    widen_conv_in(unet, latents=2)
    assert unet.config.in_channels == 8 and unet.conv_in.in_channels == 8
    torch.testing.assert_close(unet.conv_in.weight, old.weight.repeat(1, 2, 1, 1) / 2)
    torch.testing.assert_close(unet.conv_in.bias, old.bias)
    z = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        wide, narrow = unet.conv_in(torch.cat([z, z], 1)), old(z)
        # float32 sums of 72 (vs 36) products: a few eps of the sum of their magnitudes
        bound = F.conv2d(z.abs(), old.weight.abs(), old.bias.abs(), padding=1)
    assert float(((wide - narrow).abs() - 72 * EPS32 * bound).max()) <= 0.0
    # recorded in the config: the saved U-Net loads with 8 channels and the same weights
    unet.save_pretrained(tmp_path / "unet")
    loaded = load_unet(tmp_path / "unet")
    assert loaded.config.in_channels == 8
    torch.testing.assert_close(loaded.conv_in.weight, unet.conv_in.weight, rtol=0, atol=0)


def test_e2e_ft_input_width_follows_the_unet_unless_told():
    base = make_tiny_depthmaster(0)
    wide = widen_conv_in(copy.deepcopy(base.unet))
    net = E2EFTNetwork.from_parts(base.vae, wide, base.empty_prompt_embedding)
    assert net.marigold_input and net.export_settings()["marigold_input"] is True
    with pytest.raises(ConfigError, match="marigold_input is false but the U-Net takes 8"):
        E2EFTNetwork.from_parts(base.vae, wide, base.empty_prompt_embedding, False)
    with pytest.raises(ConfigError, match="latents must be >= 2"):
        widen_conv_in(copy.deepcopy(base.unet), latents=1)


# ---- Lotus-D's task switcher ---------------------------------------------------------------
def test_task_switcher_round_trips_and_tells_the_tasks_apart(tmp_path):
    s1, c1 = math.sin(1.0), math.cos(1.0)
    torch.testing.assert_close(task_switch(DEPTH, 2), torch.tensor([[s1, 0, c1, 1.0]] * 2))
    torch.testing.assert_close(task_switch(RGB, 1), torch.tensor([[0, s1, 1.0, c1]]))
    unet = add_task_switcher(make_tiny_depthmaster(0).unet)
    assert unet.config.class_embed_type == "projection"
    assert unet.config.projection_class_embeddings_input_dim == 4
    assert add_task_switcher(unet) is unet  # an export's switcher is kept
    unet.save_pretrained(tmp_path / "unet")
    loaded = load_unet(tmp_path / "unet").eval()
    sample = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(4))
    tasks = torch.cat([task_switch(DEPTH, 1), task_switch(RGB, 1)])
    context = torch.randn(1, 2, 32).expand(2, -1, -1)
    with torch.no_grad():
        ours = unet.eval()(sample, 999, context, class_labels=tasks).sample
        theirs = loaded(sample, 999, context, class_labels=tasks).sample
    torch.testing.assert_close(theirs, ours, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="class_embed_type='timestep'"):
        other = make_tiny_depthmaster(0).unet
        other.class_embedding = torch.nn.Linear(1, 1)
        other.register_to_config(class_embed_type="timestep")
        add_task_switcher(other)


def test_lotus_d_doubles_the_batch_with_the_rgb_switch_and_rgb_latent_target(tiny_model):
    task = LotusD(str(tiny_model), preserver_weight=0.5)
    gen = torch.Generator().manual_seed(5)
    batch = {
        "rgb": torch.randint(0, 256, (2, 3, 16, 24), generator=gen, dtype=torch.uint8),
        "depth": torch.rand(2, 1, 16, 24, generator=gen) * 9 + 1,
        "valid": torch.rand(2, 1, 16, 24, generator=gen) > 0.1,
    }
    seen = {}
    embeddings = []
    net = task.net
    handle = net.unet.class_embedding.register_forward_hook(
        lambda module, args, out: embeddings.append(out.detach())
    )
    real_x0 = net.x0

    def spy(latents, tasks):
        seen.update(latents=latents, tasks=tasks, pred=real_x0(latents, tasks))
        return seen["pred"]

    net.x0 = spy
    try:
        loss, parts = task.training_loss(batch)
        loss, parts = loss.detach(), {k: v.detach() for k, v in parts.items()}
    finally:
        handle.remove()
        del net.x0
    with torch.no_grad():
        z_rgb = net.encode(task.rgb_signed(batch))
        z_depth = net.encode(task.normalized_target(batch).expand(-1, 3, -1, -1))
    torch.testing.assert_close(seen["latents"], torch.cat([z_rgb, z_rgb]))
    torch.testing.assert_close(
        seen["tasks"], torch.cat([task_switch(DEPTH, 2), task_switch(RGB, 2)])
    )
    (emb,) = embeddings
    torch.testing.assert_close(emb[0], emb[1])  # one switch per half ...
    torch.testing.assert_close(emb[2], emb[3])
    assert float((emb[0] - emb[2]).abs().max()) > 1e-3  # ... and the halves differ
    pred = seen["pred"].detach()
    # the reconstruction's target is the RGB latent itself, the depth term the target latent's
    assert float(parts["rgb_mse"]) == pytest.approx(float(F.mse_loss(pred[2:], z_rgb)), rel=1e-6)
    depth = lotus_d_loss(pred[:2], z_depth, batch["valid"], 8, 0.5)["latent_mse"]
    assert float(parts["latent_mse"]) == pytest.approx(float(depth), rel=1e-6)
    assert float(loss) == pytest.approx(float(parts["latent_mse"] + 0.5 * parts["rgb_mse"]))


# ---- the tiny configs end to end -----------------------------------------------------------
def run_dm_lightning(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600
    )


BASELINES = {
    # config name: (task class, target, method)
    "e2e_ft": (E2EFT, "depth", "e2e_ft"),
    "lotus_d": (LotusD, "disparity", "lotus_d"),
}


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_tiny_baseline_fits_exports_and_tests_with_its_task(
    name, tiny_model, data_config, tmp_path, capsys
):
    task_class, target, method = BASELINES[name]
    config = CONFIGS / "tiny" / "baselines" / f"{name}.yaml"
    fit = cli_args("fit", [config, data_config], tiny_model, tmp_path / "runs")
    fit += ["--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false"]
    done = run_dm_lightning(fit)
    assert done.returncode == 0, done.stderr[-3000:]
    export = tmp_path / "runs" / name / "version_0" / "export"
    meta = json.loads((export / "dm_lightning.json").read_text())
    task_name = f"dm_lightning.{task_class.__name__}"
    assert (meta["method"], meta["task"], meta["target"]) == (method, task_name, target)
    assert meta["global_step"] == 2

    report = tmp_path / "report"
    test = cli_args(
        "test",
        [CONFIGS / "tiny" / "eval.yaml", data_config],
        export,
        tmp_path / "runs",
        model_class=task_name,
        model__init_args__target=target,
        trainer__limit_test_batches=1,
        trainer__enable_progress_bar="false",
        extra=["--trainer.callbacks+=dm_lightning.EvaluationReport"]
        + ["--trainer.callbacks.output_dir", str(report)],
    )
    done = run_dm_lightning(test)
    assert done.returncode == 0, done.stderr[-3000:]

    # The export reloaded here predicts what `test` scored: its first batch of one split,
    # through the numpy protocol (fit in the target's space, native size for shard splits).
    split = "synthetic_indoor"
    shards = yaml.safe_load(data_config.read_text())["data"]["init_args"]["test"][split]
    dm = DepthDataModule(test={split: shards}, eval_batch_size=4, num_workers=0)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()[0]))
    net = task_class(str(export)).net.eval()
    assert type(net).method == method and net.unet.training is False
    # Saved again without metadata, it keeps the target it was loaded with.
    again = json.loads((net.save_pretrained(tmp_path / "again") / "dm_lightning.json").read_text())
    assert (again["method"], again["task"], again["target"]) == (method, task_name, target)
    pred = net.predict(batch["rgb"], None)[:, 0].numpy()
    with open(report / f"per_image_{split}.csv", newline="") as f:
        rows = {row["key"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted(batch["key"])
    lo, hi = batch["min_depth"].numpy(), batch["max_depth"].numpy()
    gt, valid = batch["depth"][:, 0].numpy(), batch["valid"][:, 0].numpy()
    ours = reference.evaluate(pred, gt, valid, lo, hi, space=target)
    for key, scores in zip(batch["key"], ours):
        for metric in ("abs_rel", "delta1"):
            # the reader's GT is float32, the reference keeps float64
            assert float(rows[key][metric]) == pytest.approx(scores[metric], rel=1e-6)

    # DepthMaster's task refuses the export, naming the task class that loads it.
    eval_configs = [CONFIGS / "tiny" / "eval.yaml", data_config]
    status = main(cli_args("test", eval_configs, export, tmp_path / "refused"))
    assert status == 2
    message = (
        f"model folder {export} holds a model of the {method} method, not one for dm_lightning."
        f"DepthMasterTask (DepthMaster): load it with --model {task_name}"
    )
    assert capsys.readouterr().err.strip().endswith(message)


def test_lotus_d_without_the_preserver_runs_the_depth_half_alone(tiny_model):
    task = LotusD(str(tiny_model), preserver_weight=0.0)
    gen = torch.Generator().manual_seed(6)
    batch = {
        "rgb": torch.randint(0, 256, (2, 3, 16, 16), generator=gen, dtype=torch.uint8),
        "depth": torch.rand(2, 1, 16, 16, generator=gen) + 1,
        "valid": torch.ones(2, 1, 16, 16, dtype=torch.bool),
    }
    with torch.no_grad():
        loss, parts = task.training_loss(batch)
        z_rgb = task.net.encode(task.rgb_signed(batch))
        z_depth = task.net.encode(task.normalized_target(batch).expand(-1, 3, -1, -1))
        expected = F.mse_loss(task.net.predict_latent(z_rgb), z_depth)
    assert set(parts) == {"latent_mse", "loss"}
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ConfigError, match="preserver_weight must be >= 0.*got -1"):
        LotusD(str(tiny_model), preserver_weight=-1.0)
