"""Evaluation and predict measurements of the GPU check, through the task's own paths:
``DepthMaster.predict`` (what validation, test and predict steps call) and the task's
:class:`~dm_lightning.evaluation.book.EvaluationBook` (alignment and metrics on the
device, no host sync per batch), under Lightning's precision context, in inference mode as
Lightning's validation runs."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from dm_lightning.evaluation.keys import metric_key
from dm_lightning.gpu_check.training import precision_context
from dm_lightning.training.base import DepthMasterTask


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def eval_batch(n: int, height: int, width: int, seed: int) -> dict[str, Any]:
    """An evaluation-loader batch on the CPU (as a DataLoader delivers it): ``rgb`` (n, 3, H, W)
    uint8, ``depth`` (n, 1, H, W) float32 metres in [0.5, 10), ``valid`` (about 95%),
    ``min_depth`` / ``max_depth`` (n,) float64, ``key``."""
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand((n, 1, height, width), generator=g) * 9.5 + 0.5
    return {
        "rgb": torch.randint(0, 256, (n, 3, height, width), generator=g, dtype=torch.uint8),
        "depth": depth,
        "valid": depth < 10.0 - 0.475,
        "min_depth": torch.full((n,), 1e-3, dtype=torch.float64),
        "max_depth": torch.full((n,), 80.0, dtype=torch.float64),
        "key": [f"e{seed}-{i}" for i in range(n)],
    }


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}  # fmt: skip


def eval_images_per_s(
    task: DepthMasterTask,
    device: torch.device,
    height: int,
    width: int,
    images: int,
    batch: int,
    precision: str,
) -> dict[str, Any]:
    """Images per second of a validation epoch at ``height`` x ``width`` (native size): copy
    each batch to the device, predict, score into the task's evaluation book, and compute the
    split's means at the end (one host sync). One untimed batch first (kernel selection)."""
    task.to(device).eval()
    book = task.evaluation
    batches = [eval_batch(batch, height, width, seed) for seed in range(-(-images // batch))]
    logged: dict[str, float] = {}

    def log(name: str, value: torch.Tensor, **_: Any) -> None:
        logged[name] = float(value)

    with torch.inference_mode(), precision_context(precision, device):
        book.build({"val": ["check"]}, device)
        moved = _to(batches[0], device)
        book.update("val", "check", moved, task.net.predict(moved["rgb"]))
        book.build({"val": ["check"]}, device)  # the warm-up batch does not count
        _sync(device)
        start = time.perf_counter()
        for b in batches:
            moved = _to(b, device)
            book.update("val", "check", moved, task.net.predict(moved["rgb"]))
        book.compute_and_log("val", ["check"], log)
        _sync(device)
        seconds = time.perf_counter() - start
    counted = int(logged[metric_key("val", "check", "num_images")])
    if counted != len(batches) * batch:
        raise RuntimeError(f"the evaluation counted {counted} images of {len(batches) * batch}")
    return {
        "images_per_s": counted / seconds,
        "images": counted,
        "batch": batch,
        "precision": precision,
        "abs_rel": logged[metric_key("val", "check", "abs_rel")],
    }


def predict_latency(
    task: DepthMasterTask,
    device: torch.device,
    input_hw: tuple[int, int],
    processing_res: int,
    repeats: int,
    precision: str,
) -> dict[str, Any]:
    """Seconds per photo of the predict step: one uint8 image of ``input_hw`` on the host
    copied to the device, ``DepthMaster.predict`` at ``processing_res`` (long edge) and the
    depth map copied back at input size; median of ``repeats`` after one warm-up."""
    task.to(device).eval()
    image = eval_batch(1, *input_hw, seed=0)["rgb"]
    working = task.net.working_size(*input_hw, processing_res)
    times = []
    with torch.inference_mode(), precision_context(precision, device):
        for i in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            depth = task.net.predict(image.to(device), processing_res).cpu()
            if i:
                times.append(time.perf_counter() - start)
    if tuple(depth.shape[-2:]) != tuple(input_hw):
        raise RuntimeError(f"predict returned {tuple(depth.shape)} for a {input_hw} input")
    return {
        "latency_s": statistics.median(times),
        "min_s": min(times),
        "repeats": repeats,
        "input": list(input_hw),
        "working_size": list(working),
        "processing_res": processing_res,
        "precision": precision,
    }
