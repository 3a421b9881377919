"""``data``: data-loading throughput.

Writes the same samples (real RGB-D frames from tests/data/real_rgbd at 480x640, and
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
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision.transforms import InterpolationMode, Resize

from dm_lightning.data.collate import collate, sample_to_tensors
from dm_lightning.data.packing import finish_training_batch, pack_training_batch
from dm_lightning.data.schema import encode_sample
from dm_lightning.data.shard_reader import iter_shard
from dm_lightning.data.shards import write_shard
from dm_lightning.data.streams import SourceStream
from dm_lightning.data.synthetic import write_split
from dm_lightning.evaluation.tables import table_row
from dm_lightning.targets import SqrtDisparity

from . import REPO, print_table_header, suite_parser

REAL_RGBD = REPO / "tests" / "data" / "real_rgbd"
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
            b = finish_training_batch(b)  # as DepthDataModule.on_after_batch_transfer does
            target.normalize(b["depth"], b["valid"])
        n += b["rgb"].shape[0]
    return n


def timed(fn, *args) -> float:
    """Samples per second of CPU time of this process: on a shared machine, wall time also
    counts the time other processes hold the core."""
    start = time.process_time()
    n = fn(*args)
    return n / (time.process_time() - start)


def run(args: argparse.Namespace) -> None:
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
    print_table_header(["data", *columns])
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
        print(table_row([label, *cells]), flush=True)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``data`` sub-command of tools/benchmark.py."""
    data = suite_parser(sub, "data", "data-loading throughput", run, __doc__)
    data.add_argument("--work", default="shards/benchmark")
    data.add_argument("--samples", type=int, default=64)
    data.add_argument("--batch", type=int, default=8)
    data.add_argument("--repeats", type=int, default=3)
