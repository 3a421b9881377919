"""``eval``: evaluation throughput.

Times dm_lightning's batched float64 evaluation against two per-image paths on the same
predictions and checks all agree to 1e-6: the published evaluation script's steps (numpy least
squares on the masked pixels, then one torch function per metric, in float32 as the script runs
on float32 predictions) and a lean float64 numpy implementation (``dm_lightning.testing.reference``,
the one the tests check the fast path against).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from dm_lightning.evaluation.scoring import METRIC_NAMES, evaluate_batch
from dm_lightning.evaluation.tables import table_row
from dm_lightning.testing import reference

from . import print_table_header, suite_parser


def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[~valid] = 0
    return torch.sum(x, (-1, -2)) / valid.sum((-1, -2))


def published_path(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, lo: float, hi: float
) -> dict:
    """One image through the steps of the published evaluation script (``least_square_sqrt_disp``):
    numpy sqrt-disparity of the GT with masked division, least squares with ``np.linalg.lstsq``
    on the masked pixels, squared and clipped disparity back to depth with masked division,
    range and 1e-6 clips; then one torch function per metric on the full image with the mask,
    each ``.item()``-ed. Like the script (and dm_lightning), the fit drops pixels with
    prediction <= 0; the predictions here are clipped at 0 but in practice all > 0."""
    disparity = np.zeros_like(gt)
    positive = gt > 0
    disparity[positive] = 1.0 / gt[positive]
    sqrt_disparity = np.sqrt(disparity)
    fit = valid & (sqrt_disparity > 0) & positive & (pred > 0)
    pred_fit = pred[fit].reshape(-1, 1)
    # float32 like the script's: its design matrix is [p, ones_like(p)] of float32 predictions
    a = np.concatenate([pred_fit, np.ones_like(pred_fit)], axis=-1)
    (scale,), (shift,) = np.linalg.lstsq(a, sqrt_disparity[fit].reshape(-1, 1), rcond=None)[0]
    aligned = np.clip((pred * scale + shift) ** 2, 1e-3, None)
    depth = np.zeros_like(aligned)
    depth[aligned > 0] = 1.0 / aligned[aligned > 0]
    depth = np.clip(np.clip(depth, lo, hi), 1e-6, None)
    d, g, v = torch.from_numpy(depth), torch.from_numpy(gt), torch.from_numpy(valid)
    ratio = torch.max(d / g, g / d)
    out = {
        "abs_rel": _masked_mean(torch.abs(d - g) / g, v).item(),
        "sq_rel": _masked_mean(torch.pow(torch.abs(d - g), 2) / g, v).item(),
        "rmse": torch.sqrt(_masked_mean(torch.pow(d - g, 2), v)).item(),
        "rmse_log": torch.sqrt(_masked_mean(torch.pow(torch.log(d) - torch.log(g), 2), v)).item(),
        "log10": torch.abs(torch.log10(d[v]) - torch.log10(g[v])).mean().item(),
    }
    for k in (1, 2, 3):
        hits = torch.where(ratio < 1.25**k, torch.ones(d.shape), torch.zeros(d.shape))
        out[f"delta{k}"] = _masked_mean(hits, v).item()
    return out


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)  # for every path (the published one uses torch too)
    rng = np.random.default_rng(0)
    b, h, w = args.images, 480, 640
    gt = rng.uniform(0.5, 10.0, (b, h, w)).astype(np.float32)
    valid = rng.random((b, h, w)) > 0.2
    pred = np.clip(1.0 / np.sqrt(gt) / 1.5 + rng.normal(0, 0.02, gt.shape), 0, 1).astype(np.float32)
    tp, tg, tv = map(torch.from_numpy, (pred, gt, valid))

    def published() -> list[dict]:
        return [published_path(pred[i], gt[i], valid[i], 1e-3, 10.0) for i in range(b)]

    def lean() -> list[dict]:
        return [reference.evaluate_image(pred[i], gt[i], valid[i], 1e-3, 10.0) for i in range(b)]

    def ours() -> list[dict]:
        values = {k: [] for k in METRIC_NAMES}
        for i in range(0, b, args.batch):
            part, _ = evaluate_batch(
                tp[i : i + args.batch], tg[i : i + args.batch], tv[i : i + args.batch], 1e-3, 10.0
            )
            for k in METRIC_NAMES:
                values[k].extend(part[k].tolist())
        return [{k: values[k][i] for k in METRIC_NAMES} for i in range(b)]

    paths = {"published": published, "lean": lean, "ours": ours}
    seconds = {name: math.inf for name in paths}
    results = {}
    # Interleaved, best of each. One thread: CPU time (robust on a shared machine); more:
    # wall time, since CPU time would add up the threads.
    clock = time.process_time if args.threads == 1 else time.perf_counter
    for _ in range(args.repeats):
        for name, fn in paths.items():
            start = clock()
            results[name] = fn()
            seconds[name] = min(seconds[name], clock() - start)
    worst = 0.0
    for name in ("published", "lean"):
        for k in METRIC_NAMES:
            diff = max(abs(x[k] - y[k]) for x, y in zip(results["ours"], results[name]))
            assert diff < 1e-6, f"{k} differs from the {name} path by {diff}"
            worst = max(worst, diff)
    t_pub, t_lean, t_ours = seconds["published"], seconds["lean"], seconds["ours"]
    print_table_header(
        [
            "images (480x640)", "batch", "torch threads", "published per-image path (s)",
            "lean numpy per image (s)", "dm_lightning (s)", "vs published", "vs lean numpy",
            "max difference",
        ]
    )  # fmt: skip
    cells = [
        b, args.batch, args.threads, f"{t_pub:.2f}", f"{t_lean:.2f}", f"{t_ours:.2f}",
        f"{t_pub / t_ours:.1f}x", f"{t_lean / t_ours:.1f}x", f"{worst:.0e}",
    ]  # fmt: skip
    print(table_row(cells), flush=True)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``eval`` sub-command of tools/benchmark.py."""
    ev = suite_parser(sub, "eval", "evaluation throughput", run, __doc__)
    ev.add_argument("--images", type=int, default=64)
    ev.add_argument("--batch", type=int, default=8)
    ev.add_argument("--repeats", type=int, default=3)
    ev.add_argument("--threads", type=int, default=1, help="torch threads, all paths")
