"""Speed benchmarks; results go to BENCHMARKS.md (never timed tests).

    python tools/benchmark.py data   # shard streaming vs bare PNG decoding vs folder loaders
    python tools/benchmark.py eval   # batched alignment + metrics vs per-image reference paths

``data`` writes the same samples (real RGB-D frames from tests/data/real_rgbd at 480x640, and
rendered Hypersim-sized 480x640 and VKITTI-sized 352x1216 ones) both as shards and as a PNG
folder (RGB PNG + uint16 depth PNG per sample, as the preprocessed Hypersim layout holds them),
into --work, and measures samples/s in one process (= per data-loading worker):
- bare decode: PIL-decode the RGB and depth PNG files of the folder, nothing else;
- reference loader: one dataset item = open RGB PNG + depth PNG from the folder, then the
  training item of the published DepthMaster code (a Marigold descendant), step by step:
  RGB as int64, normalised in float64 and kept as ``rgb_int`` and ``rgb_norm``; depth kept raw
  and "filled" (a copy: these sets have no filled depth) with a valid mask each; square-root
  disparity of the raw one; 2%/98% quantile normalisation of both; every raster flipped with
  p = 0.5; the nearest-exact resize to 480x640 that its Hypersim config asks for; torch's
  default_collate;
- lean folder loader (+targets): the same files through dm_lightning's own tensor conversion,
  mask, flip, collate and square-root-disparity target on the CPU (a fair, tuned folder loader);
- shards (+finish, targets): dm_lightning's training stream, then what runs on the training
  device (metres, valid mask, flip, normalised target) run on the CPU instead;
- shards: the training stream as dm_lightning's workers run it (tar read, PNG decode, copies
  into the batch); metres, mask, flip and target are built on the training device.
``eval`` times dm_lightning's batched float64 evaluation against two per-image paths on the
same predictions and checks all agree to 1e-6: the published evaluation script's steps
(numpy least squares on the masked pixels, then one torch function per metric, in float32 as
the script runs on float32 predictions) and a lean float64 numpy implementation
(``dm_lightning.reference``, the one the tests check the fast path against).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dm_lightning import reference
from dm_lightning.data.datamodule import collate, sample_to_tensors
from dm_lightning.data.packing import finish_training_batch, pack_training_batch
from dm_lightning.data.schema import encode_sample
from dm_lightning.data.shards import iter_shard, write_shard
from dm_lightning.data.streams import SourceStream
from dm_lightning.data.synthetic import write_split
from dm_lightning.targets import SqrtDisparity

REAL_RGBD = Path(__file__).resolve().parent.parent / "tests" / "data" / "real_rgbd"
# (RGB file, uint16 depth file, metres per unit) of the real frames; all 640x480.
REAL_FRAMES = [("tum/color.png", "tum/depth.png", 1 / 5000)] + [
    (f"redwood_synthetic/color/{i:05d}.jpg", f"redwood_synthetic/depth/{i:05d}.png", 1e-3)
    for i in range(5)
]
# label -> (kind, height, width, valid range in metres as the source has it)
SIZES = {
    "real RGB-D frames (480x640)": ("real", 480, 640, (1e-5, 65.0)),
    "hypersim-like (480x640)": ("indoor", 480, 640, (1e-5, 65.0)),
    "vkitti-like (352x1216)": ("outdoor", 352, 1216, (1e-5, 80.0)),
}


def real_samples(count: int) -> Iterator[dict]:
    """``count`` samples cycling over the real frames, depth stored in millimetres."""
    frames = [
        (
            np.array(Image.open(REAL_RGBD / rgb).convert("RGB")),
            np.asarray(Image.open(REAL_RGBD / depth)).astype(np.float64) * scale,
        )
        for rgb, depth, scale in REAL_FRAMES
    ]
    for i in range(count):
        rgb, depth = frames[i % len(frames)]
        yield encode_sample(
            f"real-{i:06d}", rgb, depth, source="real", depth_scale=1e-3,
            min_depth=1e-5, max_depth=65.0,
        )  # fmt: skip


def prepare(work: Path, kind: str, height: int, width: int, count: int) -> tuple[Path, Path]:
    """Shards and an equivalent PNG folder of ``count`` samples."""
    shard_dir = work / f"{kind}-{height}x{width}" / kind
    if kind == "real":
        if not (shard_dir / "train-000000.tar").exists():
            shard_dir.mkdir(parents=True, exist_ok=True)
            write_shard(shard_dir / "train-000000.tar", real_samples(count))
    else:
        write_split(
            str(shard_dir.parent), kind, "train", count, count, base_seed=0,
            height=height, width=width,
        )  # fmt: skip
    folder = work / f"{kind}-{height}x{width}-folder"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for sample in iter_shard(next(shard_dir.glob("train-*.tar"))):
            key = sample["__key__"]
            (folder / f"{key}_rgb.png").write_bytes(sample["rgb.png"])
            (folder / f"{key}_depth.png").write_bytes(sample["depth.png"])
            (folder / f"{key}.json").write_bytes(sample["json"])
    return shard_dir, folder


def bare_decode(folder: Path) -> int:
    n = 0
    for rgb in sorted(folder.glob("*_rgb.png")):
        np.asarray(Image.open(rgb))
        np.asarray(Image.open(str(rgb).replace("_rgb.png", "_depth.png")))
        n += 1
    return n


def _quantile_normalise(depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The reference's scale-shift normaliser: 2%/98% quantiles -> [-1, 1], clipped."""
    valid = valid & (depth > 0)
    lo, hi = torch.quantile(depth[valid], torch.tensor([0.02, 0.98]))
    return torch.clip((depth - lo) / (hi - lo) * 2.0 - 1.0, -1.0, 1.0)


def reference_item(folder: Path, key: str, low: float, high: float, resize: bool) -> dict:
    """One training item the way the published DepthMaster dataset builds it (see module doc)."""
    from torchvision.transforms import InterpolationMode, Resize

    rgb = np.transpose(np.asarray(Image.open(folder / f"{key}_rgb.png")), (2, 0, 1)).astype(int)
    item = {
        "rgb_int": torch.from_numpy(rgb).int(),
        "rgb_norm": torch.from_numpy(rgb / 255.0 * 2.0 - 1.0).float(),
    }
    scale = json.loads((folder / f"{key}.json").read_text())["depth_scale"]
    depth = np.asarray(Image.open(folder / f"{key}_depth.png")) * scale
    raw = torch.from_numpy(depth).float().unsqueeze(0)
    item["depth_raw_linear"] = raw.clone()
    item["depth_filled_linear"] = raw.clone()
    for name in ("raw", "filled"):
        d = item[f"depth_{name}_linear"]
        item[f"valid_mask_{name}"] = torch.logical_and(d > low, d < high).bool().clone()
    # Only the raw depth becomes square-root disparity: Hypersim and VKITTI have no separate
    # filled depth, whose copy stays linear (and is normalised all the same).
    disparity = torch.zeros_like(raw)
    positive = raw > 0
    disparity[positive] = 1.0 / raw[positive]
    item["depth_raw_linear"] = torch.sqrt(disparity.clone()).clone()
    if random.random() < 0.5:
        item = {k: v.flip(-1) for k, v in item.items()}
    for name in ("raw", "filled"):
        norm = _quantile_normalise(item[f"depth_{name}_linear"], item[f"valid_mask_{name}"])
        item[f"depth_{name}_norm"] = norm.clone()
    item["depth_filled_norm"][~item["valid_mask_filled"]] = 1.0  # far plane at max
    if resize:
        resize_to = Resize(size=[480, 640], interpolation=InterpolationMode.NEAREST_EXACT)
        item = {k: resize_to(v) for k, v in item.items()}
    return item


def reference_loader(folder: Path, batch_size: int, low: float, high: float, resize: bool) -> int:
    from torch.utils.data import default_collate

    n, batch = 0, []
    for rgb_path in sorted(folder.glob("*_rgb.png")):
        batch.append(reference_item(folder, rgb_path.name[: -len("_rgb.png")], low, high, resize))
        if len(batch) == batch_size:
            default_collate(batch)
            n, batch = n + len(batch), []
    return n


def lean_folder_loader(folder: Path, batch_size: int) -> int:
    target, n, batch = SqrtDisparity(), 0, []
    for rgb_path in sorted(folder.glob("*_rgb.png")):
        key = rgb_path.name[: -len("_rgb.png")]
        rgb = np.array(Image.open(rgb_path).convert("RGB"))
        units = np.asarray(Image.open(folder / f"{key}_depth.png"))
        m = json.loads((folder / f"{key}.json").read_text())
        depth = units.astype(np.float32) * np.float32(m["depth_scale"])
        sample = sample_to_tensors({"key": key, "rgb": rgb, "depth": depth, "meta": m})
        if random.random() < 0.5:
            for k in ("rgb", "depth", "valid"):
                sample[k] = sample[k].flip(-1)
        batch.append(sample)
        if len(batch) == batch_size:
            b = collate(batch)
            target.normalize(b["depth"], b["valid"])
            n += len(batch)
            batch = []
    return n


def shard_stream(shards: Path, batch_size: int, count: int, with_target: bool) -> int:
    stream = SourceStream(
        "bench",
        sorted(map(str, shards.glob("*.tar"))),
        batch_size,
        pack_training_batch,
        shuffle_buffer=1,
    )
    target, n = SqrtDisparity(), 0
    batches = stream.batches(random.Random(0), stream.urls)
    while n < count:
        b = next(batches)
        if with_target:
            b = finish_training_batch(b)
            target.normalize(b["depth"], b["valid"])
        n += b["rgb"].shape[0]
    return n


def timed(fn, *args) -> float:
    """Samples per second of CPU time of this process: on a shared machine, wall time also
    counts the time other processes hold the core."""
    start = time.process_time()
    n = fn(*args)
    return n / (time.process_time() - start)


def run_data(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    work = Path(args.work)
    columns = [
        "bare PNG decode",
        "reference loader",
        "lean folder loader (+targets)",
        "shards (+finish, targets)",
        "shards",
        "shards / bare",
        "shards / reference",
        "like for like",
    ]
    print("| data | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for label, (kind, h, w, (low, high)) in SIZES.items():
        shards, folder = prepare(work, kind, h, w, args.samples)
        resize = (h, w) == (480, 640)  # the reference's Hypersim config resizes to 480x640
        paths = [
            (bare_decode, folder),
            (reference_loader, folder, args.batch, low, high, resize),
            (lean_folder_loader, folder, args.batch),
            (shard_stream, shards, args.batch, args.samples, True),
            (shard_stream, shards, args.batch, args.samples, False),
        ]
        # Interleaved repeats, best of each: slow phases of a shared machine hit every path.
        rates = [0.0] * len(paths)
        for _ in range(args.repeats):
            for i, (fn, *fn_args) in enumerate(paths):
                rates[i] = max(rates[i], timed(fn, *fn_args))
        bare, reference, finished, ours = rates[0], rates[1], rates[3], rates[4]
        cells = [f"{r:.1f}" for r in rates] + [
            f"{ours / bare:.2f}x",
            f"{ours / reference:.1f}x",
            f"{finished / reference:.1f}x",
        ]
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


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


def run_eval(args: argparse.Namespace) -> None:
    from dm_lightning.metrics import METRIC_NAMES, evaluate_batch

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
    print(
        "| images (480x640) | batch | torch threads | published per-image path (s) "
        "| lean numpy per image (s) | dm_lightning (s) | vs published | vs lean numpy "
        "| max difference |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {b} | {args.batch} | {args.threads} | {t_pub:.2f} | {t_lean:.2f} | {t_ours:.2f} "
        f"| {t_pub / t_ours:.1f}x | {t_lean / t_ours:.1f}x | {worst:.0e} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    data = sub.add_parser("data", help="data-loading throughput")
    data.add_argument("--work", default="shards/benchmark")
    data.add_argument("--samples", type=int, default=64)
    data.add_argument("--batch", type=int, default=8)
    data.add_argument("--repeats", type=int, default=3)
    ev = sub.add_parser("eval", help="evaluation throughput")
    ev.add_argument("--images", type=int, default=64)
    ev.add_argument("--batch", type=int, default=8)
    ev.add_argument("--repeats", type=int, default=3)
    ev.add_argument("--threads", type=int, default=1, help="torch threads, all paths")
    args = parser.parse_args(argv)
    {"data": run_data, "eval": run_eval}[args.what](args)


if __name__ == "__main__":
    main()
