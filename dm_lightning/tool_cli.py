"""What every command-line tool of ``tools/`` shares: its parser's layout and its exit rule.

A tool's parser shows its description and examples as written; a
:class:`~dm_lightning.errors.DMLightningError` becomes one line ``<prog>: error: ...`` on
stderr and the error's exit status (2 for bad input), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dm_lightning.errors import DMLightningError


def tool_parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """An ``argparse`` parser named ``prog`` whose description and epilog keep their lines."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def run_tool(
    prog: str,
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], Any],
    argv: Sequence[str] | None = None,
    error_status: int | None = 2,
) -> tuple[int, Any]:
    """Parse ``argv`` (default ``sys.argv[1:]``) and call ``run(args)``.

    Returns:
        (0, what ``run`` returned), or, after printing a
        :class:`~dm_lightning.errors.DMLightningError` as one line on stderr,
        (``error_status``, None): 2, bad input, for tools that read files a user names;
        None takes the error's own ``exit_code``.
    """
    args = parser.parse_args(argv)
    try:
        return 0, run(args)
    except DMLightningError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return (err.exit_code if error_status is None else error_status), None
