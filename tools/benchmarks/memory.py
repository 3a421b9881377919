"""``memory`` (issue #11, Scale out): stage-2 peak step memory without / with U-Net + decoder
checkpointing at one micro-batch, and the largest micro-batch that fits a memory budget each
way. Each measurement runs ``Stage2.training_loss`` and ``backward`` in a fresh interpreter
(the internal ``memory-child`` sub-command), so no step sees another's heap.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
from functools import partial
from pathlib import Path

import torch

from dm_lightning.evaluation.tables import table_row
from dm_lightning.gpu_check.search import largest_batch
from dm_lightning.training.stage2 import Stage2

from . import print_table_header, suite_parser
from .networks import add_network_options, model_folder, synthetic_batches
from .process import reset_peak_rss, run_child, set_glibc_heap, status_kb

GOAL_MEMORY_RATIO = 0.6  # stage-2 peak with checkpointing / without, at most


def stage2_step_peak_mb(args: argparse.Namespace) -> dict:
    """Peak memory (MB) of one stage-2 forward + backward (``Stage2.training_loss``, then
    ``backward``; no optimizer step) above the memory held once model and batch are in
    place: CUDA ``max_memory_allocated`` on a GPU, else the process's peak RSS (the kernel's
    high-water mark, reset just before the step; ``ru_maxrss`` where it cannot be reset)."""
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
        reset = reset_peak_rss() and status_kb("VmHWM") is not None
        base = (status_kb("VmRSS") if reset else None) or resource.getrusage(
            resource.RUSAGE_SELF
        ).ru_maxrss
    loss, _ = task.training_loss(batch)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak_bytes = torch.cuda.max_memory_allocated() - base
    else:
        high = status_kb("VmHWM") if reset else None
        peak_bytes = ((high or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) - base) * 1024
    return {"peak_mb": peak_bytes / 2**20, "device": device.type}


def run_child_measurement(args: argparse.Namespace) -> None:
    """``memory-child``: one :func:`stage2_step_peak_mb`, printed as JSON."""
    # Every buffer of 64 kB or more in its own mapping, returned to the OS when freed: RSS
    # then follows the live tensors. With glibc's dynamic threshold the transient buffers of
    # checkpointing's recomputation stay resident in the heap, and RSS said 0.77x where the
    # live peak is 0.53x (medium model, 256x320, micro-batch 2).
    set_glibc_heap(64 * 1024)
    print(json.dumps(stage2_step_peak_mb(args)))


def measure_peak_mb(
    folder: Path, batch: int, height: int, width: int, checkpointing: bool
) -> tuple[float, str]:
    """:func:`stage2_step_peak_mb` in a fresh interpreter (one configuration per process, so
    no step sees another's heap): (peak MB, device type)."""
    out = run_child(
        "memory-child", "--model-path", str(folder), "--batch", str(batch), "--height",
        str(height), "--width", str(width), *(["--checkpointing"] if checkpointing else []),
    )  # fmt: skip
    return out["peak_mb"], out["device"]


def fits_budget(
    folder: Path, size: tuple[int, int], checkpointing: bool, budget_mb: float, batch: int
) -> bool:
    """Whether a stage-2 step at micro-batch ``batch`` peaks within ``budget_mb`` (each probe
    logged to stderr)."""
    peak, _ = measure_peak_mb(folder, batch, *size, checkpointing)
    print(f"memory: checkpointing={checkpointing} batch={batch}: {peak:.0f} MB", file=sys.stderr)
    return peak <= budget_mb


def run(args: argparse.Namespace) -> None:
    """Stage-2 peak step memory without / with U-Net + decoder checkpointing at one
    micro-batch, and the largest micro-batch that fits a memory budget each way."""
    work = Path(args.work or tempfile.mkdtemp(prefix="dm-bench-memory-"))
    folder = model_folder(work, args.model)
    size = (args.height, args.width)
    without, device = measure_peak_mb(folder, args.batch, *size, False)
    with_ckpt, _ = measure_peak_mb(folder, args.batch, *size, True)
    ratio = with_ckpt / without
    verdict = "PASS" if ratio <= GOAL_MEMORY_RATIO else "FAIL"
    print_table_header(
        [
            f"stage 2 ({args.model} model, {args.height}x{args.width}, {device})", "micro-batch",
            "peak without checkpointing (MB)", "peak with U-Net + decoder checkpointing (MB)",
            "with / without", f"goal <= {GOAL_MEMORY_RATIO}x",
        ]
    )  # fmt: skip
    cells = [
        "one forward + backward", args.batch, f"{without:.0f}", f"{with_ckpt:.0f}",
        f"{ratio:.2f}x", verdict,
    ]  # fmt: skip
    print(table_row(cells), flush=True)
    print()
    print_table_header(
        [
            "budget (MB)", "largest micro-batch without checkpointing",
            "largest micro-batch with checkpointing", "gain", "searched up to",
        ]
    )  # fmt: skip
    # Doubling, then bisection (the GPU check's search, without its time cap).
    largest = [
        largest_batch(partial(fits_budget, folder, size, on, args.budget_mb), args.max_batch).batch
        for on in (False, True)
    ]
    gain = f"{largest[1] / largest[0]:.1f}x" if largest[0] else "-"
    cells = [f"{args.budget_mb:.0f}", largest[0], largest[1], gain, args.max_batch]
    print(table_row(cells), flush=True)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``memory`` sub-command of tools/benchmark.py and its internal ``memory-child``."""
    help_ = "stage-2 peak memory with / without checkpointing"
    mem = suite_parser(sub, "memory", help_, run, __doc__)
    add_network_options(mem, "folder for the model (default: temp)")
    mem.add_argument("--batch", type=int, default=2, help="micro-batch of the comparison")
    mem.add_argument("--budget-mb", type=float, default=2048.0)
    mem.add_argument("--max-batch", type=int, default=64, help="largest micro-batch tried")
    child = suite_parser(
        sub, "memory-child", "(internal) one measurement of `memory`", run_child_measurement
    )
    child.add_argument("--model-path", required=True)
    child.add_argument("--batch", type=int, required=True)
    child.add_argument("--height", type=int, required=True)
    child.add_argument("--width", type=int, required=True)
    child.add_argument("--checkpointing", action="store_true")
