"""Tiled vs global-only prediction on a synthetic scene with dense ground truth, rendered at a
multiple of the training size (issue 18, point 4).

    python tools/benchmark.py tiling --model runs/tiny/stage2/version_0/export \
        --scale 4 --processing-res 128 --tile-size 128 --overlap 32 [--json out.json]

Renders one procedural scene (:func:`~dm_lightning.data.synthetic.render_scene`) at ``scale``
times the source's training size (indoor: 96 x 128 -> 384 x 512 at 4x) and predicts it twice:

* **global**: one pass at ``processing_res``, upsampled to full size (what ``predict`` does);
* **tiled**: :func:`~dm_lightning.inference.tiling.predict_tiled` (global pass + aligned,
  blended full-detail tiles).

Reports, for each: AbsRel and delta1 with the evaluation's own alignment
(:func:`dm_lightning.evaluation.scoring.evaluate_batch`, scale and shift in the model's target
space);
edge sharpness, the mean gradient magnitude of the prediction on ground-truth depth edges
(pixels whose neighbour's depth differs by > ``EDGE_JUMP``) over its mean elsewhere (higher =
sharper edges); and for the tiled map and for the same tiles pasted without alignment or
blending, the 99th percentile and maximum of |difference between neighbouring pixels| across
the tile borders (where tiles meet), elsewhere, and on the other latent-cell boundaries of the
tiles (see :func:`border_jumps`). Timing: the tiled call's seconds per
megapixel and its ratio to the summed seconds inside the network calls it made (global pass
+ tiles): the tiling overhead (resizes, fits, blending); CPU time of the process with
``--threads`` torch threads (1 by default), so other jobs on a shared machine do not count.
The tile outputs are copied for the pasted comparison inside the timed network calls, so the
overhead figure, if anything, counts those copies against the network.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dm_lightning.data.synthetic import SOURCES, render_scene
from dm_lightning.evaluation.scoring import evaluate_batch
from dm_lightning.inference.tiling import axis_tiles, predict_tiled
from dm_lightning.models.loading import load_depthmaster
from dm_lightning.targets import DEFAULT_SPACE

from . import suite_parser

#: Relative depth change between neighbouring pixels that marks a GT depth edge (5 %: far
#: above the change along any smooth surface at these sizes, below every occlusion step).
EDGE_JUMP = 0.05


def depth_edges(depth: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels next to a depth discontinuity of the valid GT."""
    edges = np.zeros(depth.shape, bool)
    for axis in (0, 1):
        a = np.moveaxis(depth, axis, 0)
        step = np.abs(a[1:] - a[:-1]) / np.maximum(np.minimum(a[1:], a[:-1]), 1e-6)
        jump = (step > EDGE_JUMP) & (a[1:] > 0) & (a[:-1] > 0)
        e = np.moveaxis(edges, axis, 0)
        e[1:] |= jump
        e[:-1] |= jump
    return edges


def gradient(pred: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(pred.astype(np.float64))
    return np.hypot(gx, gy)


def sharpness(pred: np.ndarray, edges: np.ndarray, valid: np.ndarray) -> float:
    g = gradient(pred)
    return float(g[edges & valid].mean() / g[~edges & valid].mean())


def border_jumps(
    pred: np.ndarray, tops: list[int], lefts: list[int], th: int, tw: int, factor: int
) -> dict:
    """p99 / max of |neighbour difference| across tile borders and elsewhere; and (``cell``)
    on the other lines that lie, like most borders, between two latent cells of a tile (a
    multiple of ``factor`` from its start): a decoder's latent grid can make every such line
    a little steeper than lines inside a cell, so that is the like-for-like comparison."""
    border, inner, cell = [], [], []
    for axis, starts, span in ((1, lefts, tw), (0, tops, th)):
        d = np.abs(np.diff(pred.astype(np.float64), axis=axis))
        d = np.moveaxis(d, axis, 0)  # d[c] = jump between line c and c + 1
        cuts = {s - 1 for s in starts[1:]} | {s + span - 1 for s in starts[:-1]}
        grid = {s + k - 1 for s in starts for k in range(factor, span, factor)} - cuts
        mask = np.zeros(d.shape[0], bool)
        mask[sorted(cuts)] = True
        border.append(d[mask].ravel())
        inner.append(d[~mask].ravel())
        cell.append(d[sorted(c for c in grid if c < d.shape[0])].ravel())
    b, i, c = np.concatenate(border), np.concatenate(inner), np.concatenate(cell)
    return {
        "border_p99": float(np.percentile(b, 99)),
        "border_max": float(b.max()),
        "inside_p99": float(np.percentile(i, 99)),
        "inside_max": float(i.max()),
        "cell_p99": float(np.percentile(c, 99)),
        "cell_max": float(c.max()),
    }


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``tiling`` sub-command of tools/benchmark.py."""
    parser = suite_parser(
        sub, "tiling", "tiled vs global-only prediction: seams, cost", run, __doc__
    )
    parser.add_argument("--model", required=True, help="model folder (an export) or hub id")
    parser.add_argument("--source", default="indoor", choices=sorted(SOURCES))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scale", type=int, default=4, help="x the source's training size")
    parser.add_argument("--processing-res", type=int, default=128)
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--target", default=DEFAULT_SPACE, help="the model's target space")
    parser.add_argument("--json", default=None, help="write the results here too")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument(
        "--photo",
        default=None,
        help="a real photo instead of a synthetic scene, resized to --photo-size: no ground "
        "truth, so seams and cost only",
    )
    parser.add_argument("--photo-size", default="3840x2160", help="WxH for --photo (4K UHD)")


def run(args: argparse.Namespace) -> dict:
    """Render (or read) the image, predict it both ways, print the results as JSON (and write
    them to ``--json``); returns them."""
    # CPU time of this process with a fixed thread count: other jobs on a shared machine
    # do not count (as tools/benchmark.py measures).
    torch.set_num_threads(args.threads)

    spec = SOURCES[args.source]
    if args.photo:
        width, height = (int(v) for v in args.photo_size.lower().split("x"))
        photo = Image.open(args.photo).convert("RGB").resize((width, height), Image.BICUBIC)
        rgb, depth = np.asarray(photo), None
    else:
        height, width = spec.height * args.scale, spec.width * args.scale
        rgb, depth, _ = render_scene(args.source, args.seed, height, width)
    net = load_depthmaster(args.model).eval()
    image = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None]
    forward_seconds: list[float] = []
    tiles: list[np.ndarray] = []

    def timed(x: torch.Tensor) -> torch.Tensor:
        start = time.process_time()
        out = net.predict(x, None)
        forward_seconds.append(time.process_time() - start)
        tiles.append(out[0, 0].numpy().copy())
        return out

    with torch.inference_mode():
        net.predict(image[..., :128, :128], None)  # warm-up: first-call allocations
        glob = net.predict(image, args.processing_res)[0, 0].numpy()
        start = time.process_time()
        tiled = predict_tiled(
            timed, image, args.processing_res, args.tile_size, args.overlap, net.latent_factor
        )[0, 0].numpy()
        total = time.process_time() - start

    th, tops = axis_tiles(height, args.tile_size, args.overlap, net.latent_factor)
    tw, lefts = axis_tiles(width, args.tile_size, args.overlap, net.latent_factor)
    pasted = np.zeros_like(tiled)
    for (top, left), tile in zip(((t, x) for t in tops for x in lefts), tiles[1:]):
        pasted[top : top + th, left : left + tw] = tile
    results: dict = {
        "image": f"{args.photo}, {height}x{width}"
        if args.photo
        else f"{args.source} seed {args.seed}, {height}x{width} ({args.scale}x training)",
        "processing_res": args.processing_res,
        "tile_size": args.tile_size,
        "overlap": args.overlap,
        "tiles": len(tiles) - 1,
    }
    for name, pred in (("global", glob), ("tiled", tiled)):
        results[name] = border_jumps(pred, tops, lefts, th, tw, net.latent_factor)
        if depth is not None:  # a synthetic scene: its ground truth scores the prediction
            gt = torch.from_numpy(depth)[None].double()
            metrics, _ = evaluate_batch(
                torch.from_numpy(pred)[None].double(), gt, gt > 0, spec.min_depth,
                spec.max_depth, args.target,
            )  # fmt: skip
            results[name].update(
                abs_rel=float(metrics["abs_rel"][0]),
                delta1=float(metrics["delta1"][0]),
                edge_sharpness=sharpness(pred, depth_edges(depth), depth > 0),
            )
    results["pasted_unaligned"] = border_jumps(pasted, tops, lefts, th, tw, net.latent_factor)
    megapixels = height * width / 1e6
    results["timing"] = {
        "tiled_s": total,
        "forwards_s": sum(forward_seconds),
        "tiled_s_per_mp": total / megapixels,
        "tiled_over_forwards": total / sum(forward_seconds),
    }
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results
