"""Marigold as a baseline (docs/method.md §8.3): the 8-channel conv_in, the multi-resolution
noise, the v-prediction target and the loss, DDIM sampling, the ensembling, and the installed
``dm-lightning fit`` / ``test`` of the tiny recipe, each against hand-computed or independent
numpy numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import CONFIGS
from diffusers import UNet2DConditionModel
from helpers import cli_args

from dm_lightning.baselines.ensemble import ensemble_depth, lower_median
from dm_lightning.baselines.marigold import MarigoldNetwork
from dm_lightning.baselines.marigold_task import Marigold
from dm_lightning.baselines.multires_noise import annealed_strength, multi_res_noise
from dm_lightning.baselines.unet_surgery import widen_conv_in
from dm_lightning.cli import main
from dm_lightning.errors import ConfigError
from dm_lightning.models.pipeline_depthmaster import predict_relative_depth
from dm_lightning.testing.tiny_model import TINY_UNET_CONFIG, make_tiny_depthmaster

SCRIPT = Path(sys.executable).parent / "dm-lightning"
EPS32 = float(np.finfo(np.float32).eps)


def np_alphas_cumprod(zero_snr: bool = True) -> np.ndarray:
    """SD-2's scaled-linear schedule in float64, optionally rescaled to zero terminal SNR
    (Lin et al. 2024, Algorithm 1: shift sqrt(abar) so the last is 0, scale so the first keeps
    its value)."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    abar = np.cumprod(1.0 - betas)
    if zero_snr:
        root = np.sqrt(abar)
        first, last = root[0], root[-1]
        abar = ((root - last) * first / (first - last)) ** 2
    return abar


def np_upsample(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (..., h, w) with half-pixel centres (source index clamped at 0)."""

    def weights(n_in: int, n_out: int) -> np.ndarray:
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        matrix = np.zeros((n_out, n_in))
        matrix[np.arange(n_out), lo] += 1.0 - (src - lo)
        matrix[np.arange(n_out), hi] += src - lo
        return matrix

    return weights(x.shape[-2], height) @ x @ weights(x.shape[-1], width).T


@pytest.fixture(scope="module")
def network() -> MarigoldNetwork:
    tiny = make_tiny_depthmaster(0)
    net = MarigoldNetwork.from_parts(tiny.vae, tiny.unet, tiny.empty_prompt_embedding)
    return net.eval()


# ---- conv_in ---------------------------------------------------------------------------------
def test_widened_conv_in_gives_the_original_output_on_a_doubled_latent():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG).double().eval()
    z = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    context = torch.randn(2, 2, TINY_UNET_CONFIG["cross_attention_dim"], dtype=torch.float64)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        first = unet.conv_in(z)
        before = unet(z, t, encoder_hidden_states=context).sample
        old_weight = unet.conv_in.weight.clone()
        assert widen_conv_in(unet, latents=2) is unet
        after = unet(torch.cat([z, z], dim=1), t, encoder_hidden_states=context).sample
        widened_first = unet.conv_in(torch.cat([z, z], dim=1))
    assert unet.config.in_channels == 8 and unet.conv_in.weight.shape == (32, 8, 3, 3)
    assert torch.equal(unet.conv_in.weight[:, :4], old_weight / 2)
    assert torch.equal(unet.conv_in.weight[:, 4:], old_weight / 2)
    # conv_in's sums differ only in order (72 terms instead of 36): n eps |w||z| bounds them.
    bound = torch.nn.functional.conv2d(z.abs(), old_weight.abs(), padding=1)
    eps64 = float(np.finfo(np.float64).eps)
    assert ((widened_first - first).abs() <= 72 * eps64 * bound + 1e-300).all()
    # Through the whole float64 U-Net, rounding stays far below a millionth of the output.
    assert (after - before).abs().max() <= 1e-9 * before.abs().max()
    with pytest.raises(ConfigError, match="latents must be >= 2, got 0"):
        widen_conv_in(unet, latents=0)


def test_network_widens_sd2_unets_only(network):
    assert network.unet.config.in_channels == 8
    # An export's 8-channel U-Net is taken as it is; a 12-channel one is refused.
    again = MarigoldNetwork.from_parts(network.vae, network.unet, network.empty_prompt_embedding)
    assert again.unet.conv_in.in_channels == 8
    wide = UNet2DConditionModel(**{**TINY_UNET_CONFIG, "in_channels": 12})
    with pytest.raises(ConfigError, match="in_channels=12 but MarigoldNetwork feeds 2 latent"):
        MarigoldNetwork.from_parts(network.vae, wide, network.empty_prompt_embedding)


# ---- multi-resolution noise ------------------------------------------------------------------
def np_multi_res_noise(shape, strength, seed):
    """Replays the generator's draws (base noise, then per level r and the coarse noise) and
    sums the levels in float64 numpy."""
    generator = torch.Generator().manual_seed(seed)
    b, c, height, width = shape
    noise = torch.randn(shape, generator=generator).double().numpy()
    strength = np.asarray(strength, dtype=np.float64).reshape(-1, 1, 1, 1)
    h, w, levels = height, width, 0
    for i in range(10):
        r = float(torch.rand(1, generator=generator)) * 2 + 2
        h, w = max(1, int(h / r**i)), max(1, int(w / r**i))
        coarse = torch.randn((b, c, h, w), generator=generator).double().numpy()
        noise = noise + np_upsample(coarse, height, width) * np.power(strength, i)
        levels += 1
        if h == 1 or w == 1:
            break
    return noise / noise.std(ddof=1), levels


def test_annealed_strength_is_proportional_to_the_timestep():
    strength = annealed_strength(0.9, torch.tensor([0, 500, 999]), 1000)
    assert strength.shape == (3, 1, 1, 1)
    assert torch.allclose(strength.flatten(), torch.tensor([0.0, 0.45, 0.8991]))


@pytest.mark.parametrize("strength", [0.9, [0.0, 0.8991]], ids=["constant", "annealed"])
def test_multi_res_noise_matches_numpy(strength):
    shape = (2, 4, 24, 40)
    given = torch.tensor(strength).view(-1, 1, 1, 1) if isinstance(strength, list) else strength
    noise = multi_res_noise(shape, given, torch.Generator().manual_seed(3))
    reference, levels = np_multi_res_noise(shape, strength, 3)
    assert noise.shape == shape and noise.dtype == torch.float32
    assert 2 <= levels <= 4  # 24x40 shrinks by r, then r^2 (r in [2, 4)): a 1-cell edge soon
    # float32 sums of `levels + 1` terms of magnitude <= the reference's largest value
    tolerance = 8 * (levels + 1) * EPS32 * np.abs(reference).max()
    assert np.abs(noise.double().numpy() - reference).max() <= tolerance
    assert abs(float(noise.double().std()) - 1.0) <= 16 * EPS32  # standardised as a whole
    # Annealed at t = 0: only the two full-size draws (level 0 has weight 0 ** 0 = 1).
    if isinstance(strength, list):
        generator = torch.Generator().manual_seed(3)
        white = torch.randn(shape, generator=generator)
        torch.rand(1, generator=generator)
        white = white + torch.randn(shape, generator=generator)
        scale = float(white[0].norm() / noise[0].norm())
        assert (noise[0] * scale - white[0]).abs().max() <= 16 * EPS32 * white[0].abs().max()


# ---- training target and loss ----------------------------------------------------------------
def test_v_target_and_noisy_latent_match_the_formula(network):
    x0 = torch.tensor([0.5, -1.0, 2.0, 0.25]).view(1, 4, 1, 1).expand(3, 4, 1, 1)
    eps = torch.tensor([0.3, 2.0, -0.7, 1.5]).view(1, 4, 1, 1).expand(3, 4, 1, 1)
    t = torch.tensor([0, 500, 999])
    noisy, v = network.training_pair(x0, eps, t)
    abar = np_alphas_cumprod()[[0, 500, 999]].reshape(3, 1, 1, 1)
    assert abar[2] == 0.0  # zero terminal SNR: the last timestep is pure noise
    x0n, epsn = x0.double().numpy(), eps.double().numpy()
    want_v = np.sqrt(abar) * epsn - np.sqrt(1 - abar) * x0n
    want_noisy = np.sqrt(abar) * x0n + np.sqrt(1 - abar) * epsn
    # the schedule itself is a float32 cumulative product of 1000 factors
    tolerance = 1000 * EPS32 * 2.0
    assert np.abs(v.double().numpy() - want_v).max() <= tolerance
    assert np.abs(noisy.double().numpy() - want_noisy).max() <= tolerance
    assert torch.equal(v[2], -x0[2]) and torch.equal(noisy[2], eps[2])


@pytest.fixture(scope="module")
def task(tiny_model) -> Marigold:
    return Marigold(str(tiny_model), num_inference_steps=2)


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    depth = 1.0 + 9.0 * torch.rand(2, 1, 32, 48, generator=g)
    valid = torch.ones(2, 1, 32, 48, dtype=torch.bool)
    valid[1, :, :16, :8] = False  # one 8x8 cell column of latents masked out
    rgb = torch.randint(0, 256, (2, 3, 32, 48), generator=g, dtype=torch.uint8)
    return {"rgb": rgb, "depth": depth, "valid": valid}


def test_training_loss_is_the_masked_velocity_mse(task):
    batch = _batch()
    loss, parts = task.training_loss(batch)
    assert set(parts) == {"v_mse", "loss"} and parts["loss"] is loss
    net = task.net
    with torch.no_grad():
        z_rgb = net.encode(batch["rgb"].float() / 127.5 - 1)
        target = task.target.normalize(batch["depth"], batch["valid"])
        z_gt = net.encode(target.expand(-1, 3, -1, -1))
        t, noise = task.draw_noise(z_gt, task.training_generator(z_gt.device))
        abar = torch.from_numpy(np_alphas_cumprod()[t.numpy()]).float().view(-1, 1, 1, 1)
        noisy = abar.sqrt() * z_gt + (1 - abar).sqrt() * noise
        context = net.empty_prompt_embedding.expand(2, -1, -1)
        pred = net.unet(torch.cat([z_rgb, noisy], 1), t, encoder_hidden_states=context).sample
    v = abar.sqrt() * noise - (1 - abar).sqrt() * z_gt
    cell_valid = torch.ones(2, 1, 4, 6)
    cell_valid[1, :, :2, :1] = 0.0
    mask = cell_valid.expand(-1, 4, -1, -1)
    want = float(((pred - v).square() * mask).sum() / mask.sum())
    assert abs(float(loss.detach()) - want) <= 1e-4 * want
    # The draws depend on the micro-batch, so ranks and accumulation steps differ.
    task._micro_batch = 1
    other, _ = task.draw_noise(z_gt, task.training_generator(z_gt.device))
    task._micro_batch = 0
    again, _ = task.draw_noise(z_gt, task.training_generator(z_gt.device))
    assert torch.equal(again, t) and not torch.equal(other, t)


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match=r"noise_strength must be a number in \[0, 1\)"):
        Marigold("unused", noise_strength=1.5)
    tiny = make_tiny_depthmaster(0)
    parts = (tiny.vae, tiny.unet, tiny.empty_prompt_embedding)
    with pytest.raises(ConfigError, match="num_inference_steps must be an integer from 1 to 1000"):
        MarigoldNetwork.from_parts(*parts, num_inference_steps=0)
    with pytest.raises(ConfigError, match="ensemble_size must be an integer >= 1, got 0"):
        MarigoldNetwork.from_parts(*parts, ensemble_size=0)


# ---- DDIM sampling ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "steps, want",
    [(1, [999]), (4, [999, 749, 499, 249]), (50, list(range(999, 0, -20)))],
)
def test_ddim_runs_the_unet_at_the_trailing_timesteps(network, steps, want):
    # diffusers' trailing spacing: round(1000 - k * 1000 / n) - 1, k = 0 .. n-1
    assert want == [round(1000 - k * 1000 / steps) - 1 for k in range(steps)]
    seen = []
    hook = network.unet.register_forward_pre_hook(lambda m, args: seen.append(int(args[1])))
    network.num_inference_steps = steps
    try:
        with torch.no_grad():
            network.predict_latent(torch.zeros(1, 4, 2, 2))
    finally:
        hook.remove()
        network.num_inference_steps = 4
    assert seen == want


def test_one_ddim_step_is_the_closed_form(network):
    network.num_inference_steps = 1
    z_rgb = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(5))
    try:
        with torch.no_grad():
            got = network.predict_latent(z_rgb)
            noise = torch.randn(z_rgb.shape, generator=torch.Generator().manual_seed(0))
            context = network.empty_prompt_embedding.expand(2, -1, -1)
            v = network.unet(torch.cat([z_rgb, noise], 1), 999, encoder_hidden_states=context)
    finally:
        network.num_inference_steps = 4
    v = v.sample.double().numpy()
    # The scheduler's float32 schedule (checked against numpy's to its cumulative rounding):
    # 1 - abar_0 = 8.5e-4 would lose 4 digits to a float64 abar_0 rounded to float32.
    abar = network.scheduler.alphas_cumprod.double().numpy()
    assert np.abs(abar - np_alphas_cumprod()).max() <= 1000 * EPS32
    # At t = 999 (abar 0) x0 = -v and eps = the noise; DDIM lands on abar[0] (SD-2's
    # set_alpha_to_one false): sqrt(abar_0) x0 + sqrt(1 - abar_0) eps.
    x0 = np.sqrt(abar[999]) * noise.double().numpy() - np.sqrt(1 - abar[999]) * v
    eps = np.sqrt(abar[999]) * v + np.sqrt(1 - abar[999]) * noise.double().numpy()
    want = np.sqrt(abar[0]) * x0 + np.sqrt(1 - abar[0]) * eps
    assert np.abs(got.double().numpy() - want).max() <= 8 * EPS32 * np.abs(want).max()


# ---- ensembling ------------------------------------------------------------------------------
def test_affine_members_ensemble_to_the_normalised_map():
    d = torch.rand(2, 1, 12, 16, generator=torch.Generator().manual_seed(1)) * 5 + 1
    scales = torch.tensor([0.5, 3.0, 1.0, 20.0]).view(1, 4, 1, 1)
    shifts = torch.tensor([-2.0, 0.1, 7.0, -40.0]).view(1, 4, 1, 1)
    members = d * scales + shifts
    out = ensemble_depth(members)
    d = d.double()
    lo, hi = d.amin(dim=(-2, -1), keepdim=True), d.amax(dim=(-2, -1), keepdim=True)
    want = (d - lo) / (hi - lo)
    assert out.shape == (2, 1, 12, 16) and out.dtype == torch.float32
    # Each float32 member value is off by <= eps |m| (a product and a sum, rounded); min-max
    # normalising turns that into eps |m| / range(m), counted twice (value and minimum), again
    # by the final normalisation, plus the float32 output's own rounding.
    span = members.amax(dim=(-2, -1)) - members.amin(dim=(-2, -1))
    ratio = float((members.abs().amax(dim=(-2, -1)) / span).max())
    assert (out.double() - want).abs().max() <= 8 * ratio * EPS32 + EPS32


def test_median_of_members_on_a_hand_case():
    # (B=1, E, H=1, W=2): an odd count takes the middle value, an even one the lower middle
    odd = torch.tensor([[0.2, 0.9], [0.9, 0.1], [0.4, 0.3]]).view(1, 3, 1, 2)
    even = torch.tensor([[0.1, 0.6], [0.7, 0.2], [0.3, 0.8], [0.5, 0.4]]).view(1, 4, 1, 2)
    assert torch.equal(lower_median(odd), torch.tensor([[[0.4, 0.3]]]))
    assert torch.equal(lower_median(even), torch.tensor([[[0.3, 0.4]]]))
    # Members already spanning [0, 1]: without alignment passes the ensemble is their median,
    # and one member far off (the third) does not move it.
    members = torch.tensor(
        [[0.0, 1.0, 0.5, 0.2], [0.0, 1.0, 0.6, 0.3], [1.0, 0.0, 0.0, 1.0]], dtype=torch.float64
    ).view(1, 3, 1, 4)
    out = ensemble_depth(members, passes=0)
    assert torch.equal(out, torch.tensor([0.0, 1.0, 0.5, 0.3]).view(1, 1, 1, 4))


def test_predict_ensembles_seeded_members(network):
    g = torch.Generator().manual_seed(2)
    image = torch.randint(0, 256, (2, 3, 24, 40), generator=g, dtype=torch.uint8)
    network.ensemble_size = 3
    try:
        out = network.predict(image, None)
        again = network.predict(image, None)
        generator = network.noise_generator(torch.device("cpu"))
        step = partial(network.predict_latent, generator=generator)
        x = image.float() / 255
        args = (network.vae, network.unet, network.empty_prompt_embedding, x, (24, 40))
        members = [predict_relative_depth(*args, latent_step=step) for _ in range(3)]
        network.seed = 1
        other = network.predict(image, None)
    finally:
        network.ensemble_size, network.seed = 1, 0
    assert torch.equal(out, again)
    assert torch.equal(out, ensemble_depth(torch.cat(members, dim=1)))
    assert out.amin(dim=(-2, -1)).eq(0).all() and out.amax(dim=(-2, -1)).eq(1).all()
    assert not torch.equal(out, other)  # the seed is what makes two runs agree
    assert not torch.equal(members[0], members[1])  # members start from their own noise


# ---- the installed command -------------------------------------------------------------------
def _run(args: list[str], cwd: Path) -> None:
    result = subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_tiny_recipe_fits_exports_and_tests(tiny_model, data_config, tmp_path):
    cfg = yaml.safe_load((CONFIGS / "tiny" / "baselines" / "marigold.yaml").read_text())
    cfg["trainer"].update(max_steps=2, enable_progress_bar=False)
    config = tmp_path / "marigold.yaml"
    config.write_text(yaml.safe_dump(cfg))
    _run(cli_args("fit", [config, data_config], tiny_model, tmp_path / "runs"), tmp_path)
    export = tmp_path / "runs" / "marigold" / "version_0" / "export"
    unet = json.loads((export / "unet" / "config.json").read_text())
    assert unet["in_channels"] == 8
    meta = json.loads((export / "dm_lightning.json").read_text())
    assert meta["method"] == "marigold" and meta["task"] == "dm_lightning.Marigold"
    assert meta["target"] == "depth" and meta["global_step"] == 2
    assert {k: meta[k] for k in ("num_inference_steps", "ensemble_size", "seed", "zero_snr")} == {
        "num_inference_steps": 2,
        "ensemble_size": 1,
        "seed": 0,
        "zero_snr": True,
    }
    scheduler = json.loads((export / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["timestep_spacing"] == "trailing" and scheduler["rescale_betas_zero_snr"]
    test = cli_args(
        "test",
        [CONFIGS / "tiny" / "eval.yaml", data_config],
        export,
        tmp_path / "runs",
        model_class="dm_lightning.Marigold",
        model__init_args__target="depth",
        extra=[
            "--trainer.callbacks+=dm_lightning.recipes.pipeline.TestMetricsWriter",
            "--trainer.callbacks+=dm_lightning.EvaluationReport",
            f"--trainer.callbacks.output_dir={tmp_path / 'report'}",
        ],
    )
    _run(test, tmp_path)
    # Again in this process (no second interpreter start): the same seed, the same numbers.
    assert main(test) == 0
    written = sorted((tmp_path / "runs" / "test").glob("version_*/test_metrics.json"))
    first, second = (json.loads(p.read_text()) for p in written)
    assert first == second and first["test/synthetic_indoor/abs_rel"] > 0
    # The report records the inference settings with the numbers they produced.
    settings = json.loads((tmp_path / "report" / "results.json").read_text())["settings"]
    inference = [settings[k] for k in ("num_inference_steps", "ensemble_size", "seed")]
    assert inference == [2, 1, 0]
    assert (settings["target"], settings["fit_space"]) == ("depth", "depth")
