"""``predict`` (issue #12, Performance): the predict paths against the bare network forwards on
the same images (CPU time of the process with one torch thread, so other jobs on a shared
machine do not count; interleaved repeats, best of each), then peak RSS of predict over growing
folders, each in a fresh interpreter (the internal ``predict-stream-child`` sub-command).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from PIL import Image

from dm_lightning.data.datamodule import DepthDataModule
from dm_lightning.data.predict import ImageFolder
from dm_lightning.evaluation.tables import table_row
from dm_lightning.inference.api import predict_images
from dm_lightning.models.depthmaster import DepthMaster, signed_rgb
from dm_lightning.models.loading import load_depthmaster
from dm_lightning.models.pipeline_loading import pipeline_from_network
from dm_lightning.training.base import DepthMasterTask
from dm_lightning.training.callbacks import DepthPredictionWriter

from . import REPO, print_table_header, suite_parser
from .networks import add_network_options, model_folder, tiny_model_folder
from .process import (
    pin_glibc_heap,
    quiet_lightning,
    reset_peak_rss,
    rss_mb,
    run_child,
    set_glibc_heap,
)

GOAL_PREDICT_RATIO = 1.1  # whole predict path / bare encode + U-Net + decode, at most
WILD = REPO / "tests" / "data" / "in_the_wild"


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


def bare_forwards(net: DepthMaster, images: list[torch.Tensor]) -> float:
    """Seconds for VAE encode + U-Net + VAE decode of each (1, 3, H, W) [-1, 1] tensor, nothing
    else (no decoding of files, no resizing, no outputs)."""
    start = time.process_time()
    with torch.inference_mode():
        for x in images:
            net.decode(net.denoise(net.encode(x)))
    return time.process_time() - start


def api_predict(net: DepthMaster, folder: Path, out: Path) -> float:
    """Seconds of :func:`dm_lightning.predict_images` over the folder: JPEG decoding, the
    network at native size, npy + 16-bit PNG + colour PNG written per image."""
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


def lightning_predict(task: DepthMasterTask, folder: Path, out: Path) -> float:
    """Seconds of ``Trainer.predict`` as ``dm-lightning predict --config configs/predict.yaml``
    runs it: DepthMasterTask.predict_step, DepthDataModule's image loader (no workers) and
    DepthPredictionWriter."""
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


def run(args: argparse.Namespace) -> None:
    """The predict path against the bare network forwards on the same images (CPU time of the
    process with one torch thread, so other jobs on a shared machine do not count; interleaved
    repeats, best of each), then peak RSS of predict over growing folders."""
    torch.set_num_threads(1)
    pinned = pin_glibc_heap()
    quiet_lightning()
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
    print_table_header(
        [
            f"path ({args.model} model, {n} JPEGs {h}x{w}, CPU time, 1 thread, "
            f"heap {'pinned' if pinned else 'glibc default'})",
            "bare forwards (ms/image)", "predict path (ms/image)", "overhead (ms/image)",
            "predict / bare", f"goal <= {GOAL_PREDICT_RATIO}x",
        ]
    )  # fmt: skip
    for name in paths:
        ratio = best[name] / best["bare"]
        verdict = "PASS" if ratio <= GOAL_PREDICT_RATIO else "FAIL"
        cells = [
            name, f"{best['bare'] / n * 1e3:.1f}", f"{best[name] / n * 1e3:.1f}",
            f"{(best[name] - best['bare']) / n * 1e3:.1f}", f"{ratio:.3f}x", verdict,
        ]  # fmt: skip
        print(table_row(cells), flush=True)
    del paths, task, images, pipe, pil
    stream_table(work, sorted(args.stream_counts), args.stream_size)


def stream_table(work: Path, counts: list[int], side: int) -> None:
    """Streaming: the tiny model over folders of growing size (``counts``, ascending, of
    ``side`` x ``side`` JPEGs), each in a fresh process whose heap returns freed buffers (so
    RSS follows live memory); RSS must not follow the count."""
    stream = write_photos(work / f"stream-{side}-{counts[-1]}", counts[-1], side, side)
    tiny_model_folder(work)
    print()
    print_table_header(
        [
            f"images in the folder (tiny model, {side}x{side} JPEGs, fresh process each)",
            "RSS before (MB)", "peak RSS during predict (MB)",
            "peak above the smallest folder (MB)",
            "holding the decoded images instead would add (MB)", "seconds",
        ]
    )  # fmt: skip
    first_peak = None
    for count in counts:
        subset = work / f"stream-{side}-first-{count}"
        subset.mkdir(exist_ok=True)
        for file in sorted(stream.glob("*.jpg"))[:count]:  # links: the same pixels every time
            if not (subset / file.name).exists():
                (subset / file.name).symlink_to(file)
        m = run_child(
            "predict-stream-child", "--work", str(work), "--folder", str(subset),
            "--out", str(work / f"stream-out-{count}"),
        )  # fmt: skip
        if m["written"] != count:
            raise RuntimeError(f"wrote {m['written']} of {count} images")
        first_peak = m["peak_mb"] if first_peak is None else first_peak
        cells = [
            count, f"{m['before_mb']:.0f}", f"{m['peak_mb']:.0f}",
            f"{m['peak_mb'] - first_peak:+.0f}", f"{m['held_mb']:.0f}", f"{m['seconds']:.1f}",
        ]  # fmt: skip
        print(table_row(cells), flush=True)


def run_stream_child(args: argparse.Namespace) -> None:
    """``predict-stream-child``: peak RSS of ``predict_images`` (tiny model) over one folder,
    above the RSS once the model is loaded and one image predicted; then, for scale, what
    keeping every decoded image of the folder in a list adds. Printed as JSON."""
    set_glibc_heap(64 * 1024)  # freed buffers go back to the OS: RSS follows live memory
    torch.set_num_threads(1)
    net = load_depthmaster(tiny_model_folder(Path(args.work))).eval()
    first = sorted(Path(args.folder).glob("*.jpg"))[0]
    predict_images(net, first, Path(args.out) / "warm-up", "native", progress=False)
    before = rss_mb()
    reset = reset_peak_rss()
    start = time.perf_counter()
    summary = predict_images(net, args.folder, args.out, "native", progress=False)
    seconds = time.perf_counter() - start
    peak = rss_mb("VmHWM" if reset else "VmPeak")
    rss = rss_mb()
    held = [sample["rgb"] for sample in ImageFolder(args.folder)]
    held_mb = rss_mb() - rss
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``predict`` sub-command of tools/benchmark.py and its internal
    ``predict-stream-child``."""
    help_ = "predict path vs bare forwards; streaming RSS"
    pr = suite_parser(sub, "predict", help_, run, __doc__)
    add_network_options(pr, "folder for models and images (default: temp)")
    pr.add_argument("--images", type=int, default=4, help="JPEGs of the overhead comparison")
    pr.add_argument("--repeats", type=int, default=5)
    pr.add_argument(
        "--stream-counts", type=int, nargs="+", default=[200, 1000], help="folder sizes"
    )
    pr.add_argument("--stream-size", type=int, default=64, help="side of the streamed JPEGs")
    help_ = "(internal) one folder of `predict`"
    prc = suite_parser(sub, "predict-stream-child", help_, run_stream_child)
    prc.add_argument("--work", required=True)
    prc.add_argument("--folder", required=True)
    prc.add_argument("--out", required=True)
