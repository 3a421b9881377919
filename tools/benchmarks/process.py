"""The measuring process, shared by the suites: glibc heap thresholds, RSS readings of
/proc/self, Lightning's per-run chatter silenced, and one measurement in a fresh interpreter."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import resource
import subprocess
import sys
import warnings
from pathlib import Path

from . import DISPATCHER


def set_glibc_heap(threshold: int) -> bool:
    """Fix glibc's mmap and trim thresholds at ``threshold`` bytes (``mallopt``; a fixed value
    also turns off glibc's dynamic raising of the mmap threshold, up to 32 MB, after large
    frees). Returns whether it applied (glibc only)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h> constants
    return bool(
        mallopt and mallopt(m_mmap_threshold, threshold) and mallopt(m_trim_threshold, threshold)
    )


def pin_glibc_heap() -> bool:
    """Thresholds at 1 GiB, so freed activation buffers stay in the heap for the next step
    instead of going back to the OS and being page-faulted in again (10-17 thousand minor
    faults per tiny step, in random amounts per side, which swung the ratio between 0.98x and
    1.2x): both sides then reuse memory as PyTorch's caching allocator does on CUDA."""
    return set_glibc_heap(1 << 30)


def status_kb(field: str) -> int | None:
    """A ``VmRSS`` / ``VmHWM`` value (kB) of /proc/self/status, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process to its current RSS (Linux >= 4.0:
    ``echo 5 > /proc/self/clear_refs``); whether it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_mb(field: str = "VmRSS") -> float:
    """``field`` of /proc/self/status in MB, or the peak RSS (``ru_maxrss``) off Linux."""
    kb = status_kb(field)
    return (kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def quiet_lightning() -> None:
    """Silence Lightning's info lines and its warnings about in-memory loaders without
    workers, which every timed ``fit`` / ``predict`` would print."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*isinstance.*LeafSpec.*")


def run_child(*args: str) -> dict:
    """``python tools/benchmark.py *args`` (an internal sub-command) in a fresh interpreter,
    so no measurement sees another's heap: the JSON of its last stdout line."""
    cmd = [sys.executable, str(DISPATCHER), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
