"""Running one ``dm-lightning`` step of a recipe (a stage's ``fit``, a model's ``test``): in a
child process with SIGTERM / SIGUSR1 forwarded, or in this process; a failed step is a
:class:`PipelineError` carrying its exit status.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
import traceback
import warnings

from dm_lightning.cli import main


def log(message: str) -> None:
    print(f"[pipeline] {message}", flush=True)


class PipelineError(RuntimeError):
    """A step of the pipeline failed; ``status`` is its exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def run_dm_lightning(args: list[str], what: str, in_process: bool = False) -> None:
    """Run ``dm-lightning <args>``; raises :class:`PipelineError` naming ``what`` on a non-zero
    exit status.

    By default in a child process (``python -m dm_lightning``), so that each stage launches
    its own DDP ranks as ``dm-lightning fit`` does and starts from a clean process; SIGTERM
    and SIGUSR1 sent to this process are forwarded to it, and Ctrl-C reaches it through the
    terminal (it saves ``last.ckpt``). ``in_process`` calls :func:`dm_lightning.cli.main`
    here instead: no start-up cost per step (the CPU demo, tests), but unfit for a
    multi-device run that Lightning launches itself, which re-executes this process's
    command line on every rank.
    """
    log("dm-lightning " + shlex.join(args))
    started = time.monotonic()
    status = run_in_process(args) if in_process else run_child(args)
    if status:
        raise PipelineError(f"{what} failed (exit status {status})", status)
    log(f"{what}: finished in {time.monotonic() - started:.0f} s")


def run_in_process(args: list[str]) -> int:

    try:
        with warnings.catch_warnings():
            # LightningCLI warns when given args while sys.argv holds this tool's own options.
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            return main(args, close_group=False)  # later steps reuse the process group
    except SystemExit as err:  # argument errors: jsonargparse exits
        return err.code if isinstance(err.code, int) else 2
    except Exception:  # noqa: BLE001 - any crash of the step is reported as that step's failure
        traceback.print_exc()
        return 1


def run_child(args: list[str]) -> int:
    """Run ``python -m dm_lightning ARGS`` and return its exit status, 128 + N when signal N
    killed it (as a shell reports it). SIGTERM / SIGUSR1 are forwarded to the child, which
    saves and exits 143; after a Ctrl-C (which reaches the child too) KeyboardInterrupt is
    raised here once the child has ended, so that a sweep stops instead of going on."""
    sys.stdout.flush()
    child = subprocess.Popen([sys.executable, "-m", "dm_lightning", *args])
    interrupted = False

    def forward(signum: int, frame: object) -> None:
        child.send_signal(signum)

    def note_interrupt(signum: int, frame: object) -> None:
        # Ctrl-C signals the whole foreground group, the child included: only wait for it.
        nonlocal interrupted
        interrupted = True

    handled = [
        signal.SIGTERM,
        signal.SIGINT,
        *([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else []),
    ]
    actions = {s: note_interrupt if s == signal.SIGINT else forward for s in handled}
    previous = {s: signal.signal(s, action) for s, action in actions.items()}
    try:
        status = child.wait()
    finally:
        for s, action in previous.items():
            signal.signal(s, action)
    if interrupted:
        raise KeyboardInterrupt
    return 128 - status if status < 0 else status
