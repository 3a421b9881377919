"""The first GPU run, one command: training, evaluation and predict speed of the SD-2-sized
network (random weights) on one CUDA device, and a one-GPU DDP fit; JSON and Markdown out.

    PYTHONPATH=$PWD python tools/gpu_check.py --out gpu-check          # CUDA, about 7 minutes
    PYTHONPATH=$PWD python tools/gpu_check.py --smoke --out /tmp/smoke # CPU, tiny model, < 1 min

What it measures (dm_lightning.gpu_check.runner lists the sections): for stage 1 (bf16-mixed
and fp32) and stage 2 (bf16-mixed) at 480x640, the largest micro-batch that trains without
and with gradient checkpointing (doubling, then bisection; an out-of-memory error is a "no"),
samples/s and peak memory (torch.cuda.max_memory_allocated) there, and achieved TFLOP/s from
the ``scale`` benchmark's FLOP counts (tools/benchmarks/scale.py); the same with the U-Net compiled
(the tasks' compile_unet); evaluation images/s at 480x640; predict latency at 768 px; and
``dm-lightning fit --trainer.strategy ddp --trainer.devices 1`` of the tiny model (NCCL).
A section that fails records its error in the JSON and the others still run; sections not
started within the budget (--budget-s) are recorded as skipped: rerun them with --sections.
Nothing assumes a particular GPU: memory limits are what the device has.

Writes OUT/gpu_check.json and OUT/gpu_check.md (tables for BENCHMARKS.md); exit status 0 when
every section succeeded, 1 otherwise.

A machine without network access may lack some of the project's dependencies (one had torch,
lightning, timm, torchmetrics, tensorboard and onnxruntime, but not diffusers, webdataset,
jsonargparse or braceexpand): carry wheels over. Here (the versions of this environment;
with --no-deps pip fetches exactly these):

    pip download --no-deps -d wheels diffusers==0.42.1 webdataset==1.0.2 braceexpand==0.1.7 \
        jsonargparse==4.48.0 docstring-parser==0.18.0 typeshed-client==2.15.0 \
        accelerate==1.16.0 importlib-metadata zipp
    # diffusers also imports regex (a compiled wheel): if the machine lacks it, fetch the
    # one for its Python, e.g. --only-binary=:all: --python-version 3.11 \
    #     --platform manylinux2014_x86_64 regex
    tar czf wheels.tgz wheels

There, in a copy of the repository:

    tar xzf wheels.tgz && pip install --no-deps wheels/*
    PYTHONPATH=$PWD python tools/gpu_check.py --out gpu-check

(``--no-deps`` keeps pip from replacing the machine's torch.) Before anything runs, the tool
imports what its sections import and names the missing modules it meets (exit 2; one per
import chain, so a rerun may name more): fetch those the same way. None of this has been
tried on such a machine yet.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What the sections import (the ddp fit's child: the CLI, so jsonargparse and the data stack).
NEEDED = ("torch", "lightning", "yaml", "webdataset", "dm_lightning.cli",
          "dm_lightning.testing.real_size", "dm_lightning.gpu_check.runner")  # fmt: skip


def missing_modules(names: tuple[str, ...]) -> list[str]:
    """The modules that importing ``names`` finds missing (each name's first one)."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            missing.append(error.name or name)
    return sorted(set(missing))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="folder for gpu_check.json and .md")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, tiny sizes")
    parser.add_argument("--work", default=None,
                        help="folder for model folders, shards and runs (default: a temporary "
                             "one, removed at the end)")  # fmt: skip
    parser.add_argument("--sections", nargs="+", default=None, help="run only these")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="seconds after which no section starts (default: the plan's)",
    )
    parser.add_argument("--max-batch", type=int, default=None, help="largest micro-batch tried")
    args = parser.parse_args(argv)
    missing = missing_modules(NEEDED)
    if missing:
        print(f"gpu_check: error: missing module(s) {', '.join(missing)}; see the top of "
              f"{Path(__file__).name} for carrying wheels", file=sys.stderr)  # fmt: skip
        return 2
    import torch
    from benchmarks.networks import REAL_ENCODER, TINY_ENCODER  # tools/benchmarks/
    from benchmarks.scale import count_scale

    from dm_lightning.gpu_check import report, runner

    plan = runner.smoke_plan() if args.smoke else runner.cuda_plan()
    if not args.smoke and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device (torch.cuda.is_available() is False); "
              "--smoke runs the same sections on the CPU", file=sys.stderr)  # fmt: skip
        return 2
    names = tuple(args.sections or runner.SECTIONS)
    unknown = sorted(set(names) - set(runner.SECTIONS))
    if unknown:
        print(f"gpu_check: error: unknown section(s) {', '.join(unknown)}; expected some of "
              f"{', '.join(runner.SECTIONS)}", file=sys.stderr)  # fmt: skip
        return 2
    if args.budget_s is not None:
        plan.budget_seconds = args.budget_s
    if args.max_batch is not None:
        plan.max_batch = args.max_batch
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpu-check-"))

    def count_flops(network: str, height: int, width: int) -> dict:
        return count_scale(network, height, width)[1]

    encoder = TINY_ENCODER if plan.network == "tiny" else REAL_ENCODER
    try:
        check = runner.GpuCheck(plan, work, REPO / "configs", encoder, count_flops)
        results = check.run(names)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    json_path, md_path = report.write(results, Path(args.out))
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0 if all(s["ok"] for s in results["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
