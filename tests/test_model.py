"""The DepthMaster network: FE block, U-Net hooks, encode/decode conventions, loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

from dm_lightning.errors import ConfigError, MissingPathError
from dm_lightning.models.depthmaster import DepthMaster
from dm_lightning.models.encoders import TimmEncoder
from dm_lightning.models.feature_alignment import FeatureAlignment
from dm_lightning.models.fourier import FourierEnhancement
from dm_lightning.models.loading import load_depthmaster, load_unet
from dm_lightning.models.unet_hooks import FeatureTap, attach_fourier_enhancement
from dm_lightning.targets import get_target
from dm_lightning.testing.tiny_model import TINY_UNET_CONFIG, make_tiny_depthmaster

C = 16


def released_fftblock_state(channels: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Key names and shapes of the released checkpoint's ``fftblock`` (conv_f3 is the 1x1)."""
    shapes = {
        "norm.weight": (channels,),
        "norm.bias": (channels,),
        "fuse.weight": (channels, 2 * channels, 1, 1),
        "fuse.bias": (channels,),
        "conv_f3.weight": (channels, channels, 1, 1),
        "conv_f3.bias": (channels,),
    }
    for name in ("conv_f1", "conv_f2", "conv_f4", "conv_s1", "conv_s2"):
        shapes[f"{name}.weight"] = (channels, channels, 3, 3)
        shapes[f"{name}.bias"] = (channels,)
    return {k: torch.randn(*s, generator=generator) * 0.1 for k, s in shapes.items()}


def reference_fe(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """docs/method.md §4 written out with functional ops, independently of the module."""
    x0 = F.group_norm(x, 8, state["norm.weight"], state["norm.bias"], eps=1e-5)

    def conv(name, t):
        w = state[f"{name}.weight"]
        return F.conv2d(t, w, state[f"{name}.bias"], padding=w.shape[-1] // 2)

    a = F.silu(conv("conv_f1", x0))
    spec = torch.fft.rfft2(a, norm="ortho")
    amp = F.silu(conv("conv_f2", spec.abs()))
    pha = F.silu(conv("conv_f4", spec.angle()))
    back = torch.fft.irfft2(torch.polar(amp, pha), s=x.shape[-2:], norm="ortho")
    f = conv("conv_f3", back + a)
    s = conv("conv_s2", F.silu(conv("conv_s1", x0))) + x0
    return conv("fuse", torch.cat([s, f], 1))


def test_fe_block_loads_released_keys_strictly_and_matches_spec():
    g = torch.Generator().manual_seed(0)
    state = released_fftblock_state(C, g)
    block = FourierEnhancement(C)
    block.load_state_dict(state, strict=True)
    x = torch.randn(2, C, 5, 7, generator=g)  # odd sizes exercise irfft2's explicit size
    out = block(x)
    assert out.shape == (2, C, 5, 7)
    torch.testing.assert_close(out, reference_fe(state, x), rtol=1e-4, atol=1e-5)


def test_fe_block_runs_in_fp32_under_bf16_autocast():
    block = FourierEnhancement(C)
    seen = []
    block.conv_f1.register_forward_hook(lambda m, a, o: seen.append((a[0].dtype, o.dtype)))
    x = torch.randn(1, C, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x.bfloat16())
    assert seen == [(torch.float32, torch.float32)]
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), block(x.bfloat16().float()), rtol=2e-2, atol=2e-2)


def test_fe_rejects_channels_not_divisible_by_groups():
    with pytest.raises(ValueError, match="not divisible"):
        FourierEnhancement(12, groups=8)


@pytest.fixture(scope="module")
def tiny():
    model = make_tiny_depthmaster(0).eval()
    return model


def test_latent_factor_derived_from_vae_config(tiny):
    assert tiny.latent_factor == 8
    two_block = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        norm_num_groups=4,
        layers_per_block=1,
    )
    model = DepthMaster(two_block, UNet2DConditionModel(**TINY_UNET_CONFIG), torch.zeros(1, 2, 32))
    assert model.latent_factor == 2


def test_encode_denoise_decode_follow_spec(tiny):
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    calls = []
    handle = tiny.unet.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((args, kwargs)), with_kwargs=True
    )
    with torch.no_grad():
        z = tiny.encode(x)
        ref_z = tiny.vae.encode(x).latent_dist.mean * 0.18215
        out = tiny.decode(tiny.denoise(z))
        ref_out = tiny.vae.decode(tiny.denoise(z) / 0.18215).sample.mean(1, keepdim=True)
    handle.remove()
    torch.testing.assert_close(z, ref_z)
    assert z.shape == (2, 4, 4, 6)
    args, kwargs = calls[0]
    assert args[0].shape == (2, 4, 4, 6)  # the RGB latent alone: stock 4-channel conv_in
    assert torch.equal(args[1], torch.ones(2, dtype=torch.long))  # timestep 1
    assert torch.equal(
        kwargs["encoder_hidden_states"], tiny.empty_prompt_embedding.expand(2, -1, -1)
    )
    torch.testing.assert_close(out, ref_out)
    assert out.shape == (2, 1, 32, 48)


def test_predict_returns_unit_range_at_input_size(tiny):
    image = torch.randint(0, 256, (1, 3, 50, 70), dtype=torch.uint8)
    depth = tiny.predict(image)
    assert depth.shape == (1, 1, 50, 70)
    assert 0.0 <= float(depth.min()) and float(depth.max()) <= 1.0
    # uint8 and [0, 1] float inputs are the same image.
    torch.testing.assert_close(tiny.predict(image.float() / 255.0), depth)
    assert tiny.working_size(480, 640, 96) == (72, 96)
    assert tiny.working_size(50, 70, None) == (48, 72)


def test_feature_tap_leaves_output_unchanged(tiny):
    x = torch.randn(1, 4, 8, 12)
    with torch.no_grad():
        before = tiny.denoise(x)
        taps = [FeatureTap(tiny.unet, loc) for loc in ("mid", "down1", "down2")]
        after = tiny.denoise(x)
    assert torch.equal(before, after)
    mid, down1, down2 = (t.pop() for t in taps)
    assert mid.shape == (1, 64, 4, 6) and taps[0].channels == 64
    assert down1.shape == (1, 32, 4, 6) and taps[1].channels == 32
    assert down2.shape == (1, 64, 4, 6)
    for t in taps:
        t.remove()
    with pytest.raises(ValueError, match="down1"):
        FeatureTap(tiny.unet, "up1")


def test_fourier_block_replaces_mid_output():
    model = make_tiny_depthmaster(1).eval()
    x = torch.randn(1, 4, 8, 8)
    mids, ups = [], []
    model.unet.mid_block.register_forward_hook(lambda m, a, o: mids.append(o))
    block = attach_fourier_enhancement(model.unet)
    model.unet.up_blocks[0].register_forward_pre_hook(
        lambda m, args, kwargs: ups.append(kwargs.get("hidden_states", args[0] if args else None)),
        with_kwargs=True,
    )
    with torch.no_grad():
        model.denoise(x)
        expected = block(mids[0])
    torch.testing.assert_close(ups[0], expected)
    assert {k for k in model.unet.state_dict() if k.startswith("fftblock.")} >= {
        "fftblock.conv_f3.weight",
        "fftblock.fuse.weight",
    }
    with pytest.raises(ValueError, match="already"):
        attach_fourier_enhancement(model.unet)


def test_released_layout_unet_folder_loads_strictly(tmp_path):
    """A diffusers U-Net folder whose weights carry fftblock.* (the released model's layout)."""
    unet = UNet2DConditionModel(**TINY_UNET_CONFIG)
    g = torch.Generator().manual_seed(3)
    state = dict(unet.state_dict())
    state.update({f"fftblock.{k}": v for k, v in released_fftblock_state(64, g).items()})
    folder = tmp_path / "unet"
    unet.save_config(folder)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(folder / "diffusion_pytorch_model.safetensors"),
    )
    loaded = load_unet(folder)
    assert torch.equal(loaded.fftblock.conv_f3.weight, state["fftblock.conv_f3.weight"])
    # An unexpected key is an error, not silently dropped.
    state["fftblock.extra.weight"] = torch.zeros(1)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(folder / "diffusion_pytorch_model.safetensors"),
    )
    with pytest.raises(ConfigError, match=r"unexpected 1 keys \['fftblock.extra.weight'\]"):
        load_unet(folder)


def test_save_and_load_round_trip(tmp_path):
    model = make_tiny_depthmaster(2).eval()
    attach_fourier_enhancement(model.unet)
    model.save_pretrained(tmp_path / "m")
    loaded = load_depthmaster(str(tmp_path / "m")).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(x), loaded(x), rtol=0, atol=1e-5)
    assert torch.equal(loaded.empty_prompt_embedding, model.empty_prompt_embedding)


def test_missing_model_parts_are_named(tmp_path):
    with pytest.raises(MissingPathError, match="model folder .*nope not found"):
        load_depthmaster(str(tmp_path / "nope"))
    model = make_tiny_depthmaster(0)
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "empty_prompt_embedding.safetensors").unlink()
    with pytest.raises(MissingPathError, match="text_encoder"):
        load_depthmaster(str(tmp_path / "m"), cache_dir=tmp_path / "cache")


def tiny_encoder(name: str = "vit_small_patch14_dinov2", **kw) -> TimmEncoder:
    kwargs = dict(depth=1, embed_dim=32, num_heads=2, img_size=56)
    return TimmEncoder(name, model_kwargs=kwargs, **kw)


def test_timm_encoder_tokens_grid_and_freezing():
    enc = tiny_encoder("vit_small_patch14_reg4_dinov2")
    assert enc.num_prefix_tokens == 5  # class + 4 registers, all dropped
    tokens, grid = enc(torch.rand(2, 3, 96, 128))
    assert grid == (6, 8)  # 96*0.875=84 -> 6 patches, 128*0.875=112 -> 8
    assert tokens.shape == (2, 48, 32)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training
    torch.testing.assert_close(enc.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_timm_encoder_signed_input_option_changes_only_normalisation():
    a, b = tiny_encoder(), tiny_encoder(signed_input=True)
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 56, 56)
    ta, _ = a(x)
    tb, _ = b(x)
    assert not torch.allclose(ta, tb)
    # signed_input on x equals the default on the image 2x-1 (what the original code fed).
    ta2, _ = a(x * 2 - 1)
    torch.testing.assert_close(tb, ta2)


def test_encoder_weights_load_from_timm_and_depth_anything_layouts(tmp_path):
    source = tiny_encoder()
    state = source.model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "timm.safetensors"))
    torch.save(
        {"pretrained." + k: v for k, v in state.items()} | {"depth_head.x": torch.zeros(1)},
        tmp_path / "dav2.pth",
    )
    x = torch.rand(1, 3, 56, 56)
    expected, _ = source(x)
    for file in ("timm.safetensors", "dav2.pth"):
        enc = tiny_encoder(weights=str(tmp_path / file))
        torch.testing.assert_close(enc(x)[0], expected)
    torch.save({"blocks.0.norm1.weight": torch.ones(32)}, tmp_path / "partial.pth")
    with pytest.raises(ConfigError, match="partial.pth do not fit .*missing"):
        tiny_encoder(weights=str(tmp_path / "partial.pth"))
    with pytest.raises(MissingPathError, match=f"encoder weights file not found: {tmp_path}"):
        tiny_encoder(weights=str(tmp_path / "none.pth"))
    torch.save(state | {"blocks.0.norm1.weight": torch.ones(7)}, tmp_path / "wide.pth")
    with pytest.raises(ConfigError, match=r"blocks.0.norm1.weight: file \(7,\) vs model \(32,\)"):
        tiny_encoder(weights=str(tmp_path / "wide.pth"))


def test_unknown_encoder_and_target_names_list_what_exists():
    with pytest.raises(ConfigError, match="'vit_lrge_patch14_dinov2'.*vit_large_patch14_dinov2"):
        TimmEncoder("vit_lrge_patch14_dinov2")
    with pytest.raises(ConfigError, match="does not accept encoder model_kwargs"):
        TimmEncoder("vit_small_patch14_dinov2", model_kwargs=dict(depth=1, bogus_option=1))
    with pytest.raises(ConfigError, match="'sqrt_depth'; expected one of depth, disparity, sqrt"):
        get_target("sqrt_depth")


def test_encoder_width_that_does_not_fit_the_projector_names_both_widths():
    # Declared embed_dim 32, but a Swin's tokens are 8x wider at the last stage.
    with pytest.raises(
        ConfigError, match="embed_dim=32 but the timm model returns tokens of width 256"
    ):
        TimmEncoder(
            "swin_tiny_patch4_window7_224",
            model_kwargs=dict(
                embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), img_size=56
            ),
        )
    # A projector built for one width, an encoder returning another (a custom encoder whose
    # embed_dim does not match its tokens).
    fa = FeatureAlignment(64, 48)
    with pytest.raises(ConfigError, match="tokens of width 32.*embed_dim=48"):
        fa(torch.randn(1, 64, 4, 4), torch.randn(1, 16, 32), (4, 4))
    with pytest.raises(ConfigError, match="feature has 16 channels.*built for 64"):
        fa(torch.randn(1, 16, 4, 4), torch.randn(1, 16, 48), (4, 4))
    with pytest.raises(ConfigError, match="do not fill its grid 4 x 5"):
        fa(torch.randn(1, 64, 4, 4), torch.randn(1, 16, 48), (4, 5))


def test_feature_alignment_projector_sizes_and_grid_resize():
    fa = FeatureAlignment(64, 32)
    shapes = [tuple(m.weight.shape) for m in fa.projector if isinstance(m, torch.nn.Linear)]
    assert shapes == [(32, 64), (32, 32), (32, 32)]
    feature = torch.randn(2, 64, 4, 6)
    tokens = torch.randn(2, 6 * 8, 32)
    loss = fa(feature, tokens, (6, 8))
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    assert fa.projector[0].weight.grad is not None
    with pytest.raises(ValueError, match="alignment loss"):
        FeatureAlignment(64, 32, loss="l2")


def test_fe_block_stays_fp32_through_module_casts():
    block = FourierEnhancement(C)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    block.to(torch.bfloat16).half()
    assert all(p.dtype == torch.float32 for p in block.parameters())
    # Not cast to a half format and back: the weights as they were, bit for bit (a round trip
    # through bf16 would move them).
    assert all(torch.equal(v, before[k]) for k, v in block.state_dict().items())
    weight = before["conv_f1.weight"]
    assert not torch.equal(weight.bfloat16().float(), weight)
    out = block(torch.randn(1, C, 4, 4, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_predict_clips_before_resizing(tiny):
    """Overshoot beyond [-1, 1] must not leak into neighbours when resizing back."""
    image = torch.randint(0, 256, (1, 3, 40, 56), dtype=torch.uint8)
    x = image.float() / 255.0
    with torch.no_grad():
        small = F.interpolate(
            x, size=(24, 32), mode="bilinear", align_corners=False, antialias=True
        )
        raw = tiny(small * 2 - 1).clamp(-1, 1)
        expected = (
            F.interpolate(raw, size=(40, 56), mode="bilinear", align_corners=False, antialias=True)
            + 1
        ) / 2
    torch.testing.assert_close(tiny.predict(image, processing_res=32), expected)


def test_tiny_model_vae_pretraining_reads_the_training_stream(shards, tmp_path):
    from dm_lightning.testing.tiny_model import build_tiny_model_folder, vae_batches

    pattern = str(shards / "indoor" / "train-*.tar")
    batch = next(vae_batches([pattern], batch_size=2, crop=32))
    # RGB crops and normalised sqrt-disparity crops, stacked, all in [-1, 1]
    assert batch.shape == (4, 3, 32, 32)
    assert batch.min() >= -1.0 and batch.max() <= 1.0
    assert torch.equal(batch[2:, 0], batch[2:, 1])  # depth maps are grey
    path = build_tiny_model_folder(tmp_path / "tiny", seed=0, vae_shards=[pattern], vae_steps=2)
    trained = load_depthmaster(path).vae.state_dict()
    fresh = make_tiny_depthmaster(0).vae.state_dict()
    assert any(not torch.equal(trained[k], fresh[k]) for k in fresh)


def test_aligned_depthmaster_trains_without_lightning():
    from dm_lightning.losses import masked_latent_mse
    from dm_lightning.models.stage1_network import AlignedDepthMaster

    torch.manual_seed(0)
    net, encoder = make_tiny_depthmaster(0), tiny_encoder()
    model = AlignedDepthMaster(net, encoder, fa_location="mid", fa_loss="kl")
    # the parts: tap on the mid block, projector from its channels to the encoder's width
    assert model.tap.channels == TINY_UNET_CONFIG["block_out_channels"][-1]
    assert model.alignment.projector[0].weight.shape == (32, model.tap.channels)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    z_pred, feature = model(x)
    assert z_pred.shape == (2, 4, 4, 6) and feature.shape[:2] == (2, model.tap.channels)
    with torch.no_grad():
        torch.testing.assert_close(z_pred, net.denoise(net.encode(x)), rtol=0, atol=0)
    net.unet.zero_grad(set_to_none=True)
    # The network owns its tap: forwards outside its own (the reference, evaluation's) and
    # the forward that took its feature leave nothing behind.
    with torch.no_grad():
        net.predict(torch.rand(1, 3, 32, 48))
    with pytest.raises(RuntimeError, match="saw no forward pass"):
        model.tap.pop()
    z_gt = torch.zeros_like(z_pred)
    valid = torch.ones(2, 1, 32, 48, dtype=torch.bool)
    fa = model.alignment_loss(feature, x)
    loss = masked_latent_mse(z_pred, z_gt, valid, net.latent_factor) + fa
    assert fa.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.alignment.projector[0].weight.grad is not None
    assert any(p.grad is not None for p in net.unet.parameters())
    assert all(p.grad is None for p in net.vae.parameters())
    assert all(p.grad is None for p in encoder.parameters())
