"""Writes that a stop signal must not cut in half: the final export and the final save.

At the end of ``fit`` Lightning has already given SIGTERM and SIGINT back to their original
handlers (the default: terminate at once), so a scheduler's SIGTERM or a Ctrl-C during the
export used to kill the process in the middle of ``save_pretrained``, leaving an
temporary export folder and no ``export/`` (once even a C++ abort from a writer thread).
:func:`deferred_signals` holds such signals back until the block is done, then delivers each
one to the handler that was there before, so the command still stops, with its files whole.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def deferred_signals(
    what: str, signums: tuple[signal.Signals, ...] = STOP_SIGNALS
) -> Iterator[None]:
    """Hold ``signums`` back while the block runs; afterwards restore the previous handlers
    and deliver each signal that arrived (once, in arrival order) to them, after one line on
    stderr saying it waited for ``what`` (e.g. ``"the export to runs/x/export"``).

    Outside the main thread (where handlers cannot be set) the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def note(signum: int, frame: Any) -> None:
        received.append(signum)  # nothing else inside a handler: the write goes on

    previous = {signum: signal.signal(signum, note) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: a handler installed outside Python; the default is the closest we can set.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(received):
            print(
                f"[dm_lightning] {signal.Signals(signum).name} received during {what}: "
                "it takes effect now that the write is complete",
                file=sys.stderr,
                flush=True,
            )
            signal.raise_signal(signum)
