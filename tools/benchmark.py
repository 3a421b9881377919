"""Speed benchmarks; results go to BENCHMARKS.md (never timed tests).

    python tools/benchmark.py data   # shard streaming vs bare PNG decoding vs a folder loader
    python tools/benchmark.py eval   # batched alignment + metrics vs a per-image numpy path

``data`` renders Hypersim-sized (480x640) and VKITTI-sized (352x1216) synthetic samples once
(into --work), writes them both as shards and as a PNG folder, and measures samples/s in one
process (= per data-loading worker):
- bare decode: PIL-decode the RGB and depth PNG files of the folder, nothing else;
- folder loader: the reference way, one dataset item = open RGB PNG + depth PNG from the
  folder, then the same tensor conversion, target construction, flip and collate as ours;
- shards (+targets): dm_lightning's training stream (tar read, schema decode, valid mask,
  flip, collate) plus the square-root-disparity target construction on the CPU;
- shards: the stream alone, which is what dm_lightning's workers do: targets are built by the
  LightningModule on the training device.
``eval`` times dm_lightning's batched float64 evaluation against a per-image numpy
implementation of the same protocol on the same predictions and checks they agree to 1e-6.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dm_lightning.data.datamodule import collate, sample_to_tensors
from dm_lightning.data.shards import iter_shard
from dm_lightning.data.streams import SourceStream
from dm_lightning.data.synthetic import write_split
from dm_lightning.targets import SqrtDisparity

SIZES = {
    "hypersim-like (480x640)": ("indoor", 480, 640),
    "vkitti-like (352x1216)": ("outdoor", 352, 1216),
}


def prepare(work: Path, source: str, height: int, width: int, count: int) -> tuple[Path, Path]:
    """Shards and an equivalent PNG folder of ``count`` rendered samples."""
    shard_dir = work / f"{source}-{height}x{width}"
    write_split(
        str(shard_dir), source, "train", count, count, base_seed=0, height=height, width=width
    )
    folder = work / f"{source}-{height}x{width}-folder"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for sample in iter_shard(next((shard_dir / source).glob("train-*.tar"))):
            key = sample["__key__"]
            (folder / f"{key}_rgb.png").write_bytes(sample["rgb.png"])
            (folder / f"{key}_depth.png").write_bytes(sample["depth.png"])
            (folder / f"{key}.json").write_bytes(sample["json"])
    return shard_dir / source, folder


def bare_decode(folder: Path) -> int:
    n = 0
    for rgb in sorted(folder.glob("*_rgb.png")):
        np.asarray(Image.open(rgb))
        np.asarray(Image.open(str(rgb).replace("_rgb.png", "_depth.png")))
        n += 1
    return n


def folder_loader(folder: Path, batch_size: int) -> int:
    import json

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
        sample_to_tensors,
        collate,
        shuffle_buffer=1,
    )
    target, n = SqrtDisparity(), 0
    batches = stream.batches(random.Random(0), stream.urls)
    while n < count:
        b = next(batches)
        if with_target:
            target.normalize(b["depth"], b["valid"])
        n += b["rgb"].shape[0]
    return n


def timed(fn, *args) -> float:
    start = time.perf_counter()
    n = fn(*args)
    return n / (time.perf_counter() - start)


def run_data(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    work = Path(args.work)
    columns = ["bare PNG decode", "folder loader (+targets)", "shards (+targets)", "shards"]
    print("| data | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for label, (source, h, w) in SIZES.items():
        shards, folder = prepare(work, source, h, w, args.samples)
        rates = [
            best(args.repeats, bare_decode, folder),
            best(args.repeats, folder_loader, folder, args.batch),
            best(args.repeats, shard_stream, shards, args.batch, args.samples, True),
            best(args.repeats, shard_stream, shards, args.batch, args.samples, False),
        ]
        print(f"| {label} | " + " | ".join(f"{r:.1f}" for r in rates) + " |")


def best(repeats: int, fn, *args) -> float:
    return max(timed(fn, *args) for _ in range(repeats))


def numpy_reference(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, lo: float, hi: float
) -> dict:
    """Per-image protocol in numpy: sqrt-disparity least squares, back to depth, clip, metrics."""
    m = valid & np.isfinite(gt) & (gt > 0)
    p, g = pred[m].astype(np.float64), 1.0 / np.sqrt(gt[m].astype(np.float64))
    a = np.stack([p, np.ones_like(p)], axis=1)
    s, t = np.linalg.lstsq(a, g, rcond=None)[0]
    depth = 1.0 / np.maximum((s * pred.astype(np.float64) + t) ** 2, 1e-3)
    depth = np.maximum(np.clip(depth, lo, hi), 1e-6)[valid]
    gv = gt[valid].astype(np.float64)
    ratio = np.maximum(depth / gv, gv / depth)
    return {
        "abs_rel": np.mean(np.abs(depth - gv) / gv),
        "sq_rel": np.mean((depth - gv) ** 2 / gv),
        "rmse": np.sqrt(np.mean((depth - gv) ** 2)),
        "rmse_log": np.sqrt(np.mean((np.log(depth) - np.log(gv)) ** 2)),
        "log10": np.mean(np.abs(np.log10(depth) - np.log10(gv))),
        "delta1": np.mean(ratio < 1.25),
        "delta2": np.mean(ratio < 1.25**2),
        "delta3": np.mean(ratio < 1.25**3),
    }


def run_eval(args: argparse.Namespace) -> None:
    from dm_lightning.metrics import METRIC_NAMES, evaluate_batch

    rng = np.random.default_rng(0)
    b, h, w = args.images, 480, 640
    gt = rng.uniform(0.5, 10.0, (b, h, w)).astype(np.float32)
    valid = rng.random((b, h, w)) > 0.2
    pred = np.clip(1.0 / np.sqrt(gt) / 1.5 + rng.normal(0, 0.02, gt.shape), 0, 1).astype(np.float32)
    start = time.perf_counter()
    ref = [numpy_reference(pred[i], gt[i], valid[i], 1e-3, 10.0) for i in range(b)]
    t_numpy = time.perf_counter() - start
    tp, tg, tv = map(torch.from_numpy, (pred, gt, valid))
    start = time.perf_counter()
    ours = {}
    for i in range(0, b, args.batch):
        values, _ = evaluate_batch(
            tp[i : i + args.batch], tg[i : i + args.batch], tv[i : i + args.batch], 1e-3, 10.0
        )
        for k in METRIC_NAMES:
            ours.setdefault(k, []).append(values[k])
    t_ours = time.perf_counter() - start
    for k in METRIC_NAMES:
        diff = np.abs(torch.cat(ours[k]).numpy() - np.array([r[k] for r in ref])).max()
        assert diff < 1e-6, f"{k} differs by {diff}"
    print(
        "| images (480x640) | numpy per image (s) | batched torch (s) | speed-up | max difference |"
    )
    print("|---|---|---|---|---|")
    print(f"| {b} | {t_numpy:.2f} | {t_ours:.2f} | {t_numpy / t_ours:.1f}x | < 1e-6 |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    data = sub.add_parser("data", help="data-loading throughput")
    data.add_argument("--work", default="shards/benchmark")
    data.add_argument("--samples", type=int, default=64)
    data.add_argument("--batch", type=int, default=8)
    data.add_argument("--repeats", type=int, default=2)
    ev = sub.add_parser("eval", help="evaluation throughput")
    ev.add_argument("--images", type=int, default=64)
    ev.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    {"data": run_data, "eval": run_eval}[args.what](args)


if __name__ == "__main__":
    main()
