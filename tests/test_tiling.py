"""Tiled high-resolution prediction (dm_lightning.inference.tiling): blending weights, exact
recovery of per-tile affine distortions, no seams, bounded tile inputs, and the option reaching
the tiled path from the Python API and the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dm_lightning import load_depthmaster, predict_images
from dm_lightning.cli import main
from dm_lightning.errors import ConfigError
from dm_lightning.inference.tiling import (
    axis_tiles,
    axis_weights,
    predict_tiled,
    tile_layout,
)

REPO = Path(__file__).resolve().parent.parent


def smooth_field(height: int, width: int) -> torch.Tensor:
    """(H, W) float64 in [0.2, 0.8] with no flat region (every tile has a clear spread)."""
    y, x = torch.meshgrid(
        torch.linspace(0, 1, height, dtype=torch.float64),
        torch.linspace(0, 1, width, dtype=torch.float64),
        indexing="ij",
    )
    return 0.5 + 0.15 * torch.sin(7 * x + 1) + 0.15 * torch.cos(5 * y) * (0.5 + x)


@pytest.mark.parametrize("length", [47, 48, 49, 100, 150, 200, 513])
def test_axis_weights_sum_to_one_are_smooth_and_full_at_the_edges(length):
    span, starts = axis_tiles(length, 48, 12, 8)
    assert span % 8 == 0 and starts[0] == 0 and starts[-1] + span == length
    weights = axis_weights(length, span, starts)
    total = torch.zeros(length, dtype=torch.float64)
    for start, w in zip(starts, weights):
        assert float(w.min()) > 0.0 and float(w.max()) <= 1.0
        total[start : start + span] += w
    # Sums of a few float64 numbers in [0, 1]: exact up to a few ulps of 1.
    assert float((total - 1).abs().max()) <= 4 * torch.finfo(torch.float64).eps
    assert float(weights[0][0]) == 1.0 and float(weights[-1][-1]) == 1.0  # image edges
    # Smooth: sin^2 over an overlap of n pixels changes by at most pi / (2 n) per pixel.
    if len(starts) > 1:
        n = min(a + span - b for a, b in zip(starts, starts[1:]))  # the shortest overlap
        for w in weights:
            assert float(w.diff().abs().max()) <= math.pi / (2 * n) + 1e-12


def test_a_known_affine_per_tile_is_recovered_exactly():
    """The global pass sees the ground truth D (processing_res = the image's long edge, so
    the global pass runs at full size), every tile a different s * D + b (one tile a constant,
    an ill-conditioned fit that must fall back to the global pass): the blend is D again."""
    height, width = 96, 144
    truth = smooth_field(height, width).float()
    image = truth.expand(3, height, width)[None].clone()  # channel 0 carries D
    calls: list[tuple[int, ...]] = []

    def predict_fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        k = len(calls)
        if k == 1:  # the global pass
            return x[:, :1]
        if k == 4:  # a flat tile: its scale cannot be fitted
            return torch.full_like(x[:, :1], 0.5)
        return (0.3 + 0.15 * k) * x[:, :1] + 0.04 * k - 0.2

    out = predict_tiled(predict_fn, image, processing_res=144, tile_size=48, overlap=16)
    assert calls[0] == (1, 3, height, width)
    assert len(calls) == 1 + len(tile_layout(height, width, 48, 16, 8)) > 8
    # float64 fit, float32 sums of <= 4 weighted terms of values <= 1: a few float32 ulps.
    assert out.shape == (1, 1, height, width) and out.dtype == torch.float32
    assert float((out[0, 0] - truth).abs().max()) <= 1e-6


def border_and_interior_jumps(depth: torch.Tensor, starts: list[int], span: int):
    """|difference| between neighbouring columns at the tiles' first and one-past-last
    columns (where hard-pasted tiles would meet) and at every other column."""
    jumps = depth[:, 1:] - depth[:, :-1]  # jumps[:, c] is between columns c and c + 1
    borders = {s - 1 for s in starts[1:]} | {s + span - 1 for s in starts[:-1]}
    inner = [c for c in range(jumps.shape[1]) if c not in borders]
    return jumps[:, sorted(borders)].abs(), jumps[:, inner].abs()


def test_no_seam_where_tiles_meet():
    """Tiles that disagree non-linearly with the layout (a per-tile gamma the affine fit
    cannot undo) still leave no seam: the largest jump across the columns where tiles meet is
    no larger than the largest jump elsewhere. The same tiles pasted without blending do
    show the seam, so the measure can tell."""
    height, width = 64, 320
    truth = smooth_field(height, width).float()
    image = truth.expand(3, height, width)[None].clone()
    gammas = iter([1.0, 0.7, 1.4, 0.8, 1.3, 0.75, 1.25, 0.9, 1.2])
    tiles: list[torch.Tensor] = []

    def predict_fn(x: torch.Tensor) -> torch.Tensor:
        out = x[:, :1] ** next(gammas)
        tiles.append(out[0, 0])
        return out

    out = predict_tiled(predict_fn, image, processing_res=80, tile_size=64, overlap=24)[0, 0]
    span, starts = axis_tiles(width, 64, 24, 8)
    border, interior = border_and_interior_jumps(out, starts, span)
    assert float(border.max()) <= float(interior.max())
    pasted = torch.zeros(height, width)
    for start, tile in zip(starts, tiles[1:]):
        pasted[:, start : start + span] = tile
    border, interior = border_and_interior_jumps(pasted, starts, span)
    assert float(border.max()) > 2 * float(interior.max())


def test_predict_fn_only_sees_the_working_size_and_single_tiles():
    height, width, tile = 200, 328, 64
    seen: list[tuple[int, ...]] = []

    def predict_fn(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return x[:, :1]

    image = (torch.rand(3, height, width) * 255).to(torch.uint8)
    out = predict_tiled(predict_fn, image, processing_res=48, tile_size=tile)
    assert out.shape == (1, 1, height, width) and 0.0 <= float(out.min()) <= float(out.max()) <= 1
    assert seen[0] == (1, 3, 32, 48)  # the global pass at the processing resolution
    assert set(seen[1:]) == {(1, 3, tile, tile)}  # one tile at a time, never the image
    assert len(seen) - 1 == len(tile_layout(height, width, tile, tile // 4, 8))


def test_tiling_options_are_checked():
    identity = lambda x: x[:, :1]  # noqa: E731
    image = torch.zeros(1, 3, 64, 64)
    with pytest.raises(ConfigError, match=r"tile_size must be .* multiple of the VAE factor 8"):
        predict_tiled(identity, image, 32, tile_size=30)
    with pytest.raises(ConfigError, match=r"tile_overlap must be .*\[0, tile_size=32\), got 32"):
        predict_tiled(identity, image, 32, tile_size=32, overlap=32)
    with pytest.raises(ConfigError, match="needs a processing_res in pixels"):
        predict_tiled(identity, image, None, tile_size=32)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory) -> Path:
    """A 64 x 96 photo (real JPEG content, resized), larger than the 32-pixel tiles, and a
    smaller one of another size beside it (``b.png``, 40 x 56)."""
    folder = tmp_path_factory.mktemp("big")
    photo = Image.open(REPO / "tests" / "data" / "in_the_wild" / "07.jpg")
    photo.resize((96, 64)).save(folder / "photo.png")
    photo.resize((56, 40)).save(folder / "b.png")
    return folder / "photo.png"


def test_api_and_cli_options_reach_the_tiled_path(tiny_model, big_photo, tmp_path, capsys):
    net = load_depthmaster(tiny_model).eval()  # the same weights predict_images loads
    rgb = torch.from_numpy(np.asarray(Image.open(big_photo)).copy()).permute(2, 0, 1)
    with torch.inference_mode():
        expected = predict_tiled(lambda x: net.predict(x, None), rgb, 48, 32, 8)[0, 0].numpy()
        single = net.predict(rgb[None], 48)[0, 0].numpy()
    assert np.abs(expected - single).max() > 1e-3  # tiling changes the result
    predict_images(
        tiny_model, big_photo, tmp_path / "api", 48, "cpu", tile_size=32, tile_overlap=8,
        progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(np.load(tmp_path / "api" / "photo.npy"), expected)
    args = [
        "predict", "--config", str(REPO / "configs" / "predict.yaml"),
        "--model.init_args.model_path", str(tiny_model),
        "--data.init_args.predict", str(big_photo.parent),  # both sizes in one batch
        "--data.init_args.predict_batch_size", "2",
        "--data.init_args.num_workers", "0",
        "--trainer.accelerator", "cpu",
        "--trainer.callbacks.init_args.output_dir", str(tmp_path / "cli"),
        "--model.init_args.processing_res", "48",
        "--model.init_args.tile_size", "32",
        "--model.init_args.tile_overlap", "8",
        "--model.init_args.inference_dtype", "bf16",
    ]  # fmt: skip
    assert main(args) == 0
    predict_images(
        tiny_model, big_photo, tmp_path / "bf16", 48, "cpu", tile_size=32, tile_overlap=8,
        dtype="bf16", progress=False,
    )  # fmt: skip
    bf16 = np.load(tmp_path / "bf16" / "photo.npy")
    assert np.abs(bf16 - expected).max() > 0  # the dtype reached the network
    np.testing.assert_array_equal(np.load(tmp_path / "cli" / "photo.npy"), bf16)
    assert np.load(tmp_path / "cli" / "b.npy").shape == (40, 56)
    capsys.readouterr()
    assert main([*args[:-6], "--model.init_args.tile_size", "30"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dm-lightning: error: tile_size must be a tile edge in pixels")
    native = [*args[:-7], "native", "--model.init_args.tile_size", "32"]
    assert main(native) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dm-lightning: error: model.init_args.tile_size needs a")


def test_benchmark_suite_runs_and_reports_every_figure(tiny_model, tmp_path):
    import json
    import subprocess
    import sys

    args = ["tiling", "--model", str(tiny_model), "--scale", "1", "--processing-res", "64",
            "--tile-size", "64", "--overlap", "16", "--json", str(tmp_path / "r.json")]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "benchmark.py"), *args],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "r.json").read_text())
    assert json.loads(done.stdout) == results  # printed and written alike
    assert results["tiles"] == 6  # 96 x 128 in 64-pixel tiles: 2 rows of 3
    for name in ("global", "tiled"):
        assert 0 < results[name]["abs_rel"] < 10 and results[name]["edge_sharpness"] > 0
        assert results[name]["border_max"] >= results[name]["border_p99"] >= 0
    assert results["timing"]["tiled_s"] >= results["timing"]["forwards_s"] > 0
