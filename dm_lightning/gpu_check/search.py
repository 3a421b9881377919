"""The largest micro-batch that fits: doubling, then bisection, under a time cap.

:func:`largest_batch` only asks a ``fits(n)`` question; :func:`oom_probe` turns one training
step at micro-batch ``n`` into that question by catching the allocator's out-of-memory error
(``torch.OutOfMemoryError``, which ``torch.cuda.OutOfMemoryError`` is) and giving the memory
back before the next probe.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import NamedTuple

import torch


class BatchSearch(NamedTuple):
    """Result of :func:`largest_batch`."""

    batch: int  # largest micro-batch found to fit (0: not even 1 fits)
    probes: list[tuple[int, bool]]  # (micro-batch, fits) in the order asked
    capped: bool  # the time cap stopped the search: ``batch`` is a lower bound


def largest_batch(
    fits: Callable[[int], bool],
    limit: int,
    seconds: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> BatchSearch:
    """Largest micro-batch ``b <= limit`` with ``fits(b)``, assuming ``fits`` is monotone
    (true up to some size, false above): 1, 2, 4, ... while it fits, then bisection between
    the last size that fitted and the first that did not.

    Args:
        fits: whether a micro-batch of that size fits (one training step, say).
        limit: the largest size tried (the answer when it fits).
        seconds: no new probe starts once this much time has passed since the call (the
            probe under way finishes); the best size found so far is returned, ``capped``.
        clock: time source in seconds (tests pass a fake one).
    """
    start = clock()
    probes: list[tuple[int, bool]] = []

    def out_of_time() -> bool:
        return seconds is not None and clock() - start >= seconds

    def ask(n: int) -> bool:
        ok = fits(n)
        probes.append((n, ok))
        return ok

    if not ask(1):
        return BatchSearch(0, probes, False)
    good = 1
    while good < limit:
        if out_of_time():
            return BatchSearch(good, probes, True)
        if not ask(min(2 * good, limit)):
            break
        good = min(2 * good, limit)
    if good == limit:
        return BatchSearch(limit, probes, False)
    bad = min(2 * good, limit)
    while bad - good > 1:
        if out_of_time():
            return BatchSearch(good, probes, True)
        mid = (good + bad) // 2
        good, bad = (mid, bad) if ask(mid) else (good, mid)
    return BatchSearch(good, probes, False)


def release_memory(device: torch.device) -> None:
    """Give freed blocks back (after an out-of-memory error): collect reference cycles, then
    empty CUDA's caching allocator so the next probe starts from the same free memory."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def oom_probe(step: Callable[[int], None], device: torch.device) -> Callable[[int], bool]:
    """``fits(n)`` for :func:`largest_batch`: runs ``step(n)`` (a training step at micro-batch
    ``n``, waited for) and answers False when the allocator runs out of memory. Other errors
    propagate: a probe that fails for another reason is no answer about memory."""

    def fits(n: int) -> bool:
        try:
            step(n)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ok = True
        except torch.OutOfMemoryError:
            ok = False
        # Outside the except block: the traceback, and the activations its frames hold, are
        # gone once Python leaves it.
        if not ok:
            release_memory(device)
        return ok

    return fits
