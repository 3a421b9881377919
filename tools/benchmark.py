"""Speed benchmarks; results go to BENCHMARKS.md (never timed tests).

    python tools/benchmark.py data   # shard streaming vs bare PNG decoding vs folder loaders
    python tools/benchmark.py eval   # batched alignment + metrics vs per-image reference paths
    python tools/benchmark.py step   # Lightning training steps vs a plain PyTorch loop
    python tools/benchmark.py memory # stage-2 peak memory with / without checkpointing
    python tools/benchmark.py scale  # parameters, FLOPs and step time of the SD-2-size network
    python tools/benchmark.py predict  # predict path vs bare forwards; RSS over 200/1000 images
    python tools/benchmark.py tiling --model EXPORT  # tiled vs global prediction: seams, cost
    python tools/benchmark.py onnx   # onnxruntime vs PyTorch, one forward on the CPU

Each suite is a module of tools/benchmarks/ (data.py, evaluation.py, training_step.py,
memory.py, scale.py, predict.py, tiling.py, onnx_runtime.py) whose docstring says what it
measures and how; ``python tools/benchmark.py SUITE --help`` prints it with the suite's options.
The training suites time and count the tasks' own ``training_loss`` (``Stage1`` / ``Stage2``).
"""

from __future__ import annotations

import argparse

from benchmarks import (
    data,
    evaluation,
    memory,
    onnx_runtime,
    predict,
    scale,
    tiling,
    training_step,
)

SUITES = (data, evaluation, training_step, memory, scale, predict, tiling, onnx_runtime)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="what", required=True)
    for suite in SUITES:
        suite.add_parsers(sub)
    args = parser.parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
