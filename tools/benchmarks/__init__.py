"""The speed benchmarks of ``python tools/benchmark.py SUITE``, one module per suite.

Suites: :mod:`.data` (data loading), :mod:`.evaluation` (the evaluation protocol),
:mod:`.training_step` (Lightning step vs a plain loop), :mod:`.memory` (stage-2 peak memory),
:mod:`.scale` (the SD-2-size network), :mod:`.predict` (the predict path), :mod:`.tiling`
(tiled vs global-only prediction), :mod:`.onnx_runtime` (onnxruntime vs PyTorch). Each module has
``add_parsers`` (its sub-commands of tools/benchmark.py) and ``run``. What several suites
share: :mod:`.networks` (the networks, model folders, tasks and batches they train) and
:mod:`.process` (the measuring process: heap, RSS, fresh children).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from dm_lightning.evaluation.tables import markdown_table

REPO = Path(__file__).resolve().parents[2]
DISPATCHER = REPO / "tools" / "benchmark.py"


def suite_parser(
    sub: argparse._SubParsersAction,
    name: str,
    help: str,
    run: Callable[[argparse.Namespace], None],
    doc: str | None = None,
) -> argparse.ArgumentParser:
    """The sub-command ``name`` of tools/benchmark.py, calling ``run(args)``; ``doc`` (the
    suite module's docstring) is its ``--help`` description."""
    parser = sub.add_parser(
        name, help=help, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.set_defaults(run=run)
    return parser


def print_table_header(header: Sequence[str]) -> None:
    """Print the header and separator lines of a Markdown table whose rows are printed as they
    are measured, each ``print(table_row(cells), flush=True)`` (the package's one table
    writer, :mod:`dm_lightning.evaluation.tables`)."""
    print("\n".join(markdown_table(header, [])))
