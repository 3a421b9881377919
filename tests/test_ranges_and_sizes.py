"""Documented ranges and sizes hold (issue 17, point 5): predictions exactly in [0, 1] after the
resize back to an odd input size; readers of predictions accept float rounding within a stated
tolerance; ``processing_res`` is a long edge >= the VAE factor, defaulting to the one recorded
with the model; oversized photos are refused before decoding; predict never writes over an
input image."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dm_lightning import load_depthmaster, predict_images
from dm_lightning.data import photos
from dm_lightning.data.photos import PhotoTooLargeError, read_photo
from dm_lightning.errors import ConfigError, InputFileError
from dm_lightning.inference.depth_files import RANGE_TOLERANCE, load_prediction
from dm_lightning.inference.metric_depth import relative_to_depth
from dm_lightning.models import pipeline_depthmaster
from dm_lightning.models.model_facts import ModelFacts, recorded_processing_res
from dm_lightning.models.pipeline_depthmaster import DEFAULT_PROCESSING_RES
from dm_lightning.testing.tiny_model import TINY_PROCESSING_RES, make_tiny_depthmaster

REPO = Path(__file__).resolve().parent.parent
WILD = REPO / "tests" / "data" / "in_the_wild"


@pytest.fixture(scope="module")
def odd_photos(tmp_path_factory) -> Path:
    """Two real photos resized to sizes that are not multiples of 8: 257x199 and 199x311."""
    root = tmp_path_factory.mktemp("odd")
    Image.open(WILD / "02.jpg").convert("RGB").resize((257, 199)).save(root / "wide.png")
    Image.open(WILD / "07.jpg").convert("RGB").resize((199, 311)).save(root / "tall.jpg")
    return root


def test_prediction_is_in_unit_range_after_the_resize_back(monkeypatch):
    """A decoder output saturated at -1 / 1 pixel by pixel makes the antialiased resize back to
    257x199 overshoot by float rounding (-6e-8); the clip after it keeps [0, 1] exact."""
    net = make_tiny_depthmaster(0).eval()
    generator = torch.Generator().manual_seed(0)

    def saturated(latent):
        b, _, h, w = latent.shape
        f = net.latent_factor
        return (torch.rand(b, 1, h * f, w * f, generator=generator) > 0.5).float() * 2 - 1

    # predict runs the pipeline's inference function, which decodes through decode_depth
    monkeypatch.setattr(pipeline_depthmaster, "decode_depth", lambda vae, latent: saturated(latent))
    rgb = torch.randint(0, 256, (1, 3, 199, 257), dtype=torch.uint8)
    raw = saturated(torch.zeros(1, 4, 25, 32))
    resized = torch.nn.functional.interpolate(
        raw, size=(199, 257), mode="bilinear", align_corners=False, antialias=True
    )
    assert float(resized.min()) < -1.0  # the overshoot this guards against is real here
    depth = net.predict(rgb, 256)
    assert depth.shape == (1, 1, 199, 257)
    assert float(depth.min()) == 0.0 and float(depth.max()) == 1.0


@pytest.mark.parametrize("bad", [0, -5, 7, 7.5, True, "abc"])
def test_processing_res_must_be_a_long_edge_of_at_least_the_vae_factor(bad, odd_photos, tmp_path):
    net = make_tiny_depthmaster(0)
    expected = rf"processing_res must be a long edge in pixels >= 8 .*got {bad!r}"
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        predict_images(net, odd_photos, tmp_path / "out", processing_res=bad, progress=False)
    with pytest.raises(ConfigError, match="processing_res must be a long edge"):
        net.predict(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), bad)
    assert not (tmp_path / "out").exists()


def test_native_runs_at_each_images_own_size():
    net = make_tiny_depthmaster(0).eval()
    assert net.working_size(199, 257, "native") == net.working_size(199, 257, None) == (200, 256)
    assert net.working_size(199, 257, 8) == (8, 8)  # the smallest valid long edge


def test_predict_default_is_the_recorded_resolution(tiny_model, odd_photos, tmp_path):
    """The tiny model records 256; nothing recorded (a folder without it) means 768."""
    assert recorded_processing_res(tiny_model) == TINY_PROCESSING_RES == 256
    assert recorded_processing_res(tmp_path / "nowhere") is None
    assert DEFAULT_PROCESSING_RES == 768
    predict_images(tiny_model, odd_photos / "wide.png", tmp_path / "out", progress=False)
    net = load_depthmaster(tiny_model).eval()
    rgb = torch.from_numpy(read_photo(odd_photos / "wide.png").copy()).permute(2, 0, 1)[None]
    written = np.load(tmp_path / "out" / "wide.npy")
    assert written.shape == (199, 257)
    assert 0.0 <= written.min() and written.max() <= 1.0
    # Same network and code at 256 px up to float32 summation order (values in [0, 1]: a few
    # float32 steps of 6e-8); at another resolution the map differs by orders more.
    gaps = {
        res: float(np.abs(written - net.predict(rgb, res)[0, 0].numpy()).max())
        for res in (TINY_PROCESSING_RES, 128)
    }
    assert gaps[TINY_PROCESSING_RES] < 1e-6 and gaps[128] > 1e-3


def test_a_loaded_network_carries_what_its_model_records(tiny_model, odd_photos, tmp_path):
    """``net.facts``, set by the loader from the folder, is what predict_images reads: the tiny
    model's 256 px (no target recorded: the recipe's, 1 = near); a network built in memory
    records nothing (768 px, 1 = near); a depth-target folder means 1 = far."""
    net = load_depthmaster(tiny_model).eval()
    assert net.facts == ModelFacts(None, TINY_PROCESSING_RES)
    assert (net.facts.target, net.facts.near_is_one) == ("sqrt_disparity", True)
    built = make_tiny_depthmaster(0)
    assert built.facts == ModelFacts()
    assert (built.facts.processing_res, built.facts.near_is_one) == (DEFAULT_PROCESSING_RES, True)
    image = odd_photos / "wide.png"
    predict_images(tiny_model, image, tmp_path / "path", progress=False)
    predict_images(net, image, tmp_path / "net", progress=False)
    np.testing.assert_array_equal(
        np.load(tmp_path / "net" / "wide.npy"), np.load(tmp_path / "path" / "wide.npy")
    )
    folder = built.save_pretrained(tmp_path / "depth", {"target": "depth", "processing_res": 64})
    far = load_depthmaster(folder).facts
    assert far == ModelFacts("depth", 64) and not far.near_is_one


def test_a_checkpoint_records_its_own_resolution_else_its_base_models(tiny_model, tmp_path):
    """A stage checkpoint's processing_res hyper-parameter, else its model_path's record."""
    for own, expected in ((None, TINY_PROCESSING_RES), (96, 96)):
        path = tmp_path / f"{own}.ckpt"
        hparams = {"model_path": str(tiny_model), "processing_res": own}
        torch.save({"hyper_parameters": hparams, "state_dict": {}}, path)
        assert recorded_processing_res(path) == expected
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    assert recorded_processing_res(tmp_path / "text.ckpt") is None  # the loaders say why


def test_predict_refuses_to_write_over_an_input_image(odd_photos, tmp_path):
    """Output folder = input folder: ``a.png``'s depth PNG would replace the photo."""
    folder = tmp_path / "same"
    folder.mkdir()
    (folder / "a.png").write_bytes((odd_photos / "wide.png").read_bytes())
    before = (folder / "a.png").read_bytes()
    net = make_tiny_depthmaster(0)
    with pytest.raises(ConfigError, match=rf"over the input image {folder / 'a.png'}"):
        predict_images(net, folder, folder, processing_res=8, progress=False)
    assert (folder / "a.png").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["a.png"]
    # a JPEG input shares no name with its outputs: the same folder works
    (folder / "a.png").rename(folder / "b.jpg")
    summary = predict_images(net, folder, folder, processing_res=8, progress=False)
    assert summary.written == 1 and (folder / "b.png").is_file()


def test_oversized_photos_are_refused_before_decoding(odd_photos, tmp_path, monkeypatch, caplog):
    """Over MAX_PHOTO_PIXELS (64 MP; lowered here to 60000 so that 257x199 = 51143 passes and
    199x311 = 61889 does not): a clear error naming the size and the limit, and predict skips
    the file with a warning naming it, as it does unreadable files; PIL's own bomb guard gives
    the same error instead of its warning."""
    # At the real limit: 9238x6928 is 864 pixels over, stated exactly (a 1-bit PNG of that
    # size is 8 KB on disk; only its header is read).
    huge = tmp_path / "huge.png"
    Image.new("1", (9238, 6928)).save(huge)
    with pytest.raises(PhotoTooLargeError) as refused:
        read_photo(huge)
    assert str(refused.value) == (
        "9238x6928 = 64,000,864 pixels, over the limit of 64,000,000: downscale it first "
        "(e.g. to a 4000-pixel long edge)"
    )
    monkeypatch.setattr(photos, "MAX_PHOTO_PIXELS", 60_000)
    with pytest.raises(
        PhotoTooLargeError, match=r"^199x311 = 61,889 pixels, over the limit of 60,000:"
    ):
        read_photo(odd_photos / "tall.jpg")
    assert read_photo(odd_photos / "wide.png").shape == (199, 257, 3)
    net = make_tiny_depthmaster(0)
    summary = predict_images(net, odd_photos, tmp_path / "out", processing_res=8, progress=False)
    assert summary.written == 1
    assert [path for path, _ in summary.skipped] == [str(odd_photos / "tall.jpg")]
    assert f"skipped unreadable image {odd_photos / 'tall.jpg'}: PhotoTooLargeError" in caplog.text
    # PIL warns above MAX_IMAGE_PIXELS and refuses above twice it: 51143 warns, 61889 refused
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning
        assert read_photo(odd_photos / "wide.png", max_pixels=10**9).shape == (199, 257, 3)
        with pytest.raises(PhotoTooLargeError, match="decompression bomb"):
            read_photo(odd_photos / "tall.jpg", max_pixels=10**9)


def test_prediction_readers_accept_float_rounding_within_the_stated_tolerance(tmp_path):
    pred = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
    pred[0, 0], pred[2, 3] = -5.96e-8, 1.0 + 1.2e-7  # what older predict outputs hold
    np.save(tmp_path / "old.npy", pred)
    loaded = load_prediction(tmp_path / "old.npy")
    assert loaded[0, 0] == 0.0 and loaded[2, 3] == 1.0
    assert np.array_equal(loaded[0, 1:], pred[0, 1:])
    depth = relative_to_depth(pred, 0.5, 10.0)  # also given the array directly
    assert depth[0, 0] == pytest.approx(10.0) and depth[2, 3] == pytest.approx(0.5)
    beyond = pred.copy()
    beyond[1, 1] = -2 * RANGE_TOLERANCE
    with pytest.raises(InputFileError, match=r"must be in \[0, 1\] \(within 1e-06\).*-2e-06"):
        relative_to_depth(beyond, 0.5, 10.0)
