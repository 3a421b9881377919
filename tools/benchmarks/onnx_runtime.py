"""onnxruntime vs PyTorch on the CPU: one DepthMaster forward at 512x512 (``--size``; the
exported graph's whole computation: encode, U-Net with the FE block, decode), per model size.

    python tools/benchmark.py onnx --models tiny medium --threads 1 2

Models are random-initialised stage-2 networks (FE block attached): ``tiny`` (the tests') and
``medium`` (the memory benchmark's: tools/benchmarks/networks.py ``build_depthmaster("medium")``).
Each is exported with :func:`~dm_lightning.inference.onnx_export.export_onnx` (default
options) and both backends run the same (1, 3, size, size) input with the same thread count.

The machine is shared, so the figure is the process's CPU time per forward
(``time.process_time``, all threads), best of ``--repeats`` interleaved rounds; wall time and
the load average are printed beside it. onnxruntime's idle threads spin by default, which
counts as CPU time with more than one thread: the session here turns spinning off, so both
sides count the work they do.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from dm_lightning.evaluation.tables import table_row

from . import print_table_header, suite_parser
from .networks import build_depthmaster


def build_stage2(size: str):
    """A random-initialised stage-2 DepthMaster of ``size`` (``tiny`` or ``medium``)."""
    from dm_lightning.models.unet_hooks import attach_fourier_enhancement

    net = build_depthmaster(size).eval()
    attach_fourier_enhancement(net.unet)
    return net


def best_times(run: Callable[[], object], rounds: int, per_round: int) -> tuple[float, float]:
    """(best CPU seconds, best wall seconds) per call over ``rounds`` rounds of ``per_round``
    calls each, after one warm-up call."""
    run()
    cpu, wall = float("inf"), float("inf")
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(per_round):
            run()
        cpu = min(cpu, (time.process_time() - c0) / per_round)
        wall = min(wall, (time.perf_counter() - w0) / per_round)
    return cpu, wall


def session_for(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def compare(
    net: torch.nn.Module, graph_path: Path, threads: int, repeats: int, per_round: int, side: int
) -> dict[str, float]:
    """One network and its exported graph on the same (1, 3, side, side) input with
    ``threads`` threads each: ``torch_cpu`` / ``ort_cpu`` / ``torch_wall`` / ``ort_wall``
    (seconds per forward, best of ``repeats`` interleaved rounds of ``per_round``),
    ``max_abs_diff`` between the two outputs, ``load_start`` / ``load_end`` (load average)."""
    from dm_lightning.inference.onnx_export import DepthGraph

    image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    graph = DepthGraph(net).eval()
    feed = {"image": image.numpy()}
    torch.set_num_threads(threads)
    session = session_for(graph_path, threads)
    with torch.inference_mode():
        expected = graph(image)
    diff = float(np.abs(session.run(None, feed)[0] - expected.numpy()).max())
    torch_cpu = torch_wall = ort_cpu = ort_wall = float("inf")
    load0 = os.getloadavg()[0]
    for _ in range(repeats):  # interleaved: a busy phase of the machine hits both sides
        with torch.inference_mode():
            c, w = best_times(lambda: graph(image), 1, per_round)
        torch_cpu, torch_wall = min(torch_cpu, c), min(torch_wall, w)
        c, w = best_times(lambda: session.run(None, feed), 1, per_round)
        ort_cpu, ort_wall = min(ort_cpu, c), min(ort_wall, w)
    return {
        "torch_cpu": torch_cpu,
        "ort_cpu": ort_cpu,
        "torch_wall": torch_wall,
        "ort_wall": ort_wall,
        "max_abs_diff": diff,
        "load_start": load0,
        "load_end": os.getloadavg()[0],
    }


def bench(
    size: str, threads: Sequence[int], repeats: int, per_round: int, work: Path, side: int
) -> None:
    """Build and export a network of ``size``, then print a row of :func:`compare` per thread
    count."""
    from dm_lightning.inference.onnx_export import export_onnx

    net = build_stage2(size)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    start = time.perf_counter()
    graph_path = export_onnx(net, work / f"{size}.onnx")
    print(f"[{size}] {params:.1f} M parameters, exported in {time.perf_counter() - start:.0f} s")
    for n in threads:
        r = compare(net, graph_path, n, repeats, per_round, side)
        cells = [
            size, n, f"{r['torch_cpu']:.3f}", f"{r['ort_cpu']:.3f}",
            f"{r['torch_cpu'] / r['ort_cpu']:.2f}x", f"{r['torch_wall']:.3f}",
            f"{r['ort_wall']:.3f}", f"{r['torch_wall'] / r['ort_wall']:.2f}x",
            f"{r['max_abs_diff']:.1e}", f"{r['load_start']:.1f} / {r['load_end']:.1f}",
        ]  # fmt: skip
        print(table_row(cells), flush=True)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``onnx`` sub-command of tools/benchmark.py."""
    parser = suite_parser(
        sub, "onnx", "onnxruntime vs PyTorch, one forward on the CPU", run, __doc__
    )
    parser.add_argument("--models", nargs="+", choices=("tiny", "medium"), default=["tiny"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1], help="threads per side")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds, best kept")
    parser.add_argument("--per-round", type=int, default=2, help="forwards per round")
    parser.add_argument("--size", type=int, default=512, help="input side in pixels")


def run(args: argparse.Namespace) -> None:
    """Print the table header, then one row per model and thread count."""
    print_table_header(
        [
            "model", "threads", "PyTorch CPU s", "onnxruntime CPU s", "CPU ratio",
            "PyTorch wall s", "onnxruntime wall s", "wall ratio", "max abs diff",
            "load avg start / end",
        ]
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        for size in args.models:
            bench(size, args.threads, args.repeats, args.per_round, Path(work), args.size)
