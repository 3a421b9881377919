"""``scale`` (issue #11, Scale out): parameters and FLOPs of the real-size (SD-2) network per
480x640 image, counted on the meta device, and its measured training step time at a small
resolution on the best device present.

Each stage is its Lightning task (``Stage1`` / ``Stage2``) built around a random network of the
size (:func:`~benchmarks.networks.stage_task`): the task freezes it and its own
``training_loss`` is what is counted and timed. ``count_scale`` also serves tools/gpu_check.py.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dm_lightning.evaluation.tables import table_row
from dm_lightning.training.base import DepthMasterTask

from . import print_table_header, suite_parser
from .networks import REAL_ENCODER, TINY_ENCODER, build_depthmaster, stage_task, synthetic_batches
from .process import reset_peak_rss, status_kb


def stage_network(stage: int, size: str) -> DepthMasterTask:
    """The stage's task around a random network of ``size``, on the current default device:
    stage 1 with DINOv2 ViT-L/14 (the tiny encoder at ``tiny``), stage 2 with the FE block;
    the VAE (and encoder) frozen by the task."""
    encoder = TINY_ENCODER if size == "tiny" else REAL_ENCODER
    return stage_task(stage, f"(random {size} network)", encoder, net=build_depthmaster(size))


def millions(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def trainable_millions(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters() if p.requires_grad) / 1e6


@contextlib.contextmanager
def autocast_accepts_meta() -> Iterator[None]:
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


def gflops(fn: Callable[[], object]) -> float:
    """GFLOPs (a multiply-add = 2) counted by FlopCounterMode while ``fn()`` runs
    (convolutions, matmuls, attention; not FFTs, norms or element-wise ops)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def meta_batch(height: int, width: int) -> dict[str, torch.Tensor]:
    """A finished batch of one image on the meta device: ``rgb`` (1, 3, H, W) uint8,
    ``depth`` (1, 1, H, W) float32, ``valid`` (1, 1, H, W) bool."""
    return {
        "rgb": torch.zeros(1, 3, height, width, dtype=torch.uint8, device="meta"),
        "depth": torch.ones(1, 1, height, width, device="meta"),
        "valid": torch.ones(1, 1, height, width, dtype=torch.bool, device="meta"),
    }


def count_scale(size: str, height: int, width: int) -> tuple[list, dict]:
    """Parameters and FLOPs per image of both stages' networks, built on the meta device
    (no memory, no weights): component rows (name, M params, trained in, forward GFLOPs)
    and per stage {"total", "trainable" (M), "forward", "train" (GFLOPs: forward + backward
    of the task's ``training_loss``)}."""
    batch = meta_batch(height, width)
    rgb = batch["rgb"].float()  # the encoders' input: only its shape and device count here
    with torch.device("meta"), autocast_accepts_meta():
        tasks = {1: stage_network(1, size), 2: stage_network(2, size)}
        s1, net1, net2 = tasks[1].network, tasks[1].net, tasks[2].net
        z = torch.zeros(1, 4, height // net1.latent_factor, width // net1.latent_factor)
        with s1.tap.recording():  # the stage-1 network's tap records inside this block only
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
        for stage, task in tasks.items():
            stages[stage] = {
                "total": millions(task),
                "trainable": trainable_millions(task),
                "forward": gflops(lambda t=task: t.training_loss(batch)[0]),
                "train": gflops(lambda t=task: t.training_loss(batch)[0].backward()),
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
    """Seconds per training step (the task's ``training_loss``, backward, Adam; without
    ``adam`` forward + backward only, gradients accumulating) of the stage at
    ``args.height`` x ``args.width``, batch 1, on ``device``, after one warm-up step; and the
    peak memory (GB) of the run (weights, gradients, Adam moments, activations): CUDA's
    ``max_memory_allocated``, or the process's peak RSS above its RSS before the build."""
    gc.collect()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    base = None if cuda or not reset_peak_rss() else status_kb("VmRSS")
    with torch.device(device):
        task = stage_network(stage, size)
    optimizer = torch.optim.Adam(task.trainable_parameters(), lr=1e-6)
    batch = synthetic_batches(1, 1, args.height, args.width)[0]
    batch = {k: v.to(device) for k, v in batch.items()}
    # One CPU thread: CPU time; more threads or a GPU: wall time (synchronised).
    clock = time.process_time if not cuda and args.threads == 1 else time.perf_counter
    start = 0.0
    for i in range(1 + args.steps):
        if i == 1:
            if cuda:
                torch.cuda.synchronize(device)
            start = clock()
        optimizer.zero_grad(set_to_none=True)
        task.training_loss(batch)[0].backward()
        if adam:
            optimizer.step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (clock() - start) / args.steps
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        high = status_kb("VmHWM") if base is not None else None
        peak = (high - base) / 2**20 if high is not None else math.nan
    del task, optimizer  # free before the other stage is built
    gc.collect()
    return {"seconds": seconds, "peak_gb": peak}


def run(args: argparse.Namespace) -> None:
    """Parameters and FLOPs of the real-size (SD-2) network per 480x640 image (meta device),
    and its measured training step time at a small resolution on the best device present."""
    torch.set_num_threads(args.threads)
    size = "tiny" if args.tiny else "sd2"
    h, w = args.flops_height, args.flops_width
    components, stages = count_scale(size, h, w)
    print_table_header(
        [f"part ({size})", "parameters (M)", "trained in", f"forward GFLOPs per {h}x{w} image"]
    )
    for name, params, trained, flops in components:
        print(table_row([name, f"{params:.1f}", trained, f"{flops:.1f}"]), flush=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = device.type if device.type == "cuda" else f"cpu, {args.threads} thread(s)"
    print()
    print_table_header(
        [
            f"stage ({size})", "parameters total (M)", "trainable (M)",
            f"forward GFLOPs per {h}x{w} image", "training GFLOPs (forward + backward)",
            f"step s ({args.height}x{args.width}, batch 1, {where})", "peak memory of that (GB)",
        ]
    )  # fmt: skip
    for stage in (1, 2):
        s = stages[stage]
        free = available_gb(device)
        # Refuse rather than be OOM-killed on a shared machine: fp32 Adam at SD-2 size needs
        # about 15 GB for either stage.
        plan = step_plan(s["total"], s["trainable"], free)
        if plan is None:
            need = (s["total"] + s["trainable"]) * 4e-3 + 1.0
            cells = [f"skipped: needs {need:.0f} GB even without Adam, {free:.1f} GB free", "-"]
        else:
            step = measured_step(stage, size, device, args, adam=plan[0])
            note = "" if plan[0] else f" (no Adam: needs {plan[1]:.0f} GB, {free:.1f} GB free)"
            cells = [f"{step['seconds']:.2f}{note}", f"{step['peak_gb']:.2f}"]
        numbers = [f"{s['total']:.1f}", f"{s['trainable']:.1f}", f"{s['forward']:.0f}"]
        print(table_row([f"stage {stage}", *numbers, f"{s['train']:.0f}", *cells]), flush=True)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``scale`` sub-command of tools/benchmark.py."""
    help_ = "parameters, FLOPs and step time of the SD-2-size network"
    sc = suite_parser(sub, "scale", help_, run, __doc__)
    sc.add_argument("--tiny", action="store_true", help="the tiny configs instead of SD-2 size")
    sc.add_argument("--flops-height", type=int, default=480)
    sc.add_argument("--flops-width", type=int, default=640)
    sc.add_argument("--height", type=int, default=64, help="of the measured step")
    sc.add_argument("--width", type=int, default=64, help="of the measured step")
    sc.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    sc.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
