"""Speed benchmarks; results go to BENCHMARKS.md (never timed tests).

    python tools/benchmark.py data   # shard streaming vs bare PNG decoding vs folder loaders
    python tools/benchmark.py eval   # batched alignment + metrics vs per-image reference paths
    python tools/benchmark.py step   # Lightning training steps vs a plain PyTorch loop
    python tools/benchmark.py memory # stage-2 peak memory with / without checkpointing
    python tools/benchmark.py scale  # parameters, FLOPs and step time of the SD-2-size network
    python tools/benchmark.py predict  # predict path vs bare forwards; RSS over 200/1000 images

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
``step``, ``memory`` and ``scale`` (issue #11, Scale out) are described in their sections below;
``predict`` (issue #12) in :func:`run_predict`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import time
from collections.abc import Iterator
from functools import partial
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
from dm_lightning.real_size import SD2_UNET_CONFIG, SD2_VAE_CONFIG
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


# ---- issue #11 (Scale out): training step, memory, scale ------------------------------------
# The tiny stage-1 alignment encoder of configs/tiny/stage1.yaml, and DINOv2 ViT-L for SD-2 size.
TINY_ENCODER = dict(
    model_name="vit_small_patch14_dinov2",
    model_kwargs={"depth": 2, "embed_dim": 64, "num_heads": 2, "img_size": 112},
)
REAL_ENCODER = dict(model_name="vit_large_patch14_dinov2")
GOAL_STEP_RATIO = 1.05  # Lightning step / plain PyTorch step, at most
GOAL_MEMORY_RATIO = 0.6  # stage-2 peak with checkpointing / without, at most


def synthetic_batches(count: int, batch: int, height: int, width: int, seed: int = 0) -> list:
    """``count`` finished (eval-format) batches: ``rgb`` (B, 3, H, W) uint8, ``depth``
    (B, 1, H, W) float32 metres in [0.5, 10), ``valid`` (B, 1, H, W) bool (about 95%).
    :func:`finish_training_batch` passes them unchanged, so no data work is timed."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        depth = torch.rand((batch, 1, height, width), generator=g) * 9.5 + 0.5
        rgb = torch.randint(0, 256, (batch, 3, height, width), generator=g, dtype=torch.uint8)
        out.append({"rgb": rgb, "depth": depth, "valid": depth < 10.0 - 0.475})
    return out


def tiny_model_folder(work: Path) -> Path:
    """The tiny SD-2-layout model folder of the tests (random weights), made once in ``work``."""
    from dm_lightning.tiny_model import make_tiny_depthmaster, save_tiny_model

    folder = work / "tiny-sd2"
    if not (folder / "unet").is_dir():
        save_tiny_model(folder, make_tiny_depthmaster(0))
    return folder


def make_task(stage: int, folder: Path):
    """The Lightning task of ``stage`` on the model folder (stage 1 with the tiny encoder)."""
    from dm_lightning.models.encoders import TimmEncoder
    from dm_lightning.training.stage1 import Stage1
    from dm_lightning.training.stage2 import Stage2

    torch.manual_seed(0)
    if stage == 1:
        return Stage1(str(folder), encoder=TimmEncoder(**TINY_ENCODER), lr=1e-4)
    return Stage2(str(folder), lr=1e-4)


def plain_stage1(folder: Path):
    """Stage 1 as plain modules: (loss function of a finished batch, trainable parameters).
    The same math as ``Stage1.training_loss`` (fa_weight 1) on an equal copy of the network."""
    from dm_lightning.models.depthmaster import signed_rgb
    from dm_lightning.models.encoders import TimmEncoder
    from dm_lightning.models.loading import load_depthmaster
    from dm_lightning.models.stage1_network import AlignedDepthMaster

    torch.manual_seed(0)
    net = load_depthmaster(str(folder))
    net.vae.requires_grad_(False).eval()
    net.unet.train()
    network = AlignedDepthMaster(net, TimmEncoder(**TINY_ENCODER))
    target = SqrtDisparity()

    def loss(batch: dict) -> torch.Tensor:
        with torch.no_grad():
            depth = target.normalize(batch["depth"], batch["valid"])
        return stage1_loss(network, signed_rgb(batch["rgb"]), depth, batch["valid"])

    return loss, [p for p in network.parameters() if p.requires_grad]


def plain_stage2(folder: Path):
    """Stage 2 as plain modules (FE block attached): (loss function, trainable parameters);
    the same math as ``Stage2.training_loss`` (gradient weight 1e-3, delta 0.2)."""
    from dm_lightning.models.depthmaster import signed_rgb
    from dm_lightning.models.loading import load_depthmaster
    from dm_lightning.models.unet_hooks import attach_fourier_enhancement

    torch.manual_seed(0)
    net = load_depthmaster(str(folder))
    net.vae.requires_grad_(False).eval()
    net.unet.train()
    attach_fourier_enhancement(net.unet)
    target = SqrtDisparity()

    def loss(batch: dict) -> torch.Tensor:
        with torch.no_grad():
            depth = target.normalize(batch["depth"], batch["valid"])
        return stage2_loss(net, signed_rgb(batch["rgb"]), depth, batch["valid"])

    return loss, [p for p in net.parameters() if p.requires_grad]


def plain_seconds_per_step(loss_fn, params: list, batches: list, warmup: int, steps: int) -> float:
    """CPU seconds per step of a bare ``zero_grad / backward / Adam step`` loop, after
    ``warmup`` untimed steps, cycling over ``batches``."""
    optimizer = torch.optim.Adam(params, lr=1e-4, weight_decay=0.0)
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            start = time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(finish_training_batch(batches[i % len(batches)])).backward()
        optimizer.step()
    return (time.process_time() - start) / steps


def lightning_seconds_per_step(task, batches: list, warmup: int, steps: int) -> float:
    """CPU seconds per optimizer step of ``trainer.fit`` on ``task`` over ``batches`` (one
    epoch of ``warmup + steps`` batches), timed between the ends of step ``warmup`` and of
    the last: the whole loop (fetch, hooks, step, logging), none of fit's set-up."""
    import lightning as L
    from torch.utils.data import DataLoader

    ends: list[float] = []

    class StepClock(L.Callback):
        def on_train_batch_end(self, *args, **kwargs) -> None:
            ends.append(time.process_time())

    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=warmup + steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[StepClock()],
    )  # fmt: skip
    # batch_size=None: the loader hands out the finished batches as they are
    loader = DataLoader(batches[: warmup + steps], batch_size=None, shuffle=False)
    trainer.fit(task, train_dataloaders=loader)
    assert len(ends) == warmup + steps, f"fit ran {len(ends)} steps"
    return (ends[-1] - ends[warmup - 1]) / steps


def set_glibc_heap(threshold: int) -> bool:
    """Fix glibc's mmap and trim thresholds at ``threshold`` bytes (``mallopt``; a fixed value
    also turns off glibc's dynamic raising of the mmap threshold, up to 32 MB, after large
    frees). Returns whether it applied (glibc only)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h> constants
    return bool(
        mallopt and mallopt(m_mmap_threshold, threshold) and mallopt(m_trim_threshold, threshold)
    )


def pin_glibc_heap() -> bool:
    """Thresholds at 1 GiB, so freed activation buffers stay in the heap for the next step
    instead of going back to the OS and being page-faulted in again (10-17 thousand minor
    faults per tiny step, in random amounts per side, which swung the ratio between 0.98x and
    1.2x): both sides then reuse memory as PyTorch's caching allocator does on CUDA."""
    return set_glibc_heap(1 << 30)


def run_step(args: argparse.Namespace) -> None:
    """Per-step CPU time of the Lightning stage-1 / stage-2 training steps against a plain
    PyTorch loop doing the same math, one torch thread, interleaved repeats, best of each."""
    import logging
    import tempfile
    import warnings

    torch.set_num_threads(1)  # one thread: CPU time of the process = time of the step
    pinned = pin_glibc_heap() if not args.system_malloc else False
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*isinstance.*LeafSpec.*")
    work = Path(args.work or tempfile.mkdtemp(prefix="dm-bench-step-"))
    folder = tiny_model_folder(work)
    batches = synthetic_batches(args.warmup + args.steps, args.batch, args.height, args.width)
    print(
        f"| stage (tiny model, batch {args.batch}, {args.height}x{args.width}, "
        f"heap {'pinned' if pinned else 'glibc default'}) "
        "| plain PyTorch (ms/step) | Lightning (ms/step) | overhead (ms/step) "
        f"| Lightning / plain | goal <= {GOAL_STEP_RATIO}x |"
    )
    print("|---|---|---|---|---|---|")
    for stage, plain_fn in ((1, plain_stage1), (2, plain_stage2)):
        task = make_task(stage, folder)
        loss_fn, params = plain_fn(folder)
        plain, lightning = math.inf, math.inf
        # Interleaved repeats, best of each: slow phases of a shared machine hit both sides.
        for _ in range(args.repeats):
            steps = (batches, args.warmup, args.steps)
            plain = min(plain, plain_seconds_per_step(loss_fn, params, *steps))
            lightning = min(lightning, lightning_seconds_per_step(task, *steps))
        ratio = lightning / plain
        verdict = "PASS" if ratio <= GOAL_STEP_RATIO else "FAIL"
        print(
            f"| stage {stage} | {plain * 1e3:.1f} | {lightning * 1e3:.1f} "
            f"| {(lightning - plain) * 1e3:.1f} | {ratio:.3f}x "
            f"| {verdict} |",
            flush=True,
        )
        del task, loss_fn, params


# Widths of the networks the memory and scale suites build (random weights, never downloaded).
# "medium": SD-2's layout (4 VAE levels with 2 layers, 4 U-Net levels, 3 with attention) at a
# quarter of the VAE's and a fifth of the U-Net's widths, so activations dominate the weights
# the way they do at SD-2 size.
# SD-2's own configs: dm_lightning.real_size (shared with the opt-in real-width test).
MEDIUM_VAE_CONFIG = {**SD2_VAE_CONFIG, "block_out_channels": (32, 64, 128, 128)}
MEDIUM_UNET_CONFIG = {
    **SD2_UNET_CONFIG,
    "block_out_channels": (64, 128, 256, 256),
    "cross_attention_dim": 256,
    "attention_head_dim": (1, 2, 4, 4),  # heads, as SD-2's: 64 channels each
}


def network_configs(size: str) -> tuple[dict, dict]:
    """(VAE config, U-Net config) of ``size``: ``tiny`` (the tests'), ``medium`` or ``sd2``."""
    from dm_lightning.tiny_model import TINY_UNET_CONFIG, TINY_VAE_CONFIG

    return {
        "tiny": (TINY_VAE_CONFIG, TINY_UNET_CONFIG),
        "medium": (MEDIUM_VAE_CONFIG, MEDIUM_UNET_CONFIG),
        "sd2": (SD2_VAE_CONFIG, SD2_UNET_CONFIG),
    }[size]


def build_depthmaster(size: str, seed: int = 0):
    """A random-initialised DepthMaster of ``size`` (see :func:`network_configs`) on the
    current default device; the empty-prompt embedding is (1, 2, cross_attention_dim), the
    shape of SD-2's (start and end token)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dm_lightning.models.depthmaster import DepthMaster

    vae_config, unet_config = network_configs(size)
    torch.manual_seed(seed)
    vae, unet = AutoencoderKL(**vae_config), UNet2DConditionModel(**unet_config)
    embedding = torch.randn(1, 2, unet_config["cross_attention_dim"])
    return DepthMaster(vae, unet, embedding)


def model_folder(work: Path, size: str) -> Path:
    """A saved model folder of ``size`` in ``work`` (made once), for the Lightning tasks."""
    folder = work / f"{size}-sd2-layout"
    if not (folder / "unet").is_dir():
        build_depthmaster(size).save_pretrained(folder, metadata={"benchmark": size})
    return folder


def _status_kb(field: str) -> int | None:
    """A ``VmRSS`` / ``VmHWM`` value (kB) of /proc/self/status, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process to its current RSS (Linux >= 4.0:
    ``echo 5 > /proc/self/clear_refs``); whether it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def stage2_step_peak_mb(args: argparse.Namespace) -> dict:
    """Peak memory (MB) of one stage-2 forward + backward (``Stage2.training_loss``, then
    ``backward``; no optimizer step) above the memory held once model and batch are in
    place: CUDA ``max_memory_allocated`` on a GPU, else the process's peak RSS (the kernel's
    high-water mark, reset just before the step; ``ru_maxrss`` where it cannot be reset)."""
    import gc
    import resource

    from dm_lightning.training.stage2 import Stage2

    torch.set_num_threads(1)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on = args.checkpointing
    task = Stage2(args.model_path, gradient_checkpointing=on, decoder_checkpointing=on)
    task.to(device).train()
    batch = synthetic_batches(1, args.batch, args.height, args.width)[0]
    batch = {k: v.to(device) for k, v in batch.items()}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset = reset_peak_rss() and _status_kb("VmHWM") is not None
        base = (_status_kb("VmRSS") if reset else None) or resource.getrusage(
            resource.RUSAGE_SELF
        ).ru_maxrss
    loss, _ = task.training_loss(batch)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak_bytes = torch.cuda.max_memory_allocated() - base
    else:
        high = _status_kb("VmHWM") if reset else None
        peak_bytes = ((high or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) - base) * 1024
    return {"peak_mb": peak_bytes / 2**20, "device": device.type}


def run_memory_child(args: argparse.Namespace) -> None:
    # Every buffer of 64 kB or more in its own mapping, returned to the OS when freed: RSS
    # then follows the live tensors. With glibc's dynamic threshold the transient buffers of
    # checkpointing's recomputation stay resident in the heap, and RSS said 0.77x where the
    # live peak is 0.53x (medium model, 256x320, micro-batch 2).
    set_glibc_heap(64 * 1024)
    print(json.dumps(stage2_step_peak_mb(args)))


def measure_peak_mb(folder: Path, batch: int, height: int, width: int, checkpointing: bool):
    """:func:`stage2_step_peak_mb` in a fresh interpreter (one configuration per process, so
    no step sees another's heap): (peak MB, device type)."""
    import subprocess
    import sys

    cmd = [
        sys.executable, str(Path(__file__).resolve()), "memory-child", "--model-path",
        str(folder), "--batch", str(batch), "--height", str(height), "--width", str(width),
    ] + (["--checkpointing"] if checkpointing else [])  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    out = json.loads(result.stdout.strip().splitlines()[-1])
    return out["peak_mb"], out["device"]


def largest_batch(fits, limit: int) -> int:
    """Largest micro-batch b <= ``limit`` with ``fits(b)`` (monotone), by doubling then
    bisection; 0 if even 1 does not fit."""
    if not fits(1):
        return 0
    good = 1
    while good < limit and fits(min(2 * good, limit)):
        good = min(2 * good, limit)
    if good == limit:
        return limit
    bad = min(2 * good, limit)
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good


def fits_budget(
    folder: Path, size: tuple[int, int], checkpointing: bool, budget_mb: float, batch: int
) -> bool:
    """Whether a stage-2 step at micro-batch ``batch`` peaks within ``budget_mb`` (each probe
    logged to stderr)."""
    import sys

    peak, _ = measure_peak_mb(folder, batch, *size, checkpointing)
    print(f"memory: checkpointing={checkpointing} batch={batch}: {peak:.0f} MB", file=sys.stderr)
    return peak <= budget_mb


def run_memory(args: argparse.Namespace) -> None:
    """Stage-2 peak step memory without / with U-Net + decoder checkpointing at one
    micro-batch, and the largest micro-batch that fits a memory budget each way."""
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="dm-bench-memory-"))
    folder = model_folder(work, args.model)
    size = (args.height, args.width)
    without, device = measure_peak_mb(folder, args.batch, *size, False)
    with_ckpt, _ = measure_peak_mb(folder, args.batch, *size, True)
    ratio = with_ckpt / without
    verdict = "PASS" if ratio <= GOAL_MEMORY_RATIO else "FAIL"
    print(
        f"| stage 2 ({args.model} model, {args.height}x{args.width}, {device}) | micro-batch "
        f"| peak without checkpointing (MB) | peak with U-Net + decoder checkpointing (MB) "
        f"| with / without | goal <= {GOAL_MEMORY_RATIO}x |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| one forward + backward | {args.batch} | {without:.0f} | {with_ckpt:.0f} "
        f"| {ratio:.2f}x | {verdict} |",
        flush=True,
    )
    print()
    print(
        "| budget (MB) | largest micro-batch without checkpointing "
        "| largest micro-batch with checkpointing | gain | searched up to |"
    )
    print("|---|---|---|---|---|")
    largest = [
        largest_batch(partial(fits_budget, folder, size, on, args.budget_mb), args.max_batch)
        for on in (False, True)
    ]
    gain = f"{largest[1] / largest[0]:.1f}x" if largest[0] else "-"
    print(
        f"| {args.budget_mb:.0f} | {largest[0]} | {largest[1]} | {gain} | {args.max_batch} |",
        flush=True,
    )


def stage1_loss(network, rgb: torch.Tensor, target: torch.Tensor, valid: torch.Tensor):
    """``Stage1.training_loss`` (fa_weight 1) of ``network`` (an AlignedDepthMaster) on
    ``rgb`` (B, 3, H, W) in [-1, 1], normalised ``target`` (B, 1, H, W), ``valid`` (B, 1, H, W)."""
    from dm_lightning.losses import masked_latent_mse

    with torch.no_grad():
        z_gt = network.net.encode(target.expand(-1, 3, -1, -1))
    z_pred, feature = network(rgb)
    latent = masked_latent_mse(z_pred, z_gt, valid, network.net.latent_factor)
    return latent + 1.0 * network.alignment_loss(feature, rgb)


def stage2_loss(net, rgb: torch.Tensor, target: torch.Tensor, valid: torch.Tensor):
    """``Stage2.training_loss`` (gradient weight 1e-3, delta 0.2) of ``net`` (a DepthMaster
    with the FE block), same arguments as :func:`stage1_loss`."""
    from dm_lightning.losses import gradient_loss, masked_mse

    with torch.no_grad():
        z_rgb = net.encode(rgb)
    pred = net.decode(net.denoise(z_rgb))
    return masked_mse(pred, target, valid) + 1e-3 * gradient_loss(pred, target, valid, delta=0.2)


def stage_network(stage: int, size: str):
    """The stage's network, random weights, on the current default device: stage 1 an
    AlignedDepthMaster (DINOv2 ViT-L/14 at ``sd2`` size, the tiny encoder at ``tiny``), stage
    2 a DepthMaster with the FE block; the VAE (and encoder) frozen, as the tasks hold them."""
    from dm_lightning.models.encoders import TimmEncoder
    from dm_lightning.models.stage1_network import AlignedDepthMaster
    from dm_lightning.models.unet_hooks import attach_fourier_enhancement

    net = build_depthmaster(size)
    net.vae.requires_grad_(False).eval()
    net.unet.train()
    if stage == 2:
        attach_fourier_enhancement(net.unet)
        return net
    encoder = TimmEncoder(**(TINY_ENCODER if size == "tiny" else REAL_ENCODER))
    return AlignedDepthMaster(net, encoder)


def millions(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def trainable_millions(module) -> float:
    return sum(p.numel() for p in module.parameters() if p.requires_grad) / 1e6


@contextlib.contextmanager
def autocast_accepts_meta():
    """Let ``torch.autocast(device_type="meta", ...)`` (the FE block's fp32 guard, called
    with its input's device) act as the CPU one, which does the same (nothing, it is
    ``enabled=False``) on meta tensors; restored on exit."""
    real = torch.autocast

    class Autocast(real):
        def __init__(self, device_type: str, *args, **kwargs) -> None:
            super().__init__("cpu" if device_type == "meta" else device_type, *args, **kwargs)

    torch.autocast = Autocast
    try:
        yield
    finally:
        torch.autocast = real


def gflops(fn) -> float:
    """GFLOPs (a multiply-add = 2) counted by FlopCounterMode while ``fn()`` runs
    (convolutions, matmuls, attention; not FFTs, norms or element-wise ops)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def meta_inputs(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rgb (1, 3, H, W), target (1, 1, H, W), valid (1, 1, H, W) bool) on the meta device."""
    rgb = torch.zeros(1, 3, height, width, device="meta")
    target = torch.zeros(1, 1, height, width, device="meta")
    return rgb, target, torch.ones(1, 1, height, width, dtype=torch.bool, device="meta")


def count_scale(size: str, height: int, width: int) -> tuple[list, dict]:
    """Parameters and FLOPs per image of both stages' networks, built on the meta device
    (no memory, no weights): component rows (name, M params, trained in, forward GFLOPs)
    and per stage {"total", "trainable" (M), "forward", "train" (GFLOPs: forward + backward)}."""
    rgb, target, valid = meta_inputs(height, width)
    with torch.device("meta"), autocast_accepts_meta():
        s1, s2 = stage_network(1, size), stage_network(2, size)
        net1, net2 = s1.net, s2
        z = torch.zeros(1, 4, height // net1.latent_factor, width // net1.latent_factor)
        unet = gflops(lambda: net1.denoise(z))
        feature = s1.tap.pop()
        tokens = []
        encoder = gflops(lambda: tokens.extend(s1.encoder((rgb + 1.0) / 2.0)))
        components = [
            ("VAE encoder", millions(net1.vae.encoder) + millions(net1.vae.quant_conv),
             "frozen (stage 1 runs it twice: RGB and target)", gflops(lambda: net1.encode(rgb))),
            ("U-Net", millions(net1.unet), "stages 1 and 2", unet),
            ("FE block", millions(net2.unet.fftblock), "stage 2",
             gflops(lambda: net2.denoise(z)) - unet),
            ("VAE decoder", millions(net1.vae.decoder) + millions(net1.vae.post_quant_conv),
             "frozen (stage 2 back-propagates through it)", gflops(lambda: net1.decode(z))),
            (f"{s1.encoder.model.pretrained_cfg['architecture']} ({s1.encoder.embed_dim} wide, "
             f"input x{s1.encoder.input_scale})", millions(s1.encoder), "frozen (stage 1)",
             encoder),
            ("FA projector + loss", millions(s1.alignment), "stage 1",
             gflops(lambda: s1.alignment(feature, *tokens))),
        ]  # fmt: skip
        stages = {}
        for stage, network, loss in ((1, s1, stage1_loss), (2, s2, stage2_loss)):
            stages[stage] = {
                "total": millions(network),
                "trainable": trainable_millions(network),
                "forward": gflops(lambda n=network, f=loss: f(n, rgb, target, valid)),
                "train": gflops(lambda n=network, f=loss: f(n, rgb, target, valid).backward()),
            }
    return components, stages


def available_gb(device: torch.device) -> float:
    """Memory free for a new run (GB): CUDA's free memory, or the host's MemAvailable
    (infinite where /proc/meminfo is missing)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 1e9
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return math.inf


def step_plan(total_m: float, trainable_m: float, free_gb: float) -> tuple[bool, float] | None:
    """Whether the measured step can afford Adam, and the GB the full step (with Adam) needs
    (fp32: 4 bytes per weight, per gradient, per Adam moment, plus 1 GB for activations and
    the runtime); None when even forward + backward (weights + gradients) does not fit in
    ``free_gb``."""
    full = (total_m + 3 * trainable_m) * 4e6 / 1e9 + 1.0
    without_adam = (total_m + trainable_m) * 4e6 / 1e9 + 1.0
    if without_adam > free_gb:
        return None
    return full <= free_gb, full


def measured_step(
    stage: int, size: str, device: torch.device, args: argparse.Namespace, adam: bool = True
) -> dict:
    """Seconds per training step (forward + backward + Adam; without ``adam`` forward +
    backward only, gradients accumulating) of the stage's network at
    ``args.height`` x ``args.width``, batch 1, on ``device``, after one warm-up step; and the
    peak memory (GB) of the run (weights, gradients, Adam moments, activations): CUDA's
    ``max_memory_allocated``, or the process's peak RSS above its RSS before the build."""
    import gc

    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    base = None if cuda or not reset_peak_rss() else _status_kb("VmRSS")
    with torch.device(device):
        network = stage_network(stage, size)
    params = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-6)
    loss_fn = stage1_loss if stage == 1 else stage2_loss
    g = torch.Generator().manual_seed(0)
    shape = (1, 1, args.height, args.width)
    rgb = (torch.rand((1, 3, args.height, args.width), generator=g) * 2 - 1).to(device)
    target = (torch.rand(shape, generator=g) * 2 - 1).to(device)
    valid = torch.ones(shape, dtype=torch.bool, device=device)
    # One CPU thread: CPU time; more threads or a GPU: wall time (synchronised).
    clock = time.process_time if not cuda and args.threads == 1 else time.perf_counter
    start = 0.0
    for i in range(1 + args.steps):
        if i == 1:
            if cuda:
                torch.cuda.synchronize(device)
            start = clock()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(network, rgb, target, valid).backward()
        if adam:
            optimizer.step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (clock() - start) / args.steps
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        high = _status_kb("VmHWM") if base is not None else None
        peak = (high - base) / 2**20 if high is not None else math.nan
    del network, optimizer, params  # free before the other stage is built
    gc.collect()
    return {"seconds": seconds, "peak_gb": peak}


def run_scale(args: argparse.Namespace) -> None:
    """Parameters and FLOPs of the real-size (SD-2) network per 480x640 image (meta device),
    and its measured training step time at a small resolution on the best device present."""
    torch.set_num_threads(args.threads)
    size = "tiny" if args.tiny else "sd2"
    h, w = args.flops_height, args.flops_width
    components, stages = count_scale(size, h, w)
    print(f"| part ({size}) | parameters (M) | trained in | forward GFLOPs per {h}x{w} image |")
    print("|---|---|---|---|")
    for name, params, trained, flops in components:
        print(f"| {name} | {params:.1f} | {trained} | {flops:.1f} |", flush=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = device.type if device.type == "cuda" else f"cpu, {args.threads} thread(s)"
    print()
    print(
        f"| stage ({size}) | parameters total (M) | trainable (M) "
        f"| forward GFLOPs per {h}x{w} image | training GFLOPs (forward + backward) "
        f"| step s ({args.height}x{args.width}, batch 1, {where}) | peak memory of that (GB) |"
    )
    print("|---|---|---|---|---|---|---|")
    for stage in (1, 2):
        s = stages[stage]
        free = available_gb(device)
        # Refuse rather than be OOM-killed on a shared machine: fp32 Adam at SD-2 size needs
        # about 15 GB for either stage.
        plan = step_plan(s["total"], s["trainable"], free)
        if plan is None:
            need = (s["total"] + s["trainable"]) * 4e-3 + 1.0
            cells = f"skipped: needs {need:.0f} GB even without Adam, {free:.1f} GB free | -"
        else:
            step = measured_step(stage, size, device, args, adam=plan[0])
            note = "" if plan[0] else f" (no Adam: needs {plan[1]:.0f} GB, {free:.1f} GB free)"
            cells = f"{step['seconds']:.2f}{note} | {step['peak_gb']:.2f}"
        print(
            f"| stage {stage} | {s['total']:.1f} | {s['trainable']:.1f} | {s['forward']:.0f} "
            f"| {s['train']:.0f} | {cells} |",
            flush=True,
        )


# ---- predict (issue #12, Performance) ---------------------------------------------------------
GOAL_PREDICT_RATIO = 1.1  # whole predict path / bare encode + U-Net + decode, at most
WILD = Path(__file__).resolve().parent.parent / "tests" / "data" / "in_the_wild"


def write_photos(folder: Path, count: int, height: int, width: int) -> Path:
    """``count`` JPEGs of ``height`` x ``width`` in ``folder`` (made once), cut from the real
    photos of tests/data/in_the_wild, so decoding and the outputs see real image content."""
    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.jpg"))) == count:
        return folder
    photos = [Image.open(p).convert("RGB") for p in sorted(WILD.glob("*.jpg"))]
    for i in range(count):
        photo = photos[i % len(photos)]
        scale = max(height / photo.height, width / photo.width) * (1.0 + 0.5 * (i % 3))
        big = photo.resize((math.ceil(photo.width * scale), math.ceil(photo.height * scale)))
        left, top = (i * 37) % (big.width - width + 1), (i * 53) % (big.height - height + 1)
        big.crop((left, top, left + width, top + height)).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


def bare_forwards(net, images: list[torch.Tensor]) -> float:
    """Seconds for VAE encode + U-Net + VAE decode of each (1, 3, H, W) [-1, 1] tensor, nothing
    else (no decoding of files, no resizing, no outputs)."""
    start = time.process_time()
    with torch.inference_mode():
        for x in images:
            net.decode(net.denoise(net.encode(x)))
    return time.process_time() - start


def api_predict(net, folder: Path, out: Path) -> float:
    """Seconds of :func:`dm_lightning.predict_images` over the folder: JPEG decoding, the
    network at native size, npy + 16-bit PNG + colour PNG written per image."""
    from dm_lightning.inference.api import predict_images

    start = time.process_time()
    predict_images(net, folder, out, device="cpu", progress=False, processing_res="native")
    return time.process_time() - start


def pipeline_predict(pipe, images: list) -> float:
    """Seconds of ``DepthMasterPipeline`` (diffusers) over decoded PIL images, one call each at
    native size, numpy output: input conversion, the network, output conversion; no files."""
    start = time.process_time()
    for image in images:
        pipe(image, processing_resolution=0)
    return time.process_time() - start


def lightning_predict(task, folder: Path, out: Path) -> float:
    """Seconds of ``Trainer.predict`` as ``dm-lightning predict --config configs/predict.yaml``
    runs it: DepthMasterTask.predict_step, DepthDataModule's image loader (no workers) and
    DepthPredictionWriter."""
    import lightning as L

    from dm_lightning.data.datamodule import DepthDataModule
    from dm_lightning.training.callbacks import DepthPredictionWriter

    start = time.process_time()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[DepthPredictionWriter(str(out))],
    )
    with contextlib.redirect_stdout(None):  # the writer's summary line
        trainer.predict(
            task,
            datamodule=DepthDataModule(predict=str(folder), num_workers=0),
            return_predictions=False,  # as dm-lightning predict: the writer keeps the maps
        )
    return time.process_time() - start


def _rss_mb(field: str = "VmRSS") -> float:
    import resource

    kb = _status_kb(field)
    return (kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def run_predict(args: argparse.Namespace) -> None:
    """The predict path against the bare network forwards on the same images (CPU time of the
    process with one torch thread, so other jobs on a shared machine do not count; interleaved
    repeats, best of each), then peak RSS of predict over growing folders."""
    import logging
    import tempfile
    import warnings

    from dm_lightning.data.predict import ImageFolder
    from dm_lightning.models.depthmaster import signed_rgb
    from dm_lightning.models.loading import load_depthmaster
    from dm_lightning.training.base import DepthMasterTask

    torch.set_num_threads(1)
    pinned = pin_glibc_heap()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*isinstance.*LeafSpec.*")
    work = Path(args.work or tempfile.mkdtemp(prefix="dm-bench-predict-"))
    h, w = args.height, args.width
    folder = model_folder(work, args.model)
    photos = write_photos(work / f"photos-{h}x{w}-{args.images}", args.images, h, w)
    net = load_depthmaster(folder).eval()
    task = DepthMasterTask(str(folder), processing_res="native").eval()  # as the bare forwards
    f = net.latent_factor
    if h % f or w % f:
        raise SystemExit(f"--height and --width must be multiples of {f} (no resize to time)")
    images = [signed_rgb(s["rgb"][None]) for s in ImageFolder(str(photos))]
    out = work / "out"
    from PIL import Image

    from dm_lightning.models.pipeline_loading import pipeline_from_network

    pipe = pipeline_from_network(net)
    pil = [Image.open(p).convert("RGB") for p in sorted(photos.glob("*.jpg"))]
    paths = {
        "DepthMasterPipeline (diffusers, no files)": partial(pipeline_predict, pipe, pil),
        "predict_images (API)": partial(api_predict, net, photos, out / "api"),
        "dm-lightning predict (Trainer + writer)": partial(
            lightning_predict, task, photos, out / "cli"
        ),
    }
    best = {"bare": math.inf, **{name: math.inf for name in paths}}
    bare_forwards(net, images[:1])  # warm-up: first-call kernel selection
    for _ in range(args.repeats):
        best["bare"] = min(best["bare"], bare_forwards(net, images))
        for name, fn in paths.items():
            best[name] = min(best[name], fn())
    n = len(images)
    print(
        f"| path ({args.model} model, {n} JPEGs {h}x{w}, CPU time, 1 thread, "
        f"heap {'pinned' if pinned else 'glibc default'}) | bare forwards (ms/image) "
        f"| predict path (ms/image) | overhead (ms/image) | predict / bare "
        f"| goal <= {GOAL_PREDICT_RATIO}x |"
    )
    print("|---|---|---|---|---|---|")
    for name in paths:
        ratio = best[name] / best["bare"]
        verdict = "PASS" if ratio <= GOAL_PREDICT_RATIO else "FAIL"
        print(
            f"| {name} | {best['bare'] / n * 1e3:.1f} | {best[name] / n * 1e3:.1f} "
            f"| {(best[name] - best['bare']) / n * 1e3:.1f} | {ratio:.3f}x | {verdict} |",
            flush=True,
        )
    del paths, task, images, pipe, pil

    # Streaming: the tiny model over folders of growing size, each in a fresh process whose
    # heap returns freed buffers (so RSS follows live memory); RSS must not follow the count.
    counts = sorted(args.stream_counts)
    side = args.stream_size
    stream = write_photos(work / f"stream-{side}-{counts[-1]}", counts[-1], side, side)
    tiny_model_folder(work)
    print()
    print(
        f"| images in the folder (tiny model, {side}x{side} JPEGs, fresh process each) "
        "| RSS before (MB) | peak RSS during predict (MB) | peak above the smallest folder (MB) "
        "| holding the decoded images instead would add (MB) | seconds |"
    )
    print("|---|---|---|---|---|---|")
    first_peak = None
    for count in counts:
        subset = work / f"stream-{side}-first-{count}"
        subset.mkdir(exist_ok=True)
        for file in sorted(stream.glob("*.jpg"))[:count]:  # links: the same pixels every time
            if not (subset / file.name).exists():
                (subset / file.name).symlink_to(file)
        m = stream_child(work, subset, work / f"stream-out-{count}")
        if m["written"] != count:
            raise RuntimeError(f"wrote {m['written']} of {count} images")
        first_peak = m["peak_mb"] if first_peak is None else first_peak
        print(
            f"| {count} | {m['before_mb']:.0f} | {m['peak_mb']:.0f} "
            f"| {m['peak_mb'] - first_peak:+.0f} | {m['held_mb']:.0f} | {m['seconds']:.1f} |",
            flush=True,
        )


def stream_child(work: Path, folder: Path, out: Path) -> dict:
    """:func:`run_predict_stream_child` in a fresh interpreter: its JSON measurements."""
    import subprocess
    import sys

    cmd = [sys.executable, str(Path(__file__).resolve()), "predict-stream-child"]
    cmd += ["--work", str(work), "--folder", str(folder), "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_predict_stream_child(args: argparse.Namespace) -> None:
    """Peak RSS of ``predict_images`` (tiny model) over one folder, above the RSS once the
    model is loaded and one image predicted; then, for scale, what keeping every decoded
    image of the folder in a list adds."""
    from dm_lightning.data.predict import ImageFolder
    from dm_lightning.inference.api import predict_images
    from dm_lightning.models.loading import load_depthmaster

    set_glibc_heap(64 * 1024)  # freed buffers go back to the OS: RSS follows live memory
    torch.set_num_threads(1)
    net = load_depthmaster(tiny_model_folder(Path(args.work))).eval()
    first = sorted(Path(args.folder).glob("*.jpg"))[0]
    predict_images(net, first, Path(args.out) / "warm-up", "native", progress=False)
    before = _rss_mb()
    reset = reset_peak_rss()
    start = time.perf_counter()
    summary = predict_images(net, args.folder, args.out, "native", progress=False)
    seconds = time.perf_counter() - start
    peak = _rss_mb("VmHWM" if reset else "VmPeak")
    rss = _rss_mb()
    held = [sample["rgb"] for sample in ImageFolder(args.folder)]
    held_mb = _rss_mb() - rss
    del held
    print(
        json.dumps(
            {
                "written": summary.written,
                "before_mb": before,
                "peak_mb": peak,
                "held_mb": held_mb,
                "seconds": seconds,
            }
        )
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
    st = sub.add_parser("step", help="Lightning training step vs a plain PyTorch loop")
    st.add_argument("--work", default=None, help="folder for the tiny model (default: temp)")
    st.add_argument("--batch", type=int, default=4)
    st.add_argument("--height", type=int, default=96)
    st.add_argument("--width", type=int, default=128)
    st.add_argument("--warmup", type=int, default=5, help="untimed steps per repeat")
    st.add_argument("--steps", type=int, default=30, help="timed steps per repeat")
    st.add_argument("--repeats", type=int, default=3)
    st.add_argument(
        "--system-malloc", action="store_true", help="leave glibc's heap thresholds as they are"
    )
    mem = sub.add_parser("memory", help="stage-2 peak memory with / without checkpointing")
    mem.add_argument("--work", default=None, help="folder for the model (default: temp)")
    mem.add_argument("--model", choices=("tiny", "medium"), default="medium")
    mem.add_argument("--batch", type=int, default=2, help="micro-batch of the comparison")
    mem.add_argument("--height", type=int, default=256)
    mem.add_argument("--width", type=int, default=320)
    mem.add_argument("--budget-mb", type=float, default=2048.0)
    mem.add_argument("--max-batch", type=int, default=64, help="largest micro-batch tried")
    child = sub.add_parser("memory-child", help="(internal) one measurement of `memory`")
    child.add_argument("--model-path", required=True)
    child.add_argument("--batch", type=int, required=True)
    child.add_argument("--height", type=int, required=True)
    child.add_argument("--width", type=int, required=True)
    child.add_argument("--checkpointing", action="store_true")
    sc = sub.add_parser("scale", help="parameters, FLOPs and step time of the SD-2-size network")
    sc.add_argument("--tiny", action="store_true", help="the tiny configs instead of SD-2 size")
    sc.add_argument("--flops-height", type=int, default=480)
    sc.add_argument("--flops-width", type=int, default=640)
    sc.add_argument("--height", type=int, default=64, help="of the measured step")
    sc.add_argument("--width", type=int, default=64, help="of the measured step")
    sc.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    sc.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    pr = sub.add_parser("predict", help="predict path vs bare forwards; streaming RSS")
    pr.add_argument("--work", default=None, help="folder for models and images (default: temp)")
    pr.add_argument("--model", choices=("tiny", "medium"), default="medium")
    pr.add_argument("--images", type=int, default=4, help="JPEGs of the overhead comparison")
    pr.add_argument("--height", type=int, default=256)
    pr.add_argument("--width", type=int, default=320)
    pr.add_argument("--repeats", type=int, default=5)
    pr.add_argument(
        "--stream-counts", type=int, nargs="+", default=[200, 1000], help="folder sizes"
    )
    pr.add_argument("--stream-size", type=int, default=64, help="side of the streamed JPEGs")
    prc = sub.add_parser("predict-stream-child", help="(internal) one folder of `predict`")
    prc.add_argument("--work", required=True)
    prc.add_argument("--folder", required=True)
    prc.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    suites = {"data": run_data, "eval": run_eval, "step": run_step, "memory": run_memory}
    suites.update({"memory-child": run_memory_child, "scale": run_scale})
    suites.update({"predict": run_predict, "predict-stream-child": run_predict_stream_child})
    suites[args.what](args)


if __name__ == "__main__":
    main()
