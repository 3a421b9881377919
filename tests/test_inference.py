"""Depth maps of real photos: the Python API (``predict_images``) and ``dm-lightning predict
--config configs/predict.yaml`` from a model folder, a released-style folder and a stage
checkpoint; the files written per image (npy, 16-bit PNG, colour PNG) read back and checked
against the network's own output."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import cli_args
from PIL import Image

from dm_lightning import load_depthmaster, predict_images
from dm_lightning.cli import main, run_cli
from dm_lightning.data.predict import ImageFolder
from dm_lightning.errors import ConfigError, MissingPathError
from dm_lightning.inference.outputs import BackgroundWriter, stretch_to_unit
from dm_lightning.models.unet_hooks import attach_fourier_enhancement
from dm_lightning.testing.tiny_model import make_tiny_depthmaster
from dm_lightning.visualize import colorize_depth

REPO = Path(__file__).resolve().parent.parent
WILD = REPO / "tests" / "data" / "in_the_wild"
SCRIPT = Path(sys.executable).parent / "dm-lightning"
RES = 64  # processing_res of every test: the tiny model at 64 px long edge is fast
# photo -> (width, height) as stored; in the layout of the `photos` fixture
SIZES = {"02": (428, 640), "06": (1024, 811), "07": (768, 644)}
LAYOUT = {"02": "02", "06": "sub/06", "07": "sub/deeper/07"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """The three real JPEGs in sub-folders, plus a truncated JPEG (unreadable)."""
    root = tmp_path_factory.mktemp("photos")
    for name, key in LAYOUT.items():
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(WILD / f"{name}.jpg", root / f"{key}.jpg")
    data = (WILD / "06.jpg").read_bytes()
    (root / "sub" / "broken.jpg").write_bytes(data[: len(data) // 4])
    return root


@pytest.fixture(scope="module")
def stage2_checkpoint(tmp_path_factory, tiny_model, data_config) -> dict:
    """A Stage2 run of one step from the tiny model, saved as a Lightning checkpoint."""
    root = tmp_path_factory.mktemp("ckpt_run")
    configs = [REPO / "configs" / "tiny" / "stage2.yaml", data_config]
    cli = run_cli(cli_args("fit", configs, tiny_model, root, trainer__max_steps=1))
    path = root / "stage2.ckpt"
    cli.trainer.save_checkpoint(path)
    return {"path": path, "net": cli.model.net.eval()}


def read_outputs(base: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(npy, 16-bit PNG, colour PNG) of one key."""
    npy = np.load(base.with_name(base.name + ".npy"))
    png = np.asarray(Image.open(base.with_name(base.name + ".png")))
    color = Image.open(base.with_name(base.name + "_color.png"))
    assert color.mode == "RGB"
    return npy, png, np.asarray(color)


def network_depth(net, path: Path) -> np.ndarray:
    """What the network predicts for an image file at RES, (H, W)."""
    rgb = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())
    return net.predict(rgb.permute(2, 0, 1)[None], RES)[0, 0].numpy()


def test_predict_images_writes_npy_png16_and_colour_at_input_size(
    tiny_model, photos, tmp_path, capfd
):
    out = tmp_path / "out"
    summary = predict_images(str(tiny_model), photos, out, processing_res=RES, device="cpu")
    captured = capfd.readouterr()
    assert summary.written == 3 and summary.output_dir == out
    assert [p for p, _ in summary.skipped] == [str(photos / "sub" / "broken.jpg")]
    line = f"[dm_lightning] wrote 3 depth maps to {out}, skipped 1 unreadable file"
    assert line in captured.out
    assert "Predicting" in captured.err and "4/4" in captured.err  # bar with its total
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted(
        f"{k}{s}" for k in LAYOUT.values() for s in (".npy", ".png", "_color.png")
    )
    net = load_depthmaster(tiny_model).eval()
    for name, key in LAYOUT.items():
        width, height = SIZES[name]
        npy, png, color = read_outputs(out / key)
        assert npy.dtype == np.float32 and npy.shape == (height, width)
        assert 0.0 <= npy.min() < npy.max() <= 1.0
        assert png.dtype == np.uint16 and png.shape == (height, width)
        assert (png.min(), png.max()) == (0, 65535)
        unit = (npy - npy.min()) / (npy.max() - npy.min())
        np.testing.assert_array_equal(png, np.round(unit * 65535).astype(np.uint16))
        assert color.dtype == np.uint8 and color.shape == (height, width, 3)
        np.testing.assert_array_equal(color, colorize_depth(stretch_to_unit(npy)))
    # the raw network output, not a stretched one
    npy, _, color = read_outputs(out / "02")
    np.testing.assert_allclose(npy, network_depth(net, photos / "02.jpg"), atol=1e-5)
    # near (the largest value) is red, far blue: Spectral's ends
    near, far = np.unravel_index(npy.argmax(), npy.shape), np.unravel_index(npy.argmin(), npy.shape)
    assert color[near][0] > color[near][2] and color[far][2] > color[far][0]


def test_single_file_glob_and_exif_orientation(tiny_model, photos, tmp_path):
    net = load_depthmaster(tiny_model).eval()
    one = predict_images(net, photos / "sub" / "06.jpg", tmp_path / "one", RES, progress=False)
    assert one.written == 1 and not one.skipped
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [
        "06.npy",
        "06.png",
        "06_color.png",
    ]
    # a glob: keys relative to its leading folder without wildcards; broken.jpg is not matched
    pattern = str(photos / "**" / "0[7].jpg")
    globbed = predict_images(net, pattern, tmp_path / "glob", RES, progress=False)
    assert (globbed.written, globbed.skipped) == (1, [])
    written = sorted(
        p.relative_to(tmp_path / "glob").as_posix() for p in (tmp_path / "glob").rglob("*.*")
    )
    assert written == ["sub/deeper/07.npy", "sub/deeper/07.png", "sub/deeper/07_color.png"]
    # a phone photo stored landscape (64 x 40) with "rotate 90" in EXIF is 40 wide, 64 high
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = tmp_path / "phone" / "portrait.jpg"
    rotated.parent.mkdir()
    Image.open(WILD / "07.jpg").resize((64, 40)).save(rotated, exif=exif)
    assert ImageFolder(str(rotated))[0]["rgb"].shape == (3, 64, 40)
    predict_images(net, rotated, tmp_path / "phone_out", RES, progress=False)
    npy, png, color = read_outputs(tmp_path / "phone_out" / "portrait")
    assert npy.shape == png.shape == color.shape[:2] == (64, 40)


def test_predict_images_refuses_bad_arguments(tiny_model, photos, tmp_path):
    net = make_tiny_depthmaster(0)
    with pytest.raises(MissingPathError, match="predict folder or file not found: .*nowhere"):
        predict_images(net, tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ConfigError, match=r"processing_res must be a long edge in pixels >= 8"):
        predict_images(net, photos, tmp_path / "out", processing_res=0)
    (tmp_path / "clash").mkdir()
    for name in ("a.jpg", "a_color.png"):
        shutil.copy(WILD / "02.jpg", tmp_path / "clash" / name)
    with pytest.raises(ConfigError, match="colour image of a goes"):
        predict_images(net, tmp_path / "clash", tmp_path / "out")


def test_background_writer_raises_a_failed_write_and_checks_keys_at_once(tmp_path):
    (tmp_path / "sub").write_text("a file where the key's folder goes")
    writer = BackgroundWriter(tmp_path)
    writer.submit("ok", np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4))
    writer.submit("sub/x", np.zeros((3, 4), np.float32))
    with pytest.raises(FileExistsError):
        writer.close()
    assert np.load(tmp_path / "ok.npy").shape == (3, 4)  # the write before it is on disk
    with BackgroundWriter(tmp_path) as writer, pytest.raises(ConfigError, match="outside"):
        writer.submit("../x", np.zeros((3, 4), np.float32))
    # an error already on its way is not replaced by a write that failed with it
    with pytest.raises(KeyboardInterrupt), BackgroundWriter(tmp_path) as writer:
        writer.submit("sub/y", np.zeros((3, 4), np.float32))  # fails: "sub" is a file
        raise KeyboardInterrupt


def test_colours_follow_the_target_recorded_with_the_model(tmp_path, photos):
    """A depth-target model's 1 = far: near is still red, in the API and in the CLI writer
    (whose task target is the default sqrt_disparity; the export's record wins)."""
    import lightning as L

    from dm_lightning.data.datamodule import DepthDataModule
    from dm_lightning.training.base import DepthMasterTask
    from dm_lightning.training.callbacks import DepthPredictionWriter

    folder = make_tiny_depthmaster(0).save_pretrained(tmp_path / "m", {"target": "depth"})
    image = photos / "02.jpg"
    predict_images(folder, image, tmp_path / "api", RES, progress=False)
    writer = DepthPredictionWriter(str(tmp_path / "cli"))
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer]
    )
    task = DepthMasterTask(str(folder), processing_res=RES)
    trainer.predict(task, datamodule=DepthDataModule(predict=str(image), num_workers=0))
    for out in ("api", "cli"):
        npy, _, color = read_outputs(tmp_path / out / "02")
        np.testing.assert_array_equal(color, colorize_depth(1.0 - stretch_to_unit(npy)))


def test_released_style_folder_with_fe_block(tmp_path, photos):
    """The released DepthMaster layout: diffusers vae/ + unet/ whose weights carry fftblock.*,
    and no dm_lightning metadata."""
    net = make_tiny_depthmaster(3)
    attach_fourier_enhancement(net.unet)
    with torch.no_grad():
        net.unet.fftblock.fuse.weight.normal_()  # not the identity it starts as
    folder = net.save_pretrained(tmp_path / "released")
    (folder / "dm_lightning.json").unlink()
    summary = predict_images(folder, photos / "02.jpg", tmp_path / "out", RES, progress=False)
    assert summary.written == 1
    npy, _, _ = read_outputs(tmp_path / "out" / "02")
    np.testing.assert_allclose(npy, network_depth(net.eval(), photos / "02.jpg"), atol=1e-5)


def test_checkpoint_loads_its_trained_network(stage2_checkpoint, photos, tmp_path):
    path, trained = stage2_checkpoint["path"], stage2_checkpoint["net"]
    net = load_depthmaster(path)
    assert hasattr(net.unet, "fftblock")  # stage 2 attached one to the plain tiny U-Net
    own = net.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in trained.state_dict().items())
    summary = predict_images(path, photos / "02.jpg", tmp_path / "out", RES, progress=False)
    assert summary.written == 1
    npy, _, _ = read_outputs(tmp_path / "out" / "02")
    np.testing.assert_allclose(npy, network_depth(trained, photos / "02.jpg"), atol=1e-5)

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    # A full checkpoint of an EMAWeights run gives the average, as the export would.
    name = "net.unet.conv_out.bias"
    average = torch.full_like(checkpoint["state_dict"][name], 0.25)
    checkpoint["callbacks"]["EMAWeights{decay=0.9, start_step=0}"] = {
        "names": [name],
        "average": [average],
        "last_step": 1,
    }
    torch.save(checkpoint, tmp_path / "ema.ckpt")
    assert torch.equal(load_depthmaster(tmp_path / "ema.ckpt").unet.conv_out.bias, average)
    # The frozen VAE comes from the checkpoint's model_path: gone, it is named.
    checkpoint["hyper_parameters"]["model_path"] = str(tmp_path / "deleted-model")
    torch.save(checkpoint, tmp_path / "orphan.ckpt")
    with pytest.raises(MissingPathError, match=r"orphan.ckpt needs its model_path .*deleted-model"):
        load_depthmaster(tmp_path / "orphan.ckpt")
    with pytest.raises(MissingPathError, match="checkpoint .*absent.ckpt not found"):
        load_depthmaster(tmp_path / "absent.ckpt")


def test_installed_script_predicts_from_a_checkpoint(stage2_checkpoint, photos, tmp_path):
    out = tmp_path / "depth"
    command = [
        str(SCRIPT), "predict", "--config", str(REPO / "configs" / "predict.yaml"),
        "--model.init_args.model_path", str(stage2_checkpoint["path"]),
        "--data.init_args.predict", str(photos),
        "--trainer.callbacks.init_args.output_dir", str(out),
        "--model.init_args.processing_res", str(RES),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"wrote 3 depth maps to {out}, skipped 1 unreadable file" in result.stdout
    for name, key in LAYOUT.items():
        width, height = SIZES[name]
        npy, png, color = read_outputs(out / key)
        assert npy.shape == png.shape == color.shape[:2] == (height, width)
        assert (png.min(), png.max()) == (0, 65535)
    assert not list(tmp_path.glob("lightning_logs"))  # logger: false
    assert not (tmp_path / "config.yaml").exists()  # no run folder, so no saved config
    missing = command[:6] + ["--data.init_args.predict", str(tmp_path / "no-such-folder")]
    result = subprocess.run(missing, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"dm-lightning: error: predict folder or file not found: {tmp_path / 'no-such-folder'} "
        "(data.predict)"
    ]


README_SNIPPET = """
import numpy as np
import torch
from PIL import Image, ImageOps

from dm_lightning import load_depthmaster

model = load_depthmaster("path/to/model").eval()  # a model folder, hub id or .ckpt
image = ImageOps.exif_transpose(Image.open("photo.jpg")).convert("RGB")
rgb = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None]  # (1, 3, H, W) uint8
depth = model.predict(rgb, processing_res=768)[0, 0]  # (H, W) float in [0, 1], 1 = near
"""


def test_readme_python_snippet_runs(tiny_model):
    assert README_SNIPPET.strip() in (REPO / "README.md").read_text(), "README's snippet changed"
    code = README_SNIPPET.replace("path/to/model", str(tiny_model))
    code = code.replace("photo.jpg", str(WILD / "02.jpg")).replace("768", str(RES))
    scope: dict = {}
    exec(compile(code, "README snippet", "exec"), scope)
    depth = scope["depth"]
    assert depth.shape == (640, 428) and depth.dtype == torch.float32
    assert 0.0 <= float(depth.min()) < float(depth.max()) <= 1.0


def test_cli_predict_does_not_keep_the_maps_in_memory(capsys):
    """The writer saves every map; Lightning's default (return_predictions on one device)
    would also keep them all, so memory would grow with the folder."""
    with pytest.raises(SystemExit):
        main(["predict", "--config", str(REPO / "configs" / "predict.yaml"), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["return_predictions"] is False
