"""The diffusers pipeline (issue 18, point 1): ``DepthMasterUNet`` round-trips its FE block,
``DepthMasterPipeline`` loads exports, released-style and SD-2-layout folders strictly and gives
exactly ``DepthMaster.predict``'s numbers, and an export runs through
``diffusers.DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`` in a process where
dm_lightning cannot be imported, with the same numbers."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from helpers import batched_rounding_atol
from PIL import Image
from safetensors.torch import load_file, save_file

import dm_lightning.models.modeling_depthmaster as modeling
import dm_lightning.models.pipeline_depthmaster as pipeline
from dm_lightning.errors import ConfigError
from dm_lightning.inference.batching import predict_batch
from dm_lightning.inference.precision import cast_for_inference
from dm_lightning.models.loading import load_depthmaster, load_unet
from dm_lightning.models.model_facts import ModelFacts, recorded_facts
from dm_lightning.models.pipeline_depthmaster import DepthMasterPipeline, DepthMasterUNet
from dm_lightning.models.unet_hooks import attach_fourier_enhancement
from dm_lightning.testing.tiny_model import make_tiny_depthmaster

PHOTO = Path(__file__).resolve().parent / "data" / "in_the_wild" / "02.jpg"  # 428 x 640
RES = 64


@pytest.fixture(scope="module")
def stage2_net():
    """A tiny network with an FE block that is not the identity, in eval mode."""
    net = make_tiny_depthmaster(7)
    attach_fourier_enhancement(net.unet)
    with torch.no_grad():
        net.unet.fftblock.fuse.weight.normal_(std=0.1)
    return net.eval()


@pytest.fixture(scope="module")
def export(stage2_net, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipe") / "export"
    return stage2_net.save_pretrained(folder, {"target": "disparity", "processing_res": RES})


@pytest.fixture(scope="module")
def loaded_net(export):
    """The export loaded by ``load_depthmaster``, the way the pipeline loads it: the same
    weights as ``stage2_net`` at the same addresses' alignment as any load of the folder."""
    return load_depthmaster(export).eval()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(PHOTO).convert("RGB")


def expected_depth(net, image: Image.Image, res: int | None = RES) -> np.ndarray:
    """``DepthMaster.predict`` of a PIL image, (1, H, W, 1) as the pipeline returns it."""
    rgb = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None]
    return net.predict(rgb, res).permute(0, 2, 3, 1).numpy()


def test_export_is_a_diffusers_pipeline_folder_with_its_own_code(export):
    index = json.loads((export / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_depthmaster", "DepthMasterPipeline"]
    assert index["unet"] == ["modeling_depthmaster", "DepthMasterUNet"]
    assert index["empty_prompt"] == ["modeling_depthmaster", "EmptyPromptEmbedding"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert (index["target"], index["default_processing_resolution"]) == ("disparity", RES)
    # the package's modules, not copies that could drift
    assert (export / "pipeline_depthmaster.py").read_bytes() == Path(pipeline.__file__).read_bytes()
    modeling_source = Path(modeling.__file__).read_bytes()
    for where in (".", "unet", "empty_prompt"):
        assert (export / where / "modeling_depthmaster.py").read_bytes() == modeling_source
    assert not (export / "unet" / "pipeline_depthmaster.py").exists()
    tiling_source = Path(modeling.__file__).with_name("tiling_depthmaster.py").read_bytes()
    assert (export / "tiling_depthmaster.py").read_bytes() == tiling_source
    unet_config = json.loads((export / "unet" / "config.json").read_text())
    assert unet_config["_class_name"] == "DepthMasterUNet"
    assert (unet_config["fourier_enhancement"], unet_config["fourier_groups"]) == (True, 8)


def test_a_loaded_model_saved_again_keeps_its_facts(loaded_net, tmp_path):
    """net.save_pretrained(path) without metadata writes the facts the network was loaded
    with (its target and resolution), in dm_lightning.json and on the pipeline's config;
    metadata that names a fact wins."""
    assert loaded_net.facts == ModelFacts("disparity", RES)
    again = loaded_net.save_pretrained(tmp_path / "again")
    assert recorded_facts(again) == ModelFacts("disparity", RES)
    index = json.loads((again / "model_index.json").read_text())
    assert (index["target"], index["default_processing_resolution"]) == ("disparity", RES)
    assert load_depthmaster(again).facts == ModelFacts("disparity", RES)
    told = loaded_net.save_pretrained(tmp_path / "told", {"target": "depth"})
    assert recorded_facts(told) == ModelFacts("depth", RES)
    # A network built in memory records nothing: the defaults, and no keys for them.
    fresh = make_tiny_depthmaster(0).save_pretrained(tmp_path / "fresh")
    assert "target" not in json.loads((fresh / "dm_lightning.json").read_text())
    assert recorded_facts(fresh) == ModelFacts()


def test_unet_class_round_trips_the_fe_block(export, stage2_net, tmp_path):
    unet = DepthMasterUNet.from_pretrained(export / "unet")
    assert unet.config.fourier_enhancement and hasattr(unet, "fftblock")
    own = stage2_net.unet.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in unet.state_dict().items())
    assert set(own) == set(unet.state_dict())
    unet.save_pretrained(tmp_path / "again")
    again = DepthMasterUNet.from_pretrained(tmp_path / "again")
    assert again.config.fourier_enhancement and hasattr(again, "fftblock")
    # the block runs: the same input through both gives the same output, not the stock one's
    latent, t, ctx = torch.randn(1, 4, 8, 8), torch.ones(1, dtype=torch.long), torch.zeros(1, 2, 32)
    with torch.no_grad():
        out = again(latent, t, encoder_hidden_states=ctx).sample
        torch.testing.assert_close(
            out, stage2_net.unet(latent, t, encoder_hidden_states=ctx).sample
        )
        plain = DepthMasterUNet.from_config({**again.config, "fourier_enhancement": False})
        plain.load_state_dict({k: v for k, v in again.state_dict().items() if "fftblock" not in k})
        assert not torch.allclose(out, plain(latent, t, encoder_hidden_states=ctx).sample)
    # a stock U-Net folder loads as the class with the flag off
    stock = make_tiny_depthmaster(0).unet
    UNet2DConditionModel.save_pretrained(stock, tmp_path / "stock")
    loaded = load_unet(tmp_path / "stock")
    assert type(loaded) is DepthMasterUNet and not loaded.config.fourier_enhancement
    assert not hasattr(loaded, "fftblock")


def test_fe_config_without_fe_weights_is_an_error_naming_the_keys(export, tmp_path):
    folder = tmp_path / "unet"
    shutil.copytree(export / "unet", folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    save_file({k: v for k, v in state.items() if not k.startswith("fftblock.")}, str(weights))
    with pytest.raises(ConfigError, match=r"missing 16 keys \['fftblock\.conv_f1\.bias'"):
        load_unet(folder)


def test_the_loader_without_dm_lightning_is_strict_too(export, tmp_path):
    """What ``from_pretrained`` runs where dm_lightning is absent (the remote test loads a good
    folder through it): a component's weights that do not fit its config raise."""
    folder = tmp_path / "export"
    shutil.copytree(export, folder)
    weights = folder / "empty_prompt" / "diffusion_pytorch_model.safetensors"
    save_file({**load_file(str(weights)), "extra": torch.zeros(1)}, str(weights))
    with pytest.raises(
        ValueError, match=r"empty_prompt do not match .*'unexpected_keys': \['extra'\]"
    ):
        DepthMasterPipeline._from_export(str(folder))


def test_pipeline_gives_predicts_numbers_through_its_options(export, loaded_net, photo):
    pipe = DepthMasterPipeline.from_pretrained(export)
    assert pipe.config.default_processing_resolution == RES
    out = pipe(photo)  # the recorded resolution by default
    assert (out.target, out.near_is_one) == ("disparity", True)
    assert out.prediction.shape == (1, 640, 428, 1) and out.prediction.dtype == np.float32
    expected = expected_depth(loaded_net, photo)
    np.testing.assert_array_equal(out.prediction, expected)  # the same function, same weights
    # one list of a PIL image and its uint8 array: the same image twice
    listed = pipe([photo, np.asarray(photo)], output_type="pt").prediction
    assert listed.shape == (2, 1, 640, 428)
    np.testing.assert_array_equal(
        listed.permute(0, 2, 3, 1).numpy(), np.concatenate([expected] * 2)
    )
    batches: list[int] = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, args: batches.append(len(args[0])))
    batched = pipe([photo, photo, photo], batch_size=2).prediction
    hook.remove()
    assert batches == [2, 1]
    assert batched.shape == (3, 640, 428, 1)
    atol = batched_rounding_atol(loaded_net)
    np.testing.assert_allclose(batched, np.concatenate([expected] * 3), rtol=0, atol=atol)
    small = pipe(photo, processing_resolution=32, match_input_resolution=False).prediction
    assert small.shape == (1, 32, 24, 1)  # long edge 32, the other rounded to a multiple of 8
    native = pipe(photo.resize((40, 24)), processing_resolution=0).prediction
    np.testing.assert_array_equal(native, expected_depth(loaded_net, photo.resize((40, 24)), None))
    for bad in (4, 3.5, "native"):
        with pytest.raises(ValueError, match="processing_resolution must be 0"):
            pipe(photo, processing_resolution=bad)
    with pytest.raises(ValueError, match="share one size"):
        pipe([photo, photo.resize((40, 24))])
    png = pipe.image_processor.export_depth_to_16bit_png(out.prediction)[0]
    assert png.size == photo.size
    written = np.asarray(png).astype(np.float64) / 65535  # rounded: within half a step
    np.testing.assert_allclose(written, out.prediction[0, ..., 0], rtol=0, atol=0.5 / 65535 + 1e-9)
    colour = pipe.image_processor.visualize_depth(out.prediction)[0]
    assert colour.size == photo.size and colour.mode == "RGB"


def test_half_precision_is_predicts_dtype_switch(export, loaded_net, photo):
    """``torch_dtype`` (or diffusers' newer ``dtype``) holds the U-Net and VAE encoder in
    bf16 and keeps the decode and the FE block fp32: exactly what ``predict_images(dtype=
    "bf16")`` runs (cast_for_inference), so the same numbers bit for bit."""
    expected = cast_for_inference(copy.deepcopy(loaded_net), torch.bfloat16)
    for kwargs in ({"torch_dtype": torch.bfloat16}, {"dtype": torch.bfloat16}):
        half = DepthMasterPipeline.from_pretrained(export, **kwargs)
        assert half_dtypes(half) == HALF_DTYPES
        np.testing.assert_array_equal(half(photo).prediction, expected_depth(expected, photo))
    with pytest.raises(ValueError, match="pass one"):
        DepthMasterPipeline.from_pretrained(export, torch_dtype=torch.bfloat16, dtype=torch.half)


def half_dtypes(pipe) -> dict[str, torch.dtype]:
    """The dtypes a half-precision pipeline holds its parts in."""
    vae = pipe.vae
    return {
        "unet": pipe.unet.conv_in.weight.dtype,
        "fe": pipe.unet.fftblock.fuse.weight.dtype,
        "encoder": vae.encoder.conv_in.weight.dtype,
        "quant_conv": vae.quant_conv.weight.dtype,
        "post_quant_conv": vae.post_quant_conv.weight.dtype,
        "decoder": vae.decoder.conv_in.weight.dtype,
    }


HALF_DTYPES = {
    **dict.fromkeys(["unet", "encoder", "quant_conv"], torch.bfloat16),
    **dict.fromkeys(["fe", "post_quant_conv", "decoder"], torch.float32),
}


def test_released_and_sd2_layouts_load_strictly(export, stage2_net, photo, tmp_path):
    # released DepthMaster: stock config.json, fftblock.* weights, no model_index / metadata
    released = tmp_path / "released"
    shutil.copytree(export, released, ignore=shutil.ignore_patterns("*.py", "empty_prompt"))
    for name in ("model_index.json", "dm_lightning.json"):
        (released / name).unlink()
    config = json.loads((released / "unet" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("fourier")}
    config["_class_name"] = "UNet2DConditionModel"
    (released / "unet" / "config.json").write_text(json.dumps(config))
    pipe = DepthMasterPipeline.from_pretrained(released)
    assert pipe.unet.config.fourier_enhancement
    assert (pipe.config.target, pipe.config.default_processing_resolution) == (
        "sqrt_disparity",
        768,
    )
    np.testing.assert_allclose(
        pipe(photo, processing_resolution=RES).prediction,
        expected_depth(stage2_net, photo),
        atol=1e-5,
    )
    weights = released / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({**load_file(str(weights)), "fftblock.extra": torch.zeros(1)}, str(weights))
    with pytest.raises(ConfigError, match=r"unexpected 1 keys \['fftblock.extra'\]"):
        DepthMasterPipeline.from_pretrained(released)
    # SD-2: no FE, the empty-prompt embedding computed from text_encoder/ + tokenizer/
    from test_weights import write_sd2_layout

    sd2 = tmp_path / "sd2"
    expected = write_sd2_layout(sd2)
    shutil.rmtree(sd2 / "empty_prompt")
    (sd2 / "model_index.json").unlink()
    pipe = DepthMasterPipeline.from_pretrained(str(sd2), cache_dir=tmp_path / "cache")
    assert not hasattr(pipe.unet, "fftblock")
    torch.testing.assert_close(pipe.empty_prompt.embedding.data, expected)


BLOCKER = """
import sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "dm_lightning":
            raise ImportError("dm_lightning is blocked in this test")
sys.meta_path.insert(0, Blocker())
"""
TILE = 256  # 2 x 3 tiles over the 428 x 640 photo
REMOTE = (
    f"TILE = {TILE}\n"
    + """
import sys, json
import numpy as np, torch
from PIL import Image
from diffusers import DiffusionPipeline
export, photo, out, threads = sys.argv[1:5]
torch.set_num_threads(int(threads))
pipe = DiffusionPipeline.from_pretrained(export, trust_remote_code=True)
image = Image.open(photo).convert("RGB")
np.save(out + "/remote.npy", pipe(image).prediction)
np.save(out + "/tiled.npy", pipe(image, tile_size=TILE).prediction)  # tiling ships too
again = type(pipe).from_pretrained(export)  # the class's own loader, without dm_lightning
np.save(out + "/own.npy", again(image).prediction)
half = DiffusionPipeline.from_pretrained(export, trust_remote_code=True, dtype=torch.bfloat16)
np.save(out + "/half.npy", half(image).prediction)
vae = half.vae
parts = [half.unet.conv_in, half.unet.fftblock.fuse, vae.encoder.conv_in, vae.quant_conv]
parts += [vae.post_quant_conv, vae.decoder.conv_in]
dtypes = dict(zip(["unet", "fe", "encoder", "quant_conv", "post_quant_conv", "decoder"],
                  [str(m.weight.dtype) for m in parts]))
try:
    import dm_lightning  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
names = [type(pipe).__name__, type(pipe.unet).__name__, type(pipe.empty_prompt).__name__]
print(json.dumps({"names": names, "blocked": blocked, "config": dict(pipe.config),
                  "half": dtypes}))
"""
)


def test_export_runs_in_diffusers_without_dm_lightning(export, loaded_net, photo, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, "-c", BLOCKER + REMOTE, str(export), str(PHOTO), str(tmp_path)]
    command.append(str(torch.get_num_threads()))
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["blocked"]
    assert report["names"] == ["DepthMasterPipeline", "DepthMasterUNet", "EmptyPromptEmbedding"]
    assert (report["config"]["target"], report["config"]["default_processing_resolution"]) == (
        "disparity",
        RES,
    )
    ours = DepthMasterPipeline.from_pretrained(export)(photo).prediction
    # same code, same weights, same CPU and thread count: the same float32 operations
    np.testing.assert_array_equal(np.load(tmp_path / "remote.npy"), ours)
    np.testing.assert_array_equal(np.load(tmp_path / "own.npy"), ours)
    np.testing.assert_array_equal(ours, expected_depth(loaded_net, photo))
    # Half precision through diffusers' own loader: the FE block is read in fp32 from the file
    # (DepthMasterUNet._keep_in_fp32_modules) and the first call puts the decoder back in fp32,
    # so it computes what our bf16 pipeline does with the decoder's weights rounded to bf16.
    assert report["half"] == {k: str(v) for k, v in HALF_DTYPES.items()}
    half = DepthMasterPipeline.from_pretrained(export, torch_dtype=torch.bfloat16)
    for module in (half.vae.post_quant_conv, half.vae.decoder):
        module.to(torch.bfloat16).float()  # the rounding of diffusers' cast of the whole VAE
    np.testing.assert_array_equal(np.load(tmp_path / "half.npy"), half(photo).prediction)
    # Tiled: the pipeline's option runs the tiling code shipped in the export, and gives what
    # dm_lightning's predict gives with the same tile size (same functions, same operations).
    rgb = torch.from_numpy(np.asarray(photo).copy()).permute(2, 0, 1)[None]
    (tiled,) = predict_batch(loaded_net, rgb, RES, TILE)
    remote = np.load(tmp_path / "tiled.npy")
    assert remote.shape == (1, 640, 428, 1)  # (N, H, W, 1) of the 428 x 640 (W x H) photo
    np.testing.assert_array_equal(remote[0, :, :, 0], tiled[0].numpy())
